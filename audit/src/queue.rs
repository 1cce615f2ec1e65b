//! The hand-off of appends to the writer thread, in batches.
//!
//! An answer waits for its record to be written, so every request crosses to the writer thread
//! and back. Woken once per record (as a channel does), the writer sleeps and wakes for nearly
//! every request under load: on two vCPUs that cost more broker CPU per call than building and
//! writing the record (a futex wake on the runtime thread, the writer's context switches, and
//! the runtime woken for each answer).
//!
//! Here the writer takes the whole queue at once, and is woken only when it sleeps: an append
//! that finds it busy just queues (the writer takes it with the next batch), and so does one
//! that finds a batch already open. The append that finds the queue empty and the writer asleep
//! *opens* a batch and must wake the writer; before it does, it yields once to its runtime, so
//! that the requests already runnable on that thread add their records to the same batch. A
//! yield that gathers no one (a single busy session) only delays the record, so after such a
//! yield the next 1, 3, 7 … up to [`MAX_BACKOFF`] batches are opened without one; a yield that
//! gathered others resets that. If a leader's future is dropped while it yields (the client went
//! away), dropping its guard still wakes the writer, so no batch is left waiting.
//!
//! In batch mode the leader, instead of waking the writer thread, may write the batch itself
//! (`Writer::write_here`): no wake-up crosses threads at all, neither to the writer nor back for
//! the answers. The writer thread waits here without holding the writer and takes the queue
//! only once it holds it, so whichever thread writes, it takes everything queued before it, in
//! order.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::writer::{Msg, Pending};

#[derive(Debug, Default)]
struct Inner {
    msgs: Vec<Msg>,
    /// The writer sleeps in [`Queue::wait`] (so a kick must notify it).
    writer_waiting: bool,
    /// The writer is to wake and look at what has fallen due (see [`Queue::rearm`]).
    rearm: bool,
}

/// Appends waiting for the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    ready: Condvar,
    /// Batches still to be opened without a yield.
    skip: AtomicU32,
    /// Length of the current back-off (0 after a yield that gathered others).
    backoff: AtomicU32,
}

/// Longest back-off, in batches, after yields that gathered no other record.
pub(crate) const MAX_BACKOFF: u32 = 63;

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data (a Vec and a flag): keep going.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `m`; returns a guard that wakes the writer when dropped if `m` opened a batch
    /// (the queue was empty and the writer asleep), or `None` if the writer is busy (it takes
    /// `m` with its next batch: pushes and takes share the lock) or a batch is already open
    /// (its leader will wake the writer).
    pub(crate) fn push(&self, m: Msg) -> Option<Kick<'_>> {
        let mut g = self.lock();
        g.msgs.push(m);
        // `then`, not `then_some`: a `Kick` built and dropped here would wake the writer (and
        // take this lock again).
        (g.msgs.len() == 1 && g.writer_waiting).then(|| Kick {
            queue: self,
            yielded: false,
            wrote: None,
        })
    }

    /// Wakes the writer if it sleeps; the number of messages queued.
    fn kick(&self) -> usize {
        let (waiting, queued) = {
            let g = self.lock();
            (g.writer_waiting, g.msgs.len())
        };
        if waiting {
            self.ready.notify_one();
        }
        queued
    }

    /// The writer's side: returns once something is queued (true), or once `deadline` (if any)
    /// has passed or [`Queue::rearm`] was called (false). Takes nothing: the writer takes with
    /// [`Queue::take_now`] under its own lock, so that whoever writes takes in queue order.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut g = self.lock();
        loop {
            if !g.msgs.is_empty() {
                return true;
            }
            if std::mem::take(&mut g.rearm) {
                return false;
            }
            g.writer_waiting = true;
            g = match deadline {
                None => self
                    .ready
                    .wait(g)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        g.writer_waiting = false;
                        return false;
                    }
                    self.ready
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
            };
            g.writer_waiting = false;
        }
    }

    /// How many messages are queued.
    pub(crate) fn len(&self) -> usize {
        self.lock().msgs.len()
    }

    /// Everything queued, in order (the writer thread's take).
    pub(crate) fn take_now(&self) -> Vec<Msg> {
        std::mem::take(&mut self.lock().msgs)
    }

    /// The appends queued before the first `Close` (an append that writes on its own thread
    /// takes these; `Close` and what follows it are left to the writer thread).
    pub(crate) fn take_appends(&self) -> Vec<Pending> {
        let mut g = self.lock();
        let end = g
            .msgs
            .iter()
            .position(|m| matches!(m, Msg::Close))
            .unwrap_or(g.msgs.len());
        g.msgs
            .drain(..end)
            .filter_map(|m| match m {
                Msg::Append(p) => Some(p),
                Msg::Close => None,
            })
            .collect()
    }

    /// Has the writer thread wake and look at its timers and pending work (a sync now due,
    /// a checkpoint or a rotation) after records were written on another thread.
    pub(crate) fn rearm(&self) {
        let waiting = {
            let mut g = self.lock();
            g.rearm = true;
            g.writer_waiting
        };
        if waiting {
            self.ready.notify_one();
        }
    }
}

/// Held by the append that opened a batch: wakes the writer when dropped.
#[derive(Debug)]
pub(crate) struct Kick<'a> {
    queue: &'a Queue,
    yielded: bool,
    /// Set when the leader wrote the batch itself: how many records it held (the writer is
    /// not woken).
    wrote: Option<usize>,
}

impl Kick<'_> {
    /// Whether the leader should yield before waking the writer (no while backing off); the
    /// guard then judges by the batch it finds whether that yield was worth it.
    pub(crate) fn should_yield(&mut self) -> bool {
        let q = self.queue;
        let skipping = q
            .skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        self.yielded = !skipping;
        self.yielded
    }

    /// The leader wrote the batch (`n` records) itself: the writer is not to be woken.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.wrote = Some(n);
    }
}

impl Drop for Kick<'_> {
    fn drop(&mut self) {
        let queued = match self.wrote {
            Some(n) => n,
            None => self.queue.kick(),
        };
        if self.yielded {
            let q = self.queue;
            if queued > 1 {
                q.backoff.store(0, Ordering::Relaxed);
            } else {
                let next =
                    (q.backoff.load(Ordering::Relaxed).saturating_mul(2) + 1).min(MAX_BACKOFF);
                q.backoff.store(next, Ordering::Relaxed);
                q.skip.store(next, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    impl Queue {
        /// The writer thread's wait-then-take, as `writer::run` does it.
        fn take(&self, deadline: Option<Instant>) -> Vec<Msg> {
            if self.wait(deadline) {
                self.take_now()
            } else {
                Vec::new()
            }
        }
    }

    fn writer_sleeps(q: &Queue) {
        while !q.lock().writer_waiting {
            std::thread::yield_now();
        }
    }

    #[test]
    fn pushes_to_a_busy_writer_or_an_open_batch_wake_no_one() {
        let q = Arc::new(Queue::default());
        // No writer waiting (busy): it takes these with its next batch, unwoken.
        assert!(q.push(Msg::Close).is_none());
        assert!(q.push(Msg::Close).is_none());
        assert_eq!(q.take(None).len(), 2);
        // A sleeping writer: the first push opens the batch, the next joins it.
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || q.take(None).len())
        };
        writer_sleeps(&q);
        let lead = q.push(Msg::Close);
        assert!(
            lead.is_some(),
            "the push that finds the writer asleep opens the batch"
        );
        assert!(q.push(Msg::Close).is_none(), "a later push joins it");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!writer.is_finished(), "woken before the leader kicked");
        drop(lead);
        assert_eq!(writer.join().unwrap(), 2, "the whole batch, at once");
    }

    #[test]
    fn a_dropped_leader_still_wakes_the_writer_and_deadlines_end_the_wait() {
        let q = Arc::new(Queue::default());
        let t = Instant::now();
        assert!(q.take(Some(t + Duration::from_millis(30))).is_empty());
        assert!(t.elapsed() >= Duration::from_millis(30));
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || q.take(None).len())
        };
        writer_sleeps(&q);
        // The leader's future dropped mid-yield: its guard goes with it and wakes the writer.
        let mut lead = q.push(Msg::Close).unwrap();
        assert!(lead.should_yield());
        drop(lead);
        assert_eq!(writer.join().unwrap(), 1);
    }

    #[test]
    fn yields_that_gather_no_one_back_off() {
        let q = Queue::default();
        fn lead(q: &Queue) -> (Kick<'_>, bool) {
            q.lock().writer_waiting = true;
            let mut k = q.push(Msg::Close).unwrap();
            let y = k.should_yield();
            (k, y)
        }
        // A lone leader: its yield gathers nothing.
        let (k, y) = lead(&q);
        assert!(y);
        drop(k);
        q.lock().msgs.clear();
        let mut skipped = Vec::new();
        for _ in 0..7 {
            let mut n = 0;
            loop {
                let (k, y) = lead(&q);
                drop(k);
                q.lock().msgs.clear();
                if y {
                    // Yielded again, alone: the next miss.
                    break;
                }
                n += 1;
            }
            skipped.push(n);
        }
        assert_eq!(skipped, [1, 3, 7, 15, 31, 63, 63]);
        // A yield that gathered company resets the back-off.
        q.backoff.store(0, Ordering::Relaxed);
        q.skip.store(0, Ordering::Relaxed);
        let (k, y) = lead(&q);
        assert!(y);
        assert!(q.push(Msg::Close).is_none());
        drop(k);
        assert_eq!(q.backoff.load(Ordering::Relaxed), 0);
        assert_eq!(q.skip.load(Ordering::Relaxed), 0);
    }
}

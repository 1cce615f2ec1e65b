//! The async IPC channel over an `AF_UNIX` / `SOCK_SEQPACKET` socket, and the blocking
//! one-shot calls the worker uses before it has a runtime.
//!
//! Mirrored types (as in sudo-rs's typed pipe): the broker holds a
//! `Channel<WorkerToBroker, BrokerToWorker>`, the worker a `Channel<BrokerToWorker,
//! WorkerToBroker>`, so neither side can send the other side's messages.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{Mutex, Notify};

use crate::codec::{self, CodecError, FrameDecoder, MAX_FRAME, MAX_PACKET};

/// Errors of the channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Socket I/O failed.
    #[error("ipc i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a valid frame or message.
    #[error("ipc protocol: {0}")]
    Codec(#[from] CodecError),
}

/// Create a connected `SOCK_SEQPACKET` pair, both ends close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Register a socket with the reactor for `interest` only.
///
/// The channel's socket is registered for *readability* alone: with write interest, every time
/// the peer consumes a packet the kernel's `unix_write_space` wakes the epoll waiter with an
/// `EPOLLOUT` edge nobody waits for — one spurious wake-up (a context switch) per message on
/// both sides. A sender that finds the socket full registers a duplicate descriptor for
/// writability just while it waits.
#[allow(unsafe_code)]
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns a valid, open descriptor, and `AsyncFd` takes ownership of it:
    // nothing can close or replace the descriptor while it is registered, which is the
    // I/O-safety precondition of `AsyncFd::register_with_interest`.
    unsafe { Ok(AsyncFd::register_with_interest(fd, interest)?) }
}

/// Bounded polling of the receive side right after a send (see [`Sender::spin_after_send`]).
///
/// Sleeping in the reactor and being woken by the answer costs a context switch pair, and on a
/// virtual machine a cross-CPU wake-up of a halted vCPU: tens of µs, more than a quick tool's
/// whole run. For a window after each send the receiver instead re-checks the socket between
/// yields to the runtime (its other tasks still run), then falls back to waiting for readiness.
///
/// Polling pays only when the peer has a CPU to answer on, so a window opens only when the
/// kernel counts no more runnable tasks than this process has CPUs ([`cpu_to_spare`]). And when
/// the answer comes after the window anyway, the poll only took CPU from others: a window that
/// ends empty makes the next 1, 3, 7 … up to [`MAX_SPIN_BACKOFF`] sends not poll at all, and an
/// answer caught while polling resets that.
#[derive(Debug)]
struct Spin {
    base: Instant,
    window_ns: AtomicU64,
    last_send_ns: AtomicU64,
    /// Sends left that do not open a window.
    skip: AtomicU32,
    /// Length of the current back-off (0 after a poll that caught its answer).
    backoff: AtomicU32,
    sent: Notify,
}

/// Longest back-off, in sends, after polls that caught nothing.
const MAX_SPIN_BACKOFF: u32 = 63;

/// How long one reading of the runnable-task count stands for. Under load every send asks
/// [`cpu_to_spare`]; reading `/proc/loadavg` each time (a `pread` that formats the whole line,
/// ~1.2 µs here) was 2.9% of the broker's samples at 16 sessions. Sampled at most once a
/// millisecond for the whole process, it costs a clock read per send; an answer up to 1 ms old
/// can open one window too many (bounded, and the back-off follows) or skip one.
const CPU_SAMPLE_NS: u64 = 1_000_000;

/// Whether the machine has a CPU for the peer while this thread polls: the kernel's count of
/// runnable tasks (`/proc/loadavg`, read with one `pread`, at most every [`CPU_SAMPLE_NS`]) is
/// at most the CPUs this process may use. Polling on a machine whose CPUs are all taken only
/// delays the peer (and everyone else). Where `/proc/loadavg` cannot be read (a unit with
/// `ProcSubset=pid`) the answer is "yes" and only the back-off limits polling.
fn cpu_to_spare() -> bool {
    use std::sync::OnceLock;
    static BASE: OnceLock<Instant> = OnceLock::new();
    static SAMPLE: CpuSample = CpuSample::new();
    let now =
        u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX);
    SAMPLE.get(now, read_cpu_to_spare)
}

/// The last answer of [`read_cpu_to_spare`] and when it was read, in one word: the time in ns
/// shifted left by two, a "read" bit, and the answer in the low bit; 0 before the first reading.
struct CpuSample(AtomicU64);

impl CpuSample {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// The sampled answer if it was read less than [`CPU_SAMPLE_NS`] before `now_ns`, else a
    /// new reading (threads racing past an old sample may each read; the last one stays).
    fn get(&self, now_ns: u64, read: impl FnOnce() -> bool) -> bool {
        let s = self.0.load(Ordering::Relaxed);
        if s & 2 != 0 && now_ns.saturating_sub(s >> 2) < CPU_SAMPLE_NS {
            return s & 1 == 1;
        }
        let spare = read();
        self.0.store(
            ((now_ns & (u64::MAX >> 2)) << 2) | 2 | u64::from(spare),
            Ordering::Relaxed,
        );
        spare
    }
}

/// One reading for [`cpu_to_spare`].
fn read_cpu_to_spare() -> bool {
    use std::sync::OnceLock;
    static LOADAVG: OnceLock<Option<(OwnedFd, usize)>> = OnceLock::new();
    let Some((fd, cpus)) = LOADAVG.get_or_init(|| {
        let fd = rustix::fs::open(
            "/proc/loadavg",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Some((fd, cpus))
    }) else {
        return true;
    };
    let mut buf = [0u8; 128];
    let Ok(n) = rustix::io::pread(fd, &mut buf, 0) else {
        return true;
    };
    runnable_tasks(&buf[..n]).is_none_or(|running| running <= *cpus)
}

/// The runnable-task count of a `/proc/loadavg` line (`0.50 0.40 0.30 3/210 4567`).
fn runnable_tasks(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let field = text.split_ascii_whitespace().nth(3)?;
    field.split_once('/')?.0.parse().ok()
}

impl Spin {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            window_ns: AtomicU64::new(0),
            last_send_ns: AtomicU64::new(0),
            skip: AtomicU32::new(0),
            backoff: AtomicU32::new(0),
            sent: Notify::new(),
        }
    }

    /// A message went out: open a window, unless polling is off, backing off, or every CPU is
    /// taken.
    fn arm(&self) {
        if self.window_ns.load(Ordering::Relaxed) == 0 || self.backing_off() || !cpu_to_spare() {
            return;
        }
        self.last_send_ns.store(self.now_ns(), Ordering::Relaxed);
        self.sent.notify_one();
    }

    /// Counts one send against the back-off; true while it lasts.
    fn backing_off(&self) -> bool {
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// A poll caught an answer.
    fn caught(&self) {
        self.backoff.store(0, Ordering::Relaxed);
    }

    /// A window ended with nothing: poll less for a while.
    fn missed(&self) {
        let b = self.backoff.load(Ordering::Relaxed);
        let next = (b.saturating_mul(2) + 1).min(MAX_SPIN_BACKOFF);
        self.backoff.store(next, Ordering::Relaxed);
        self.skip.store(next, Ordering::Relaxed);
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Still within the window after the last send (never when the window is 0).
    fn open(&self) -> bool {
        let window = self.window_ns.load(Ordering::Relaxed);
        window > 0
            && self
                .now_ns()
                .saturating_sub(self.last_send_ns.load(Ordering::Relaxed))
                < window
    }
}

/// Receive side of a channel.
#[derive(Debug)]
pub struct Receiver<In> {
    fd: Arc<AsyncFd<OwnedFd>>,
    spin: Arc<Spin>,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    _in: PhantomData<fn() -> In>,
}

/// Send side of a channel. Cheap to clone; frames from concurrent senders never interleave.
#[derive(Debug)]
pub struct Sender<Out> {
    fd: Arc<AsyncFd<OwnedFd>>,
    spin: Arc<Spin>,
    lock: Arc<Mutex<()>>,
    _out: PhantomData<fn(Out)>,
}

impl<Out> Clone for Sender<Out> {
    fn clone(&self) -> Self {
        Self {
            fd: self.fd.clone(),
            spin: self.spin.clone(),
            lock: self.lock.clone(),
            _out: PhantomData,
        }
    }
}

/// Wrap a connected socket (set non-blocking here) into a typed sender/receiver pair.
/// Must be called inside a tokio runtime.
pub fn channel<In: DeserializeOwned, Out: Serialize>(
    fd: OwnedFd,
    max_frame: usize,
) -> io::Result<(Sender<Out>, Receiver<In>)> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    let fd = Arc::new(register(fd, Interest::READABLE)?);
    let spin = Arc::new(Spin::new());
    Ok((
        Sender {
            fd: fd.clone(),
            spin: spin.clone(),
            lock: Arc::new(Mutex::new(())),
            _out: PhantomData,
        },
        Receiver {
            fd,
            spin,
            decoder: FrameDecoder::new(max_frame.min(MAX_FRAME)),
            buf: vec![0u8; MAX_PACKET],
            _in: PhantomData,
        },
    ))
}

impl<Out> Sender<Out> {
    /// After each send, let the receiver poll the socket for up to `window` instead of sleeping
    /// in the reactor: a peer that answers within it costs no sleep/wake-up cycle.
    pub fn spin_after_send(&self, window: std::time::Duration) {
        let ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        self.spin.window_ns.store(ns, Ordering::Relaxed);
    }
}

impl<Out: Serialize> Sender<Out> {
    /// Send one message (as one or more packets).
    pub async fn send(&self, msg: &Out) -> Result<(), ChannelError> {
        let frame = codec::encode(msg)?;
        let _guard = self.lock.lock().await;
        let mut waiter: Option<AsyncFd<OwnedFd>> = None;
        for packet in codec::packets(&frame) {
            loop {
                // The socket is non-blocking: try first, wait for room only when it is full.
                match rustix::net::send(self.fd.get_ref(), packet, SendFlags::NOSIGNAL) {
                    Ok(n) if n == packet.len() => break,
                    Ok(_) => {
                        return Err(io::Error::new(io::ErrorKind::WriteZero, "short packet").into())
                    }
                    Err(rustix::io::Errno::AGAIN) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(io::Error::from(e).into()),
                }
                if waiter.is_none() {
                    let dup = rustix::io::fcntl_dupfd_cloexec(self.fd.get_ref(), 0)
                        .map_err(io::Error::from)?;
                    waiter = Some(register(dup, Interest::WRITABLE)?);
                }
                if let Some(w) = &waiter {
                    let mut ready = w.writable().await?;
                    // Readiness is re-armed by the next attempt; an EAGAIN there waits again.
                    ready.clear_ready();
                }
            }
        }
        self.spin.arm();
        Ok(())
    }
}

impl<In: DeserializeOwned> Receiver<In> {
    /// Receive one message; `Ok(None)` at a clean end of stream (peer closed between frames).
    pub async fn recv(&mut self) -> Result<Option<In>, ChannelError> {
        loop {
            if let Some(payload) = self.decoder.next_frame() {
                return Ok(Some(codec::decode(&payload)?));
            }
            let mut polling = false;
            let n = loop {
                match rustix::net::recv(self.fd.get_ref(), &mut self.buf[..], RecvFlags::empty()) {
                    Ok((n, _)) => {
                        if polling {
                            self.spin.caught();
                        }
                        break n;
                    }
                    Err(rustix::io::Errno::AGAIN) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(io::Error::from(e).into()),
                }
                if self.spin.open() {
                    polling = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                if std::mem::take(&mut polling) {
                    self.spin.missed();
                }
                tokio::select! {
                    ready = self.fd.readable() => {
                        // Cleared before the next attempt: a packet arriving after it raises a
                        // new edge, so nothing is lost between the clear and the recv.
                        ready?.clear_ready();
                    }
                    () = self.spin.sent.notified() => {}
                }
            };
            if n == 0 {
                self.decoder.finish()?;
                return Ok(None);
            }
            if n > MAX_PACKET {
                // Truncated datagram: the peer sent a packet larger than the protocol allows.
                return Err(CodecError::FrameTooLarge {
                    len: n,
                    max: MAX_PACKET,
                }
                .into());
            }
            self.decoder.push(&self.buf[..n])?;
        }
    }
}

/// Blocking: send one message on a (blocking) socket. Used by the worker before it has a runtime.
pub fn send_blocking<Out: Serialize>(fd: BorrowedFd<'_>, msg: &Out) -> Result<(), ChannelError> {
    let frame = codec::encode(msg)?;
    for packet in codec::packets(&frame) {
        let n = rustix::net::send(fd, packet, SendFlags::NOSIGNAL).map_err(io::Error::from)?;
        if n != packet.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short packet").into());
        }
    }
    Ok(())
}

/// Blocking: receive exactly one message of at most `max_frame` bytes from a (blocking)
/// socket. `Ok(None)` if the peer closed first.
pub fn recv_blocking<In: DeserializeOwned>(
    fd: BorrowedFd<'_>,
    max_frame: usize,
) -> Result<Option<In>, ChannelError> {
    let mut decoder = FrameDecoder::new(max_frame);
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        if let Some(payload) = decoder.next_frame() {
            return Ok(Some(codec::decode(&payload)?));
        }
        let (n, _) =
            rustix::net::recv(fd, &mut buf[..], RecvFlags::TRUNC).map_err(io::Error::from)?;
        if n == 0 {
            decoder.finish()?;
            return Ok(None);
        }
        if n > MAX_PACKET {
            return Err(CodecError::FrameTooLarge {
                len: n,
                max: MAX_PACKET,
            }
            .into());
        }
        decoder.push(&buf[..n])?;
    }
}

/// Convenience for owners of a raw fd.
pub fn borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    fd.as_fd()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::messages::*;

    #[tokio::test]
    async fn messages_cross_a_real_socketpair() {
        let (a, b) = socketpair().unwrap();
        let (btx, brx) = channel::<WorkerToBroker, BrokerToWorker>(a, MAX_FRAME).unwrap();
        let (_wtx, mut wrx) = channel::<BrokerToWorker, WorkerToBroker>(b, MAX_FRAME).unwrap();
        let big = BrokerToWorker::Call {
            id: 3,
            tool: "write_file".into(),
            arguments_json: "z".repeat(5 * MAX_PACKET),
            progress: false,
            input: None,
        };
        let tx2 = btx.clone();
        let big2 = big.clone();
        // The big frame exceeds the socket buffer: it completes only while the peer reads.
        let h = tokio::spawn(async move { tx2.send(&big2).await.unwrap() });
        btx.send(&BrokerToWorker::Cancel { id: 9 }).await.unwrap();
        let mut got = [
            wrx.recv().await.unwrap().unwrap(),
            wrx.recv().await.unwrap().unwrap(),
        ];
        h.await.unwrap();
        got.sort_by_key(|m| matches!(m, BrokerToWorker::Cancel { .. }));
        assert_eq!(got[0], big);
        assert_eq!(got[1], BrokerToWorker::Cancel { id: 9 });
        drop(btx);
        drop(brx);
        assert!(wrx.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn garbage_from_peer_is_an_error_not_a_panic() {
        let (a, b) = socketpair().unwrap();
        rustix::net::send(&a, &[0xff, 0xff, 0xff, 0x7f], SendFlags::empty()).unwrap();
        let (_tx, mut rx) = channel::<BrokerToWorker, WorkerToBroker>(b, 1024).unwrap();
        assert!(matches!(
            rx.recv().await,
            Err(ChannelError::Codec(CodecError::FrameTooLarge { .. }))
        ));
    }

    /// Polling after a send loses nothing: a prompt answer (found while polling), a late one
    /// (after the window, through the reactor), an answer to a receiver parked before the send;
    /// and polling stops when the window is over.
    #[tokio::test]
    async fn polling_after_send_is_bounded_and_loses_nothing() {
        let (a, b) = socketpair().unwrap();
        let (btx, mut brx) = channel::<WorkerToBroker, BrokerToWorker>(a, MAX_FRAME).unwrap();
        btx.spin_after_send(std::time::Duration::from_millis(1));
        // The peer answers the first request at once, the second after 50 ms, the third never.
        let peer = std::thread::spawn(move || {
            for delay in [Some(0u64), Some(50), None] {
                let m: BrokerToWorker = recv_blocking(b.as_fd(), MAX_FRAME).unwrap().unwrap();
                let BrokerToWorker::Cancel { id } = m else {
                    panic!("unexpected {m:?}")
                };
                let Some(ms) = delay else { return b };
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let log = WorkerToBroker::Log {
                    id: Some(id),
                    level: LogLevel::Info,
                    logger: None,
                    data_json: "1".into(),
                };
                send_blocking(b.as_fd(), &log).unwrap();
            }
            b
        });
        // A receiver already parked in the reactor when the request goes out.
        let reader = tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..2 {
                match brx.recv().await.unwrap().unwrap() {
                    WorkerToBroker::Log { id, .. } => ids.push(id),
                    m => panic!("unexpected {m:?}"),
                }
            }
            (ids, brx)
        });
        tokio::task::yield_now().await;
        btx.send(&BrokerToWorker::Cancel { id: 1 }).await.unwrap();
        btx.send(&BrokerToWorker::Cancel { id: 2 }).await.unwrap();
        let (ids, mut brx) = reader.await.unwrap();
        assert_eq!(ids, [Some(1), Some(2)]);

        // Unanswered request: once the 1 ms window has passed the receiver sleeps. This thread
        // runs the runtime, so its CPU time over 300 ms tells (unbounded polling: ~30 ticks).
        fn cpu_ticks() -> u64 {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 1..];
            let f: Vec<&str> = after.split_whitespace().collect();
            f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
        }
        btx.send(&BrokerToWorker::Cancel { id: 3 }).await.unwrap();
        let keep = peer.join().unwrap();
        let before = cpu_ticks();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), brx.recv()).await;
        assert!(waited.is_err(), "nothing was sent");
        let used = cpu_ticks() - before;
        assert!(
            used < 10,
            "receiver kept polling: {used} ticks of CPU in 300 ms"
        );
        drop(keep);
        assert!(brx.recv().await.unwrap().is_none());
    }

    #[test]
    fn polling_backs_off_after_empty_windows_and_reads_the_runnable_count() {
        let s = Spin::new();
        assert!(!s.backing_off());
        let mut lengths = Vec::new();
        for _ in 0..8 {
            s.missed();
            let mut n = 0;
            while s.backing_off() {
                n += 1;
            }
            lengths.push(n);
        }
        assert_eq!(lengths, [1, 3, 7, 15, 31, 63, 63, 63]);
        s.caught();
        s.missed();
        assert!(s.backing_off());
        assert!(!s.backing_off(), "a caught answer resets the back-off");
        assert_eq!(runnable_tasks(b"0.50 0.40 0.30 3/210 4567\n"), Some(3));
        assert_eq!(runnable_tasks(b"0.50 0.40 0.30"), None);
        assert_eq!(runnable_tasks(b"a b c x/y z"), None);
        assert_eq!(runnable_tasks(&[0xff, 0xfe]), None);
        // This machine's own file parses (a kernel without it would make polling unconditional).
        let line = std::fs::read("/proc/loadavg").unwrap();
        assert!(runnable_tasks(&line).is_some_and(|n| n >= 1), "{line:?}");
    }

    #[test]
    fn the_runnable_count_is_read_at_most_once_per_sample_period() {
        let sample = CpuSample::new();
        let reads = std::cell::Cell::new(0);
        let read = |answer: bool| {
            reads.set(reads.get() + 1);
            answer
        };
        // The first call reads, even at time 0.
        assert!(!sample.get(0, || read(false)));
        assert_eq!(reads.get(), 1);
        // Within the period the answer stands; the reader is not called.
        assert!(!sample.get(CPU_SAMPLE_NS - 1, || read(true)));
        assert_eq!(reads.get(), 1);
        // At the end of the period a new reading replaces it, and stands in turn.
        assert!(sample.get(CPU_SAMPLE_NS, || read(true)));
        assert_eq!(reads.get(), 2);
        assert!(sample.get(CPU_SAMPLE_NS + 10, || read(false)));
        assert_eq!(reads.get(), 2);
        assert!(!sample.get(3 * CPU_SAMPLE_NS, || read(false)));
        assert_eq!(reads.get(), 3);
        // A clock that goes backwards (saturating) keeps the sample rather than reading in a loop.
        assert!(!sample.get(CPU_SAMPLE_NS, || read(true)));
        assert_eq!(reads.get(), 3);
    }

    #[test]
    fn blocking_roundtrip_and_truncation() {
        let (a, b) = socketpair().unwrap();
        send_blocking(a.as_fd(), &BrokerToWorker::Shutdown).unwrap();
        let m: BrokerToWorker = recv_blocking(b.as_fd(), 1024).unwrap().unwrap();
        assert_eq!(m, BrokerToWorker::Shutdown);
        // half a frame, then close
        let frame = codec::encode(&BrokerToWorker::Cancel { id: 1 }).unwrap();
        rustix::net::send(&a, &frame[..3], SendFlags::empty()).unwrap();
        drop(a);
        assert!(recv_blocking::<BrokerToWorker>(b.as_fd(), 1024).is_err());
    }
}

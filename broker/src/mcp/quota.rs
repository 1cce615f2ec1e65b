//! Per-client quotas shared by every session of a client, whatever transport it came by: the
//! sessions open (`limits.max_sessions`), the tool-call rate (`limits.calls_per_minute`, a
//! token bucket) and the calls in flight (`limits.max_concurrent_calls`). A client with many sessions gets no more than one with a
//! single session, so no principal can starve another of workers or CPU by opening sessions.
//!
//! Process-wide (like the `requestState` key): one table keyed by client id (a token's role
//! view counts as its client: `ClientId::tenant`; views keep the client's limits), each entry rebuilt
//! when a policy reload changes its numbers. Bounded by the number of clients the policy names.
//! Trusts the policy for the numbers; counts only requests that passed the policy decision.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mcpd_policy::{ClientId, Limits};
use tokio::sync::Semaphore;

/// One client's shared quotas, for the numbers they were built from.
struct Entry {
    per_minute: u64,
    concurrent: u64,
    rate: Option<Arc<DefaultDirectRateLimiter>>,
    slots: Arc<Semaphore>,
}

static TABLE: LazyLock<Mutex<HashMap<ClientId, Entry>>> = LazyLock::new(Mutex::default);

/// Most calls in flight per client, whatever the policy says (a bound on the semaphore).
pub const MAX_CONCURRENT_CEILING: u64 = 1024;

/// The client's quotas under `limits` (created, or rebuilt if the numbers changed).
fn entry(
    client: &ClientId,
    limits: &Limits,
) -> (Option<Arc<DefaultDirectRateLimiter>>, Arc<Semaphore>) {
    let concurrent = limits.max_concurrent_calls.clamp(1, MAX_CONCURRENT_CEILING);
    let per_minute = limits.calls_per_minute;
    let mut table = TABLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fresh = table
        .get(client)
        .is_some_and(|e| e.per_minute == per_minute && e.concurrent == concurrent);
    if !fresh {
        let rate = u32::try_from(per_minute)
            .ok()
            .and_then(NonZeroU32::new)
            .map(|n| Arc::new(RateLimiter::direct(Quota::per_minute(n))));
        // The semaphore is replaced only when its size changes: calls holding a permit of the
        // old one finish under it.
        let slots = match table.get(client) {
            Some(e) if e.concurrent == concurrent => e.slots.clone(),
            _ => Arc::new(Semaphore::new(usize::try_from(concurrent).unwrap_or(1))),
        };
        table.insert(
            client.clone(),
            Entry {
                per_minute,
                concurrent,
                rate,
                slots,
            },
        );
    }
    let e = &table[client];
    (e.rate.clone(), e.slots.clone())
}

/// Sessions open per client.
static SESSIONS: LazyLock<Mutex<HashMap<ClientId, u64>>> = LazyLock::new(Mutex::default);

/// One open session of a client, counted until it is dropped.
#[derive(Debug)]
pub struct SessionSlot {
    client: ClientId,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut m = SESSIONS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.client);
            }
        }
    }
}

/// A place for one more session of the client under `limits.max_sessions`, or `None` when
/// it has that many open.
pub fn open_session(client: &ClientId, limits: &Limits) -> Option<SessionSlot> {
    let mut m = SESSIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = m.entry(client.clone()).or_insert(0);
    if *n >= limits.max_sessions.max(1) {
        return None;
    }
    *n += 1;
    Some(SessionSlot {
        client: client.clone(),
    })
}

/// Sessions the client has open now.
#[cfg(test)]
pub fn open_sessions(client: &ClientId) -> u64 {
    SESSIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(client)
        .copied()
        .unwrap_or(0)
}

/// Take one call from the client's rate: `Err(wait)` when it is spent (try again after
/// `wait`). Unlimited (`calls_per_minute = 0`) always succeeds.
pub fn take_call(client: &ClientId, limits: &Limits) -> Result<(), Duration> {
    let (rate, _) = entry(client, limits);
    match rate {
        None => Ok(()),
        Some(r) => r
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
    }
}

/// The client's semaphore of calls in flight (shared by all its sessions).
pub fn call_slots(client: &ClientId, limits: &Limits) -> Arc<Semaphore> {
    entry(client, limits).1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(per_minute: u64, concurrent: u64) -> Limits {
        Limits {
            calls_per_minute: per_minute,
            max_concurrent_calls: concurrent,
            ..Limits::default()
        }
    }

    #[test]
    fn the_rate_is_per_client_and_follows_a_reload() {
        let a = ClientId::parse("quota-a").unwrap();
        let b = ClientId::parse("quota-b").unwrap();
        let l = limits(3, 1);
        for _ in 0..3 {
            assert!(take_call(&a, &l).is_ok());
        }
        let wait = take_call(&a, &l).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another client is untouched.
        assert!(take_call(&b, &l).is_ok());
        // A reload that lifts the limit takes effect at once.
        assert!(take_call(&a, &limits(0, 1)).is_ok());
    }

    #[test]
    fn sessions_are_counted_per_client_until_their_slot_goes() {
        let c = ClientId::parse("quota-s").unwrap();
        let l = Limits {
            max_sessions: 2,
            ..Limits::default()
        };
        let a = open_session(&c, &l).unwrap();
        let _b = open_session(&c, &l).unwrap();
        assert!(open_session(&c, &l).is_none());
        assert_eq!(open_sessions(&c), 2);
        assert!(open_session(&ClientId::parse("quota-t").unwrap(), &l).is_some());
        drop(a);
        assert!(open_session(&c, &l).is_some());
    }

    #[test]
    fn calls_in_flight_are_shared_by_every_session_of_a_client() {
        let c = ClientId::parse("quota-c").unwrap();
        let one = call_slots(&c, &limits(0, 2));
        let two = call_slots(&c, &limits(0, 2));
        let _p1 = one.clone().try_acquire_owned().unwrap();
        let _p2 = two.clone().try_acquire_owned().unwrap();
        assert!(one.clone().try_acquire_owned().is_err());
        assert!(two.try_acquire_owned().is_err());
        // A new size is a new semaphore; permits of the old one stay valid.
        let bigger = call_slots(&c, &limits(0, 3));
        assert_eq!(bigger.available_permits(), 3);
    }
}

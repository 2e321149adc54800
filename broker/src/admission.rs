//! Connection admission: the per-listener connection limit and the rate of
//! new connections per source IP address.
//!
//! One [`Admission`] is shared by every shard through an `Arc`. Listener
//! counts are atomics. The rate table is behind a mutex, which is taken once
//! per accepted connection and never on the packet path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of the window in which `max-connection-rate` connections are
/// allowed from one source address.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// Source addresses tracked before windows that have ended are purged, so
/// the table cannot grow without bound under a spread-out flood.
const MAX_TRACKED_SOURCES: usize = 65_536;

/// Connection limits shared by every shard.
#[derive(Debug)]
pub struct Admission {
    listeners: Vec<ListenerSlots>,
    /// Connections allowed per source address per [`RATE_WINDOW`]; 0 for no limit.
    max_rate: u32,
    windows: Mutex<HashMap<IpAddr, RateWindow>>,
}

#[derive(Debug)]
struct ListenerSlots {
    open: AtomicUsize,
    max: Option<usize>,
}

#[derive(Debug)]
struct RateWindow {
    started: Instant,
    /// Connections from this address in the window, rejected ones included.
    attempts: u32,
}

/// One connection counted against its listener until dropped.
pub struct ListenerSlot<'a> {
    slots: &'a ListenerSlots,
    /// True when the listener had no room for this connection.
    pub over_limit: bool,
}

impl Drop for ListenerSlot<'_> {
    fn drop(&mut self) {
        // Ordering: a counter with no data behind it; Relaxed suffices.
        self.slots.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// Creates the admission state for listeners with the given limits (by
    /// listener index) and `max_rate` connections per second per source
    /// address (0 for no limit).
    pub fn new(listener_limits: Vec<Option<usize>>, max_rate: u32) -> Admission {
        Admission {
            listeners: listener_limits
                .into_iter()
                .map(|max| ListenerSlots {
                    open: AtomicUsize::new(0),
                    max,
                })
                .collect(),
            max_rate,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection on listener `index` and reports whether that
    /// listener is over its limit.
    ///
    /// # Panics
    ///
    /// Panics when `index` is not a listener index of the configuration.
    pub fn enter_listener(&self, index: usize) -> ListenerSlot<'_> {
        let slots = &self.listeners[index];
        // Ordering: as in `ListenerSlot::drop`.
        let open = slots.open.fetch_add(1, Ordering::Relaxed) + 1;
        ListenerSlot {
            slots,
            over_limit: slots.max.is_some_and(|max| open > max),
        }
    }

    /// Returns the connection limit of listener `index`, if it has one.
    pub fn listener_limit(&self, index: usize) -> Option<usize> {
        self.listeners[index].max
    }

    /// Counts a new connection from `source`. Returns `Err` with the number
    /// of connections from that address rejected so far in the current
    /// one-second window (1 for the first) when it has opened more than
    /// `max-connection-rate` connections in that window.
    pub fn admit_source(&self, source: IpAddr, now: Instant) -> Result<(), u32> {
        if self.max_rate == 0 {
            return Ok(());
        }
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() >= MAX_TRACKED_SOURCES && !windows.contains_key(&source) {
            windows.retain(|_, window| now.duration_since(window.started) < RATE_WINDOW);
        }
        let window = windows.entry(source).or_insert(RateWindow {
            started: now,
            attempts: 0,
        });
        if now.duration_since(window.started) >= RATE_WINDOW {
            window.started = now;
            window.attempts = 0;
        }
        window.attempts = window.attempts.saturating_add(1);
        if window.attempts <= self.max_rate {
            Ok(())
        } else {
            Err(window.attempts - self.max_rate)
        }
    }

    /// Returns the configured connections per second per source address,
    /// 0 for no limit.
    pub fn max_rate(&self) -> u32 {
        self.max_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_window_resets_after_one_second() {
        let admission = Admission::new(vec![None], 2);
        let source: IpAddr = "127.0.0.2".parse().expect("valid address");
        let other: IpAddr = "127.0.0.3".parse().expect("valid address");
        let start = Instant::now();
        assert_eq!(admission.admit_source(source, start), Ok(()));
        assert_eq!(admission.admit_source(source, start), Ok(()));
        assert_eq!(
            admission.admit_source(source, start),
            Err(1),
            "third in the window"
        );
        assert_eq!(
            admission.admit_source(source, start),
            Err(2),
            "fourth in the window"
        );
        assert_eq!(
            admission.admit_source(other, start),
            Ok(()),
            "other sources unaffected"
        );
        assert_eq!(admission.admit_source(source, start + RATE_WINDOW), Ok(()));
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let admission = Admission::new(vec![None], 0);
        let source: IpAddr = "127.0.0.1".parse().expect("valid address");
        let now = Instant::now();
        assert!((0..1000).all(|_| admission.admit_source(source, now).is_ok()));
    }

    #[test]
    fn listener_slots_are_released_on_drop() {
        let admission = Admission::new(vec![Some(1), None], 0);
        let first = admission.enter_listener(0);
        assert!(!first.over_limit);
        let second = admission.enter_listener(0);
        assert!(second.over_limit);
        assert!(
            !admission.enter_listener(1).over_limit,
            "unlimited listener"
        );
        drop(second);
        drop(first);
        assert!(!admission.enter_listener(0).over_limit);
    }
}

//! Counters shared with the progress line, latency histograms and per-publisher
//! sequence tracking.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded, in nanoseconds; larger values are clamped to it.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Significant decimal digits kept by the histograms (0.1 % resolution).
const HISTOGRAM_DIGITS: u8 = 3;

/// Creates an empty latency histogram in nanoseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, HISTOGRAM_DIGITS)
        .expect("constant bounds are valid")
}

/// Running totals of one executor thread, read by the progress line.
///
/// Each executor writes only its own instance, so the atomics see no
/// contention. Ordering: every access is `Relaxed` because the values are
/// independent statistics and nothing is published through them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Counters {
    pub sent_msgs: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub delivered_msgs: AtomicU64,
    pub delivered_bytes: AtomicU64,
    /// Publishes the broker accepted with a PUBACK (QoS 1) or PUBREC (QoS 2)
    /// reason code below 0x80.
    pub acked_msgs: AtomicU64,
    /// QoS 2 publishes whose PUBCOMP arrived.
    pub completed_msgs: AtomicU64,
    /// Publishes the broker rejected with a PUBACK or PUBREC reason code of
    /// 0x80 or above.
    pub rejected_msgs: AtomicU64,
    /// Connections currently open.
    pub connections: AtomicU64,
    /// Connection attempts and connections that failed.
    pub errors: AtomicU64,
    /// Successful CONNECT/CONNACK exchanges (connection storm) or completed
    /// subscribe rounds (retained storm).
    pub rounds: AtomicU64,
}

impl Counters {
    /// Adds `value` to `counter`.
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Subtracts `value` from `counter`.
    pub fn sub(counter: &AtomicU64, value: u64) {
        counter.fetch_sub(value, Ordering::Relaxed);
    }
}

/// Sum of all executors' counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub sent_msgs: u64,
    pub sent_bytes: u64,
    pub delivered_msgs: u64,
    pub delivered_bytes: u64,
    pub acked_msgs: u64,
    pub completed_msgs: u64,
    pub rejected_msgs: u64,
    pub connections: u64,
    pub errors: u64,
    pub rounds: u64,
}

/// Sums the counters of all executors.
pub fn totals(counters: &[Counters]) -> Totals {
    let mut totals = Totals::default();
    for c in counters {
        totals.sent_msgs += c.sent_msgs.load(Ordering::Relaxed);
        totals.sent_bytes += c.sent_bytes.load(Ordering::Relaxed);
        totals.delivered_msgs += c.delivered_msgs.load(Ordering::Relaxed);
        totals.delivered_bytes += c.delivered_bytes.load(Ordering::Relaxed);
        totals.acked_msgs += c.acked_msgs.load(Ordering::Relaxed);
        totals.completed_msgs += c.completed_msgs.load(Ordering::Relaxed);
        totals.rejected_msgs += c.rejected_msgs.load(Ordering::Relaxed);
        totals.connections += c.connections.load(Ordering::Relaxed);
        totals.errors += c.errors.load(Ordering::Relaxed);
        totals.rounds += c.rounds.load(Ordering::Relaxed);
    }
    totals
}

/// Messages one subscriber received from one publisher, checked against the
/// publisher's sequence numbers.
///
/// A 64-bit window below the highest sequence number seen distinguishes a duplicate
/// from a late (reordered) message. A message older than the window counts as
/// reordered, since the tracker cannot tell whether it was seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTracker {
    /// Highest sequence number seen plus one; 0 before the first message.
    next: u64,
    /// Bit i is set when sequence number `next - 1 - i` was received.
    window: u64,
    /// Distinct messages received.
    pub received: u64,
    pub duplicates: u64,
    /// Messages that arrived after one with a higher sequence number.
    pub reordered: u64,
}

impl SeqTracker {
    /// Records the arrival of sequence number `seq`.
    pub fn record(&mut self, seq: u64) {
        if seq >= self.next {
            let shift = seq + 1 - self.next;
            self.window = if shift >= 64 { 0 } else { self.window << shift };
            self.window |= 1;
            self.next = seq + 1;
            self.received += 1;
            return;
        }
        let age = self.next - 1 - seq;
        if age >= 64 {
            self.reordered += 1;
            self.received += 1;
        } else if self.window & (1 << age) != 0 {
            self.duplicates += 1;
        } else {
            self.window |= 1 << age;
            self.reordered += 1;
            self.received += 1;
        }
    }
}

/// Loss, duplicates and reordering of one subscriber over all publishers it
/// should hear from.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SubscriberSummary {
    pub client_id: String,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_in_order() {
        let mut tracker = SeqTracker::default();
        for seq in 0..1000 {
            tracker.record(seq);
        }
        assert_eq!(tracker.received, 1000);
        assert_eq!(tracker.duplicates, 0);
        assert_eq!(tracker.reordered, 0);
    }

    #[test]
    fn tracker_counts_duplicates() {
        let mut tracker = SeqTracker::default();
        for seq in [0, 1, 2, 2, 1, 3] {
            tracker.record(seq);
        }
        assert_eq!(tracker.received, 4);
        assert_eq!(tracker.duplicates, 2);
        assert_eq!(tracker.reordered, 0);
    }

    #[test]
    fn tracker_counts_reordering() {
        let mut tracker = SeqTracker::default();
        for seq in [0, 2, 1, 3] {
            tracker.record(seq);
        }
        assert_eq!(tracker.received, 4);
        assert_eq!(tracker.reordered, 1);
        assert_eq!(tracker.duplicates, 0);
    }

    #[test]
    fn tracker_gap_is_not_received() {
        let mut tracker = SeqTracker::default();
        for seq in [0, 1, 5, 6] {
            tracker.record(seq);
        }
        assert_eq!(tracker.received, 4);
        assert_eq!(tracker.next, 7);
    }

    #[test]
    fn tracker_old_message_beyond_window() {
        let mut tracker = SeqTracker::default();
        tracker.record(200);
        tracker.record(3);
        assert_eq!(tracker.received, 2);
        assert_eq!(tracker.reordered, 1);
        tracker.record(200);
        assert_eq!(tracker.duplicates, 1);
    }

    #[test]
    fn totals_sum_executors() {
        let counters = vec![Counters::default(), Counters::default()];
        Counters::add(&counters[0].sent_msgs, 3);
        Counters::add(&counters[1].sent_msgs, 4);
        Counters::add(&counters[1].connections, 2);
        Counters::sub(&counters[1].connections, 1);
        let sum = totals(&counters);
        assert_eq!(sum.sent_msgs, 7);
        assert_eq!(sum.connections, 1);
    }
}

//! Layout of the bench header at the start of every payload, and the clock
//! its send time comes from.
//!
//! Bytes 0..4 hold the publisher id, 4..12 the publisher's sequence number
//! (from 0) and 12..20 the send time in nanoseconds of [`now_ns`], all little
//! endian. The rest of the payload is zero padding.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of the header; the smallest payload the bench sends.
pub const HEADER_LEN: usize = 20;

/// Fields of the bench header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process, from the monotonic
/// clock, so the timestamps of all bench threads are comparable.
pub fn now_ns() -> u64 {
    let epoch = EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64
}

/// Writes `header` into the first [`HEADER_LEN`] bytes of `payload`.
///
/// # Panics
///
/// Panics if `payload` is shorter than [`HEADER_LEN`].
pub fn write_header(payload: &mut [u8], header: Header) {
    payload[0..4].copy_from_slice(&header.publisher.to_le_bytes());
    payload[4..12].copy_from_slice(&header.seq.to_le_bytes());
    payload[12..20].copy_from_slice(&header.sent_ns.to_le_bytes());
}

/// Reads the header of a payload, or `None` when it is too short to hold one
/// (a message that the bench did not send).
pub fn read_header(payload: &[u8]) -> Option<Header> {
    let header = payload.get(..HEADER_LEN)?;
    Some(Header {
        publisher: u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")),
        seq: u64::from_le_bytes(header[4..12].try_into().expect("8 bytes")),
        sent_ns: u64::from_le_bytes(header[12..20].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let mut payload = vec![0u8; 64];
        let header = Header {
            publisher: 7,
            seq: u64::MAX - 3,
            sent_ns: 123_456_789,
        };
        write_header(&mut payload, header);
        assert_eq!(read_header(&payload), Some(header));
        assert!(payload[HEADER_LEN..].iter().all(|&b| b == 0));
    }

    #[test]
    fn short_payload_has_no_header() {
        assert_eq!(read_header(&[0u8; HEADER_LEN - 1]), None);
    }

    #[test]
    fn clock_is_monotonic() {
        let first = now_ns();
        let second = now_ns();
        assert!(second >= first);
    }
}

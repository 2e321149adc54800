//! MQTT 3.1.1 and 5.0 packet codec.
//!
//! [`decode`] takes bytes as they arrive from a socket and returns one packet
//! at a time, or `Ok(None)` when the buffer does not yet hold a whole packet.
//! Decoding is strict: reserved bits, variable byte integers, UTF-8 strings,
//! property sets, topic names and filters are checked, and every failure
//! carries the reason code that MQTT 5.0 names for it. [`encode`] writes a
//! packet in the wire format of the negotiated protocol version.
//!
//! The crate does no I/O and keeps no state between calls, so the broker's
//! shards, the bench and the fuzzer all use it as is.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod property_codec;
mod reason;
pub mod topic;
mod wire;

#[cfg(test)]
mod tests;

pub use decode::{decode, DecodeContext};
pub use encode::{encode, encoded_len, patch_packet_id, publish_packet_id_offset};
pub use error::DecodeError;
pub use packet::*;
pub use properties::Properties;
pub use reason::ReasonCode;

/// Largest value a Variable Byte Integer can hold: 268,435,455.
pub const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

/// Largest packet the format allows: a 1-byte header, a 4-byte Remaining
/// Length and the maximum Remaining Length.
pub const MAX_PACKET_SIZE: u32 = 1 + 4 + MAX_VARIABLE_BYTE_INTEGER;

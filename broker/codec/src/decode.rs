//! Packet decoding. (Stub until the decoder lands.)

use bytes::BytesMut;

use crate::error::DecodeError;
use crate::packet::{Packet, Protocol};

/// What the decoder needs to know about the connection.
#[derive(Clone, Copy, Debug)]
pub struct DecodeContext {
    /// Protocol negotiated by CONNECT; before CONNECT, the CONNECT packet
    /// itself names it and this value is ignored for it.
    pub protocol: Protocol,
    /// Largest whole packet (fixed header included) accepted, in bytes.
    pub max_packet_size: u32,
    /// Topic Alias Maximum this side announced; an inbound PUBLISH with a
    /// Topic Alias of 0 or above it fails with `TopicAliasInvalid`.
    pub topic_alias_max: u16,
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// Returns `Ok(None)` and leaves `buf` untouched when it does not yet hold a
/// whole packet. Payloads are zero-copy slices of `buf`'s storage.
///
/// # Errors
///
/// Returns a [`DecodeError`] naming the reason code for a packet that breaks
/// the format or the protocol; the connection should then be closed.
pub fn decode(buf: &mut BytesMut, ctx: &DecodeContext) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, ctx);
    todo!("decoder")
}

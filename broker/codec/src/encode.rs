//! Packet encoding. (Stub until the encoder lands.)

use bytes::BytesMut;

use crate::packet::{Packet, Protocol};

/// Appends `packet` to `out` in the wire format of `protocol`.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) {
    let _ = (packet, protocol, out);
    todo!("encoder")
}

/// Size in bytes of `packet` once encoded, fixed header included.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let _ = (packet, protocol);
    todo!("encoder")
}

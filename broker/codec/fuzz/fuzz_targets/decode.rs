//! Feeds arbitrary bytes to the decoder under both protocol versions and
//! checks that every packet it accepts survives an encode and decode round
//! trip unchanged.

#![no_main]

use bytes::BytesMut;
use coremq_codec::{decode, encode, encoded_len, DecodeContext, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

/// Kept small so that random Remaining Lengths often exceed it and the
/// PacketTooLarge path runs.
const FUZZ_MAX_PACKET_SIZE: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V311, Protocol::V5] {
        let ctx = DecodeContext {
            protocol,
            max_packet_size: FUZZ_MAX_PACKET_SIZE,
            topic_alias_max: 16,
        };
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, &ctx) {
            check_round_trip(&packet, &ctx);
        }
    }
});

fn check_round_trip(packet: &Packet, ctx: &DecodeContext) {
    // CONNECT names its own version, and every other packet uses the context's.
    let protocol = match packet {
        Packet::Connect(connect) => connect.protocol,
        _ => ctx.protocol,
    };
    let mut encoded = BytesMut::new();
    encode(packet, protocol, &mut encoded);
    assert_eq!(encoded.len(), encoded_len(packet, protocol), "{packet:?}");

    // The size limit is about input bytes, so the re-encoded packet is
    // decoded without one.
    let unlimited = DecodeContext {
        protocol,
        max_packet_size: coremq_codec::MAX_PACKET_SIZE,
        ..*ctx
    };
    let decoded = decode(&mut encoded, &unlimited);
    assert_eq!(decoded.as_ref(), Ok(&Some(packet.clone())), "{packet:?}");
    assert!(
        encoded.is_empty(),
        "{} bytes left after {packet:?}",
        encoded.len()
    );
}

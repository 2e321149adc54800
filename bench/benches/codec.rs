//! Criterion micro-benchmarks of the codec's PUBLISH path.
//!
//! Run with `cargo bench -p coremq-bench --bench codec`.
//!
//! Topic matching against 100,000 filters and the cross-shard hop are
//! measured in the shard crate: `cargo bench -p coremq-shard --bench trie`
//! and `--bench mesh`.

use bytes::{Bytes, BytesMut};
use coremq_codec::{
    decode, encode, DecodeContext, Packet, Properties, Protocol, Publish, QoS, MAX_PACKET_SIZE,
};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

/// Payload sizes measured, in bytes: a small telemetry message, a typical
/// JSON document and a large blob.
const PAYLOAD_SIZES: [usize; 3] = [64, 1024, 65_536];

/// Publishes decoded from one buffer per iteration, as a socket read that
/// carries many messages would.
const PUBLISHES_PER_BUFFER: usize = 64;

fn publish(payload_len: usize, qos: QoS) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: "sensors/building-1/floor-3/temperature".into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(42),
        properties: Properties::default(),
        payload: Bytes::from(vec![0xA5u8; payload_len]),
    })
}

fn context(protocol: Protocol) -> DecodeContext {
    DecodeContext {
        protocol,
        max_packet_size: MAX_PACKET_SIZE,
        topic_alias_max: 0,
    }
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_encode");
    for protocol in [Protocol::V5, Protocol::V311] {
        for size in PAYLOAD_SIZES {
            let packet = publish(size, QoS::AtLeastOnce);
            let mut out = BytesMut::with_capacity(size + 128);
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(
                BenchmarkId::new(format!("{protocol:?}"), size),
                &packet,
                |b, packet| {
                    b.iter(|| {
                        out.clear();
                        encode(packet, protocol, &mut out);
                        out.len()
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_decode");
    for protocol in [Protocol::V5, Protocol::V311] {
        for size in PAYLOAD_SIZES {
            let mut wire = BytesMut::new();
            let packet = publish(size, QoS::AtLeastOnce);
            for _ in 0..PUBLISHES_PER_BUFFER {
                encode(&packet, protocol, &mut wire);
            }
            let wire = wire.freeze();
            let ctx = context(protocol);
            group.throughput(Throughput::Elements(PUBLISHES_PER_BUFFER as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{protocol:?}"), size),
                &wire,
                |b, wire| {
                    b.iter_batched(
                        || BytesMut::from(&wire[..]),
                        |mut buf| {
                            let mut decoded = 0;
                            while let Some(packet) = decode(&mut buf, &ctx).expect("valid PUBLISH")
                            {
                                decoded += usize::from(matches!(packet, Packet::Publish(_)));
                            }
                            assert_eq!(decoded, PUBLISHES_PER_BUFFER);
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);

//! The cross-shard hop: a publication passed from one shard's executor to
//! another's over the glommio channel mesh, as `ShardMsg::Publish` carries it
//! when a subscriber lives on another core.
//!
//! `stream` times a burst of messages from shard 0 to shard 1 (throughput,
//! the receiver rarely sleeps). `round_trip` sends one message and waits for
//! it to come back before the next one, so every hop pays the wake-up of a
//! sleeping executor. Both executors are pinned to CPUs 0 and 1 when the
//! machine has two, so the hop crosses cores. Every sample starts a fresh
//! pair of executors; only the messages are timed.
//! Run with `cargo bench -p coremq-shard --bench mesh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coremq_codec::{Properties, QoS};
use coremq_shard::{Publication, ShardMsg};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

/// Slots per channel, the value the broker's mesh uses.
const CHANNEL_CAPACITY: usize = 4096;

/// Memory each executor registers with io_uring. The default of 10 MiB
/// exceeds common 8 MiB memlock limits, and these executors do no file I/O.
const IO_MEMORY: usize = 512 * 1024;

/// Traffic pattern between the two shards.
#[derive(Clone, Copy)]
enum Pattern {
    /// Consume every message.
    Stream,
    /// Send every message back to shard 0.
    RoundTrip,
}

fn publication() -> Arc<Publication> {
    Arc::new(Publication {
        topic: "fleet/site500/dev42/temp".into(),
        payload: Bytes::from(vec![0u8; 64]),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        publisher: Some("client-42".into()),
        log_offset: None,
    })
}

/// Returns the mesh peer id of the other member of a mesh of two. Peer ids
/// follow the order in which executors join, not their names.
fn other_peer(own: usize) -> usize {
    1 - own
}

fn placement(shard: usize) -> Placement {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        Placement::Fixed(shard)
    } else {
        Placement::Unbound
    }
}

/// Passes `messages` publications from shard 0 to shard 1 in `pattern` and
/// returns the time from the first send to the last receive: on shard 1 for
/// a stream, back on shard 0 for round trips.
fn run_hop(messages: u64, pattern: Pattern) -> Duration {
    let mesh = MeshBuilder::<ShardMsg, _>::full(2, CHANNEL_CAPACITY);
    let receiver_mesh = mesh.clone();
    let receiver = LocalExecutorBuilder::new(placement(1))
        .name("mesh-bench-1")
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let (senders, mut receivers) = receiver_mesh.join().await.expect("mesh join");
            let (_, from_sender) = receivers
                .streams()
                .into_iter()
                .next()
                .expect("a full mesh of two has one peer stream");
            for _ in 0..messages {
                let msg = from_sender.recv().await.expect("sender open");
                if let Pattern::RoundTrip = pattern {
                    let sender = other_peer(senders.peer_id());
                    senders
                        .send_to(sender, msg)
                        .await
                        .expect("reply channel open");
                }
            }
            Instant::now()
        })
        .expect("start the receiving executor");

    let sender = LocalExecutorBuilder::new(placement(0))
        .name("mesh-bench-0")
        .io_memory(IO_MEMORY)
        .spawn(move || async move {
            let (senders, mut receivers) = mesh.join().await.expect("mesh join");
            let (_, from_receiver) = receivers
                .streams()
                .into_iter()
                .next()
                .expect("a full mesh of two has one peer stream");
            let publication = publication();
            let receiver = other_peer(senders.peer_id());
            let started = Instant::now();
            for _ in 0..messages {
                let msg = ShardMsg::Publish(publication.clone());
                senders.send_to(receiver, msg).await.expect("channel open");
                if let Pattern::RoundTrip = pattern {
                    from_receiver.recv().await.expect("reply received");
                }
            }
            (started, Instant::now())
        })
        .expect("start the sending executor");

    let (started, sender_done) = sender.join().expect("sending executor");
    let last_received = receiver.join().expect("receiving executor");
    // Instant is the monotonic clock, so instants of two threads compare.
    match pattern {
        Pattern::Stream => last_received.duration_since(started),
        Pattern::RoundTrip => sender_done.duration_since(started),
    }
}

fn cross_shard_hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_shard_hop");
    group.throughput(Throughput::Elements(1));
    group.bench_function("stream", |b| {
        b.iter_custom(|messages| run_hop(messages, Pattern::Stream))
    });
    group.bench_function("round_trip", |b| {
        b.iter_custom(|messages| run_hop(messages, Pattern::RoundTrip))
    });
    group.finish();
}

criterion_group!(benches, cross_shard_hop);
criterion_main!(benches);

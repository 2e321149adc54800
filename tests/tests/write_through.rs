//! Output that the shard writes to the socket itself. A burst read in one
//! go fills a subscriber's output buffer before the subscriber's writer
//! task runs, and the shard writes the buffer out instead of dropping
//! QoS 0 messages to a client that reads.

use std::time::Duration;

use coremq_tests::packets::{encode_packet, publish};
use coremq_tests::{Broker, Packet, Protocol, QoS, RawClient};

/// Per-connection output limit: the smallest the broker accepts, a
/// fraction of one 32 KiB read of the burst.
const OUTPUT_LIMIT: &str = "4096";

/// Messages in the burst, about 34 KiB: more than one read of the broker,
/// and less than the subscriber's socket takes while it does not read
/// (about 54 KiB, measured on Linux 6.18 with the default net.ipv4.tcp_rmem).
const BURST: u32 = 300;

/// Quiet time after which the subscriber has all that the broker sends.
const QUIET: Duration = Duration::from_secs(1);

#[test]
fn burst_reaches_reading_subscriber() {
    let broker = Broker::start(&["--shards", "1", "--max-output-buffer", OUTPUT_LIMIT]);
    let (mut subscriber, _) = RawClient::connect_v5(broker.addr(), "through-sub");
    subscriber.subscribe("through/t", QoS::AtMostOnce);

    // One write of the whole burst, so that the broker reads it in full
    // chunks and routes each chunk before any writer task runs.
    let mut burst = Vec::new();
    for number in 0..BURST {
        let payload = format!("{number:0>100}");
        let message = publish("through/t", QoS::AtMostOnce, 0, payload.as_bytes());
        burst.extend(encode_packet(&Packet::Publish(message), Protocol::V5));
    }
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "through-pub");
    publisher.send_bytes(&burst);
    publisher.ping();

    let received = subscriber.drain_publishes(QUIET);
    let numbers: Vec<u32> = received
        .iter()
        .map(|message| {
            std::str::from_utf8(&message.payload)
                .expect("ASCII payload")
                .parse()
                .expect("numeric payload")
        })
        .collect();
    assert_eq!(numbers.len(), BURST as usize, "messages received");
    assert!(
        numbers.iter().copied().eq(0..BURST),
        "messages out of order or missing"
    );
}

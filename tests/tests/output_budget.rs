//! The shard-wide output budget (`--max-shard-output`). Once a shard's
//! output buffers take its budget, QoS 0 messages to sockets that hold more
//! than their share of it (at least 4 KiB) are dropped, so the broker's
//! memory stops growing with the number of subscribers. A socket that has not drained for a second stops
//! counting, so a client that stopped reading costs the others nothing.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use coremq_tests::packets::{connect_v5, publish};
use coremq_tests::{Broker, Packet, QoS, RawClient, ReasonCode};

/// Payload size of the flooded messages.
const PAYLOAD: usize = 4096;

/// Messages of the flood to a subscriber that does not read: 8 MiB, sent
/// well within the second after which a stalled socket stops counting.
const FLOOD: usize = 2000;

/// Per-socket limit in these tests: far above what they send, so that
/// only the shard's budget can drop a message.
const SOCKET_LIMIT: &str = "16777216";

/// Sends `count` QoS 0 messages of [`PAYLOAD`] bytes on `topic`, then waits
/// for a PINGRESP, which the broker sends after it has handled them all.
fn flood(publisher: &mut RawClient, topic: &str, count: usize) {
    let payload = vec![b'b'; PAYLOAD];
    for _ in 0..count {
        publisher.send(&Packet::Publish(publish(
            topic,
            QoS::AtMostOnce,
            0,
            &payload,
        )));
    }
    publisher.ping();
}

/// Connects a subscriber on `topic` whose socket takes almost nothing
/// while it does not read.
fn stalled_subscriber(broker: &Broker, client_id: &str, topic: &str) -> RawClient {
    let mut client = RawClient::connect_with_receive_buffer(broker.addr(), 4096);
    assert_eq!(
        client.connect_with(connect_v5(client_id)).reason,
        ReasonCode::SUCCESS
    );
    client.subscribe(topic, QoS::AtMostOnce);
    client
}

/// Held by each test while it runs. The floods take both cores for a
/// moment, and a test that expects a reader to keep up fails when another
/// test floods at the same time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Takes [`ONE_AT_A_TIME`], also after a test that held it failed.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a one-shard broker with a shard output budget of `budget` bytes.
fn start_with_budget(budget: &str) -> Broker {
    Broker::start(&[
        "--shards",
        "1",
        "--max-output-buffer",
        SOCKET_LIMIT,
        "--max-shard-output",
        budget,
    ])
}

/// Floods a subscriber that does not read and returns how many of the
/// messages it receives once it reads.
fn delivered_to_stalled_subscriber(budget: &str) -> usize {
    let broker = start_with_budget(budget);
    let mut stalled = stalled_subscriber(&broker, "budget-stalled", "budget/t");
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "budget-pub");
    flood(&mut publisher, "budget/t", FLOOD);
    stalled.drain_publishes(Duration::from_millis(500)).len()
}

#[test]
fn over_budget_drops_qos0_to_busy_socket() {
    let _turn = one_at_a_time();
    // 8 MiB of messages fit the 16 MiB socket limit: without a shard
    // budget in the way, the subscriber gets them all.
    let unbounded = delivered_to_stalled_subscriber("4294967295");
    assert!(
        unbounded >= FLOOD - FLOOD / 100,
        "{unbounded} of {FLOOD} messages delivered with no shard budget"
    );

    // With a 64 KiB budget, the broker keeps about 64 KiB for the socket.
    // The kernel's send buffer takes more: Linux grows it up to
    // net.ipv4.tcp_wmem's maximum, 4 MiB by default.
    let bounded = delivered_to_stalled_subscriber("65536");
    assert!(
        bounded <= FLOOD * 3 / 5,
        "{bounded} of {FLOOD} messages delivered with a 64 KiB shard budget"
    );
}

/// Debug line of a socket that moved to the stalled pool.
const STALLED_LINE: &str = "socket stalled; its output now counts in the stalled pool";

#[test]
fn stalled_socket_stops_counting() {
    let _turn = one_at_a_time();
    let broker = Broker::start_with_log_filter(
        &[
            "--shards",
            "1",
            "--max-output-buffer",
            SOCKET_LIMIT,
            "--max-shard-output",
            "2097152",
        ],
        Some("info,coremq_shard::conn=debug"),
    );
    // The stalled subscriber takes the whole budget of 2 MiB, beyond what
    // the kernel's socket buffers take.
    let stalled = stalled_subscriber(&broker, "budget-stuck", "budget/shared");
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "budget-filler");
    // A socket moves to the stalled pool when a message to it is dropped
    // after a second without write progress. How much the kernel takes
    // first varies, so the test floods until the broker logs the move.
    let mut moved = None;
    for _ in 0..5 {
        flood(&mut publisher, "budget/shared", 500);
        thread::sleep(Duration::from_millis(1200));
        flood(&mut publisher, "budget/shared", 1);
        moved = broker.wait_for_log(Duration::from_millis(300), |line| {
            line.contains(STALLED_LINE)
        });
        if moved.is_some() {
            break;
        }
    }
    assert!(moved.is_some(), "the stalled socket never left the budget");

    // NOTE: a reader that keeps up has little queued, so it gets every message
    // even on a build that keeps counting the stalled bytes. The unit test
    // `stalled_output_has_bounded_pool` checks that accounting exactly.
    // A subscriber that reads gets every message of a 1 MiB flood, which
    // alone cannot fill the budget. Were the stalled bytes still counted,
    // the shard would stay over budget, and messages would be dropped
    // whenever a read batch left more than its share queued for this
    // socket.
    let (mut reader, _) = RawClient::connect_v5(broker.addr(), "budget-reader");
    reader.subscribe("budget/shared", QoS::AtMostOnce);
    let counter = thread::spawn(move || reader.drain_publishes(Duration::from_secs(2)).len());
    flood(&mut publisher, "budget/shared", 250);
    let received = counter.join().expect("reader thread");
    assert_eq!(
        received, 250,
        "messages delivered to the reading subscriber"
    );
    // Connected until here: a closed socket would stop counting anyway.
    drop(stalled);
}

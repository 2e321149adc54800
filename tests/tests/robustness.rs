//! Bad input must cost the broker nothing: random bytes never kill it, and
//! a client that breaks the protocol does not disturb the others.

use std::thread;
use std::time::{Duration, Instant};

use coremq_tests::packets::{connect_v5, encode_packet, publish};
use coremq_tests::{Broker, Packet, Protocol, QoS, RawClient, ReasonCode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Random inputs sent by the fuzz test, each on a fresh connection.
const RANDOM_INPUTS: usize = 200;

/// Threads that send the random inputs, to keep the test short.
const SENDER_THREADS: usize = 4;

/// How long each random connection waits for the broker's reaction.
const REACTION_WAIT: Duration = Duration::from_millis(150);

/// Seed of the random inputs; `COREMQ_FUZZ_SEED` overrides it, so a failing
/// run can be repeated.
fn fuzz_seed() -> u64 {
    std::env::var("COREMQ_FUZZ_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0x5EED_C0DE)
}

/// Builds one random input. A third are pure noise, a third start with a
/// valid CONNECT and then noise, and a third are a valid CONNECT followed by
/// a real packet with random bytes flipped.
fn random_input(rng: &mut StdRng, index: usize) -> Vec<u8> {
    let connect = encode_packet(
        &Packet::Connect(Box::new(connect_v5(&format!("fuzz{index}")))),
        Protocol::V5,
    );
    let noise_len = rng.gen_range(1..=512);
    let noise: Vec<u8> = (0..noise_len).map(|_| rng.gen()).collect();
    match index % 3 {
        0 => noise,
        1 => [connect, noise].concat(),
        _ => {
            let mut packet = encode_packet(
                &Packet::Publish(publish("fuzz/t", QoS::AtLeastOnce, 1, b"payload")),
                Protocol::V5,
            );
            for _ in 0..rng.gen_range(1..=4) {
                let position = rng.gen_range(0..packet.len());
                packet[position] ^= 1 << rng.gen_range(0..8);
            }
            [connect, packet].concat()
        }
    }
}

/// Sends `input` on a fresh connection and reads whatever comes back until
/// the broker closes the connection or goes quiet.
fn send_random_input(broker_addr: std::net::SocketAddr, input: &[u8]) {
    let mut client = RawClient::connect(broker_addr);
    if client.try_send_bytes(input).is_err() {
        return;
    }
    let deadline = Instant::now() + REACTION_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.read_frame_within(left) {
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

/// Checks that the broker still runs and delivers a message between two
/// new clients.
#[track_caller]
fn check_broker_serves(broker: &mut Broker) {
    assert!(broker.is_running(), "the broker process exited");
    let (mut sub, _) = RawClient::connect_v5(broker.addr(), "healthy-sub");
    sub.subscribe("health/t", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "healthy-pub");

    publisher.publish(publish("health/t", QoS::AtLeastOnce, 1, b"alive"));

    let received = sub.expect_publish();
    assert_eq!(&received.payload[..], b"alive");
}

#[test]
fn random_bytes_never_kill_broker() {
    let mut broker = Broker::start(&[]);
    let seed = fuzz_seed();
    eprintln!("random input seed {seed} (set COREMQ_FUZZ_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs: Vec<Vec<u8>> = (0..RANDOM_INPUTS)
        .map(|index| random_input(&mut rng, index))
        .collect();

    let addr = broker.addr();
    let per_thread = RANDOM_INPUTS.div_ceil(SENDER_THREADS);
    thread::scope(|scope| {
        for chunk in inputs.chunks(per_thread) {
            scope.spawn(move || {
                for input in chunk {
                    send_random_input(addr, input);
                }
            });
        }
    });

    check_broker_serves(&mut broker);
}

#[test]
fn protocol_breaker_leaves_others_alone() {
    let mut broker = Broker::start(&[]);
    let (mut sub, _) = RawClient::connect_v5(broker.addr(), "calm-sub");
    sub.subscribe("calm/t", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "calm-pub");
    let violations = [
        "30 ff ff ff ff 7f",
        "36 09 00 03 61 2f 62 00 03 00 78",
        "30 04 00 00 00 78",
        "82 09 00 01 00 00 03 61 2f 62 c0",
        "10 0f 00 04 4d 51 54 54 05 02 00 3c 00 00 02 74 31",
        "00 00",
        "f0 00",
    ];

    let mut sent = 0u16;
    for violation in violations {
        let (mut breaker, _) = RawClient::connect_v5(broker.addr(), "breaker");
        breaker.send_hex(violation);
        for _ in 0..5 {
            sent += 1;
            let payload = format!("{sent}");
            publisher.publish(publish(
                "calm/t",
                QoS::AtLeastOnce,
                sent,
                payload.as_bytes(),
            ));
        }
        breaker.expect_closed_within(Duration::from_secs(2));
    }

    let received: Vec<u16> = sub
        .drain_publishes(Duration::from_secs(2))
        .iter()
        .map(|p| {
            std::str::from_utf8(&p.payload)
                .expect("UTF-8 payload")
                .parse()
                .expect("numeric payload")
        })
        .collect();
    assert_eq!(received, (1..=sent).collect::<Vec<u16>>());
    check_broker_serves(&mut broker);
}

#[test]
fn stalled_connects_do_not_block_others() {
    let mut broker = Broker::start(&[]);
    // Half a CONNECT that never completes, on several connections.
    let stalled: Vec<RawClient> = (0..20)
        .map(|_| {
            let mut client = RawClient::connect(broker.addr());
            client.send_hex("10 0f 00 04 4d 51");
            client
        })
        .collect();

    check_broker_serves(&mut broker);
    drop(stalled);
}

#[test]
fn abrupt_disconnects_leave_broker_serving() {
    let mut broker = Broker::start(&[]);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "steady-pub");

    for index in 0..50 {
        let (mut client, _) = RawClient::connect_v5(broker.addr(), &format!("flaky{index}"));
        client.subscribe("flaky/#", QoS::AtLeastOnce);
        let packet_id = index as u16 + 1;
        publisher.publish(publish("flaky/t", QoS::AtLeastOnce, packet_id, b"x"));
        client.abort();
    }

    check_broker_serves(&mut broker);
}

#[test]
fn slow_subscriber_does_not_stall_others() {
    // QoS 1, so the broker may not drop what the fast subscriber is owed
    // (a QoS 0 message may be dropped for any subscriber that falls behind).
    const MESSAGES: usize = 3_000;
    let broker = Broker::start(&[]);
    // Subscribes and then never reads, so its socket buffers fill up and its
    // session queue overflows.
    let (mut slow, _) = RawClient::connect_v5(broker.addr(), "slow");
    slow.subscribe("bulk/t", QoS::AtLeastOnce);
    let (mut fast, _) = RawClient::connect_v5(broker.addr(), "fast");
    fast.subscribe("bulk/t", QoS::AtLeastOnce);
    let (mut publisher, _) = RawClient::connect_v5(broker.addr(), "bulk-pub");

    let reader = thread::spawn(move || {
        let mut received = Vec::with_capacity(MESSAGES);
        let deadline = Instant::now() + Duration::from_secs(60);
        while received.len() < MESSAGES && Instant::now() < deadline {
            let publish = fast.expect_publish_within(Duration::from_secs(5));
            fast.acknowledge(&publish);
            let index: usize = std::str::from_utf8(&publish.payload[..8])
                .expect("ASCII index")
                .parse()
                .expect("numeric index");
            received.push(index);
        }
        received
    });
    let padding = vec![b'.'; 4096];
    for index in 0..MESSAGES {
        let mut payload = format!("{index:08}").into_bytes();
        payload.extend_from_slice(&padding);
        let packet_id = (index % 60_000) as u16 + 1;
        let reason = publisher.publish(publish("bulk/t", QoS::AtLeastOnce, packet_id, &payload));
        assert_eq!(reason, ReasonCode::SUCCESS, "PUBACK of message {index}");
    }

    let received = reader.join().expect("reader thread");
    assert_eq!(
        received.len(),
        MESSAGES,
        "messages the fast subscriber received"
    );
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "messages out of order"
    );
    drop(slow);
}

#[test]
fn second_broker_on_same_port_fails() {
    // The shards share their port with SO_REUSEPORT. A second broker on the
    // same address must not join them and take part of the clients.
    let broker = Broker::start(&["--shards", "2"]);
    let address = broker.addr().to_string();
    let mut second = std::process::Command::new(coremq_tests::broker::broker_binary())
        .args(["--listen", &address, "--shards", "1", "--storage", "memory"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start a second broker");
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.try_wait().expect("poll the second broker").is_none() {
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("the second broker started on {address}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let output = second.wait_with_output().expect("second broker's output");

    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let log = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("Address already in use"), "{log}");
    assert!(log.contains(&address), "{log}");
    let (mut client, _) = RawClient::connect_v5(broker.addr(), "still-served");
    client.ping();
}

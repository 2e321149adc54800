//! `coremq-relay` run as a broker by `coremq-bench compare`.

mod common;

use common::{number, run_bench};

/// Runs a fan-in through the relay with the given MQTT version and pause,
/// and returns the report of the relay's run.
fn fanin_through_relay(protocol: &str, pause_micros: &str) -> serde_json::Value {
    let relay = format!(
        "relay={} 127.0.0.1:{{port}} {pause_micros}",
        env!("CARGO_BIN_EXE_coremq-relay")
    );
    let dir = common::scratch_dir("relay");
    let json = dir.join("relay.json");
    let json_arg = json.to_str().expect("UTF-8 temp path");
    let scenario = format!(
        "fanin -P 20 -S 2 --rate 200 --protocol {protocol} --duration 1 --warmup 0.5 --quiet"
    );
    let run = run_bench(&[
        "compare",
        "--scenario",
        &scenario,
        "--broker-cpus",
        "0",
        "--json",
        json_arg,
        "--",
        &relay,
    ]);
    assert_eq!(run.code(), 0, "{}", run.text());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("compare writes --json"))
            .expect("valid JSON");
    report
}

/// Checks that both subscribers hear every publisher through the relay,
/// and that the bench measures the relay's CPU like any broker's.
fn check_every_message_arrives(report: &serde_json::Value) {
    assert_eq!(report["broker"], "relay", "{report:#}");
    let subscribers = report["subscribers"].as_array().expect("subscribers array");
    assert_eq!(subscribers.len(), 2, "{report:#}");
    for subscriber in subscribers {
        assert!(number(subscriber, "/expected") > 0.0, "{subscriber:#}");
        assert_eq!(number(subscriber, "/lost"), 0.0, "{subscriber:#}");
        assert_eq!(number(subscriber, "/duplicates"), 0.0, "{subscriber:#}");
    }
    assert!(number(report, "/delivered/msgs") > 0.0, "{report:#}");
    assert!(
        number(report, "/broker_process/cpu_secs") > 0.0,
        "{report:#}"
    );
}

#[test]
fn relay_forwards_mqtt_311() {
    check_every_message_arrives(&fanin_through_relay("311", "0"));
}

#[test]
fn relay_forwards_mqtt_5_with_a_pause() {
    check_every_message_arrives(&fanin_through_relay("5", "2000"));
}

#[test]
fn relay_rejects_a_bad_pause() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coremq-relay"))
        .args(["127.0.0.1:0", "2ms"])
        .output()
        .expect("coremq-relay runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid pause \"2ms\""), "{stderr}");
    assert!(stderr.contains("microseconds"), "{stderr}");
}

/// A relay on a free loopback port, killed by its pid on drop.
struct Relay {
    child: std::process::Child,
    port: u16,
    /// Keeps the log until the relay is gone.
    _dir: common::Scratch,
}

impl Relay {
    fn start() -> Relay {
        let port = common::free_port();
        let dir = common::scratch_dir("relay-log");
        let log = dir.join("relay.log");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coremq-relay"))
            .arg(format!("127.0.0.1:{port}"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("coremq-relay starts");
        common::wait_for_port(&mut child, port, &log);
        Relay {
            child,
            port,
            _dir: dir,
        }
    }

    /// Connects, sends `bytes`, and returns whether the relay closed the
    /// connection within two seconds instead of replying.
    fn closes_after(&self, bytes: &[u8]) -> bool {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the relay");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .expect("read timeout");
        stream.write_all(bytes).expect("send to the relay");
        let mut reply = [0u8; 16];
        match stream.read(&mut reply) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn relay_closes_invalid_lengths() {
    let relay = Relay::start();
    // A valid CONNECT gets its CONNACK, and the connection stays open.
    let connect = [
        0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00,
    ];
    assert!(!relay.closes_after(&connect));
    // A remaining length with a fifth length byte.
    assert!(relay.closes_after(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]));
    // A valid remaining length of 256 MiB, above the relay's 1 MiB limit.
    assert!(relay.closes_after(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]));
    // A CONNECT too short to hold the protocol level.
    assert!(relay.closes_after(&[0x10, 0x02, 0x00, 0x04]));
}

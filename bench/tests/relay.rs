//! `coremq-relay` run as a broker by `coremq-bench compare`.

mod common;

use common::{number, run_bench};

/// Runs a fan-in through the relay with the given MQTT version and returns
/// the report of the relay's run.
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

/// Both subscribers hear every publisher through the relay, and the bench
/// measures the relay's CPU like any broker's.
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

//! Publish-to-ack latency against a real CoreMQ broker (the debug binary,
//! found as the `coremq-tests` harness finds it: `COREMQ_BIN` or
//! `$CARGO_TARGET_DIR/debug/coremq`).

mod common;

use common::{number, run_bench, BenchRun};
use coremq_tests::Broker;
use serde_json::Value;

/// CoreMQ with its RocksDB store in a scratch folder, removed on drop.
struct DurableBroker {
    broker: Option<Broker>,
    /// Removed on drop, after the broker is gone.
    _data_dir: common::Scratch,
}

impl DurableBroker {
    /// Starts one shard on RocksDB with fsync per group commit, so that a
    /// PUBACK or PUBREC waits for the disk.
    fn start() -> DurableBroker {
        let data_dir = common::scratch_dir("coremq-data");
        let data_arg = data_dir.to_str().expect("UTF-8 temp path");
        let broker = Broker::start(&[
            "--shards",
            "1",
            "--data-dir",
            data_arg,
            "--durability",
            "fsync",
        ]);
        DurableBroker {
            broker: Some(broker),
            _data_dir: data_dir,
        }
    }

    fn port(&self) -> u16 {
        self.broker.as_ref().expect("started").addr().port()
    }
}

impl Drop for DurableBroker {
    fn drop(&mut self) {
        // Kill the broker before its files go with `_data_dir`.
        drop(self.broker.take());
    }
}

/// Runs 2 publisher/subscriber pairs at `qos` against `port` with no
/// warm-up, so that every publish is sent inside the measurement window
/// and its ack must be in the ack latency histogram.
fn run_p2p(port: u16, qos: &str) -> BenchRun {
    let port = port.to_string();
    run_bench(&[
        "p2p",
        "-N",
        "2",
        "-q",
        qos,
        "--rate",
        "300",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "1",
        "--drain",
        "10",
    ])
}

/// Returns the latency object at `key`, failing with the report when it is
/// missing or null.
fn latency<'a>(report: &'a Value, key: &str) -> &'a Value {
    match report.get(key) {
        Some(value) if value.is_object() => value,
        _ => panic!("{key} missing from report: {report:#}"),
    }
}

/// Checks one publish-to-ack latency object: `expected_samples` samples,
/// ordered percentiles and a minimum no loopback round trip goes below.
fn check_latency(latency: &Value, measures: &str, expected_samples: f64) {
    assert_eq!(latency["measures"], measures, "{latency:#}");
    assert_eq!(
        number(latency, "/samples"),
        expected_samples,
        "one sample per ack: {latency:#}"
    );
    // A round trip through the broker's socket takes well over 1 us, so a
    // smaller minimum means a send time was taken at the wrong point.
    assert!(number(latency, "/min_us") > 1.0, "{latency:#}");
    assert!(
        number(latency, "/p50_us") >= number(latency, "/min_us"),
        "{latency:#}"
    );
    assert!(
        number(latency, "/p99_us") >= number(latency, "/p50_us"),
        "{latency:#}"
    );
    assert!(
        number(latency, "/max_us") >= number(latency, "/p99_us"),
        "{latency:#}"
    );
}

/// Checks what QoS 1 and QoS 2 runs share and returns the report and the
/// number of publishes sent.
fn check_acked_run(run: &BenchRun) -> (&Value, f64) {
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();
    // In p2p each subscriber expects what its one publisher sent over the
    // whole run, so the sum is every publish.
    let published = number(report, "/loss/expected");
    assert!(published > 0.0, "{report:#}");
    assert_eq!(number(report, "/loss/lost"), 0.0, "{report:#}");

    let acked = number(report, "/acked/msgs");
    assert!(acked > 0.0, "{report:#}");
    // The window counts acks that arrived before its end; the histogram
    // also contains the acks that arrived during the drain.
    assert!(acked <= published, "{report:#}");
    assert!(number(report, "/acked/msgs_per_sec") > 0.0, "{report:#}");
    assert!(
        report["figures"].get("unacked_msgs").is_none(),
        "{report:#}"
    );
    assert!(
        report["figures"].get("rejected_msgs").is_none(),
        "{report:#}"
    );
    (report, published)
}

#[test]
fn qos1_times_every_puback() {
    let broker = DurableBroker::start();
    let run = run_p2p(broker.port(), "1");
    let (report, published) = check_acked_run(&run);

    check_latency(
        latency(report, "ack_latency"),
        "publish to PUBACK",
        published,
    );
    assert!(report["complete_latency"].is_null(), "{report:#}");

    let text = String::from_utf8_lossy(&run.output.stdout);
    assert!(text.contains("ack latency (publish to PUBACK)"), "{text}");
    assert!(text.contains("  acked  "), "{text}");
}

#[test]
fn qos2_times_pubrec_and_pubcomp() {
    let broker = DurableBroker::start();
    let run = run_p2p(broker.port(), "2");
    let (report, published) = check_acked_run(&run);

    let ack = latency(report, "ack_latency");
    let complete = latency(report, "complete_latency");
    check_latency(ack, "publish to PUBREC", published);
    check_latency(complete, "publish to PUBCOMP", published);
    // Each PUBCOMP follows its PUBREC, so every percentile of the PUBCOMP
    // times is at least the same percentile of the PUBREC times.
    for key in ["/min_us", "/p50_us", "/p99_us", "/max_us"] {
        assert!(
            number(complete, key) >= number(ack, key),
            "{key}: {report:#}"
        );
    }

    let text = String::from_utf8_lossy(&run.output.stdout);
    assert!(text.contains("ack latency (publish to PUBREC)"), "{text}");
    assert!(text.contains("ack latency (publish to PUBCOMP)"), "{text}");
}

#[test]
fn qos0_reports_no_acks() {
    let broker = Broker::start(&["--shards", "1"]);
    let run = run_p2p(broker.addr().port(), "0");
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    assert!(number(report, "/delivered/msgs") > 0.0, "{report:#}");
    for key in ["acked", "ack_latency", "complete_latency"] {
        assert!(report[key].is_null(), "{key}: {report:#}");
    }
    let text = String::from_utf8_lossy(&run.output.stdout);
    assert!(!text.contains("ack latency"), "{text}");
    assert!(!text.contains("acked"), "{text}");
}

/// A QoS 0 publisher never reads, so when CoreMQ closes it for a PUBLISH
/// over `--max-packet-size`, the bench must look for the DISCONNECT to
/// report the reason rather than the broken pipe of its next write.
#[test]
fn closed_publisher_reports_disconnect_reason() {
    let broker = Broker::start(&["--shards", "1", "--max-packet-size", "100"]);
    let port = broker.addr().port().to_string();
    let run = run_bench(&[
        "fanout",
        "-P",
        "1",
        "-S",
        "1",
        "--rate",
        "20",
        "--payload",
        "200",
        "--port",
        &port,
        "--warmup",
        "0",
        "--duration",
        "2",
    ]);
    assert_ne!(run.code(), 0, "{}", run.text());
    let errors = run.report()["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in the report: {}", run.text()));
    assert_eq!(errors.len(), 1, "{}", run.text());
    let error = errors[0].as_str().expect("errors are strings");
    assert_eq!(
        error,
        "publisher 0: broker sent DISCONNECT with reason code 0x95",
        "{}",
        run.text()
    );
}

/// With `--keep-alive 1`, CoreMQ closes a client that stays silent for
/// 1.5 s. The subscribers only receive, so they keep their connections for
/// the 4-second run only by pinging while messages arrive.
#[test]
fn subscribers_ping_within_keep_alive() {
    let (run, log) = run_with_keep_alive(&[
        "fanout",
        "-S",
        "2",
        "--rate",
        "200",
        "--protocol",
        "311",
        "--duration",
        "4",
    ]);
    assert_eq!(run.code(), 0, "{}", run.text());
    assert!(!log.contains("keep alive timed out"), "{log}");
    let report = run.report();
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert_eq!(number(report, "/loss/lost"), 0.0, "{report:#}");
    // 200 messages a second for 4 seconds, to each of 2 subscribers.
    assert!(number(report, "/delivered/msgs") >= 1500.0, "{report:#}");
}

/// Runs `scenario` against a fresh CoreMQ with a Keep Alive of 1 s and
/// returns the run with the broker's log. Every client must send a packet
/// within 1.5 s for the whole run, including the phases before and after
/// the measurement window.
fn run_with_keep_alive(scenario: &[&str]) -> (BenchRun, String) {
    // The Keep Alive close is logged at info.
    let broker = Broker::start_with_log_filter(&["--shards", "1"], Some("info"));
    let port = broker.addr().port().to_string();
    let mut args = scenario.to_vec();
    args.extend([
        "--keep-alive",
        "1",
        "--warmup",
        "0",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
    ]);
    let run = run_bench(&args);
    (run, broker.log_text())
}

#[test]
fn slow_qos1_publishers_ping() {
    // At one message a second, a QoS 1 publisher's last message leaves
    // at 4 s of 5. Its drain and the wait for the subscribers come after.
    let (run, log) = run_with_keep_alive(&[
        "fanout",
        "-S",
        "5",
        "-q",
        "1",
        "--rate",
        "1",
        "--duration",
        "5",
    ]);
    assert_eq!(run.code(), 0, "{}", run.text());
    assert!(!log.contains("keep alive timed out"), "{log}");
    let report = run.report();
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
}

#[test]
fn retained_storm_outlasts_keep_alive() {
    // The seeder's retained messages are cleared after a 4-second storm.
    let (run, log) = run_with_keep_alive(&["retained", "-R", "20", "-S", "2", "--duration", "4"]);
    assert_eq!(run.code(), 0, "{}", run.text());
    assert!(!log.contains("keep alive timed out"), "{log}");
    let report = run.report();
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
}

#[test]
fn compare_starts_coremq_over_websocket() {
    // With no brokers after `--`, compare starts its defaults, and CoreMQ
    // must get a WebSocket listener on the scenario's path.
    let dir = common::scratch_dir("compare-ws");
    let json = dir.join("compare.json");
    let json_arg = json.to_str().expect("UTF-8 temp path");
    let run = run_bench(&[
        "compare",
        "--scenario",
        "fanout -S 2 --rate 500 --duration 1 --warmup 0.5 --transport ws --ws-path /ws --quiet",
        "--broker-cpus",
        "0",
        "--json",
        json_arg,
    ]);
    assert_eq!(run.code(), 0, "{}", run.text());

    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("compare writes --json"))
            .expect("valid JSON");
    // One broker's report is an object, several are an array.
    let reports = match written {
        Value::Array(reports) => reports,
        report => vec![report],
    };
    let coremq = reports
        .iter()
        .find(|report| report["broker"] == "coremq")
        .unwrap_or_else(|| panic!("no coremq report; {}", run.text()));
    assert!(number(coremq, "/delivered/msgs") > 0.0, "{coremq:#}");
    assert_eq!(number(coremq, "/loss/lost"), 0.0, "{coremq:#}");
}

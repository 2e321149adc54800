//! Every scenario against a real Mosquitto broker on a loopback port.

mod common;

use common::{number, run_bench, Mosquitto};

/// Options shared by the runs: short, so the whole file stays within seconds.
fn short_run(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--drain",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run(scenario: &[&str], broker: &Mosquitto) -> common::BenchRun {
    let common = short_run(broker.port);
    let mut args: Vec<&str> = scenario.to_vec();
    args.extend(common.iter().map(String::as_str));
    run_bench(&args)
}

#[test]
fn fanout_qos0_reports_figures() {
    let broker = Mosquitto::start();
    let pid = broker.pid().to_string();
    let dir = common::scratch_dir("plot");
    let plot = dir.join("latency.svg");
    let plot_arg = plot.to_str().expect("UTF-8 temp path");
    let run = run(
        &[
            "fanout",
            "-S",
            "5",
            "--rate",
            "2000",
            "--broker-pid",
            &pid,
            "--plot",
            plot_arg,
        ],
        &broker,
    );
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    assert_eq!(report["scenario"], "fanout");
    assert_eq!(number(report, "/planned_connections"), 6.0);
    assert!(number(report, "/sent/msgs") > 0.0, "{report:#}");
    assert!(number(report, "/delivered/msgs") > 0.0, "{report:#}");
    assert!(number(report, "/latency/samples") > 0.0, "{report:#}");
    assert!(number(report, "/latency/p99_us") >= number(report, "/latency/p50_us"));
    assert!(
        number(report, "/broker_process/peak_rss_bytes") > 0.0,
        "{report:#}"
    );
    assert!(number(report, "/broker_process/cpu_secs") >= 0.0);
    assert_eq!(number(report, "/error_count"), 0.0, "{}", run.text());

    let svg = std::fs::read_to_string(&plot).expect("--plot writes the SVG file");
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("<polyline"), "{svg}");

    let text = String::from_utf8_lossy(&run.output.stdout);
    assert!(text.contains("delivered"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
}

#[test]
fn fanout_qos1_loses_nothing() {
    let broker = Mosquitto::start();
    let run = run(&["fanout", "-S", "4", "-q", "1", "--rate", "1000"], &broker);
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    let expected = number(report, "/loss/expected");
    assert!(expected > 0.0, "{report:#}");
    assert_eq!(number(report, "/loss/lost"), 0.0, "{report:#}");
    assert_eq!(number(report, "/loss/received"), expected, "{report:#}");
    assert_eq!(number(report, "/loss/duplicates"), 0.0, "{report:#}");
    let subscribers = report["subscribers"].as_array().expect("subscribers array");
    assert_eq!(subscribers.len(), 4);
}

#[test]
fn p2p_qos2_loses_nothing() {
    let broker = Mosquitto::start();
    let run = run(&["p2p", "-N", "4", "-q", "2", "--rate", "500"], &broker);
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    assert!(number(report, "/loss/expected") > 0.0, "{report:#}");
    assert_eq!(number(report, "/loss/lost"), 0.0, "{report:#}");
    assert_eq!(number(report, "/loss/duplicates"), 0.0, "{report:#}");
    assert_eq!(number(report, "/planned_connections"), 8.0);
}

#[test]
fn fanin_wildcard_hears_all_publishers() {
    let broker = Mosquitto::start();
    let run = run(
        &["fanin", "-P", "6", "-S", "2", "-q", "1", "--rate", "200"],
        &broker,
    );
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    let subscribers = report["subscribers"].as_array().expect("subscribers array");
    assert_eq!(subscribers.len(), 2);
    for subscriber in subscribers {
        assert!(number(subscriber, "/expected") > 0.0, "{subscriber:#}");
        assert_eq!(number(subscriber, "/lost"), 0.0, "{subscriber:#}");
    }
    // Each subscriber hears all six publishers, so it expects what they sent.
    assert_eq!(
        number(&subscribers[0], "/expected"),
        number(&subscribers[1], "/expected")
    );
}

#[test]
fn shared_group_splits_messages() {
    let broker = Mosquitto::start();
    let run = run(
        &["shared", "-P", "2", "-S", "3", "-q", "1", "--rate", "500"],
        &broker,
    );
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    let subscribers = report["subscribers"].as_array().expect("subscribers array");
    assert_eq!(
        subscribers.len(),
        1,
        "members are summed into one group entry"
    );
    assert_eq!(subscribers[0]["client_id"], "$share group");
    let expected = number(&subscribers[0], "/expected");
    assert!(expected > 0.0, "{report:#}");
    assert_eq!(number(&subscribers[0], "/received"), expected, "{report:#}");
}

#[test]
fn protocol_311_works() {
    let broker = Mosquitto::start();
    let run = run(
        &[
            "fanout",
            "-S",
            "2",
            "-q",
            "1",
            "--rate",
            "500",
            "--protocol",
            "311",
        ],
        &broker,
    );
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    assert_eq!(report["protocol"], "3.1.1");
    assert!(number(report, "/delivered/msgs") > 0.0, "{report:#}");
    assert_eq!(number(report, "/loss/lost"), 0.0, "{report:#}");
}

#[test]
fn source_addresses_are_bound() {
    let broker = Mosquitto::start();
    let run = run(
        &[
            "p2p",
            "-N",
            "4",
            "--rate",
            "100",
            "--source-addrs",
            "127.0.0.2-127.0.0.3",
        ],
        &broker,
    );
    assert_eq!(run.code(), 0, "{}", run.text());
    assert!(number(run.report(), "/delivered/msgs") > 0.0);
    let log = broker.log();
    assert!(
        log.contains("127.0.0.2"),
        "mosquitto log names no 127.0.0.2 client:\n{log}"
    );
    assert!(
        log.contains("127.0.0.3"),
        "mosquitto log names no 127.0.0.3 client:\n{log}"
    );
}

#[test]
fn connect_storm_counts_connacks() {
    let broker = Mosquitto::start();
    let run = run(&["connect", "-C", "4"], &broker);
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    assert!(
        number(report, "/figures/rounds_per_sec") > 0.0,
        "{report:#}"
    );
    assert!(number(report, "/latency/samples") > 0.0, "{report:#}");
    assert_eq!(report["latency"]["measures"], "connect to CONNACK");
}

#[test]
fn idle_holds_connections() {
    let broker = Mosquitto::start();
    let pid = broker.pid().to_string();
    let run = run(&["idle", "-N", "300", "--broker-pid", &pid], &broker);
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    assert_eq!(
        number(report, "/figures/connections_held"),
        300.0,
        "{report:#}"
    );
    assert!(
        number(report, "/figures/broker_rss_per_connection_bytes") > 0.0,
        "{report:#}"
    );
}

#[test]
fn retained_storm_receives_all() {
    let broker = Mosquitto::start();
    let run = run(&["retained", "-R", "50", "-S", "2"], &broker);
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();

    let rounds = number(report, "/figures/rounds");
    assert!(rounds > 0.0, "{report:#}");
    // Every round delivers all 50 retained messages; rounds that straddle
    // the window edges make the count inexact.
    let delivered = number(report, "/delivered/msgs");
    assert!(delivered >= (rounds - 2.0) * 50.0, "{report:#}");
    assert!(number(report, "/latency/samples") > 0.0, "{report:#}");
}

#[test]
fn websocket_transport_delivers() {
    let broker = Mosquitto::start();
    let port = broker.ws_port.to_string();
    let run = run_bench(&[
        "fanout",
        "-S",
        "3",
        "-q",
        "1",
        "--rate",
        "1000",
        "--transport",
        "ws",
        "--port",
        &port,
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--drain",
        "3",
    ]);
    assert_eq!(run.code(), 0, "{}", run.text());
    let report = run.report();
    assert!(number(report, "/delivered/msgs") > 0.0, "{report:#}");
    assert_eq!(number(report, "/loss/lost"), 0.0, "{report:#}");
    assert_eq!(number(report, "/error_count"), 0.0, "{}", run.text());
}

#[test]
fn websocket_path_rejected_on_mqtt_port() {
    // The MQTT listener does not speak HTTP, so the upgrade must fail with
    // an error rather than hang.
    let broker = Mosquitto::start();
    let port = broker.port.to_string();
    let run = run_bench(&[
        "fanout",
        "-S",
        "1",
        "--transport",
        "ws",
        "--port",
        &port,
        "--duration",
        "1",
    ]);
    assert_eq!(run.code(), 1, "{}", run.text());
}

#[test]
fn compare_runs_each_broker() {
    let mosquitto = common::mosquitto_path();
    let command = |name: &str| {
        format!(
            "{name}=printf 'listener {{port}} 127.0.0.1\\nallow_anonymous true\\n' > {{dir}}/m.conf; \
             exec {} -c {{dir}}/m.conf",
            mosquitto.display()
        )
    };
    let first = command("first");
    let second = command("second");
    let dir = common::scratch_dir("compare");
    let json = dir.join("compare.json");
    let json_arg = json.to_str().expect("UTF-8 temp path");
    let run = run_bench(&[
        "compare",
        "--scenario",
        "fanout -S 3 --rate 1000 --duration 1 --warmup 0.5 --quiet",
        "--broker-cpus",
        "0",
        "--json",
        json_arg,
        "--",
        &first,
        &second,
    ]);
    assert_eq!(run.code(), 0, "{}", run.text());

    let text = String::from_utf8_lossy(&run.output.stdout);
    assert!(text.contains("ratio to first broker"), "{text}");
    assert!(text.contains("(1.00x)"), "{text}");
    let reports: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("compare writes --json"))
            .expect("valid JSON");
    let reports = reports.as_array().expect("one report per broker");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["broker"], "first");
    assert_eq!(reports[1]["broker"], "second");
    for report in reports {
        assert!(number(report, "/delivered/msgs") > 0.0, "{report:#}");
        assert!(
            number(report, "/broker_process/peak_rss_bytes") > 0.0,
            "{report:#}"
        );
    }
}

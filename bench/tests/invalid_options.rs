//! Options that cannot give a measurement fail at once with exit status 2,
//! before the bench opens a connection.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::run_with_timeout;

/// A run that reached its connections would take at least its duration.
const BEFORE_ANY_RUN: Duration = Duration::from_secs(3);

fn bench(args: &[&str]) -> (i32, String, Duration) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coremq-bench"));
    command.args(args);
    let started = Instant::now();
    let output = run_with_timeout(command);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output.status.code().expect("bench exited normally");
    (code, stderr, started.elapsed())
}

/// Runs a one-subscriber fanout against `port` for `duration` seconds,
/// with `option` (`--json` or `--plot`) naming `path`.
fn fanout_writing(port: &str, duration: &str, option: &str, path: &str) -> (i32, String, Duration) {
    bench(&[
        "fanout",
        "-S",
        "1",
        "--port",
        port,
        "--duration",
        duration,
        option,
        path,
    ])
}

#[test]
fn zero_counts_are_rejected() {
    let port = common::free_port().to_string();
    for (scenario, option, long) in [
        ("fanout", "-S", "--subscribers"),
        ("fanout", "-P", "--publishers"),
        ("fanout", "-T", "--topics"),
        ("fanin", "-P", "--publishers"),
        ("p2p", "-N", "--pairs"),
        ("shared", "-S", "--subscribers"),
        ("connect", "-C", "--concurrency"),
        ("idle", "-N", "--connections"),
        ("retained", "-R", "--retained"),
    ] {
        let args = [scenario, option, "0", "--port", &port, "--duration", "10"];
        let (code, stderr, elapsed) = bench(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(long), "{args:?}: {stderr}");
        assert!(elapsed < BEFORE_ANY_RUN, "{args:?} took {elapsed:?}");
    }
}

#[test]
fn unwritable_output_fails_before_run() {
    let port = common::free_port().to_string();
    let scratch = common::scratch_dir("unwritable");
    let missing = scratch.join("no-such-folder");
    let path = missing.join("report.json");
    let path = path.to_str().expect("a UTF-8 temporary folder");
    for option in ["--json", "--plot"] {
        let (code, stderr, elapsed) = fanout_writing(&port, "10", option, path);
        assert_eq!(code, 2, "{option}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot write {option} {path}")),
            "{option}: {stderr}"
        );
        // The port has no listener: a run that had started would report
        // refused connections.
        assert!(!stderr.contains("refused"), "{option}: {stderr}");
        assert!(elapsed < BEFORE_ANY_RUN, "{option} took {elapsed:?}");
    }
    assert!(!missing.exists());
}

#[test]
fn output_check_leaves_no_file() {
    // The check before the run must not leave an empty report behind when
    // the run then fails.
    let dir = common::scratch_dir("output-check");
    let path = dir.join("report.json");
    let port = common::free_port().to_string();
    let path_arg = path.to_str().expect("a UTF-8 temporary folder");
    let (code, stderr, _) = fanout_writing(&port, "1", "--json", path_arg);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        !path.exists(),
        "an empty report was left at {}",
        path.display()
    );
}

#[test]
fn compare_invalid_scenario_exits_2() {
    let (code, stderr, elapsed) = bench(&[
        "compare",
        "--scenario",
        "fanout --qos 7",
        "--",
        "first=sleep 30",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("invalid --scenario"), "{stderr}");
    assert!(stderr.contains("--qos"), "{stderr}");
    assert!(elapsed < BEFORE_ANY_RUN, "took {elapsed:?}");
}

#[test]
fn oversized_payload_rejected() {
    let port = common::free_port().to_string();
    // The largest payload accepted is 1 KiB short of MQTT's largest
    // remaining length. One byte more, and more still, are rejected.
    for payload in ["268434432", "268435456", "300000000"] {
        let args = [
            "fanout",
            "-S",
            "1",
            "-s",
            payload,
            "--port",
            &port,
            "--duration",
            "10",
        ];
        assert_rejected(&args, &["--payload", payload]);
    }
}

#[test]
fn unusable_cpu_rejected() {
    let port = common::free_port().to_string();
    let args = [
        "fanout",
        "-S",
        "1",
        "--cpus",
        "4095",
        "--port",
        &port,
        "--duration",
        "10",
    ];
    assert_rejected(&args, &["--cpus", "4095"]);
}

/// Checks that the bench rejects `args` with status 2 before any run, and
/// that its message names each of `words`.
fn assert_rejected(args: &[&str], words: &[&str]) {
    let (code, stderr, elapsed) = bench(args);
    assert_eq!(code, 2, "{args:?}: {stderr}");
    for word in words {
        assert!(
            stderr.contains(word),
            "{args:?} does not name {word}: {stderr}"
        );
    }
    assert!(elapsed < BEFORE_ANY_RUN, "{args:?} took {elapsed:?}");
}

//! Runs that cannot open their connections end promptly with an error.

mod common;

use std::time::{Duration, Instant};

use common::run_bench;

/// Far below the harness's kill timeout, so a hang fails here first.
const PROMPT_EXIT: Duration = Duration::from_secs(20);

#[test]
fn refused_port_fails_promptly() {
    // A port that was free a moment ago has no listener, so every connect
    // is refused.
    let port = common::free_port().to_string();
    let started = Instant::now();
    let run = run_bench(&["fanout", "-S", "3", "--port", &port, "--duration", "1"]);
    let elapsed = started.elapsed();

    assert_eq!(run.code(), 1, "{}", run.text());
    assert!(
        elapsed < PROMPT_EXIT,
        "exit took {elapsed:?}; {}",
        run.text()
    );
    assert!(run.text().contains("refused"), "{}", run.text());
}

#[test]
fn connect_storm_without_listener_fails() {
    let port = common::free_port().to_string();
    let run = run_bench(&["connect", "--port", &port, "--duration", "1"]);

    assert_eq!(run.code(), 1, "{}", run.text());
    let report = run.report();
    assert!(common::number(report, "/error_count") > 0.0, "{report:#}");
    assert!(run.text().contains("refused"), "{}", run.text());
}

#[test]
fn unanswered_handshake_fails_promptly() {
    // A listener with a backlog of 0 that never accepts: once one
    // connection waits in its queue, the kernel drops the SYNs of the
    // next, and their connects stay pending for about two minutes.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("create a socket");
    let address: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&address.into()).expect("bind 127.0.0.1:0");
    socket.listen(0).expect("listen");
    let port = socket
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("an IP address")
        .port();
    let _queued = std::net::TcpStream::connect(("127.0.0.1", port)).expect("fill the queue");

    let started = Instant::now();
    let port = port.to_string();
    let run = run_bench(&["idle", "-N", "1", "--port", &port, "--duration", "1"]);
    let elapsed = started.elapsed();

    // `idle` counts failed connections as a result, but a run that held
    // none measured nothing and fails.
    assert_eq!(run.code(), 1, "{}", run.text());
    let report = run.report();
    assert_eq!(
        common::number(report, "/figures/connections_held"),
        0.0,
        "{report:#}"
    );
    assert!(run.text().contains("timed out"), "{}", run.text());
    assert!(
        elapsed < PROMPT_EXIT,
        "exit took {elapsed:?}; {}",
        run.text()
    );
}

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

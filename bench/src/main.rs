//! `coremq-bench`: a load generator for MQTT brokers.
//!
//! Each scenario (fanout, fanin, p2p, shared, connect, idle, retained) opens
//! its connections on pinned glommio executors, one per `--threads`, each
//! owning a slice of the connections. Connection tasks batch their I/O: a
//! read decodes every whole packet in the buffer before the next read, and
//! outbound packets of one loop go out in one write. Publishes are copied
//! from a pre-encoded template with the packet id and bench header patched
//! in, so sending allocates nothing per message.
//!
//! Exit status: 0 on success, 1 when the run failed (including a lost
//! publisher or subscriber connection), 2 on invalid command line options,
//! 3 when a QoS 1/2 run lost messages.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod compare;
mod error;
mod local;
mod mqtt;
mod net;
mod payload;
mod plot;
mod procfs;
mod pubsub;
mod report;
mod retained;
mod run;
mod scenario;
mod stats;
mod storm;
mod websocket;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::error::BenchError;
use crate::report::Report;

/// Exit status of a run that failed to complete.
const EXIT_FAILED: u8 = 1;

/// Exit status of invalid command line options, as clap uses.
const EXIT_INVALID_ARGUMENT: u8 = 2;

/// Exit status of a QoS 1/2 run that lost messages.
const EXIT_LOST_MESSAGES: u8 = 3;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();

    let result = check_outputs(&cli.command).and_then(|()| match &cli.command {
        Command::Compare(args) => compare::run(args).and_then(|reports| {
            write_outputs(
                &reports,
                args.json.as_deref(),
                args.plot.as_deref(),
                &args.scenario,
            )?;
            Ok(reports)
        }),
        command => scenario::run_scenario(command).and_then(|report| {
            println!("{}", report.to_text());
            let common = command.common().expect("compare is matched above");
            write_outputs(
                std::slice::from_ref(&report),
                common.json.as_deref(),
                common.plot.as_deref(),
                command.name(),
            )?;
            Ok(vec![report])
        }),
    });
    match result {
        Ok(reports) if reports.iter().any(Report::failed) => ExitCode::from(EXIT_FAILED),
        Ok(reports) if reports.iter().any(Report::lost_guaranteed_messages) => {
            ExitCode::from(EXIT_LOST_MESSAGES)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            match err {
                BenchError::InvalidArgument(_) => ExitCode::from(EXIT_INVALID_ARGUMENT),
                _ => ExitCode::from(EXIT_FAILED),
            }
        }
    }
}

/// Checks that `--json` and `--plot` can be written before the run starts,
/// so that a mistyped path does not cost a whole run.
fn check_outputs(command: &Command) -> Result<(), BenchError> {
    let (json, plot) = match command {
        Command::Compare(args) => (args.json.as_deref(), args.plot.as_deref()),
        command => {
            let common = command.common().expect("compare is matched above");
            (common.json.as_deref(), common.plot.as_deref())
        }
    };
    for (option, path) in [("--json", json), ("--plot", plot)] {
        if let Some(path) = path {
            check_writable(option, path)?;
        }
    }
    Ok(())
}

/// Opens `path` for writing without truncating it, and removes it again
/// when this check created it.
fn check_writable(option: &str, path: &Path) -> Result<(), BenchError> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|err| {
            BenchError::InvalidArgument(format!(
                "cannot write {option} {}: {err}. Name a file in a folder that exists and is writable",
                path.display()
            ))
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Writes the JSON report (one object, or an array for a comparison) and the
/// latency plot.
fn write_outputs(
    reports: &[Report],
    json: Option<&Path>,
    plot: Option<&Path>,
    title: &str,
) -> Result<(), BenchError> {
    if let Some(path) = json {
        let text = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])
        } else {
            serde_json::to_string_pretty(reports)
        }
        .expect("reports contain only serializable values");
        std::fs::write(path, text + "\n").map_err(|err| {
            BenchError::Runtime(format!("cannot write --json {}: {err}", path.display()))
        })?;
    }
    if let Some(path) = plot {
        let mut series = Vec::new();
        for report in reports {
            let name = report.broker.as_deref().unwrap_or(&report.scenario);
            let latencies = [
                &report.latency,
                &report.ack_latency,
                &report.complete_latency,
            ];
            for latency in latencies.into_iter().flatten() {
                series.push((
                    format!("{name} ({})", latency.measures),
                    latency.curve.clone(),
                ));
            }
        }
        if series.is_empty() {
            tracing::warn!("--plot skipped: this scenario measures no latency");
        } else {
            let svg = plot::latency_svg(&format!("coremq-bench {title}"), &series);
            std::fs::write(path, svg).map_err(|err| {
                BenchError::Runtime(format!("cannot write --plot {}: {err}", path.display()))
            })?;
        }
    }
    Ok(())
}

//! Turns a scenario subcommand into a run and its report.

use std::sync::Arc;

use crate::cli::Command;
use crate::error::BenchError;
use crate::procfs;
use crate::pubsub::{self, Plan};
use crate::report::{Report, ReportInput};
use crate::retained::retained_body;
use crate::run::{self, ExecutorBody, RunConfig, RunPolicy};
use crate::storm::{connect_body, idle_body};

/// Runs the scenario of `command` and returns its report.
///
/// # Errors
///
/// Fails on invalid options or when the run cannot complete; `compare` is not
/// a scenario and is rejected here.
pub fn run_scenario(command: &Command) -> Result<Report, BenchError> {
    let Some(common) = command.common() else {
        return Err(BenchError::InvalidArgument(
            "compare takes a scenario, it is not one".into(),
        ));
    };
    let config = Arc::new(RunConfig::from_args(common)?);

    let pubsub_policy = |plan: &Plan| RunPolicy {
        abort_on_setup_failure: true,
        connections: plan.connections(),
        drain: true,
    };
    let (body, policy, input): (ExecutorBody, RunPolicy, ReportInput<'_>) = match command {
        Command::Fanout {
            publishers,
            subscribers,
            topics,
            ..
        } => {
            let plan = Plan::fanout(&config.run_id, *publishers, *subscribers, *topics);
            pubsub_run(&config, plan, "fanout", &pubsub_policy)
        }
        Command::Fanin {
            publishers,
            subscribers,
            ..
        } => {
            let plan = Plan::fanin(&config.run_id, *publishers, *subscribers);
            pubsub_run(&config, plan, "fanin", &pubsub_policy)
        }
        Command::P2p { pairs, .. } => {
            let plan = Plan::p2p(&config.run_id, *pairs);
            pubsub_run(&config, plan, "p2p", &pubsub_policy)
        }
        Command::Shared {
            publishers,
            subscribers,
            ..
        } => {
            let plan = Plan::shared(&config.run_id, *publishers, *subscribers);
            pubsub_run(&config, plan, "shared", &pubsub_policy)
        }
        Command::Connect { concurrency, .. } => (
            connect_body(config.clone(), *concurrency),
            RunPolicy {
                abort_on_setup_failure: true,
                connections: 0,
                drain: false,
            },
            ReportInput {
                scenario: "connect",
                planned_connections: u64::from(*concurrency),
                latency_measures: Some("connect to CONNACK"),
                tracks_loss: false,
                times_acks: false,
                errors_fail_run: false,
            },
        ),
        Command::Idle {
            connections,
            concurrency,
            ..
        } => (
            idle_body(config.clone(), *connections, *concurrency),
            RunPolicy {
                abort_on_setup_failure: false,
                connections: u64::from(*connections),
                drain: false,
            },
            ReportInput {
                scenario: "idle",
                planned_connections: u64::from(*connections),
                latency_measures: None,
                tracks_loss: false,
                times_acks: false,
                errors_fail_run: false,
            },
        ),
        Command::Retained {
            retained,
            subscribers,
            ..
        } => (
            retained_body(config.clone(), *retained, *subscribers),
            RunPolicy {
                abort_on_setup_failure: true,
                connections: u64::from(*subscribers) + 1,
                drain: false,
            },
            ReportInput {
                scenario: "retained",
                planned_connections: u64::from(*subscribers) + 1,
                latency_measures: Some("SUBSCRIBE to last retained message"),
                tracks_loss: false,
                times_acks: false,
                errors_fail_run: true,
            },
        ),
        Command::Compare(_) => unreachable!("rejected above"),
    };

    // The idle scenario reports broker memory per connection, measured from
    // before the first connection opens.
    let baseline = config
        .broker_pid
        .and_then(|pid| procfs::sample(Some(pid)).ok());
    let outcome = run::run(&config, policy, body)?;
    let mut report = Report::new(&config, input, &outcome);
    if let Command::Idle { .. } = command {
        add_idle_figures(&mut report, baseline, &outcome);
    }
    Ok(report)
}

fn pubsub_run(
    config: &Arc<RunConfig>,
    plan: Plan,
    scenario: &'static str,
    policy: &dyn Fn(&Plan) -> RunPolicy,
) -> (ExecutorBody, RunPolicy, ReportInput<'static>) {
    let policy = policy(&plan);
    let input = ReportInput {
        scenario,
        planned_connections: plan.connections(),
        latency_measures: Some("publish to delivery"),
        tracks_loss: true,
        times_acks: true,
        errors_fail_run: true,
    };
    (
        pubsub::executor_body(config.clone(), Arc::new(plan)),
        policy,
        input,
    )
}

fn add_idle_figures(
    report: &mut Report,
    baseline: Option<procfs::ProcessSample>,
    outcome: &run::RunOutcome,
) {
    let held = outcome
        .extra
        .iter()
        .find(|(name, _)| *name == "connections_held")
        .map_or(0, |(_, n)| *n);
    if let (Some(baseline), Some((_, end))) = (baseline, outcome.broker) {
        if held > 0 {
            let grown = end.rss_bytes as f64 - baseline.rss_bytes as f64;
            report
                .figures
                .insert("broker_rss_before_bytes".into(), baseline.rss_bytes as f64);
            report.figures.insert(
                "broker_rss_per_connection_bytes".into(),
                (grown / held as f64).round(),
            );
        }
    }
}

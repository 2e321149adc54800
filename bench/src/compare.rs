//! `compare`: the same scenario against several brokers, one after another.
//!
//! Each broker is started on a free loopback port, pinned with `taskset`,
//! given until `--start-timeout` to accept connections, loaded, and stopped
//! by its pid with SIGTERM (SIGKILL after a grace period).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

use crate::cli::{Cli, Command, CommonArgs, CompareArgs, ProtocolArg, TransportArg};
use crate::error::BenchError;
use crate::report::{bytes_text, micros_text, Report};
use crate::run::{format_count, parse_cpu_list};
use crate::scenario::run_scenario;

/// Time a broker gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Lines of a broker's log printed when it fails.
const LOG_TAIL_LINES: usize = 20;

/// One broker to compare: a name and a shell command template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerSpec {
    pub name: String,
    /// Command run by `sh -c`; `{port}` and `{dir}` are replaced first, and
    /// `exec` is prepended unless the command contains it.
    pub command: String,
    /// Files written into `{dir}` before the start, as (name, contents).
    pub files: Vec<(String, String)>,
}

/// Parses `NAME=COMMAND`.
pub fn parse_broker(spec: &str) -> Result<BrokerSpec, BenchError> {
    match spec.split_once('=') {
        Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => Ok(BrokerSpec {
            name: name.trim().to_string(),
            command: command.trim().to_string(),
            files: Vec::new(),
        }),
        _ => Err(BenchError::InvalidArgument(format!(
            "invalid broker {spec:?}: expected NAME=COMMAND, such as \"mosquitto=mosquitto -c {{dir}}/m.conf\""
        ))),
    }
}

/// Runs the comparison and returns one report per broker that completed.
///
/// # Errors
///
/// Fails on an invalid scenario or broker list, when `taskset` is missing,
/// or when no broker completes the scenario.
pub fn run(args: &CompareArgs) -> Result<Vec<Report>, BenchError> {
    let scenario = parse_scenario(&args.scenario)?;
    let broker_cpus = parse_cpu_list(&args.broker_cpus)?;
    let common = scenario.common().expect("parse_scenario rejects compare");
    let brokers = if args.brokers.is_empty() {
        default_brokers(broker_cpus.len(), common)
    } else {
        args.brokers
            .iter()
            .map(|spec| parse_broker(spec))
            .collect::<Result<Vec<_>, _>>()?
    };
    if brokers.is_empty() {
        return Err(BenchError::InvalidArgument(
            "no broker to compare: build coremq, install Debian's mosquitto package, or name brokers after --".into(),
        ));
    }
    if find_on_path("taskset").is_none() {
        return Err(BenchError::Runtime(
            "taskset not found; install Debian's util-linux package".into(),
        ));
    }

    let scratch = std::env::temp_dir().join(format!("coremq-bench-compare-{}", std::process::id()));
    let mut reports = Vec::new();
    for broker in &brokers {
        eprintln!("== {}: {}", broker.name, broker.command);
        match run_broker(args, &scenario, broker, &scratch) {
            Ok(report) => {
                println!("{}", report.to_text());
                reports.push(report);
            }
            Err(err) => tracing::error!(broker = %broker.name, "comparison run failed: {err}"),
        }
    }
    let _ = fs::remove_dir_all(&scratch);
    if reports.is_empty() {
        return Err(BenchError::Runtime(
            "no broker completed the scenario".into(),
        ));
    }
    println!("{}", ratio_table(&reports));
    Ok(reports)
}

fn parse_scenario(text: &str) -> Result<Command, BenchError> {
    let args = std::iter::once("coremq-bench").chain(text.split_whitespace());
    let cli = Cli::try_parse_from(args).map_err(|err| {
        BenchError::InvalidArgument(format!("invalid --scenario {text:?}: {err}"))
    })?;
    if let Command::Compare(_) = cli.command {
        return Err(BenchError::InvalidArgument(
            "--scenario cannot be compare".into(),
        ));
    }
    Ok(cli.command)
}

fn run_broker(
    args: &CompareArgs,
    scenario: &Command,
    broker: &BrokerSpec,
    scratch: &Path,
) -> Result<Report, BenchError> {
    let dir = scratch.join(&broker.name);
    fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let expand = |text: &str| {
        text.replace("{port}", &port.to_string())
            .replace("{dir}", &dir.display().to_string())
    };
    for (name, contents) in &broker.files {
        fs::write(dir.join(name), expand(contents))?;
    }
    let command = shell_command(&expand(&broker.command));
    let log_path = dir.join("broker.log");
    let log = File::create(&log_path)?;
    let mut child = Process::new("taskset")
        .args(["-c", &args.broker_cpus, "sh", "-c", &command])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|err| BenchError::Runtime(format!("cannot start {}: {err}", broker.name)))?;

    let result = wait_for_port(
        &mut child,
        port,
        Duration::from_secs_f64(args.start_timeout),
    )
    .and_then(|()| {
        let mut scenario = scenario.clone();
        let common = scenario
            .common_mut()
            .expect("parse_scenario rejects compare");
        common.host = "127.0.0.1".into();
        common.port = port;
        common.broker_pid = Some(child.id());
        common.json = None;
        common.plot = None;
        let mut report = run_scenario(&scenario)?;
        report.broker = Some(broker.name.clone());
        Ok(report)
    });
    stop(&mut child);
    if result.is_err() {
        eprintln!(
            "--- last lines of {} ---\n{}",
            log_path.display(),
            log_tail(&log_path)
        );
    }
    result
}

/// Prefixes `exec` so the shell is replaced by the broker and the child's pid
/// is the broker's, unless the command already uses `exec` itself (as a
/// command that writes a config file first must).
fn shell_command(command: &str) -> String {
    if command.split_whitespace().any(|word| word == "exec") {
        command.to_string()
    } else {
        format!("exec {command}")
    }
}

fn free_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn wait_for_port(child: &mut Child, port: u16, timeout: Duration) -> Result<(), BenchError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Err(BenchError::Runtime(format!(
                "broker exited with {status} before accepting connections"
            )));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(BenchError::TimedOut("the broker to accept connections"))
}

/// Stops the broker by its pid: SIGTERM, then SIGKILL after [`STOP_GRACE`].
fn stop(child: &mut Child) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        let _ = child.kill();
        return;
    };
    // SAFETY: kill has no memory-safety preconditions; the pid is our own
    // child, which has not been reaped yet, so it cannot have been reused.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::warn!(pid, "broker did not exit after SIGTERM; sending SIGKILL");
    let _ = child.kill();
    let _ = child.wait();
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Returns the full path of `program` when it is on PATH or in /usr/sbin.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Finds the coremq binary: `COREMQ_BIN`, then next to this executable, then
/// under `CARGO_TARGET_DIR` (release before debug).
pub fn find_coremq() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("COREMQ_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("coremq"));
            if let Some(profile_dir) = dir.parent() {
                candidates.push(profile_dir.join("coremq"));
            }
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        candidates.push(target.join("release/coremq"));
        candidates.push(target.join("debug/coremq"));
    }
    candidates.into_iter().find(|path| path.is_file())
}

/// coremq from the workspace build, Mosquitto and rumqttd, each when found,
/// listening on `{port}` with the scenario's transport and protocol.
fn default_brokers(broker_cpus: usize, common: &CommonArgs) -> Vec<BrokerSpec> {
    let transport = common.transport;
    let mut brokers = Vec::new();
    match find_coremq() {
        // Sessions and retained messages stay in memory, as in Mosquitto
        // with persistence off, so no broker pays for a disk.
        Some(bin) => {
            let listener = match transport {
                TransportArg::Tcp => "127.0.0.1:{port}".to_owned(),
                TransportArg::Ws => format!("ws://127.0.0.1:{{port}}{}", common.ws_path),
            };
            brokers.push(BrokerSpec {
                name: "coremq".into(),
                command: format!(
                    "{} --listen {listener} --shards {} --storage memory",
                    bin.display(),
                    broker_cpus.max(1)
                ),
                files: Vec::new(),
            });
        }
        None => tracing::warn!(
            "coremq not found: run `cargo build --release -p coremq` or set COREMQ_BIN"
        ),
    }
    let mosquitto_listener = match transport {
        TransportArg::Tcp => "listener {port} 127.0.0.1\n",
        TransportArg::Ws => "listener {port} 127.0.0.1\nprotocol websockets\n",
    };
    match find_on_path("mosquitto") {
        Some(bin) => brokers.push(BrokerSpec {
            name: "mosquitto".into(),
            command: format!("{} -c {{dir}}/mosquitto.conf", bin.display()),
            files: vec![(
                "mosquitto.conf".into(),
                format!("{mosquitto_listener}allow_anonymous true\npersistence false\n"),
            )],
        }),
        None => tracing::warn!("mosquitto not found: install Debian's mosquitto package"),
    }
    if transport == TransportArg::Ws {
        // NOTE: rumqttd's WebSocket listener is a different config section,
        // not written here.
        return brokers;
    }
    match find_on_path("rumqttd") {
        Some(_) if common.keep_alive == 0 => tracing::warn!(
            "rumqttd skipped: it rejects clients with Keep Alive 0, so \
             add --keep-alive 60 to the scenario to include it"
        ),
        Some(bin) => brokers.push(BrokerSpec {
            name: "rumqttd".into(),
            command: format!("{} --quiet --config {{dir}}/rumqttd.toml", bin.display()),
            files: vec![("rumqttd.toml".into(), rumqttd_config(common.protocol))],
        }),
        None => {}
    }
    brokers
}

/// Returns a rumqttd configuration with one listener on `{port}`, in the
/// section for `protocol`: rumqttd serves MQTT 3.1.1 and 5 on different
/// listeners.
/// Tried with rumqttd 0.20.0 from `cargo install rumqttd`.
fn rumqttd_config(protocol: ProtocolArg) -> String {
    let section = match protocol {
        ProtocolArg::V311 => "v4",
        ProtocolArg::V5 => "v5",
    };
    RUMQTTD_CONFIG.replace("{section}", section)
}

const RUMQTTD_CONFIG: &str = r#"id = 0

[router]
id = 0
max_connections = 100010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[{section}.1]
name = "{section}-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [{section}.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 100
"#;

/// Formats the figures of all brokers side by side, with each value's ratio
/// to the first broker's.
pub fn ratio_table(reports: &[Report]) -> String {
    type Metric = (&'static str, fn(&Report) -> Option<f64>, fn(f64) -> String);
    let metrics: [Metric; 13] = [
        (
            "sent msg/s",
            |r| Some(r.sent.msgs_per_sec).filter(|v| *v > 0.0),
            format_count,
        ),
        (
            "delivered msg/s",
            |r| Some(r.delivered.msgs_per_sec).filter(|v| *v > 0.0),
            format_count,
        ),
        (
            "acked msg/s",
            |r| r.acked.as_ref().map(|a| a.msgs_per_sec),
            format_count,
        ),
        (
            "latency p50",
            |r| r.latency.as_ref().map(|l| l.p50_us),
            micros_text,
        ),
        (
            "latency p99",
            |r| r.latency.as_ref().map(|l| l.p99_us),
            micros_text,
        ),
        (
            "latency p99.9",
            |r| r.latency.as_ref().map(|l| l.p999_us),
            micros_text,
        ),
        (
            "ack latency p99",
            |r| r.ack_latency.as_ref().map(|l| l.p99_us),
            micros_text,
        ),
        (
            "broker cpu %",
            |r| r.broker_process.as_ref().map(|b| b.cpu_percent),
            |v| format!("{v:.0}%"),
        ),
        (
            "delivered per cpu-s",
            |r| {
                r.broker_process
                    .as_ref()
                    .and_then(|b| b.delivered_per_cpu_sec)
            },
            format_count,
        ),
        (
            "cpu-s per million",
            |r| {
                r.broker_process
                    .as_ref()
                    .and_then(|b| b.cpu_secs_per_million_delivered)
            },
            |v| format!("{v:.3}"),
        ),
        (
            "broker peak rss",
            |r| r.broker_process.as_ref().map(|b| b.peak_rss_bytes as f64),
            bytes_text,
        ),
        (
            "rounds/s",
            |r| r.figures.get("rounds_per_sec").copied(),
            format_count,
        ),
        (
            "rss per connection",
            |r| r.figures.get("broker_rss_per_connection_bytes").copied(),
            bytes_text,
        ),
    ];
    let mut out = String::new();
    let _ = write!(out, "{:<22}", "ratio to first broker");
    for report in reports {
        let _ = write!(out, " {:>24}", report.broker.as_deref().unwrap_or("?"));
    }
    out.push('\n');
    for (name, value_of, format) in metrics {
        let values: Vec<Option<f64>> = reports.iter().map(value_of).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(out, "{name:<22}");
        for value in &values {
            let cell = match (value, values[0]) {
                (Some(v), Some(first)) if first > 0.0 => {
                    format!("{} ({:.2}x)", format(*v), v / first)
                }
                (Some(v), _) => format(*v),
                (None, _) => "-".into(),
            };
            let _ = write!(out, " {cell:>24}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Throughput;

    #[test]
    fn broker_spec_parsing() {
        let spec = parse_broker("m=mosquitto -c {dir}/m.conf").unwrap();
        assert_eq!(spec.name, "m");
        assert_eq!(spec.command, "mosquitto -c {dir}/m.conf");
        assert!(parse_broker("no-equals").is_err());
        assert!(parse_broker("=cmd").is_err());
        assert!(parse_broker("name=").is_err());
    }

    #[test]
    fn exec_prefix_added_once() {
        assert_eq!(
            shell_command("mosquitto -c a.conf"),
            "exec mosquitto -c a.conf"
        );
        assert_eq!(
            shell_command("echo x > f; exec mosquitto"),
            "echo x > f; exec mosquitto"
        );
    }

    #[test]
    fn scenario_parsing() {
        let command = parse_scenario("fanout -S 10 --duration 1").unwrap();
        assert!(matches!(
            command,
            Command::Fanout {
                subscribers: 10,
                ..
            }
        ));
        assert!(parse_scenario("compare --scenario fanout").is_err());
        assert!(parse_scenario("nonsense").is_err());
    }

    #[test]
    fn ratios_against_first() {
        let report = |name: &str, rate: f64| Report {
            broker: Some(name.into()),
            delivered: Throughput {
                msgs: 1,
                msgs_per_sec: rate,
                bytes_per_sec: 0.0,
            },
            ..Report::default()
        };
        let table = ratio_table(&[report("a", 1000.0), report("b", 500.0)]);
        assert!(table.contains("1,000 (1.00x)"), "{table}");
        assert!(table.contains("500 (0.50x)"), "{table}");
        assert!(!table.contains("latency"), "{table}");
    }
}

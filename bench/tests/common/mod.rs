//! Helpers of the integration tests: a Mosquitto broker on a free loopback
//! port, and a runner for the bench binary.

#![allow(dead_code)]

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Maximum time one bench run may take in a test.
const BENCH_TIMEOUT: Duration = Duration::from_secs(90);

/// Maximum time a broker gets to accept connections.
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// An empty scratch folder unique to this test process and call, removed
/// with its contents on drop.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Creates a [`Scratch`] folder named after `name`.
pub fn scratch_dir(name: &str) -> Scratch {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "coremq-bench-test-{}-{name}-{n}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("temp dir is writable");
    Scratch(dir)
}

/// Returns a port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Waits until `port` accepts connections; panics with the broker log if
/// it does not within [`BROKER_START_TIMEOUT`].
pub fn wait_for_port(child: &mut Child, port: u16, log: &Path) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + BROKER_START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "broker exited with {status} before listening; log:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "broker did not listen on port {port} within {BROKER_START_TIMEOUT:?}; log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// Returns the path of `mosquitto`, failing the test when it is missing.
pub fn mosquitto_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| candidate.is_file())
        .expect(
            "mosquitto not found: install Debian's mosquitto package (apt-get install mosquitto)",
        )
}

/// A Mosquitto broker on a free loopback port, killed by its pid on drop.
pub struct Mosquitto {
    pub port: u16,
    /// Port of the WebSocket listener.
    pub ws_port: u16,
    child: Child,
    log: PathBuf,
    /// Keeps the config and the log until the broker is gone.
    _dir: Scratch,
}

impl Mosquitto {
    /// Starts Mosquitto with an MQTT listener and a WebSocket listener on
    /// 127.0.0.1 and anonymous access.
    pub fn start() -> Mosquitto {
        let dir = scratch_dir("mosquitto");
        let port = free_port();
        let ws_port = free_port();
        let config = dir.join("mosquitto.conf");
        fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 listener {ws_port} 127.0.0.1\nprotocol websockets\n"
            ),
        )
        .expect("write mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let log_file = fs::File::create(&log).expect("create mosquitto.log");
        let mut child = Command::new(mosquitto_path())
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start mosquitto");
        wait_for_port(&mut child, port, &log);
        wait_for_port(&mut child, ws_port, &log);
        Mosquitto {
            port,
            ws_port,
            child,
            log,
            _dir: dir,
        }
    }

    /// Process id of the broker.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Broker log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Result of one bench run.
pub struct BenchRun {
    pub output: Output,
    /// The `--json` report, when the run wrote one.
    pub json: Option<serde_json::Value>,
}

impl BenchRun {
    /// Exit code of the bench; panics when it was killed by a signal.
    pub fn code(&self) -> i32 {
        self.output.status.code().expect("bench exited normally")
    }

    /// Stdout and stderr, for assertion messages.
    pub fn text(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    /// The JSON report; panics with the output when there is none.
    pub fn report(&self) -> &serde_json::Value {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report written; {}", self.text()))
    }
}

/// Runs `coremq-bench ARGS --json FILE --quiet` and reads the report.
pub fn run_bench(args: &[&str]) -> BenchRun {
    let dir = scratch_dir("run");
    let json_path = dir.join("report.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_coremq-bench"));
    command.args(args);
    if args.first() != Some(&"compare") {
        command.arg("--json").arg(&json_path).arg("--quiet");
    }
    let output = run_with_timeout(command);
    let json = fs::read_to_string(&json_path)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("--json writes valid JSON"));
    BenchRun { output, json }
}

/// Runs `command` with its output sent to files, so that no pipe can fill
/// and block it, and kills it after [`BENCH_TIMEOUT`].
pub fn run_with_timeout(mut command: Command) -> Output {
    let dir = scratch_dir("output");
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).expect("create stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("create stderr file"))
        .spawn()
        .expect("start coremq-bench");
    let deadline = Instant::now() + BENCH_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll bench") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "coremq-bench ran longer than {BENCH_TIMEOUT:?}; stderr:\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: fs::read(&stdout_path).unwrap_or_default(),
        stderr: fs::read(&stderr_path).unwrap_or_default(),
    }
}

/// Reads a number at a JSON pointer, failing with the report when missing.
pub fn number(report: &serde_json::Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing from report: {report:#}"))
}

//! A `coremq` process started for one test: its address, its log, and a
//! kill by pid when the test ends.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long the broker may take to log its listening address.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Shards used unless a test passes its own `--shards`, so that cross-shard
/// paths run in every test.
const DEFAULT_SHARDS: &str = "2";

/// Lines the broker wrote to stderr and stdout, shared with the reader
/// threads.
#[derive(Default)]
struct LogBuffer {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running `coremq` process listening on a free loopback port.
pub struct Broker {
    child: Child,
    addr: SocketAddr,
    log: Arc<LogBuffer>,
    args: Vec<String>,
}

impl Broker {
    /// Starts the broker on `127.0.0.1:0` with `--shards 2` and `extra_args`.
    ///
    /// # Panics
    ///
    /// Panics when the binary is missing, does not start, or does not log
    /// its listening address within 10 s.
    pub fn start(extra_args: &[&str]) -> Broker {
        Broker::start_with_log_filter(extra_args, None)
    }

    /// Starts the broker as [`Broker::start`] does, with `log_filter` as
    /// its `RUST_LOG` when given, so that a test can wait for debug lines.
    ///
    /// # Panics
    ///
    /// Panics as [`Broker::start`] does.
    pub fn start_with_log_filter(extra_args: &[&str], log_filter: Option<&str>) -> Broker {
        let mut args: Vec<String> = vec!["--listen".into(), "127.0.0.1:0".into()];
        if !extra_args.contains(&"--shards") {
            args.push("--shards".into());
            args.push(DEFAULT_SHARDS.into());
        }
        if !extra_args.contains(&"--storage") && !extra_args.contains(&"--data-dir") {
            // Brokers of parallel tests would share ./data; tests of the
            // store pass their own directory.
            args.push("--storage".into());
            args.push("memory".into());
        }
        args.extend(extra_args.iter().map(|arg| arg.to_string()));
        Broker::spawn(&args, log_filter)
    }

    /// Starts the broker with exactly `args`, which must make it listen on
    /// a TCP port (usually `--listen 127.0.0.1:0`).
    ///
    /// # Panics
    ///
    /// Panics as [`Broker::start`] does.
    pub fn with_args<S: AsRef<str>>(args: &[S]) -> Broker {
        Broker::spawn(args, None)
    }

    fn spawn<S: AsRef<str>>(args: &[S], log_filter: Option<&str>) -> Broker {
        let args: Vec<String> = args.iter().map(|arg| arg.as_ref().to_string()).collect();
        let binary = broker_binary();
        let mut command = Command::new(&binary);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        if let Some(filter) = log_filter {
            command.env("RUST_LOG", filter);
        } else if std::env::var_os("RUST_LOG").is_none() {
            // Tests read the INFO lines (listening address, client shard).
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()));

        let log = Arc::new(LogBuffer::default());
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        spawn_log_reader(stderr, Arc::clone(&log));
        spawn_log_reader(stdout, Arc::clone(&log));

        let mut broker = Broker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            args,
        };
        broker.addr = broker.wait_for_listen_addr();
        broker
    }

    /// Address of the first TCP listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Process id of the broker.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash or power cut would end it,
    /// and starts it again with the same arguments. The new process listens
    /// on a new port; its log starts empty.
    ///
    /// # Panics
    ///
    /// Panics as [`Broker::start`] does.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let restarted = Broker::with_args(&self.args);
        // Dropping the old value kills nothing: its child has exited.
        let _ = std::mem::replace(self, restarted);
    }

    /// Returns true while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every log line so far, joined with newlines.
    pub fn log_text(&self) -> String {
        self.log.lines.lock().expect("log lock").join("\n")
    }

    /// Waits until a log line satisfies `predicate` and returns it, or
    /// returns `None` after `timeout`.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        predicate: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().expect("log lock");
        let mut checked = 0;
        loop {
            if let Some(line) = lines[checked..].iter().find(|line| predicate(line)) {
                return Some(line.clone());
            }
            checked = lines.len();
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .expect("log lock")
                .0;
        }
    }

    /// Shard that owns the session of `client_id`, read from the broker's
    /// `connected client_id=... shard=N` log line, waiting up to 2 s.
    pub fn shard_of(&self, client_id: &str) -> Option<u32> {
        let line = self.wait_for_log(Duration::from_secs(2), |line| {
            line.contains("connected")
                && field_value(line, "client_id").as_deref() == Some(client_id)
                && field_value(line, "shard").is_some()
        })?;
        field_value(&line, "shard")?.parse().ok()
    }

    fn wait_for_listen_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_log(START_TIMEOUT, |line| {
            line.contains("listening") && line.contains("protocol=tcp") && line.contains("addr=")
        });
        let Some(line) = line else {
            let status = self.child.try_wait().ok().flatten();
            panic!(
                "coremq did not log `listening protocol=tcp addr=...` within {START_TIMEOUT:?} \
                 (exit status: {status:?}); its log:\n{}",
                self.log_text()
            );
        };
        let value = field_value(&line, "addr").expect("the line contains addr=");
        value.parse().unwrap_or_else(|error| {
            panic!("invalid listening address {value:?} in {line:?}: {error}")
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's pid only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- coremq log (pid {}) ----\n{}\n---- end of coremq log ----",
                self.child.id(),
                self.log_text()
            );
        }
    }
}

/// Finds the broker binary: `COREMQ_BIN`, else `$CARGO_TARGET_DIR/debug/coremq`,
/// else `<workspace>/target/debug/coremq`.
///
/// # Panics
///
/// Panics with the build command when the binary does not exist.
pub fn broker_binary() -> PathBuf {
    let candidate = if let Some(path) = std::env::var_os("COREMQ_BIN") {
        PathBuf::from(path)
    } else if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(dir).join("debug").join("coremq")
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug")
            .join("coremq")
    };
    if !candidate.is_file() {
        panic!(
            "the coremq binary was not found at {}: run `cargo build -p coremq` \
             (with the same CARGO_TARGET_DIR) or set COREMQ_BIN",
            candidate.display()
        );
    }
    candidate
}

/// Reads `key=value` from a tracing line, without surrounding quotes.
pub fn field_value(line: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let mut search_from = 0;
    while let Some(found) = line[search_from..].find(&needle) {
        let start = search_from + found;
        let at_word_start = start == 0
            || !line[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let value_start = start + needle.len();
        if at_word_start {
            let rest = &line[value_start..];
            let value = if let Some(quoted) = rest.strip_prefix('"') {
                quoted.split('"').next().unwrap_or("")
            } else {
                rest.split(|c: char| c.is_whitespace() || c == ',' || c == '}')
                    .next()
                    .unwrap_or("")
            };
            return Some(value.to_string());
        }
        search_from = value_start;
    }
    None
}

fn spawn_log_reader(stream: impl Read + Send + 'static, log: Arc<LogBuffer>) {
    thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            log.lines.lock().expect("log lock").push(line);
            log.changed.notify_all();
        }
    });
}

/// Removes ANSI colour sequences, in case the broker colours its log anyway.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_value_reads_plain_and_quoted() {
        let line = r#"INFO connected client_id="t1" shard=1 peer=127.0.0.1:5"#;
        assert_eq!(field_value(line, "client_id").as_deref(), Some("t1"));
        assert_eq!(field_value(line, "shard").as_deref(), Some("1"));
        assert_eq!(field_value(line, "id"), None);
    }

    #[test]
    fn field_value_reads_listening_addr() {
        let line = "2026 INFO coremq: listening protocol=tcp addr=127.0.0.1:40123";
        assert_eq!(
            field_value(line, "addr").as_deref(),
            Some("127.0.0.1:40123")
        );
    }

    #[test]
    fn strip_ansi_removes_colours() {
        assert_eq!(strip_ansi("\u{1b}[32mINFO\u{1b}[0m x"), "INFO x");
    }
}

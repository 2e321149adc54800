//! The run's timeline and executor threads, shared by every scenario.
//!
//! The main thread starts one pinned glommio executor per `--threads`, each
//! owning a slice of the connections. Executors open their connections and
//! report ready; the main thread then fixes the start, warm-up end and
//! measurement end, prints a progress line every second, samples the broker
//! at the edges of the measurement window, waits for in-flight messages to
//! drain, and finally sets the stop flag that ends the executors.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coremq_codec::{Protocol, QoS};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

use crate::cli::{CommonArgs, TransportArg};
use crate::error::BenchError;
use crate::net::{parse_source_addrs, resolve_target};
use crate::payload::{now_ns, HEADER_LEN};
use crate::procfs::{self, ProcessSample};
use crate::stats::{new_histogram, totals, Counters, SubscriberSummary, Totals};

/// Memory each executor registers with io_uring. glommio's default of 10 MiB
/// exceeds common 8 MiB memlock limits, and the bench's socket I/O does not
/// use registered buffers.
const EXECUTOR_IO_MEMORY: usize = 512 * 1024;

/// Maximum time a task runs before the executor polls for I/O again.
/// glommio's default of 100 ms lets an unthrottled publisher starve the
/// subscribers on the same thread, which then read late and inflate the
/// latency the bench measures.
const EXECUTOR_PREEMPT: Duration = Duration::from_millis(1);

/// Maximum wait for all connections to be open before the run is abandoned.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Delivered messages must stay flat this long before draining ends early.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// Delay between fixing the start time and the start, so every executor
/// reads it before it passes.
const START_DELAY_NS: u64 = 20_000_000;

/// Largest `--payload`: MQTT's largest remaining length, 268,435,455
/// bytes, less 1 KiB for the topic, packet identifier and properties of
/// the bench's PUBLISH packets, which stay far below that.
const MAX_PAYLOAD: usize = 268_435_455 - 1024;

/// Everything a run needs, checked and resolved from the command line.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub protocol: Protocol,
    /// Keep Alive sent in CONNECT, in seconds; 0 for none.
    pub keep_alive: u16,
    pub qos: QoS,
    pub payload: usize,
    pub rate: u64,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    pub cpus: Vec<usize>,
    pub inflight: u16,
    pub broker_pid: Option<u32>,
    pub quiet: bool,
    /// Request path of the WebSocket upgrade, or `None` for plain TCP.
    pub websocket_path: Option<Arc<str>>,
    /// Prefix of every topic and client id, unique per run so that two runs
    /// against one broker never see each other's messages.
    pub run_id: String,
}

impl RunConfig {
    /// Validates `args` and resolves the addresses in them.
    ///
    /// # Errors
    ///
    /// Fails on a non-loopback host without `--allow-remote`, a payload
    /// smaller than the bench header, or an invalid thread, CPU or time value.
    pub fn from_args(args: &CommonArgs) -> Result<RunConfig, BenchError> {
        let target = resolve_target(&args.host, args.port, args.allow_remote)?;
        let sources = match &args.source_addrs {
            Some(spec) => parse_source_addrs(spec, args.allow_remote)?,
            None => Vec::new(),
        };
        if args.payload < HEADER_LEN {
            return Err(BenchError::InvalidArgument(format!(
                "--payload {} is too small: the bench header needs {HEADER_LEN} bytes",
                args.payload
            )));
        }
        if args.payload > MAX_PAYLOAD {
            return Err(BenchError::InvalidArgument(format!(
                "--payload {} is too large. The largest is {MAX_PAYLOAD} bytes, which fills an MQTT packet with the bench's topic",
                args.payload
            )));
        }
        if args.threads == 0 {
            return Err(BenchError::InvalidArgument(
                "--threads must be at least 1".into(),
            ));
        }
        let cpus = match &args.cpus {
            Some(spec) => parse_cpu_list(spec)?,
            None => (0..args.threads).map(|i| i % available_cpus()).collect(),
        };
        let allowed = allowed_cpus();
        if let Some(cpu) = cpus.iter().find(|cpu| !allowed.contains(cpu)) {
            return Err(BenchError::InvalidArgument(format!(
                "--cpus names CPU {cpu}, which this process may not run on. Use CPUs from {allowed:?}"
            )));
        }
        if cpus.len() < args.threads {
            return Err(BenchError::InvalidArgument(format!(
                "--cpus names {} CPUs but --threads is {}; name one CPU per thread",
                cpus.len(),
                args.threads
            )));
        }
        for (name, secs) in [
            ("--duration", args.duration),
            ("--warmup", args.warmup),
            ("--drain", args.drain),
        ] {
            if !secs.is_finite() || secs < 0.0 {
                return Err(BenchError::InvalidArgument(format!(
                    "{name} {secs} is invalid: expected a number of seconds >= 0"
                )));
            }
        }
        if args.duration == 0.0 {
            return Err(BenchError::InvalidArgument(
                "--duration must be above 0".into(),
            ));
        }
        if args.transport == TransportArg::Ws && !args.ws_path.starts_with('/') {
            return Err(BenchError::InvalidArgument(format!(
                "--ws-path {:?} is invalid: expected a path starting with /, such as /mqtt",
                args.ws_path
            )));
        }
        if args.inflight == 0 {
            return Err(BenchError::InvalidArgument(
                "--inflight must be at least 1".into(),
            ));
        }
        Ok(RunConfig {
            target,
            sources,
            protocol: args.protocol.protocol(),
            keep_alive: args.keep_alive,
            qos: args.qos(),
            payload: args.payload,
            rate: args.rate,
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
            drain: Duration::from_secs_f64(args.drain),
            cpus: cpus[..args.threads].to_vec(),
            inflight: args.inflight,
            broker_pid: args.broker_pid,
            quiet: args.quiet,
            websocket_path: (args.transport == TransportArg::Ws)
                .then(|| Arc::from(args.ws_path.as_str())),
            run_id: format!("cmqb{}-{}", std::process::id(), now_ns() % 1_000_000),
        })
    }

    /// Number of executor threads.
    pub fn threads(&self) -> usize {
        self.cpus.len()
    }

    /// Source address of the connection with global index `n`, spreading
    /// connections round-robin over `--source-addrs`.
    pub fn source_for(&self, n: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[n % self.sources.len()])
    }
}

fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Lists the CPU numbers in this process's affinity mask, in ascending
/// order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills in, and
    // a zeroed cpu_set_t is its documented empty value.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..available_cpus()).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

/// Parses a CPU list such as `0,2-3`.
pub fn parse_cpu_list(spec: &str) -> Result<Vec<usize>, BenchError> {
    let invalid = || {
        BenchError::InvalidArgument(format!(
            "invalid CPU list {spec:?}: expected a form like 0,2-3"
        ))
    };
    let mut cpus = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().map_err(|_| invalid())?;
                let last: usize = last.trim().parse().map_err(|_| invalid())?;
                if last < first {
                    return Err(invalid());
                }
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().map_err(|_| invalid())?),
        }
    }
    if cpus.is_empty() {
        return Err(invalid());
    }
    Ok(cpus)
}

/// State shared between the main thread and the executors.
///
/// Ordering: the timeline values are stored before `start_ns` with `Release`
/// and read after it with `Acquire`, so an executor that loads a start also
/// loads the window. Flags and counters are independent and `Relaxed`.
#[derive(Debug, Default)]
pub struct Control {
    /// One set of counters per executor.
    pub counters: Vec<Counters>,
    ready: AtomicUsize,
    setup_failures: AtomicU64,
    start_ns: AtomicU64,
    warm_end_ns: AtomicU64,
    measure_end_ns: AtomicU64,
    stop: AtomicBool,
    abort: AtomicBool,
}

/// Start, warm-up end and measurement end of a run, in [`now_ns`] time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeline {
    pub start_ns: u64,
    pub warm_end_ns: u64,
    pub measure_end_ns: u64,
}

impl Timeline {
    /// Returns true when `t` lies in the measurement window.
    pub fn measures(&self, t: u64) -> bool {
        t >= self.warm_end_ns && t < self.measure_end_ns
    }
}

impl Control {
    fn new(threads: usize) -> Control {
        Control {
            counters: (0..threads).map(|_| Counters::default()).collect(),
            ..Control::default()
        }
    }

    /// Records that one executor has opened all its connections, `failed` of
    /// which could not be opened.
    pub fn mark_ready(&self, failed: u64) {
        self.setup_failures.fetch_add(failed, Ordering::Relaxed);
        self.ready.fetch_add(1, Ordering::Release);
    }

    /// Returns the timeline once the main thread has fixed it.
    pub fn timeline(&self) -> Option<Timeline> {
        let start_ns = self.start_ns.load(Ordering::Acquire);
        (start_ns != 0).then(|| Timeline {
            start_ns,
            warm_end_ns: self.warm_end_ns.load(Ordering::Relaxed),
            measure_end_ns: self.measure_end_ns.load(Ordering::Relaxed),
        })
    }

    /// Waits until the main thread fixes the timeline, then until its start.
    /// Returns an empty timeline, which measures nothing, when the run is
    /// abandoned before it starts.
    pub async fn wait_start(&self) -> Timeline {
        loop {
            if self.aborted() {
                return Timeline::default();
            }
            if let Some(timeline) = self.timeline() {
                let now = now_ns();
                if now < timeline.start_ns {
                    glommio::timer::sleep(Duration::from_nanos(timeline.start_ns - now)).await;
                }
                return timeline;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Returns true once connections should close: the run is over or aborted.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.abort.load(Ordering::Relaxed)
    }

    /// Returns true when the run was abandoned.
    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Abandons the run, for example after a connection failed during setup.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::Relaxed);
    }
}

/// Results of one executor, returned when it ends.
#[derive(Debug)]
pub struct ExecutorOutput {
    /// Latencies measured on this executor, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Publish to PUBACK or PUBREC of messages sent in the measurement
    /// window, in nanoseconds.
    pub ack_latency: Histogram<u64>,
    /// Publish to PUBCOMP of QoS 2 messages sent in the measurement window,
    /// in nanoseconds.
    pub complete_latency: Histogram<u64>,
    /// Messages each publisher sent over the whole run, by publisher id.
    pub published: Vec<(u32, u64)>,
    /// Sequence tracking of each subscriber, not yet compared with `published`.
    pub subscribers: Vec<SubscriberPartial>,
    /// Scenario-specific counts, such as connections opened.
    pub extra: Vec<(&'static str, u64)>,
    /// The first few errors, for the report.
    pub errors: Vec<String>,
}

impl Default for ExecutorOutput {
    fn default() -> Self {
        ExecutorOutput {
            latency: new_histogram(),
            ack_latency: new_histogram(),
            complete_latency: new_histogram(),
            published: Vec::new(),
            subscribers: Vec::new(),
            extra: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// Sequence tracking of one subscriber, per publisher id.
#[derive(Debug)]
pub struct SubscriberPartial {
    pub client_id: String,
    /// Publishers this subscriber must hear from; `None` for a shared
    /// subscription member, whose share is not known in advance.
    pub expected_from: Option<Vec<u32>>,
    pub trackers: Vec<(u32, crate::stats::SeqTracker)>,
}

/// The future each executor runs, built on the executor's own thread.
pub type ExecutorBody =
    Arc<dyn Fn(usize, Arc<Control>) -> Pin<Box<dyn Future<Output = ExecutorOutput>>> + Send + Sync>;

/// Everything measured by one run, before scenario-specific reporting.
#[derive(Debug)]
pub struct RunOutcome {
    pub timeline: Timeline,
    /// Counter totals at the warm-up end and at the measurement end.
    pub window: (Totals, Totals),
    pub final_totals: Totals,
    pub latency: Histogram<u64>,
    /// Publish to PUBACK or PUBREC, merged over the executors.
    pub ack_latency: Histogram<u64>,
    /// Publish to PUBCOMP, merged over the executors.
    pub complete_latency: Histogram<u64>,
    pub subscribers: Vec<SubscriberSummary>,
    pub extra: Vec<(&'static str, u64)>,
    pub errors: Vec<String>,
    /// Broker samples at the warm-up end and at the measurement end.
    pub broker: Option<(ProcessSample, ProcessSample)>,
    /// Highest broker RSS sampled once a second, in bytes.
    pub broker_max_rss: u64,
    /// This process's CPU seconds in the measurement window.
    pub bench_cpu_secs: f64,
    pub setup_failures: u64,
}

/// Options of the main thread's part of a run.
#[derive(Clone, Copy, Debug)]
pub struct RunPolicy {
    /// Abandon the run when a connection cannot be opened.
    pub abort_on_setup_failure: bool,
    /// Connections the scenario opens in total, for the setup progress line.
    pub connections: u64,
    /// Wait for delivered messages to settle after the measurement window.
    pub drain: bool,
}

/// Runs `body` on every executor and drives the timeline.
///
/// # Errors
///
/// Fails when an executor cannot start or panics, when setup times out, or
/// when a connection fails during setup and the policy aborts on that.
pub fn run(
    config: &RunConfig,
    policy: RunPolicy,
    body: ExecutorBody,
) -> Result<RunOutcome, BenchError> {
    let control = Arc::new(Control::new(config.threads()));
    let mut handles = Vec::new();
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let body = body.clone();
        let control = control.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("bench-{index}"))
            .io_memory(EXECUTOR_IO_MEMORY)
            .preempt_timer(EXECUTOR_PREEMPT)
            .spawn(move || async move { body(index, control).await })
            .map_err(|err| {
                BenchError::Runtime(format!("cannot start executor {index} on CPU {cpu}: {err}"))
            })?;
        handles.push(handle);
    }

    let drive_result = drive(config, policy, &control);
    if drive_result.is_err() {
        control.abort();
    }
    let mut outputs = Vec::new();
    for (index, handle) in handles.into_iter().enumerate() {
        let output = handle
            .join()
            .map_err(|err| BenchError::Runtime(format!("executor {index} failed: {err}")))?;
        outputs.push(output);
    }
    let driven = drive_result?;
    Ok(merge(driven, outputs, &control))
}

/// Measurements the main thread took while the executors ran.
struct Driven {
    timeline: Timeline,
    window: (Totals, Totals),
    broker: Option<(ProcessSample, ProcessSample)>,
    broker_max_rss: u64,
    bench_cpu_secs: f64,
}

fn drive(config: &RunConfig, policy: RunPolicy, control: &Control) -> Result<Driven, BenchError> {
    wait_ready(config, policy, control)?;

    let start_ns = now_ns() + START_DELAY_NS;
    let warm_end_ns = start_ns + config.warmup.as_nanos() as u64;
    let measure_end_ns = warm_end_ns + config.duration.as_nanos() as u64;
    control.warm_end_ns.store(warm_end_ns, Ordering::Relaxed);
    control
        .measure_end_ns
        .store(measure_end_ns, Ordering::Relaxed);
    control.start_ns.store(start_ns, Ordering::Release);
    let timeline = Timeline {
        start_ns,
        warm_end_ns,
        measure_end_ns,
    };

    let mut progress = Progress::new(config, control);
    let mut broker_max_rss = 0;
    let sample_broker = |max_rss: &mut u64| -> Option<ProcessSample> {
        let sample = procfs::sample(Some(config.broker_pid?)).ok()?;
        *max_rss = (*max_rss).max(sample.rss_bytes);
        Some(sample)
    };

    sleep_until(warm_end_ns, &mut progress, "warmup", &mut || {
        sample_broker(&mut broker_max_rss)
    });
    let warm_totals = totals(&control.counters);
    let broker_start = sample_broker(&mut broker_max_rss);
    let bench_start = procfs::sample(None).ok();

    sleep_until(measure_end_ns, &mut progress, "measure", &mut || {
        sample_broker(&mut broker_max_rss)
    });
    let end_totals = totals(&control.counters);
    let broker_end = sample_broker(&mut broker_max_rss);
    let bench_end = procfs::sample(None).ok();

    if policy.drain {
        drain(config, control, &mut progress);
    }
    control.stop.store(true, Ordering::Relaxed);

    if config.broker_pid.is_some() && (broker_start.is_none() || broker_end.is_none()) {
        tracing::warn!(
            pid = config.broker_pid,
            "cannot read the broker's /proc entries; broker CPU and memory are not reported"
        );
    }
    let bench_cpu_secs = match (bench_start, bench_end) {
        (Some(start), Some(end)) => end.cpu_secs - start.cpu_secs,
        _ => 0.0,
    };
    Ok(Driven {
        timeline,
        window: (warm_totals, end_totals),
        broker: broker_start.zip(broker_end),
        broker_max_rss,
        bench_cpu_secs,
    })
}

fn wait_ready(config: &RunConfig, policy: RunPolicy, control: &Control) -> Result<(), BenchError> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut last_print = Instant::now();
    while control.ready.load(Ordering::Acquire) < config.threads() {
        if policy.abort_on_setup_failure && control.setup_failures.load(Ordering::Relaxed) > 0 {
            return Err(BenchError::Runtime(
                "a connection failed during setup; see the errors above".into(),
            ));
        }
        if control.aborted() {
            return Err(BenchError::Runtime(
                "the run was abandoned during setup".into(),
            ));
        }
        if Instant::now() > deadline {
            return Err(BenchError::TimedOut("all connections to open"));
        }
        if !config.quiet && last_print.elapsed() >= Duration::from_secs(1) {
            let open = totals(&control.counters).connections;
            eprintln!("[setup] {open}/{} connections open", policy.connections);
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if policy.abort_on_setup_failure && control.setup_failures.load(Ordering::Relaxed) > 0 {
        return Err(BenchError::Runtime(
            "a connection failed during setup; see the errors above".into(),
        ));
    }
    Ok(())
}

fn sleep_until(
    deadline_ns: u64,
    progress: &mut Progress,
    phase: &str,
    sample_broker: &mut dyn FnMut() -> Option<ProcessSample>,
) {
    loop {
        let now = now_ns();
        if now >= deadline_ns {
            return;
        }
        let next_tick = progress.next_tick_ns.min(deadline_ns);
        std::thread::sleep(Duration::from_nanos(next_tick.saturating_sub(now)));
        if now_ns() >= progress.next_tick_ns {
            let broker = sample_broker();
            progress.print(phase, broker);
        }
    }
}

/// Waits until deliveries and acks have stopped arriving for
/// [`DRAIN_QUIET`], or until `--drain` has passed.
fn drain(config: &RunConfig, control: &Control, progress: &mut Progress) {
    let deadline = Instant::now() + config.drain;
    let mut arrived = drain_progress(&totals(&control.counters));
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now_arrived = drain_progress(&totals(&control.counters));
        if now_arrived != arrived {
            arrived = now_arrived;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= DRAIN_QUIET {
            return;
        }
        if now_ns() >= progress.next_tick_ns {
            progress.print("drain", None);
        }
    }
}

/// Packets whose arrival shows that the broker is still working off the
/// run: deliveries, and the acks that publishers wait for before they stop.
fn drain_progress(totals: &Totals) -> u64 {
    totals.delivered_msgs + totals.acked_msgs + totals.completed_msgs + totals.rejected_msgs
}

/// The once-a-second progress line on stderr.
struct Progress<'a> {
    control: &'a Control,
    quiet: bool,
    /// Whether publishers wait for acks (QoS 1 and 2), so the line shows acks/s.
    shows_acks: bool,
    started: Instant,
    next_tick_ns: u64,
    last: Totals,
    last_ns: u64,
    last_broker_cpu: Option<f64>,
}

impl<'a> Progress<'a> {
    fn new(config: &RunConfig, control: &'a Control) -> Self {
        let now = now_ns();
        Progress {
            control,
            quiet: config.quiet,
            shows_acks: config.qos != QoS::AtMostOnce,
            started: Instant::now(),
            next_tick_ns: now + 1_000_000_000,
            last: totals(&control.counters),
            last_ns: now,
            last_broker_cpu: None,
        }
    }

    fn print(&mut self, phase: &str, broker: Option<ProcessSample>) {
        let now = now_ns();
        let current = totals(&self.control.counters);
        let secs = (now - self.last_ns) as f64 / 1e9;
        let sent_rate = (current.sent_msgs - self.last.sent_msgs) as f64 / secs;
        let delivered_rate = (current.delivered_msgs - self.last.delivered_msgs) as f64 / secs;
        let acked = if self.shows_acks {
            let acked_rate = (current.acked_msgs - self.last.acked_msgs) as f64 / secs;
            format!("  acked {:>12}/s", format_count(acked_rate))
        } else {
            String::new()
        };
        let broker_cpu = match (broker, self.last_broker_cpu) {
            (Some(sample), Some(last)) => format!(
                "  broker cpu {:.0}%",
                (sample.cpu_secs - last) / secs * 100.0
            ),
            _ => String::new(),
        };
        if !self.quiet {
            eprintln!(
                "[{:>4.0}s {phase:<7}] sent {:>12}/s{acked}  delivered {:>12}/s  connections {:>6}  errors {}{broker_cpu}",
                self.started.elapsed().as_secs_f64(),
                format_count(sent_rate),
                format_count(delivered_rate),
                current.connections,
                current.errors,
            );
        }
        self.last = current;
        self.last_ns = now;
        self.last_broker_cpu = broker.map(|s| s.cpu_secs);
        self.next_tick_ns += 1_000_000_000;
        while self.next_tick_ns <= now {
            self.next_tick_ns += 1_000_000_000;
        }
    }
}

/// Formats a count with thousands separators, rounded to an integer.
pub fn format_count(value: f64) -> String {
    let rounded = value.max(0.0).round() as u64;
    let digits = rounded.to_string();
    let head = digits.len() % 3;
    let mut out = String::from(&digits[..head]);
    for group in digits.as_bytes()[head..].chunks(3) {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(std::str::from_utf8(group).expect("digits are ASCII"));
    }
    out
}

fn merge(driven: Driven, outputs: Vec<ExecutorOutput>, control: &Control) -> RunOutcome {
    let mut latency = new_histogram();
    let mut ack_latency = new_histogram();
    let mut complete_latency = new_histogram();
    let mut published = Vec::new();
    let mut partials = Vec::new();
    let mut extra: Vec<(&'static str, u64)> = Vec::new();
    let mut errors = Vec::new();
    for output in outputs {
        for (total, part) in [
            (&mut latency, &output.latency),
            (&mut ack_latency, &output.ack_latency),
            (&mut complete_latency, &output.complete_latency),
        ] {
            total.add(part).expect("histograms share their bounds");
        }
        published.extend(output.published);
        partials.extend(output.subscribers);
        for (name, value) in output.extra {
            match extra.iter_mut().find(|(n, _)| *n == name) {
                Some((_, total)) => *total += value,
                None => extra.push((name, value)),
            }
        }
        errors.extend(output.errors);
    }
    published.sort_unstable();
    let subscribers = summarize_subscribers(&published, partials);
    RunOutcome {
        timeline: driven.timeline,
        window: driven.window,
        final_totals: totals(&control.counters),
        latency,
        ack_latency,
        complete_latency,
        subscribers,
        extra,
        errors,
        broker: driven.broker,
        broker_max_rss: driven.broker_max_rss,
        bench_cpu_secs: driven.bench_cpu_secs,
        setup_failures: control.setup_failures.load(Ordering::Relaxed),
    }
}

/// Compares what each subscriber received with what its publishers sent.
///
/// Members of a shared subscription are summed into one group entry, since
/// each message goes to one member only.
fn summarize_subscribers(
    published: &[(u32, u64)],
    partials: Vec<SubscriberPartial>,
) -> Vec<SubscriberSummary> {
    let sent_by = |id: u32| -> u64 {
        published
            .binary_search_by_key(&id, |&(p, _)| p)
            .map_or(0, |i| published[i].1)
    };
    let mut summaries = Vec::new();
    let mut group: Option<SubscriberSummary> = None;
    for partial in partials {
        let mut summary = SubscriberSummary {
            client_id: partial.client_id,
            ..SubscriberSummary::default()
        };
        for (_, tracker) in &partial.trackers {
            summary.received += tracker.received;
            summary.duplicates += tracker.duplicates;
            summary.reordered += tracker.reordered;
        }
        match partial.expected_from {
            Some(publishers) => {
                summary.expected = publishers.iter().map(|&id| sent_by(id)).sum();
                summary.lost = summary.expected.saturating_sub(summary.received);
                summaries.push(summary);
            }
            None => {
                let total = group.get_or_insert_with(|| SubscriberSummary {
                    client_id: "$share group".into(),
                    expected: published.iter().map(|&(_, sent)| sent).sum(),
                    ..SubscriberSummary::default()
                });
                total.received += summary.received;
                // NOTE: a message delivered to two members counts as received
                // twice here, not as a duplicate, because each member tracks
                // only its own sequence numbers.
                total.duplicates += summary.duplicates;
                total.reordered += summary.reordered;
            }
        }
    }
    if let Some(mut total) = group {
        total.lost = total.expected.saturating_sub(total.received);
        summaries.push(total);
    }
    summaries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SeqTracker;

    #[test]
    fn cpu_list_forms() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }

    #[test]
    fn count_formatting() {
        assert_eq!(format_count(0.0), "0");
        assert_eq!(format_count(999.4), "999");
        assert_eq!(format_count(1000.0), "1,000");
        assert_eq!(format_count(1234567.0), "1,234,567");
    }

    fn tracker_with(received: u64) -> SeqTracker {
        let mut tracker = SeqTracker::default();
        for seq in 0..received {
            tracker.record(seq);
        }
        tracker
    }

    fn output_with(delivery_ns: &[u64], ack_ns: &[u64], complete_ns: &[u64]) -> ExecutorOutput {
        let mut output = ExecutorOutput::default();
        for (histogram, values) in [
            (&mut output.latency, delivery_ns),
            (&mut output.ack_latency, ack_ns),
            (&mut output.complete_latency, complete_ns),
        ] {
            for &value in values {
                histogram.record(value).unwrap();
            }
        }
        output
    }

    #[test]
    fn merge_adds_ack_histograms() {
        let driven = Driven {
            timeline: Timeline::default(),
            window: (Totals::default(), Totals::default()),
            broker: None,
            broker_max_rss: 0,
            bench_cpu_secs: 0.0,
        };
        let outputs = vec![
            output_with(&[1_000], &[2_000, 3_000], &[9_000]),
            output_with(&[], &[500_000], &[600_000, 700_000]),
        ];
        let outcome = merge(driven, outputs, &Control::new(2));

        assert_eq!(outcome.latency.len(), 1);
        assert_eq!(outcome.ack_latency.len(), 3);
        assert_eq!(outcome.ack_latency.min(), 2_000);
        assert!(outcome
            .ack_latency
            .equivalent(outcome.ack_latency.max(), 500_000));
        assert_eq!(outcome.complete_latency.len(), 3);
        assert_eq!(outcome.complete_latency.min(), 9_000);
        assert!(outcome
            .complete_latency
            .equivalent(outcome.complete_latency.max(), 700_000));
    }

    #[test]
    fn drain_counts_acks_as_progress() {
        let mut totals = Totals::default();
        let idle = drain_progress(&totals);
        totals.acked_msgs = 1;
        assert_ne!(drain_progress(&totals), idle);
        let acked = drain_progress(&totals);
        totals.completed_msgs = 1;
        assert_ne!(drain_progress(&totals), acked);
    }

    #[test]
    fn summary_counts_loss() {
        let published = vec![(0, 100), (1, 50)];
        let partials = vec![SubscriberPartial {
            client_id: "sub-0".into(),
            expected_from: Some(vec![0, 1]),
            trackers: vec![(0, tracker_with(100)), (1, tracker_with(40))],
        }];
        let summaries = summarize_subscribers(&published, partials);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].expected, 150);
        assert_eq!(summaries[0].received, 140);
        assert_eq!(summaries[0].lost, 10);
    }

    #[test]
    fn summary_sums_shared_group() {
        let published = vec![(0, 100)];
        let partials = vec![
            SubscriberPartial {
                client_id: "m0".into(),
                expected_from: None,
                trackers: vec![(0, tracker_with(60))],
            },
            SubscriberPartial {
                client_id: "m1".into(),
                expected_from: None,
                trackers: vec![(0, tracker_with(40))],
            },
        ];
        let summaries = summarize_subscribers(&published, partials);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].received, 100);
        assert_eq!(summaries[0].lost, 0);
    }
}

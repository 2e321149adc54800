//! The end-of-run report: a text table on stdout and the same figures as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use coremq_codec::{Protocol, QoS};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::run::{format_count, RunConfig, RunOutcome};
use crate::stats::SubscriberSummary;

/// Bench CPU use, as a share of its threads' wall time, above which the bench
/// itself probably limited the result.
const SATURATION_SHARE: f64 = 0.9;

/// Percentiles of every latency curve in the report and the plot: 0 % and
/// then 1 - 10^(-k/10) for k = 1..=50, up to 99.999 %, plus 100 %.
fn curve_percentiles() -> Vec<f64> {
    let mut points = vec![0.0];
    points.extend((1..=50).map(|k| 100.0 * (1.0 - 10f64.powf(-f64::from(k) / 10.0))));
    points.push(100.0);
    points
}

/// Messages and bytes per second over the measurement window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Throughput {
    pub msgs: u64,
    pub msgs_per_sec: f64,
    pub bytes_per_sec: f64,
}

/// One point of a latency-percentile curve.
#[derive(Clone, Debug, Serialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub latency_us: f64,
}

/// Latency distribution of the measurement window, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencyReport {
    /// Operation timed, such as "publish to delivery".
    pub measures: String,
    pub samples: u64,
    /// Smallest sample, or 0 without samples.
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub curve: Vec<PercentilePoint>,
}

impl LatencyReport {
    /// Summarizes a histogram of nanoseconds.
    pub fn from_histogram(measures: &str, histogram: &Histogram<u64>) -> LatencyReport {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencyReport {
            measures: measures.to_string(),
            samples: histogram.len(),
            min_us: if histogram.is_empty() {
                0.0
            } else {
                us(histogram.min())
            },
            mean_us: histogram.mean() / 1000.0,
            p50_us: us(histogram.value_at_quantile(0.5)),
            p90_us: us(histogram.value_at_quantile(0.9)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            curve: curve_percentiles()
                .into_iter()
                .map(|percentile| PercentilePoint {
                    percentile,
                    latency_us: us(histogram.value_at_quantile(percentile / 100.0)),
                })
                .collect(),
        }
    }
}

/// Loss, duplicates and reordering summed over all subscribers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LossReport {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub subscribers_with_loss: u64,
    /// The subscriber that lost the most messages, when any lost one.
    pub worst_subscriber: Option<SubscriberSummary>,
}

/// CPU and memory of the broker process in the measurement window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BrokerReport {
    pub pid: u32,
    /// User plus system CPU seconds in the measurement window.
    pub cpu_secs: f64,
    /// CPU seconds per wall second, in percent of one core.
    pub cpu_percent: f64,
    /// VmHWM at the end of the window: the peak since the broker started.
    pub peak_rss_bytes: u64,
    /// Highest VmRSS sampled once a second during the run.
    pub max_sampled_rss_bytes: u64,
    /// VmRSS at the start and end of the window.
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
    /// Delivered messages per broker CPU second.
    pub delivered_per_cpu_sec: Option<f64>,
    /// Broker CPU seconds per million delivered messages, the inverse of
    /// `delivered_per_cpu_sec`.
    pub cpu_secs_per_million_delivered: Option<f64>,
}

/// CPU use of the bench itself in the measurement window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    pub cpu_secs: f64,
    /// CPU seconds over threads times wall seconds, in percent.
    pub cpu_percent_of_threads: f64,
    /// True when the bench was close to using all its threads' time, so it
    /// may have limited the result.
    pub saturated: bool,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    /// Name of the broker in a comparison.
    pub broker: Option<String>,
    pub target: String,
    pub protocol: String,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Messages per second per publisher; 0 is unthrottled.
    pub rate_per_publisher: u64,
    pub threads: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// Connections the scenario asked for.
    pub planned_connections: u64,
    pub sent: Throughput,
    pub delivered: Throughput,
    /// Publishes accepted with a PUBACK (QoS 1) or PUBREC (QoS 2) in the
    /// window. `None` at QoS 0 and in scenarios without publishers.
    pub acked: Option<Throughput>,
    pub latency: Option<LatencyReport>,
    /// Publish to PUBACK (QoS 1) or PUBREC (QoS 2) of the publishes sent in
    /// the window, including acks that arrived after it. `None` where
    /// `acked` is `None`.
    pub ack_latency: Option<LatencyReport>,
    /// Publish to PUBCOMP of the publishes sent in the window, at QoS 2 only.
    pub complete_latency: Option<LatencyReport>,
    pub loss: Option<LossReport>,
    pub broker_process: Option<BrokerReport>,
    pub bench_process: BenchReport,
    /// Scenario-specific figures, such as connects per second.
    pub figures: BTreeMap<String, f64>,
    pub error_count: u64,
    /// True when a connection of a scenario that needs all of them failed,
    /// so the figures describe a broken run.
    pub connection_failed: bool,
    /// The first errors, per executor.
    pub errors: Vec<String>,
    pub subscribers: Vec<SubscriberSummary>,
}

/// Scenario-specific inputs of a report.
pub struct ReportInput<'a> {
    pub scenario: &'a str,
    pub planned_connections: u64,
    /// Operation the latency histogram timed; `None` when the scenario times nothing.
    pub latency_measures: Option<&'a str>,
    /// Whether loss tracking applies (pub/sub scenarios).
    pub tracks_loss: bool,
    /// Whether the scenario's publishers time their QoS 1/2 acks (pub/sub
    /// scenarios).
    pub times_acks: bool,
    /// Whether any connection error fails the run. Connection and idle
    /// storms report errors as a result instead, and fail only when no
    /// connection got through.
    pub errors_fail_run: bool,
}

impl Report {
    /// Builds the report of one run.
    pub fn new(config: &RunConfig, input: ReportInput<'_>, outcome: &RunOutcome) -> Report {
        let window_secs =
            (outcome.timeline.measure_end_ns - outcome.timeline.warm_end_ns) as f64 / 1e9;
        let (start, end) = outcome.window;
        let sent_msgs = end.sent_msgs - start.sent_msgs;
        let delivered_msgs = end.delivered_msgs - start.delivered_msgs;
        let sent = Throughput {
            msgs: sent_msgs,
            msgs_per_sec: sent_msgs as f64 / window_secs,
            bytes_per_sec: (end.sent_bytes - start.sent_bytes) as f64 / window_secs,
        };
        let delivered = Throughput {
            msgs: delivered_msgs,
            msgs_per_sec: delivered_msgs as f64 / window_secs,
            bytes_per_sec: (end.delivered_bytes - start.delivered_bytes) as f64 / window_secs,
        };
        let times_acks = input.times_acks && config.qos != QoS::AtMostOnce;
        let acked = times_acks.then(|| {
            let acked_msgs = end.acked_msgs - start.acked_msgs;
            Throughput {
                msgs: acked_msgs,
                msgs_per_sec: acked_msgs as f64 / window_secs,
                bytes_per_sec: (acked_msgs * config.payload as u64) as f64 / window_secs,
            }
        });
        let (ack_latency, complete_latency) = ack_latency_reports(config.qos, times_acks, outcome);

        let broker_process = match (config.broker_pid, outcome.broker) {
            (Some(pid), Some((first, last))) => {
                let cpu_secs = last.cpu_secs - first.cpu_secs;
                Some(BrokerReport {
                    pid,
                    cpu_secs,
                    cpu_percent: cpu_secs / window_secs * 100.0,
                    peak_rss_bytes: last.peak_rss_bytes,
                    max_sampled_rss_bytes: outcome.broker_max_rss,
                    rss_start_bytes: first.rss_bytes,
                    rss_end_bytes: last.rss_bytes,
                    delivered_per_cpu_sec: (cpu_secs > 0.0 && delivered_msgs > 0)
                        .then(|| delivered_msgs as f64 / cpu_secs),
                    cpu_secs_per_million_delivered: (delivered_msgs > 0)
                        .then(|| cpu_secs / delivered_msgs as f64 * 1e6),
                })
            }
            _ => None,
        };

        let threads = config.threads();
        let bench_share = outcome.bench_cpu_secs / (threads as f64 * window_secs);
        let bench_process = BenchReport {
            cpu_secs: outcome.bench_cpu_secs,
            cpu_percent_of_threads: bench_share * 100.0,
            saturated: bench_share >= SATURATION_SHARE,
        };

        let mut figures = BTreeMap::new();
        for (name, value) in &outcome.extra {
            figures.insert((*name).to_string(), *value as f64);
        }
        let rounds = end.rounds - start.rounds;
        if rounds > 0 {
            figures.insert("rounds".into(), rounds as f64);
            figures.insert("rounds_per_sec".into(), rounds as f64 / window_secs);
        }
        let rejected = end.rejected_msgs - start.rejected_msgs;
        if rejected > 0 {
            figures.insert("rejected_msgs".into(), rejected as f64);
        }
        if outcome.setup_failures > 0 {
            figures.insert("setup_failures".into(), outcome.setup_failures as f64);
        }

        Report {
            scenario: input.scenario.to_string(),
            broker: None,
            target: config.target.to_string(),
            protocol: match config.protocol {
                Protocol::V5 => "5".into(),
                Protocol::V311 => "3.1.1".into(),
            },
            qos: config.qos as u8,
            payload_bytes: config.payload,
            rate_per_publisher: config.rate,
            threads,
            warmup_secs: config.warmup.as_secs_f64(),
            duration_secs: window_secs,
            planned_connections: input.planned_connections,
            sent,
            delivered,
            acked,
            ack_latency,
            complete_latency,
            latency: input
                .latency_measures
                .map(|measures| LatencyReport::from_histogram(measures, &outcome.latency)),
            loss: input.tracks_loss.then(|| loss_report(&outcome.subscribers)),
            broker_process,
            bench_process,
            figures,
            error_count: outcome.final_totals.errors,
            connection_failed: outcome.final_totals.errors > 0
                && (input.errors_fail_run || no_connection_held(outcome)),
            errors: outcome.errors.clone(),
            subscribers: outcome.subscribers.clone(),
        }
    }

    /// Returns true when a QoS 1/2 run lost messages, which fails the run.
    pub fn lost_guaranteed_messages(&self) -> bool {
        self.qos > QoS::AtMostOnce as u8 && self.loss.as_ref().is_some_and(|loss| loss.lost > 0)
    }

    /// Returns true when the run failed: a needed connection failed.
    pub fn failed(&self) -> bool {
        self.connection_failed
    }

    /// Formats the report as a text table.
    pub fn to_text(&self) -> String {
        let mut out = self.title_text();
        let mut rows = Vec::new();
        self.traffic_rows(&mut rows);
        self.process_rows(&mut rows);
        for (name, value) in rows {
            let _ = writeln!(out, "  {name:<32} {value}");
        }
        for error in &self.errors {
            let _ = writeln!(out, "    {error}");
        }
        out.push_str(&self.verdict_text());
        out
    }

    fn title_text(&self) -> String {
        let broker = self
            .broker
            .as_deref()
            .map(|b| format!(" [{b}]"))
            .unwrap_or_default();
        let rate = if self.rate_per_publisher == 0 {
            "unthrottled".to_string()
        } else {
            let rate = format_count(self.rate_per_publisher as f64);
            format!("{rate} msg/s per publisher")
        };
        format!(
            "coremq-bench {}{broker} against {}: MQTT {}, QoS {}, {}-byte payload, {rate}\n\
             measured {:.1} s after {:.1} s of warm-up; {} connections; {} bench thread(s)\n\n",
            self.scenario,
            self.target,
            self.protocol,
            self.qos,
            self.payload_bytes,
            self.duration_secs,
            self.warmup_secs,
            self.planned_connections,
            self.threads
        )
    }

    /// Adds the rows of messages, latency, loss and scenario figures.
    fn traffic_rows(&self, rows: &mut Vec<(String, String)>) {
        if self.sent.msgs > 0 || self.delivered.msgs > 0 {
            rows.push(("sent".into(), throughput_text(&self.sent)));
            rows.push(("delivered".into(), throughput_text(&self.delivered)));
        }
        if let Some(acked) = &self.acked {
            rows.push(("acked".into(), throughput_text(acked)));
        }

        if let Some(latency) = &self.latency {
            rows.push(latency_row("latency", latency));
        }
        for latency in [&self.ack_latency, &self.complete_latency]
            .into_iter()
            .flatten()
        {
            rows.push(latency_row("ack latency", latency));
        }

        if let Some(loss) = &self.loss {
            let value = format!(
                "{} lost of {} expected; {} subscriber(s) with loss; {} duplicates; {} reordered",
                format_count(loss.lost as f64),
                format_count(loss.expected as f64),
                loss.subscribers_with_loss,
                format_count(loss.duplicates as f64),
                format_count(loss.reordered as f64)
            );
            // Sequence numbers cover every message, so this row counts the
            // warm-up and the drain too, unlike the rows of the window.
            rows.push(("loss, whole run".into(), value));
            if let Some(worst) = &loss.worst_subscriber {
                let value = format!(
                    "{} lost {} of {}",
                    worst.client_id, worst.lost, worst.expected
                );
                rows.push(("worst subscriber".into(), value));
            }
        }

        for (name, value) in &self.figures {
            rows.push((name.replace('_', " "), format_figure(*value)));
        }
    }

    /// Adds the rows of broker and bench CPU and memory, and the error count.
    fn process_rows(&self, rows: &mut Vec<(String, String)>) {
        match &self.broker_process {
            Some(broker) => {
                let cpu = format!(
                    "{:.2} s ({:.0}% of one core)",
                    broker.cpu_secs, broker.cpu_percent
                );
                rows.push(("broker cpu".into(), cpu));
                if let Some(per_cpu) = broker.delivered_per_cpu_sec {
                    rows.push(("delivered per broker cpu-s".into(), format_count(per_cpu)));
                }
                if let Some(per_million) = broker.cpu_secs_per_million_delivered {
                    rows.push((
                        "broker cpu-s per million".into(),
                        format!("{per_million:.3}"),
                    ));
                }
                rows.push((
                    "broker peak rss (VmHWM)".into(),
                    bytes_text(broker.peak_rss_bytes as f64),
                ));
                let rss = format!(
                    "{} at start, {} at end of window",
                    bytes_text(broker.rss_start_bytes as f64),
                    bytes_text(broker.rss_end_bytes as f64)
                );
                rows.push(("broker rss (VmRSS)".into(), rss));
            }
            None => rows.push((
                "broker cpu and memory".into(),
                "not sampled (pass --broker-pid)".into(),
            )),
        }

        let bench = format!(
            "{:.2} s ({:.0}% of {} thread(s))",
            self.bench_process.cpu_secs, self.bench_process.cpu_percent_of_threads, self.threads
        );
        rows.push(("bench cpu".into(), bench));
        rows.push(("errors".into(), self.error_count.to_string()));
    }

    /// Returns the warning and failure lines that follow the table.
    fn verdict_text(&self) -> String {
        let mut out = String::new();
        if self.bench_process.saturated {
            let _ = writeln!(
                out,
                "\nWARNING: the bench used {:.0}% of its threads' time, so it may have been the \
                 bottleneck; add --threads or CPUs and compare",
                self.bench_process.cpu_percent_of_threads
            );
        }
        if self.connection_failed {
            let _ = writeln!(
                out,
                "\nFAILED: {} connection error(s); see the errors above",
                self.error_count
            );
        }
        if self.lost_guaranteed_messages() {
            let _ = writeln!(out, "\nFAILED: QoS {} messages were lost", self.qos);
        }
        out
    }
}

/// Returns true when a storm got no connection through: `idle` held none,
/// or `connect` timed no CONNACK in the measurement window. Storms count
/// their connection errors as a result, but such a run measured nothing.
fn no_connection_held(outcome: &RunOutcome) -> bool {
    let connections_held = outcome
        .extra
        .iter()
        .find(|(name, _)| *name == "connections_held")
        .map(|(_, count)| *count);
    match connections_held {
        Some(count) => count == 0,
        None => outcome.latency.is_empty(),
    }
}

/// Builds the publish-to-ack reports: PUBACK at QoS 1, PUBREC and PUBCOMP
/// at QoS 2, none at QoS 0 or when the scenario does not time acks.
fn ack_latency_reports(
    qos: QoS,
    times_acks: bool,
    outcome: &RunOutcome,
) -> (Option<LatencyReport>, Option<LatencyReport>) {
    if !times_acks {
        return (None, None);
    }
    match qos {
        QoS::AtMostOnce => (None, None),
        QoS::AtLeastOnce => (
            Some(LatencyReport::from_histogram(
                "publish to PUBACK",
                &outcome.ack_latency,
            )),
            None,
        ),
        QoS::ExactlyOnce => (
            Some(LatencyReport::from_histogram(
                "publish to PUBREC",
                &outcome.ack_latency,
            )),
            Some(LatencyReport::from_histogram(
                "publish to PUBCOMP",
                &outcome.complete_latency,
            )),
        ),
    }
}

/// Formats one latency row of the table, named `kind (measures)`.
fn latency_row(kind: &str, latency: &LatencyReport) -> (String, String) {
    let name = format!("{kind} ({})", latency.measures);
    if latency.samples == 0 {
        return (name, "no samples".into());
    }
    let value = format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        micros_text(latency.p50_us),
        micros_text(latency.p90_us),
        micros_text(latency.p99_us),
        micros_text(latency.p999_us),
        micros_text(latency.max_us),
        format_count(latency.samples as f64)
    );
    (name, value)
}

fn loss_report(subscribers: &[SubscriberSummary]) -> LossReport {
    let mut loss = LossReport::default();
    for summary in subscribers {
        loss.expected += summary.expected;
        loss.received += summary.received;
        loss.lost += summary.lost;
        loss.duplicates += summary.duplicates;
        loss.reordered += summary.reordered;
        if summary.lost > 0 {
            loss.subscribers_with_loss += 1;
            let worst_so_far = match &loss.worst_subscriber {
                Some(worst) => summary.lost > worst.lost,
                None => true,
            };
            if worst_so_far {
                loss.worst_subscriber = Some(summary.clone());
            }
        }
    }
    loss
}

fn throughput_text(throughput: &Throughput) -> String {
    format!(
        "{} msg/s  {}/s  ({} messages)",
        format_count(throughput.msgs_per_sec),
        bytes_text(throughput.bytes_per_sec),
        format_count(throughput.msgs as f64)
    )
}

/// Formats microseconds with a unit that keeps three significant digits.
pub fn micros_text(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2} s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

/// Formats a byte count with binary units.
pub fn bytes_text(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn format_figure(value: f64) -> String {
    if value.fract() == 0.0 {
        format_count(value)
    } else {
        format!("{value:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn latency_from_histogram() {
        let mut histogram = new_histogram();
        for us in 1..=1000u64 {
            histogram.record(us * 1000).unwrap();
        }
        let report = LatencyReport::from_histogram("x", &histogram);
        assert_eq!(report.samples, 1000);
        assert!((report.p50_us - 500.0).abs() < 1.0, "{}", report.p50_us);
        assert!((report.p99_us - 990.0).abs() < 1.0, "{}", report.p99_us);
        assert!((report.max_us - 1000.0).abs() < 1.0, "{}", report.max_us);
        assert!((report.min_us - 1.0).abs() < 0.01, "{}", report.min_us);
        assert_eq!(report.curve.first().unwrap().percentile, 0.0);
        assert_eq!(report.curve.last().unwrap().percentile, 100.0);
    }

    #[test]
    fn latency_min_of_empty_histogram() {
        let report = LatencyReport::from_histogram("x", &new_histogram());
        assert_eq!(report.samples, 0);
        assert_eq!(report.min_us, 0.0);
    }

    fn outcome_with_acks(ack_ns: u64, complete_ns: u64) -> RunOutcome {
        let mut ack_latency = new_histogram();
        ack_latency.record(ack_ns).unwrap();
        let mut complete_latency = new_histogram();
        complete_latency.record(complete_ns).unwrap();
        RunOutcome {
            timeline: crate::run::Timeline::default(),
            window: Default::default(),
            final_totals: Default::default(),
            latency: new_histogram(),
            ack_latency,
            complete_latency,
            subscribers: Vec::new(),
            extra: Vec::new(),
            errors: Vec::new(),
            broker: None,
            broker_max_rss: 0,
            bench_cpu_secs: 0.0,
            setup_failures: 0,
        }
    }

    #[test]
    fn ack_reports_follow_qos() {
        let outcome = outcome_with_acks(2_000, 5_000);

        let (ack, complete) = ack_latency_reports(QoS::AtMostOnce, true, &outcome);
        assert!(ack.is_none());
        assert!(complete.is_none());

        let (ack, complete) = ack_latency_reports(QoS::AtLeastOnce, true, &outcome);
        let ack = ack.expect("QoS 1 has an ack latency");
        assert_eq!(ack.measures, "publish to PUBACK");
        assert_eq!(ack.samples, 1);
        assert!((ack.max_us - 2.0).abs() < 0.01, "{}", ack.max_us);
        assert!(complete.is_none());

        let (ack, complete) = ack_latency_reports(QoS::ExactlyOnce, true, &outcome);
        assert_eq!(ack.expect("QoS 2 has PUBREC").measures, "publish to PUBREC");
        let complete = complete.expect("QoS 2 has PUBCOMP");
        assert_eq!(complete.measures, "publish to PUBCOMP");
        assert!((complete.max_us - 5.0).abs() < 0.01, "{}", complete.max_us);

        let (ack, complete) = ack_latency_reports(QoS::ExactlyOnce, false, &outcome);
        assert!(ack.is_none(), "scenarios without publishers time no acks");
        assert!(complete.is_none());
    }

    #[test]
    fn text_shows_ack_rows() {
        let outcome = outcome_with_acks(2_000_000, 3_000_000);
        let (ack_latency, complete_latency) = ack_latency_reports(QoS::ExactlyOnce, true, &outcome);
        let report = Report {
            qos: 2,
            acked: Some(Throughput {
                msgs: 1,
                msgs_per_sec: 1.0,
                bytes_per_sec: 64.0,
            }),
            ack_latency,
            complete_latency,
            ..Default::default()
        };
        let text = report.to_text();
        assert!(text.contains("  acked  "), "{text}");
        assert!(text.contains("ack latency (publish to PUBREC)"), "{text}");
        assert!(text.contains("ack latency (publish to PUBCOMP)"), "{text}");
        assert!(text.contains("max 2.00 ms"), "{text}");
        assert!(text.contains("max 3.00 ms"), "{text}");
    }

    #[test]
    fn text_hides_ack_rows_at_qos0() {
        let report = Report::default();
        let text = report.to_text();
        assert!(!text.contains("acked"), "{text}");
        assert!(!text.contains("ack latency"), "{text}");
    }

    #[test]
    fn loss_picks_worst_subscriber() {
        let subscribers = vec![
            SubscriberSummary {
                client_id: "a".into(),
                expected: 10,
                received: 9,
                lost: 1,
                ..Default::default()
            },
            SubscriberSummary {
                client_id: "b".into(),
                expected: 10,
                received: 7,
                lost: 3,
                ..Default::default()
            },
            SubscriberSummary {
                client_id: "c".into(),
                expected: 10,
                received: 10,
                ..Default::default()
            },
        ];
        let loss = loss_report(&subscribers);
        assert_eq!(loss.lost, 4);
        assert_eq!(loss.subscribers_with_loss, 2);
        assert_eq!(loss.worst_subscriber.unwrap().client_id, "b");
    }

    #[test]
    fn loss_row_names_its_window() {
        let report = Report {
            loss: Some(LossReport {
                expected: 80,
                received: 80,
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = report.to_text();
        assert!(
            text.contains("loss, whole run  ") && text.contains("0 lost of 80 expected"),
            "{text}"
        );
    }

    #[test]
    fn unit_formatting() {
        assert_eq!(micros_text(12.4), "12 us");
        assert_eq!(micros_text(1500.0), "1.50 ms");
        assert_eq!(micros_text(2_500_000.0), "2.50 s");
        assert_eq!(bytes_text(512.0), "512 B");
        assert_eq!(bytes_text(1536.0), "1.5 KiB");
    }

    #[test]
    fn qos1_loss_fails_run() {
        let mut report = Report {
            qos: 1,
            ..Default::default()
        };
        report.loss = Some(LossReport {
            lost: 1,
            ..Default::default()
        });
        assert!(report.lost_guaranteed_messages());
        report.qos = 0;
        assert!(!report.lost_guaranteed_messages());
    }
}

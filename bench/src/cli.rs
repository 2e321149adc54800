//! Command line: one subcommand per scenario, plus `compare`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use coremq_codec::{Protocol, QoS};

/// Load generator for MQTT brokers.
#[derive(Debug, Parser)]
#[command(name = "coremq-bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// One scenario, or a comparison of several brokers on one scenario.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// P publishers send to S subscribers on one or T topics.
    Fanout {
        #[command(flatten)]
        common: CommonArgs,
        /// Number of publishers.
        #[arg(short = 'P', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        publishers: u32,
        /// Number of subscribers.
        #[arg(short = 'S', long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        subscribers: u32,
        /// Number of topics; publisher i and subscriber j use topic i % T and j % T.
        #[arg(short = 'T', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        topics: u32,
    },
    /// P publishers, each on its own topic, send to S subscribers of a `+` wildcard.
    Fanin {
        #[command(flatten)]
        common: CommonArgs,
        /// Number of publishers.
        #[arg(short = 'P', long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        publishers: u32,
        /// Number of wildcard subscribers.
        #[arg(short = 'S', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        subscribers: u32,
    },
    /// N publisher-subscriber pairs, each pair on its own topic.
    P2p {
        #[command(flatten)]
        common: CommonArgs,
        /// Number of pairs.
        #[arg(short = 'N', long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
        pairs: u32,
    },
    /// P publishers send to one `$share` group of S members.
    Shared {
        #[command(flatten)]
        common: CommonArgs,
        /// Number of publishers.
        #[arg(short = 'P', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        publishers: u32,
        /// Number of group members.
        #[arg(short = 'S', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        subscribers: u32,
    },
    /// Connection storm: connect, wait for CONNACK, disconnect, repeat.
    Connect {
        #[command(flatten)]
        common: CommonArgs,
        /// Connection attempts in progress at any time, over all threads.
        #[arg(short = 'C', long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: u32,
    },
    /// Hold N idle connections and report the broker's memory per connection.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        /// Number of connections to open and hold.
        #[arg(short = 'N', long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        connections: u32,
        /// Connection attempts in progress at any time while opening them.
        #[arg(short = 'C', long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
        concurrency: u32,
    },
    /// Subscribe storms against R retained topics.
    Retained {
        #[command(flatten)]
        common: CommonArgs,
        /// Number of retained topics published before the storm.
        #[arg(short = 'R', long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        retained: u32,
        /// Number of subscribers, each subscribing to all retained topics in a loop.
        #[arg(short = 'S', long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
        subscribers: u32,
    },
    /// Run one scenario against several brokers, one after the other.
    Compare(CompareArgs),
}

impl Command {
    /// Returns the options every scenario shares, or `None` for `compare`.
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Fanout { common, .. }
            | Command::Fanin { common, .. }
            | Command::P2p { common, .. }
            | Command::Shared { common, .. }
            | Command::Connect { common, .. }
            | Command::Idle { common, .. }
            | Command::Retained { common, .. } => Some(common),
            Command::Compare(_) => None,
        }
    }

    /// Returns the shared options for editing, or `None` for `compare`.
    pub fn common_mut(&mut self) -> Option<&mut CommonArgs> {
        match self {
            Command::Fanout { common, .. }
            | Command::Fanin { common, .. }
            | Command::P2p { common, .. }
            | Command::Shared { common, .. }
            | Command::Connect { common, .. }
            | Command::Idle { common, .. }
            | Command::Retained { common, .. } => Some(common),
            Command::Compare(_) => None,
        }
    }

    /// Name of the scenario as typed on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Fanout { .. } => "fanout",
            Command::Fanin { .. } => "fanin",
            Command::P2p { .. } => "p2p",
            Command::Shared { .. } => "shared",
            Command::Connect { .. } => "connect",
            Command::Idle { .. } => "idle",
            Command::Retained { .. } => "retained",
            Command::Compare(_) => "compare",
        }
    }
}

/// MQTT protocol version used by every bench client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// MQTT 5.0.
    #[value(name = "5")]
    V5,
    /// MQTT 3.1.1.
    #[value(name = "311")]
    V311,
}

impl ProtocolArg {
    /// Returns the codec's protocol value.
    pub fn protocol(self) -> Protocol {
        match self {
            ProtocolArg::V5 => Protocol::V5,
            ProtocolArg::V311 => Protocol::V311,
        }
    }
}

/// Transport the bench clients use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    /// MQTT directly over TCP.
    Tcp,
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`) over TCP.
    Ws,
}

/// Options that every scenario takes.
#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Broker host name or address; must be loopback unless --allow-remote is given.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port: its MQTT listener, or its WebSocket listener with
    /// --transport ws.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Transport of every bench connection.
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    pub transport: TransportArg,
    /// HTTP request path of the WebSocket upgrade, with --transport ws.
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// QoS of publishes and subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes: at least 20 (publisher id, sequence number and
    /// send time), at most 268,434,431 (an MQTT packet's limit less 1 KiB).
    #[arg(short = 's', long, default_value_t = 64)]
    pub payload: usize,
    /// Messages per second per publisher; 0 sends as fast as the broker accepts them.
    #[arg(short = 'r', long, default_value_t = 0)]
    pub rate: u64,
    /// Seconds measured after the warm-up.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(short = 'w', long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Maximum seconds to wait for in-flight messages after publishers stop.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// MQTT protocol version.
    #[arg(long, value_enum, default_value_t = ProtocolArg::V5)]
    pub protocol: ProtocolArg,
    /// Keep Alive in seconds that every client sends in CONNECT; 0 turns it
    /// off. A client pings after half of it without other writes. Some
    /// brokers, such as rumqttd 0.20, reject 0.
    #[arg(long, default_value_t = 0)]
    pub keep_alive: u16,
    /// Loopback source addresses to spread connections over, bound before connect:
    /// one address, a range such as 127.0.0.1-127.0.0.8, or a comma-separated list.
    #[arg(long)]
    pub source_addrs: Option<String>,
    /// Broker process id; its CPU time and memory are sampled from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Number of bench executor threads, each pinned to one CPU.
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs for the executor threads, such as 0,1 or 2-3; by default CPUs 0..threads.
    #[arg(long)]
    pub cpus: Option<String>,
    /// Maximum QoS 1/2 publishes in flight per publisher (capped by the broker's
    /// Receive Maximum).
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG latency-percentile plot to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Allow a broker host that is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,
    /// Do not print the progress line every second.
    #[arg(long)]
    pub quiet: bool,
}

impl CommonArgs {
    /// Returns the codec's QoS value of `--qos`.
    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).expect("clap restricts --qos to 0..=2")
    }
}

/// Options of `compare`.
#[derive(Clone, Debug, Args)]
pub struct CompareArgs {
    /// Scenario and its options as one string, such as "fanout -S 100 --duration 10".
    /// Split on whitespace; quoting is not supported.
    #[arg(long)]
    pub scenario: String,
    /// CPUs the brokers are pinned to with taskset, such as 1 or 2-3.
    #[arg(long, default_value = "1")]
    pub broker_cpus: String,
    /// Seconds to wait for a broker to accept connections on its port.
    #[arg(long, default_value_t = 10.0)]
    pub start_timeout: f64,
    /// Write all reports as one JSON array to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot with one latency curve per broker to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Brokers as NAME=COMMAND, run by sh -c, where COMMAND may contain {port}
    /// and {dir} (a scratch folder) and gets an `exec` prefix unless it has one;
    /// by default coremq, mosquitto and rumqttd when found.
    #[arg(last = true)]
    pub brokers: Vec<String>,
}

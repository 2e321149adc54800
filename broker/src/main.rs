//! The `coremq` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coremq::config::{
    AuthConfig, Config, LimitsConfig, ListenerConfig, Overrides, StorageConfig, TlsSection,
};
use tracing::error;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's setter of its options (mimalloc.h).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_arena_eager_commit` in `mi_option_t`, the same in mimalloc 2
/// and 3.
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

/// Makes mimalloc commit arena memory as it is used rather than up front.
/// On Linux it commits whole arenas eagerly and requests transparent huge
/// pages, so each first touch of a 2 MiB range made it resident: 10 MiB of
/// a broker at rest, and 11-18 MiB of the peak in fan-out runs.
///
/// The option applies to arenas made after it is set, and Rust allocates
/// before `main`, so this runs as an ELF constructor, before any Rust
/// allocation. The variable `MIMALLOC_ARENA_EAGER_COMMIT` still overrides
/// it.
extern "C" fn tune_allocator() {
    // SAFETY: getenv reads the environment without allocating, and
    // mi_option_set only stores the value. Option 4 exists in both
    // mimalloc versions that libmimalloc-sys builds.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}

#[used]
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

/// CoreMQ, a thread-per-core MQTT 5.0 and 3.1.1 broker.
///
/// With no options it listens for MQTT over TCP on 0.0.0.0:1883 and over
/// WebSocket on 0.0.0.0:8083 at /mqtt, with one shard per CPU. With a
/// certificate (--tls-cert, --tls-key) it also listens for TLS on 8883 and
/// WebSocket over TLS on 8084. Log verbosity follows RUST_LOG (default `info`).
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file; command-line options override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listener to start: IP:PORT for TCP, or a URL tcp://IP:PORT,
    /// tls://IP:PORT, ws://IP:PORT/PATH or wss://IP:PORT/PATH (path
    /// default /mqtt). Port 0 picks a free port. Repeatable; replaces the
    /// listeners of the config file.
    #[arg(long, value_name = "ADDR|URL")]
    listen: Vec<ListenerConfig>,
    /// PEM certificate chain for tls and wss listeners, leaf first.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// PEM file of the CAs that sign client certificates; clients may then
    /// authenticate with a certificate.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Rejects TLS clients without a certificate signed by --tls-client-ca.
    #[arg(long)]
    tls_require_client_cert: bool,
    /// Uses the client certificate's Common Name as the MQTT user name;
    /// needs --tls-require-client-cert.
    #[arg(long)]
    tls_cn_as_username: bool,
    /// Seconds a client has for the TLS handshake and for the WebSocket
    /// upgrade request, each [default: 10].
    #[arg(long, value_name = "SECS")]
    handshake_timeout: Option<u64>,
    /// Executors to run, one per core, at most the CPUs the process may use
    /// [default: every CPU the process may use].
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Connections accepted at once over all listeners [default: 100000].
    #[arg(long, value_name = "N")]
    max_connections: Option<u64>,
    /// Largest packet accepted, in bytes, fixed header included [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<u64>,
    /// Receive Maximum announced to clients [default: 1024].
    #[arg(long, value_name = "N")]
    receive_maximum: Option<u64>,
    /// Topic Alias Maximum announced to clients; 0 turns inbound aliases off [default: 64].
    #[arg(long, value_name = "N")]
    topic_alias_maximum: Option<u64>,
    /// Messages queued per session beyond its in-flight window [default: 1000].
    #[arg(long, value_name = "N")]
    max_queued_messages: Option<u64>,
    /// What to drop when a session queue is full: drop-oldest or drop-new [default: drop-oldest].
    #[arg(long, value_name = "POLICY")]
    queue_drop_policy: Option<String>,
    /// Largest keep alive granted, in seconds [default: 65535].
    #[arg(long, value_name = "SECS")]
    max_keep_alive: Option<u64>,
    /// Storage backend: rocksdb, mysql, redis, or memory (nothing survives
    /// a restart) [default: rocksdb].
    #[arg(long, value_name = "BACKEND")]
    storage: Option<String>,
    /// RocksDB directory [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Server URL for the mysql and redis backends.
    #[arg(long, value_name = "URL")]
    storage_url: Option<String>,
    /// fsync: acknowledge QoS 1/2 messages once on stable storage; none:
    /// once the backend accepted them [default: fsync].
    #[arg(long, value_name = "MODE")]
    durability: Option<String>,
    /// Seconds a mysql or redis request keeps retrying while the server is
    /// unreachable. After that, a publisher waiting for it is disconnected
    /// with reason 0x80 [default: 30].
    #[arg(long, value_name = "SECS")]
    storage_retry_timeout: Option<u64>,
    /// Password file written by `coremq passwd` [default: none].
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// ACL file with allow/deny rules for publish and subscribe [default:
    /// none, which allows everything].
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// Accept clients without a user name on every listener that does not
    /// set its own [default: true without --password-file, false with it].
    #[arg(long, value_name = "BOOL")]
    allow_anonymous: Option<bool>,
    /// New connections per second accepted from one source IP address; 0
    /// means no limit [default: 0].
    #[arg(long, value_name = "N")]
    max_connection_rate: Option<u64>,
    /// Outbound QoS 1/2 messages in flight per session, whatever Receive
    /// Maximum the client announces [default: 65535].
    #[arg(long, value_name = "N")]
    max_inflight: Option<u64>,
    /// Bytes buffered per socket before QoS 0 messages to it are dropped
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_output_buffer: Option<u64>,
    /// Bytes of output buffers over all sockets of one shard beyond which
    /// QoS 0 messages to sockets holding more than their share (half this
    /// value divided among the shard's connections, at least 4 KiB) are
    /// dropped.
    /// Sockets that have not drained for a second count apart, against
    /// half this value [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    max_shard_output: Option<u64>,
    /// Seconds a socket may go without draining, while messages to it are
    /// dropped, before its client is disconnected as a slow consumer
    /// [default: 10].
    #[arg(long, value_name = "SECS")]
    slow_consumer_timeout: Option<u64>,
    /// Microseconds to hold deliveries to a socket that was written to
    /// less than this long ago, so that they leave in one write. Replies,
    /// and deliveries to a client that published since the last write, are
    /// not held; 0 writes each wake-up at once [default: 2500].
    #[arg(long, value_name = "MICROS")]
    write_linger_us: Option<u64>,
    /// Microseconds a shard waits after a pass over its readable sockets
    /// that found 4 or more, so that the next pass reads more at once; 0
    /// reads again as soon as the shard is idle [default: 250].
    #[arg(long, value_name = "MICROS")]
    read_pause_us: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add a user to a password file or change a user's password.
    ///
    /// Reads the password twice from the terminal, or one line from
    /// standard input when it is not a terminal. The file is created with
    /// mode 0600 if it does not exist.
    Passwd {
        /// Password file to create or update.
        file: PathBuf,
        /// User name to add or change.
        user: String,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    if let Some(Command::Passwd { file, user }) = &cli.command {
        return run_passwd(file, user);
    }
    let overrides = Overrides {
        listen: cli.listen,
        tls: TlsSection {
            cert_file: cli.tls_cert,
            key_file: cli.tls_key,
            client_ca_file: cli.tls_client_ca,
            require_client_cert: cli.tls_require_client_cert.then_some(true),
            use_cn_as_username: cli.tls_cn_as_username.then_some(true),
        },
        handshake_timeout: cli.handshake_timeout,
        shards: cli.shards,
        limits: LimitsConfig {
            max_connections: cli.max_connections,
            max_packet_size: cli.max_packet_size,
            receive_maximum: cli.receive_maximum,
            topic_alias_maximum: cli.topic_alias_maximum,
            max_queued_messages: cli.max_queued_messages,
            queue_drop_policy: cli.queue_drop_policy,
            max_keep_alive: cli.max_keep_alive,
            max_connection_rate: cli.max_connection_rate,
            max_inflight: cli.max_inflight,
            max_output_buffer: cli.max_output_buffer,
            max_shard_output: cli.max_shard_output,
            slow_consumer_timeout: cli.slow_consumer_timeout,
            write_linger_us: cli.write_linger_us,
            read_pause_us: cli.read_pause_us,
            ..Default::default()
        },
        storage: StorageConfig {
            backend: cli.storage,
            data_dir: cli.data_dir,
            url: cli.storage_url,
            durability: cli.durability,
            retry_timeout: cli.storage_retry_timeout,
        },
        auth: AuthConfig {
            password_file: cli.password_file,
            acl_file: cli.acl_file,
            allow_anonymous: cli.allow_anonymous,
            acl_default: None,
        },
    };
    let config = match Config::load(cli.config.as_deref(), overrides) {
        Ok(config) => config,
        Err(error) => {
            error!(%error, "invalid configuration");
            return ExitCode::from(2);
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards = config.shards,
        "starting coremq"
    );
    match coremq::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(%error, "broker stopped");
            ExitCode::FAILURE
        }
    }
}

/// Runs `coremq passwd FILE USER`.
fn run_passwd(file: &Path, user: &str) -> ExitCode {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let is_terminal = stdin.is_terminal();
    match coremq::auth::password::passwd_command(file, user, &mut stdin.lock(), is_terminal) {
        Ok(()) => {
            eprintln!("stored the password of {user} in {}", file.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("coremq passwd: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

//! Broker configuration: a TOML file, overridden by command-line flags.
//!
//! Every field has a default, so `coremq` runs with no file at all. Values
//! are checked once at load; an error names the key and how to fix it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use coremq_shard::{DropPolicy, Limits};
use serde::Deserialize;
use thiserror::Error;

use crate::admission::Admission;
use crate::auth::acl::Permission;
use crate::auth::{Security, SecurityError};

/// Largest Receive Maximum and Topic Alias Maximum the protocol can carry.
const MAX_U16_SETTING: u64 = u16::MAX as u64;
/// Maximum write linger accepted, in microseconds. Beyond 100 ms, batching
/// saves nothing more and only adds latency.
const MAX_WRITE_LINGER_US: u64 = 100_000;
/// Maximum read pause accepted, in microseconds. A longer pause adds its
/// whole length to the latency of every message under load.
const MAX_READ_PAUSE_US: u64 = 10_000;

/// Smallest Maximum Packet Size that still fits a CONNECT with a short
/// client id and a few properties.
const MIN_PACKET_SIZE: u32 = 64;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`{}: {message}", flag_hint(key))]
    Invalid { key: &'static str, message: String },
    #[error("invalid {protocol} listener {address}: {message}")]
    InvalidListener {
        protocol: ListenerProtocol,
        address: SocketAddr,
        message: String,
    },
}

/// Transport of a listener.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl ListenerProtocol {
    /// Returns the name used in the config file and in `--listen` URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Tls => "tls",
            ListenerProtocol::Ws => "ws",
            ListenerProtocol::Wss => "wss",
        }
    }

    /// True for `tls` and `wss`, which need a certificate.
    pub fn uses_tls(self) -> bool {
        matches!(self, ListenerProtocol::Tls | ListenerProtocol::Wss)
    }

    /// True for `ws` and `wss`, which serve MQTT at a request path.
    pub fn uses_websocket(self) -> bool {
        matches!(self, ListenerProtocol::Ws | ListenerProtocol::Wss)
    }
}

impl std::fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One listening socket.
///
/// After [`Config::load`], the certificate fields of a `tls` or `wss`
/// listener are filled from the `[tls]` section where the listener sets
/// none, `path` is set for `ws` and `wss`, and `handshake_timeout` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerConfig {
    /// Address to bind, such as `0.0.0.0:1883`; port 0 picks a free port.
    pub address: SocketAddr,
    /// Transport; default `tcp`.
    #[serde(default = "default_protocol")]
    pub protocol: ListenerProtocol,
    /// Request path that serves MQTT on a `ws` or `wss` listener; default `/mqtt`.
    pub path: Option<String>,
    /// PEM certificate chain of a `tls` or `wss` listener, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM file of the CAs that sign client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Rejects TLS clients without a certificate signed by `client_ca_file`.
    pub require_client_cert: Option<bool>,
    /// Replaces the CONNECT user name by the client certificate's Common Name.
    pub use_cn_as_username: Option<bool>,
    /// Seconds a client has for the TLS handshake and for the WebSocket
    /// upgrade request, each; default 10.
    pub handshake_timeout: Option<u64>,
    /// Accept clients without a user name on this listener; default
    /// `auth.allow-anonymous`.
    #[serde(default, rename = "allow-anonymous")]
    pub allow_anonymous: Option<bool>,
    /// Connections open at once on this listener; default no limit other
    /// than `limits.max-connections`.
    #[serde(default, rename = "max-connections")]
    pub max_connections: Option<u64>,
}

impl ListenerConfig {
    /// Creates a listener with no per-listener settings.
    pub fn new(address: SocketAddr, protocol: ListenerProtocol) -> Self {
        ListenerConfig {
            address,
            protocol,
            path: None,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            require_client_cert: None,
            use_cn_as_username: None,
            handshake_timeout: None,
            allow_anonymous: None,
            max_connections: None,
        }
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::InvalidListener {
            protocol: self.protocol,
            address: self.address,
            message,
        }
    }
}

fn default_protocol() -> ListenerProtocol {
    ListenerProtocol::Tcp
}

/// Parses a `--listen` value: `IP:PORT` (TCP), or a URL `tcp://IP:PORT`,
/// `tls://IP:PORT`, `ws://IP:PORT/PATH` or `wss://IP:PORT/PATH`, where the
/// path defaults to `/mqtt`.
impl FromStr for ListenerConfig {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (protocol, rest) = match text.split_once("://") {
            None => (ListenerProtocol::Tcp, text),
            Some((scheme, rest)) => {
                let protocol = match scheme.to_ascii_lowercase().as_str() {
                    "tcp" | "mqtt" => ListenerProtocol::Tcp,
                    "tls" | "mqtts" | "ssl" => ListenerProtocol::Tls,
                    "ws" => ListenerProtocol::Ws,
                    "wss" => ListenerProtocol::Wss,
                    _ => {
                        return Err(format!(
                            "unknown scheme {scheme:?} in {text:?}; use tcp, tls, ws or wss"
                        ))
                    }
                };
                (protocol, rest)
            }
        };
        let (address, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], Some(&rest[slash..])),
            None => (rest, None),
        };
        let address: SocketAddr = address.parse().map_err(|_| {
            format!(
                "invalid address {address:?} in {text:?}; expected IP:PORT such as \
                 127.0.0.1:1883 or [::1]:1883"
            )
        })?;
        let mut listener = ListenerConfig::new(address, protocol);
        if let Some(path) = path {
            if !protocol.uses_websocket() {
                return Err(format!(
                    "{text:?} has a path, but only ws:// and wss:// listeners serve a path"
                ));
            }
            listener.path = Some(path.to_owned());
        }
        Ok(listener)
    }
}

/// `[tls]` section of the config file: the certificate that `tls` and `wss`
/// listeners use unless they name their own. Every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsSection {
    /// PEM certificate chain, leaf first. Setting it (with `key-file`) also
    /// starts the default TLS listeners when no listener is configured.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert-file`.
    pub key_file: Option<PathBuf>,
    /// PEM file of the CAs that sign client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// Rejects clients without a certificate signed by `client-ca-file`; default false.
    pub require_client_cert: Option<bool>,
    /// Replaces the CONNECT user name by the client certificate's Common
    /// Name; needs `require-client-cert`; default false.
    pub use_cn_as_username: Option<bool>,
}

/// Storage section of the config file; every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageConfig {
    /// `rocksdb` (default), `mysql`, `redis`, or `memory` (nothing survives
    /// a restart). `store` is accepted as another name for this key.
    #[serde(alias = "store")]
    pub backend: Option<String>,
    /// RocksDB directory; default `./data`.
    pub data_dir: Option<PathBuf>,
    /// Server URL for `mysql` and `redis`, such as
    /// `mysql://user:password@127.0.0.1:3306/coremq` or `redis://127.0.0.1:6379/0`.
    pub url: Option<String>,
    /// `fsync` (default): acknowledge a QoS 1/2 message only after its group
    /// commit reached stable storage; `none`: once the backend accepted it.
    pub durability: Option<String>,
    /// Seconds a `mysql` or `redis` request keeps retrying while the server
    /// is unreachable, before the publisher waiting for it is disconnected;
    /// default 30.
    pub retry_timeout: Option<u64>,
}

/// Auth section of the config file; every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuthConfig {
    /// Password file written by `coremq passwd`; default none.
    pub password_file: Option<PathBuf>,
    /// ACL file; default none, which allows every publish and subscribe.
    pub acl_file: Option<PathBuf>,
    /// Accept clients without a user name; default true without a password
    /// file and false with one. A listener's `allow-anonymous` overrides it.
    pub allow_anonymous: Option<bool>,
    /// `deny` (default) or `allow`: the decision when no ACL rule applies.
    pub acl_default: Option<String>,
}

/// Where the broker keeps sessions, retained messages and the message log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    Memory,
    Rocksdb { data_dir: PathBuf },
    Mysql { url: String },
    Redis { url: String },
}

/// Default RocksDB directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// Limits section of the config file; every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Connections accepted at once over all listeners; default 100,000.
    pub max_connections: Option<u64>,
    /// Largest packet accepted, in bytes, fixed header included; default 1 MiB.
    pub max_packet_size: Option<u64>,
    /// Receive Maximum announced to clients; default 1,024.
    pub receive_maximum: Option<u64>,
    /// Topic Alias Maximum announced to clients; default 64.
    pub topic_alias_maximum: Option<u64>,
    /// Messages queued per session beyond its in-flight window; default 1,000.
    pub max_queued_messages: Option<u64>,
    /// `drop-oldest` (default) or `drop-new`, when a session queue is full.
    pub queue_drop_policy: Option<String>,
    /// Largest keep alive granted, in seconds; default 65,535.
    pub max_keep_alive: Option<u64>,
    /// Largest Session Expiry Interval granted, in seconds; default no limit.
    pub max_session_expiry: Option<u64>,
    /// Bytes buffered per socket before QoS 0 messages to it are dropped;
    /// default 1 MiB.
    pub max_output_buffer: Option<u64>,
    /// Bytes of output buffers over all sockets of one shard, default
    /// 16 MiB. Beyond it, QoS 0 messages to sockets holding more than
    /// their share (half this value divided among the shard's connections,
    /// at least 4 KiB) are dropped. Sockets that have not drained for a
    /// second count apart, against half this value.
    pub max_shard_output: Option<u64>,
    /// New connections per second accepted from one source IP address;
    /// default 0, which means no limit.
    pub max_connection_rate: Option<u64>,
    /// Outbound QoS 1/2 messages in flight per session, whatever Receive
    /// Maximum the client announces; default 65,535.
    pub max_inflight: Option<u64>,
    /// Seconds without write progress after which a client whose messages
    /// are being dropped is disconnected; default 10.
    pub slow_consumer_timeout: Option<u64>,
    /// Microseconds a socket's deliveries are held to batch them when it
    /// was written to less than this long ago; default 2,500, 0 disables.
    pub write_linger_us: Option<u64>,
    /// Microseconds a shard waits after a pass that found 4 or more
    /// readable sockets, so that the next pass reads more of them. Default
    /// 250, and 0 turns the pause off.
    pub read_pause_us: Option<u64>,
}

/// The config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// Executors (one per core); default: one per CPU the process may use.
    pub shards: Option<usize>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub tls: TlsSection,
    #[serde(default)]
    pub auth: AuthConfig,
}

/// Settings from the command line that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces the listeners of the file when not empty.
    pub listen: Vec<ListenerConfig>,
    /// Overrides each field of the file's `[tls]` section that it sets.
    pub tls: TlsSection,
    /// Overrides `handshake-timeout` of every listener, in seconds.
    pub handshake_timeout: Option<u64>,
    pub shards: Option<usize>,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
}

/// Checked configuration the broker runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub shards: usize,
    pub listeners: Vec<ListenerConfig>,
    pub limits: Limits,
    pub max_connections: usize,
    pub storage: Storage,
    /// True when QoS 1/2 acknowledgements wait for fsync.
    pub fsync: bool,
    /// How long a `mysql` or `redis` request keeps retrying while the server
    /// is unreachable.
    pub store_retry_timeout: Duration,
    /// Password file, anonymous access and ACL, loaded once and shared
    /// read-only by every shard.
    pub security: Arc<Security>,
    /// Per-listener connection counts and per-source connection rates,
    /// shared by every shard.
    pub admission: Arc<Admission>,
}

/// Default TCP listener when neither the file nor the command line names one.
pub const DEFAULT_TCP_ADDRESS: &str = "0.0.0.0:1883";

/// Default WebSocket listener, at [`DEFAULT_WS_PATH`].
pub const DEFAULT_WS_ADDRESS: &str = "0.0.0.0:8083";

/// Default TLS listener, started only when a certificate is configured.
pub const DEFAULT_TLS_ADDRESS: &str = "0.0.0.0:8883";

/// Default WebSocket-over-TLS listener, started only when a certificate is
/// configured.
pub const DEFAULT_WSS_ADDRESS: &str = "0.0.0.0:8084";

/// Request path of a WebSocket listener that sets none.
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// Seconds a client has for the TLS handshake or the WebSocket upgrade,
/// long enough for a slow mobile link, short enough that idle sockets do
/// not pile up.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;

/// Largest `handshake-timeout` accepted, in seconds.
const MAX_HANDSHAKE_TIMEOUT_SECS: u64 = 300;

/// Largest `storage.retry-timeout` accepted, in seconds. It bounds how long
/// a publisher can wait for its PUBACK while the server is down.
const MAX_STORE_RETRY_TIMEOUT_SECS: u64 = 3600;

impl Config {
    /// Loads `path` (if any), applies `overrides` and checks every value.
    ///
    /// # Errors
    ///
    /// Returns an error naming the file or the key that is wrong.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|error| ConfigError::Parse {
                    path: path.to_owned(),
                    message: error.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        let config = Config::from_parts(file, overrides)?;
        // Checked here rather than in `from_parts`, so that the checks of
        // every other value do not depend on the machine's CPUs.
        check_shards_fit(config.shards, available_cpus())?;
        Ok(config)
    }

    fn from_parts(file: FileConfig, overrides: Overrides) -> Result<Config, ConfigError> {
        let shards = overrides
            .shards
            .or(file.shards)
            .unwrap_or_else(available_cpus);
        if shards == 0 || shards > 64 {
            return Err(ConfigError::Invalid {
                key: "shards",
                message: format!("{shards} is out of range; use 1 to 64 (one per core)"),
            });
        }

        let tls = merge_tls(file.tls, overrides.tls);
        let listeners = if !overrides.listen.is_empty() {
            overrides.listen
        } else if !file.listeners.is_empty() {
            file.listeners
        } else {
            default_listeners(&tls)
        };
        let listeners = listeners
            .into_iter()
            .map(|listener| resolve_listener(listener, &tls, overrides.handshake_timeout))
            .collect::<Result<Vec<_>, _>>()?;

        let limits = merge_limits(file.limits, overrides.limits);
        let defaults = Limits::default();
        let max_packet_size = checked(
            "limits.max-packet-size",
            limits.max_packet_size,
            u64::from(defaults.max_packet_size),
            u64::from(MIN_PACKET_SIZE),
            u64::from(coremq_codec::MAX_PACKET_SIZE),
        )? as u32;
        let receive_maximum = checked(
            "limits.receive-maximum",
            limits.receive_maximum,
            u64::from(defaults.receive_maximum),
            1,
            MAX_U16_SETTING,
        )? as u16;
        let topic_alias_maximum = checked(
            "limits.topic-alias-maximum",
            limits.topic_alias_maximum,
            u64::from(defaults.topic_alias_maximum),
            0,
            MAX_U16_SETTING,
        )? as u16;
        let max_queued_messages = checked(
            "limits.max-queued-messages",
            limits.max_queued_messages,
            defaults.max_queued_messages as u64,
            0,
            u64::from(u32::MAX),
        )? as usize;
        let max_keep_alive = checked(
            "limits.max-keep-alive",
            limits.max_keep_alive,
            u64::from(defaults.max_keep_alive),
            1,
            MAX_U16_SETTING,
        )? as u16;
        let max_session_expiry = checked(
            "limits.max-session-expiry",
            limits.max_session_expiry,
            u64::from(defaults.max_session_expiry),
            0,
            u64::from(u32::MAX),
        )? as u32;
        let max_output_buffer = checked(
            "limits.max-output-buffer",
            limits.max_output_buffer,
            defaults.max_output_buffer as u64,
            4096,
            u64::from(u32::MAX),
        )? as usize;
        let max_shard_output = checked(
            "limits.max-shard-output",
            limits.max_shard_output,
            defaults.max_shard_output as u64,
            64 * 1024,
            u64::from(u32::MAX),
        )? as usize;
        let max_connections = checked(
            "limits.max-connections",
            limits.max_connections,
            100_000,
            1,
            u64::from(u32::MAX),
        )? as usize;
        let max_connection_rate = checked(
            "limits.max-connection-rate",
            limits.max_connection_rate,
            0,
            0,
            u64::from(u32::MAX),
        )? as u32;
        let max_inflight = checked(
            "limits.max-inflight",
            limits.max_inflight,
            u64::from(defaults.max_inflight),
            1,
            MAX_U16_SETTING,
        )? as u16;
        let slow_consumer_timeout = checked(
            "limits.slow-consumer-timeout",
            limits.slow_consumer_timeout,
            defaults.slow_consumer_timeout.as_secs(),
            1,
            u64::from(u32::MAX),
        )?;
        let write_linger_us = checked(
            "limits.write-linger-us",
            limits.write_linger_us,
            coremq_shard::DEFAULT_WRITE_LINGER_US,
            0,
            MAX_WRITE_LINGER_US,
        )?;
        let read_pause_us = checked(
            "limits.read-pause-us",
            limits.read_pause_us,
            coremq_shard::DEFAULT_READ_PAUSE_US,
            0,
            MAX_READ_PAUSE_US,
        )?;
        let queue_drop_policy = match limits.queue_drop_policy.as_deref() {
            None | Some("drop-oldest") => DropPolicy::DropOldest,
            Some("drop-new") => DropPolicy::DropNew,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "limits.queue-drop-policy",
                    message: format!(
                        "{other:?} is not a policy; use \"drop-oldest\" or \"drop-new\""
                    ),
                })
            }
        };

        let (storage, fsync, store_retry_timeout) = storage_from(file.storage, overrides.storage)?;
        let security = load_security(file.auth, overrides.auth, &listeners)?;
        let mut listener_limits = Vec::with_capacity(listeners.len());
        for listener in &listeners {
            let limit = match listener.max_connections {
                Some(0) => {
                    return Err(ConfigError::Invalid {
                        key: "listeners.max-connections",
                        message: format!(
                            "0 for listener {} would reject every client; use 1 or more, or \
                             remove the key for no per-listener limit",
                            listener.address
                        ),
                    })
                }
                Some(limit) => Some(limit as usize),
                None => None,
            };
            listener_limits.push(limit);
        }
        let admission = Admission::new(listener_limits, max_connection_rate);

        Ok(Config {
            shards,
            listeners,
            limits: Limits {
                receive_maximum,
                topic_alias_maximum,
                max_packet_size,
                max_queued_messages,
                queue_drop_policy,
                max_keep_alive,
                max_session_expiry,
                max_output_buffer,
                max_shard_output,
                max_inflight,
                slow_consumer_timeout: Duration::from_secs(slow_consumer_timeout),
                write_linger: Duration::from_micros(write_linger_us),
                read_pause: Duration::from_micros(read_pause_us),
            },
            max_connections,
            storage,
            fsync,
            store_retry_timeout,
            security: Arc::new(security),
            admission: Arc::new(admission),
        })
    }
}

/// TCP and WebSocket listeners on every address, plus TLS and WebSocket
/// over TLS when `[tls]` names a certificate.
fn default_listeners(tls: &TlsSection) -> Vec<ListenerConfig> {
    let default = |address: &str, protocol| {
        let address = address.parse().expect("the default addresses are valid");
        ListenerConfig::new(address, protocol)
    };
    let mut listeners = vec![
        default(DEFAULT_TCP_ADDRESS, ListenerProtocol::Tcp),
        default(DEFAULT_WS_ADDRESS, ListenerProtocol::Ws),
    ];
    if tls.cert_file.is_some() {
        listeners.push(default(DEFAULT_TLS_ADDRESS, ListenerProtocol::Tls));
        listeners.push(default(DEFAULT_WSS_ADDRESS, ListenerProtocol::Wss));
    }
    listeners
}

/// Checks one listener's settings against its protocol and fills in the
/// defaults: the `[tls]` certificate, the WebSocket path and the handshake
/// timeout.
fn resolve_listener(
    mut listener: ListenerConfig,
    tls: &TlsSection,
    handshake_timeout: Option<u64>,
) -> Result<ListenerConfig, ConfigError> {
    let protocol = listener.protocol;

    if protocol.uses_websocket() {
        let path = listener
            .path
            .get_or_insert_with(|| DEFAULT_WS_PATH.to_owned());
        if !path.starts_with('/') {
            let message = format!("path {path:?} must start with '/', such as \"/mqtt\"");
            return Err(listener.invalid(message));
        }
    } else if listener.path.is_some() {
        let message = "`path` applies only to ws and wss listeners; remove it".to_owned();
        return Err(listener.invalid(message));
    }

    if protocol.uses_tls() {
        resolve_certificate(&mut listener, tls)?;
    } else {
        let tls_keys = [
            ("cert-file", listener.cert_file.is_some()),
            ("key-file", listener.key_file.is_some()),
            ("client-ca-file", listener.client_ca_file.is_some()),
            (
                "require-client-cert",
                listener.require_client_cert.is_some(),
            ),
            ("use-cn-as-username", listener.use_cn_as_username.is_some()),
        ];
        if let Some((key, _)) = tls_keys.iter().find(|(_, set)| *set) {
            let message = format!("`{key}` applies only to tls and wss listeners; remove it");
            return Err(listener.invalid(message));
        }
    }

    let timeout = handshake_timeout
        .or(listener.handshake_timeout)
        .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_SECS);
    if timeout == 0 || timeout > MAX_HANDSHAKE_TIMEOUT_SECS {
        let message = format!(
            "handshake-timeout {timeout} is out of range; use 1 to {MAX_HANDSHAKE_TIMEOUT_SECS} seconds"
        );
        return Err(listener.invalid(message));
    }
    listener.handshake_timeout = Some(timeout);
    Ok(listener)
}

/// Fills a `tls` or `wss` listener's certificate settings from `[tls]`
/// where it sets none, and checks that they fit together.
fn resolve_certificate(listener: &mut ListenerConfig, tls: &TlsSection) -> Result<(), ConfigError> {
    if listener.cert_file.is_none() && listener.key_file.is_none() {
        listener.cert_file.clone_from(&tls.cert_file);
        listener.key_file.clone_from(&tls.key_file);
    }
    if listener.client_ca_file.is_none() {
        listener.client_ca_file.clone_from(&tls.client_ca_file);
    }
    let require_client_cert = listener
        .require_client_cert
        .or(tls.require_client_cert)
        .unwrap_or(false);
    let use_cn_as_username = listener
        .use_cn_as_username
        .or(tls.use_cn_as_username)
        .unwrap_or(false);
    listener.require_client_cert = Some(require_client_cert);
    listener.use_cn_as_username = Some(use_cn_as_username);

    if listener.cert_file.is_none() || listener.key_file.is_none() {
        let message = "needs a certificate and its key; set `cert-file` and `key-file` on the \
                       listener or in [tls], or pass --tls-cert and --tls-key"
            .to_owned();
        return Err(listener.invalid(message));
    }
    if require_client_cert && listener.client_ca_file.is_none() {
        let message = "`require-client-cert` needs `client-ca-file` (--tls-client-ca), the CA \
                       that signs client certificates"
            .to_owned();
        return Err(listener.invalid(message));
    }
    if use_cn_as_username && !require_client_cert {
        // Without this, a client that sends no certificate would keep the
        // user name of its CONNECT on a listener meant to take it from the
        // certificate.
        let message = "`use-cn-as-username` needs `require-client-cert = true` \
                       (--tls-require-client-cert)"
            .to_owned();
        return Err(listener.invalid(message));
    }
    Ok(())
}

fn merge_tls(file: TlsSection, cli: TlsSection) -> TlsSection {
    TlsSection {
        cert_file: cli.cert_file.or(file.cert_file),
        key_file: cli.key_file.or(file.key_file),
        client_ca_file: cli.client_ca_file.or(file.client_ca_file),
        require_client_cert: cli.require_client_cert.or(file.require_client_cert),
        use_cn_as_username: cli.use_cn_as_username.or(file.use_cn_as_username),
    }
}

/// Returns the storage backend, whether acknowledgements wait for fsync, and
/// the retry timeout of the networked backends.
fn storage_from(
    file: StorageConfig,
    cli: StorageConfig,
) -> Result<(Storage, bool, Duration), ConfigError> {
    let backend = cli
        .backend
        .or(file.backend)
        .unwrap_or_else(|| "rocksdb".to_owned());
    let url = cli.url.or(file.url);
    let need_url = |name: &str| {
        url.clone().ok_or_else(|| ConfigError::Invalid {
            key: "storage.url",
            message: format!(
                "the {name} backend needs a server URL; set storage.url or --storage-url"
            ),
        })
    };
    let storage = match backend.as_str() {
        "memory" => Storage::Memory,
        "rocksdb" => Storage::Rocksdb {
            data_dir: cli
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        },
        "mysql" => Storage::Mysql {
            url: need_url("mysql")?,
        },
        "redis" => Storage::Redis {
            url: need_url("redis")?,
        },
        other => {
            return Err(ConfigError::Invalid {
                key: "storage.backend",
                message: format!(
                "{other:?} is not a backend; use \"rocksdb\", \"mysql\", \"redis\" or \"memory\""
            ),
            })
        }
    };
    let fsync = match cli.durability.or(file.durability).as_deref() {
        None | Some("fsync") => true,
        Some("none") => false,
        Some(other) => {
            return Err(ConfigError::Invalid {
                key: "storage.durability",
                message: format!(
                    "{other:?} is not a durability setting; use \"fsync\" or \"none\""
                ),
            })
        }
    };
    let retry_timeout = cli.retry_timeout.or(file.retry_timeout);
    let is_networked = matches!(storage, Storage::Mysql { .. } | Storage::Redis { .. });
    if retry_timeout.is_some() && !is_networked {
        return Err(ConfigError::Invalid {
            key: "storage.retry-timeout",
            message: format!(
                "applies only to the mysql and redis backends, not to {backend:?}; remove it \
                 or --storage-retry-timeout"
            ),
        });
    }
    let retry_timeout = checked(
        "storage.retry-timeout",
        retry_timeout,
        coremq_wal::DEFAULT_RETRY_TIMEOUT.as_secs(),
        0,
        MAX_STORE_RETRY_TIMEOUT_SECS,
    )?;
    Ok((storage, fsync, Duration::from_secs(retry_timeout)))
}

/// Loads the password and ACL files named by the command line or the file.
fn load_security(
    file: AuthConfig,
    cli: AuthConfig,
    listeners: &[ListenerConfig],
) -> Result<Security, ConfigError> {
    let password_file = cli.password_file.or(file.password_file);
    let acl_file = cli.acl_file.or(file.acl_file);
    let allow_anonymous = cli
        .allow_anonymous
        .or(file.allow_anonymous)
        .unwrap_or(password_file.is_none());
    let acl_default = match cli.acl_default.or(file.acl_default).as_deref() {
        None | Some("deny") => Permission::Deny,
        Some("allow") => Permission::Allow,
        Some(other) => {
            return Err(ConfigError::Invalid {
                key: "auth.acl-default",
                message: format!("{other:?} is not a decision; use \"deny\" or \"allow\""),
            })
        }
    };
    let per_listener: Vec<bool> = listeners
        .iter()
        .map(|listener| listener.allow_anonymous.unwrap_or(allow_anonymous))
        .collect();
    Security::load(
        password_file.as_deref(),
        acl_file.as_deref(),
        acl_default,
        &per_listener,
    )
    .map_err(|error| {
        let key = match error {
            SecurityError::Passwords(_) => "auth.password-file",
            SecurityError::Acl(_) => "auth.acl-file",
        };
        ConfigError::Invalid {
            key,
            message: error.to_string(),
        }
    })
}

fn merge_limits(file: LimitsConfig, cli: LimitsConfig) -> LimitsConfig {
    LimitsConfig {
        max_connections: cli.max_connections.or(file.max_connections),
        max_packet_size: cli.max_packet_size.or(file.max_packet_size),
        receive_maximum: cli.receive_maximum.or(file.receive_maximum),
        topic_alias_maximum: cli.topic_alias_maximum.or(file.topic_alias_maximum),
        max_queued_messages: cli.max_queued_messages.or(file.max_queued_messages),
        queue_drop_policy: cli.queue_drop_policy.or(file.queue_drop_policy),
        max_keep_alive: cli.max_keep_alive.or(file.max_keep_alive),
        max_session_expiry: cli.max_session_expiry.or(file.max_session_expiry),
        max_output_buffer: cli.max_output_buffer.or(file.max_output_buffer),
        max_shard_output: cli.max_shard_output.or(file.max_shard_output),
        max_connection_rate: cli.max_connection_rate.or(file.max_connection_rate),
        max_inflight: cli.max_inflight.or(file.max_inflight),
        slow_consumer_timeout: cli.slow_consumer_timeout.or(file.slow_consumer_timeout),
        write_linger_us: cli.write_linger_us.or(file.write_linger_us),
        read_pause_us: cli.read_pause_us.or(file.read_pause_us),
    }
}

/// Names the command-line flag that also sets config `key`, for error
/// messages: a value may come from either.
fn flag_hint(key: &str) -> String {
    match key.strip_prefix("limits.") {
        Some(name) if name != "max-session-expiry" => format!(" (flag --{name})"),
        _ => String::new(),
    }
}

fn checked(
    key: &'static str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            key,
            message: format!("{value} is out of range; use {min} to {max}"),
        });
    }
    Ok(value)
}

/// Rejects more shards than the `cpus` this process may run on. Each shard
/// is an executor that expects a core of its own, and many executors on
/// few cores starve each other. 64 shards on 2 CPUs kept both busy for
/// minutes after start and did not stop on SIGTERM.
fn check_shards_fit(shards: usize, cpus: usize) -> Result<(), ConfigError> {
    if shards > cpus {
        return Err(ConfigError::Invalid {
            key: "shards",
            message: format!(
                "{shards} shards need {shards} CPUs, and this process may run on {cpus}; use at most {cpus} (one shard per CPU)"
            ),
        });
    }
    Ok(())
}

/// CPUs this process may run on (its affinity mask), at least 1.
pub fn available_cpus() -> usize {
    allowed_cpus().len().max(1)
}

/// The CPU numbers in this process's affinity mask, in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set that sched_getaffinity fills in; a
    // zeroed cpu_set_t is its documented empty value.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_beyond_cpus_rejected() {
        assert!(check_shards_fit(2, 2).is_ok());
        let message = check_shards_fit(64, 2)
            .expect_err("64 shards on 2 CPUs")
            .to_string();
        assert!(message.contains("shards"), "{message}");
        assert!(message.contains("64"), "{message}");
        assert!(message.contains("at most 2"), "{message}");
    }

    #[test]
    fn defaults_without_file() {
        let config = Config::from_parts(FileConfig::default(), Overrides::default())
            .expect("defaults are valid");
        let listeners: Vec<_> = config
            .listeners
            .iter()
            .map(|listener| {
                (
                    listener.protocol,
                    listener.address.port(),
                    listener.path.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            listeners,
            [
                (ListenerProtocol::Tcp, 1883, None),
                (ListenerProtocol::Ws, 8083, Some("/mqtt")),
            ]
        );
        assert_eq!(config.limits.receive_maximum, 1024);
        assert!(config.shards >= 1);
    }

    #[test]
    fn file_values_and_overrides() {
        let file: FileConfig = toml::from_str(
            r#"
            shards = 2
            [[listeners]]
            address = "127.0.0.1:1999"
            [limits]
            receive-maximum = 10
            queue-drop-policy = "drop-new"
            "#,
        )
        .expect("valid toml");
        let overrides = Overrides {
            limits: LimitsConfig {
                receive_maximum: Some(20),
                ..Default::default()
            },
            ..Default::default()
        };
        let config = Config::from_parts(file, overrides).expect("valid config");
        assert_eq!(config.shards, 2);
        assert_eq!(config.listeners[0].address.port(), 1999);
        assert_eq!(config.limits.receive_maximum, 20);
        assert_eq!(config.limits.queue_drop_policy, DropPolicy::DropNew);
    }

    #[test]
    fn out_of_range_names_key() {
        let file: FileConfig =
            toml::from_str("[limits]\nreceive-maximum = 0\n").expect("valid toml");
        let error = Config::from_parts(file, Overrides::default()).expect_err("0 is invalid");
        let message = error.to_string();
        assert!(message.contains("limits.receive-maximum"), "{message}");
        assert!(message.contains("use 1 to 65535"), "{message}");
    }

    #[test]
    fn out_of_range_flag_named() {
        let overrides = Overrides {
            limits: LimitsConfig {
                write_linger_us: Some(100_001),
                ..LimitsConfig::default()
            },
            ..Overrides::default()
        };
        let error = Config::from_parts(FileConfig::default(), overrides).expect_err("too long");
        let message = error.to_string();
        assert!(message.contains("--write-linger-us"), "{message}");
        assert!(message.contains("100001 is out of range"), "{message}");
    }

    #[test]
    fn read_pause_range_and_default() {
        let config =
            Config::from_parts(FileConfig::default(), Overrides::default()).expect("defaults");
        assert_eq!(config.limits.read_pause, Duration::from_micros(250));
        let file: FileConfig = toml::from_str("[limits]\nread-pause-us = 0\n").expect("valid toml");
        let config = Config::from_parts(file, Overrides::default()).expect("0 turns it off");
        assert_eq!(config.limits.read_pause, Duration::ZERO);
        let file: FileConfig =
            toml::from_str("[limits]\nread-pause-us = 10001\n").expect("valid toml");
        let message = Config::from_parts(file, Overrides::default())
            .expect_err("too long")
            .to_string();
        assert!(message.contains("limits.read-pause-us"), "{message}");
        assert!(message.contains("--read-pause-us"), "{message}");
        assert!(message.contains("use 0 to 10000"), "{message}");
    }

    #[test]
    fn listener_auth_and_limit_keys() {
        let file: FileConfig = toml::from_str(
            r#"
            [[listeners]]
            address = "127.0.0.1:1999"
            allow-anonymous = false
            max-connections = 5
            [auth]
            acl-default = "allow"
            [limits]
            max-inflight = 7
            slow-consumer-timeout = 3
            max-connection-rate = 20
            "#,
        )
        .expect("valid toml");
        let config = Config::from_parts(file, Overrides::default()).expect("valid config");
        assert_eq!(config.listeners[0].allow_anonymous, Some(false));
        assert_eq!(config.admission.listener_limit(0), Some(5));
        assert_eq!(config.admission.max_rate(), 20);
        assert_eq!(config.limits.max_inflight, 7);
        assert_eq!(config.limits.slow_consumer_timeout, Duration::from_secs(3));
    }

    #[test]
    fn missing_password_file_names_key() {
        let overrides = Overrides {
            auth: AuthConfig {
                password_file: Some(PathBuf::from("/nonexistent/coremq-passwd")),
                ..Default::default()
            },
            ..Default::default()
        };
        let error = Config::from_parts(FileConfig::default(), overrides).expect_err("missing");
        let message = error.to_string();
        assert!(message.contains("auth.password-file"), "{message}");
        assert!(message.contains("/nonexistent/coremq-passwd"), "{message}");
    }

    #[test]
    fn invalid_acl_default_names_key() {
        let file: FileConfig =
            toml::from_str("[auth]\nacl-default = \"maybe\"\n").expect("valid toml");
        let error = Config::from_parts(file, Overrides::default()).expect_err("invalid");
        assert!(error.to_string().contains("auth.acl-default"), "{error}");
    }

    #[test]
    fn storage_retry_timeout() {
        let file: FileConfig = toml::from_str(
            "[storage]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\nretry-timeout = 5\n",
        )
        .expect("valid toml");
        let config = Config::from_parts(file.clone(), Overrides::default()).expect("valid config");
        assert_eq!(config.store_retry_timeout, Duration::from_secs(5));

        let overrides = Overrides {
            storage: StorageConfig {
                retry_timeout: Some(0),
                ..Default::default()
            },
            ..Default::default()
        };
        let config = Config::from_parts(file, overrides).expect("valid config");
        assert_eq!(config.store_retry_timeout, Duration::ZERO);

        let file: FileConfig =
            toml::from_str("[storage]\nbackend = \"mysql\"\nurl = \"mysql://u:p@127.0.0.1/db\"\n")
                .expect("valid toml");
        let config = Config::from_parts(file, Overrides::default()).expect("valid config");
        assert_eq!(config.store_retry_timeout, Duration::from_secs(30));
    }

    #[test]
    fn storage_retry_timeout_checked() {
        let cases = [
            (
                "backend = \"redis\"\nurl = \"redis://127.0.0.1/0\"\nretry-timeout = 3601\n",
                "use 0 to 3600",
            ),
            (
                "backend = \"rocksdb\"\nretry-timeout = 5\n",
                "applies only to the mysql and redis backends",
            ),
        ];
        for (section, expected) in cases {
            let file: FileConfig =
                toml::from_str(&format!("[storage]\n{section}")).expect("valid toml");
            let error = Config::from_parts(file, Overrides::default()).expect_err(expected);
            let message = error.to_string();
            assert!(message.contains("storage.retry-timeout"), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn unknown_key_rejected() {
        let error =
            toml::from_str::<FileConfig>("[limits]\nrecieve-maximum = 5\n").expect_err("typo");
        assert!(error.to_string().contains("recieve-maximum"));
    }

    #[test]
    fn certificate_adds_default_tls_listeners() {
        let file: FileConfig =
            toml::from_str("[tls]\ncert-file = \"server.pem\"\nkey-file = \"server.key\"\n")
                .expect("valid toml");
        let config = Config::from_parts(file, Overrides::default()).expect("valid config");
        let listeners: Vec<_> = config
            .listeners
            .iter()
            .map(|listener| (listener.protocol, listener.address.port()))
            .collect();
        assert_eq!(
            listeners,
            [
                (ListenerProtocol::Tcp, 1883),
                (ListenerProtocol::Ws, 8083),
                (ListenerProtocol::Tls, 8883),
                (ListenerProtocol::Wss, 8084),
            ]
        );
        for listener in &config.listeners[2..] {
            assert_eq!(listener.cert_file.as_deref(), Some(Path::new("server.pem")));
            assert_eq!(listener.key_file.as_deref(), Some(Path::new("server.key")));
            assert_eq!(listener.require_client_cert, Some(false));
        }
    }

    #[test]
    fn listen_urls_parse() {
        let cases = [
            (
                "127.0.0.1:1883",
                ListenerProtocol::Tcp,
                "127.0.0.1:1883",
                None,
            ),
            (
                "tcp://127.0.0.1:0",
                ListenerProtocol::Tcp,
                "127.0.0.1:0",
                None,
            ),
            (
                "tls://0.0.0.0:8883",
                ListenerProtocol::Tls,
                "0.0.0.0:8883",
                None,
            ),
            (
                "ws://127.0.0.1:0",
                ListenerProtocol::Ws,
                "127.0.0.1:0",
                None,
            ),
            (
                "ws://127.0.0.1:0/mqtt",
                ListenerProtocol::Ws,
                "127.0.0.1:0",
                Some("/mqtt"),
            ),
            (
                "WSS://[::1]:8084/a/b",
                ListenerProtocol::Wss,
                "[::1]:8084",
                Some("/a/b"),
            ),
        ];
        for (text, protocol, address, path) in cases {
            let listener: ListenerConfig = text
                .parse()
                .unwrap_or_else(|error| panic!("{text}: {error}"));
            assert_eq!(listener.protocol, protocol, "{text}");
            assert_eq!(
                listener.address,
                address.parse::<SocketAddr>().expect("valid"),
                "{text}"
            );
            assert_eq!(listener.path.as_deref(), path, "{text}");
        }
    }

    #[test]
    fn listen_url_errors_name_the_fix() {
        let cases = [
            ("http://127.0.0.1:80", "use tcp, tls, ws or wss"),
            ("ws://localhost:8083/mqtt", "expected IP:PORT"),
            (
                "tls://127.0.0.1:8883/mqtt",
                "only ws:// and wss:// listeners serve a path",
            ),
            ("127.0.0.1", "expected IP:PORT"),
        ];
        for (text, expected) in cases {
            let error = text.parse::<ListenerConfig>().expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn tls_listener_needs_certificate() {
        let overrides = Overrides {
            listen: vec!["tls://127.0.0.1:0".parse().expect("valid URL")],
            ..Default::default()
        };
        let error = Config::from_parts(FileConfig::default(), overrides).expect_err("no cert");
        let message = error.to_string();
        assert!(message.contains("tls listener 127.0.0.1:0"), "{message}");
        assert!(message.contains("--tls-cert"), "{message}");
    }

    #[test]
    fn client_cert_settings_checked() {
        let cases = [
            (
                "require-client-cert = true\n",
                "`require-client-cert` needs `client-ca-file`",
            ),
            (
                "client-ca-file = \"ca.pem\"\nuse-cn-as-username = true\n",
                "`use-cn-as-username` needs `require-client-cert = true`",
            ),
        ];
        for (extra, expected) in cases {
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:0\"\nprotocol = \"tls\"\n\
                 cert-file = \"s.pem\"\nkey-file = \"s.key\"\n{extra}"
            );
            let file: FileConfig = toml::from_str(&text).expect("valid toml");
            let error = Config::from_parts(file, Overrides::default()).expect_err(expected);
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn listener_keys_checked_against_protocol() {
        let cases = [
            (
                "protocol = \"tcp\"\npath = \"/mqtt\"\n",
                "`path` applies only to ws and wss",
            ),
            (
                "protocol = \"ws\"\npath = \"mqtt\"\n",
                "must start with '/'",
            ),
            (
                "protocol = \"ws\"\ncert-file = \"s.pem\"\n",
                "`cert-file` applies only to tls and wss",
            ),
            (
                "protocol = \"ws\"\nhandshake-timeout = 0\n",
                "use 1 to 300 seconds",
            ),
        ];
        for (extra, expected) in cases {
            let text = format!("[[listeners]]\naddress = \"127.0.0.1:0\"\n{extra}");
            let file: FileConfig = toml::from_str(&text).expect("valid toml");
            let error = Config::from_parts(file, Overrides::default()).expect_err(expected);
            assert!(error.to_string().contains(expected), "{error}");
        }
    }

    #[test]
    fn listener_certificate_overrides_section() {
        let file: FileConfig = toml::from_str(
            r#"
            [tls]
            cert-file = "shared.pem"
            key-file = "shared.key"
            client-ca-file = "ca.pem"

            [[listeners]]
            address = "127.0.0.1:0"
            protocol = "wss"
            cert-file = "own.pem"
            key-file = "own.key"
            require-client-cert = true
            use-cn-as-username = true
            handshake-timeout = 3
            "#,
        )
        .expect("valid toml");
        let config = Config::from_parts(file, Overrides::default()).expect("valid config");
        let listener = &config.listeners[0];
        assert_eq!(listener.cert_file.as_deref(), Some(Path::new("own.pem")));
        assert_eq!(
            listener.client_ca_file.as_deref(),
            Some(Path::new("ca.pem"))
        );
        assert_eq!(listener.path.as_deref(), Some("/mqtt"));
        assert_eq!(listener.use_cn_as_username, Some(true));
        assert_eq!(listener.handshake_timeout, Some(3));
    }
}

//! Start-up: binds the listeners, starts one pinned glommio executor per
//! shard, joins them into the channel mesh, and runs each shard's accept
//! loops and mesh receivers.

use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;
use tracing::{error, info, warn, Instrument};

use coremq_shard::persist::LOG_QUEUE;
use coremq_shard::{owner_shard, Persistence, Shard, ShardMsg};
use coremq_wal::{
    Durability, HandleConfig, Message, MysqlConfig, MysqlStore, RedisConfig, RedisStore,
    RocksConfig, RocksStore, SessionRecord, Store, StoreHandle,
};
use futures_lite::future;

use crate::config::{allowed_cpus, Config, ListenerProtocol, Storage};
use crate::connection::{self, Accepted, ConnectionContext};
use crate::listener::{Endpoint, Transport};
use crate::transport::tcp::TcpConn;
use crate::transport::tls::TlsError;

/// Capacity of each shard-to-shard channel, in messages. Large enough that
/// a burst of publishes to another shard rarely waits, small enough that a
/// stalled shard pushes back on publishers instead of growing memory.
const MESH_CHANNEL_CAPACITY: usize = 4096;

/// Memory each executor registers with io_uring for buffered file I/O. The
/// broker does no file I/O through glommio, and registered memory counts
/// against RLIMIT_MEMLOCK (often 8 MiB), so keep it at glommio's minimum.
const EXECUTOR_IO_MEMORY: usize = 64 * 1024;

/// How often each shard checks whether a shutdown was requested.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Time given to writers to flush the final DISCONNECT before exit.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Set by the signal thread on SIGTERM or SIGINT.
// Ordering: a flag with no data behind it; Relaxed suffices.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);

/// Pending connections the kernel queues per listening socket.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {address}: {source}; check that no other process uses the port and that the address belongs to this machine")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the {protocol} listener {address}: {source}")]
    Tls {
        protocol: ListenerProtocol,
        address: SocketAddr,
        source: Box<TlsError>,
    },
    #[error("cannot start executor for shard {shard}: {message}")]
    Executor { shard: usize, message: String },
    #[error("cannot open the {backend} store: {source}")]
    Store {
        backend: &'static str,
        source: coremq_wal::StoreError,
    },
}

/// Contents of the store at start-up.
struct Recovered {
    persistence: Persistence,
    sessions: Arc<Vec<SessionRecord>>,
    retained: Arc<Vec<Message>>,
}

/// Opens the configured store and reads what it holds. Returns `None` for
/// the in-memory mode.
fn open_store(config: &Config) -> Result<Option<Recovered>, ServerError> {
    let durability = if config.fsync {
        Durability::Fsync
    } else {
        Durability::None
    };
    let (backend, opened): (&'static str, Result<Arc<dyn Store>, coremq_wal::StoreError>) =
        match &config.storage {
            Storage::Memory => return Ok(None),
            Storage::Rocksdb { data_dir } => {
                let mut rocks = RocksConfig::new(data_dir);
                rocks.durability = durability;
                (
                    "rocksdb",
                    RocksStore::open(&rocks).map(|s| Arc::new(s) as Arc<dyn Store>),
                )
            }
            Storage::Mysql { url } => {
                let mut mysql = MysqlConfig::new(url.clone());
                mysql.durability = durability;
                mysql.retry_timeout = config.store_retry_timeout;
                (
                    "mysql",
                    MysqlStore::open(&mysql).map(|s| Arc::new(s) as Arc<dyn Store>),
                )
            }
            Storage::Redis { url } => {
                let mut redis = RedisConfig::new(url.clone());
                redis.durability = durability;
                redis.retry_timeout = config.store_retry_timeout;
                (
                    "redis",
                    RedisStore::open(&redis).map(|s| Arc::new(s) as Arc<dyn Store>),
                )
            }
        };
    let store = opened.map_err(|source| ServerError::Store { backend, source })?;
    let handle = StoreHandle::spawn(store, HandleConfig::default()).map_err(|error| {
        ServerError::Executor {
            shard: 0,
            message: format!("cannot start the store threads: {error}"),
        }
    })?;
    let load = |source| ServerError::Store { backend, source };
    let sessions = future::block_on(handle.list_sessions()).map_err(load)?;
    let retained = future::block_on(handle.list_retained()).map_err(load)?;
    let last_offset = future::block_on(handle.last_offset(LOG_QUEUE))
        .map_err(load)?
        .unwrap_or(0);
    info!(
        backend,
        sessions = sessions.len(),
        retained = retained.len(),
        last_offset,
        fsync = config.fsync,
        "opened store"
    );
    Ok(Some(Recovered {
        persistence: Persistence::new(handle, last_offset, config.shards),
        sessions: Arc::new(sessions),
        retained: Arc::new(retained),
    }))
}

/// A listener's sockets: one per shard, all bound to the same address with
/// SO_REUSEPORT so the kernel spreads new connections over the shards.
struct BoundListener {
    index: usize,
    protocol: ListenerProtocol,
    address: SocketAddr,
    fds: Vec<RawFd>,
}

/// Binds every listener once per shard. Port 0 is resolved by the first
/// socket, and the others bind the port it got.
fn bind_listeners(config: &Config) -> Result<Vec<BoundListener>, ServerError> {
    // Every port is checked before any is bound, so that no listener of
    // this broker counts as the other process for the next one.
    for listener in &config.listeners {
        let address = listener.address;
        if address.port() != 0 {
            check_port_free(address).map_err(|source| ServerError::Bind { address, source })?;
        }
    }
    let mut bound = Vec::new();
    for (index, listener) in config.listeners.iter().enumerate() {
        let mut address = listener.address;
        let mut fds = Vec::with_capacity(config.shards);
        for _ in 0..config.shards {
            let socket =
                bind_reuseport(address).map_err(|source| ServerError::Bind { address, source })?;
            if address.port() == 0 {
                address = socket.local_addr().ok().and_then(|a| a.as_socket()).ok_or(
                    ServerError::Bind {
                        address,
                        source: std::io::Error::other("bound socket has no local address"),
                    },
                )?;
            }
            fds.push(socket.into_raw_fd());
        }
        bound.push(BoundListener {
            index,
            protocol: listener.protocol,
            address,
            fds,
        });
    }
    Ok(bound)
}

/// Fails when another socket listens on `address`. The shards' sockets
/// share the port with SO_REUSEPORT, which would also let them share it
/// with another broker of the same user, each getting part of the
/// clients. A socket without SO_REUSEPORT cannot bind a port that any
/// listener holds.
fn check_port_free(address: SocketAddr) -> std::io::Result<()> {
    tcp_socket(address)?.bind(&address.into())
}

fn bind_reuseport(address: SocketAddr) -> std::io::Result<Socket> {
    let socket = tcp_socket(address)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// Creates a TCP socket for `address`'s family with SO_REUSEADDR, so that
/// connections of an earlier run in TIME_WAIT do not block the port.
fn tcp_socket(address: SocketAddr) -> std::io::Result<Socket> {
    let domain = if address.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Starts accepting connections on the bound listeners. It runs once the
/// store is open, so a client that can connect finds the broker ready.
/// Otherwise the kernel would queue connections while a slow store opens,
/// and drop them all if the store then fails to open.
fn start_listening(listeners: &[BoundListener]) -> Result<(), ServerError> {
    for listener in listeners {
        for &fd in &listener.fds {
            // SAFETY: `fd` is a bound socket that `bind_listeners` created
            // and that stays open until its shard takes it over.
            if unsafe { libc::listen(fd, LISTEN_BACKLOG) } < 0 {
                return Err(ServerError::Bind {
                    address: listener.address,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
    }
    Ok(())
}

/// Runs the broker until every shard stops.
///
/// # Errors
///
/// Returns an error when a listener cannot be bound or an executor cannot
/// be started.
pub fn run(config: Config) -> Result<(), ServerError> {
    let endpoints = load_endpoints(&config)?;
    let listeners = bind_listeners(&config)?;
    spawn_signal_thread()?;
    let recovered = open_store(&config)?.map(Arc::new);
    start_listening(&listeners)?;
    for (listener, settings) in listeners.iter().zip(&config.listeners) {
        match &settings.path {
            Some(path) => {
                info!(protocol = %listener.protocol, addr = %listener.address, path = %path, "listening")
            }
            None => info!(protocol = %listener.protocol, addr = %listener.address, "listening"),
        }
    }

    let restored = Arc::new(AtomicUsize::new(0));
    let cpus = allowed_cpus();
    let mesh = MeshBuilder::<ShardMsg, _>::full(config.shards, MESH_CHANNEL_CAPACITY);
    let connections = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(config.shards);
    for shard_index in 0..config.shards {
        let cpu = cpus[shard_index % cpus.len()];
        let mesh = mesh.clone();
        let config = config.clone();
        let connections = connections.clone();
        let endpoints = endpoints.clone();
        let recovered = recovered.clone();
        let restored = restored.clone();
        let fds: Vec<(usize, SocketAddr, RawFd)> = listeners
            .iter()
            .map(|l| (l.index, l.address, l.fds[shard_index]))
            .collect();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("coremq-shard-{shard_index}"))
            .io_memory(EXECUTOR_IO_MEMORY)
            .spawn(move || async move {
                let startup = Startup {
                    recovered,
                    restored,
                };
                shard_main(mesh, config, endpoints, fds, connections, startup).await
            })
            .map_err(|error| ServerError::Executor {
                shard: shard_index,
                message: error.to_string(),
            })?;
        handles.push(handle);
    }
    for handle in handles {
        if let Err(error) = handle.join() {
            error!(%error, "shard executor failed");
        }
    }
    info!("stopped");
    Ok(())
}

/// Loads each listener's certificate files once, before any shard starts.
fn load_endpoints(config: &Config) -> Result<Vec<Endpoint>, ServerError> {
    config
        .listeners
        .iter()
        .map(|listener| {
            Endpoint::new(listener, config.limits.max_packet_size).map_err(|source| {
                ServerError::Tls {
                    protocol: listener.protocol,
                    address: listener.address,
                    source: Box::new(source),
                }
            })
        })
        .collect()
}

/// Starts the thread that turns SIGTERM and SIGINT into a shutdown request.
fn spawn_signal_thread() -> Result<(), ServerError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|error| {
        ServerError::Executor {
            shard: 0,
            message: format!("cannot install signal handlers: {error}"),
        }
    })?;
    std::thread::Builder::new()
        .name("coremq-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                info!(signal, "shutting down");
                SHUTDOWN.store(true, Ordering::Relaxed);
            }
        })
        .map_err(|error| ServerError::Executor {
            shard: 0,
            message: format!("cannot start the signal thread: {error}"),
        })?;
    Ok(())
}

/// Waits for a shutdown request, tells this shard's clients, and gives
/// their writers time to flush.
async fn watch_shutdown(shard: Shard) {
    while !SHUTDOWN.load(Ordering::Relaxed) {
        glommio::timer::sleep(SHUTDOWN_POLL_INTERVAL).await;
    }
    let closed = shard.shut_down_connections();
    info!(connections = closed, "disconnecting clients");
    glommio::timer::sleep(SHUTDOWN_GRACE).await;
}

/// State the shards share while they start: the store's contents, and the
/// count of shards that have rebuilt their sessions from it.
struct Startup {
    recovered: Option<Arc<Recovered>>,
    restored: Arc<AtomicUsize>,
}

async fn shard_main(
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    config: Config,
    endpoints: Vec<Endpoint>,
    listeners: Vec<(usize, SocketAddr, RawFd)>,
    connections: Arc<AtomicUsize>,
    startup: Startup,
) {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .expect("every shard joins the mesh at start-up");
    let persistence = startup
        .recovered
        .as_ref()
        .map(|recovered| recovered.persistence.clone());
    let shard = Shard::new(senders, config.limits.clone(), persistence);
    shard.install();
    let span = tracing::info_span!("shard", id = shard.id());
    let context = ConnectionContext::new(shard.clone(), config.clone(), endpoints, connections);

    for (peer, receiver) in receivers.streams() {
        let shard = shard.clone();
        let context = context.clone();
        glommio::spawn_local(
            async move {
                while let Some(msg) = receiver.recv().await {
                    match msg {
                        ShardMsg::Handoff(handoff) => {
                            // SAFETY: the sending shard gave up this descriptor
                            // (it sent a dup and closed its own), so it is ours.
                            let stream =
                                unsafe { Transport::from_handoff(handoff.fd, handoff.transport) };
                            let accepted = Accepted {
                                stream,
                                peer: handoff.peer,
                                listener: handoff.listener,
                                buffered: handoff.buffered,
                                assigned_client_id: handoff.assigned_client_id,
                            };
                            let context = context.clone();
                            glommio::spawn_local(
                                connection::serve(context, Box::new(accepted)).in_current_span(),
                            )
                            .detach();
                        }
                        other => shard.handle_mesh_message(other),
                    }
                }
                warn!(peer, "mesh channel closed");
            }
            .instrument(span.clone()),
        )
        .detach();
    }

    // Rebuild this shard's sessions, then wait until every shard has, so no
    // client reaches a session before it is back.
    if let Some(recovered) = &startup.recovered {
        let mine: Vec<SessionRecord> = recovered
            .sessions
            .iter()
            .filter(|record| owner_shard(&record.client_id, config.shards) == shard.id())
            .cloned()
            .collect();
        shard.restore(mine, recovered.retained.to_vec()).await;
        shard.start_persistence();
    }
    startup.restored.fetch_add(1, Ordering::Relaxed);
    while startup.restored.load(Ordering::Relaxed) < config.shards {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }

    let mut accept_loops = Vec::new();
    for (index, address, fd) in listeners {
        // SAFETY: `fd` is a bound, listening socket created for this shard
        // by `bind_listeners` and handed over to this executor alone.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        let context = context.clone();
        accept_loops.push(glommio::spawn_local(
            async move {
                let mut incoming = listener.incoming();
                while let Some(stream) = incoming.next().await {
                    match stream {
                        Ok(stream) => {
                            let peer = match stream.peer_addr() {
                                Ok(peer) => peer,
                                Err(_) => continue,
                            };
                            let accepted = Accepted {
                                stream: Transport::Tcp(TcpConn::new(stream)),
                                peer,
                                listener: index,
                                buffered: Vec::new(),
                                assigned_client_id: None,
                            };
                            glommio::spawn_local(
                                connection::serve(context.clone(), Box::new(accepted))
                                    .in_current_span(),
                            )
                            .detach();
                        }
                        Err(error) => {
                            warn!(addr = %address, %error, "accept failed");
                            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            .instrument(span.clone()),
        ));
    }
    // The shard runs until a shutdown request; the accept loops and
    // connection tasks end with the executor.
    watch_shutdown(shard).await;
    drop(accept_loops);
}

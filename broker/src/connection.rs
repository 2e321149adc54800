//! One client connection: reads the CONNECT, moves the connection to the
//! shard that owns its session, then runs a reader loop that decodes
//! packets for the shard engine and a writer task that flushes the
//! connection's output buffer in one write per wake-up.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq_codec::{
    decode, encode, ConnAck, Connect, DecodeContext, DecodeError, Packet, Properties, Protocol,
    Publish, ReasonCode, MAX_PACKET_SIZE,
};
use coremq_shard::{
    owner_shard, CloseRequest, Conn, ConnectOutcome, Handoff, OutputBudget, PublishNow, Shard,
    ShardMsg,
};
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn, Instrument};

use crate::config::Config;
use crate::linger::FlushClock;
use crate::listener::{Endpoint, Transport};
use crate::login::{self, Reauthentication};
use crate::transport::readiness::{self, ReadHook};
use crate::transport::split::{split, ReadHalf, WriteHalf};

/// Time a new connection has to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of the read buffer a connection uses until its CONNECT is read.
const CONNECT_READ_CHUNK: usize = 1024;

/// Largest number of bytes read from a socket per read call: the size of
/// the read buffer the connections of a shard share.
const READ_CHUNK: usize = 32 * 1024;

/// Spare capacity a connection's read buffer may keep between reads,
/// beyond twice its unread bytes.
const MIN_SPARE_READ_CAPACITY: usize = 4096;

/// Packet type of PUBLISH, in the high four bits of its first byte.
const PUBLISH_TYPE: u8 = 3;

/// Maximum number of PUBLISH packets handed to the shard as one batch. A batch is routed
/// only once every packet in it was checked and logged, so a bound keeps a
/// large read from delaying the first delivery.
const MAX_PUBLISH_BATCH: usize = 256;

/// Output size from which a writer stops holding deliveries back to batch
/// them: such a write is big enough on its own.
const LINGER_MAX_BYTES: usize = 16 * 1024;

/// Time the writer keeps flushing after a close was requested. A peer that
/// stopped reading, such as a slow consumer being cut off, would otherwise
/// keep its connection task and socket open for good.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// State shared by the connections of one shard.
#[derive(Clone)]
pub struct ConnectionContext {
    shard: Shard,
    config: Rc<Config>,
    /// Settings of each listener, by listener index.
    endpoints: Rc<[Endpoint]>,
    /// Open connections over all shards, for `max-connections`.
    connections: Arc<AtomicUsize>,
    next_conn_id: Rc<Cell<u64>>,
    /// Batches writes to busy sockets (`write-linger-us`).
    flush_clock: Rc<FlushClock>,
    /// Memory of this shard's output buffers (`max-shard-output`).
    output_budget: Rc<OutputBudget>,
    /// The buffer every connection of the shard reads into. What a read
    /// returns is copied to the connection's own buffer at once, so an
    /// idle connection has no read buffer.
    read_chunk: Rc<RefCell<Vec<u8>>>,
}

impl ConnectionContext {
    /// Creates the context of `shard` and installs the configured ACL on it.
    pub fn new(
        shard: Shard,
        config: Config,
        endpoints: Vec<Endpoint>,
        connections: Arc<AtomicUsize>,
    ) -> Self {
        if let Some(acl) = config.security.acl() {
            shard.set_authorizer(acl);
        }
        let limits = shard.limits();
        let flush_clock = FlushClock::new(limits.write_linger);
        readiness::set_read_pause(limits.read_pause);
        let output_budget = OutputBudget::new(limits.max_shard_output);
        ConnectionContext {
            shard,
            config: Rc::new(config),
            endpoints: endpoints.into(),
            connections,
            next_conn_id: Rc::new(Cell::new(1)),
            flush_clock,
            output_budget,
            read_chunk: Rc::new(RefCell::new(vec![0; READ_CHUNK])),
        }
    }
}

/// A socket accepted by a listener or handed over by another shard.
pub struct Accepted {
    /// Plain TCP for a new connection, because the listener's TLS and
    /// WebSocket handshakes run in [`serve`]. A handed-over connection
    /// arrives with its handshakes done.
    pub stream: Transport,
    pub peer: SocketAddr,
    pub listener: usize,
    /// Bytes already read by the shard that accepted the connection.
    pub buffered: Vec<u8>,
    pub assigned_client_id: Option<String>,
}

/// How a connection ended, for the log.
#[derive(Debug)]
enum Ending {
    /// The peer closed the socket.
    Eof,
    /// Reading from the socket failed, or the transport below MQTT
    /// (TLS, WebSocket) received invalid data.
    ReadFailed,
    /// The broker closed it, with the reason code sent in DISCONNECT.
    Server(Option<ReasonCode>),
}

/// Serves one connection until it closes.
///
/// `accepted` comes boxed: a future keeps its arguments for its whole life.
pub async fn serve(context: ConnectionContext, accepted: Box<Accepted>) {
    let handed_over = !accepted.buffered.is_empty();
    let open = context.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let admission = context.config.admission.clone();
    let listener_slot = admission.enter_listener(accepted.listener);
    // A handed-over connection was checked by the shard that accepted it.
    let rejection = if handed_over {
        None
    } else if open > context.config.max_connections {
        warn!(peer = %accepted.peer, max = context.config.max_connections, "connection limit reached; rejecting");
        Some(ReasonCode::QUOTA_EXCEEDED)
    } else if listener_slot.over_limit {
        warn!(
            peer = %accepted.peer,
            listener = accepted.listener,
            max = admission.listener_limit(accepted.listener),
            "listener connection limit reached; rejecting"
        );
        Some(ReasonCode::QUOTA_EXCEEDED)
    } else if let Err(rejected) = admission.admit_source(accepted.peer.ip(), Instant::now()) {
        // One line per address and window, so a flood does not flood the log.
        if rejected == 1 {
            warn!(
                peer = %accepted.peer,
                max_per_second = admission.max_rate(),
                "connection rate limit reached for this address; rejecting"
            );
        }
        Some(ReasonCode::CONNECTION_RATE_EXCEEDED)
    } else {
        None
    };
    // Both steps run boxed: a task is as large as its largest await point,
    // and the handshake's state is not needed for the connection's life.
    // The CONNECT is a temporary of this statement, so it is not kept.
    let session = boxed(|| establish(&context, accepted, rejection))
        .await
        .map(|established| boxed(|| run_session(&context, Box::new(established))));
    if let Some(session) = session {
        session.await;
    }
    drop(listener_slot);
    context.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Boxes the future that `start` returns.
///
/// A future keeps room for every value live at any of its await points,
/// temporaries and values already moved away included, for its whole life.
/// `Box::pin(step()).await` therefore still sizes the caller by `step`'s
/// future. Built here, the future lives only in its box, and the caller
/// keeps a pointer.
fn boxed<F: std::future::Future>(start: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::pin(start())
}

/// A connection whose CONNECT was accepted by its owner shard.
struct Established<'a> {
    stream: Transport,
    peer: SocketAddr,
    buffer: BytesMut,
    connect: Connect,
    client_id: Arc<str>,
    assigned: bool,
    reauthentication: Reauthentication<'a>,
}

/// Runs the handshakes and reads the CONNECT. Returns `None` when the
/// connection ended, was refused, or was handed over to another shard.
async fn establish<'a>(
    context: &'a ConnectionContext,
    accepted: Box<Accepted>,
    rejection: Option<ReasonCode>,
) -> Option<Established<'a>> {
    let handed_over = !accepted.buffered.is_empty();
    let Accepted {
        stream,
        peer,
        listener,
        buffered,
        assigned_client_id,
    } = *accepted;
    let Some(endpoint) = context.endpoints.get(listener) else {
        warn!(%peer, listener, "connection from an unknown listener index; closing");
        return None;
    };
    let mut stream = if handed_over {
        stream
    } else {
        match Box::pin(accept_transport(stream, endpoint, peer)).await {
            Some(stream) => stream,
            None => return None,
        }
    };
    let limits = context.shard.limits();

    // Read until one whole CONNECT is buffered.
    let mut buffer = BytesMut::from(&buffered[..]);
    let pre_connect = DecodeContext {
        protocol: Protocol::V5,
        max_packet_size: limits.max_packet_size,
        topic_alias_max: limits.topic_alias_maximum,
    };
    let mut scratch = vec![0u8; CONNECT_READ_CHUNK];
    let connect = loop {
        if buffer.first().is_some_and(|byte| byte >> 4 != 1) {
            debug!(%peer, "first packet is not CONNECT; closing");
            return None;
        }
        let mut probe = buffer.clone();
        match decode(&mut probe, &pre_connect) {
            Ok(Some(Packet::Connect(connect))) => break *connect,
            Ok(Some(_)) => return None,
            Ok(None) => {}
            Err(error) => {
                Box::pin(reject_connect(&mut stream, &buffer, peer, &error)).await;
                return None;
            }
        }
        let read = glommio::timer::timeout(CONNECT_TIMEOUT, async {
            Ok(stream.read(&mut scratch).await)
        });
        match read.await {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => buffer.extend_from_slice(&scratch[..n]),
            Ok(Err(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                info!(%peer, protocol = %endpoint.protocol, %error, "invalid data before CONNECT; closing");
                return None;
            }
            Ok(Err(error)) => {
                debug!(%peer, %error, "connection closed before CONNECT");
                return None;
            }
            Err(_) => {
                debug!(%peer, "no CONNECT within the connect timeout; closing");
                return None;
            }
        }
    };

    let mut connect = connect;
    let protocol = connect.protocol;
    if let Some(reason) = rejection {
        send_connack(&mut stream, protocol, reason).await;
        return None;
    }

    // Pick the client identifier and the shard that owns its session.
    let (client_id, assigned) = if connect.client_id.is_empty() {
        if protocol == Protocol::V311 && !connect.clean_start {
            // 3.1.1 allows an empty identifier only with a clean session.
            send_connack(
                &mut stream,
                protocol,
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            )
            .await;
            return None;
        }
        let id = assigned_client_id.unwrap_or_else(|| assign_client_id(&context.shard));
        (id, true)
    } else {
        (connect.client_id.clone(), false)
    };
    let owner = owner_shard(&client_id, context.shard.shards());
    if owner != context.shard.id() {
        Box::pin(hand_over(
            context,
            stream,
            peer,
            listener,
            buffer,
            assigned.then_some(client_id),
            owner,
        ))
        .await;
        return None;
    }

    let consumed = buffer.len() - {
        let mut probe = buffer.clone();
        let _ = decode(&mut probe, &pre_connect);
        probe.len()
    };
    let _ = buffer.split_to(consumed);
    if endpoint.use_cn_as_username {
        match stream.peer_common_name() {
            Some(common_name) => {
                info!(client_id = %client_id, %peer, username = %common_name, "user name taken from the client certificate");
                // TODO: mark the user name as verified by the certificate, so
                // password authentication does not ask for a password too.
                connect.username = Some(common_name);
            }
            None => {
                warn!(client_id = %client_id, %peer, "client certificate has no Common Name to use as user name; rejecting");
                send_connack(&mut stream, protocol, ReasonCode::NOT_AUTHORIZED).await;
                return None;
            }
        }
    }

    let authenticator = context.config.security.authenticator(listener);
    let login = match Box::pin(login::authenticate_connect(
        authenticator,
        &mut stream,
        &mut buffer,
        &mut connect,
        peer,
        limits.max_packet_size,
    ))
    .await
    {
        Ok(login) => login,
        Err(()) => return None,
    };
    let reauthentication = Reauthentication::new(authenticator, login);
    Some(Established {
        stream,
        peer,
        buffer,
        connect,
        client_id: client_id.into(),
        assigned,
        reauthentication,
    })
}

/// Runs the listener's TLS handshake and WebSocket upgrade on a new
/// connection. Returns `None`, after logging why, when they fail.
async fn accept_transport(
    stream: Transport,
    endpoint: &Endpoint,
    peer: SocketAddr,
) -> Option<Transport> {
    let Transport::Tcp(tcp) = stream else {
        // Only a handed-over connection has its handshakes done already.
        return Some(stream);
    };
    match Transport::accept(tcp, endpoint).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            // Bad clients and port scanners end here: info, not warn.
            info!(%peer, protocol = %endpoint.protocol, %error, "handshake failed; closing");
            None
        }
    }
}

/// Answers a CONNECT that cannot be decoded, then lets the socket close.
async fn reject_connect(
    stream: &mut Transport,
    buffer: &[u8],
    peer: SocketAddr,
    error: &DecodeError,
) {
    warn!(%peer, %error, "invalid CONNECT");
    let reason = error.reason_code();
    match (error, connect_level(buffer)) {
        (DecodeError::UnsupportedProtocol { level, .. }, _) => {
            // A client of another version reads a CONNACK in its own format:
            // 3.1.1's return code 1 or 5.0's reason code 0x84.
            let protocol = if *level >= 5 {
                Protocol::V5
            } else {
                Protocol::V311
            };
            send_connack(stream, protocol, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION).await;
        }
        (_, Some(5)) => send_connack(stream, Protocol::V5, reason).await,
        // 3.1.1 has no return code for a malformed CONNECT: just close.
        _ => {}
    }
}

/// Protocol level byte of a CONNECT, read without decoding the packet.
fn connect_level(buffer: &[u8]) -> Option<u8> {
    let mut index = 1;
    while *buffer.get(index)? & 0x80 != 0 {
        index += 1;
        if index > 4 {
            return None;
        }
    }
    let name_len = usize::from(u16::from_be_bytes([
        *buffer.get(index + 1)?,
        *buffer.get(index + 2)?,
    ]));
    buffer.get(index + 3 + name_len).copied()
}

/// Writes a CONNACK without properties and flushes it.
pub(crate) async fn send_connack(stream: &mut Transport, protocol: Protocol, reason: ReasonCode) {
    let mut out = BytesMut::new();
    encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::default(),
        }),
        protocol,
        &mut out,
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

/// Makes a client identifier whose session this shard owns, so the
/// connection needs no handoff.
fn assign_client_id(shard: &Shard) -> String {
    loop {
        let id = format!("coremq-{:016x}", rand::random::<u64>());
        if owner_shard(&id, shard.shards()) == shard.id() {
            return id;
        }
    }
}

/// Moves the connection to `owner`: the socket (as a duplicated
/// descriptor) and every byte read so far.
async fn hand_over(
    context: &ConnectionContext,
    stream: Transport,
    peer: SocketAddr,
    listener: usize,
    buffer: BytesMut,
    assigned_client_id: Option<String>,
    owner: usize,
) {
    let (fd, transport) = match stream.into_handoff() {
        Ok(parts) => parts,
        Err(error) => {
            warn!(%peer, %error, "cannot duplicate socket for handoff; closing");
            return;
        }
    };
    debug!(%peer, owner, "handing the connection to its owner shard");
    let handoff = Handoff {
        fd,
        buffered: buffer.to_vec(),
        peer,
        listener,
        assigned_client_id,
        transport: Some(transport),
    };
    context
        .shard
        .send_to(owner, ShardMsg::Handoff(handoff))
        .await;
}

/// A connection between its CONNECT and its first packet after CONNACK.
struct Started<'a> {
    conn: Rc<Conn>,
    client_id: Arc<str>,
    reader: ReadHalf<Transport>,
    buffer: BytesMut,
    reauthentication: Reauthentication<'a>,
    writer_task: glommio::Task<()>,
}

/// Creates the shard's [`Conn`] of an established connection and starts its
/// writer. Returns the connection and the shard's handling of its CONNECT.
fn start_session<'a>(
    context: &'a ConnectionContext,
    established: Box<Established<'a>>,
) -> (
    Started<'a>,
    std::pin::Pin<Box<impl std::future::Future<Output = ConnectOutcome> + 'a>>,
) {
    let Established {
        stream,
        peer,
        buffer,
        connect,
        client_id,
        assigned,
        reauthentication,
    } = *established;
    let limits = context.shard.limits();
    let protocol = connect.protocol;
    let (max_packet_size, topic_alias_max) = if protocol == Protocol::V5 {
        (
            connect
                .properties
                .maximum_packet_size
                .unwrap_or(MAX_PACKET_SIZE),
            connect.properties.topic_alias_maximum.unwrap_or(0),
        )
    } else {
        (MAX_PACKET_SIZE, 0)
    };
    let conn_id = context.next_conn_id.get();
    context.next_conn_id.set(conn_id + 1);
    let conn = Rc::new(Conn::new(
        conn_id,
        protocol,
        peer,
        max_packet_size,
        topic_alias_max,
        limits.max_output_buffer,
        context.output_budget.clone(),
    ));

    let (reader, writer) = split(stream);
    let writer_task = glommio::spawn_local(write_loop(
        conn.clone(),
        writer,
        context.flush_clock.clone(),
        HeldBack {
            shard: context.shard.clone(),
            client_id: client_id.clone(),
        },
    ));
    let connecting = Box::pin(context.shard.connect(
        conn.clone(),
        connect,
        client_id.clone(),
        assigned,
    ));
    let started = Started {
        conn,
        client_id,
        reader,
        buffer,
        reauthentication,
        writer_task,
    };
    (started, connecting)
}

async fn run_session(context: &ConnectionContext, established: Box<Established<'_>>) {
    // The box is freed in `start_session`, before the first await point.
    let (mut started, connecting) = start_session(context, established);
    let conn = started.conn.clone();
    let outcome = connecting.await;
    if outcome.reason.is_error() {
        conn.request_close(CloseRequest { reason: None });
        started.writer_task.await;
        return;
    }

    let keep_alive = (outcome.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(outcome.keep_alive) * 1500));
    let ending = read_loop(
        context,
        &conn,
        &started.client_id,
        started.reader,
        started.buffer,
        keep_alive,
        &mut started.reauthentication,
    )
    .await;
    match ending {
        Ending::Server(reason) => conn.request_close(CloseRequest { reason }),
        Ending::Eof | Ending::ReadFailed => conn.request_close(CloseRequest { reason: None }),
    }
    let client_id = started.client_id;
    let disconnecting = boxed(|| context.shard.disconnected(&conn, &client_id, true));
    disconnecting.await;
    started.writer_task.await;
    info!(client_id = %client_id, peer = %conn.peer, ending = ?ending, "disconnected");
}

async fn read_loop(
    context: &ConnectionContext,
    conn: &Rc<Conn>,
    client_id: &Arc<str>,
    reader: ReadHalf<Transport>,
    buffer: BytesMut,
    keep_alive: Option<Duration>,
    reauthentication: &mut Reauthentication<'_>,
) -> Ending {
    let decode_context = {
        let limits = context.shard.limits();
        DecodeContext {
            protocol: conn.protocol,
            max_packet_size: limits.max_packet_size,
            topic_alias_max: limits.topic_alias_maximum,
        }
    };
    let last_read = Rc::new(Cell::new(Instant::now()));
    let reading = Rc::new(Reading {
        shard: context.shard.clone(),
        read_chunk: context.read_chunk.clone(),
        conn: conn.clone(),
        client_id: client_id.clone(),
        keep_alive,
        last_read: last_read.clone(),
        waiting: Cell::new(false),
        handed: Cell::new(false),
        read_empty: Cell::new(false),
        inbox: RefCell::new(Inbox {
            buffer,
            decoder: Decoder {
                context: decode_context,
                aliases: HashMap::new(),
                publishes: Vec::new(),
                last_read,
            },
            pending: None,
            ending: None,
        }),
    });
    if let Some(limit) = keep_alive {
        watch_keep_alive(&reading, limit);
    }
    let _hook = HookGuard::install(&reader, &reading);
    // Whether the last read found its data ready, without waiting.
    let mut read_at_once = false;
    loop {
        // What the readiness task started goes first, then the end it
        // found, if any.
        if let Some(ending) = reading.finish_pending().await {
            return ending;
        }

        // Each step's future is built and boxed by the decoder, so that no
        // decoded packet is part of this long-lived future.
        loop {
            let decoded = {
                let mut inbox = reading.inbox.borrow_mut();
                let Inbox {
                    buffer, decoder, ..
                } = &mut *inbox;
                decoder.next(context, conn, client_id, buffer, reauthentication)
            };
            let handling = match decoded {
                Decoded::NeedMore => break,
                Decoded::Handle(handling) => handling,
                Decoded::End(None, ending) => return ending,
                Decoded::End(Some(handling), ending) => {
                    if let Err(close) = handling.await {
                        return Ending::Server(close.reason);
                    }
                    return ending;
                }
            };
            if let Err(close) = handling.await {
                return Ending::Server(close.reason);
            }
        }

        // Let this shard's writers run before reading more. A read that
        // finds data ready completes without suspending, so without this
        // yield a client that floods the broker keeps this task running.
        // Its subscribers' output is then never written, and QoS 0
        // messages to them are dropped as congested. After the yield, each
        // writer sends what this read produced in one write. A read that
        // waited for data let the writers run already, and a yield would
        // only cost one more poll of this task per message.
        if read_at_once {
            future::yield_now().await;
        }

        reading.inbox.borrow_mut().trim_buffer();
        let read = async {
            ReadEvent::Data(
                ReadAppend {
                    reader: &reader,
                    reading: &reading,
                    waited: false,
                }
                .await,
            )
        };
        let closed = async { ReadEvent::CloseRequested(conn.closed().await) };
        reading.waiting.set(true);
        let event = future::or(read, closed).await;
        reading.waiting.set(false);
        match event {
            ReadEvent::Data(Read::Handed) => read_at_once = false,
            ReadEvent::Data(Read::Bytes(Ok(0), _)) => return Ending::Eof,
            ReadEvent::Data(Read::Bytes(Ok(_), waited)) => read_at_once = !waited,
            ReadEvent::Data(Read::Bytes(Err(error), _)) => {
                if error.kind() == std::io::ErrorKind::InvalidData {
                    info!(client_id = %client_id, peer = %conn.peer, %error, "invalid transport data; closing");
                } else {
                    debug!(client_id = %client_id, peer = %conn.peer, %error, "read failed");
                }
                return Ending::ReadFailed;
            }
            ReadEvent::CloseRequested(request) => {
                // A step the readiness task started may have recorded a
                // QoS 2 message and not routed it yet, so finish it.
                let _ = reading.finish_pending().await;
                return Ending::Server(request.reason);
            }
        }
    }
}

/// A boxed step of the shard's handling of what a client sent.
type Handling<'a> = Pin<Box<dyn Future<Output = Result<(), CloseRequest>> + 'a>>;

/// The reader's next step, after decoding what it has read.
enum Decoded<'a> {
    /// Everything read so far is handled: read more.
    NeedMore,
    /// Run this step, then decode on.
    Handle(Handling<'a>),
    /// Run this step, if any, then end the connection.
    End(Option<Handling<'a>>, Ending),
}

/// Result of one [`Decoder::step`]. It lives only until its caller builds
/// the step's future, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Everything read so far is decoded: read more.
    NeedMore,
    /// PUBLISH packets to hand to the shard as one batch.
    Publishes(Vec<Publish>),
    /// A packet of another type, for the shard.
    Other(Packet),
    /// The next packet is not a PUBLISH, and the caller decodes only those.
    NotPublish,
    /// End the connection with this reason, after the PUBLISH packets.
    End(Vec<Publish>, Option<ReasonCode>),
}

/// A connection's reading state, shared by its reader task and, over plain
/// TCP, the shard's readiness task. While the reader waits for the socket,
/// the readiness task reads it and hands PUBLISH packets to the shard
/// itself (see [`ReadHook`]). That saves a task wake-up and poll per read
/// when many clients each send a little. The reader wakes for the rest:
/// other packet types, a step that must wait, the end of the stream.
struct Reading {
    shard: Shard,
    read_chunk: Rc<RefCell<Vec<u8>>>,
    conn: Rc<Conn>,
    client_id: Arc<str>,
    /// 1.5 times the client's Keep Alive, when it set one.
    keep_alive: Option<Duration>,
    /// When the last whole packet arrived.
    last_read: Rc<Cell<Instant>>,
    /// The reader waits for the socket and does nothing else, so the
    /// readiness task may read and decode for it.
    waiting: Cell<bool>,
    /// The readiness task read for the reader and woke it.
    handed: Cell<bool>,
    /// The readiness task's last read emptied the socket.
    read_empty: Cell<bool>,
    inbox: RefCell<Inbox>,
}

/// Data a connection read and has not handled yet.
struct Inbox {
    /// Bytes read and not yet decoded.
    buffer: BytesMut,
    decoder: Decoder,
    /// A step the readiness task started that must wait: the reader
    /// finishes it before it decodes anything more.
    pending: Option<Handling<'static>>,
    /// End of the connection, when the readiness task found it.
    ending: Option<Ending>,
}

impl Inbox {
    /// Frees an empty buffer, so that an idle connection keeps no read
    /// memory and a busy one pays one allocation per read. Moves a small
    /// part of a packet to a buffer of its size, so that a publisher's
    /// buffer does not keep the capacity of its largest read.
    fn trim_buffer(&mut self) {
        if self.buffer.is_empty() {
            self.buffer = BytesMut::new();
        } else if self.buffer.capacity() > 2 * self.buffer.len() + MIN_SPARE_READ_CAPACITY {
            self.buffer = BytesMut::from(&self.buffer[..]);
        }
    }
}

impl Reading {
    /// Waits for the step the readiness task left, if any, and returns the
    /// end it found or the step's failure.
    async fn finish_pending(&self) -> Option<Ending> {
        let pending = self.inbox.borrow_mut().pending.take();
        if let Some(handling) = pending {
            if let Err(close) = handling.await {
                return Some(Ending::Server(close.reason));
            }
        }
        self.inbox.borrow_mut().ending.take()
    }

    /// Reads once from the socket `fd` into the inbox and returns whether
    /// the socket was read empty. At the end of the stream, or when the
    /// read fails, records the connection's ending.
    fn read_into(&self, fd: RawFd, inbox: &mut Inbox) -> bool {
        let mut chunk = self.read_chunk.borrow_mut();
        match readiness::recv(fd, &mut chunk) {
            Ok(0) => {
                inbox.ending = Some(Ending::Eof);
                true
            }
            Ok(read) => {
                inbox.buffer.extend_from_slice(&chunk[..read]);
                read < chunk.len()
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(error) => {
                debug!(client_id = %self.client_id, peer = %self.conn.peer, %error, "read failed");
                inbox.ending = Some(Ending::ReadFailed);
                true
            }
        }
    }

    /// Runs `handling` as far as it goes without waiting. Returns true
    /// when it failed, or must wait and is kept for the reader.
    fn start(&self, inbox: &mut Inbox, mut handling: Handling<'static>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match handling.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(())) => false,
            Poll::Ready(Err(close)) => {
                inbox.ending = Some(Ending::Server(close.reason));
                true
            }
            Poll::Pending => {
                inbox.pending = Some(handling);
                true
            }
        }
    }

    fn publishes(self: &Rc<Self>, batch: Vec<Publish>) -> Handling<'static> {
        let reading = self.clone();
        Box::pin(async move {
            reading
                .shard
                .handle_publishes(&reading.conn, &reading.client_id, batch)
                .await
        })
    }
}

impl ReadHook for Reading {
    fn read(&self, fd: RawFd) -> bool {
        // Once the reader has work, it must see everything in order: a
        // DISCONNECT left to it comes before the end of the stream after
        // it, which would otherwise publish the Will.
        if !self.waiting.get() || self.handed.get() {
            return false;
        }
        let mut inbox = self.inbox.borrow_mut();
        let read_empty = self.read_into(fd, &mut inbox);
        self.read_empty.set(read_empty);
        true
    }

    fn handle(self: Rc<Self>) -> bool {
        let mut inbox = self.inbox.borrow_mut();
        let wake_reader = inbox.ending.is_some() || self.decode_publishes(&mut inbox);
        if wake_reader || !self.read_empty.get() {
            self.handed.set(true);
            return true;
        }
        false
    }
}

impl Reading {
    /// Decodes PUBLISH packets and hands them to the shard, until the
    /// buffer has no whole packet left or the next is of another type.
    /// Returns true when the reader must run.
    fn decode_publishes(self: &Rc<Self>, inbox: &mut Inbox) -> bool {
        loop {
            let Inbox {
                buffer, decoder, ..
            } = &mut *inbox;
            match decoder.step(buffer, &self.conn, &self.client_id, None) {
                Step::NeedMore => return false,
                Step::NotPublish => return true,
                Step::Publishes(batch) => {
                    // The decoder read the clock when the batch arrived.
                    let received = self.last_read.get();
                    let publish_now =
                        self.shard
                            .publish_now(&self.conn, &self.client_id, batch, received);
                    let handling = match publish_now {
                        PublishNow::Done(Ok(())) => continue,
                        PublishNow::Done(Err(close)) => {
                            inbox.ending = Some(Ending::Server(close.reason));
                            return true;
                        }
                        PublishNow::Rest(rest) => rest,
                        PublishNow::Later(batch) => self.publishes(batch),
                    };
                    if self.start(inbox, handling) {
                        return true;
                    }
                }
                Step::Other(packet) => {
                    // Not reached: without AUTH handling, the decoder stops
                    // before any packet that is not a PUBLISH.
                    let reading = self.clone();
                    let handling: Handling<'static> = Box::pin(async move {
                        reading
                            .shard
                            .handle_packet(&reading.conn, &reading.client_id, packet)
                            .await
                    });
                    self.start(inbox, handling);
                    return true;
                }
                Step::End(batch, reason) => {
                    if !batch.is_empty() {
                        let handling = self.publishes(batch);
                        self.start(inbox, handling);
                    }
                    // A failed step has set its own ending.
                    inbox.ending.get_or_insert(Ending::Server(reason));
                    return true;
                }
            }
        }
    }
}

/// Gives the socket's readiness set the connection's [`Reading`] as its
/// hook, and takes it back on drop.
struct HookGuard<'a> {
    reader: &'a ReadHalf<Transport>,
    reading: Rc<Reading>,
}

impl<'a> HookGuard<'a> {
    fn install(reader: &'a ReadHalf<Transport>, reading: &Rc<Reading>) -> HookGuard<'a> {
        reader.with_stream(|stream| {
            if let Some(registration) = stream.readiness() {
                registration.set_hook(Some(reading.clone() as Rc<dyn ReadHook>));
            }
        });
        HookGuard {
            reader,
            reading: reading.clone(),
        }
    }
}

impl Drop for HookGuard<'_> {
    fn drop(&mut self) {
        self.reading.waiting.set(false);
        self.reader.with_stream(|stream| {
            if let Some(registration) = stream.readiness() {
                registration.set_hook(None);
            }
        });
        // A step left for the reader keeps a reference to the `Reading`.
        self.reading.inbox.borrow_mut().pending = None;
    }
}

/// The reader's decoding state: what it needs between reads.
struct Decoder {
    context: DecodeContext,
    /// Topic aliases the client set up, by alias.
    aliases: HashMap<u16, String>,
    /// PUBLISH packets read back to back, handled together so that their
    /// log appends share one group commit.
    publishes: Vec<Publish>,
    /// When the last whole packet arrived, for keep alive.
    last_read: Rc<Cell<Instant>>,
}

impl Decoder {
    /// Decodes packets from `buffer` until one needs the shard, and returns
    /// that step. The futures are built here, not in the reader's loop,
    /// because a future keeps room for every value live across an await
    /// point: a decoded packet there would size every connection's task.
    fn next<'a>(
        &mut self,
        context: &'a ConnectionContext,
        conn: &'a Rc<Conn>,
        client_id: &'a Arc<str>,
        buffer: &mut BytesMut,
        reauthentication: &mut Reauthentication<'_>,
    ) -> Decoded<'a> {
        let publishes = |batch| -> Handling<'a> {
            Box::pin(context.shard.handle_publishes(conn, client_id, batch))
        };
        match self.step(buffer, conn, client_id, Some(reauthentication)) {
            Step::NeedMore | Step::NotPublish => Decoded::NeedMore,
            Step::Publishes(batch) => Decoded::Handle(publishes(batch)),
            Step::Other(packet) => Decoded::Handle(Box::pin(
                context.shard.handle_packet(conn, client_id, packet),
            )),
            Step::End(batch, reason) => Decoded::End(
                (!batch.is_empty()).then(|| publishes(batch)),
                Ending::Server(reason),
            ),
        }
    }

    /// Decodes packets from `buffer` until one needs the shard. Without
    /// `reauthentication`, it stops before any packet that is not a
    /// PUBLISH and leaves it in `buffer`.
    fn step(
        &mut self,
        buffer: &mut BytesMut,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        reauthentication: Option<&mut Reauthentication<'_>>,
    ) -> Step {
        let mut whole_packet = false;
        let step = self.decode_step(buffer, conn, client_id, reauthentication, &mut whole_packet);
        // Keep alive counts whole packets, so a client that trickles bytes
        // without finishing one is still cut off. One clock reading serves
        // every packet of the step.
        if whole_packet {
            self.last_read.set(Instant::now());
        }
        step
    }

    fn decode_step(
        &mut self,
        buffer: &mut BytesMut,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        mut reauthentication: Option<&mut Reauthentication<'_>>,
        whole_packet: &mut bool,
    ) -> Step {
        loop {
            // Collected PUBLISH packets go first when the batch is full or
            // the next packet is of another type, so packets are handled
            // in the order they came.
            let other_type = buffer.first().is_some_and(|byte| byte >> 4 != PUBLISH_TYPE);
            let batch_ends = self.publishes.len() >= MAX_PUBLISH_BATCH || other_type;
            if batch_ends && !self.publishes.is_empty() {
                return Step::Publishes(std::mem::take(&mut self.publishes));
            }
            if other_type && reauthentication.is_none() {
                return Step::NotPublish;
            }
            let packet = match decode(buffer, &self.context) {
                Ok(Some(packet)) => packet,
                Ok(None) if self.publishes.is_empty() => return Step::NeedMore,
                Ok(None) => return Step::Publishes(std::mem::take(&mut self.publishes)),
                Err(error) => {
                    // A protocol violation ends the connection, but only
                    // after the PUBLISH packets collected before it are
                    // handled.
                    warn!(client_id = %client_id, peer = %conn.peer, %error, "protocol violation; closing");
                    return self.end(Some(error.reason_code()));
                }
            };
            *whole_packet = true;
            match packet {
                Packet::Publish(publish) => match resolve_alias(&mut self.aliases, publish) {
                    Ok(publish) => {
                        conn.note_publish_received();
                        self.publishes.push(publish);
                    }
                    Err(reason) => {
                        warn!(client_id = %client_id, peer = %conn.peer, "PUBLISH with an empty topic and no known topic alias; closing");
                        return self.end(Some(reason));
                    }
                },
                Packet::Auth(auth) => {
                    let reauthentication = reauthentication
                        .as_deref_mut()
                        .expect("only a PUBLISH is decoded without reauthentication");
                    if let Err(reason) = reauthentication.handle(conn, client_id, auth) {
                        return self.end(Some(reason));
                    }
                }
                packet => return Step::Other(packet),
            }
        }
    }

    /// Ends the connection with `reason`, after the collected PUBLISH
    /// packets.
    fn end(&mut self, reason: Option<ReasonCode>) -> Step {
        Step::End(std::mem::take(&mut self.publishes), reason)
    }
}

/// Reads once from `reader` into the shard's shared read chunk and appends
/// what arrived to the inbox's buffer. The chunk and the inbox are
/// borrowed only within a poll, so all the shard's readers can use the
/// chunk, and the readiness task can read for this reader while it waits.
/// Also returns whether the read had to wait for data.
struct ReadAppend<'a, R> {
    reader: &'a ReadHalf<R>,
    reading: &'a Reading,
    waited: bool,
}

/// Outcome of one read by the reader.
enum Read {
    /// The read's result, and whether it had to wait for data.
    Bytes(std::io::Result<usize>, bool),
    /// The readiness task read for the reader and left work to it.
    Handed,
}

impl<R: futures_lite::AsyncRead + Unpin> std::future::Future for ReadAppend<'_, R> {
    type Output = Read;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        if this.reading.handed.replace(false) {
            return Poll::Ready(Read::Handed);
        }
        let mut chunk = this.reading.read_chunk.borrow_mut();
        let result = this.reader.poll_read_shared(cx, &mut chunk);
        match result {
            std::task::Poll::Ready(result) => {
                if let Ok(n) = result {
                    let mut inbox = this.reading.inbox.borrow_mut();
                    inbox.buffer.extend_from_slice(&chunk[..n]);
                }
                std::task::Poll::Ready(Read::Bytes(result, this.waited))
            }
            std::task::Poll::Pending => {
                this.waited = true;
                std::task::Poll::Pending
            }
        }
    }
}

/// What ended one wait of the reader.
enum ReadEvent {
    Data(Read),
    CloseRequested(CloseRequest),
}

/// The connections of this thread's shard that have a Keep Alive. One task
/// checks them all, so an idle connection costs an entry here rather than
/// a timer task of its own (about 430 bytes with 15,000 idle connections).
#[derive(Default)]
struct KeepAliveWatch {
    readings: Vec<Weak<Reading>>,
    /// The shortest limit among `readings`, which sets how often they are
    /// checked.
    shortest: Option<Duration>,
    running: bool,
}

thread_local! {
    static KEEP_ALIVE_WATCH: RefCell<KeepAliveWatch> = RefCell::default();
}

/// The maximum and minimum wait between two checks of the Keep Alive
/// watch. A connection is closed at most one wait after its limit: a
/// quarter of the shortest limit, within these bounds.
const KEEP_ALIVE_CHECK_MAX: Duration = Duration::from_secs(1);
const KEEP_ALIVE_CHECK_MIN: Duration = Duration::from_millis(100);

/// Adds `reading` to its shard's Keep Alive watch, which closes the
/// connection with 0x8D (Keep Alive timeout) once no whole packet has
/// arrived for `limit`.
fn watch_keep_alive(reading: &Rc<Reading>, limit: Duration) {
    let start = KEEP_ALIVE_WATCH.with(|watch| {
        let mut watch = watch.borrow_mut();
        watch.readings.push(Rc::downgrade(reading));
        watch.shortest = Some(watch.shortest.map_or(limit, |shortest| shortest.min(limit)));
        !std::mem::replace(&mut watch.running, true)
    });
    if start {
        // The watch logs within the span of the shard that started it.
        glommio::spawn_local(check_keep_alives().instrument(tracing::Span::current())).detach();
    }
}

/// Closes the watched connections whose Keep Alive ran out, until none is
/// left to watch.
async fn check_keep_alives() {
    loop {
        let wait = KEEP_ALIVE_WATCH.with(|watch| {
            let shortest = watch.borrow().shortest.unwrap_or(KEEP_ALIVE_CHECK_MAX);
            (shortest / 4).clamp(KEEP_ALIVE_CHECK_MIN, KEEP_ALIVE_CHECK_MAX)
        });
        glommio::timer::sleep(wait).await;
        let now = Instant::now();
        let done = KEEP_ALIVE_WATCH.with(|watch| {
            let mut watch = watch.borrow_mut();
            let mut shortest = None;
            watch.readings.retain(|weak| {
                let Some(reading) = weak.upgrade() else {
                    return false;
                };
                let Some(limit) = reading.keep_alive else {
                    return false;
                };
                if now >= reading.last_read.get() + limit {
                    info!(
                        client_id = %reading.client_id,
                        peer = %reading.conn.peer,
                        limit_ms = limit.as_millis() as u64,
                        "keep alive timed out"
                    );
                    reading.conn.request_close(CloseRequest {
                        reason: Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
                    });
                    return false;
                }
                shortest = Some(shortest.map_or(limit, |s: Duration| s.min(limit)));
                true
            });
            watch.shortest = shortest;
            watch.running = !watch.readings.is_empty();
            !watch.running
        });
        if done {
            return;
        }
    }
}

/// Replaces a PUBLISH's Topic Alias by its topic, recording new mappings.
fn resolve_alias(
    aliases: &mut HashMap<u16, String>,
    mut publish: Publish,
) -> Result<Publish, ReasonCode> {
    let Some(alias) = publish.properties.topic_alias else {
        return Ok(publish);
    };
    if publish.topic.is_empty() {
        match aliases.get(&alias) {
            Some(topic) => publish.topic = topic.clone(),
            None => return Err(ReasonCode::PROTOCOL_ERROR),
        }
    } else {
        aliases.insert(alias, publish.topic.clone());
    }
    Ok(publish)
}

/// The shard and session that the writer hands held-back messages to once
/// the output drains (see [`Conn::take_held_back`]).
struct HeldBack {
    shard: Shard,
    client_id: Arc<str>,
}

/// Flushes the connection's output whenever there is some, then sends the
/// final DISCONNECT (if any) and shuts the socket down once a close is
/// requested. After a close request, the writer gives up on output that
/// the peer does not read within [`CLOSE_FLUSH_TIMEOUT`].
///
/// Deliveries to a busy socket are batched: when the last write was less
/// than the clock's period ago, the writer waits for the shard's next
/// flush tick, so that what arrives meanwhile leaves in the same write. Most of the
/// cost of a small write on Linux is waking the reader on the other end,
/// so one write of two messages costs little more than one of a single
/// message. A socket written to less often than once per period is never
/// held, and neither are replies nor the deliveries to a client that
/// published since the last write (see [`Conn::is_urgent`]).
///
/// After a write, messages that the session held back while the output
/// was full go to the shard to be sent (see [`Conn::take_held_back`]).
async fn write_loop(
    conn: Rc<Conn>,
    mut writer: WriteHalf<Transport>,
    clock: Rc<FlushClock>,
    held_back: HeldBack,
) {
    let linger = clock.period();
    let mut last_write: Option<Instant> = None;
    let _direct = DirectWriteGuard::install(&conn, &writer);
    loop {
        conn.ready().await;
        if let Some(last) = last_write.filter(|_| !linger.is_zero()) {
            if last.elapsed() < linger && !conn.is_urgent() && conn.output_len() < LINGER_MAX_BYTES
            {
                future::or(clock.next_tick(), conn.urgent()).await;
            }
        }
        let output = conn.take_output();
        if !output.is_empty() {
            let written = future::or(
                write_tracking_progress(&conn, &mut writer, &output),
                give_up_after_close(&conn),
            )
            .await;
            conn.note_write_idle();
            if written.is_err() {
                conn.request_close(CloseRequest { reason: None });
                break;
            }
            last_write = Some(Instant::now());
            if conn.take_held_back() {
                held_back.shard.pump_held_back(&conn, &held_back.client_id);
            }
        }
        if conn.close_requested().is_some() && conn.output_is_empty() {
            break;
        }
    }
    let closed = glommio::timer::timeout(CLOSE_FLUSH_TIMEOUT, async { Ok(writer.close().await) });
    let _ = closed.await;
}

/// Keeps a plain TCP socket installed on its connection for direct writes
/// (see [`Conn::write_through`]) while the writer runs. The writer owns a
/// half of the socket, so the descriptor stays open until the guard drops.
struct DirectWriteGuard<'a> {
    conn: &'a Conn,
}

impl<'a> DirectWriteGuard<'a> {
    fn install(conn: &'a Conn, writer: &WriteHalf<Transport>) -> DirectWriteGuard<'a> {
        // TLS and WebSocket bytes need the writer's encoding, so only plain
        // TCP gets direct writes.
        let fd = writer.with_stream(|stream| match stream {
            Transport::Tcp(tcp) => Some(std::os::fd::AsRawFd::as_raw_fd(tcp)),
            _ => None,
        });
        conn.set_direct_write(fd);
        DirectWriteGuard { conn }
    }
}

impl Drop for DirectWriteGuard<'_> {
    fn drop(&mut self) {
        self.conn.set_direct_write(None);
    }
}

/// Writes `output`, recording each partial write on `conn` so the engine can
/// tell a slow consumer (a socket that does not drain) from a busy one.
async fn write_tracking_progress(
    conn: &Conn,
    writer: &mut WriteHalf<Transport>,
    mut output: &[u8],
) -> std::io::Result<()> {
    conn.note_write_progress(Instant::now());
    while !output.is_empty() {
        let written = writer.write(output).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        output = &output[written..];
        conn.note_write_progress(Instant::now());
    }
    // TLS and WebSocket streams may keep encoded bytes when the socket is
    // full; only a flush waits until the socket took them.
    writer.flush().await?;
    conn.note_write_progress(Instant::now());
    Ok(())
}

/// Fails [`CLOSE_FLUSH_TIMEOUT`] after a close is requested.
async fn give_up_after_close(conn: &Rc<Conn>) -> std::io::Result<()> {
    conn.closed().await;
    glommio::timer::sleep(CLOSE_FLUSH_TIMEOUT).await;
    Err(std::io::ErrorKind::TimedOut.into())
}

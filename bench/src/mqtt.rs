//! A minimal MQTT client for load generation: one socket, one read buffer and
//! one write buffer, driven by the task that owns it.
//!
//! Reads append to `rx` and every whole packet in it is decoded before the
//! next read. Outbound packets are encoded into `tx` and written with one
//! `write_all` per [`Client::flush`], so a batch of publishes or acks costs one
//! system call. Over WebSocket, each flush is one binary frame.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq_codec::{
    decode, encode, ConnAck, Connect, DecodeContext, Packet, PacketId, Properties, Protocol,
    PubResponse, Publish, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
    MAX_PACKET_SIZE,
};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::error::BenchError;
use crate::net::start_connect;
use crate::payload::{now_ns, write_header, Header, HEADER_LEN};
use crate::websocket::{self, FrameReader};

/// Receive Maximum the bench announces, the largest the protocol allows, so
/// the broker is never throttled by the bench's QoS 1/2 window.
const CLIENT_RECEIVE_MAXIMUM: u16 = u16::MAX;

/// Time allowed for sending DISCONNECT and closing the socket. A publisher's
/// DISCONNECT waits behind every message still in its socket buffer.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Time a client whose write failed spends looking for the DISCONNECT
/// that the broker sent before it closed the connection.
const CLOSE_REASON_WAIT: Duration = Duration::from_millis(500);

/// Time allowed for CONNACK, SUBACK and UNSUBACK.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Parameters of a new connection.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub target: SocketAddr,
    pub source: Option<IpAddr>,
    pub protocol: Protocol,
    /// Keep Alive sent in CONNECT, in seconds; 0 for none.
    pub keep_alive: u16,
    pub client_id: String,
    /// Bytes offered to each socket read; also the first capacity of the
    /// read buffer.
    pub read_chunk: usize,
    /// Request path of a WebSocket connection, such as `/mqtt`, or `None`
    /// for plain TCP.
    pub websocket_path: Option<Arc<str>>,
}

/// WebSocket state of a connection.
struct WebSocketState {
    reader: FrameReader,
    /// The frame being written: header and masked copy of `Client::tx`.
    framed: BytesMut,
    /// Pong frames owed to the broker, sent with the next flush.
    pending_pongs: Vec<Vec<u8>>,
    /// xorshift64 state for the frame masks.
    mask_state: u64,
}

impl WebSocketState {
    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_ne_bytes()
    }
}

/// One connection to the broker.
pub struct Client {
    stream: TcpStream,
    protocol: Protocol,
    ctx: DecodeContext,
    rx: BytesMut,
    scratch: Box<[u8]>,
    /// Outbound bytes not yet written; [`Client::flush`] writes them.
    pub tx: BytesMut,
    /// Keep Alive in effect, in seconds: the broker's Server Keep Alive
    /// from CONNACK when it set one, or else the client's own, if any.
    pub keep_alive: Option<u16>,
    /// The broker's Receive Maximum: QoS 1/2 publishes it accepts in flight.
    pub receive_maximum: u16,
    next_packet_id: PacketId,
    websocket: Option<WebSocketState>,
}

impl Client {
    /// Connects, sends CONNECT with a clean start and keep alive off, and waits
    /// for a successful CONNACK.
    ///
    /// # Errors
    ///
    /// Fails when the socket cannot connect, the broker rejects the CONNECT or
    /// sends no CONNACK within [`HANDSHAKE_TIMEOUT`].
    pub async fn connect(options: &ConnectOptions) -> Result<Client, BenchError> {
        let stream = start_connect(options.target, options.source)?;
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(std::io::Error::from)?;
        // The first write waits for the TCP handshake, which the kernel
        // would otherwise retry for about two minutes.
        stream
            .set_write_timeout(Some(HANDSHAKE_TIMEOUT))
            .map_err(std::io::Error::from)?;
        let mut client = Client {
            stream,
            protocol: options.protocol,
            ctx: DecodeContext {
                protocol: options.protocol,
                max_packet_size: MAX_PACKET_SIZE,
                topic_alias_max: 0,
            },
            rx: BytesMut::with_capacity(options.read_chunk),
            scratch: vec![0; options.read_chunk].into_boxed_slice(),
            tx: BytesMut::with_capacity(256),
            keep_alive: None,
            receive_maximum: u16::MAX,
            next_packet_id: 1,
            websocket: None,
        };
        if let Some(path) = &options.websocket_path {
            client.upgrade_to_websocket(options.target, path).await?;
        }

        let mut properties = Properties::default();
        if options.protocol == Protocol::V5 {
            properties.receive_maximum = Some(CLIENT_RECEIVE_MAXIMUM);
        }
        client.queue(&Packet::Connect(Box::new(Connect {
            protocol: options.protocol,
            clean_start: true,
            keep_alive: options.keep_alive,
            client_id: options.client_id.clone(),
            will: None,
            username: None,
            password: None,
            properties,
        })));
        client.flush().await?;

        let connack = client.expect_connack().await?;
        // Past the handshake, a write waits as long as the broker makes it.
        client
            .stream
            .set_write_timeout(None)
            .map_err(std::io::Error::from)?;
        client.keep_alive = connack
            .properties
            .server_keep_alive
            .or(Some(options.keep_alive))
            .filter(|&secs| secs > 0);
        client.receive_maximum = connack.properties.receive_maximum.unwrap_or(u16::MAX);
        Ok(client)
    }

    /// Sends the WebSocket opening handshake and waits for the response.
    /// Bytes after the response are kept as the first frame bytes.
    async fn upgrade_to_websocket(
        &mut self,
        target: SocketAddr,
        path: &str,
    ) -> Result<(), BenchError> {
        let seed = (now_ns() ^ (u64::from(target.port()) << 48)) | 1;
        let request = websocket::handshake_request(&target.to_string(), path, seed);
        self.stream.write_all(request.as_bytes()).await?;
        let mut response = BytesMut::new();
        loop {
            match self.stream.read(&mut self.scratch).await {
                Ok(0) => return Err(BenchError::Closed),
                Ok(read) => response.extend_from_slice(&self.scratch[..read]),
                Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(BenchError::TimedOut("the WebSocket handshake response"))
                }
                Err(err) => return Err(err.into()),
            }
            if websocket::take_handshake_response(&mut response)? {
                break;
            }
        }
        let mut state = WebSocketState {
            reader: FrameReader::default(),
            framed: BytesMut::with_capacity(256),
            pending_pongs: Vec::new(),
            mask_state: seed,
        };
        let outcome = state.reader.feed(&response, &mut self.rx)?;
        state.pending_pongs.extend(outcome.pings);
        self.websocket = Some(state);
        if outcome.closed {
            return Err(BenchError::Closed);
        }
        Ok(())
    }

    async fn expect_connack(&mut self) -> Result<ConnAck, BenchError> {
        loop {
            match self.next_packet()? {
                Some(Packet::ConnAck(connack)) if connack.reason.is_error() => {
                    return Err(BenchError::ConnectRejected(connack.reason))
                }
                Some(Packet::ConnAck(connack)) => return Ok(connack),
                Some(other) => return Err(BenchError::UnexpectedPacket(other.name())),
                None => {
                    if !self.read_more().await? {
                        return Err(BenchError::TimedOut("CONNACK"));
                    }
                }
            }
        }
    }

    /// Sets how long one read may wait before [`Client::read_more`] returns
    /// `false`; `None` waits for ever.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), BenchError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(std::io::Error::from)?;
        Ok(())
    }

    /// Returns a packet id that is not 0, cycling through 1..=65535.
    pub fn allocate_packet_id(&mut self) -> PacketId {
        let id = self.next_packet_id;
        self.next_packet_id = if id == PacketId::MAX { 1 } else { id + 1 };
        id
    }

    /// Reads once from the socket into the read buffer.
    ///
    /// Returns `Ok(false)` when the read timeout expired with nothing read.
    ///
    /// # Errors
    ///
    /// Fails with [`BenchError::Closed`] at end of stream, or with the socket error.
    pub async fn read_more(&mut self) -> Result<bool, BenchError> {
        // Reading into `scratch` rather than the spare end of `rx` keeps this
        // future cancel-safe: a caller racing it against a timer may drop it
        // mid-read, and `rx` must then hold only bytes that were received.
        match self.stream.read(&mut self.scratch).await {
            Ok(0) => Err(BenchError::Closed),
            Ok(read) => match &mut self.websocket {
                None => {
                    self.rx.extend_from_slice(&self.scratch[..read]);
                    Ok(true)
                }
                Some(state) => {
                    let outcome = state.reader.feed(&self.scratch[..read], &mut self.rx)?;
                    state.pending_pongs.extend(outcome.pings);
                    if outcome.closed {
                        return Err(BenchError::Closed);
                    }
                    Ok(true)
                }
            },
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Decodes the next whole packet from the read buffer, or returns `None`
    /// when the buffer contains none.
    ///
    /// # Errors
    ///
    /// Fails when the bytes break the protocol, or with
    /// [`BenchError::Disconnected`] when the packet is a DISCONNECT.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, BenchError> {
        match decode(&mut self.rx, &self.ctx)? {
            Some(Packet::Disconnect(disconnect)) => {
                Err(BenchError::Disconnected(disconnect.reason))
            }
            other => Ok(other),
        }
    }

    /// Replaces `error`, a failed write or an end of stream, with the
    /// DISCONNECT that the broker sent before it closed the connection,
    /// which carries the broker's reason. A client that never reads, such
    /// as a QoS 0 publisher, otherwise reports only a broken pipe. Returns
    /// `error` unchanged for other errors, and when no DISCONNECT arrives
    /// within [`CLOSE_REASON_WAIT`]: MQTT 3.1.1 brokers send none.
    pub async fn explain_close(&mut self, error: BenchError) -> BenchError {
        if !matches!(error, BenchError::Io(_) | BenchError::Closed) {
            return error;
        }
        let deadline = Instant::now() + CLOSE_REASON_WAIT;
        loop {
            // Packets the client left unread, such as PINGRESPs, come
            // before the DISCONNECT.
            loop {
                match self.next_packet() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(disconnected @ BenchError::Disconnected(_)) => return disconnected,
                    Err(_) => return error,
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return error;
            }
            let read = future::or(async { Some(self.read_more().await) }, async {
                glommio::timer::sleep(remaining).await;
                None
            })
            .await;
            if !matches!(read, Some(Ok(_))) {
                return error;
            }
        }
    }

    /// Encodes `packet` at the end of the write buffer.
    pub fn queue(&mut self, packet: &Packet) {
        encode(packet, self.protocol, &mut self.tx);
    }

    /// Queues the acknowledgement of type `kind` (PUBACK, PUBREC, PUBREL or
    /// PUBCOMP) for `packet_id`.
    pub fn queue_response(&mut self, kind: fn(PubResponse) -> Packet, packet_id: PacketId) {
        let response = PubResponse {
            packet_id,
            reason: ReasonCode::SUCCESS,
            properties: Properties::default(),
        };
        self.queue(&kind(response));
    }

    /// Writes the whole write buffer to the socket and empties it.
    ///
    /// # Errors
    ///
    /// Fails with the socket error, including a refused connect.
    pub async fn flush(&mut self) -> Result<(), BenchError> {
        let Some(state) = &mut self.websocket else {
            if self.tx.is_empty() {
                return Ok(());
            }
            self.stream.write_all(&self.tx).await?;
            self.tx.clear();
            return Ok(());
        };
        if self.tx.is_empty() && state.pending_pongs.is_empty() {
            return Ok(());
        }
        state.framed.clear();
        for ping in std::mem::take(&mut state.pending_pongs) {
            let mask = state.next_mask();
            websocket::append_pong(&mut state.framed, &ping, mask);
        }
        if !self.tx.is_empty() {
            let mask = state.next_mask();
            websocket::append_frame(&mut state.framed, &self.tx, mask);
        }
        self.stream.write_all(&state.framed).await?;
        self.tx.clear();
        Ok(())
    }

    /// Subscribes to `filters` and waits for the SUBACK; any packet that
    /// arrives before it is passed to `early`.
    ///
    /// # Errors
    ///
    /// Fails when the broker rejects a filter or sends no SUBACK in time.
    pub async fn subscribe(
        &mut self,
        filters: &[String],
        qos: QoS,
        early: &mut dyn FnMut(&mut Client, Packet) -> Result<(), BenchError>,
    ) -> Result<(), BenchError> {
        let packet_id = self.allocate_packet_id();
        let options = SubscriptionOptions::with_qos(qos);
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters.iter().map(|f| (f.clone(), options)).collect(),
        }));
        self.flush().await?;
        loop {
            match self.next_packet()? {
                Some(Packet::SubAck(suback)) if suback.packet_id == packet_id => {
                    let rejected = suback
                        .reasons
                        .iter()
                        .zip(filters)
                        .find(|(r, _)| r.is_error());
                    if let Some((reason, filter)) = rejected {
                        return Err(BenchError::SubscribeRejected {
                            filter: filter.clone(),
                            reason: *reason,
                        });
                    }
                    return Ok(());
                }
                Some(other) => early(self, other)?,
                None => {
                    if !self.read_more().await? {
                        return Err(BenchError::TimedOut("SUBACK"));
                    }
                }
            }
        }
    }

    /// Queues an UNSUBSCRIBE for `filters` and returns its packet id; the
    /// caller reads the UNSUBACK among its other packets.
    pub fn queue_unsubscribe(&mut self, filters: &[String]) -> PacketId {
        let packet_id = self.allocate_packet_id();
        self.queue(&Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters.to_vec(),
        }));
        packet_id
    }

    /// Sends DISCONNECT and closes the socket, ignoring errors because the
    /// run is over either way. Gives up after [`DISCONNECT_TIMEOUT`], when the
    /// socket is dropped, so a broker that stopped reading cannot hold the
    /// run open.
    pub async fn disconnect(mut self) {
        self.queue(&Packet::Disconnect(coremq_codec::Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: Properties::default(),
        }));
        let _ = glommio::timer::timeout(DISCONNECT_TIMEOUT, async {
            let _ = self.flush().await;
            let _ = self.stream.close().await;
            Ok(())
        })
        .await;
    }
}

/// An encoded PUBLISH whose packet id and bench header are patched for each
/// message, so sending one costs a copy and no allocation or encoding.
#[derive(Clone, Debug)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    packet_id_offset: Option<usize>,
    payload_offset: usize,
    /// Payload bytes per message.
    pub payload_len: usize,
}

impl PublishTemplate {
    /// Encodes a PUBLISH of `payload_len` zero bytes to `topic`.
    ///
    /// # Panics
    ///
    /// Panics if `payload_len` is below [`HEADER_LEN`]; the command line
    /// rejects such sizes first.
    pub fn new(
        topic: &str,
        qos: QoS,
        retain: bool,
        payload_len: usize,
        protocol: Protocol,
    ) -> Self {
        assert!(
            payload_len >= HEADER_LEN,
            "payload must hold the bench header"
        );
        let packet_id = (qos != QoS::AtMostOnce).then_some(1);
        let publish = Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_string(),
            packet_id,
            properties: Properties::default(),
            payload: vec![0u8; payload_len].into(),
        });
        let mut encoded = BytesMut::new();
        encode(&publish, protocol, &mut encoded);

        // Fixed header: one type byte, then a Variable Byte Integer whose
        // bytes have the top bit set on all but the last.
        let length_bytes = encoded[1..].iter().take_while(|&&b| b & 0x80 != 0).count() + 1;
        let topic_end = 1 + length_bytes + 2 + topic.len();
        PublishTemplate {
            packet_id_offset: packet_id.map(|_| topic_end),
            payload_offset: encoded.len() - payload_len,
            bytes: encoded.to_vec(),
            payload_len,
        }
    }

    /// Appends one PUBLISH to `out` with `header` and, at QoS 1/2, `packet_id`.
    pub fn append(&self, out: &mut BytesMut, header: Header, packet_id: Option<PacketId>) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let message = &mut out[start..];
        if let (Some(offset), Some(id)) = (self.packet_id_offset, packet_id) {
            message[offset..offset + 2].copy_from_slice(&id.to_be_bytes());
        }
        write_header(&mut message[self.payload_offset..], header);
    }
}

//! A raw MQTT client over a blocking `TcpStream`: it writes exactly the
//! bytes or packets a test gives it and decodes what the broker sends back.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use coremq_codec::{
    decode, ConnAck, Connect, DecodeContext, DecodeError, Disconnect, Packet, PacketId, Protocol,
    PubResponse, Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe, MAX_PACKET_SIZE,
};

use crate::packets;

/// Wait used by `read_packet` when a test does not give one.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Why no packet was read.
#[derive(Debug)]
pub enum RecvError {
    /// The broker closed the stream (EOF).
    Eof,
    /// The broker reset the stream (RST).
    Reset,
    /// Nothing complete arrived in time.
    Timeout,
    /// The bytes the broker sent are not a valid packet.
    Decode(DecodeError, Vec<u8>),
    /// Another socket error.
    Io(std::io::Error),
}

impl RecvError {
    /// Returns true for EOF or RST, the two ways a closed connection shows.
    pub fn is_closed(&self) -> bool {
        matches!(self, RecvError::Eof | RecvError::Reset)
    }
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Eof => f.write_str("connection closed (EOF)"),
            RecvError::Reset => f.write_str("connection reset"),
            RecvError::Timeout => f.write_str("timed out waiting for a packet"),
            RecvError::Decode(error, frame) => {
                write!(
                    f,
                    "invalid packet from the broker ({error}): {}",
                    to_hex(frame)
                )
            }
            RecvError::Io(error) => write!(f, "socket error: {error}"),
        }
    }
}

/// One raw connection to the broker.
pub struct RawClient {
    stream: TcpStream,
    buffer: BytesMut,
    protocol: Protocol,
    peer: SocketAddr,
}

impl RawClient {
    /// Opens a TCP connection to `addr`; nothing is sent yet. The protocol
    /// used to encode and decode packets is MQTT 5.0 until changed.
    ///
    /// # Panics
    ///
    /// Panics when the connection fails.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|error| panic!("failed to connect to {addr}: {error}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        RawClient {
            stream,
            buffer: BytesMut::with_capacity(4096),
            protocol: Protocol::V5,
            peer: addr,
        }
    }

    /// Opens a TCP connection to `addr` whose socket receive buffer is
    /// `bytes` long, set before connecting so that the TCP window starts
    /// small: a client that stops reading then fills up quickly.
    ///
    /// # Panics
    ///
    /// Panics when the connection fails.
    #[track_caller]
    pub fn connect_with_receive_buffer(addr: SocketAddr, bytes: usize) -> RawClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("create a TCP socket");
        socket.set_recv_buffer_size(bytes).expect("set SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .unwrap_or_else(|error| panic!("failed to connect to {addr}: {error}"));
        let stream = TcpStream::from(socket);
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        RawClient {
            stream,
            buffer: BytesMut::with_capacity(4096),
            protocol: Protocol::V5,
            peer: addr,
        }
    }

    /// Opens a connection and sends the baseline MQTT 5 CONNECT (Clean
    /// Start, keep alive 60 s, no properties) as `client_id`, then reads
    /// the CONNACK and checks it reports success.
    #[track_caller]
    pub fn connect_v5(addr: SocketAddr, client_id: &str) -> (RawClient, ConnAck) {
        let mut client = RawClient::connect(addr);
        let connack = client.baseline_connect(client_id);
        (client, connack)
    }

    /// Address of the broker.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Bytes in the broker's socket to this client that this client has
    /// not acknowledged: the `tx_queue` of that socket in `/proc/net/tcp`.
    /// Returns `None` when the socket is not found there (IPv6, or closed).
    pub fn unacked_by_client(&self) -> Option<u64> {
        let local = self.stream.local_addr().ok()?;
        let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (socket_local, socket_remote, queues) =
                (fields.get(1)?, fields.get(2)?, fields.get(4)?);
            if parse_proc_addr(socket_local)? != self.peer
                || parse_proc_addr(socket_remote)? != local
            {
                return None;
            }
            u64::from_str_radix(queues.split(':').next()?, 16).ok()
        })
    }

    /// Protocol used to encode and decode packets.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Sets the protocol used to encode and decode the packets that follow.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    /// Sends the baseline MQTT 5 CONNECT as `client_id` and returns the
    /// CONNACK, checking that its reason code is Success.
    #[track_caller]
    pub fn baseline_connect(&mut self, client_id: &str) -> ConnAck {
        let connack = self.connect_with(packets::connect_v5(client_id));
        assert_eq!(
            connack.reason,
            ReasonCode::SUCCESS,
            "CONNACK to the baseline CONNECT of {client_id:?} is not Success: {connack:?}"
        );
        connack
    }

    /// Sends `connect` and returns the CONNACK, whatever its reason code.
    /// The client's protocol becomes the one `connect` names.
    #[track_caller]
    pub fn connect_with(&mut self, connect: Connect) -> ConnAck {
        self.protocol = connect.protocol;
        self.send(&Packet::Connect(Box::new(connect)));
        match self.read_packet() {
            Ok(Packet::ConnAck(connack)) => connack,
            Ok(other) => panic!("expected CONNACK, got {other:?}"),
            Err(error) => panic!("expected CONNACK: {error}"),
        }
    }

    /// Sends the bytes written in `hex` (whitespace between bytes is
    /// ignored), such as `"e0 00"`.
    #[track_caller]
    pub fn send_hex(&mut self, hex: &str) {
        self.send_bytes(&from_hex(hex));
    }

    /// Sends `bytes` as they are.
    #[track_caller]
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        if let Err(error) = self.try_send_bytes(bytes) {
            panic!("failed to send {}: {error}", to_hex(bytes));
        }
    }

    /// Sends `bytes` and returns the socket error, if any.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Encodes `packet` in the client's protocol and sends it.
    #[track_caller]
    pub fn send(&mut self, packet: &Packet) {
        let bytes = packets::encode_packet(packet, self.protocol);
        self.send_bytes(&bytes);
    }

    /// Reads the next packet, waiting up to [`DEFAULT_READ_TIMEOUT`].
    pub fn read_packet(&mut self) -> Result<Packet, RecvError> {
        self.read_packet_within(DEFAULT_READ_TIMEOUT)
    }

    /// Reads the next packet, waiting up to `timeout`.
    pub fn read_packet_within(&mut self, timeout: Duration) -> Result<Packet, RecvError> {
        self.read_sized_packet_within(timeout)
            .map(|(packet, _)| packet)
    }

    /// Reads the next packet and its size on the wire, fixed header
    /// included, waiting up to `timeout`.
    pub fn read_sized_packet_within(
        &mut self,
        timeout: Duration,
    ) -> Result<(Packet, usize), RecvError> {
        let frame = self.read_frame_within(timeout)?;
        let size = frame.len();
        let packet = self.decode_frame(&frame)?;
        Ok((packet, size))
    }

    /// Reads the bytes of the next packet without decoding it, waiting up
    /// to `timeout`. Useful when the broker may answer in either protocol
    /// version.
    pub fn read_frame_within(&mut self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(length) = complete_frame_len(&self.buffer) {
                return Ok(self.buffer.split_to(length).to_vec());
            }
            self.fill_buffer(deadline)?;
        }
    }

    /// Reads until the broker closes the connection within `timeout`,
    /// tolerating one DISCONNECT first, and returns that DISCONNECT.
    ///
    /// # Panics
    ///
    /// Panics when another packet arrives or the connection is still open
    /// after `timeout`.
    #[track_caller]
    pub fn expect_closed_within(&mut self, timeout: Duration) -> Option<Disconnect> {
        let deadline = Instant::now() + timeout;
        let mut disconnect = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_packet_within(left) {
                Ok(Packet::Disconnect(packet)) if disconnect.is_none() => {
                    disconnect = Some(packet);
                }
                Ok(other) => panic!(
                    "expected the broker to close the connection, but it sent {other:?} \
                     (after DISCONNECT {disconnect:?})"
                ),
                Err(error) if error.is_closed() => return disconnect,
                Err(RecvError::Timeout) => panic!(
                    "the connection is still open {timeout:?} later (DISCONNECT received: \
                     {disconnect:?})"
                ),
                Err(error) => panic!("expected the connection to close: {error}"),
            }
        }
    }

    /// Checks that the broker closes the connection within 2 s after a
    /// DISCONNECT with `reason`.
    #[track_caller]
    pub fn expect_disconnect(&mut self, reason: ReasonCode) {
        let disconnect = self.expect_closed_within(Duration::from_secs(2));
        let got = disconnect.as_ref().map(|packet| packet.reason);
        assert_eq!(
            got,
            Some(reason),
            "expected DISCONNECT with reason 0x{:02X} before the close, got {disconnect:?}",
            reason.0
        );
    }

    /// Checks that no packet arrives and the connection stays open for
    /// `duration`.
    #[track_caller]
    pub fn expect_silence(&mut self, duration: Duration) {
        match self.read_packet_within(duration) {
            Err(RecvError::Timeout) => {}
            Ok(packet) => panic!("expected nothing for {duration:?}, got {packet:?}"),
            Err(error) => panic!("expected nothing for {duration:?}, but: {error}"),
        }
    }

    /// Reads the next packet and checks it is a PUBLISH.
    #[track_caller]
    pub fn expect_publish(&mut self) -> Publish {
        self.expect_publish_within(DEFAULT_READ_TIMEOUT)
    }

    /// Reads the next packet within `timeout` and checks it is a PUBLISH.
    #[track_caller]
    pub fn expect_publish_within(&mut self, timeout: Duration) -> Publish {
        match self.read_packet_within(timeout) {
            Ok(Packet::Publish(publish)) => publish,
            Ok(other) => panic!("expected PUBLISH, got {other:?}"),
            Err(error) => panic!("expected PUBLISH: {error}"),
        }
    }

    /// Reads PUBLISH packets until none arrives for `quiet`, acknowledging
    /// QoS 1 and 2 ones, and returns them.
    #[track_caller]
    pub fn drain_publishes(&mut self, quiet: Duration) -> Vec<Publish> {
        let mut received = Vec::new();
        loop {
            match self.read_packet_within(quiet) {
                Ok(Packet::Publish(publish)) => {
                    self.acknowledge(&publish);
                    received.push(publish);
                }
                Ok(Packet::PubRel(release)) => {
                    self.send(&Packet::PubComp(packets::pub_response(release.packet_id)));
                }
                Ok(other) => panic!("expected PUBLISH, got {other:?}"),
                Err(RecvError::Timeout) => return received,
                Err(error) => panic!("while reading PUBLISH packets: {error}"),
            }
        }
    }

    /// Sends the PUBACK or PUBREC that `publish` asks for; nothing for QoS 0.
    #[track_caller]
    pub fn acknowledge(&mut self, publish: &Publish) {
        let Some(packet_id) = publish.packet_id else {
            return;
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(packets::pub_response(packet_id))),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(packets::pub_response(packet_id))),
        }
    }

    /// Subscribes to `filter` at `qos` with packet id 1 and returns the
    /// SUBACK, checking it grants that QoS.
    #[track_caller]
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        let suback = self.subscribe_with(packets::subscribe(
            1,
            &[(filter, SubscriptionOptions::with_qos(qos))],
        ));
        assert_eq!(
            suback.reasons,
            vec![ReasonCode(qos as u8)],
            "SUBACK for {filter:?} at QoS {} does not grant it",
            qos as u8
        );
        suback
    }

    /// Sends `subscribe` and returns the SUBACK, whatever its codes.
    #[track_caller]
    pub fn subscribe_with(&mut self, subscribe: Subscribe) -> SubAck {
        let packet_id = subscribe.packet_id;
        self.send(&Packet::Subscribe(subscribe));
        match self.read_packet() {
            Ok(Packet::SubAck(suback)) => {
                assert_eq!(suback.packet_id, packet_id, "SUBACK packet id");
                suback
            }
            Ok(other) => panic!("expected SUBACK, got {other:?}"),
            Err(error) => panic!("expected SUBACK: {error}"),
        }
    }

    /// Sends `unsubscribe` and returns the UNSUBACK.
    #[track_caller]
    pub fn unsubscribe_with(&mut self, unsubscribe: Unsubscribe) -> UnsubAck {
        let packet_id = unsubscribe.packet_id;
        self.send(&Packet::Unsubscribe(unsubscribe));
        match self.read_packet() {
            Ok(Packet::UnsubAck(unsuback)) => {
                assert_eq!(unsuback.packet_id, packet_id, "UNSUBACK packet id");
                unsuback
            }
            Ok(other) => panic!("expected UNSUBACK, got {other:?}"),
            Err(error) => panic!("expected UNSUBACK: {error}"),
        }
    }

    /// Publishes and completes the exchange for the QoS: nothing for 0,
    /// PUBACK for 1, PUBREC/PUBREL/PUBCOMP for 2. Returns the reason code
    /// of the PUBACK or PUBREC (Success for QoS 0).
    #[track_caller]
    pub fn publish(&mut self, publish: Publish) -> ReasonCode {
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        self.send(&Packet::Publish(publish));
        match (qos, packet_id) {
            (QoS::AtMostOnce, _) => ReasonCode::SUCCESS,
            (QoS::AtLeastOnce, Some(packet_id)) => self.expect_ack(packet_id, AckKind::PubAck),
            (QoS::ExactlyOnce, Some(packet_id)) => {
                let reason = self.expect_ack(packet_id, AckKind::PubRec);
                if !reason.is_error() {
                    self.send(&Packet::PubRel(packets::pub_response(packet_id)));
                    let complete = self.expect_ack(packet_id, AckKind::PubComp);
                    assert_eq!(complete, ReasonCode::SUCCESS, "PUBCOMP reason");
                }
                reason
            }
            (_, None) => panic!("a QoS 1 or 2 PUBLISH needs a packet id"),
        }
    }

    /// Reads the next packet, checks it is the acknowledgement `kind` for
    /// `packet_id`, and returns its reason code.
    #[track_caller]
    pub fn expect_ack(&mut self, packet_id: PacketId, kind: AckKind) -> ReasonCode {
        let packet = match self.read_packet() {
            Ok(packet) => packet,
            Err(error) => panic!("expected {kind:?} for packet id {packet_id}: {error}"),
        };
        let response: PubResponse = match (kind, packet) {
            (AckKind::PubAck, Packet::PubAck(response))
            | (AckKind::PubRec, Packet::PubRec(response))
            | (AckKind::PubRel, Packet::PubRel(response))
            | (AckKind::PubComp, Packet::PubComp(response)) => response,
            (_, other) => panic!("expected {kind:?} for packet id {packet_id}, got {other:?}"),
        };
        assert_eq!(response.packet_id, packet_id, "{kind:?} packet id");
        response.reason
    }

    /// Sends PINGREQ and checks that PINGRESP comes back.
    #[track_caller]
    pub fn ping(&mut self) {
        self.send(&Packet::PingReq);
        match self.read_packet() {
            Ok(Packet::PingResp) => {}
            Ok(other) => panic!("expected PINGRESP, got {other:?}"),
            Err(error) => panic!("expected PINGRESP: {error}"),
        }
    }

    /// Sends DISCONNECT with `reason` and closes the socket.
    pub fn disconnect(mut self, reason: ReasonCode) {
        let packet = Packet::Disconnect(Disconnect {
            reason,
            properties: Default::default(),
        });
        let bytes = packets::encode_packet(&packet, self.protocol);
        let _ = self.try_send_bytes(&bytes);
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Sends DISCONNECT with `reason` and waits until the broker closes
    /// the connection. Packets on two connections can be handled in either
    /// order, so a CONNECT sent right after [`RawClient::disconnect`] may
    /// take the session over before the DISCONNECT is read.
    #[track_caller]
    pub fn disconnect_and_wait(mut self, reason: ReasonCode) {
        let packet = Packet::Disconnect(Disconnect {
            reason,
            properties: Default::default(),
        });
        self.send(&packet);
        self.expect_closed_within(Duration::from_secs(5));
    }

    /// Closes the socket with an RST and no DISCONNECT, as a crashed
    /// client would.
    pub fn abort(self) {
        // A zero linger timeout makes close() send RST instead of FIN.
        socket2::SockRef::from(&self.stream)
            .set_linger(Some(Duration::ZERO))
            .expect("set SO_LINGER to 0");
        drop(self.stream);
    }

    fn decode_frame(&self, frame: &[u8]) -> Result<Packet, RecvError> {
        let context = DecodeContext {
            protocol: self.protocol,
            max_packet_size: MAX_PACKET_SIZE,
            topic_alias_max: u16::MAX,
        };
        let mut buffer = BytesMut::from(frame);
        match decode(&mut buffer, &context) {
            Ok(Some(packet)) => Ok(packet),
            Ok(None) => unreachable!("the frame is complete"),
            Err(error) => Err(RecvError::Decode(error, frame.to_vec())),
        }
    }

    fn fill_buffer(&mut self, deadline: Instant) -> Result<(), RecvError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RecvError::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(RecvError::Io)?;
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(RecvError::Eof),
            Ok(read) => {
                self.buffer.extend_from_slice(&chunk[..read]);
                Ok(())
            }
            Err(error) => match error.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Err(RecvError::Timeout),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Err(RecvError::Reset),
                ErrorKind::Interrupted => Ok(()),
                _ => Err(RecvError::Io(error)),
            },
        }
    }
}

/// Acknowledgement packet types of the QoS 1 and 2 flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// Length of the first packet in `buffer` when all of it has arrived.
fn complete_frame_len(buffer: &[u8]) -> Option<usize> {
    let mut remaining_length: usize = 0;
    let mut multiplier: usize = 1;
    for (index, byte) in buffer.iter().skip(1).take(4).enumerate() {
        remaining_length += usize::from(byte & 0x7F) * multiplier;
        if byte & 0x80 == 0 {
            let total = 1 + index + 1 + remaining_length;
            return (buffer.len() >= total).then_some(total);
        }
        multiplier *= 128;
    }
    None
}

/// Parses bytes written as hex pairs, ignoring whitespace.
///
/// # Panics
///
/// Panics on an odd number of digits or a character that is not hex.
pub fn from_hex(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() & 1 == 0, "odd number of hex digits in {hex:?}");
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).expect("ASCII");
            u8::from_str_radix(text, 16)
                .unwrap_or_else(|_| panic!("invalid hex {text:?} in {hex:?}"))
        })
        .collect()
}

/// Writes bytes as space-separated hex pairs.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses an IPv4 address of `/proc/net/tcp`, such as `0100007F:0050`: the
/// address as a hexadecimal number in host byte order, then the port.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = std::net::Ipv4Addr::from(ip.to_ne_bytes());
    Some(SocketAddr::from((ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_address_parses() {
        let parsed = parse_proc_addr("0100007F:1F90");
        assert_eq!(parsed, Some("127.0.0.1:8080".parse().expect("address")));
    }

    #[test]
    fn hex_round_trip() {
        let bytes = from_hex("10 0f 00\n04");
        assert_eq!(bytes, vec![0x10, 0x0f, 0x00, 0x04]);
        assert_eq!(to_hex(&bytes), "10 0f 00 04");
    }

    #[test]
    fn frame_len_waits_for_whole_packet() {
        assert_eq!(complete_frame_len(&[0x20]), None);
        assert_eq!(complete_frame_len(&[0x20, 0x03, 0x00]), None);
        assert_eq!(complete_frame_len(&[0x20, 0x03, 0x00, 0x00, 0x00]), Some(5));
        assert_eq!(complete_frame_len(&[0xe0, 0x00, 0xc0]), Some(2));
    }

    #[test]
    fn frame_len_reads_multi_byte_length() {
        let mut frame = vec![0x30, 0x80, 0x01];
        frame.extend_from_slice(&[0; 128]);
        assert_eq!(complete_frame_len(&frame), Some(131));
        assert_eq!(complete_frame_len(&frame[..100]), None);
    }
}

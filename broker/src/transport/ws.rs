//! WebSocket server transport (RFC 6455) for MQTT over WebSocket.
//!
//! [`accept_ws`] reads the HTTP upgrade request, checks the path and the
//! subprotocol and sends `101 Switching Protocols`. [`WsStream`] then turns
//! the binary frames into one byte stream: an MQTT packet may span several
//! frames and one frame may carry several packets, because the codec above
//! only sees bytes. Each `poll_write` becomes one binary frame.
//!
//! tungstenite parses the request, builds the 101 response and parses and
//! formats frame headers. All socket I/O goes through the inner stream's
//! async poll functions, so the shard's executor never blocks, and all
//! connection state lives in plain buffers ([`WsHandoff`]) that can move to
//! another shard.

use std::fmt;
use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{ready, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use thiserror::Error;
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

/// Default request path that serves MQTT.
pub const DEFAULT_PATH: &str = "/mqtt";

/// Subprotocols accepted in `Sec-WebSocket-Protocol`, in the order the server
/// prefers them. `mqttv3.1` is the name that older MQTT 3.1 clients send.
pub const SUPPORTED_SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Default maximum size of the upgrade request head (request line and
/// headers). Browser upgrade requests are typically under 2 KiB (an
/// estimate), so 8 KiB leaves room for cookies.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;

/// Default time a client has to send its complete upgrade request.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default maximum payload of one received frame. A frame is buffered whole
/// before its bytes are returned, so this bounds the memory per connection.
/// Larger MQTT packets still pass when the client splits them into frames.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// RFC 6455 section 5.5: control frames carry at most 125 payload bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Queued output (pongs, close frames, data) above which `poll_read` stops
/// parsing input until the socket has accepted it, so a client that sends
/// pings and never reads cannot grow the buffer without bound.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// Bytes requested from the inner stream per read.
const READ_CHUNK: usize = 8 * 1024;

/// Settings of a WebSocket listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsConfig {
    /// Request path that serves MQTT. Other paths get `404 Not Found`.
    pub path: String,
    /// Maximum bytes of the request line and headers. More gets `431`.
    pub max_header_bytes: usize,
    /// Time allowed from accept until the 101 response is sent.
    pub handshake_timeout: Duration,
    /// Maximum payload bytes of one received frame. More closes with 1009.
    pub max_frame_bytes: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            path: DEFAULT_PATH.to_string(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// A failed WebSocket upgrade.
#[derive(Debug, Error)]
pub enum WsError {
    /// The client did not send a complete upgrade request in time.
    #[error("WebSocket handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The client closed the connection before the request was complete.
    #[error("connection closed before the WebSocket upgrade request was complete")]
    ClosedDuringHandshake,
    /// The request was rejected with an HTTP error response and the
    /// connection closed.
    #[error("WebSocket upgrade rejected with HTTP {status}: {reason}")]
    Rejected {
        /// HTTP status sent to the client.
        status: u16,
        /// Explanation, also sent as the response body.
        reason: String,
    },
    /// Reading the request or writing the response failed.
    #[error("I/O error during WebSocket handshake: {0}")]
    Io(#[from] io::Error),
}

/// Performs the server side of the WebSocket opening handshake on `stream`.
///
/// On success the 101 response has been written and the returned stream
/// carries MQTT bytes. Any bytes the client sent after its request (its first
/// frames) are kept and returned by the first reads.
///
/// # Errors
///
/// [`WsError::Rejected`] after one of these HTTP error responses was sent:
///
/// - 404 for a path other than `cfg.path`,
/// - 400 for a request that is not a valid upgrade, or that offers only
///   unsupported subprotocols,
/// - 426 for a WebSocket version other than 13,
/// - 431 for a request head over `cfg.max_header_bytes`.
///
/// [`WsError::HandshakeTimeout`] after `cfg.handshake_timeout`.
pub async fn accept_ws<S>(mut stream: S, cfg: &WsConfig) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeout = cfg.handshake_timeout;
    let handshake = run_handshake(&mut stream, cfg);
    let deadline = async {
        glommio::timer::sleep(timeout).await;
        Err(WsError::HandshakeTimeout(timeout))
    };
    let (leftover, subprotocol) = futures_lite::future::or(handshake, deadline).await?;

    let mut handoff = WsHandoff::new(cfg.max_frame_bytes);
    handoff.input = leftover;
    handoff.subprotocol = subprotocol;
    Ok(WsStream::from_parts(stream, handoff))
}

/// Reads the request, writes the response and returns the bytes read past the
/// request head plus the negotiated subprotocol.
async fn run_handshake<S>(
    stream: &mut S,
    cfg: &WsConfig,
) -> Result<(Vec<u8>, Option<&'static str>), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];

    let (head_len, request) = loop {
        match Request::try_parse(&buffer) {
            Ok(Some(parsed)) if parsed.0 <= cfg.max_header_bytes => break parsed,
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(error) => {
                let rejection = Rejection::bad_request(format!("invalid upgrade request: {error}"));
                return Err(send_rejection(stream, rejection).await);
            }
        }

        if buffer.len() > cfg.max_header_bytes {
            let rejection = Rejection {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: format!(
                    "upgrade request head exceeds the limit of {} bytes",
                    cfg.max_header_bytes
                ),
                extra_header: None,
            };
            return Err(send_rejection(stream, rejection).await);
        }

        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(WsError::ClosedDuringHandshake);
        }
        buffer.extend_from_slice(&chunk[..read]);
    };

    match build_response(&request, &cfg.path) {
        Ok((response, subprotocol)) => {
            stream.write_all(&response).await?;
            stream.flush().await?;
            buffer.drain(..head_len);
            Ok((buffer, subprotocol))
        }
        Err(rejection) => Err(send_rejection(stream, rejection).await),
    }
}

/// An HTTP error response to an upgrade request.
struct Rejection {
    status: StatusCode,
    reason: String,
    extra_header: Option<&'static str>,
}

impl Rejection {
    fn bad_request(reason: String) -> Self {
        Rejection {
            status: StatusCode::BAD_REQUEST,
            reason,
            extra_header: None,
        }
    }
}

/// Writes `rejection` as a plain-text HTTP response and returns the error
/// that `accept_ws` reports. A failed write is ignored because the
/// connection is dropped either way and the rejection is the more useful
/// error.
async fn send_rejection<S>(stream: &mut S, rejection: Rejection) -> WsError
where
    S: AsyncWrite + Unpin,
{
    let status = rejection.status;
    let body = format!("{}\n", rejection.reason);
    let mut response = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        body.len()
    );
    if let Some(header) = rejection.extra_header {
        response.push_str(header);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&body);

    if let Err(error) = write_and_flush(stream, response.as_bytes()).await {
        tracing::debug!(%error, "failed to send WebSocket upgrade rejection");
    }
    WsError::Rejected {
        status: status.as_u16(),
        reason: rejection.reason,
    }
}

async fn write_and_flush<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Checks the upgrade request and formats the 101 response.
fn build_response(
    request: &Request,
    path: &str,
) -> Result<(Vec<u8>, Option<&'static str>), Rejection> {
    if request.uri().path() != path {
        return Err(Rejection {
            status: StatusCode::NOT_FOUND,
            reason: format!(
                "path {} not found; MQTT over WebSocket is served at {path}",
                request.uri().path()
            ),
            extra_header: None,
        });
    }

    let mut response = create_response(request).map_err(|error| {
        use tungstenite::error::{Error, ProtocolError};
        match error {
            Error::Protocol(ProtocolError::MissingSecWebSocketVersionHeader) => Rejection {
                status: StatusCode::UPGRADE_REQUIRED,
                reason:
                    "unsupported or missing Sec-WebSocket-Version; only version 13 is supported"
                        .to_string(),
                extra_header: Some("Sec-WebSocket-Version: 13"),
            },
            other => Rejection::bad_request(format!("invalid upgrade request: {other}")),
        }
    })?;

    let subprotocol = select_subprotocol(request)?;
    if let Some(name) = subprotocol {
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(name));
    }

    let mut bytes = Vec::with_capacity(256);
    write_response(&mut bytes, &response)
        .map_err(|error| Rejection::bad_request(format!("cannot format response: {error}")))?;
    Ok((bytes, subprotocol))
}

/// Picks the first subprotocol in the client's list that the server
/// supports. A request without `Sec-WebSocket-Protocol` is accepted with no
/// subprotocol, because some embedded clients omit the header.
fn select_subprotocol(request: &Request) -> Result<Option<&'static str>, Rejection> {
    let mut offered = Vec::new();
    for value in request.headers().get_all("Sec-WebSocket-Protocol") {
        let text = value.to_str().map_err(|_| {
            Rejection::bad_request("Sec-WebSocket-Protocol is not valid ASCII".to_string())
        })?;
        offered.extend(
            text.split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty()),
        );
    }
    if offered.is_empty() {
        return Ok(None);
    }

    for name in &offered {
        if let Some(supported) = SUPPORTED_SUBPROTOCOLS
            .iter()
            .find(|s| s.eq_ignore_ascii_case(name))
        {
            return Ok(Some(supported));
        }
    }
    Err(Rejection::bad_request(format!(
        "unsupported WebSocket subprotocol {}; accepted: {}",
        offered.join(", "),
        SUPPORTED_SUBPROTOCOLS.join(", ")
    )))
}

/// Buffers and protocol state of a WebSocket connection, without the socket.
///
/// Returned by [`WsStream::into_parts`] to move a connection to another
/// shard. It contains only owned bytes and flags, so it is `Send`.
#[derive(Clone, PartialEq, Eq)]
pub struct WsHandoff {
    /// Bytes read from the socket that are not yet parsed as frames. The
    /// first `input_pos` of them are already consumed.
    input: Vec<u8>,
    input_pos: usize,
    /// Unmasked payload of the last binary frame not yet returned by a read.
    payload: Vec<u8>,
    payload_pos: usize,
    /// Formatted frames not yet written to the socket.
    output: Vec<u8>,
    output_pos: usize,
    /// True between a binary frame without FIN and the last continuation.
    in_message: bool,
    close_received: bool,
    close_sent: bool,
    max_frame_bytes: usize,
    subprotocol: Option<&'static str>,
}

impl WsHandoff {
    fn new(max_frame_bytes: usize) -> Self {
        WsHandoff {
            input: Vec::new(),
            input_pos: 0,
            payload: Vec::new(),
            payload_pos: 0,
            output: Vec::new(),
            output_pos: 0,
            in_message: false,
            close_received: false,
            close_sent: false,
            max_frame_bytes,
            subprotocol: None,
        }
    }

    /// Returns the number of received bytes held that no read has returned
    /// yet, both raw frame bytes and unmasked payload.
    pub fn buffered_input_len(&self) -> usize {
        (self.input.len() - self.input_pos) + (self.payload.len() - self.payload_pos)
    }
}

impl fmt::Debug for WsHandoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsHandoff")
            .field("buffered_input", &self.buffered_input_len())
            .field("pending_output", &(self.output.len() - self.output_pos))
            .field("in_message", &self.in_message)
            .field("close_received", &self.close_received)
            .field("close_sent", &self.close_sent)
            .field("subprotocol", &self.subprotocol)
            .finish()
    }
}

/// A frame that the server must reject, with the close code it sends.
struct FrameViolation {
    code: CloseCode,
    message: &'static str,
}

/// A WebSocket connection read and written as a plain byte stream.
pub struct WsStream<S> {
    inner: S,
    state: WsHandoff,
}

impl<S> WsStream<S> {
    /// Rebuilds a stream from a socket and the state that
    /// [`WsStream::into_parts`] returned.
    pub fn from_parts(inner: S, state: WsHandoff) -> Self {
        WsStream { inner, state }
    }

    /// Splits the stream into its socket and its buffered state.
    pub fn into_parts(self) -> (S, WsHandoff) {
        (self.inner, self.state)
    }

    /// Returns the subprotocol agreed in the handshake, `None` when the
    /// client offered none.
    pub fn subprotocol(&self) -> Option<&'static str> {
        self.state.subprotocol
    }

    /// Returns the inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Writes queued output to the socket until it is empty or the socket
    /// would block.
    fn poll_flush_output(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let state = &mut self.state;
        while state.output_pos < state.output.len() {
            let pending = &state.output[state.output_pos..];
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "socket accepted no bytes of a WebSocket frame",
                )));
            }
            state.output_pos += written;
        }
        state.output.clear();
        state.output_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Queues a frame for sending. Server frames are never masked.
    fn queue_frame(&mut self, frame: Frame) {
        frame
            .format(&mut self.state.output)
            .expect("formatting a frame into a Vec cannot fail");
    }

    /// Queues a close frame with `code` unless one was already sent.
    fn queue_close(&mut self, code: CloseCode, reason: &'static str) {
        if self.state.close_sent {
            return;
        }
        self.state.close_sent = true;
        let close = CloseFrame {
            code,
            reason: reason.into(),
        };
        self.queue_frame(Frame::close(Some(close)));
    }

    /// Parses and handles at most one complete frame from the input buffer.
    /// Returns `Ok(false)` when the buffer does not hold a complete frame.
    fn process_one_frame(&mut self) -> Result<bool, FrameViolation> {
        let state = &mut self.state;
        let available = &state.input[state.input_pos..];
        let mut cursor = Cursor::new(available);
        let (header, payload_len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(false),
            Err(_) => {
                return Err(FrameViolation {
                    code: CloseCode::Protocol,
                    message: "invalid WebSocket frame header",
                })
            }
        };

        if payload_len > state.max_frame_bytes as u64 {
            return Err(FrameViolation {
                code: CloseCode::Size,
                message: "WebSocket frame exceeds the maximum frame size",
            });
        }
        let header_len = cursor.position() as usize;
        let payload_len = payload_len as usize;
        if available.len() < header_len + payload_len {
            return Ok(false);
        }

        let start = state.input_pos + header_len;
        let mut payload = state.input[start..start + payload_len].to_vec();
        state.input_pos = start + payload_len;

        check_header(&header, payload_len)?;
        let mask = header.mask.ok_or(FrameViolation {
            code: CloseCode::Protocol,
            message: "client sent an unmasked WebSocket frame",
        })?;
        apply_mask(&mut payload, mask);

        self.handle_frame(&header, payload)?;
        Ok(true)
    }

    fn handle_frame(
        &mut self,
        header: &FrameHeader,
        payload: Vec<u8>,
    ) -> Result<(), FrameViolation> {
        match header.opcode {
            OpCode::Data(Data::Binary) | OpCode::Data(Data::Continue) => {
                let is_continuation = header.opcode == OpCode::Data(Data::Continue);
                if is_continuation != self.state.in_message {
                    return Err(FrameViolation {
                        code: CloseCode::Protocol,
                        message: "WebSocket continuation frame out of sequence",
                    });
                }
                self.state.in_message = !header.is_final;
                self.state.payload = payload;
                self.state.payload_pos = 0;
            }
            OpCode::Data(Data::Text) => {
                return Err(FrameViolation {
                    code: CloseCode::Unsupported,
                    message:
                        "text frames are not supported; MQTT over WebSocket uses binary frames",
                })
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(FrameViolation {
                    code: CloseCode::Protocol,
                    message: "reserved WebSocket opcode",
                })
            }
            OpCode::Control(Control::Ping) => self.queue_frame(Frame::pong(payload)),
            OpCode::Control(Control::Pong) => {}
            OpCode::Control(Control::Close) => {
                self.state.close_received = true;
                // RFC 6455 section 5.5.1: the reply echoes the received code.
                let code = match payload.get(..2) {
                    Some(bytes) => CloseCode::from(u16::from_be_bytes([bytes[0], bytes[1]])),
                    None => CloseCode::Normal,
                };
                self.queue_close(code, "");
            }
        }
        Ok(())
    }

    /// Moves unconsumed input to the front of the buffer before reading more.
    fn compact_input(&mut self) {
        let state = &mut self.state;
        if state.input_pos > 0 {
            state.input.drain(..state.input_pos);
            state.input_pos = 0;
        }
    }
}

/// Rejects reserved bits and oversized or fragmented control frames.
fn check_header(header: &FrameHeader, payload_len: usize) -> Result<(), FrameViolation> {
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameViolation {
            code: CloseCode::Protocol,
            message: "WebSocket frame sets reserved bits but no extension was agreed",
        });
    }
    let is_control = matches!(header.opcode, OpCode::Control(_));
    if is_control && (!header.is_final || payload_len > MAX_CONTROL_PAYLOAD) {
        return Err(FrameViolation {
            code: CloseCode::Protocol,
            message: "WebSocket control frame is fragmented or longer than 125 bytes",
        });
    }
    Ok(())
}

/// Unmasks a client payload (RFC 6455 section 5.3).
fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let state = &mut this.state;
            if state.payload_pos < state.payload.len() {
                let available = &state.payload[state.payload_pos..];
                let count = available.len().min(buf.len());
                buf[..count].copy_from_slice(&available[..count]);
                state.payload_pos += count;
                return Poll::Ready(Ok(count));
            }

            // Pongs and close replies go out even when the caller only reads.
            // A write that would block is retried on the next poll.
            if let Poll::Ready(Err(error)) = this.poll_flush_output(cx) {
                return Poll::Ready(Err(error));
            }
            if this.state.close_received {
                return Poll::Ready(Ok(0));
            }
            if this.state.output.len() - this.state.output_pos > MAX_PENDING_OUTPUT {
                return Poll::Pending;
            }

            match this.process_one_frame() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(violation) => {
                    this.queue_close(violation.code, violation.message);
                    this.state.close_received = true;
                    let _ = this.poll_flush_output(cx);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        violation.message,
                    )));
                }
            }

            this.compact_input();
            let mut chunk = [0u8; READ_CHUNK];
            let read = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if read == 0 {
                let state = &this.state;
                if state.input.len() > state.input_pos || state.in_message {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a WebSocket frame",
                    )));
                }
                return Poll::Ready(Ok(0));
            }
            this.state.input.extend_from_slice(&chunk[..read]);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.close_sent || this.state.close_received {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "WebSocket connection is closing",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.state.output.len() - this.state.output_pos > MAX_PENDING_OUTPUT {
            ready!(this.poll_flush_output(cx))?;
        }

        let count = buf.len().min(this.state.max_frame_bytes);
        let frame = Frame::message(buf[..count].to_vec(), OpCode::Data(Data::Binary), true);
        this.queue_frame(frame);

        // The bytes count as written once queued, and poll_flush finishes
        // the write.
        if let Poll::Ready(Err(error)) = this.poll_flush_output(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(count))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_output(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_close(CloseCode::Normal, "");
        ready!(this.poll_flush_output(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_support::{connect, run_pair};
    use std::io::{Read, Write};
    use std::net::TcpStream as StdTcpStream;
    use tungstenite::client::IntoClientRequest;
    use tungstenite::Message;

    fn ws_client(port: u16, subprotocols: Option<&str>) -> tungstenite::WebSocket<StdTcpStream> {
        let url = format!("ws://127.0.0.1:{port}/mqtt");
        let mut request = url.into_client_request().expect("valid request");
        if let Some(names) = subprotocols {
            let value = names.parse().expect("valid header value");
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", value);
        }
        let (socket, _response) = tungstenite::client(request, connect(port)).expect("handshake");
        socket
    }

    /// Sends a raw HTTP request and returns everything the server sent back
    /// before closing.
    fn raw_exchange(port: u16, request: &str) -> String {
        let mut stream = connect(port);
        stream.write_all(request.as_bytes()).expect("send request");
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    }

    fn upgrade_request(path: &str, extra_headers: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
        )
    }

    fn masked_binary_frame(payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        assert!(payload.len() < 126, "helper only formats short frames");
        let mut frame = vec![0x82, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn expect_close_code(socket: &mut tungstenite::WebSocket<StdTcpStream>, code: CloseCode) {
        loop {
            match socket.read() {
                Ok(Message::Close(Some(frame))) => {
                    assert_eq!(frame.code, code);
                    return;
                }
                Ok(Message::Close(None)) => panic!("close frame without a code"),
                Ok(_) => continue,
                Err(error) => panic!("connection ended without a close frame: {error}"),
            }
        }
    }

    #[test]
    fn packets_split_and_joined_across_frames() {
        let first = [0x30u8, 0x05, 0x00, 0x01, b'a', b'x', b'y'];
        let second = [0xC0u8, 0x00];
        let third = [0xE0u8, 0x00];
        let mut expected = Vec::new();
        expected.extend_from_slice(&first);
        expected.extend_from_slice(&second);
        expected.extend_from_slice(&third);
        let expected_for_client = expected.clone();

        let received = run_pair(
            move |port| {
                let mut socket = ws_client(port, Some("mqtt"));
                // The first packet spans three frames of one fragmented message.
                let parts = [
                    Frame::message(first[..2].to_vec(), OpCode::Data(Data::Binary), false),
                    Frame::message(first[2..5].to_vec(), OpCode::Data(Data::Continue), false),
                    Frame::message(first[5..].to_vec(), OpCode::Data(Data::Continue), true),
                ];
                for part in parts {
                    socket.write(Message::Frame(part)).expect("send fragment");
                }
                // The second and third packets share one frame.
                let both = [&second[..], &third[..]].concat();
                socket
                    .send(Message::Binary(both.into()))
                    .expect("send frame");

                let mut echoed = Vec::new();
                while echoed.len() < expected_for_client.len() {
                    match socket.read().expect("read echo") {
                        Message::Binary(bytes) => echoed.extend_from_slice(&bytes),
                        other => panic!("unexpected message {other:?}"),
                    }
                }
                assert_eq!(echoed, expected_for_client);
                socket.close(None).expect("close");
                while socket.read().is_ok() {}
            },
            |socket| async move {
                let mut stream = accept_ws(socket, &WsConfig::default())
                    .await
                    .expect("upgrade");
                assert_eq!(stream.subprotocol(), Some("mqtt"));
                let mut received = vec![0u8; expected.len()];
                stream
                    .read_exact(&mut received)
                    .await
                    .expect("read packets");
                stream
                    .write_all(&received[..4])
                    .await
                    .expect("echo first part");
                stream.write_all(&received[4..]).await.expect("echo rest");
                stream.flush().await.expect("flush");
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.expect("read to close");
                assert!(rest.is_empty(), "no bytes after the packets");
                received
            },
        );
        let mut expected = first.to_vec();
        expected.extend_from_slice(&second);
        expected.extend_from_slice(&third);
        assert_eq!(received, expected);
    }

    #[test]
    fn ping_gets_pong_and_close_gives_eof() {
        let eof_bytes = run_pair(
            |port| {
                let mut socket = ws_client(port, Some("mqtt"));
                socket
                    .send(Message::Ping(b"hi".to_vec().into()))
                    .expect("ping");
                match socket.read().expect("read pong") {
                    Message::Pong(payload) => assert_eq!(&payload[..], b"hi"),
                    other => panic!("expected pong, got {other:?}"),
                }
                socket.close(None).expect("close");
                expect_close_code(&mut socket, CloseCode::Normal);
            },
            |socket| async move {
                let mut stream = accept_ws(socket, &WsConfig::default())
                    .await
                    .expect("upgrade");
                let mut rest = Vec::new();
                stream
                    .read_to_end(&mut rest)
                    .await
                    .expect("EOF after close");
                rest.len()
            },
        );
        assert_eq!(eof_bytes, 0);
    }

    #[test]
    fn text_frame_rejected_with_1003() {
        let error = run_pair(
            |port| {
                let mut socket = ws_client(port, Some("mqtt"));
                socket
                    .send(Message::Text("hello".into()))
                    .expect("send text");
                expect_close_code(&mut socket, CloseCode::Unsupported);
            },
            |socket| async move {
                let mut stream = accept_ws(socket, &WsConfig::default())
                    .await
                    .expect("upgrade");
                let mut buf = [0u8; 16];
                stream
                    .read(&mut buf)
                    .await
                    .expect_err("text frame must fail the read")
            },
        );
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("text frames"), "{error}");
    }

    #[test]
    fn unmasked_frame_rejected_with_1002() {
        let error = run_pair(
            |port| {
                let mut socket = ws_client(port, None);
                socket
                    .get_mut()
                    .write_all(&[0x82, 0x01, 0xAA])
                    .expect("raw frame");
                expect_close_code(&mut socket, CloseCode::Protocol);
            },
            |socket| async move {
                let mut stream = accept_ws(socket, &WsConfig::default())
                    .await
                    .expect("upgrade");
                let mut buf = [0u8; 16];
                stream
                    .read(&mut buf)
                    .await
                    .expect_err("unmasked frame must fail")
            },
        );
        assert!(error.to_string().contains("unmasked"), "{error}");
    }

    #[test]
    fn oversized_frame_closed_with_1009() {
        let config = WsConfig {
            max_frame_bytes: 16,
            ..WsConfig::default()
        };
        let error = run_pair(
            |port| {
                let mut socket = ws_client(port, Some("mqtt"));
                socket
                    .send(Message::Binary(vec![7u8; 100].into()))
                    .expect("send");
                expect_close_code(&mut socket, CloseCode::Size);
            },
            |socket| async move {
                let mut stream = accept_ws(socket, &config).await.expect("upgrade");
                let mut buf = [0u8; 128];
                stream
                    .read(&mut buf)
                    .await
                    .expect_err("oversized frame must fail")
            },
        );
        assert!(error.to_string().contains("maximum frame size"), "{error}");
    }

    #[test]
    fn subprotocol_negotiation() {
        let cases: [(Option<&'static str>, Option<&'static str>); 4] = [
            (None, None),
            (Some("mqtt"), Some("mqtt")),
            (Some("mqttv3.1"), Some("mqttv3.1")),
            (Some("wamp, mqtt"), Some("mqtt")),
        ];
        for (offered, expected) in cases {
            let agreed = run_pair(
                move |port| {
                    let mut socket = ws_client(port, offered);
                    socket.close(None).expect("close");
                    while socket.read().is_ok() {}
                },
                |socket| async move {
                    let stream = accept_ws(socket, &WsConfig::default())
                        .await
                        .expect("upgrade");
                    stream.subprotocol()
                },
            );
            assert_eq!(agreed, expected, "offered {offered:?}");
        }
    }

    #[test]
    fn unsupported_subprotocol_gets_400() {
        let (error, response) = run_pair_with_response(
            upgrade_request("/mqtt", "Sec-WebSocket-Protocol: wamp\r\n"),
            WsConfig::default(),
        );
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(response.contains("accepted: mqtt, mqttv3.1"), "{response}");
        assert!(
            matches!(error, WsError::Rejected { status: 400, .. }),
            "{error}"
        );
    }

    #[test]
    fn wrong_path_gets_404() {
        let (error, response) =
            run_pair_with_response(upgrade_request("/other", ""), WsConfig::default());
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        assert!(response.contains("served at /mqtt"), "{response}");
        assert!(
            matches!(error, WsError::Rejected { status: 404, .. }),
            "{error}"
        );
    }

    #[test]
    fn wrong_version_gets_426() {
        let request = upgrade_request("/mqtt", "").replace("Version: 13", "Version: 8");
        let (error, response) = run_pair_with_response(request, WsConfig::default());
        assert!(response.starts_with("HTTP/1.1 426"), "{response}");
        assert!(response.contains("Sec-WebSocket-Version: 13"), "{response}");
        assert!(
            matches!(error, WsError::Rejected { status: 426, .. }),
            "{error}"
        );
    }

    #[test]
    fn plain_http_request_gets_400() {
        let request = "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_string();
        let (error, response) = run_pair_with_response(request, WsConfig::default());
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(
            matches!(error, WsError::Rejected { status: 400, .. }),
            "{error}"
        );
    }

    #[test]
    fn oversized_request_head_gets_431() {
        let config = WsConfig {
            max_header_bytes: 256,
            ..WsConfig::default()
        };
        let padding = format!("X-Padding: {}\r\n", "a".repeat(600));
        let (error, response) = run_pair_with_response(upgrade_request("/mqtt", &padding), config);
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
        assert!(
            matches!(error, WsError::Rejected { status: 431, .. }),
            "{error}"
        );
    }

    fn run_pair_with_response(request: String, config: WsConfig) -> (WsError, String) {
        let (sender, receiver) = std::sync::mpsc::channel();
        let error = run_pair(
            move |port| {
                let response = raw_exchange(port, &request);
                sender.send(response).expect("send response to test");
            },
            |socket| async move {
                match accept_ws(socket, &config).await {
                    Ok(_) => panic!("upgrade must be rejected"),
                    Err(error) => error,
                }
            },
        );
        let response = receiver.recv().expect("client sent the response");
        (error, response)
    }

    #[test]
    fn silent_client_times_out() {
        let config = WsConfig {
            handshake_timeout: Duration::from_millis(100),
            ..WsConfig::default()
        };
        let error = run_pair(
            |port| {
                let mut stream = connect(port);
                let mut buf = [0u8; 16];
                // The server drops the connection after its timeout.
                let read = stream.read(&mut buf).expect("read until close");
                assert_eq!(read, 0);
            },
            |socket| async move {
                match accept_ws(socket, &config).await {
                    Ok(_) => panic!("a silent client must not be upgraded"),
                    Err(error) => error,
                }
            },
        );
        assert!(matches!(error, WsError::HandshakeTimeout(_)), "{error}");
    }

    #[test]
    fn frame_sent_with_request_is_kept() {
        let payload = b"\x10\x02\x00\x00".to_vec();
        let frame = masked_binary_frame(&payload);
        let received = run_pair(
            move |port| {
                let mut stream = connect(port);
                let mut bytes = upgrade_request("/mqtt", "").into_bytes();
                bytes.extend_from_slice(&frame);
                stream.write_all(&bytes).expect("send request and frame");
                let mut response = [0u8; 1024];
                let read = stream.read(&mut response).expect("read 101");
                let head = String::from_utf8_lossy(&response[..read]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            },
            |socket| async move {
                let mut stream = accept_ws(socket, &WsConfig::default())
                    .await
                    .expect("upgrade");
                let mut received = vec![0u8; 4];
                stream.read_exact(&mut received).await.expect("read frame");
                received
            },
        );
        assert_eq!(received, payload);
    }

    #[test]
    fn handoff_keeps_buffered_bytes() {
        fn assert_send<T: Send>() {}
        assert_send::<WsHandoff>();

        let payload: Vec<u8> = (0u8..10).collect();
        let expected = payload.clone();
        let (first, rest, buffered) = run_pair(
            move |port| {
                let mut socket = ws_client(port, Some("mqtt"));
                socket.send(Message::Binary(payload.into())).expect("send");
                socket.close(None).expect("close");
                while socket.read().is_ok() {}
            },
            |socket| async move {
                let mut stream = accept_ws(socket, &WsConfig::default())
                    .await
                    .expect("upgrade");
                let mut first = vec![0u8; 3];
                stream.read_exact(&mut first).await.expect("read start");

                let (socket, handoff) = stream.into_parts();
                let buffered = handoff.buffered_input_len();
                let mut stream = WsStream::from_parts(socket, handoff);

                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.expect("read rest");
                (first, rest, buffered)
            },
        );
        assert!(buffered >= 7, "buffered {buffered}");
        assert_eq!(first, expected[..3]);
        assert_eq!(rest, expected[3..]);
    }
}

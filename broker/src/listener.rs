//! The byte stream under an MQTT connection, whatever the listener's
//! transport, and what a shard needs to hand it over to another shard.

use std::any::Any;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use thiserror::Error;

use crate::config::{
    ListenerConfig, ListenerProtocol, DEFAULT_HANDSHAKE_TIMEOUT_SECS, DEFAULT_WS_PATH,
};
use crate::transport::readiness::Registration;
use crate::transport::tcp::{SharedTcpStream, TcpConn};
use crate::transport::tls::{accept_tls, TlsConfig, TlsError, TlsHandoff, TlsStream};
use crate::transport::ws::{accept_ws, WsConfig, WsError, WsHandoff, WsStream};

/// Per-listener settings that every shard uses to serve the listener's connections.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub protocol: ListenerProtocol,
    /// Steps that turn an accepted TCP connection into an MQTT byte stream.
    pub handshake: Handshake,
    /// Replaces the CONNECT user name by the client certificate's Common Name.
    pub use_cn_as_username: bool,
}

/// The handshakes a listener runs on each new connection before MQTT.
#[derive(Clone, Debug)]
pub enum Handshake {
    /// Plain TCP: none.
    None,
    /// A TLS handshake with the listener's shared rustls settings.
    Tls {
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
    },
    /// A WebSocket upgrade; its timeout is part of `WsConfig`.
    WebSocket(WsConfig),
    /// A TLS handshake, then a WebSocket upgrade, each with its own timeout.
    TlsWebSocket {
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
        websocket: WsConfig,
    },
}

impl Endpoint {
    /// Loads the certificate files of `listener` and builds its settings.
    /// `max_packet_size` bounds the WebSocket frames the listener accepts.
    ///
    /// # Errors
    ///
    /// Returns the [`TlsError`] that names the certificate file that is
    /// missing or invalid.
    pub fn new(listener: &ListenerConfig, max_packet_size: u32) -> Result<Endpoint, TlsError> {
        let protocol = listener.protocol;
        let timeout = Duration::from_secs(
            listener
                .handshake_timeout
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_SECS),
        );

        let tls = || {
            let settings = TlsConfig {
                cert_path: listener.cert_file.clone().unwrap_or_default(),
                key_path: listener.key_file.clone().unwrap_or_default(),
                client_ca_path: listener.client_ca_file.clone(),
                require_client_cert: listener.require_client_cert.unwrap_or(false),
            };
            settings.server_config()
        };
        let websocket = || {
            let defaults = WsConfig::default();
            WsConfig {
                path: listener
                    .path
                    .clone()
                    .unwrap_or_else(|| DEFAULT_WS_PATH.to_owned()),
                handshake_timeout: timeout,
                // A client may send a whole packet of the largest size the
                // broker accepts in one frame.
                max_frame_bytes: defaults.max_frame_bytes.max(max_packet_size as usize),
                ..defaults
            }
        };

        let handshake = match protocol {
            ListenerProtocol::Tcp => Handshake::None,
            ListenerProtocol::Tls => Handshake::Tls {
                config: tls()?,
                timeout,
            },
            ListenerProtocol::Ws => Handshake::WebSocket(websocket()),
            ListenerProtocol::Wss => Handshake::TlsWebSocket {
                config: tls()?,
                timeout,
                websocket: websocket(),
            },
        };
        Ok(Endpoint {
            protocol,
            handshake,
            use_cn_as_username: listener.use_cn_as_username.unwrap_or(false),
        })
    }
}

/// A failed TLS handshake or WebSocket upgrade of a new connection.
#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    WebSocket(#[from] WsError),
}

type TlsTcpStream = TlsStream<SharedTcpStream>;

/// A connection's byte stream.
pub enum Transport {
    Tcp(TcpConn),
    Tls(Box<TlsTcpStream>),
    Ws(Box<WsStream<SharedTcpStream>>),
    Wss(Box<WsStream<TlsTcpStream>>),
}

/// Transport state that travels with a connection handed to another shard,
/// beside the socket itself: the TLS session and the WebSocket buffers.
pub enum TransportState {
    Tcp,
    Tls(TlsHandoff),
    Ws(WsHandoff),
    Wss(TlsHandoff, WsHandoff),
}

impl Transport {
    /// Returns the socket's place in the shard's readiness set when MQTT
    /// bytes come straight from it: plain TCP, not TLS or WebSocket.
    pub fn readiness(&self) -> Option<&Registration> {
        match self {
            Transport::Tcp(conn) => conn.registration(),
            _ => None,
        }
    }

    /// Runs the TLS handshake and the WebSocket upgrade that `endpoint`
    /// calls for on a newly accepted TCP connection. A `tcp` endpoint
    /// returns the stream unchanged.
    ///
    /// # Errors
    ///
    /// Returns the failed step. The client has been sent a TLS alert or an
    /// HTTP error response where the protocol has one.
    pub async fn accept(stream: TcpConn, endpoint: &Endpoint) -> Result<Transport, HandshakeError> {
        // Small MQTT packets go out at once: the writer already batches
        // its output per wake-up.
        let _ = stream.get_ref().set_nodelay(true);
        let transport = match &endpoint.handshake {
            Handshake::None => Transport::Tcp(stream),
            Handshake::Tls { config, timeout } => {
                let socket = SharedTcpStream::new(stream);
                let tls_stream = accept_tls(socket, config.clone(), *timeout).await?;
                Transport::Tls(Box::new(tls_stream))
            }
            Handshake::WebSocket(websocket) => {
                let socket = SharedTcpStream::new(stream);
                Transport::Ws(Box::new(accept_ws(socket, websocket).await?))
            }
            Handshake::TlsWebSocket {
                config,
                timeout,
                websocket,
            } => {
                let socket = SharedTcpStream::new(stream);
                let tls_stream = accept_tls(socket, config.clone(), *timeout).await?;
                Transport::Wss(Box::new(accept_ws(tls_stream, websocket).await?))
            }
        };
        Ok(transport)
    }

    /// Returns the Common Name of the client certificate, when the client
    /// authenticated with one over TLS.
    pub fn peer_common_name(&self) -> Option<String> {
        match self {
            Transport::Tcp(_) | Transport::Ws(_) => None,
            Transport::Tls(stream) => stream.peer_common_name(),
            Transport::Wss(stream) => stream.get_ref().peer_common_name(),
        }
    }

    /// Takes the stream apart for a handoff: a duplicate of the socket's
    /// descriptor (the caller's copy closes when the stream drops) and the
    /// transport's state.
    ///
    /// # Errors
    ///
    /// Returns the OS error when the descriptor cannot be duplicated.
    pub fn into_handoff(self) -> io::Result<(RawFd, Box<dyn Any + Send>)> {
        let (fd, state) = match self {
            Transport::Tcp(stream) => (duplicate_fd(&stream)?, TransportState::Tcp),
            Transport::Tls(stream) => {
                let (socket, tls) = stream.into_parts();
                (duplicate_fd(&socket)?, TransportState::Tls(tls))
            }
            Transport::Ws(stream) => {
                let (socket, websocket) = stream.into_parts();
                (duplicate_fd(&socket)?, TransportState::Ws(websocket))
            }
            Transport::Wss(stream) => {
                let (tls_stream, websocket) = stream.into_parts();
                let (socket, tls) = tls_stream.into_parts();
                (duplicate_fd(&socket)?, TransportState::Wss(tls, websocket))
            }
        };
        // The original descriptor closes here, with the stream that owned it.
        Ok((fd, Box::new(state)))
    }

    /// Rebuilds a stream handed over by another shard.
    ///
    /// # Safety
    ///
    /// `fd` must be an open socket descriptor that nothing else owns.
    pub unsafe fn from_handoff(fd: RawFd, state: Option<Box<dyn Any + Send>>) -> Transport {
        // SAFETY: the caller guarantees `fd` is an open socket we own.
        let stream = TcpConn::new(unsafe { TcpStream::from_raw_fd(fd) });
        let state = state
            .and_then(|state| state.downcast::<TransportState>().ok())
            .map(|state| *state);
        match state {
            Some(TransportState::Tcp) | None => Transport::Tcp(stream),
            Some(TransportState::Tls(tls)) => {
                let socket = SharedTcpStream::new(stream);
                Transport::Tls(Box::new(TlsStream::from_parts(socket, tls)))
            }
            Some(TransportState::Ws(websocket)) => {
                let socket = SharedTcpStream::new(stream);
                Transport::Ws(Box::new(WsStream::from_parts(socket, websocket)))
            }
            Some(TransportState::Wss(tls, websocket)) => {
                let tls_stream = TlsStream::from_parts(SharedTcpStream::new(stream), tls);
                Transport::Wss(Box::new(WsStream::from_parts(tls_stream, websocket)))
            }
        }
    }
}

/// Duplicates the descriptor of `socket`, which stays open.
fn duplicate_fd(socket: &impl AsRawFd) -> io::Result<RawFd> {
    // SAFETY: the descriptor is open because it belongs to a stream that the
    // caller still owns. dup returns a new descriptor for the same socket or -1.
    let duplicate = unsafe { libc::dup(socket.as_raw_fd()) };
    if duplicate < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(duplicate)
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Transport::Ws(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            Transport::Wss(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Transport::Ws(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            Transport::Wss(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Transport::Ws(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            Transport::Wss(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(stream) => Pin::new(stream).poll_close(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
            Transport::Ws(stream) => Pin::new(stream.as_mut()).poll_close(cx),
            Transport::Wss(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

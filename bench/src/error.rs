//! Errors of the bench.

use std::io;

use coremq_codec::{DecodeError, ReasonCode};
use thiserror::Error;

/// A failure that stops a connection or the whole run.
#[derive(Debug, Error)]
pub enum BenchError {
    /// A command line value is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// A socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The broker sent bytes that the codec rejects.
    #[error("invalid packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// The broker rejected CONNECT with a failure reason code in CONNACK.
    #[error("CONNECT rejected with reason code 0x{:02X}", .0 .0)]
    ConnectRejected(ReasonCode),
    /// The broker sent DISCONNECT.
    #[error("broker sent DISCONNECT with reason code 0x{:02X}", .0 .0)]
    Disconnected(ReasonCode),
    /// The broker rejected a subscription.
    #[error("SUBSCRIBE to {filter} rejected with reason code 0x{:02X}", .reason.0)]
    SubscribeRejected { filter: String, reason: ReasonCode },
    /// The broker sent a packet that the client did not expect at this point.
    #[error("unexpected {0} from the broker")]
    UnexpectedPacket(&'static str),
    /// The broker sent no expected packet in time.
    #[error("timed out waiting for {0}")]
    TimedOut(&'static str),
    /// The WebSocket handshake or framing failed.
    #[error("WebSocket error: {0}")]
    WebSocket(String),
    /// A bench thread or process could not be started or failed.
    #[error("{0}")]
    Runtime(String),
}

//! Byte-stream transports that wrap an accepted TCP connection before the
//! MQTT codec sees it: WebSocket (`ws`) and TLS (`tls`).
//!
//! Each wrapper is generic over an inner stream `S: AsyncRead + AsyncWrite +
//! Unpin` and implements the same traits, so the connection handler runs
//! unchanged over TCP, TLS, WebSocket or WebSocket over TLS. Both run on the
//! shard's glommio executor and must never block it: they only call the inner
//! stream's poll functions and keep their state in plain buffers, which also
//! lets a connection be taken apart and handed to another shard.

pub mod tls;
pub mod ws;

//! CoreMQ, a thread-per-core MQTT 5.0 broker.
//!
//! This crate is the process around the shard engine (`coremq-shard`): the
//! configuration and command line, start-up of one pinned glommio executor
//! per shard, the listeners, and the I/O of each connection. Everything
//! that decides what happens to a packet lives in the engine; this crate
//! only moves bytes between sockets and the engine, and never blocks a
//! shard's thread.

pub mod admission;
pub mod auth;
pub mod config;
pub mod connection;
pub mod linger;
pub mod listener;
pub mod login;
pub mod server;
pub mod transport;

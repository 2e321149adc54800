//! Harness for the black-box tests of CoreMQ.
//!
//! Each test starts its own `coremq` process on a free loopback port
//! ([`Broker`]), talks to it over real sockets with exact bytes
//! ([`RawClient`]) or with the rumqttc v5 client ([`real_client`]), and
//! kills the process when it ends. Tests may run in parallel.

pub mod broker;
pub mod packets;
pub mod raw;
pub mod real_client;

pub use broker::Broker;
pub use raw::{from_hex, to_hex, AckKind, RawClient, RecvError};

pub use coremq_codec::{
    ConnAck, Connect, Disconnect, Packet, Properties, Protocol, PubResponse, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions, Will,
};

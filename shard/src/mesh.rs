//! Messages exchanged between shards over the channel mesh.

use std::any::Any;
use std::net::SocketAddr;
use std::os::unix::io::RawFd;
use std::sync::Arc;

use crate::message::Publication;

/// Index of a shard in the channel mesh, `0..shards`.
pub type ShardId = usize;

/// Completion signal a shard sends back once it applied a message, so that
/// the sender can answer its client only after every shard agrees.
pub type Ack = futures_channel::oneshot::Sender<()>;

/// A connection accepted on one shard and moved to the shard that owns its
/// session: the socket and the bytes already read from it.
pub struct Handoff {
    /// Owned socket descriptor; the receiver closes it.
    pub fd: RawFd,
    /// Bytes read before the handoff, starting with the CONNECT packet.
    pub buffered: Vec<u8>,
    pub peer: SocketAddr,
    /// Index of the listener that accepted the connection.
    pub listener: usize,
    /// Client identifier the accepting shard assigned, when the client sent
    /// an empty one.
    pub assigned_client_id: Option<String>,
    /// State of the transport above the socket (TLS session, WebSocket
    /// framing), opaque to the engine.
    pub transport: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("fd", &self.fd)
            .field("buffered", &self.buffered.len())
            .field("peer", &self.peer)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// One message on the shard mesh.
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver to the receiving shard's matching sessions.
    Publish(Arc<Publication>),
    /// Deliver, in order, publications from one client on one topic at
    /// one QoS, neither retained nor logged, to the receiving shard's
    /// matching sessions, matching the topic once.
    PublishRun(Vec<Arc<Publication>>),
    /// Deliver to one member of the shared subscription `share`
    /// (`$share/group/filter`) on the receiving shard.
    SharedPublish {
        publication: Arc<Publication>,
        share: Arc<str>,
        /// Times the message was passed on because the chosen shard had no
        /// member left; bounded so a message cannot circle forever.
        hops: u8,
        /// For a logged message: sent once the chosen member's stored
        /// record lists it, so the publisher's acknowledgement waits for
        /// the group's choice to be durable.
        ack: Option<Ack>,
    },
    /// Shard `shard` gained (`add`) or lost its first/last subscriber on
    /// `filter` (for a shared subscription, `$share/group/filter`).
    Interest {
        filter: Arc<str>,
        shard: ShardId,
        add: bool,
        ack: Option<Ack>,
    },
    /// Store (or, with an empty payload, clear) a retained message.
    Retain {
        publication: Arc<Publication>,
        ack: Option<Ack>,
    },
    /// Take over a connection whose session this shard owns.
    Handoff(Handoff),
}

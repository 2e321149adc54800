//! The shard engine: connects sessions, handles each packet a client sends,
//! and routes publications to local sessions and to other shards.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coremq_codec::topic;
use coremq_codec::{
    ConnAck, Connect, Packet, PacketId, Properties, Protocol, PubResponse, Publish, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use tracing::{debug, error, info, warn};

use crate::authorize::{Access, Authorizer, DenialLog};
use crate::conn::{CloseRequest, Conn};
use crate::mesh::{ShardId, ShardMsg};
use crate::message::{Delivery, Publication};
use crate::persist::{self, Persistence};
use crate::retained::RetainedStore;
use crate::session::{pubresp, FrameCache, RunFrames, Session, Subscription};
use crate::trie::FilterTrie;
use crate::Limits;
use packets::{PendingAck, PublishStep};
use sessions::{SessionHint, SessionTable};

mod durability;
mod lifecycle;
mod packets;
mod routing;
pub(crate) mod sessions;
mod subscriptions;

/// Hops a shared-subscription message may take between shards looking for
/// a member before it is dropped.
const MAX_SHARED_HOPS: u8 = 2;

/// Result of [`Shard::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOutcome {
    /// CONNACK reason code; the connection closes when it is an error.
    pub reason: ReasonCode,
    pub session_present: bool,
    /// Keep alive the server enforces, in seconds (0: none).
    pub keep_alive: u16,
}

/// Handle to the engine of one shard; cheap to clone, single-threaded.
#[derive(Clone)]
pub struct Shard {
    state: Rc<RefCell<ShardState>>,
    mesh: Rc<Senders<ShardMsg>>,
    /// One session-record write at a time per shard. The store runs writes
    /// on several threads and retries them during an outage, so two writes
    /// of one session in flight together could land in either order and
    /// leave the older record stored.
    session_writes: Rc<glommio::sync::Semaphore>,
}

/// A subscription in the shard's filter trie, with the slot where
/// routing last found its session.
struct Route {
    subscription: Subscription,
    session: Cell<SessionHint>,
}

impl Route {
    fn new(subscription: Subscription) -> Route {
        Route {
            subscription,
            session: Cell::default(),
        }
    }
}

struct ShardState {
    id: ShardId,
    shards: usize,
    limits: Limits,
    /// Sessions by client identifier.
    sessions: SessionTable,
    /// Subscriptions of local sessions: filter -> client id -> options.
    subscriptions: FilterTrie<Arc<str>, Route>,
    /// Local members of each shared subscription, by `$share/group/filter`.
    shared_groups: HashMap<Arc<str>, SharedGroup>,
    /// Local subscriber count per filter, to announce the first and last.
    local_filters: HashMap<Arc<str>, usize>,
    /// Which shards have subscribers: filter -> shard -> ().
    interest: FilterTrie<ShardId, ()>,
    /// Which shards have shared-subscription members: filter ->
    /// (share, shard) -> member count on that shard.
    shared_interest: FilterTrie<(Arc<str>, ShardId), ()>,
    /// Round-robin position per shared subscription on the publishing side.
    shared_cursor: HashMap<Arc<str>, usize>,
    retained: RetainedStore,
    /// The store, when the broker runs with one.
    persistence: Option<Persistence>,
    /// Sessions whose stored record is out of date, for the flusher.
    journal: Rc<RefCell<Vec<Arc<str>>>>,
    /// Weak self reference for timers spawned by the engine.
    this: Weak<RefCell<ShardState>>,
    /// ACL shared read-only by every shard; `None` allows everything.
    authorizer: Option<Arc<dyn Authorizer>>,
    denials: DenialLog,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Arc<str>>,
    next: usize,
}

/// Mesh messages and store writes produced while the state was borrowed,
/// carried out afterwards.
#[derive(Default)]
struct Outbox {
    messages: Vec<(ShardId, ShardMsg)>,
    acks: Vec<oneshot::Receiver<()>>,
    store: Vec<StoreOp>,
    /// Persistent sessions whose records must be stored before the
    /// acknowledgement that waits for this outbox.
    records: Vec<Arc<str>>,
    /// Acknowledgements owed to other shards once the rest is done.
    done: Vec<crate::mesh::Ack>,
}

/// A store write that must finish before the client's acknowledgement.
enum StoreOp {
    PutRetained(coremq_wal::Message),
    DeleteRetained(String),
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.acks.is_empty()
            && self.store.is_empty()
            && self.records.is_empty()
            && self.done.is_empty()
    }

    fn send(&mut self, shard: ShardId, msg: ShardMsg) {
        self.messages.push((shard, msg));
    }

    fn ack(&mut self) -> crate::mesh::Ack {
        let (sender, receiver) = oneshot::channel();
        self.acks.push(receiver);
        sender
    }
}

/// Returns true when `next` may be routed in one run with `first` (see
/// [`ShardState::route_run`]): both on the same topic at the same QoS,
/// neither retained nor in the log.
fn joins_run(first: &Publication, next: &Publication) -> bool {
    let plain = |p: &Publication| !p.retain && p.log_offset.is_none();
    plain(first) && plain(next) && first.qos == next.qos && first.topic == next.topic
}

/// What the connection must do after a packet was handled.
type HandleResult = Result<(), CloseRequest>;

/// The outcome of [`Shard::publish_now`] for a batch of PUBLISH packets.
pub enum PublishNow {
    /// Handled in full, with this result.
    Done(Result<(), CloseRequest>),
    /// Routed, with the rest of the work and the replies left in this future.
    Rest(std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CloseRequest>>>>),
    /// Untouched, because it needs the log or the store: pass it to
    /// `handle_publishes`.
    Later(Vec<Publish>),
}

fn close_with(reason: ReasonCode) -> CloseRequest {
    CloseRequest {
        reason: Some(reason),
    }
}

impl Shard {
    /// Creates the engine of shard `senders.peer_id()`.
    pub fn new(
        senders: Senders<ShardMsg>,
        limits: Limits,
        persistence: Option<Persistence>,
    ) -> Shard {
        let id = senders.peer_id();
        let shards = senders.nr_consumers();
        let state = Rc::new_cyclic(|this| {
            RefCell::new(ShardState {
                id,
                shards,
                limits,
                sessions: SessionTable::default(),
                subscriptions: FilterTrie::new(),
                shared_groups: HashMap::new(),
                local_filters: HashMap::new(),
                interest: FilterTrie::new(),
                shared_interest: FilterTrie::new(),
                shared_cursor: HashMap::new(),
                retained: RetainedStore::default(),
                persistence,
                journal: Rc::new(RefCell::new(Vec::new())),
                this: this.clone(),
                authorizer: None,
                denials: DenialLog::default(),
            })
        });
        Shard {
            state,
            mesh: Rc::new(senders),
            session_writes: Rc::new(glommio::sync::Semaphore::new(1)),
        }
    }

    pub fn id(&self) -> ShardId {
        self.state.borrow().id
    }

    pub fn shards(&self) -> usize {
        self.state.borrow().shards
    }

    pub fn limits(&self) -> Limits {
        self.state.borrow().limits.clone()
    }

    /// Installs the authorizer that checks every later PUBLISH, SUBSCRIBE
    /// filter and Will. Without one, every client may do everything.
    pub fn set_authorizer(&self, authorizer: Arc<dyn Authorizer>) {
        self.state.borrow_mut().authorizer = Some(authorizer);
    }

    /// Asks every connected client of this shard to close, with DISCONNECT
    /// 0x8B (Server shutting down) for MQTT 5.0 clients. Returns how many
    /// connections were told.
    pub fn shut_down_connections(&self) -> usize {
        let state = self.state.borrow();
        let mut count = 0;
        for session in state.sessions.values() {
            if let Some(conn) = &session.conn {
                conn.request_close(close_with(ReasonCode::SERVER_SHUTTING_DOWN));
                count += 1;
            }
        }
        count
    }

    /// Number of sessions this shard owns, connected or not.
    pub fn session_count(&self) -> usize {
        self.state.borrow().sessions.len()
    }

    /// Sends a message to another shard, waiting while its channel is full.
    pub async fn send_to(&self, shard: ShardId, msg: ShardMsg) {
        if let Err(error) = self.mesh.send_to(shard, msg).await {
            warn!(shard, %error, "shard mesh send failed");
        }
    }

    async fn flush(&self, outbox: Outbox) {
        // Callers with no acknowledgement to withhold only log a failure.
        let _stored = self.try_flush(outbox).await;
    }

    /// Carries out `outbox` and returns false when one of its store writes
    /// failed (after the store's retries), so that the caller withholds the
    /// acknowledgement that depends on it.
    async fn try_flush(&self, mut outbox: Outbox) -> bool {
        let mut stored = true;
        let persistence = self.state.borrow().persistence.clone();
        if let Some(persistence) = persistence {
            for op in outbox.store {
                let result = match op {
                    StoreOp::PutRetained(message) => persistence.store.put_retained(message).await,
                    StoreOp::DeleteRetained(topic) => {
                        persistence.store.delete_retained(topic).await
                    }
                };
                if let Err(error) = result {
                    error!(%error, "cannot store retained message");
                    stored = false;
                }
            }
            outbox.records.sort_unstable();
            outbox.records.dedup();
            for client_id in &outbox.records {
                stored &= self
                    .write_record_now(&persistence, client_id, "shared subscription's choice")
                    .await;
            }
        }
        for (shard, msg) in outbox.messages {
            self.send_to(shard, msg).await;
        }
        for ack in outbox.acks {
            // A dropped sender means the peer shard stopped; nothing to wait for.
            let _ = ack.await;
        }
        // After a failed write no acknowledgement is sent. The waiting shard
        // goes on once the sender drops, and the flusher tries the record again.
        if stored {
            for done in outbox.done {
                let _ = done.send(());
            }
        }
        stored
    }

    /// Applies a message received from another shard.
    pub fn handle_mesh_message(&self, msg: ShardMsg) {
        let mut outbox = Outbox::default();
        {
            let mut state = self.state.borrow_mut();
            let now = Instant::now();
            match msg {
                ShardMsg::Publish(publication) => {
                    state.deliver_local(&publication, now);
                }
                ShardMsg::PublishRun(run) => {
                    state.deliver_local_run(&run, now);
                }
                ShardMsg::SharedPublish {
                    publication,
                    share,
                    hops,
                    ack,
                } => state.deliver_shared(&publication, &share, hops, ack, now, &mut outbox),
                ShardMsg::Interest {
                    filter,
                    shard,
                    add,
                    ack,
                } => {
                    state.apply_interest(&filter, shard, add);
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                ShardMsg::Retain { publication, ack } => {
                    state.retained.apply(publication);
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                ShardMsg::Handoff(handoff) => {
                    // The broker intercepts handoffs before they reach the
                    // engine; one arriving here has no listener to serve it.
                    warn!(peer = %handoff.peer, "connection handoff without a handler; closing");
                    // SAFETY: the handoff owns `fd` and nothing else refers to it.
                    unsafe { libc::close(handoff.fd) };
                }
            }
        }
        if !outbox.is_empty() {
            let shard = self.clone();
            glommio::spawn_local(async move { shard.flush(outbox).await }).detach();
        }
    }

    /// Attaches a connection that sent `connect` to its session, creating,
    /// resuming or taking over the session, and writes the CONNACK.
    ///
    /// `client_id` is the identifier to use: the client's own, or the one
    /// the broker assigned to an empty identifier (`assigned` is then true).
    pub async fn connect(
        &self,
        conn: Rc<Conn>,
        connect: Connect,
        client_id: Arc<str>,
        assigned: bool,
    ) -> ConnectOutcome {
        let mut outbox = Outbox::default();
        let outcome =
            self.state
                .borrow_mut()
                .connect(conn, connect, client_id, assigned, &mut outbox);
        self.flush(outbox).await;
        outcome
    }

    /// Handles one packet from a connected client. An `Err` asks the caller
    /// to close the connection (after a DISCONNECT with the given reason).
    pub async fn handle_packet(
        &self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        packet: Packet,
    ) -> HandleResult {
        match packet {
            Packet::Publish(publish) => self.handle_publishes(conn, client_id, vec![publish]).await,
            Packet::Subscribe(subscribe) => self.handle_subscribe(conn, client_id, subscribe).await,
            Packet::Unsubscribe(unsubscribe) => {
                let mut outbox = Outbox::default();
                let unsuback =
                    self.state
                        .borrow_mut()
                        .unsubscribe(conn, client_id, unsubscribe, &mut outbox);
                self.flush(outbox).await;
                if let Some(unsuback) = unsuback {
                    // As with SUBACK: a crash right after the UNSUBACK must
                    // not bring the subscription back.
                    self.persist_session_now(client_id, "UNSUBACK").await?;
                    conn.send(&unsuback);
                }
                Ok(())
            }
            other => {
                let reply = self
                    .state
                    .borrow_mut()
                    .handle_control(conn, client_id, other)?;
                if let Some(reply) = reply {
                    self.persist_session_now(client_id, "QoS 2 reply").await?;
                    conn.send(&reply);
                }
                Ok(())
            }
        }
    }

    /// Writes the stored record of a persistent session now, for replies
    /// that must not go out before it (SUBACK, UNSUBACK, PUBREC, PUBREL,
    /// PUBCOMP), named by `reply` in the log. When the write fails, the
    /// reply is withheld and the client is disconnected with 0x80, and it
    /// repeats the exchange after reconnecting.
    async fn persist_session_now(&self, client_id: &Arc<str>, reply: &str) -> HandleResult {
        let Some(persistence) = self.state.borrow().persistence.clone() else {
            return Ok(());
        };
        let is_persistent = self
            .state
            .borrow()
            .sessions
            .get(client_id)
            .is_some_and(|session| session.expiry_interval > 0);
        if !is_persistent {
            return Ok(());
        }
        if self.write_record_now(&persistence, client_id, reply).await {
            Ok(())
        } else {
            Err(close_with(ReasonCode::UNSPECIFIED_ERROR))
        }
    }

    /// Writes the stored record of the persistent session `client_id`, on
    /// behalf of `reply`, which must not go out before it. Returns false
    /// when the store failed. The session then stays dirty, so the flusher
    /// tries again.
    async fn write_record_now(
        &self,
        persistence: &Persistence,
        client_id: &Arc<str>,
        reply: &str,
    ) -> bool {
        // See `session_writes`: the record is built under the permit.
        let _permit = self.session_writes.acquire_permit(1).await;
        let record = match self.state.borrow_mut().sessions.get_mut(client_id) {
            Some(session) if session.expiry_interval > 0 => persist::session_record(session),
            _ => return true,
        };
        match persistence.store.put_session(record).await {
            Ok(()) => true,
            Err(error) => {
                error!(client_id = %client_id, %error, reply, "failed to store session; withholding the reply that waits for it");
                if let Some(session) = self.state.borrow_mut().sessions.get_mut(client_id) {
                    session.mark_dirty();
                }
                false
            }
        }
    }

    /// Handles the PUBLISH packets a client sent back to back, in order.
    /// The QoS 1/2 messages among them that someone may receive go into the
    /// log in one append, so they share one group commit, before any is
    /// routed. The replies go out afterwards, in the order of the packets.
    pub async fn handle_publishes(
        &self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        publishes: Vec<Publish>,
    ) -> HandleResult {
        // One clock reading serves the whole batch, unless the log append
        // waits.
        let received = Instant::now();
        let (mut steps, closing) = self.prepare_publishes(conn, client_id, publishes, received);
        let persistence = self.state.borrow().persistence.clone();
        let mut routed_at = received;
        if let Some(persistence) = persistence {
            self.append_to_log(&persistence, client_id, &mut steps)
                .await?;
            routed_at = Instant::now();
            let exactly_once = steps.iter().any(|step| {
                matches!(step, PublishStep::Route { publication, .. } if publication.qos == QoS::ExactlyOnce)
            });
            if exactly_once {
                if let Err(close) = self.persist_session_now(client_id, "QoS 2 reply").await {
                    // The messages are in the log: route them, so that the
                    // client's re-sends are acknowledged without a second copy.
                    let _ = self.route_steps(conn, steps, routed_at).await;
                    return Err(close);
                }
            }
        }

        for reply in self.route_steps(conn, steps, routed_at).await? {
            conn.send(&reply);
        }
        closing.map_or(Ok(()), Err)
    }

    /// Handles a batch of PUBLISH packets as [`Shard::handle_publishes`]
    /// does, without a future where nothing waits: when no message goes
    /// into the log or the store, the batch is checked and routed at once.
    /// What is left to wait for (messages to other shards, and the replies
    /// that follow them) comes back as a future. A batch that needs the
    /// log or the store comes back untouched, for `handle_publishes`.
    /// `received` is when the batch arrived, which sets message expiry.
    pub fn publish_now(
        &self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        publishes: Vec<Publish>,
        received: Instant,
    ) -> PublishNow {
        let logged = self.state.borrow().persistence.is_some();
        if publishes
            .iter()
            .any(|publish| publish.retain || (logged && publish.qos != QoS::AtMostOnce))
        {
            return PublishNow::Later(publishes);
        }
        let (steps, closing) = self.prepare_publishes(conn, client_id, publishes, received);
        let (outbox, replies) = self.route_now(conn, steps, received);
        let result = closing.map_or(Ok(()), Err);
        if outbox.is_empty() {
            for reply in &replies {
                conn.send(reply);
            }
            return PublishNow::Done(result);
        }
        let shard = self.clone();
        let conn = conn.clone();
        PublishNow::Rest(Box::pin(async move {
            if !shard.try_flush(outbox).await {
                return Err(close_with(ReasonCode::UNSPECIFIED_ERROR));
            }
            for reply in &replies {
                conn.send(reply);
            }
            result
        }))
    }

    /// Checks every packet of a batch before any is routed. A bad one ends
    /// the batch, but those before it are handled before the connection
    /// closes: it comes back as the second value.
    fn prepare_publishes(
        &self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        publishes: Vec<Publish>,
        now: Instant,
    ) -> (Vec<PublishStep>, Option<CloseRequest>) {
        let mut steps = Vec::with_capacity(publishes.len());
        let mut state = self.state.borrow_mut();
        for publish in publishes {
            match state.prepare_publish(conn, client_id, publish, now) {
                Ok(step) => steps.push(step),
                Err(close) => return (steps, Some(close)),
            }
        }
        (steps, None)
    }

    /// Appends the loggable messages of `steps` to the log and records
    /// their offsets. On failure no message of the batch is routed or
    /// acknowledged: the client is disconnected and re-sends them.
    async fn append_to_log(
        &self,
        persistence: &Persistence,
        client_id: &Arc<str>,
        steps: &mut [PublishStep],
    ) -> HandleResult {
        let now = Instant::now();
        let mut logged = Vec::new();
        let mut messages = Vec::new();
        {
            let state = self.state.borrow();
            for (index, step) in steps.iter().enumerate() {
                if let PublishStep::Route { publication, .. } = step {
                    if publication.qos != QoS::AtMostOnce
                        && state.has_subscribers(&publication.topic)
                    {
                        logged.push(index);
                        messages.push(persist::records::message_from_publication(publication, now));
                    }
                }
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let count = messages.len();
        match persistence.store.append(persist::LOG_QUEUE, messages).await {
            Ok(offsets) => {
                for (offset, index) in offsets.clone().zip(logged) {
                    if let PublishStep::Route { publication, .. } = &mut steps[index] {
                        publication.log_offset = Some(offset);
                    }
                }
                persistence.advance(offsets.end - 1);
                Ok(())
            }
            Err(error) => {
                error!(client_id = %client_id, %error, messages = count, "cannot append to the message log; disconnecting the publisher without acknowledging");
                let mut state = self.state.borrow_mut();
                for step in steps.iter() {
                    if let PublishStep::Route { ack, .. } = step {
                        state.forget_incoming(client_id, *ack);
                    }
                }
                Err(close_with(ReasonCode::UNSPECIFIED_ERROR))
            }
        }
    }

    /// Routes the publications of `steps` at `now` and returns the replies
    /// owed, in order, once every routing message is out. When a retained
    /// message cannot be stored, no reply is owed: the client is
    /// disconnected with 0x80 and re-sends after reconnecting.
    async fn route_steps(
        &self,
        conn: &Rc<Conn>,
        steps: Vec<PublishStep>,
        now: Instant,
    ) -> Result<Vec<Packet>, CloseRequest> {
        let (outbox, replies) = self.route_now(conn, steps, now);
        if !self.try_flush(outbox).await {
            return Err(close_with(ReasonCode::UNSPECIFIED_ERROR));
        }
        Ok(replies)
    }

    /// Routes `steps` and returns what is left to carry out, and the
    /// replies to send once it is done.
    fn route_now(
        &self,
        conn: &Rc<Conn>,
        steps: Vec<PublishStep>,
        now: Instant,
    ) -> (Outbox, Vec<Packet>) {
        let mut outbox = Outbox::default();
        let mut replies = Vec::new();
        let mut state = self.state.borrow_mut();
        let mut steps = steps.into_iter().peekable();
        // Publications and acknowledgements of the run being gathered.
        let mut run: Vec<Arc<Publication>> = Vec::new();
        let mut acks: Vec<PendingAck> = Vec::new();
        while let Some(step) = steps.next() {
            match step {
                PublishStep::Reply(reply) => replies.push(reply),
                PublishStep::Drop => {}
                PublishStep::Route {
                    publication,
                    ack,
                    retain_ack_needed,
                } => {
                    run.push(Arc::new(publication));
                    acks.push(ack);
                    while let Some(PublishStep::Route { publication, .. }) = steps.peek() {
                        if !joins_run(&run[0], publication) {
                            break;
                        }
                        let Some(PublishStep::Route {
                            publication, ack, ..
                        }) = steps.next()
                        else {
                            unreachable!("the peeked step routes");
                        };
                        run.push(Arc::new(publication));
                        acks.push(ack);
                    }
                    if run.len() == 1 {
                        replies.extend(state.finish_publish(
                            conn.protocol,
                            run.pop().expect("the run has one publication"),
                            acks.pop().expect("the run has one acknowledgement"),
                            retain_ack_needed,
                            now,
                            &mut outbox,
                        ));
                        continue;
                    }
                    let matched = state.route_run(&run, now, &mut outbox);
                    run.clear();
                    for ack in acks.drain(..) {
                        replies.extend(packets::ack_for(conn.protocol, ack, matched));
                    }
                }
            }
        }
        (outbox, replies)
    }

    async fn handle_subscribe(
        &self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        subscribe: Subscribe,
    ) -> HandleResult {
        let mut outbox = Outbox::default();
        let retained =
            self.state
                .borrow_mut()
                .subscribe(conn, client_id, subscribe, &mut outbox)?;
        // The SUBACK goes out only once every shard knows of the new
        // interest, so a publish that follows it anywhere reaches us. It
        // also waits until a persistent session's stored record includes
        // the subscription, so a crash right after the SUBACK keeps it.
        self.flush(outbox).await;
        if retained.is_some() {
            self.persist_session_now(client_id, "SUBACK").await?;
        }
        let mut state = self.state.borrow_mut();
        let limits = state.limits.clone();
        let now = Instant::now();
        if let Some((suback, deliveries)) = retained {
            conn.send(&suback);
            if let Some(session) = state.sessions.get_mut(client_id) {
                for delivery in deliveries {
                    session.offer(delivery, &limits, now, &mut FrameCache::default());
                }
            }
        }
        Ok(())
    }

    /// Sends the QoS 1 and 2 messages that the session of `client_id`
    /// held back while `conn`'s output was full. The connection's
    /// writer calls this after a write once the session held messages back.
    pub fn pump_held_back(&self, conn: &Rc<Conn>, client_id: &Arc<str>) {
        let mut state = self.state.borrow_mut();
        if let Ok(session) = state.session_mut(client_id, conn) {
            session.pump(Instant::now());
        }
    }

    /// Detaches a closed connection from its session. `will` is false when
    /// the client ended with DISCONNECT 0x00, which discards the Will.
    pub async fn disconnected(&self, conn: &Rc<Conn>, client_id: &Arc<str>, publish_will: bool) {
        let mut outbox = Outbox::default();
        self.state
            .borrow_mut()
            .disconnected(conn, client_id, publish_will, &mut outbox);
        self.flush(outbox).await;
    }
}

impl ShardState {
    /// Returns true when the authorizer (if any) lets `client_id` perform
    /// `access` on `topic`. A denial is logged, rate-limited per shard.
    fn authorize(
        &mut self,
        user: Option<&str>,
        client_id: &str,
        access: Access,
        topic: &str,
        now: Instant,
    ) -> bool {
        let Some(authorizer) = &self.authorizer else {
            return true;
        };
        if authorizer.allows(user, client_id, access, topic) {
            return true;
        }
        self.denials.record(now, client_id, access, topic);
        false
    }
}

/// Sends what a timer task produced through this thread's shard.
async fn send_outbox(outbox: Outbox) {
    if outbox.messages.is_empty() {
        return;
    }
    let shard = MESH.with(|mesh| mesh.borrow().clone());
    if let Some(shard) = shard {
        shard.flush(outbox).await;
    }
}

thread_local! {
    /// The shard engine of this executor thread, for timer tasks.
    static MESH: RefCell<Option<Shard>> = const { RefCell::new(None) };
}

impl Shard {
    /// Registers this engine as the executor thread's own, so that timers
    /// can reach the mesh. Call once per shard after [`Shard::new`].
    pub fn install(&self) {
        MESH.with(|mesh| *mesh.borrow_mut() = Some(self.clone()));
    }
}

fn will_delay(will: &Will) -> u32 {
    will.properties.will_delay_interval.unwrap_or(0)
}

fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
        QoS::AtLeastOnce => ReasonCode::GRANTED_QOS_1,
        QoS::ExactlyOnce => ReasonCode::GRANTED_QOS_2,
    }
}

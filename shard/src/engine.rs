//! The shard engine: connects sessions, handles each packet a client sends,
//! and routes publications to local sessions and to other shards.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coremq_codec::topic;
use coremq_codec::{
    ConnAck, Connect, Packet, Properties, Protocol, Publish, QoS, ReasonCode,
    RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use tracing::{debug, info, warn};

use crate::conn::{CloseRequest, Conn};
use crate::mesh::{ShardId, ShardMsg};
use crate::message::{Delivery, Publication};
use crate::retained::RetainedStore;
use crate::session::{pubresp, Session, Subscription};
use crate::trie::FilterTrie;
use crate::Limits;

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
}

struct ShardState {
    id: ShardId,
    shards: usize,
    limits: Limits,
    sessions: HashMap<Arc<str>, Session>,
    /// Subscriptions of local sessions: filter -> client id -> options.
    subscriptions: FilterTrie<Arc<str>, Subscription>,
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
    /// Weak self reference for timers spawned by the engine.
    this: Weak<RefCell<ShardState>>,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<Arc<str>>,
    next: usize,
}

/// Mesh messages produced while the state was borrowed, sent afterwards.
#[derive(Default)]
struct Outbox {
    messages: Vec<(ShardId, ShardMsg)>,
    acks: Vec<oneshot::Receiver<()>>,
}

impl Outbox {
    fn send(&mut self, shard: ShardId, msg: ShardMsg) {
        self.messages.push((shard, msg));
    }

    fn ack(&mut self) -> crate::mesh::Ack {
        let (sender, receiver) = oneshot::channel();
        self.acks.push(receiver);
        sender
    }
}

/// What the connection must do after a packet was handled.
type HandleResult = Result<(), CloseRequest>;

fn close_with(reason: ReasonCode) -> CloseRequest {
    CloseRequest {
        reason: Some(reason),
    }
}

impl Shard {
    /// Creates the engine of shard `senders.peer_id()`.
    pub fn new(senders: Senders<ShardMsg>, limits: Limits) -> Shard {
        let id = senders.peer_id();
        let shards = senders.nr_consumers();
        let state = Rc::new_cyclic(|this| {
            RefCell::new(ShardState {
                id,
                shards,
                limits,
                sessions: HashMap::new(),
                subscriptions: FilterTrie::new(),
                shared_groups: HashMap::new(),
                local_filters: HashMap::new(),
                interest: FilterTrie::new(),
                shared_interest: FilterTrie::new(),
                shared_cursor: HashMap::new(),
                retained: RetainedStore::default(),
                this: this.clone(),
            })
        });
        Shard {
            state,
            mesh: Rc::new(senders),
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
        for (shard, msg) in outbox.messages {
            self.send_to(shard, msg).await;
        }
        for ack in outbox.acks {
            // A dropped sender means the peer shard stopped; nothing to wait for.
            let _ = ack.await;
        }
    }

    /// Applies a message received from another shard.
    pub fn handle_mesh_message(&self, msg: ShardMsg) {
        let mut outbox = Outbox::default();
        {
            let mut state = self.state.borrow_mut();
            let now = Instant::now();
            match msg {
                ShardMsg::Publish(publication) => state.deliver_local(&publication, now),
                ShardMsg::SharedPublish {
                    publication,
                    share,
                    hops,
                } => state.deliver_shared(&publication, &share, hops, now, &mut outbox),
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
        if !outbox.messages.is_empty() {
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
        let outcome = self
            .state
            .borrow_mut()
            .connect(conn, connect, client_id, assigned, &mut outbox);
        self.flush(outbox).await;
        outcome
    }

    /// Handles one packet from a connected client. An `Err` asks the caller
    /// to close the connection (after a DISCONNECT with the given reason).
    pub async fn handle_packet(&self, conn: &Rc<Conn>, client_id: &Arc<str>, packet: Packet) -> HandleResult {
        match packet {
            Packet::Publish(publish) => self.handle_publish(conn, client_id, publish).await,
            Packet::Subscribe(subscribe) => self.handle_subscribe(conn, client_id, subscribe).await,
            Packet::Unsubscribe(unsubscribe) => {
                let mut outbox = Outbox::default();
                self.state
                    .borrow_mut()
                    .unsubscribe(conn, client_id, unsubscribe, &mut outbox);
                self.flush(outbox).await;
                Ok(())
            }
            other => self.state.borrow_mut().handle_control(conn, client_id, other),
        }
    }

    async fn handle_publish(&self, conn: &Rc<Conn>, client_id: &Arc<str>, publish: Publish) -> HandleResult {
        let mut outbox = Outbox::default();
        let ack = self
            .state
            .borrow_mut()
            .publish_from_client(conn, client_id, publish, &mut outbox)?;
        self.flush(outbox).await;
        if let Some(ack) = ack {
            conn.send(&ack);
        }
        Ok(())
    }

    async fn handle_subscribe(&self, conn: &Rc<Conn>, client_id: &Arc<str>, subscribe: Subscribe) -> HandleResult {
        let mut outbox = Outbox::default();
        let retained = self
            .state
            .borrow_mut()
            .subscribe(conn, client_id, subscribe, &mut outbox)?;
        // The SUBACK goes out only once every shard knows of the new
        // interest, so a publish that follows it anywhere reaches us.
        self.flush(outbox).await;
        let mut state = self.state.borrow_mut();
        let limits = state.limits.clone();
        let now = Instant::now();
        if let Some((suback, deliveries)) = retained {
            conn.send(&suback);
            if let Some(session) = state.sessions.get_mut(client_id) {
                for delivery in deliveries {
                    session.offer(delivery, &limits, now);
                }
            }
        }
        Ok(())
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
    fn connect(
        &mut self,
        conn: Rc<Conn>,
        connect: Connect,
        client_id: Arc<str>,
        assigned: bool,
        outbox: &mut Outbox,
    ) -> ConnectOutcome {
        let now = Instant::now();
        let v5 = connect.protocol == Protocol::V5;
        let fail = |reason| ConnectOutcome {
            reason,
            session_present: false,
            keep_alive: 0,
        };

        if let Some(will) = &connect.will {
            if topic::validate_topic_name(&will.topic).is_err() {
                return self.reject(&conn, fail(ReasonCode::TOPIC_NAME_INVALID));
            }
        }
        if connect.properties.authentication_method.is_some() {
            // TODO: enhanced authentication (SCRAM-SHA-256 over AUTH).
            return self.reject(&conn, fail(ReasonCode::BAD_AUTHENTICATION_METHOD));
        }

        let expiry = if v5 {
            connect
                .properties
                .session_expiry_interval
                .unwrap_or(0)
                .min(self.limits.max_session_expiry)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };

        // An existing session: take over its connection, then resume it or
        // discard it as Clean Start asks.
        let mut session_present = false;
        let mut resumed = None;
        if let Some(mut old) = self.sessions.remove(&client_id) {
            if let Some(old_conn) = old.conn.take() {
                old_conn.request_close(close_with(ReasonCode::SESSION_TAKEN_OVER));
                info!(client_id = %client_id, old_peer = %old_conn.peer, "session taken over");
                // The old connection closed without DISCONNECT 0x00, so its
                // Will is due unless the session continues and the Will has a delay.
                let will_delay = old.will.as_ref().map_or(0, will_delay);
                if connect.clean_start || will_delay == 0 {
                    if let Some(will) = old.will.take() {
                        self.publish_will(&old.client_id, will, now, outbox);
                    }
                }
            }
            if connect.clean_start {
                if let Some(will) = old.will.take() {
                    self.publish_will(&old.client_id, will, now, outbox);
                }
                self.drop_subscriptions(&old, outbox);
            } else {
                session_present = true;
                resumed = Some(old);
            }
        }

        let mut session = resumed.unwrap_or_else(|| Session::new(client_id.clone(), connect.protocol));
        session.protocol = connect.protocol;
        session.generation += 1;
        session.expiry_interval = expiry;
        session.will = connect.will;
        session.client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        session.conn = Some(conn.clone());

        let max_keep_alive = self.limits.max_keep_alive;
        let keep_alive = if connect.keep_alive == 0 || connect.keep_alive > max_keep_alive {
            if max_keep_alive == u16::MAX {
                connect.keep_alive
            } else {
                max_keep_alive
            }
        } else {
            connect.keep_alive
        };

        let mut properties = Properties::default();
        if v5 {
            properties.receive_maximum = Some(self.limits.receive_maximum);
            properties.topic_alias_maximum = Some(self.limits.topic_alias_maximum);
            properties.maximum_packet_size = Some(self.limits.max_packet_size);
            if assigned {
                properties.assigned_client_identifier = Some(client_id.to_string());
            }
            if keep_alive != connect.keep_alive {
                properties.server_keep_alive = Some(keep_alive);
            }
            if connect.properties.session_expiry_interval.unwrap_or(0) != expiry {
                properties.session_expiry_interval = Some(expiry);
            }
        }
        conn.send(&Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::SUCCESS,
            properties,
        }));

        session.resend_inflight(now);
        session.pump(now);
        info!(
            client_id = %client_id,
            peer = %conn.peer,
            shard = self.id,
            protocol = conn.protocol.level(),
            clean_start = connect.clean_start,
            session_present,
            "connected"
        );
        self.sessions.insert(client_id, session);
        ConnectOutcome {
            reason: ReasonCode::SUCCESS,
            session_present,
            keep_alive,
        }
    }

    fn reject(&self, conn: &Conn, outcome: ConnectOutcome) -> ConnectOutcome {
        conn.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason: outcome.reason,
            properties: Properties::default(),
        }));
        outcome
    }

    fn session_mut(&mut self, client_id: &Arc<str>, conn: &Rc<Conn>) -> Result<&mut Session, CloseRequest> {
        match self.sessions.get_mut(client_id) {
            Some(session) if session.conn.as_ref().is_some_and(|c| Rc::ptr_eq(c, conn)) => Ok(session),
            // The session was taken over; this connection is closing.
            _ => Err(CloseRequest { reason: None }),
        }
    }

    fn handle_control(&mut self, conn: &Rc<Conn>, client_id: &Arc<str>, packet: Packet) -> HandleResult {
        let now = Instant::now();
        let protocol_error = close_with(ReasonCode::PROTOCOL_ERROR);
        let max_session_expiry = self.limits.max_session_expiry;
        let session = self.session_mut(client_id, conn)?;
        match packet {
            Packet::PubAck(ack) => {
                if !session.on_puback(ack.packet_id, now) {
                    debug!(client_id = %client_id, packet_id = ack.packet_id, "PUBACK for unknown packet id");
                }
            }
            Packet::PubRec(rec) => {
                if !session.on_pubrec(rec.packet_id, rec.reason, now) {
                    // Tell the client the exchange is unknown so it can stop.
                    conn.send(&pubresp(Packet::PubRel, rec.packet_id, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND));
                }
            }
            Packet::PubRel(rel) => {
                let reason = if session.incoming_qos2.remove(&rel.packet_id) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                conn.send(&pubresp(Packet::PubComp, rel.packet_id, reason));
            }
            Packet::PubComp(comp) => {
                if !session.on_pubcomp(comp.packet_id, now) {
                    debug!(client_id = %client_id, packet_id = comp.packet_id, "PUBCOMP for unknown packet id");
                }
            }
            Packet::PingReq => {
                conn.send(&Packet::PingResp);
            }
            Packet::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    if session.expiry_interval == 0 && expiry != 0 {
                        // A session that was to end at disconnect cannot be
                        // revived by DISCONNECT.
                        return Err(protocol_error);
                    }
                    session.expiry_interval = expiry.min(max_session_expiry);
                }
                if disconnect.reason == ReasonCode::NORMAL_DISCONNECTION {
                    session.will = None;
                }
                return Err(CloseRequest { reason: None });
            }
            Packet::Auth(_) => {
                // No authentication method was negotiated at CONNECT.
                return Err(protocol_error);
            }
            Packet::Connect(_) => return Err(protocol_error),
            other => {
                debug!(client_id = %client_id, packet = other.name(), "packet a client must not send");
                return Err(protocol_error);
            }
        }
        Ok(())
    }

    /// Handles a client's PUBLISH up to routing; returns the PUBACK/PUBREC
    /// to send once the routing messages are out.
    fn publish_from_client(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        mut publish: Publish,
        outbox: &mut Outbox,
    ) -> Result<Option<Packet>, CloseRequest> {
        let now = Instant::now();
        let receive_maximum = self.limits.receive_maximum;
        let session = self.session_mut(client_id, conn)?;
        if !publish.properties.subscription_identifiers.is_empty() {
            return Err(close_with(ReasonCode::PROTOCOL_ERROR));
        }
        let retain_ack_needed = publish.retain && publish.qos != QoS::AtMostOnce;

        let ack_kind = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck as fn(_) -> Packet),
            QoS::ExactlyOnce => {
                let packet_id = publish.packet_id.expect("the codec requires a packet id at QoS 2");
                if session.incoming_qos2.contains(&packet_id) {
                    // A re-send before PUBREL: acknowledge again, deliver once.
                    return Ok(Some(pubresp(Packet::PubRec, packet_id, ReasonCode::SUCCESS)));
                }
                if session.incoming_qos2.len() >= usize::from(receive_maximum) {
                    return Err(close_with(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
                }
                session.incoming_qos2.insert(packet_id);
                Some(Packet::PubRec as fn(_) -> Packet)
            }
        };

        if publish.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&publish.payload).is_err() {
            return match (ack_kind, publish.packet_id) {
                (Some(kind), Some(packet_id)) if conn.protocol == Protocol::V5 => {
                    if publish.qos == QoS::ExactlyOnce {
                        session.incoming_qos2.remove(&packet_id);
                    }
                    Ok(Some(pubresp(kind, packet_id, ReasonCode::PAYLOAD_FORMAT_INVALID)))
                }
                _ => Err(close_with(ReasonCode::PAYLOAD_FORMAT_INVALID)),
            };
        }

        let packet_id = publish.packet_id;
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        publish.properties.message_expiry_interval = None;
        publish.properties.topic_alias = None;
        let publication = Arc::new(Publication {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
            expires_at,
            publisher: Some(client_id.clone()),
        });
        let matched = self.route(&publication, retain_ack_needed, now, outbox);

        Ok(ack_kind.zip(packet_id).map(|(kind, packet_id)| {
            let reason = if matched || conn.protocol == Protocol::V311 {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_MATCHING_SUBSCRIBERS
            };
            pubresp(kind, packet_id, reason)
        }))
    }

    /// Routes a publication: stores it if retained, delivers it to local
    /// sessions, and queues it for every other interested shard. Returns
    /// whether any subscriber anywhere matched.
    fn route(&mut self, publication: &Arc<Publication>, await_retain: bool, now: Instant, outbox: &mut Outbox) -> bool {
        if publication.retain {
            self.retained.apply(publication.clone());
            for shard in (0..self.shards).filter(|s| *s != self.id) {
                let ack = await_retain.then(|| outbox.ack());
                outbox.send(
                    shard,
                    ShardMsg::Retain {
                        publication: publication.clone(),
                        ack,
                    },
                );
            }
        }

        let mut targets: u64 = 0;
        self.interest.for_each_match(&publication.topic, |shard, _| {
            targets |= 1 << shard;
        });
        let matched = targets != 0;
        for shard in 0..self.shards {
            if targets & (1 << shard) == 0 {
                continue;
            }
            if shard == self.id {
                self.deliver_local(publication, now);
            } else {
                outbox.send(shard, ShardMsg::Publish(publication.clone()));
            }
        }
        let shared = self.route_shared(publication, now, outbox);
        matched || shared
    }

    /// Picks one shard per matching shared subscription, round-robin over
    /// members, and sends the publication there.
    fn route_shared(&mut self, publication: &Arc<Publication>, now: Instant, outbox: &mut Outbox) -> bool {
        let mut shares: Vec<(Arc<str>, Vec<ShardId>)> = Vec::new();
        self.shared_interest.for_each_match(&publication.topic, |(share, shard), _| {
            match shares.iter_mut().find(|(s, _)| s == share) {
                Some((_, shards)) => shards.push(*shard),
                None => shares.push((share.clone(), vec![*shard])),
            }
        });
        let matched = !shares.is_empty();
        for (share, mut shards) in shares {
            shards.sort_unstable();
            let cursor = self.shared_cursor.entry(share.clone()).or_insert(0);
            let shard = shards[*cursor % shards.len()];
            *cursor = cursor.wrapping_add(1);
            if shard == self.id {
                self.deliver_shared(publication, &share, 0, now, outbox);
            } else {
                outbox.send(
                    shard,
                    ShardMsg::SharedPublish {
                        publication: publication.clone(),
                        share,
                        hops: 0,
                    },
                );
            }
        }
        matched
    }

    /// Delivers to every local session with a matching (non-shared)
    /// subscription, one copy per session.
    fn deliver_local(&mut self, publication: &Arc<Publication>, now: Instant) {
        let mut per_client: Vec<(Arc<str>, Delivery)> = Vec::new();
        self.subscriptions.for_each_match(&publication.topic, |client_id, subscription| {
            let options = subscription.options;
            if options.no_local && publication.publisher.as_deref() == Some(&**client_id) {
                return;
            }
            let qos = options.qos.min(publication.qos);
            let retain = options.retain_as_published && publication.retain;
            match per_client.iter_mut().find(|(c, _)| c == client_id) {
                Some((_, delivery)) => {
                    delivery.qos = delivery.qos.max(qos);
                    delivery.retain |= retain;
                    delivery.subscription_ids.extend(subscription.identifier);
                }
                None => per_client.push((
                    client_id.clone(),
                    Delivery {
                        publication: publication.clone(),
                        qos,
                        retain,
                        subscription_ids: subscription.identifier.into_iter().collect(),
                    },
                )),
            }
        });
        for (client_id, delivery) in per_client {
            if let Some(session) = self.sessions.get_mut(&client_id) {
                session.offer(delivery, &self.limits, now);
            }
        }
    }

    /// Delivers to one local member of `share`, preferring connected ones;
    /// passes the message on when no member is left here.
    fn deliver_shared(&mut self, publication: &Arc<Publication>, share: &Arc<str>, hops: u8, now: Instant, outbox: &mut Outbox) {
        let Some(group) = self.shared_groups.get_mut(share) else {
            if hops < MAX_SHARED_HOPS {
                let mut other = None;
                self.shared_interest.for_each_match(&publication.topic, |(s, shard), _| {
                    if s == share && *shard != self.id {
                        other = Some(*shard);
                    }
                });
                if let Some(shard) = other {
                    outbox.send(
                        shard,
                        ShardMsg::SharedPublish {
                            publication: publication.clone(),
                            share: share.clone(),
                            hops: hops + 1,
                        },
                    );
                }
            }
            return;
        };
        let count = group.members.len();
        let mut chosen = None;
        for step in 0..count {
            let member = &group.members[(group.next + step) % count];
            let connected = self.sessions.get(member).is_some_and(|s| s.conn.is_some());
            if connected {
                chosen = Some(member.clone());
                group.next = (group.next + step + 1) % count;
                break;
            }
        }
        let member = match chosen {
            Some(member) => member,
            None => {
                let member = group.members[group.next % count].clone();
                group.next = (group.next + 1) % count;
                member
            }
        };
        let Some(session) = self.sessions.get_mut(&member) else {
            return;
        };
        let Some(subscription) = session.subscriptions.get(&**share) else {
            return;
        };
        let options = subscription.options;
        let delivery = Delivery {
            publication: publication.clone(),
            qos: options.qos.min(publication.qos),
            retain: options.retain_as_published && publication.retain,
            subscription_ids: subscription.identifier.into_iter().collect(),
        };
        session.offer(delivery, &self.limits, now);
    }

    fn apply_interest(&mut self, filter: &Arc<str>, shard: ShardId, add: bool) {
        match topic::parse_shared(filter) {
            Some((_, inner)) => {
                let key = (filter.clone(), shard);
                if add {
                    self.shared_interest.insert(inner, key, ());
                } else {
                    self.shared_interest.remove(inner, &key);
                }
            }
            None => {
                if add {
                    self.interest.insert(filter, shard, ());
                } else {
                    self.interest.remove(filter, &shard);
                }
            }
        }
    }

    /// Counts a local subscriber on `filter` and announces the shard's
    /// interest to every shard when it is the first.
    fn add_local_filter(&mut self, filter: &Arc<str>, outbox: &mut Outbox) {
        let count = self.local_filters.entry(filter.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.apply_interest(filter, self.id, true);
            for shard in (0..self.shards).filter(|s| *s != self.id) {
                let ack = Some(outbox.ack());
                outbox.send(
                    shard,
                    ShardMsg::Interest {
                        filter: filter.clone(),
                        shard: self.id,
                        add: true,
                        ack,
                    },
                );
            }
        }
    }

    fn remove_local_filter(&mut self, filter: &str, outbox: &mut Outbox) {
        let Some(count) = self.local_filters.get_mut(filter) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        let (filter, _) = self
            .local_filters
            .remove_entry(filter)
            .expect("the entry was found above");
        self.apply_interest(&filter, self.id, false);
        for shard in (0..self.shards).filter(|s| *s != self.id) {
            outbox.send(
                shard,
                ShardMsg::Interest {
                    filter: filter.clone(),
                    shard: self.id,
                    add: false,
                    ack: None,
                },
            );
        }
    }

    /// Handles SUBSCRIBE; returns the SUBACK and the retained messages to
    /// send after it.
    #[allow(clippy::type_complexity)]
    fn subscribe(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &Arc<str>,
        subscribe: Subscribe,
        outbox: &mut Outbox,
    ) -> Result<Option<(Packet, Vec<Delivery>)>, CloseRequest> {
        let now = Instant::now();
        self.session_mut(client_id, conn)?;
        let identifier = subscribe.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();

        for (filter, options) in subscribe.filters {
            if topic::validate_topic_filter(&filter).is_err() {
                reasons.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let shared = topic::parse_shared(&filter).map(|(_, inner)| inner.to_owned());
            if shared.is_some() && options.no_local {
                return Err(close_with(ReasonCode::PROTOCOL_ERROR));
            }
            let subscription = Subscription { options, identifier };
            let filter: Arc<str> = filter.into();
            let session = self.sessions.get_mut(client_id).expect("checked by session_mut");
            let existed = session
                .subscriptions
                .insert(filter.to_string(), subscription.clone())
                .is_some();

            match &shared {
                Some(_) => {
                    let group = self.shared_groups.entry(filter.clone()).or_default();
                    if !existed {
                        group.members.push(client_id.clone());
                    }
                }
                None => {
                    self.subscriptions.insert(&filter, client_id.clone(), subscription);
                }
            }
            if !existed {
                self.add_local_filter(&filter, outbox);
            }

            // Shared subscriptions never receive retained messages at subscribe time.
            let send_retained = shared.is_none()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for publication in self.retained.matching(&filter, now) {
                    retained.push(Delivery {
                        qos: options.qos.min(publication.qos),
                        retain: true,
                        subscription_ids: identifier.into_iter().collect(),
                        publication,
                    });
                }
            }
            reasons.push(granted(options.qos));
        }

        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            properties: Properties::default(),
            reasons,
        });
        Ok(Some((suback, retained)))
    }

    fn unsubscribe(&mut self, conn: &Rc<Conn>, client_id: &Arc<str>, unsubscribe: Unsubscribe, outbox: &mut Outbox) {
        if self.session_mut(client_id, conn).is_err() {
            return;
        }
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let session = self.sessions.get_mut(client_id).expect("checked by session_mut");
            if session.subscriptions.remove(filter).is_some() {
                self.remove_subscription(client_id, filter, outbox);
                reasons.push(ReasonCode::SUCCESS);
            } else {
                reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
            }
        }
        conn.send(&Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: Properties::default(),
            reasons: if conn.protocol == Protocol::V5 { reasons } else { Vec::new() },
        }));
    }

    /// Removes one subscription of `client_id` from the shard's tables
    /// (the session's own map is updated by the caller).
    fn remove_subscription(&mut self, client_id: &Arc<str>, filter: &str, outbox: &mut Outbox) {
        if topic::parse_shared(filter).is_some() {
            if let Some(group) = self.shared_groups.get_mut(filter) {
                group.members.retain(|member| member != client_id);
                if group.members.is_empty() {
                    self.shared_groups.remove(filter);
                }
            }
        } else {
            self.subscriptions.remove(filter, client_id);
        }
        self.remove_local_filter(filter, outbox);
    }

    fn drop_subscriptions(&mut self, session: &Session, outbox: &mut Outbox) {
        for filter in session.subscriptions.keys() {
            self.remove_subscription(&session.client_id, filter, outbox);
        }
    }

    fn disconnected(&mut self, conn: &Rc<Conn>, client_id: &Arc<str>, publish_will: bool, outbox: &mut Outbox) {
        let now = Instant::now();
        let Some(session) = self.sessions.get_mut(client_id) else {
            return;
        };
        if !session.conn.as_ref().is_some_and(|c| Rc::ptr_eq(c, conn)) {
            // Taken over: the new connection owns the session now.
            return;
        }
        session.conn = None;
        let generation = session.generation;
        let expiry = session.expiry_interval;
        let will = if publish_will { session.will.take() } else { None };
        session.will = None;

        if expiry == 0 {
            let session = self.sessions.remove(client_id).expect("found above");
            self.drop_subscriptions(&session, outbox);
            if let Some(will) = will {
                self.publish_will(client_id, will, now, outbox);
            }
            return;
        }

        if let Some(will) = will {
            let delay = will_delay(&will);
            if delay == 0 {
                self.publish_will(client_id, will, now, outbox);
            } else if delay >= expiry {
                // The session ends first; its end publishes the Will.
                self.sessions.get_mut(client_id).expect("found above").will = Some(will);
            } else {
                self.arm_will_timer(client_id.clone(), generation, will, delay);
            }
        }
        if expiry != u32::MAX {
            self.arm_expiry_timer(client_id.clone(), generation, expiry);
        }
    }

    fn arm_will_timer(&self, client_id: Arc<str>, generation: u64, will: Will, delay: u32) {
        let this = self.this.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_secs(u64::from(delay))).await;
            let Some(state) = this.upgrade() else { return };
            let mut outbox = Outbox::default();
            {
                let mut state = state.borrow_mut();
                let current = state.sessions.get(&client_id).map(|s| (s.generation, s.conn.is_some()));
                // Due only if the client has not come back since.
                let due = match current {
                    Some((g, connected)) => g == generation && !connected,
                    None => true,
                };
                if due {
                    state.publish_will(&client_id, will, Instant::now(), &mut outbox);
                }
            }
            send_outbox(outbox).await;
        })
        .detach();
    }

    fn arm_expiry_timer(&self, client_id: Arc<str>, generation: u64, expiry: u32) {
        let this = self.this.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_secs(u64::from(expiry))).await;
            let Some(state) = this.upgrade() else { return };
            let mut outbox = Outbox::default();
            {
                let mut state = state.borrow_mut();
                let expired = state
                    .sessions
                    .get(&client_id)
                    .is_some_and(|s| s.generation == generation && s.conn.is_none());
                if expired {
                    let mut session = state.sessions.remove(&client_id).expect("checked above");
                    debug!(client_id = %client_id, "session expired");
                    state.drop_subscriptions(&session, &mut outbox);
                    if let Some(will) = session.will.take() {
                        state.publish_will(&client_id, will, Instant::now(), &mut outbox);
                    }
                }
            }
            send_outbox(outbox).await;
        })
        .detach();
    }

    fn publish_will(&mut self, client_id: &Arc<str>, will: Will, now: Instant, outbox: &mut Outbox) {
        let mut properties = will.properties;
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        properties.will_delay_interval = None;
        let publication = Arc::new(Publication {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
            expires_at,
            publisher: Some(client_id.clone()),
        });
        debug!(client_id = %client_id, topic = %publication.topic, "publishing will");
        self.route(&publication, false, now, outbox);
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

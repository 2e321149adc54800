//! Session state: subscriptions, the outbound QoS 1/2 window, the queue
//! behind it, and the inbound QoS 2 exchanges not yet released.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use coremq_codec::{
    Packet, PacketId, Properties, Protocol, PubResponse, Publish, QoS, ReasonCode,
    SubscriptionOptions, Will,
};

use tracing::warn;

use crate::conn::{CloseRequest, Conn};
use crate::message::{Delivery, Publication};
use crate::{DropPolicy, Limits};

/// One subscription of a session.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// Where an outbound QoS 1/2 message stands.
// The variants name the packet each state waits for.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboundState {
    /// QoS 1 PUBLISH sent, PUBACK awaited.
    AwaitingPubAck,
    /// QoS 2 PUBLISH sent, PUBREC awaited.
    AwaitingPubRec,
    /// PUBREL sent, PUBCOMP awaited.
    AwaitingPubComp,
}

#[derive(Debug)]
pub struct Outbound {
    pub delivery: Delivery,
    pub state: OutboundState,
}

/// What became of a message offered to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Sent,
    Queued,
    /// Dropped: expired, too large for the client, QoS 0 to an offline or
    /// congested client, or pushed out of a full queue.
    Dropped,
}

pub struct Session {
    pub client_id: Arc<str>,
    pub protocol: Protocol,
    /// Bumped on every new connection, so timers armed for an earlier one
    /// can tell they are stale.
    pub generation: u64,
    pub conn: Option<Rc<Conn>>,
    /// Seconds the session lives on after its connection closes.
    pub expiry_interval: u32,
    /// Subscriptions by topic filter as the client sent it (shared ones
    /// keep their `$share/group/` prefix).
    pub subscriptions: HashMap<String, Subscription>,
    /// Outbound QoS 1/2 messages in flight, by packet identifier.
    pub inflight: BTreeMap<PacketId, Outbound>,
    /// Messages waiting for room in the in-flight window or for the client
    /// to come back.
    pub queue: VecDeque<Delivery>,
    next_packet_id: PacketId,
    /// Inbound QoS 2 packet identifiers awaiting PUBREL.
    pub incoming_qos2: HashSet<PacketId>,
    /// The client's Will. It is boxed because most sessions have none, and
    /// an inline Will with its properties takes about 400 bytes.
    pub will: Option<Box<Will>>,
    /// Outbound QoS 1/2 messages allowed in flight: the client's Receive
    /// Maximum, capped at [`Limits::max_inflight`].
    pub client_receive_maximum: u16,
    /// User name of the connected client after authentication, for ACL
    /// rules that use `%u`.
    pub username: Option<Arc<str>>,
    /// Messages dropped from this session's queue since it was created.
    pub dropped: u64,
    /// Log offsets of messages offered to this session and not completed.
    pub log_pending: BTreeSet<u64>,
    /// Log offsets completed above the acknowledged prefix.
    pub log_done: BTreeSet<u64>,
    /// Highest log offset offered to this session.
    pub log_seen: u64,
    /// Shared subscription (`$share/group/filter`) that chose this session,
    /// per pending log offset, so that a restart returns the message to
    /// this member.
    pub log_shared: BTreeMap<u64, Arc<str>>,
    /// Shard-wide list of sessions whose stored record is out of date;
    /// `None` when the broker runs without a store.
    pub journal: Option<Rc<RefCell<Vec<Arc<str>>>>>,
    /// True while this session is on the journal.
    pub dirty: bool,
}

impl Session {
    pub fn new(client_id: Arc<str>, protocol: Protocol) -> Session {
        Session {
            client_id,
            protocol,
            generation: 0,
            conn: None,
            expiry_interval: 0,
            subscriptions: HashMap::new(),
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            next_packet_id: 1,
            incoming_qos2: HashSet::new(),
            will: None,
            client_receive_maximum: u16::MAX,
            username: None,
            dropped: 0,
            log_pending: BTreeSet::new(),
            log_done: BTreeSet::new(),
            log_seen: 0,
            log_shared: BTreeMap::new(),
            journal: None,
            dirty: false,
        }
    }

    /// Queues this session's record to be written to the store.
    pub fn mark_dirty(&mut self) {
        if self.dirty {
            return;
        }
        if let Some(journal) = &self.journal {
            self.dirty = true;
            journal.borrow_mut().push(self.client_id.clone());
        }
    }

    fn log_start(&mut self, offset: u64, share: Option<&Arc<str>>) {
        self.log_pending.insert(offset);
        if let Some(share) = share {
            self.log_shared.insert(offset, share.clone());
        }
        self.log_seen = self.log_seen.max(offset);
        self.mark_dirty();
    }

    /// Records that the logged message of `delivery` needs nothing more
    /// from this session: acknowledged, sent at QoS 0, expired or dropped.
    fn log_finish(&mut self, delivery: &Delivery) {
        if let Some(offset) = delivery.publication.log_offset {
            if self.log_pending.remove(&offset) {
                self.log_shared.remove(&offset);
                self.log_done.insert(offset);
                self.mark_dirty();
            }
        }
    }

    /// Highest log offset below which every message offered to this
    /// session is complete; replay after a restart starts above it.
    pub fn log_acked(&mut self) -> u64 {
        let acked = match self.log_pending.first() {
            Some(first) => first - 1,
            None => self.log_seen,
        };
        self.log_done = self.log_done.split_off(&(acked + 1));
        acked
    }

    /// Offers a message to the session: sends it now when connected and the
    /// window allows, or queues it.
    pub fn offer(
        &mut self,
        delivery: Delivery,
        limits: &Limits,
        now: Instant,
        frames: &mut FrameCache,
    ) -> Offer {
        let Some(offset) = delivery.publication.log_offset else {
            return self.offer_unlogged(delivery, limits, now, frames);
        };
        self.log_start(offset, delivery.share.as_ref());
        let qos = delivery.qos;
        let publication = delivery.publication.clone();
        let outcome = self.offer_unlogged(delivery, limits, now, frames);
        if outcome == Offer::Dropped || (outcome == Offer::Sent && qos == QoS::AtMostOnce) {
            self.log_finish(&Delivery {
                publication,
                qos,
                retain: false,
                subscription_ids: Vec::new(),
                share: None,
            });
        }
        outcome
    }

    /// Sends a QoS 0 copy of `publication` with no subscription identifier
    /// from the shard's frame cache, without taking a reference to the
    /// publication. In a 1 -> 1,000 fan-out, the atomic reference count of
    /// each copy's `Delivery` took about a quarter of the broker's CPU.
    ///
    /// Returns `None` when the copy needs [`Session::offer`]: the session
    /// is disconnected or uses topic aliases, or the publication is in the
    /// log.
    pub fn offer_cached_qos0(
        &mut self,
        publication: &Publication,
        retain: bool,
        limits: &Limits,
        now: Instant,
        frames: &mut FrameCache,
    ) -> Option<Offer> {
        let conn = self.conn.as_ref()?;
        if conn.topic_alias_max != 0 || publication.log_offset.is_some() {
            return None;
        }
        if publication.is_expired(now) {
            return Some(Offer::Dropped);
        }
        if self.drop_if_congested(conn, limits, now) {
            return Some(Offer::Dropped);
        }
        let remaining = publication.remaining_expiry(now);
        let cached = frames.get_or_encode(
            publication,
            QoS::AtMostOnce,
            retain,
            conn.protocol,
            remaining,
        );
        conn.send_frame(&cached.frame, None, cached.packet_id_offset);
        Some(Offer::Sent)
    }

    /// Sends a run of unretained, unlogged publications on one topic as
    /// QoS 0 copies, with one append for the run. As with one call per
    /// message, copies go out while the connection is not congested (see
    /// [`Conn::qos0_room`]) and the rest are dropped.
    ///
    /// Returns `None`, sending nothing, when the copies need one call each:
    /// the session is disconnected or uses topic aliases, or a frame is
    /// larger than the client's Maximum Packet Size.
    pub fn offer_run_qos0(
        &mut self,
        frames: &mut RunFrames<'_>,
        limits: &Limits,
        now: Instant,
    ) -> Option<()> {
        let conn = self.conn.as_ref()?;
        if conn.topic_alias_max != 0 {
            return None;
        }
        let run = frames.get_or_encode(conn.protocol);
        if run.largest > conn.max_packet_size as usize {
            return None;
        }
        // A copy goes out when the output held less than the room before
        // it, as `drop_if_congested` decides for one message. Where the
        // room ends within the run, the output is written through, and the
        // run goes on in the room that this freed.
        let mut sent = 0;
        while sent < run.starts.len() {
            let room = conn.qos0_room();
            let base = run.starts[sent];
            let fits = run.starts[sent..].partition_point(|start| *start - base < room);
            if fits > 0 {
                let end = run
                    .starts
                    .get(sent + fits)
                    .copied()
                    .unwrap_or(run.bytes.len());
                conn.send_frames(&run.bytes[base..end]);
                sent += fits;
            }
            if sent < run.starts.len() && !conn.write_through() {
                break;
            }
        }
        let dropped = run.starts.len() - sent;
        if dropped > 0 {
            conn.count_dropped_by(dropped as u64);
            self.disconnect_if_slow(conn, limits, now);
        }
        Some(())
    }

    fn offer_unlogged(
        &mut self,
        delivery: Delivery,
        limits: &Limits,
        now: Instant,
        frames: &mut FrameCache,
    ) -> Offer {
        if delivery.publication.is_expired(now) {
            return Offer::Dropped;
        }
        let Some(conn) = self.conn.clone() else {
            if delivery.qos == QoS::AtMostOnce {
                return Offer::Dropped;
            }
            return self.enqueue(delivery, limits, now);
        };
        if delivery.qos == QoS::AtMostOnce {
            if self.drop_if_congested(&conn, limits, now) {
                return Offer::Dropped;
            }
            write_publish(&conn, &delivery, None, false, now, Some(frames));
            return Offer::Sent;
        }
        // QoS 1 and 2 copies wait in the queue, as shared references to
        // the publication, while the socket is full. Written out, each
        // would be an encoded copy per subscriber that stays in memory until
        // the client reads it.
        if !self.queue.is_empty() {
            self.pump(now);
        }
        if self.queue.is_empty() && self.has_window() && !self.hold_back(&conn) {
            self.send_new(&conn, delivery, now, Some(frames));
            return Offer::Sent;
        }
        self.enqueue(delivery, limits, now)
    }

    /// Returns whether queued messages must wait because `conn`'s output is
    /// full. The connection's writer then has the shard pump this session
    /// once the output drains.
    fn hold_back(&self, conn: &Conn) -> bool {
        if !conn.is_full() {
            return false;
        }
        if conn.write_through() && !conn.is_full() {
            return false;
        }
        conn.note_held_back();
        true
    }

    /// Returns whether a QoS 0 copy for `conn` must be dropped because its
    /// socket is congested, and counts the drop.
    fn drop_if_congested(&self, conn: &Conn, limits: &Limits, now: Instant) -> bool {
        if !conn.is_congested() {
            return false;
        }
        if conn.write_through() && !conn.is_congested() {
            return false;
        }
        conn.count_dropped();
        self.disconnect_if_slow(conn, limits, now);
        true
    }

    fn enqueue(&mut self, delivery: Delivery, limits: &Limits, now: Instant) -> Offer {
        if self.queue.len() >= limits.max_queued_messages {
            self.dropped += 1;
            if let Some(conn) = self.conn.clone() {
                self.disconnect_if_slow(&conn, limits, now);
            }
            match limits.queue_drop_policy {
                DropPolicy::DropNew => return Offer::Dropped,
                DropPolicy::DropOldest => {
                    if let Some(oldest) = self.queue.pop_front() {
                        self.log_finish(&oldest);
                    }
                }
            }
        }
        self.queue.push_back(delivery);
        Offer::Queued
    }

    /// Disconnects the client with DISCONNECT 0x97 (Quota exceeded) when its
    /// socket has not drained for `limits.slow_consumer_timeout`. Called each
    /// time a message for the connected client is dropped, so a client that
    /// falls behind only briefly loses messages but stays connected.
    fn disconnect_if_slow(&self, conn: &Conn, limits: &Limits, now: Instant) {
        conn.note_dropped_while_stalled(now);
        let stalled = conn.write_stalled_for(now);
        if stalled < limits.slow_consumer_timeout || conn.close_requested().is_some() {
            return;
        }
        warn!(
            client_id = %self.client_id,
            peer = %conn.peer,
            stalled_ms = stalled.as_millis() as u64,
            queued = self.queue.len(),
            "slow consumer: socket not drained while its messages are dropped; disconnecting"
        );
        conn.request_close(CloseRequest {
            reason: Some(ReasonCode::QUOTA_EXCEEDED),
        });
    }

    fn has_window(&self) -> bool {
        self.inflight.len() < usize::from(self.client_receive_maximum)
    }

    /// Sends queued messages while the in-flight window has room and the
    /// socket is not full.
    pub fn pump(&mut self, now: Instant) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        while self.has_window() && !self.queue.is_empty() && !self.hold_back(&conn) {
            let Some(delivery) = self.queue.pop_front() else {
                break;
            };
            if delivery.publication.is_expired(now) {
                self.log_finish(&delivery);
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                write_publish(&conn, &delivery, None, false, now, None);
                self.log_finish(&delivery);
            } else {
                self.send_new(&conn, delivery, now, None);
            }
        }
    }

    fn send_new(
        &mut self,
        conn: &Conn,
        delivery: Delivery,
        now: Instant,
        frames: Option<&mut FrameCache>,
    ) {
        let packet_id = self.allocate_packet_id();
        let written = write_publish(conn, &delivery, Some(packet_id), false, now, frames);
        if !written {
            // Too large for the client, or expired: behave as if it was
            // sent and acknowledged, so the window does not fill up.
            self.log_finish(&delivery);
            return;
        }
        let state = if delivery.qos == QoS::AtLeastOnce {
            OutboundState::AwaitingPubAck
        } else {
            OutboundState::AwaitingPubRec
        };
        self.inflight
            .insert(packet_id, Outbound { delivery, state });
    }

    fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == PacketId::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// Puts back an in-flight exchange read from the store, under the
    /// packet id the client already knows it by.
    pub fn restore_inflight(&mut self, packet_id: PacketId, outbound: Outbound) {
        if let Some(offset) = outbound.delivery.publication.log_offset {
            self.log_start(offset, outbound.delivery.share.as_ref());
        }
        self.inflight.insert(packet_id, outbound);
        self.next_packet_id = packet_id.checked_add(1).unwrap_or(1).max(1);
    }

    /// Re-sends every in-flight message after a reconnect: PUBLISH with DUP
    /// set, or PUBREL for QoS 2 exchanges past PUBREC.
    pub fn resend_inflight(&mut self, now: Instant) {
        let Some(conn) = self.conn.clone() else {
            return;
        };
        let mut finished = Vec::new();
        for (packet_id, outbound) in &self.inflight {
            match outbound.state {
                OutboundState::AwaitingPubComp => {
                    conn.send(&pubresp(Packet::PubRel, *packet_id, ReasonCode::SUCCESS));
                }
                _ => {
                    if !write_publish(&conn, &outbound.delivery, Some(*packet_id), true, now, None)
                    {
                        finished.push(*packet_id);
                    }
                }
            }
        }
        for packet_id in finished {
            if let Some(outbound) = self.inflight.remove(&packet_id) {
                self.log_finish(&outbound.delivery);
            }
        }
    }

    /// Handles PUBACK; returns false when no QoS 1 message awaited it.
    pub fn on_puback(&mut self, packet_id: PacketId, now: Instant) -> bool {
        match self.inflight.get(&packet_id) {
            Some(outbound) if outbound.state == OutboundState::AwaitingPubAck => {
                if let Some(outbound) = self.inflight.remove(&packet_id) {
                    self.log_finish(&outbound.delivery);
                }
                self.pump(now);
                true
            }
            _ => false,
        }
    }

    /// Handles PUBREC. Returns `Some(true)` when the caller must answer
    /// PUBREL, `Some(false)` when the client ended the exchange with an
    /// error, and `None` when no QoS 2 message awaited it.
    pub fn on_pubrec(
        &mut self,
        packet_id: PacketId,
        reason: ReasonCode,
        now: Instant,
    ) -> Option<bool> {
        let state = self.inflight.get(&packet_id)?.state;
        match state {
            OutboundState::AwaitingPubRec if reason.is_error() => {
                if let Some(outbound) = self.inflight.remove(&packet_id) {
                    self.log_finish(&outbound.delivery);
                }
                self.pump(now);
                Some(false)
            }
            OutboundState::AwaitingPubRec | OutboundState::AwaitingPubComp => {
                if let Some(outbound) = self.inflight.get_mut(&packet_id) {
                    outbound.state = OutboundState::AwaitingPubComp;
                }
                self.mark_dirty();
                Some(true)
            }
            OutboundState::AwaitingPubAck => None,
        }
    }

    /// Handles PUBCOMP; returns false when no PUBREL awaited it.
    pub fn on_pubcomp(&mut self, packet_id: PacketId, now: Instant) -> bool {
        match self.inflight.get(&packet_id) {
            Some(outbound) if outbound.state == OutboundState::AwaitingPubComp => {
                if let Some(outbound) = self.inflight.remove(&packet_id) {
                    self.log_finish(&outbound.delivery);
                }
                self.pump(now);
                true
            }
            _ => false,
        }
    }
}

/// Builds a PUBACK, PUBREC, PUBREL or PUBCOMP.
pub fn pubresp(kind: fn(PubResponse) -> Packet, packet_id: PacketId, reason: ReasonCode) -> Packet {
    kind(PubResponse {
        packet_id,
        reason,
        properties: Properties::default(),
    })
}

/// PUBLISH frames encoded during one delivery pass, reused for every
/// session whose copy is byte-for-byte the same but for the packet id:
/// same protocol, QoS and RETAIN flag, no subscription identifiers and no
/// topic alias.
#[derive(Default)]
pub struct FrameCache {
    frames: Vec<CachedFrame>,
}

struct CachedFrame {
    protocol: Protocol,
    qos: QoS,
    retain: bool,
    frame: BytesMut,
    packet_id_offset: Option<usize>,
}

impl FrameCache {
    fn get_or_encode(
        &mut self,
        publication: &Publication,
        qos: QoS,
        retain: bool,
        protocol: Protocol,
        remaining: Option<u32>,
    ) -> &CachedFrame {
        let position = self
            .frames
            .iter()
            .position(|f| f.protocol == protocol && f.qos == qos && f.retain == retain);
        let index = match position {
            Some(index) => index,
            None => {
                let mut frame = BytesMut::new();
                encode_frame(publication, qos, retain, protocol, remaining, &mut frame);
                let packet_id_offset = coremq_codec::publish_packet_id_offset(&frame);
                self.frames.push(CachedFrame {
                    protocol,
                    qos,
                    retain,
                    frame,
                    packet_id_offset,
                });
                self.frames.len() - 1
            }
        };
        &self.frames[index]
    }
}

/// Encodes `publication` as the PUBLISH that every subscriber without a
/// subscription identifier or topic alias receives, with a placeholder
/// packet id at QoS 1 and 2.
fn encode_frame(
    publication: &Publication,
    qos: QoS,
    retain: bool,
    protocol: Protocol,
    remaining: Option<u32>,
    out: &mut BytesMut,
) {
    let mut publish = Publish {
        dup: false,
        qos,
        retain,
        topic: publication.topic.clone(),
        // A placeholder that every copy overwrites.
        packet_id: (qos != QoS::AtMostOnce).then_some(1),
        properties: Properties::default(),
        payload: publication.payload.clone(),
    };
    if protocol == Protocol::V5 {
        publish.properties = publication.properties.clone();
        publish.properties.message_expiry_interval = remaining;
    }
    coremq_codec::encode(&Packet::Publish(publish), protocol, out);
}

/// QoS 0 frames of a run of publications on one topic, encoded once per
/// protocol and laid end to end, so that each subscriber takes the whole
/// run with one append (see [`Session::offer_run_qos0`]). Expired
/// publications are left out.
pub struct RunFrames<'a> {
    run: &'a [Arc<Publication>],
    now: Instant,
    encoded: Vec<(Protocol, RunFrame)>,
}

/// The frames of a run for one protocol.
struct RunFrame {
    bytes: BytesMut,
    /// Offset of each frame in `bytes`.
    starts: Vec<usize>,
    /// Length of the largest frame, checked against the client's Maximum
    /// Packet Size.
    largest: usize,
}

impl<'a> RunFrames<'a> {
    pub fn new(run: &'a [Arc<Publication>], now: Instant) -> RunFrames<'a> {
        RunFrames {
            run,
            now,
            encoded: Vec::new(),
        }
    }

    fn get_or_encode(&mut self, protocol: Protocol) -> &RunFrame {
        let index = match self.encoded.iter().position(|(p, _)| *p == protocol) {
            Some(index) => index,
            None => {
                let mut frame = RunFrame {
                    bytes: BytesMut::new(),
                    starts: Vec::with_capacity(self.run.len()),
                    largest: 0,
                };
                for publication in self.run {
                    if publication.is_expired(self.now) {
                        continue;
                    }
                    let start = frame.bytes.len();
                    let remaining = publication.remaining_expiry(self.now);
                    encode_frame(
                        publication,
                        QoS::AtMostOnce,
                        false,
                        protocol,
                        remaining,
                        &mut frame.bytes,
                    );
                    frame.largest = frame.largest.max(frame.bytes.len() - start);
                    frame.starts.push(start);
                }
                self.encoded.push((protocol, frame));
                self.encoded.len() - 1
            }
        };
        &self.encoded[index].1
    }
}

/// Encodes `delivery` as a PUBLISH into `conn`'s output. Returns false when
/// nothing was written because the message expired or is larger than the
/// client's Maximum Packet Size (which the spec says to treat as sent).
pub fn write_publish(
    conn: &Conn,
    delivery: &Delivery,
    packet_id: Option<PacketId>,
    dup: bool,
    now: Instant,
    frames: Option<&mut FrameCache>,
) -> bool {
    let publication = &delivery.publication;
    let remaining = publication.remaining_expiry(now);
    if remaining == Some(0) {
        return false;
    }
    if let Some(frames) = frames {
        if !dup && delivery.subscription_ids.is_empty() && conn.topic_alias_max == 0 {
            let cached = frames.get_or_encode(
                publication,
                delivery.qos,
                delivery.retain,
                conn.protocol,
                remaining,
            );
            return conn.send_frame(&cached.frame, packet_id, cached.packet_id_offset);
        }
    }
    let mut publish = Publish {
        dup: dup && delivery.qos != QoS::AtMostOnce,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: publication.topic.clone(),
        packet_id,
        properties: Properties::default(),
        payload: publication.payload.clone(),
    };
    if conn.protocol == Protocol::V5 {
        publish.properties = publication.properties.clone();
        publish.properties.message_expiry_interval = remaining;
        publish.properties.subscription_identifiers = delivery.subscription_ids.clone();
        let full = Packet::Publish(publish);
        if coremq_codec::encoded_len(&full, conn.protocol) > conn.max_packet_size as usize {
            return false;
        }
        let Packet::Publish(mut publish) = full else {
            unreachable!("constructed as a PUBLISH above")
        };
        if let Some((alias, new)) = conn.outbound_alias(&publication.topic) {
            publish.properties.topic_alias = Some(alias);
            if !new {
                publish.topic = String::new();
            }
        }
        return conn.send(&Packet::Publish(publish));
    }
    conn.send(&Packet::Publish(publish))
}

//! Publish/subscribe scenarios: fanout, fanin, p2p and shared.
//!
//! Each scenario is a plan of publishers (id, topic) and subscribers
//! (filters, publishers they must hear from). Connections are dealt
//! round-robin to the executors; every connection is one task that owns its
//! socket and buffers.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use coremq_codec::{Packet, PacketId, QoS};
use futures_lite::future;
use hdrhistogram::Histogram;

use crate::error::BenchError;
use crate::local::Local;
use crate::mqtt::{Client, ConnectOptions, PublishTemplate};
use crate::payload::{now_ns, read_header, Header};
use crate::run::{Control, ExecutorBody, ExecutorOutput, RunConfig, SubscriberPartial, Timeline};
use crate::stats::{Counters, SeqTracker};

/// Messages a publisher encodes into one write when it is behind schedule or
/// unthrottled: large enough to amortise the system call, small enough to
/// keep each write under about 64 KiB for small payloads.
const PUBLISH_BATCH: u64 = 64;

/// Payload bytes a publisher encodes into one write, at least one message.
/// It keeps the batch of large payloads from taking 64 times their size.
const PUBLISH_BATCH_BYTES: u64 = 64 * 1024;

/// Bytes offered to each subscriber socket read.
const SUBSCRIBER_READ_CHUNK: usize = 64 * 1024;

/// Bytes offered to each publisher socket read, which carries only acks.
const PUBLISHER_READ_CHUNK: usize = 16 * 1024;

/// Connections an executor opens at the same time during setup.
const SETUP_CONCURRENCY: u64 = 64;

/// How often an idle subscriber wakes to check for the end of the run.
const SUBSCRIBER_WAKE: Duration = Duration::from_millis(200);

/// Maximum wait of a QoS 1/2 publisher for acks before it checks the clock.
const ACK_WAIT: Duration = Duration::from_millis(100);

/// One publisher of a plan.
#[derive(Clone, Debug)]
pub struct PublisherSpec {
    pub id: u32,
    pub topic: String,
}

/// One subscriber of a plan.
#[derive(Clone, Debug)]
pub struct SubscriberSpec {
    pub index: u32,
    pub filter: String,
    /// Publisher ids this subscriber must hear from; `None` for a member of a
    /// shared subscription.
    pub expected_from: Option<Vec<u32>>,
}

/// Publishers and subscribers of one pub/sub scenario.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub publishers: Vec<PublisherSpec>,
    pub subscribers: Vec<SubscriberSpec>,
}

impl Plan {
    /// Builds a plan of `publishers` senders spread over `topics` topics, where
    /// subscriber j listens on topic j % topics and hears every publisher on it.
    pub fn fanout(run_id: &str, publishers: u32, subscribers: u32, topics: u32) -> Plan {
        let topics = topics.max(1);
        let topic = |t: u32| format!("{run_id}/fanout/{t}");
        Plan {
            publishers: (0..publishers)
                .map(|id| PublisherSpec {
                    id,
                    topic: topic(id % topics),
                })
                .collect(),
            subscribers: (0..subscribers)
                .map(|index| SubscriberSpec {
                    index,
                    filter: topic(index % topics),
                    expected_from: Some(
                        (0..publishers)
                            .filter(|p| p % topics == index % topics)
                            .collect(),
                    ),
                })
                .collect(),
        }
    }

    /// Builds a plan where every publisher has its own topic and every
    /// subscriber listens on a `+` wildcard over all of them.
    pub fn fanin(run_id: &str, publishers: u32, subscribers: u32) -> Plan {
        Plan {
            publishers: (0..publishers)
                .map(|id| PublisherSpec {
                    id,
                    topic: format!("{run_id}/fanin/{id}"),
                })
                .collect(),
            subscribers: (0..subscribers)
                .map(|index| SubscriberSpec {
                    index,
                    filter: format!("{run_id}/fanin/+"),
                    expected_from: Some((0..publishers).collect()),
                })
                .collect(),
        }
    }

    /// Publisher k and subscriber k share topic k.
    pub fn p2p(run_id: &str, pairs: u32) -> Plan {
        Plan {
            publishers: (0..pairs)
                .map(|id| PublisherSpec {
                    id,
                    topic: format!("{run_id}/p2p/{id}"),
                })
                .collect(),
            subscribers: (0..pairs)
                .map(|index| SubscriberSpec {
                    index,
                    filter: format!("{run_id}/p2p/{index}"),
                    expected_from: Some(vec![index]),
                })
                .collect(),
        }
    }

    /// Builds a plan with all publishers on one topic, read by one `$share` group.
    pub fn shared(run_id: &str, publishers: u32, members: u32) -> Plan {
        let topic = format!("{run_id}/shared");
        Plan {
            publishers: (0..publishers)
                .map(|id| PublisherSpec {
                    id,
                    topic: topic.clone(),
                })
                .collect(),
            subscribers: (0..members)
                .map(|index| SubscriberSpec {
                    index,
                    filter: format!("$share/bench/{topic}"),
                    expected_from: None,
                })
                .collect(),
        }
    }

    /// Number of connections the plan opens.
    pub fn connections(&self) -> u64 {
        (self.publishers.len() + self.subscribers.len()) as u64
    }
}

/// Builds the executor body that runs `plan`.
pub fn executor_body(config: Arc<RunConfig>, plan: Arc<Plan>) -> ExecutorBody {
    Arc::new(move |executor, control| {
        let config = config.clone();
        let plan = plan.clone();
        Box::pin(async move { run_executor(executor, control, config, plan).await })
    })
}

async fn run_executor(
    executor: usize,
    control: Arc<Control>,
    config: Arc<RunConfig>,
    plan: Arc<Plan>,
) -> ExecutorOutput {
    let threads = config.threads();
    let local = Local::new(executor, control.clone(), config.clone(), SETUP_CONCURRENCY);

    // Subscribers are dealt first and publishers start only after every
    // executor is ready, so no message is published before its subscribers.
    let mut subscriber_tasks = Vec::new();
    for spec in plan
        .subscribers
        .iter()
        .filter(|s| s.index as usize % threads == executor)
    {
        let connection_index = spec.index as usize;
        subscriber_tasks.push(glommio::spawn_local(subscriber_task(
            local.clone(),
            spec.clone(),
            connection_index,
        )));
    }
    let mut publisher_tasks = Vec::new();
    for spec in plan
        .publishers
        .iter()
        .filter(|p| p.id as usize % threads == executor)
    {
        let connection_index = plan.subscribers.len() + spec.id as usize;
        publisher_tasks.push(glommio::spawn_local(publisher_task(
            local.clone(),
            spec.clone(),
            connection_index,
        )));
    }

    let tasks = (subscriber_tasks.len() + publisher_tasks.len()) as u64;
    local.start_when_ready(tasks).await;

    let mut output = ExecutorOutput::default();
    let mut unacked = 0;
    for task in publisher_tasks {
        if let Some(result) = task.await {
            output.published.push((result.id, result.sent));
            unacked += result.unacked;
        }
    }
    if unacked > 0 {
        output.extra.push(("unacked_msgs", unacked));
    }
    for task in subscriber_tasks {
        if let Some(partial) = task.await {
            output.subscribers.push(partial);
        }
    }
    local.finish(output)
}

fn connect_options(
    local: &Local,
    role: &str,
    index: u32,
    connection_index: usize,
    read_chunk: usize,
) -> ConnectOptions {
    ConnectOptions {
        target: local.config.target,
        source: local.config.source_for(connection_index),
        protocol: local.config.protocol,
        keep_alive: local.config.keep_alive,
        client_id: format!("{}-{role}{index}", local.config.run_id),
        read_chunk,
        websocket_path: local.config.websocket_path.clone(),
    }
}

/// Connects and subscribes, holding one setup slot, and counts the outcome.
async fn open_subscriber(
    local: &Local,
    spec: &SubscriberSpec,
    connection_index: usize,
) -> Result<Client, BenchError> {
    let _slot = local
        .setup_slots
        .acquire_permit(1)
        .await
        .expect("the setup semaphore is never closed");
    let options = connect_options(
        local,
        "sub",
        spec.index,
        connection_index,
        SUBSCRIBER_READ_CHUNK,
    );
    let mut client = Client::connect(&options).await?;
    let mut early =
        |_: &mut Client, packet: Packet| Err(BenchError::UnexpectedPacket(packet.name()));
    client
        .subscribe(
            std::slice::from_ref(&spec.filter),
            local.config.qos,
            &mut early,
        )
        .await?;
    client.set_read_timeout(Some(SUBSCRIBER_WAKE))?;
    Ok(client)
}

async fn subscriber_task(
    local: Rc<Local>,
    spec: SubscriberSpec,
    connection_index: usize,
) -> Option<SubscriberPartial> {
    let mut client = match open_subscriber(&local, &spec, connection_index).await {
        Ok(client) => client,
        Err(err) => {
            local.record_error(&format!("subscriber {}", spec.index), &err);
            local.task_ready(false);
            return None;
        }
    };
    let client_id = format!("{}-sub{}", local.config.run_id, spec.index);
    Counters::add(&local.counters().connections, 1);
    local.task_ready(true);
    let timeline = local.wait_start().await;

    let mut trackers: Vec<Option<SeqTracker>> = Vec::new();
    if let Err(err) = receive_loop(&local, &mut client, timeline, &mut trackers).await {
        if !local.control.stopping() {
            local.record_error(&format!("subscriber {}", spec.index), &err);
        }
    }
    Counters::sub(&local.counters().connections, 1);
    client.disconnect().await;

    let trackers = trackers
        .into_iter()
        .enumerate()
        .filter_map(|(id, tracker)| Some((id as u32, tracker?)))
        .collect();
    Some(SubscriberPartial {
        client_id,
        expected_from: spec.expected_from,
        trackers,
    })
}

async fn receive_loop(
    local: &Local,
    client: &mut Client,
    timeline: Timeline,
    trackers: &mut Vec<Option<SeqTracker>>,
) -> Result<(), BenchError> {
    let mut last_write_ns = now_ns();
    while !local.control.stopping() {
        if client.read_more().await? {
            let (delivered, delivered_bytes) = handle_buffered(local, client, timeline, trackers)?;
            let counters = local.counters();
            Counters::add(&counters.delivered_msgs, delivered);
            Counters::add(&counters.delivered_bytes, delivered_bytes);
            if !client.tx.is_empty() {
                client.flush().await?;
                last_write_ns = now_ns();
            }
        }
        // A subscriber that only receives still owes the broker a packet
        // within its Keep Alive.
        send_ping_if_due(client, &mut last_write_ns).await?;
    }
    Ok(())
}

/// Handles every whole packet in the read buffer, queueing the acks, and
/// returns the publishes and payload bytes delivered.
fn handle_buffered(
    local: &Local,
    client: &mut Client,
    timeline: Timeline,
    trackers: &mut Vec<Option<SeqTracker>>,
) -> Result<(u64, u64), BenchError> {
    let mut delivered = 0u64;
    let mut delivered_bytes = 0u64;
    // One timestamp per read: every packet in the buffer arrived by then.
    let now = now_ns();
    let measuring = timeline.measures(now);
    let mut latency = local.latency.borrow_mut();
    while let Some(packet) = client.next_packet()? {
        match packet {
            Packet::Publish(publish) => {
                delivered += 1;
                delivered_bytes += publish.payload.len() as u64;
                if let Some(header) = read_header(&publish.payload) {
                    let id = header.publisher as usize;
                    if id >= trackers.len() {
                        trackers.resize(id + 1, None);
                    }
                    trackers[id]
                        .get_or_insert_with(SeqTracker::default)
                        .record(header.seq);
                    if measuring {
                        latency.saturating_record(now.saturating_sub(header.sent_ns).max(1));
                    }
                }
                match (publish.qos, publish.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => client.queue_response(Packet::PubAck, id),
                    (QoS::ExactlyOnce, Some(id)) => client.queue_response(Packet::PubRec, id),
                    _ => {}
                }
            }
            Packet::PubRel(release) => client.queue_response(Packet::PubComp, release.packet_id),
            Packet::PingResp => {}
            other => return Err(BenchError::UnexpectedPacket(other.name())),
        }
    }
    Ok((delivered, delivered_bytes))
}

/// Sends PINGREQ when a Keep Alive is in effect and half of it has
/// passed since the last write.
async fn send_ping_if_due(client: &mut Client, last_write_ns: &mut u64) -> Result<(), BenchError> {
    let Some(keep_alive) = client.keep_alive else {
        return Ok(());
    };
    let now = now_ns();
    if now - *last_write_ns >= u64::from(keep_alive) * 500_000_000 {
        client.queue(&Packet::PingReq);
        client.flush().await?;
        *last_write_ns = now;
    }
    Ok(())
}

/// Stage of a QoS 1/2 publish in its acknowledgement flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AckState {
    /// The packet id is free.
    Free,
    /// Sent and waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitingAck,
    /// PUBREC arrived and PUBREL went out, so PUBCOMP is awaited.
    AwaitingComplete,
}

/// QoS 1/2 publishes awaiting their acks, with the send time of each.
///
/// Packet ids come from `1..=window` and the oldest freed id is reused
/// first, so finding an ack's send time is one array lookup by packet id and
/// nothing is allocated per message.
struct Inflight {
    /// Free packet ids, oldest freed first. It never exceeds the window, so
    /// it never reallocates.
    free: VecDeque<PacketId>,
    /// Send time in [`now_ns`] of the publish using each packet id; index 0
    /// is unused because 0 is no valid packet id.
    sent_ns: Vec<u64>,
    states: Vec<AckState>,
    /// Packet ids not free.
    count: u32,
}

impl Inflight {
    /// Creates the state of a window of `window` publishes, at least 1.
    fn new(window: u16) -> Self {
        let window = window.max(1);
        Inflight {
            free: (1..=window).collect(),
            sent_ns: vec![0; usize::from(window) + 1],
            states: vec![AckState::Free; usize::from(window) + 1],
            count: 0,
        }
    }

    /// Takes a free packet id for a publish sent at `sent_ns`. The caller
    /// keeps `count` below the window, so a free id exists.
    fn take(&mut self, sent_ns: u64) -> PacketId {
        let id = self
            .free
            .pop_front()
            .expect("the caller keeps count below the window");
        self.sent_ns[usize::from(id)] = sent_ns;
        self.states[usize::from(id)] = AckState::AwaitingAck;
        self.count += 1;
        id
    }

    /// Returns the state of `id`. An id outside the window counts as free.
    fn state(&self, id: PacketId) -> AckState {
        self.states
            .get(usize::from(id))
            .copied()
            .unwrap_or(AckState::Free)
    }

    /// Moves `id` from state `from` to `to`, freeing it when `to` is
    /// [`AckState::Free`], and returns the send time of its publish. Returns
    /// `None` and changes nothing when `id` is not in state `from`, as for a
    /// repeated ack.
    fn advance(&mut self, id: PacketId, from: AckState, to: AckState) -> Option<u64> {
        if from == AckState::Free || self.state(id) != from {
            return None;
        }
        let slot = usize::from(id);
        self.states[slot] = to;
        if to == AckState::Free {
            self.free.push_back(id);
            self.count -= 1;
        }
        Some(self.sent_ns[slot])
    }
}

/// Acks decoded from one read, added to the executor's counters at once.
#[derive(Default)]
struct AckTally {
    acked: u64,
    completed: u64,
    rejected: u64,
}

/// Records the time from `sent_ns` to `now` in `histogram` when the publish
/// was sent in the measurement window.
fn record_since(histogram: &mut Histogram<u64>, timeline: Timeline, sent_ns: u64, now: u64) {
    if timeline.measures(sent_ns) {
        histogram.saturating_record(now.saturating_sub(sent_ns).max(1));
    }
}

/// Counts of one publisher at the end of the run.
struct PublisherResult {
    id: u32,
    /// Messages sent, which is also the next sequence number.
    sent: u64,
    /// QoS 1/2 publishes still waiting for their final ack when it stopped.
    unacked: u64,
}

async fn publisher_task(
    local: Rc<Local>,
    spec: PublisherSpec,
    connection_index: usize,
) -> Option<PublisherResult> {
    let opened = {
        let _slot = local
            .setup_slots
            .acquire_permit(1)
            .await
            .expect("the setup semaphore is never closed");
        let options = connect_options(
            &local,
            "pub",
            spec.id,
            connection_index,
            PUBLISHER_READ_CHUNK,
        );
        Client::connect(&options).await
    };
    let mut client = match opened {
        Ok(client) => client,
        Err(err) => {
            local.record_error(&format!("publisher {}", spec.id), &err);
            local.task_ready(false);
            return None;
        }
    };
    if let Err(err) = client.set_read_timeout(None) {
        local.record_error(&format!("publisher {}", spec.id), &err);
    }
    Counters::add(&local.counters().connections, 1);
    local.task_ready(true);
    let timeline = local.wait_start().await;

    let mut publisher = Publisher::new(&local, &client, &spec, timeline);
    if let Err(err) = publisher.run(&mut client).await {
        if !local.control.stopping() {
            let err = client.explain_close(err).await;
            local.record_error(&format!("publisher {}", spec.id), &err);
        }
    }
    let result = PublisherResult {
        id: spec.id,
        sent: publisher.seq,
        unacked: u64::from(publisher.inflight.count),
    };

    // Stay connected until subscribers have drained, so that the broker does
    // not see the publisher leave while its messages are still in flight.
    while !local.control.stopping() {
        glommio::timer::sleep(SUBSCRIBER_WAKE).await;
        if let Err(err) = publisher.keep_alive(&mut client).await {
            let err = client.explain_close(err).await;
            local.record_error(&format!("publisher {}", spec.id), &err);
            break;
        }
    }
    Counters::sub(&local.counters().connections, 1);
    client.disconnect().await;
    Some(result)
}

/// Send loop of one publisher.
struct Publisher<'a> {
    local: &'a Local,
    id: u32,
    template: PublishTemplate,
    timeline: Timeline,
    qos: QoS,
    rate: u64,
    window: u32,
    inflight: Inflight,
    /// Sequence number of the next message, so also the number sent.
    seq: u64,
    last_write_ns: u64,
}

impl<'a> Publisher<'a> {
    fn new(local: &'a Local, client: &Client, spec: &PublisherSpec, timeline: Timeline) -> Self {
        let config = &local.config;
        let window = config.inflight.min(client.receive_maximum).max(1);
        Publisher {
            local,
            id: spec.id,
            template: PublishTemplate::new(
                &spec.topic,
                config.qos,
                false,
                config.payload,
                config.protocol,
            ),
            timeline,
            qos: config.qos,
            rate: config.rate,
            window: u32::from(window),
            inflight: Inflight::new(window),
            seq: 0,
            last_write_ns: now_ns(),
        }
    }

    /// Send time of message `seq` at the configured rate.
    fn due_ns(&self, seq: u64) -> u64 {
        self.timeline.start_ns + (u128::from(seq) * 1_000_000_000 / u128::from(self.rate)) as u64
    }

    /// Messages that may be sent now: those due by the rate, within the
    /// QoS 1/2 window, at most one batch.
    fn sendable(&self, now: u64) -> u64 {
        let payload = self.template.payload_len as u64;
        let mut count = PUBLISH_BATCH.min((PUBLISH_BATCH_BYTES / payload.max(1)).max(1));
        if self.rate > 0 {
            let due = ((u128::from(now - self.timeline.start_ns) * u128::from(self.rate))
                / 1_000_000_000) as u64
                + 1;
            count = count.min(due.saturating_sub(self.seq));
        }
        if self.qos != QoS::AtMostOnce {
            count = count.min(u64::from(self.window.saturating_sub(self.inflight.count)));
        }
        count
    }

    async fn run(&mut self, client: &mut Client) -> Result<(), BenchError> {
        loop {
            let now = now_ns();
            if now >= self.timeline.measure_end_ns || self.local.control.stopping() {
                break;
            }
            let count = self.sendable(now);
            if count > 0 {
                self.send(client, count, now).await?;
            }
            self.wait(client).await?;
        }
        self.finish_acks(client).await
    }

    async fn send(&mut self, client: &mut Client, count: u64, now: u64) -> Result<(), BenchError> {
        for _ in 0..count {
            let packet_id = (self.qos != QoS::AtMostOnce).then(|| self.inflight.take(now));
            let header = Header {
                publisher: self.id,
                seq: self.seq,
                sent_ns: now,
            };
            self.template.append(&mut client.tx, header, packet_id);
            self.seq += 1;
        }
        client.flush().await?;
        self.last_write_ns = now;
        let counters = self.local.counters();
        Counters::add(&counters.sent_msgs, count);
        Counters::add(
            &counters.sent_bytes,
            count * self.template.payload_len as u64,
        );
        Ok(())
    }

    /// Waits for the next reason to send: the rate's next due time, acks that
    /// free the window, or (unthrottled at QoS 0) only a scheduling point.
    async fn wait(&mut self, client: &mut Client) -> Result<(), BenchError> {
        let now = now_ns();
        let until_due = if self.rate > 0 {
            Some(Duration::from_nanos(
                self.due_ns(self.seq)
                    .min(self.timeline.measure_end_ns)
                    .saturating_sub(now),
            ))
        } else {
            None
        };
        if self.qos == QoS::AtMostOnce {
            match until_due {
                Some(delay) if !delay.is_zero() => glommio::timer::sleep(delay).await,
                _ => glommio::yield_if_needed().await,
            }
            return self.keep_alive(client).await;
        }

        let window_full = self.inflight.count >= self.window;
        let wait = match until_due {
            _ if window_full => Some(ACK_WAIT),
            Some(delay) => Some(delay.min(ACK_WAIT)),
            None => None,
        };
        let read = match wait {
            Some(delay) if self.inflight.count > 0 => {
                future::or(async { Some(client.read_more().await) }, async {
                    glommio::timer::sleep(delay).await;
                    None
                })
                .await
            }
            Some(delay) => {
                glommio::timer::sleep(delay).await;
                None
            }
            // Unthrottled with room in the window: take acks that have
            // already arrived, without waiting for more.
            None => {
                future::or(
                    async { Some(client.read_more().await) },
                    future::ready(None),
                )
                .await
            }
        };
        if let Some(result) = read {
            result?;
            self.handle_acks(client).await?;
        }
        self.keep_alive(client).await
    }

    async fn handle_acks(&mut self, client: &mut Client) -> Result<(), BenchError> {
        self.take_acks(client)?;
        if !client.tx.is_empty() {
            client.flush().await?;
            self.last_write_ns = now_ns();
        }
        Ok(())
    }

    /// Decodes every whole packet in the read buffer, records the latency of
    /// each first ack and PUBCOMP, and queues a PUBREL for each PUBREC.
    fn take_acks(&mut self, client: &mut Client) -> Result<(), BenchError> {
        use AckState::{AwaitingAck, AwaitingComplete, Free};

        // One timestamp per read: every ack in the buffer arrived by then.
        let now = now_ns();
        let timeline = self.timeline;
        let mut tally = AckTally::default();
        let mut ack_latency = self.local.ack_latency.borrow_mut();
        let mut complete_latency = self.local.complete_latency.borrow_mut();
        while let Some(packet) = client.next_packet()? {
            match packet {
                Packet::PubAck(ack) if self.qos == QoS::AtLeastOnce => {
                    let Some(sent_ns) = self.inflight.advance(ack.packet_id, AwaitingAck, Free)
                    else {
                        continue;
                    };
                    if ack.reason.is_error() {
                        tally.rejected += 1;
                    } else {
                        tally.acked += 1;
                        record_since(&mut ack_latency, timeline, sent_ns, now);
                    }
                }
                Packet::PubRec(rec) if self.qos == QoS::ExactlyOnce => {
                    let id = rec.packet_id;
                    if rec.reason.is_error() {
                        // A PUBREC with an error reason code ends the exchange.
                        if self.inflight.advance(id, AwaitingAck, Free).is_some() {
                            tally.rejected += 1;
                        }
                        continue;
                    }
                    if let Some(sent_ns) = self.inflight.advance(id, AwaitingAck, AwaitingComplete)
                    {
                        tally.acked += 1;
                        record_since(&mut ack_latency, timeline, sent_ns, now);
                    }
                    // A repeated PUBREC gets its PUBREL again.
                    if self.inflight.state(id) == AwaitingComplete {
                        client.queue_response(Packet::PubRel, id);
                    }
                }
                Packet::PubComp(comp) if self.qos == QoS::ExactlyOnce => {
                    let id = comp.packet_id;
                    if let Some(sent_ns) = self.inflight.advance(id, AwaitingComplete, Free) {
                        tally.completed += 1;
                        record_since(&mut complete_latency, timeline, sent_ns, now);
                    }
                }
                Packet::PingResp => {}
                other => return Err(BenchError::UnexpectedPacket(other.name())),
            }
        }
        let counters = self.local.counters();
        for (counter, value) in [
            (&counters.acked_msgs, tally.acked),
            (&counters.completed_msgs, tally.completed),
            (&counters.rejected_msgs, tally.rejected),
        ] {
            if value > 0 {
                Counters::add(counter, value);
            }
        }
        Ok(())
    }

    async fn keep_alive(&mut self, client: &mut Client) -> Result<(), BenchError> {
        send_ping_if_due(client, &mut self.last_write_ns).await
    }

    /// Completes the QoS 1/2 exchanges still open when sending stops, within
    /// the drain time, so that QoS 2 messages get their PUBREL.
    async fn finish_acks(&mut self, client: &mut Client) -> Result<(), BenchError> {
        let deadline = now_ns() + self.local.config.drain.as_nanos() as u64;
        while self.inflight.count > 0 && now_ns() < deadline && !self.local.control.stopping() {
            let read = future::or(async { Some(client.read_more().await) }, async {
                glommio::timer::sleep(ACK_WAIT).await;
                None
            })
            .await;
            if let Some(result) = read {
                result?;
                self.handle_acks(client).await?;
            }
            self.keep_alive(client).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_plan_topics() {
        let plan = Plan::fanout("r", 4, 6, 2);
        assert_eq!(plan.publishers.len(), 4);
        assert_eq!(plan.subscribers.len(), 6);
        assert_eq!(plan.publishers[1].topic, "r/fanout/1");
        assert_eq!(plan.subscribers[3].filter, "r/fanout/1");
        assert_eq!(plan.subscribers[3].expected_from, Some(vec![1, 3]));
        assert_eq!(plan.connections(), 10);
    }

    #[test]
    fn fanin_plan_wildcard() {
        let plan = Plan::fanin("r", 3, 1);
        assert_eq!(plan.subscribers[0].filter, "r/fanin/+");
        assert_eq!(plan.subscribers[0].expected_from, Some(vec![0, 1, 2]));
        assert_eq!(plan.publishers[2].topic, "r/fanin/2");
    }

    #[test]
    fn p2p_plan_pairs() {
        let plan = Plan::p2p("r", 2);
        assert_eq!(plan.subscribers[1].filter, plan.publishers[1].topic);
        assert_eq!(plan.subscribers[1].expected_from, Some(vec![1]));
    }

    #[test]
    fn inflight_reuses_oldest_freed_id() {
        let mut inflight = Inflight::new(3);
        assert_eq!(inflight.take(10), 1);
        assert_eq!(inflight.take(20), 2);
        assert_eq!(inflight.take(30), 3);
        assert_eq!(inflight.count, 3);
        assert_eq!(
            inflight.advance(2, AckState::AwaitingAck, AckState::Free),
            Some(20)
        );
        assert_eq!(inflight.count, 2);
        assert_eq!(
            inflight.advance(1, AckState::AwaitingAck, AckState::Free),
            Some(10)
        );
        assert_eq!(inflight.take(40), 2);
        assert_eq!(inflight.take(50), 1);
        assert_eq!(inflight.count, 3);
    }

    #[test]
    fn inflight_ignores_repeated_ack() {
        let mut inflight = Inflight::new(2);
        let id = inflight.take(7);
        assert_eq!(
            inflight.advance(id, AckState::AwaitingAck, AckState::Free),
            Some(7)
        );
        assert_eq!(
            inflight.advance(id, AckState::AwaitingAck, AckState::Free),
            None
        );
        assert_eq!(inflight.count, 0);
        assert_eq!(inflight.free.len(), 2, "a repeated ack frees no id twice");
    }

    #[test]
    fn inflight_ignores_unknown_ids() {
        let mut inflight = Inflight::new(2);
        inflight.take(7);
        for id in [0, 2, 3, u16::MAX] {
            assert_eq!(inflight.state(id), AckState::Free, "id {id}");
            assert_eq!(
                inflight.advance(id, AckState::AwaitingAck, AckState::Free),
                None,
                "id {id}"
            );
        }
        assert_eq!(inflight.count, 1);
    }

    #[test]
    fn inflight_qos2_flow() {
        let mut inflight = Inflight::new(1);
        let id = inflight.take(5);
        assert_eq!(
            inflight.advance(id, AckState::AwaitingComplete, AckState::Free),
            None,
            "PUBCOMP before PUBREC"
        );
        assert_eq!(
            inflight.advance(id, AckState::AwaitingAck, AckState::AwaitingComplete),
            Some(5)
        );
        assert_eq!(inflight.state(id), AckState::AwaitingComplete);
        assert_eq!(inflight.count, 1, "the id stays taken until PUBCOMP");
        assert_eq!(
            inflight.advance(id, AckState::AwaitingComplete, AckState::Free),
            Some(5)
        );
        assert_eq!(inflight.count, 0);
    }

    #[test]
    fn record_since_only_in_window() {
        let timeline = Timeline {
            start_ns: 0,
            warm_end_ns: 100,
            measure_end_ns: 200,
        };
        let mut histogram = crate::stats::new_histogram();
        record_since(&mut histogram, timeline, 50, 1_000);
        record_since(&mut histogram, timeline, 200, 1_000);
        assert_eq!(histogram.len(), 0, "sent outside the window");
        record_since(&mut histogram, timeline, 150, 1_000);
        record_since(&mut histogram, timeline, 199, 199);
        assert_eq!(histogram.len(), 2);
        assert_eq!(histogram.max(), 850);
        assert_eq!(histogram.min(), 1, "a zero interval is recorded as 1 ns");
    }

    #[test]
    fn shared_plan_group() {
        let plan = Plan::shared("r", 1, 3);
        assert!(plan
            .subscribers
            .iter()
            .all(|s| s.filter == "$share/bench/r/shared"));
        assert!(plan.subscribers.iter().all(|s| s.expected_from.is_none()));
    }
}

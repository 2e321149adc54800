//! The `retained` scenario: subscribe storms against many retained topics.
//!
//! Before the start, executor 0 publishes one retained message on each of R
//! topics at QoS 1 and waits for every PUBACK. During the run every
//! subscriber loops: subscribe to all R topics with one wildcard, wait for
//! the R retained messages, unsubscribe. The latency recorded is from
//! SUBSCRIBE to the last retained message. After the run the retained
//! messages are cleared with empty retained publishes.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use coremq_codec::{Packet, Properties, Publish, QoS};

use crate::error::BenchError;
use crate::local::Local;
use crate::mqtt::{Client, ConnectOptions};
use crate::payload::{now_ns, write_header, Header};
use crate::run::{Control, ExecutorBody, ExecutorOutput, RunConfig};
use crate::stats::Counters;

/// Retained publishes sent before waiting for their PUBACKs.
const SEED_BATCH: u32 = 100;

/// Bytes offered to each socket read of a retained subscriber.
const READ_CHUNK: usize = 64 * 1024;

/// Subscribers connecting at the same time on one executor.
const SETUP_CONCURRENCY: u64 = 64;

/// Builds the executor body of the `retained` scenario.
pub fn retained_body(config: Arc<RunConfig>, retained: u32, subscribers: u32) -> ExecutorBody {
    Arc::new(move |executor, control| {
        let config = config.clone();
        Box::pin(
            async move { run_executor(executor, control, config, retained, subscribers).await },
        )
    })
}

fn topic_prefix(config: &RunConfig) -> String {
    format!("{}/retained", config.run_id)
}

fn options(config: &RunConfig, role: &str, index: u32, connection_index: usize) -> ConnectOptions {
    ConnectOptions {
        target: config.target,
        source: config.source_for(connection_index),
        protocol: config.protocol,
        keep_alive: config.keep_alive,
        client_id: format!("{}-{role}{index}", config.run_id),
        read_chunk: READ_CHUNK,
        websocket_path: config.websocket_path.clone(),
    }
}

async fn run_executor(
    executor: usize,
    control: Arc<Control>,
    config: Arc<RunConfig>,
    retained: u32,
    subscribers: u32,
) -> ExecutorOutput {
    let threads = config.threads();
    let local = Local::new(executor, control, config.clone(), SETUP_CONCURRENCY);

    // The seeder publishes before this executor reports ready, and no
    // subscriber subscribes before every executor is ready.
    let mut seeded = false;
    if executor == 0 {
        match seed(&local, retained).await {
            Ok(()) => seeded = true,
            Err(err) => {
                local.record_error("retained seeder", &err);
                local.control.abort();
            }
        }
    }

    let tasks: Vec<_> = (0..subscribers)
        .filter(|n| *n as usize % threads == executor)
        .map(|n| glommio::spawn_local(subscriber(local.clone(), n, retained)))
        .collect();
    local.start_when_ready(tasks.len() as u64).await;
    for task in tasks {
        task.await;
    }

    if seeded {
        if let Err(err) = clear(&config, retained).await {
            local.record_error("clearing retained messages", &err);
        }
    }
    local.finish(ExecutorOutput::default())
}

/// Publishes the retained messages, then disconnects: a client left idle
/// for the whole storm would outlive its Keep Alive.
async fn seed(local: &Local, retained: u32) -> Result<(), BenchError> {
    let config = &local.config;
    let mut client = Client::connect(&options(config, "seed", 0, usize::MAX / 2)).await?;
    let mut payload = vec![0u8; config.payload];
    write_header(
        &mut payload,
        Header {
            publisher: 0,
            seq: 0,
            sent_ns: now_ns(),
        },
    );
    publish_retained(
        &mut client,
        &topic_prefix(config),
        retained,
        Some(Bytes::from(payload)),
    )
    .await?;
    client.disconnect().await;
    Ok(())
}

/// Deletes the retained messages [`seed`] published, on a connection of
/// its own.
async fn clear(config: &RunConfig, retained: u32) -> Result<(), BenchError> {
    let mut client = Client::connect(&options(config, "clear", 0, usize::MAX / 2)).await?;
    publish_retained(&mut client, &topic_prefix(config), retained, None).await?;
    client.disconnect().await;
    Ok(())
}

/// Publishes `payload` retained at QoS 1 on topics `prefix/0..count`, or an
/// empty payload, which deletes the retained message, when it is `None`.
async fn publish_retained(
    client: &mut Client,
    prefix: &str,
    count: u32,
    payload: Option<Bytes>,
) -> Result<(), BenchError> {
    let payload = payload.unwrap_or_default();
    let mut next = 0;
    while next < count {
        let batch_end = (next + SEED_BATCH).min(count);
        let mut pending = Vec::new();
        for n in next..batch_end {
            let packet_id = client.allocate_packet_id();
            pending.push(packet_id);
            client.queue(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: format!("{prefix}/{n}"),
                packet_id: Some(packet_id),
                properties: Properties::default(),
                payload: payload.clone(),
            }));
        }
        client.flush().await?;
        while !pending.is_empty() {
            match client.next_packet()? {
                Some(Packet::PubAck(ack)) => pending.retain(|&id| id != ack.packet_id),
                Some(other) => return Err(BenchError::UnexpectedPacket(other.name())),
                None => {
                    if !client.read_more().await? {
                        return Err(BenchError::TimedOut("PUBACK of a retained publish"));
                    }
                }
            }
        }
        next = batch_end;
    }
    Ok(())
}

async fn subscriber(local: Rc<Local>, index: u32, retained: u32) {
    let opened = {
        let _slot = local
            .setup_slots
            .acquire_permit(1)
            .await
            .expect("the setup semaphore is never closed");
        Client::connect(&options(&local.config, "sub", index, index as usize)).await
    };
    let mut client = match opened {
        Ok(client) => client,
        Err(err) => {
            local.record_error(&format!("subscriber {index}"), &err);
            local.task_ready(false);
            return;
        }
    };
    Counters::add(&local.counters().connections, 1);
    local.task_ready(true);
    let timeline = local.wait_start().await;

    let filter = vec![format!("{}/#", topic_prefix(&local.config))];
    while now_ns() < timeline.measure_end_ns && !local.control.stopping() {
        let start = now_ns();
        match subscribe_round(&local, &mut client, &filter, retained).await {
            Ok(()) => {
                let end = now_ns();
                if timeline.measures(end) {
                    local
                        .latency
                        .borrow_mut()
                        .saturating_record((end - start).max(1));
                }
                Counters::add(&local.counters().rounds, 1);
            }
            Err(err) => {
                if !local.control.stopping() {
                    local.record_error(&format!("subscriber {index}"), &err);
                }
                break;
            }
        }
    }
    Counters::sub(&local.counters().connections, 1);
    client.disconnect().await;
}

/// Subscribes, waits for `retained` retained messages, then unsubscribes and
/// waits for the UNSUBACK.
async fn subscribe_round(
    local: &Local,
    client: &mut Client,
    filter: &[String],
    retained: u32,
) -> Result<(), BenchError> {
    let counters = local.counters();
    let received = Cell::new(0u32);
    let mut on_packet = |client: &mut Client, packet: Packet| -> Result<(), BenchError> {
        match packet {
            Packet::Publish(publish) => {
                received.set(received.get() + 1);
                Counters::add(&counters.delivered_msgs, 1);
                Counters::add(&counters.delivered_bytes, publish.payload.len() as u64);
                if let (QoS::AtLeastOnce, Some(id)) = (publish.qos, publish.packet_id) {
                    client.queue_response(Packet::PubAck, id);
                } else if let (QoS::ExactlyOnce, Some(id)) = (publish.qos, publish.packet_id) {
                    client.queue_response(Packet::PubRec, id);
                }
                Ok(())
            }
            Packet::PubRel(release) => {
                client.queue_response(Packet::PubComp, release.packet_id);
                Ok(())
            }
            Packet::PingResp => Ok(()),
            other => Err(BenchError::UnexpectedPacket(other.name())),
        }
    };
    client
        .subscribe(filter, local.config.qos, &mut on_packet)
        .await?;
    while received.get() < retained {
        match client.next_packet()? {
            Some(packet) => on_packet(client, packet)?,
            None => {
                client.flush().await?;
                if !client.read_more().await? {
                    return Err(BenchError::TimedOut("retained messages"));
                }
            }
        }
    }

    let unsubscribe_id = client.queue_unsubscribe(filter);
    client.flush().await?;
    loop {
        match client.next_packet()? {
            Some(Packet::UnsubAck(ack)) if ack.packet_id == unsubscribe_id => return Ok(()),
            Some(packet) => on_packet(client, packet)?,
            None => {
                client.flush().await?;
                if !client.read_more().await? {
                    return Err(BenchError::TimedOut("UNSUBACK"));
                }
            }
        }
    }
}

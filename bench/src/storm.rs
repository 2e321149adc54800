//! Connection scenarios: `connect` (a storm of short connections) and `idle`
//! (many connections held open).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use coremq_codec::Packet;
use futures_lite::future;

use crate::error::BenchError;
use crate::local::Local;
use crate::mqtt::{Client, ConnectOptions, HANDSHAKE_TIMEOUT};
use crate::payload::now_ns;
use crate::run::{Control, ExecutorBody, ExecutorOutput, RunConfig};
use crate::stats::Counters;

/// Bytes offered to each read of a storm or idle connection, which only
/// carries CONNACK and PINGRESP.
const SMALL_READ_CHUNK: usize = 256;

/// Splits `total` as evenly as possible over `parts` and returns part `index`.
pub fn share_of(total: u64, parts: usize, index: usize) -> u64 {
    let parts = parts as u64;
    let index = index as u64;
    total / parts + u64::from(index < total % parts)
}

/// Builds the executor body of the `connect` scenario with `concurrency`
/// workers in total.
pub fn connect_body(config: Arc<RunConfig>, concurrency: u32) -> ExecutorBody {
    Arc::new(move |executor, control| {
        let config = config.clone();
        Box::pin(async move { run_connect_executor(executor, control, config, concurrency).await })
    })
}

async fn run_connect_executor(
    executor: usize,
    control: Arc<Control>,
    config: Arc<RunConfig>,
    concurrency: u32,
) -> ExecutorOutput {
    let workers = share_of(u64::from(concurrency), config.threads(), executor);
    let local = Local::new(executor, control, config, 1);
    let tasks: Vec<_> = (0..workers)
        .map(|worker| glommio::spawn_local(connect_worker(local.clone(), worker)))
        .collect();
    local.start_when_ready(0).await;
    for task in tasks {
        task.await;
    }
    local.finish(ExecutorOutput::default())
}

/// Connects, waits for CONNACK, disconnects, and repeats until the
/// measurement window ends.
async fn connect_worker(local: Rc<Local>, worker: u64) {
    let timeline = local.wait_start().await;
    let mut attempt = 0u64;
    loop {
        let start = now_ns();
        if start >= timeline.measure_end_ns || local.control.stopping() {
            return;
        }
        let options = ConnectOptions {
            target: local.config.target,
            source: local.config.source_for((attempt + worker) as usize),
            protocol: local.config.protocol,
            keep_alive: local.config.keep_alive,
            client_id: format!(
                "{}-c{}-{worker}-{attempt}",
                local.config.run_id, local.executor
            ),
            read_chunk: SMALL_READ_CHUNK,
            websocket_path: local.config.websocket_path.clone(),
        };
        attempt += 1;
        match Client::connect(&options).await {
            Ok(client) => {
                let end = now_ns();
                if timeline.measures(end) {
                    local
                        .latency
                        .borrow_mut()
                        .saturating_record((end - start).max(1));
                }
                Counters::add(&local.counters().rounds, 1);
                client.disconnect().await;
            }
            Err(err) => {
                local.record_error("connect", &err);
                // A failing broker would otherwise be hammered in a tight loop.
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Builds the executor body of the `idle` scenario: `connections` in total,
/// opened `concurrency` at a time over all executors.
pub fn idle_body(config: Arc<RunConfig>, connections: u32, concurrency: u32) -> ExecutorBody {
    Arc::new(move |executor, control| {
        let config = config.clone();
        Box::pin(async move {
            run_idle_executor(executor, control, config, connections, concurrency).await
        })
    })
}

async fn run_idle_executor(
    executor: usize,
    control: Arc<Control>,
    config: Arc<RunConfig>,
    connections: u32,
    concurrency: u32,
) -> ExecutorOutput {
    let threads = config.threads();
    let slots = share_of(u64::from(concurrency), threads, executor);
    let local = Local::new(executor, control, config, slots);
    let tasks: Vec<_> = (0..connections as usize)
        .filter(|n| n % threads == executor)
        .map(|n| glommio::spawn_local(idle_connection(local.clone(), n)))
        .collect();
    let task_count = tasks.len() as u64;
    local.start_when_ready(task_count).await;
    let relay = glommio::spawn_local({
        let local = local.clone();
        async move { local.relay_stop().await }
    });

    let mut held = 0u64;
    for task in tasks {
        held += u64::from(task.await);
    }
    relay.await;
    let mut output = ExecutorOutput::default();
    output.extra.push(("connections_held", held));
    local.finish(output)
}

/// Opens one connection and keeps it open until the run stops, sending PINGREQ
/// when the broker set a Server Keep Alive. Returns true when the connection
/// lasted the whole run.
async fn idle_connection(local: Rc<Local>, index: usize) -> bool {
    let opened = {
        let _slot = local
            .setup_slots
            .acquire_permit(1)
            .await
            .expect("the setup semaphore is never closed");
        let options = ConnectOptions {
            target: local.config.target,
            source: local.config.source_for(index),
            protocol: local.config.protocol,
            keep_alive: local.config.keep_alive,
            client_id: format!("{}-idle{index}", local.config.run_id),
            read_chunk: SMALL_READ_CHUNK,
            websocket_path: local.config.websocket_path.clone(),
        };
        Client::connect(&options).await
    };
    let mut client = match opened {
        Ok(client) => client,
        Err(err) => {
            local.record_error(&format!("idle connection {index}"), &err);
            local.task_ready(false);
            return false;
        }
    };
    Counters::add(&local.counters().connections, 1);
    local.task_ready(true);

    let held = match hold(&local, &mut client).await {
        Ok(()) => true,
        Err(err) => {
            local.record_error(&format!("idle connection {index}"), &err);
            false
        }
    };
    Counters::sub(&local.counters().connections, 1);
    client.disconnect().await;
    held
}

async fn hold(local: &Local, client: &mut Client) -> Result<(), BenchError> {
    let Some(keep_alive) = client.keep_alive else {
        local.wait_stop().await;
        return Ok(());
    };
    let interval = Duration::from_millis(u64::from(keep_alive) * 500);
    loop {
        let stopped = future::or(
            async {
                local.wait_stop().await;
                true
            },
            async {
                glommio::timer::sleep(interval).await;
                false
            },
        )
        .await;
        if stopped {
            return Ok(());
        }
        client.queue(&Packet::PingReq);
        client.flush().await?;
        client.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        loop {
            match client.next_packet()? {
                Some(Packet::PingResp) => break,
                Some(other) => return Err(BenchError::UnexpectedPacket(other.name())),
                None => {
                    if !client.read_more().await? {
                        return Err(BenchError::TimedOut("PINGRESP"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share_of;

    #[test]
    fn shares_add_up() {
        for (total, parts) in [(10, 3), (1, 4), (0, 2), (64, 1)] {
            let sum: u64 = (0..parts).map(|i| share_of(total, parts, i)).sum();
            assert_eq!(sum, total, "total {total} over {parts} parts");
        }
        assert_eq!(share_of(10, 3, 0), 4);
        assert_eq!(share_of(10, 3, 2), 3);
    }
}

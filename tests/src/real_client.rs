//! rumqttc v5 clients on a tokio runtime, for tests that want a real client
//! library on the other side of the broker.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnectReturnCode, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use rumqttc::v5::mqttbytes::QoS as RealQoS;

/// How long a real client may take to get its CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Options for a client named `client_id` at `addr`, keep alive 30 s.
pub fn options(addr: SocketAddr, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

/// A connected rumqttc v5 client whose event loop runs on a tokio task and
/// forwards every incoming packet.
pub struct RealClient {
    /// Handle for publishing, subscribing and disconnecting.
    pub client: AsyncClient,
    /// The CONNACK the broker sent.
    pub connack: ConnAck,
    incoming: mpsc::UnboundedReceiver<Result<Packet, String>>,
    event_loop: JoinHandle<()>,
}

impl RealClient {
    /// Connects with `options` and waits for a successful CONNACK.
    ///
    /// # Panics
    ///
    /// Panics when the CONNACK does not arrive within 5 s or is not Success.
    pub async fn connect(options: MqttOptions) -> RealClient {
        let client_id = options.client_id();
        let (client, mut event_loop) = AsyncClient::new(options, 100);
        let (sender, mut incoming) = mpsc::unbounded_channel();
        let event_loop = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if sender.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(error) => {
                        let _ = sender.send(Err(error.to_string()));
                        return;
                    }
                }
            }
        });

        let first = tokio::time::timeout(CONNECT_TIMEOUT, incoming.recv()).await;
        let connack = match first {
            Ok(Some(Ok(Packet::ConnAck(connack)))) => connack,
            Ok(Some(Ok(other))) => panic!("{client_id}: expected CONNACK, got {other:?}"),
            Ok(Some(Err(error))) => panic!("{client_id}: connection failed: {error}"),
            Ok(None) => panic!("{client_id}: the event loop stopped before CONNACK"),
            Err(_) => panic!("{client_id}: no CONNACK within {CONNECT_TIMEOUT:?}"),
        };
        assert_eq!(
            connack.code,
            ConnectReturnCode::Success,
            "{client_id}: CONNACK is not Success"
        );
        RealClient {
            client,
            connack,
            incoming,
            event_loop,
        }
    }

    /// Waits up to `timeout` for the next incoming packet; `None` on timeout.
    ///
    /// # Panics
    ///
    /// Panics when the connection failed.
    pub async fn next_packet(&mut self, timeout: Duration) -> Option<Packet> {
        match tokio::time::timeout(timeout, self.incoming.recv()).await {
            Err(_) => None,
            Ok(Some(Ok(packet))) => Some(packet),
            Ok(Some(Err(error))) => panic!("the rumqttc connection failed: {error}"),
            Ok(None) => panic!("the rumqttc event loop stopped"),
        }
    }

    /// Waits up to `timeout` for the next PUBLISH, skipping other packets.
    pub async fn next_publish(&mut self, timeout: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_packet(left).await? {
                Packet::Publish(publish) => return Some(publish),
                _ => continue,
            }
        }
    }

    /// Waits up to `timeout` for a SUBACK, skipping other packets, and
    /// returns it.
    ///
    /// # Panics
    ///
    /// Panics when no SUBACK arrives in time.
    pub async fn expect_suback(&mut self, timeout: Duration) -> rumqttc::v5::mqttbytes::v5::SubAck {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_packet(left).await {
                Some(Packet::SubAck(suback)) => return suback,
                Some(_) => continue,
                None => panic!("no SUBACK within {timeout:?}"),
            }
        }
    }

    /// Collects PUBLISH packets until none arrives for `quiet`.
    pub async fn drain_publishes(&mut self, quiet: Duration) -> Vec<Publish> {
        let mut received = Vec::new();
        while let Some(publish) = self.next_publish(quiet).await {
            received.push(publish);
        }
        received
    }
}

impl Drop for RealClient {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

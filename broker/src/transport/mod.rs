//! Byte-stream transports that wrap an accepted TCP connection before the
//! MQTT codec decodes its bytes: WebSocket (`ws`) and TLS (`tls`), over a
//! TCP stream that the reading and the writing task can share (`tcp`).
//!
//! Each wrapper is generic over an inner stream `S: AsyncRead + AsyncWrite +
//! Unpin` and implements the same traits, so the connection handler runs
//! unchanged over TCP, TLS, WebSocket or WebSocket over TLS. Both run on the
//! shard's glommio executor and must never block it: they only call the inner
//! stream's poll functions and keep their state in plain buffers, which also
//! lets a connection be taken apart and handed to another shard.

pub mod readiness;
pub mod split;
pub mod tcp;
pub mod tls;
pub mod ws;

/// Loopback harness shared by the transport tests.
#[cfg(test)]
pub(crate) mod test_support {
    use glommio::net::{TcpListener, TcpStream};
    use glommio::LocalExecutorBuilder;
    use std::future::Future;
    use std::net::TcpStream as StdTcpStream;
    use std::time::Duration;

    /// Read timeout of test clients, so a broken server fails the test
    /// instead of hanging it.
    pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

    /// Runs `client` on a thread against one connection that `server`
    /// handles on a glommio executor, and returns the server's result.
    pub fn run_pair<T, C, F, Fut>(client: C, server: F) -> T
    where
        C: FnOnce(u16) + Send + 'static,
        F: FnOnce(TcpStream) -> Fut,
        Fut: Future<Output = T>,
    {
        let executor = LocalExecutorBuilder::default()
            .make()
            .expect("glommio executor starts");
        executor.run(async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            let port = listener.local_addr().expect("local address").port();
            let client_thread = std::thread::spawn(move || client(port));
            let socket = listener.accept().await.expect("accept");
            let result = server(socket).await;
            // Waiting without blocking lets the executor finish closing the
            // server's socket, which glommio does asynchronously on drop.
            while !client_thread.is_finished() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            client_thread.join().expect("client thread panicked");
            result
        })
    }

    /// Connects a blocking client socket to the loopback port.
    pub fn connect(port: u16) -> StdTcpStream {
        let stream = StdTcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("set read timeout");
        stream
    }
}

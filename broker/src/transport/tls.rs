//! TLS server transport with rustls.
//!
//! [`TlsConfig::server_config`] loads the PEM files once per listener.
//! [`accept_tls`] runs the handshake on an accepted connection and returns a
//! [`TlsStream`] that reads and writes plaintext. The stream drives a
//! `rustls::ServerConnection` by hand over the inner stream's poll
//! functions, so it never blocks the shard's executor. Because all TLS state
//! lives in the `ServerConnection`, which is `Send`, a connection can be
//! split with [`TlsStream::into_parts`] and rebuilt on another shard.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{ready, AsyncRead, AsyncWrite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use thiserror::Error;

/// Default time a client has to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Certificate files and client-certificate policy of a TLS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
    /// PEM file with the CA certificates that sign client certificates.
    pub client_ca_path: Option<PathBuf>,
    /// Rejects clients without a valid certificate. Requires `client_ca_path`.
    pub require_client_cert: bool,
}

/// A failed TLS set-up or handshake.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error(
        "cannot read {what} file {path}: {source}; check that the path exists and is readable"
    )]
    ReadFile {
        /// File role: "certificate", "private key" or "client CA".
        what: &'static str,
        /// Path as configured.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A PEM file did not contain what it should.
    #[error("invalid {what} file {path}: {reason}")]
    InvalidFile {
        /// File role: "certificate", "private key" or "client CA".
        what: &'static str,
        /// Path as configured.
        path: PathBuf,
        /// Problem found and the fix.
        reason: String,
    },
    /// rustls rejected the certificate chain together with the key.
    #[error(
        "certificate {cert} with key {key} rejected: {source}; check that the key belongs to the \
         leaf certificate, which must come first in the certificate file"
    )]
    CertificateRejected {
        /// Certificate file path.
        cert: PathBuf,
        /// Key file path.
        key: PathBuf,
        /// Error from rustls.
        source: rustls::Error,
    },
    /// `require_client_cert` is set without a CA to check client
    /// certificates against.
    #[error(
        "require_client_cert is set but client_ca_path is missing; set client_ca_path to the PEM \
         file of the CA that signs client certificates"
    )]
    MissingClientCa,
    /// The client did not complete the handshake in time.
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The handshake failed: a protocol error, a rejected client
    /// certificate, or the connection closed.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

impl TlsConfig {
    /// Loads the PEM files and builds the rustls configuration that every
    /// connection of the listener shares.
    ///
    /// # Errors
    ///
    /// Returns a [`TlsError`] naming the file and the fix when a file is
    /// missing, contains no usable PEM item, or the key does not match the
    /// certificate.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = load_certificates("certificate", &self.cert_path)?;
        let key = load_private_key(&self.key_path)?;

        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions");

        let builder = match &self.client_ca_path {
            None if self.require_client_cert => return Err(TlsError::MissingClientCa),
            None => builder.with_no_client_auth(),
            Some(ca_path) => {
                let verifier = self.client_verifier(ca_path, provider)?;
                builder.with_client_cert_verifier(verifier)
            }
        };

        let config = builder.with_single_cert(certs, key).map_err(|source| {
            TlsError::CertificateRejected {
                cert: self.cert_path.clone(),
                key: self.key_path.clone(),
                source,
            }
        })?;
        Ok(Arc::new(config))
    }

    fn client_verifier(
        &self,
        ca_path: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in load_certificates("client CA", ca_path)? {
            roots.add(cert).map_err(|error| TlsError::InvalidFile {
                what: "client CA",
                path: ca_path.to_path_buf(),
                reason: format!("certificate is not a valid trust anchor: {error}"),
            })?;
        }

        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !self.require_client_cert {
            builder = builder.allow_unauthenticated();
        }
        builder.build().map_err(|error| TlsError::InvalidFile {
            what: "client CA",
            path: ca_path.to_path_buf(),
            reason: format!("cannot build the client certificate verifier: {error}"),
        })
    }
}

fn read_pem_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn load_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::InvalidFile {
            what,
            path: path.to_path_buf(),
            reason: format!("cannot parse PEM: {error}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::InvalidFile {
            what,
            path: path.to_path_buf(),
            reason: "no \"BEGIN CERTIFICATE\" block found; the file must contain PEM certificates"
                .to_string(),
        });
    }
    Ok(certs)
}

fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem_file("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| TlsError::InvalidFile {
        what: "private key",
        path: path.to_path_buf(),
        reason: format!(
            "no usable private key ({error}); the file must contain one PEM block of type \
             \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\""
        ),
    })
}

/// Runs the server side of the TLS handshake on `stream`.
///
/// # Errors
///
/// [`TlsError::HandshakeTimeout`] when the client does not finish within
/// `timeout`, [`TlsError::Handshake`] when the handshake fails. rustls sends
/// the client a TLS alert where the protocol calls for one.
pub async fn accept_tls<S>(
    stream: S,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<TlsStream<S>, TlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connection = ServerConnection::new(config).map_err(|error| {
        TlsError::Handshake(io::Error::other(format!(
            "cannot start TLS session: {error}"
        )))
    })?;
    let mut tls = TlsStream::from_parts(stream, TlsHandoff { connection });

    let handshake = async {
        futures_lite::future::poll_fn(|cx| tls.poll_handshake(cx))
            .await
            .map_err(TlsError::Handshake)
    };
    let deadline = async {
        glommio::timer::sleep(timeout).await;
        Err(TlsError::HandshakeTimeout(timeout))
    };
    futures_lite::future::or(handshake, deadline).await?;
    Ok(tls)
}

/// TLS session state without the socket, for moving a connection to another
/// shard. `rustls::ServerConnection` is `Send`, so this is too. It contains
/// the keys, sequence numbers and any received or pending bytes.
#[derive(Debug)]
pub struct TlsHandoff {
    /// The rustls session.
    pub connection: ServerConnection,
}

/// A TLS connection read and written as plaintext.
pub struct TlsStream<S> {
    inner: S,
    connection: ServerConnection,
}

/// Presents the inner async stream to rustls as a `std::io` stream for one
/// poll: `Pending` becomes `WouldBlock`, and the waker stays registered.
struct SyncAdapter<'a, 'b, S> {
    inner: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncAdapter<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.inner).poll_read(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncAdapter<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.inner).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.inner).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S> TlsStream<S> {
    /// Rebuilds a stream from a socket and the session that
    /// [`TlsStream::into_parts`] returned.
    pub fn from_parts(inner: S, handoff: TlsHandoff) -> Self {
        TlsStream {
            inner,
            connection: handoff.connection,
        }
    }

    /// Splits the stream into its socket and its TLS session.
    pub fn into_parts(self) -> (S, TlsHandoff) {
        let handoff = TlsHandoff {
            connection: self.connection,
        };
        (self.inner, handoff)
    }

    /// Returns the Common Name of the client certificate's subject, for use
    /// as the MQTT user name under mutual TLS. `None` when the client sent no
    /// certificate or its subject has no UTF-8 Common Name.
    pub fn peer_common_name(&self) -> Option<String> {
        let certificate = self.connection.peer_certificates()?.first()?;
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
        let common_name = parsed.subject().iter_common_name().next()?;
        common_name.as_str().ok().map(str::to_owned)
    }

    /// Returns the rustls session, for ALPN, SNI or cipher details.
    pub fn connection(&self) -> &ServerConnection {
        &self.connection
    }

    /// Returns the inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Writes TLS records that rustls has queued until none are left or the
    /// socket would block.
    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.connection.wants_write() {
            let mut adapter = SyncAdapter {
                inner: &mut self.inner,
                cx,
            };
            match self.connection.write_tls(&mut adapter) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "socket accepted no bytes of a TLS record",
                    )))
                }
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Reads TLS records from the socket and decrypts them. Returns the
    /// number of bytes read from the socket, 0 at end of stream.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut adapter = SyncAdapter {
            inner: &mut self.inner,
            cx,
        };
        let read = match self.connection.read_tls(&mut adapter) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(error) => return Poll::Ready(Err(error)),
        };

        if let Err(error) = self.connection.process_new_packets() {
            // rustls has queued an alert with the failure reason for the
            // client.
            let _ = self.poll_write_tls(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
        }
        Poll::Ready(Ok(read))
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_write_tls(cx))?;
            if !self.connection.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_read_tls(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client closed the connection during the TLS handshake",
                )));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            // Ok(0) here is the client's close_notify. A socket closed
            // without one surfaces as an UnexpectedEof error from rustls.
            match this.connection.reader().read(buf) {
                Ok(read) => return Poll::Ready(Ok(read)),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }

            // Records that rustls produced while reading (key updates,
            // alerts) go out before waiting for more input.
            if let Poll::Ready(Err(error)) = this.poll_write_tls(cx) {
                return Poll::Ready(Err(error));
            }
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            let accepted = this.connection.writer().write(buf)?;
            if accepted > 0 {
                // The plaintext counts as written once rustls has buffered
                // it, and poll_flush finishes sending the records.
                if let Poll::Ready(Err(error)) = this.poll_write_tls(cx) {
                    return Poll::Ready(Err(error));
                }
                return Poll::Ready(Ok(accepted));
            }
            // rustls's send buffer is full: drain it to the socket first.
            ready!(this.poll_write_tls(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.connection.writer().flush()?;
        this.poll_write_tls(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.connection.send_close_notify();
        ready!(this.poll_write_tls(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::test_support::{connect, run_pair};
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    use rustls::{ClientConfig, ClientConnection, StreamOwned};
    use std::net::TcpStream as StdTcpStream;
    use tempfile::TempDir;

    /// Certificates and keys written as PEM files into a temporary folder.
    struct TestPki {
        dir: TempDir,
    }

    impl TestPki {
        /// Creates a CA, a server certificate for `localhost` and a client
        /// certificate with CN `alice`, all signed by that CA, plus a client
        /// certificate `mallory` signed by an unrelated CA.
        fn generate() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let (ca, ca_key) = make_ca("CoreMQ test CA");
            let (other_ca, other_ca_key) = make_ca("Unrelated CA");

            let server_key = KeyPair::generate().expect("server key");
            let mut server_params =
                CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
            server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let server = server_params
                .signed_by(&server_key, &ca, &ca_key)
                .expect("sign server certificate");

            let write = |name: &str, contents: String| {
                fs::write(dir.path().join(name), contents).expect("write PEM file");
            };
            write("ca.pem", ca.pem());
            write("server.pem", server.pem());
            write("server.key", server_key.serialize_pem());
            let (alice, alice_key) = make_client("alice", &ca, &ca_key);
            write("alice.pem", alice);
            write("alice.key", alice_key);
            let (mallory, mallory_key) = make_client("mallory", &other_ca, &other_ca_key);
            write("mallory.pem", mallory);
            write("mallory.key", mallory_key);
            TestPki { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn config(&self, client_ca: bool, require_client_cert: bool) -> TlsConfig {
            TlsConfig {
                cert_path: self.path("server.pem"),
                key_path: self.path("server.key"),
                client_ca_path: client_ca.then(|| self.path("ca.pem")),
                require_client_cert,
            }
        }
    }

    fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        (cert, key)
    }

    fn make_client(name: &str, ca: &rcgen::Certificate, ca_key: &KeyPair) -> (String, String) {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, ca, ca_key)
            .expect("sign client certificate");
        (cert.pem(), key.serialize_pem())
    }

    type ClientStream = StreamOwned<ClientConnection, StdTcpStream>;

    /// Connects a rustls client that trusts `ca.pem` and presents the named
    /// client certificate, and completes its side of the handshake.
    fn tls_client(port: u16, dir: &Path, identity: Option<&str>) -> io::Result<ClientStream> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in load_certificates("CA", &dir.join("ca.pem")).expect("CA loads") {
            roots.add(cert).expect("CA is a trust anchor");
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("default versions")
            .with_root_certificates(roots);
        let config = match identity {
            Some(name) => {
                let certs = load_certificates("client", &dir.join(format!("{name}.pem")))
                    .expect("client certificate loads");
                let key = load_private_key(&dir.join(format!("{name}.key"))).expect("key loads");
                builder
                    .with_client_auth_cert(certs, key)
                    .expect("client identity")
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = "localhost".try_into().expect("valid server name");
        let connection =
            ClientConnection::new(Arc::new(config), server_name).expect("client session");
        let mut stream = StreamOwned::new(connection, connect(port));
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }

    /// Sends `ping`, expects it echoed back, then closes with close_notify.
    fn echo_once(stream: &mut ClientStream) {
        stream.write_all(b"ping").expect("client write");
        let mut echoed = [0u8; 4];
        stream.read_exact(&mut echoed).expect("client read echo");
        assert_eq!(&echoed, b"ping");
        stream.conn.send_close_notify();
        stream.flush().expect("send close_notify");
    }

    /// Serves the server side of `echo_once` and returns the peer's Common
    /// Name.
    async fn serve_echo<S>(socket: S, config: Arc<ServerConfig>) -> Option<String>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut stream = accept_tls(socket, config, DEFAULT_HANDSHAKE_TIMEOUT)
            .await
            .expect("handshake succeeds");
        let mut received = [0u8; 4];
        stream.read_exact(&mut received).await.expect("server read");
        stream.write_all(&received).await.expect("server write");
        stream.flush().await.expect("server flush");
        let mut rest = Vec::new();
        stream
            .read_to_end(&mut rest)
            .await
            .expect("clean close_notify");
        assert!(rest.is_empty(), "no data after the echo");
        stream.peer_common_name()
    }

    #[test]
    fn echo_without_client_certificate() {
        let pki = TestPki::generate();
        let config = pki
            .config(false, false)
            .server_config()
            .expect("config loads");
        let dir = pki.path("");
        let common_name = run_pair(
            move |port| echo_once(&mut tls_client(port, &dir, None).expect("handshake")),
            |socket| serve_echo(socket, config),
        );
        assert_eq!(common_name, None);
    }

    #[test]
    fn mutual_tls_yields_common_name() {
        let pki = TestPki::generate();
        let config = pki
            .config(true, true)
            .server_config()
            .expect("config loads");
        let dir = pki.path("");
        let common_name = run_pair(
            move |port| echo_once(&mut tls_client(port, &dir, Some("alice")).expect("handshake")),
            |socket| serve_echo(socket, config),
        );
        assert_eq!(common_name.as_deref(), Some("alice"));
    }

    #[test]
    fn optional_client_certificate_may_be_omitted() {
        let pki = TestPki::generate();
        let config = pki
            .config(true, false)
            .server_config()
            .expect("config loads");
        let dir = pki.path("");
        let common_name = run_pair(
            move |port| echo_once(&mut tls_client(port, &dir, None).expect("handshake")),
            |socket| serve_echo(socket, config),
        );
        assert_eq!(common_name, None);
    }

    /// Runs a handshake that the server must reject and returns its error.
    fn rejected_handshake(
        pki: &TestPki,
        config: TlsConfig,
        identity: Option<&'static str>,
    ) -> TlsError {
        let server_config = config.server_config().expect("config loads");
        let dir = pki.path("");
        run_pair(
            move |port| {
                // With TLS 1.3 the client finishes before the server checks
                // its certificate, so the rejection shows on the next read.
                if let Ok(mut stream) = tls_client(port, &dir, identity) {
                    let mut buf = [0u8; 1];
                    let _ = stream.read(&mut buf);
                }
            },
            |socket| async move {
                match accept_tls(socket, server_config, DEFAULT_HANDSHAKE_TIMEOUT).await {
                    Ok(_) => panic!("handshake must fail"),
                    Err(error) => error,
                }
            },
        )
    }

    #[test]
    fn missing_required_client_certificate_rejected() {
        let pki = TestPki::generate();
        let error = rejected_handshake(&pki, pki.config(true, true), None);
        assert!(matches!(error, TlsError::Handshake(_)), "{error}");
    }

    #[test]
    fn untrusted_client_certificate_rejected() {
        let pki = TestPki::generate();
        let error = rejected_handshake(&pki, pki.config(true, true), Some("mallory"));
        assert!(matches!(error, TlsError::Handshake(_)), "{error}");
    }

    #[test]
    fn silent_client_times_out() {
        let pki = TestPki::generate();
        let config = pki
            .config(false, false)
            .server_config()
            .expect("config loads");
        let error = run_pair(
            |port| {
                let mut stream = connect(port);
                let mut buf = [0u8; 16];
                let _ = stream.read(&mut buf);
            },
            |socket| async move {
                match accept_tls(socket, config, Duration::from_millis(100)).await {
                    Ok(_) => panic!("a silent client must not complete a handshake"),
                    Err(error) => error,
                }
            },
        );
        assert!(matches!(error, TlsError::HandshakeTimeout(_)), "{error}");
    }

    #[test]
    fn handoff_continues_session() {
        fn assert_send<T: Send>() {}
        assert_send::<TlsHandoff>();

        let pki = TestPki::generate();
        let config = pki
            .config(false, false)
            .server_config()
            .expect("config loads");
        let dir = pki.path("");
        let received = run_pair(
            move |port| {
                let mut stream = tls_client(port, &dir, None).expect("handshake");
                stream.write_all(b"firstsecond").expect("client write");
                stream.flush().expect("client flush");
                let mut reply = [0u8; 5];
                stream.read_exact(&mut reply).expect("read reply");
                assert_eq!(&reply, b"moved");
            },
            |socket| async move {
                let mut stream = accept_tls(socket, config, DEFAULT_HANDSHAKE_TIMEOUT)
                    .await
                    .expect("handshake");
                let mut first = [0u8; 5];
                stream.read_exact(&mut first).await.expect("read first");

                let (socket, handoff) = stream.into_parts();
                let mut stream = TlsStream::from_parts(socket, handoff);

                let mut second = [0u8; 6];
                stream.read_exact(&mut second).await.expect("read second");
                stream
                    .write_all(b"moved")
                    .await
                    .expect("write after handoff");
                stream.flush().await.expect("flush");
                [&first[..], &second[..]].concat()
            },
        );
        assert_eq!(received, b"firstsecond");
    }

    #[test]
    fn websocket_over_tls() {
        use crate::transport::ws::{accept_ws, WsConfig};
        use tungstenite::client::IntoClientRequest;
        use tungstenite::Message;

        let pki = TestPki::generate();
        let config = pki
            .config(false, false)
            .server_config()
            .expect("config loads");
        let dir = pki.path("");
        let received = run_pair(
            move |port| {
                let stream = tls_client(port, &dir, None).expect("TLS handshake");
                let mut request = format!("wss://localhost:{port}/mqtt")
                    .into_client_request()
                    .expect("valid request");
                let protocol = "mqtt".parse().expect("valid header value");
                request
                    .headers_mut()
                    .insert("Sec-WebSocket-Protocol", protocol);
                let (mut socket, _) =
                    tungstenite::client(request, stream).expect("WebSocket handshake");
                socket
                    .send(Message::Binary(vec![0xC0, 0x00].into()))
                    .expect("send");
                match socket.read().expect("read reply") {
                    Message::Binary(bytes) => assert_eq!(&bytes[..], [0xD0, 0x00]),
                    other => panic!("expected a binary reply, got {other:?}"),
                }
                socket.close(None).expect("close");
                while socket.read().is_ok() {}
            },
            |socket| async move {
                let tls = accept_tls(socket, config, DEFAULT_HANDSHAKE_TIMEOUT)
                    .await
                    .expect("TLS handshake");
                let mut stream = accept_ws(tls, &WsConfig::default())
                    .await
                    .expect("WebSocket upgrade");
                let mut request = [0u8; 2];
                stream.read_exact(&mut request).await.expect("read PINGREQ");
                stream
                    .write_all(&[0xD0, 0x00])
                    .await
                    .expect("write PINGRESP");
                stream.flush().await.expect("flush");
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.expect("read to close");
                request
            },
        );
        assert_eq!(received, [0xC0, 0x00]);
    }

    #[test]
    fn missing_certificate_file_named() {
        let pki = TestPki::generate();
        let mut config = pki.config(false, false);
        config.cert_path = pki.path("absent.pem");
        let error = config.server_config().expect_err("missing file must fail");
        let message = error.to_string();
        assert!(
            matches!(
                error,
                TlsError::ReadFile {
                    what: "certificate",
                    ..
                }
            ),
            "{message}"
        );
        assert!(message.contains("absent.pem"), "{message}");
    }

    #[test]
    fn key_file_without_key_named() {
        let pki = TestPki::generate();
        let mut config = pki.config(false, false);
        config.key_path = pki.path("server.pem");
        let error = config
            .server_config()
            .expect_err("certificate as key must fail");
        let message = error.to_string();
        assert!(
            matches!(
                error,
                TlsError::InvalidFile {
                    what: "private key",
                    ..
                }
            ),
            "{message}"
        );
        assert!(message.contains("server.pem"), "{message}");
    }

    #[test]
    fn empty_certificate_file_rejected() {
        let pki = TestPki::generate();
        fs::write(pki.path("empty.pem"), "").expect("write empty file");
        let mut config = pki.config(false, false);
        config.cert_path = pki.path("empty.pem");
        let error = config.server_config().expect_err("empty file must fail");
        assert!(error.to_string().contains("BEGIN CERTIFICATE"), "{error}");
    }

    #[test]
    fn mismatched_key_rejected() {
        let pki = TestPki::generate();
        let mut config = pki.config(false, false);
        config.key_path = pki.path("alice.key");
        let error = config.server_config().expect_err("wrong key must fail");
        assert!(
            matches!(error, TlsError::CertificateRejected { .. }),
            "{error}"
        );
    }

    #[test]
    fn required_client_certificate_needs_ca() {
        let pki = TestPki::generate();
        let error = pki
            .config(false, true)
            .server_config()
            .expect_err("must fail");
        assert!(matches!(error, TlsError::MissingClientCa), "{error}");
        assert!(error.to_string().contains("client_ca_path"), "{error}");
    }
}

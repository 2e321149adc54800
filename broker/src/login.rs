//! Authentication of a connection: the user name and password or the
//! enhanced authentication exchange (SCRAM-SHA-256 over AUTH packets) at
//! CONNECT, and re-authentication during the session.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use coremq_codec::{
    decode, encode, Auth, Connect, DecodeContext, Packet, Properties, Protocol, ReasonCode,
};
use coremq_shard::Conn;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::auth::{Authenticator, EnhancedAuth};
use crate::connection::send_connack;
use crate::listener::Transport;

/// Time the client has to respond to the server-first message at CONNECT.
const AUTH_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from the socket per read call during the exchange.
const READ_CHUNK: usize = 4096;

/// Authentication settings of a connected client, kept for re-authentication.
#[derive(Debug, Default)]
pub struct Login {
    /// Authentication Method used at CONNECT, or `None` after a user name
    /// and password (or anonymous) login.
    pub method: Option<String>,
    /// User name that the client authenticated as.
    pub username: Option<String>,
}

/// Authenticates a CONNECT on the shard that owns the session. On success
/// `connect.username` is the authenticated user name and, after enhanced
/// authentication, `connect.properties.authentication_data` is the server's
/// final message for CONNACK. On failure the CONNACK with the reason code
/// has been sent and the caller closes the connection.
///
/// `buffer` contains the bytes read after the CONNECT. The AUTH packet read
/// during the exchange is taken from it.
pub async fn authenticate_connect(
    authenticator: &Authenticator,
    stream: &mut Transport,
    buffer: &mut BytesMut,
    connect: &mut Connect,
    peer: SocketAddr,
    max_packet_size: u32,
) -> Result<Login, ()> {
    let protocol = connect.protocol;
    let Some(method) = connect.properties.authentication_method.clone() else {
        let checked = authenticator
            .authenticate_password(connect.username.as_deref(), connect.password.as_deref());
        return match checked {
            Ok(()) => Ok(Login {
                method: None,
                username: connect.username.clone(),
            }),
            Err(reason) => {
                info!(%peer, user = connect.username.as_deref(), reason = reason.0, "authentication failed");
                send_connack(stream, protocol, reason).await;
                Err(())
            }
        };
    };

    let client_first = connect
        .properties
        .authentication_data
        .clone()
        .unwrap_or_default();
    let (exchange, server_first) = match authenticator.start_enhanced(&method, &client_first) {
        Ok(started) => started,
        Err(reason) => {
            info!(%peer, method, reason = reason.0, "enhanced authentication rejected");
            send_connack(stream, protocol, reason).await;
            return Err(());
        }
    };
    let username = exchange.username().to_string();
    write_packet(
        stream,
        &auth_packet(ReasonCode::CONTINUE_AUTHENTICATION, &method, server_first),
    )
    .await;

    let response = match read_auth_response(stream, buffer, peer, max_packet_size).await {
        Ok(response) => response,
        Err(Some(reason)) => {
            send_connack(stream, protocol, reason).await;
            return Err(());
        }
        Err(None) => return Err(()),
    };
    let same_method = response.properties.authentication_method.as_deref() == Some(method.as_str());
    if response.reason != ReasonCode::CONTINUE_AUTHENTICATION || !same_method {
        info!(%peer, reason = response.reason.0, "AUTH during CONNECT has the wrong reason code or method");
        send_connack(stream, protocol, ReasonCode::PROTOCOL_ERROR).await;
        return Err(());
    }
    let client_final = response.properties.authentication_data.unwrap_or_default();
    match exchange.finish(&client_final) {
        Ok(server_final) => {
            connect.username = Some(username.clone());
            connect.properties.authentication_data = Some(Bytes::from(server_final));
            Ok(Login {
                method: Some(method),
                username: Some(username),
            })
        }
        Err(reason) => {
            send_connack(stream, protocol, reason).await;
            Err(())
        }
    }
}

/// Reads the AUTH packet with which the client responds to the server-first
/// message. `Err(Some(reason))` requests a CONNACK with that reason code, and
/// `Err(None)` requests closing without one.
async fn read_auth_response(
    stream: &mut Transport,
    buffer: &mut BytesMut,
    peer: SocketAddr,
    max_packet_size: u32,
) -> Result<Auth, Option<ReasonCode>> {
    let context = DecodeContext {
        protocol: Protocol::V5,
        max_packet_size,
        topic_alias_max: 0,
    };
    let mut scratch = vec![0u8; READ_CHUNK];
    loop {
        match decode(buffer, &context) {
            Ok(Some(Packet::Auth(auth))) => return Ok(auth),
            Ok(Some(Packet::Disconnect(_))) => return Err(None),
            Ok(Some(other)) => {
                info!(%peer, packet = other.name(), "expected AUTH during enhanced authentication");
                return Err(Some(ReasonCode::PROTOCOL_ERROR));
            }
            Ok(None) => {}
            Err(error) => {
                info!(%peer, %error, "invalid packet during enhanced authentication");
                return Err(Some(error.reason_code()));
            }
        }
        let read = glommio::timer::timeout(AUTH_RESPONSE_TIMEOUT, async {
            Ok(stream.read(&mut scratch).await)
        });
        match read.await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(None),
            Ok(Ok(n)) => buffer.extend_from_slice(&scratch[..n]),
            Err(_) => {
                debug!(%peer, "no AUTH response within the timeout; closing");
                return Err(None);
            }
        }
    }
}

fn auth_packet(reason: ReasonCode, method: &str, data: Vec<u8>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: Properties {
            authentication_method: Some(method.to_string()),
            authentication_data: Some(Bytes::from(data)),
            ..Properties::default()
        },
    })
}

async fn write_packet(stream: &mut Transport, packet: &Packet) {
    let mut out = BytesMut::new();
    encode(packet, Protocol::V5, &mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

/// Re-authentication state of a connected client (MQTT 5.0, section 4.12.1).
pub struct Reauthentication<'a> {
    authenticator: &'a Authenticator,
    login: Login,
    pending: Option<EnhancedAuth>,
}

impl<'a> Reauthentication<'a> {
    pub fn new(authenticator: &'a Authenticator, login: Login) -> Self {
        Reauthentication {
            authenticator,
            login,
            pending: None,
        }
    }

    /// Handles an AUTH packet from a connected client: 0x19 starts a new
    /// exchange with the method used at CONNECT, and 0x18 carries the
    /// client's next message. Replies go to `conn`. Returns the reason code
    /// of the DISCONNECT to send when re-authentication fails or the packet
    /// breaks the protocol.
    pub fn handle(
        &mut self,
        conn: &Rc<Conn>,
        client_id: &str,
        auth: Auth,
    ) -> Result<(), ReasonCode> {
        let Some(method) = self.login.method.as_deref() else {
            info!(
                client_id,
                "AUTH from a client that did not use enhanced authentication"
            );
            return Err(ReasonCode::PROTOCOL_ERROR);
        };
        if auth.properties.authentication_method.as_deref() != Some(method) {
            info!(
                client_id,
                "AUTH with an Authentication Method other than the one used at CONNECT"
            );
            return Err(ReasonCode::PROTOCOL_ERROR);
        }
        let data = auth.properties.authentication_data.unwrap_or_default();

        match auth.reason {
            ReasonCode::REAUTHENTICATE if self.pending.is_none() => {
                let (exchange, server_first) = self.authenticator.start_enhanced(method, &data)?;
                if Some(exchange.username()) != self.login.username.as_deref() {
                    info!(
                        client_id,
                        user = exchange.username(),
                        "re-authentication as another user rejected"
                    );
                    return Err(ReasonCode::NOT_AUTHORIZED);
                }
                conn.send(&auth_packet(
                    ReasonCode::CONTINUE_AUTHENTICATION,
                    method,
                    server_first,
                ));
                self.pending = Some(exchange);
                Ok(())
            }
            ReasonCode::CONTINUE_AUTHENTICATION => {
                let Some(exchange) = self.pending.take() else {
                    info!(
                        client_id,
                        "AUTH 0x18 without a re-authentication in progress"
                    );
                    return Err(ReasonCode::PROTOCOL_ERROR);
                };
                let server_final = exchange.finish(&data)?;
                info!(client_id, "re-authenticated");
                conn.send(&auth_packet(ReasonCode::SUCCESS, method, server_final));
                Ok(())
            }
            other => {
                info!(client_id, reason = other.0, "unexpected AUTH reason code");
                Err(ReasonCode::PROTOCOL_ERROR)
            }
        }
    }
}

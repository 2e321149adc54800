//! SCRAM-SHA-256 server (RFC 5802, RFC 7677) for MQTT 5.0 enhanced
//! authentication with the Authentication Method `SCRAM-SHA-256`.
//!
//! The exchange maps onto MQTT packets as follows. CONNECT carries the
//! client-first message as Authentication Data, and the server replies with
//! AUTH (reason 0x18, Continue authentication) carrying the server-first
//! message. The client's AUTH carries the client-final message, and CONNACK
//! carries the server-final message, which lets the client verify the
//! server.
//!
//! Channel binding (`-PLUS`) is not supported. Clients that send the `p=`
//! flag are rejected, and clients that send `y` or `n` are accepted.
//!
//! NOTE: user names and passwords are used as UTF-8 bytes without the
//! SASLprep normalisation that RFC 5802 asks for, so a non-ASCII password
//! only matches when client and server use the same Unicode normalisation.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Authentication Method name that selects this mechanism.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// PBKDF2 iteration count for new credentials. 4096 is the count in the
/// RFC 7677 example exchange and the EMQX default, and it trades the cost of
/// offline guessing against CPU time per login.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Minimum iteration count accepted from a stored verifier, so that an
/// edited file cannot weaken credentials below the default.
const MIN_ITERATIONS: u32 = 4096;

/// Salt length of new credentials, in bytes.
const SALT_BYTES: usize = 16;

/// Random bytes in the server's part of the nonce.
const SERVER_NONCE_BYTES: usize = 18;

/// Output length of SHA-256 and of HMAC-SHA-256.
const KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A failed or malformed SCRAM exchange.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// A SCRAM message does not follow the RFC 5802 syntax.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which this server lacks.
    #[error("SCRAM channel binding is not supported; use SCRAM-SHA-256 without -PLUS")]
    ChannelBindingUnsupported,
    /// The client sent an authorization identity other than its user name.
    #[error("SCRAM authorization identity differs from the user name")]
    AuthorizationIdentityUnsupported,
    /// The client-first message names a mandatory extension (`m=`).
    #[error("SCRAM mandatory extensions are not supported")]
    ExtensionUnsupported,
    /// The credential lookup found no user of that name.
    #[error("unknown user")]
    UnknownUser,
    /// The client-final message does not repeat the nonce or the GS2 header.
    #[error("SCRAM nonce or channel binding data does not match the first message")]
    Mismatch,
    /// The client proof is wrong: the password is wrong.
    #[error("SCRAM client proof is invalid")]
    InvalidProof,
    /// A stored SCRAM verifier cannot be parsed.
    #[error("invalid SCRAM-SHA-256 verifier: {0}; regenerate it with `coremq passwd`")]
    InvalidVerifier(&'static str),
}

/// Stored SCRAM credentials of one user (RFC 5802 section 3). They let the
/// server check a client proof without knowing the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// Salt given to PBKDF2.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; KEY_BYTES],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_BYTES],
}

impl fmt::Debug for ScramCredentials {
    // The keys allow an offline password search, so they stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredentials {
    /// Derives the credentials for `password` with the given salt and
    /// iteration count.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted_password = salted_password(password, salt, iterations);
        let client_key = hmac(&salted_password, b"Client Key");
        ScramCredentials {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted_password, b"Server Key"),
        }
    }

    /// Derives credentials for `password` with a fresh random salt and
    /// [`DEFAULT_ITERATIONS`].
    pub fn generate(password: &[u8]) -> Self {
        let mut salt = [0u8; SALT_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Self::derive(password, &salt, DEFAULT_ITERATIONS)
    }

    /// Checks a plain password against the stored keys in constant time.
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let candidate = Self::derive(password, &self.salt, self.iterations);
        bool::from(candidate.stored_key.ct_eq(&self.stored_key))
    }

    /// Formats the credentials as an RFC 5803 verifier:
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, with the
    /// salt and keys in base64.
    pub fn to_verifier(&self) -> String {
        format!(
            "{MECHANISM}${}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(self.stored_key),
            BASE64.encode(self.server_key)
        )
    }

    /// Parses an RFC 5803 verifier as written by [`Self::to_verifier`].
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidVerifier`] naming the part that is wrong.
    pub fn parse_verifier(text: &str) -> Result<Self, AuthError> {
        let rest = text
            .strip_prefix(MECHANISM)
            .and_then(|rest| rest.strip_prefix('$'))
            .ok_or(AuthError::InvalidVerifier("missing SCRAM-SHA-256$ prefix"))?;
        let (salt_part, keys_part) = rest.split_once('$').ok_or(AuthError::InvalidVerifier(
            "expected <iterations>:<salt>$<keys>",
        ))?;
        let (iterations, salt) = salt_part
            .split_once(':')
            .ok_or(AuthError::InvalidVerifier("expected <iterations>:<salt>"))?;
        let (stored_key, server_key) = keys_part.split_once(':').ok_or(
            AuthError::InvalidVerifier("expected <StoredKey>:<ServerKey>"),
        )?;

        let iterations: u32 = iterations
            .parse()
            .map_err(|_| AuthError::InvalidVerifier("iteration count is not a number"))?;
        if iterations < MIN_ITERATIONS {
            return Err(AuthError::InvalidVerifier("iteration count is below 4096"));
        }
        let salt = BASE64
            .decode(salt)
            .map_err(|_| AuthError::InvalidVerifier("salt is not base64"))?;
        if salt.is_empty() {
            return Err(AuthError::InvalidVerifier("salt is empty"));
        }
        Ok(ScramCredentials {
            salt,
            iterations,
            stored_key: decode_key(stored_key)?,
            server_key: decode_key(server_key)?,
        })
    }
}

fn decode_key(text: &str) -> Result<[u8; KEY_BYTES], AuthError> {
    let bytes = BASE64
        .decode(text)
        .map_err(|_| AuthError::InvalidVerifier("key is not base64"))?;
    bytes
        .try_into()
        .map_err(|_| AuthError::InvalidVerifier("key is not 32 bytes"))
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_BYTES] {
    let mut output = [0u8; KEY_BYTES];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut output);
    output
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; KEY_BYTES] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Server side of one SCRAM-SHA-256 exchange, between the server-first and
/// the client-final message.
pub struct ScramServer {
    username: String,
    credentials: ScramCredentials,
    /// Base64 of the GS2 header, which the client must echo as `c=`.
    channel_binding: String,
    /// Client nonce followed by server nonce.
    nonce: String,
    /// `client-first-message-bare "," server-first-message`, the start of
    /// the AuthMessage that both proofs sign.
    auth_message_prefix: String,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServer")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Parses the client-first message, looks up the user's credentials and
    /// returns the server-first message to send.
    ///
    /// To avoid telling which users exist, `lookup` should return decoy
    /// credentials for an unknown user instead of `None`. The exchange then
    /// fails at [`ScramServer::finish`] as a wrong password would.
    ///
    /// # Errors
    ///
    /// [`AuthError::Malformed`] and the unsupported-feature variants for a
    /// bad message, [`AuthError::UnknownUser`] when `lookup` returns `None`.
    pub fn start(
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
    ) -> Result<(ScramServer, Vec<u8>), AuthError> {
        let mut server_nonce = [0u8; SERVER_NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut server_nonce);
        Self::start_with_nonce(client_first, lookup, &BASE64.encode(server_nonce))
    }

    fn start_with_nonce(
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredentials>,
        server_nonce: &str,
    ) -> Result<(ScramServer, Vec<u8>), AuthError> {
        let client_first = std::str::from_utf8(client_first)
            .map_err(|_| AuthError::Malformed("client-first message is not UTF-8"))?;
        let parsed = ClientFirst::parse(client_first)?;
        let credentials = lookup(&parsed.username).ok_or(AuthError::UnknownUser)?;

        let nonce = format!("{}{server_nonce}", parsed.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&credentials.salt),
            credentials.iterations
        );
        let server = ScramServer {
            username: parsed.username,
            credentials,
            channel_binding: BASE64.encode(parsed.gs2_header),
            nonce,
            auth_message_prefix: format!("{},{server_first}", parsed.bare),
        };
        Ok((server, server_first.into_bytes()))
    }

    /// Returns the user name from the client-first message.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Checks the client-final message and returns the server-final message,
    /// which proves to the client that the server has its credentials.
    ///
    /// # Errors
    ///
    /// [`AuthError::InvalidProof`] for a wrong password,
    /// [`AuthError::Mismatch`] when the nonce or channel binding differs,
    /// [`AuthError::Malformed`] for a bad message.
    pub fn finish(self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        let client_final = std::str::from_utf8(client_final)
            .map_err(|_| AuthError::Malformed("client-final message is not UTF-8"))?;

        // RFC 5802 section 7: the proof is the last attribute and is not
        // part of the signed message.
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(AuthError::Malformed("client-final message has no proof"))?;
        let mut attributes = without_proof.split(',');
        let channel_binding =
            attributes
                .next()
                .and_then(|a| a.strip_prefix("c="))
                .ok_or(AuthError::Malformed(
                    "client-final message must start with c=",
                ))?;
        let nonce =
            attributes
                .next()
                .and_then(|a| a.strip_prefix("r="))
                .ok_or(AuthError::Malformed(
                    "client-final message has no r= after c=",
                ))?;

        let binding_matches = channel_binding
            .as_bytes()
            .ct_eq(self.channel_binding.as_bytes());
        let nonce_matches = nonce.as_bytes().ct_eq(self.nonce.as_bytes());
        if !bool::from(binding_matches & nonce_matches) {
            return Err(AuthError::Mismatch);
        }

        let proof = BASE64
            .decode(proof)
            .map_err(|_| AuthError::Malformed("client proof is not base64"))?;
        let proof: [u8; KEY_BYTES] = proof
            .try_into()
            .map_err(|_| AuthError::Malformed("client proof is not 32 bytes"))?;

        let auth_message = format!("{},{without_proof}", self.auth_message_prefix);
        let client_signature = hmac(&self.credentials.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; KEY_BYTES];
        for (index, byte) in client_key.iter_mut().enumerate() {
            *byte = proof[index] ^ client_signature[index];
        }
        let computed_stored_key: [u8; KEY_BYTES] = Sha256::digest(client_key).into();
        if !bool::from(computed_stored_key.ct_eq(&self.credentials.stored_key)) {
            return Err(AuthError::InvalidProof);
        }

        let server_signature = hmac(&self.credentials.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)).into_bytes())
    }
}

/// Fields of a client-first message.
struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    username: String,
    client_nonce: &'a str,
}

impl<'a> ClientFirst<'a> {
    /// Parses `gs2-header client-first-message-bare` (RFC 5802 section 7).
    fn parse(message: &'a str) -> Result<Self, AuthError> {
        let mut parts = message.splitn(3, ',');
        let binding_flag = parts.next().unwrap_or_default();
        let authzid = parts.next().ok_or(AuthError::Malformed(
            "client-first message has no GS2 header",
        ))?;
        let bare = parts.next().ok_or(AuthError::Malformed(
            "client-first message has no user name",
        ))?;

        match binding_flag {
            "n" | "y" => {}
            flag if flag.starts_with("p=") => return Err(AuthError::ChannelBindingUnsupported),
            _ => {
                return Err(AuthError::Malformed(
                    "GS2 channel binding flag must be n, y or p=",
                ))
            }
        }
        let gs2_header = &message[..binding_flag.len() + authzid.len() + 2];

        let mut attributes = bare.split(',');
        let first = attributes.next().unwrap_or_default();
        if first.starts_with("m=") {
            return Err(AuthError::ExtensionUnsupported);
        }
        let username = first.strip_prefix("n=").ok_or(AuthError::Malformed(
            "client-first message must name the user with n=",
        ))?;
        let username = decode_saslname(username)?;
        if username.is_empty() {
            return Err(AuthError::Malformed("user name is empty"));
        }
        let client_nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Malformed("client-first message has no nonce r="))?;
        if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
            return Err(AuthError::Malformed(
                "client nonce is empty or not printable ASCII",
            ));
        }

        if !authzid.is_empty() {
            let authzid = authzid.strip_prefix("a=").ok_or(AuthError::Malformed(
                "GS2 authorization identity must start with a=",
            ))?;
            if decode_saslname(authzid)? != username {
                return Err(AuthError::AuthorizationIdentityUnsupported);
            }
        }

        Ok(ClientFirst {
            gs2_header,
            bare,
            username,
            client_nonce,
        })
    }
}

/// Decodes a saslname, in which `=2C` stands for `,` and `=3D` for `=`.
fn decode_saslname(text: &str) -> Result<String, AuthError> {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find('=') {
        decoded.push_str(&rest[..index]);
        let escape = rest.get(index..index + 3);
        match escape {
            Some("=2C") => decoded.push(','),
            Some("=3D") => decoded.push('='),
            _ => return Err(AuthError::Malformed("invalid escape in user name")),
        }
        rest = &rest[index + 3..];
    }
    decoded.push_str(rest);
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 section 3: user "user", password "pencil".
    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const RFC_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credentials() -> ScramCredentials {
        let salt = BASE64.decode(RFC_SALT).expect("salt is base64");
        ScramCredentials::derive(b"pencil", &salt, 4096)
    }

    #[test]
    fn rfc7677_test_vector() {
        let (server, server_first) = ScramServer::start_with_nonce(
            RFC_CLIENT_FIRST.as_bytes(),
            |user| (user == "user").then(rfc_credentials),
            RFC_SERVER_NONCE,
        )
        .expect("client-first accepted");
        assert_eq!(String::from_utf8(server_first).unwrap(), RFC_SERVER_FIRST);
        assert_eq!(server.username(), "user");

        let server_final = server
            .finish(RFC_CLIENT_FINAL.as_bytes())
            .expect("proof accepted");
        assert_eq!(String::from_utf8(server_final).unwrap(), RFC_SERVER_FINAL);
    }

    #[test]
    fn rfc7677_wrong_password_rejected() {
        let salt = BASE64.decode(RFC_SALT).unwrap();
        let (server, _) = ScramServer::start_with_nonce(
            RFC_CLIENT_FIRST.as_bytes(),
            |_| Some(ScramCredentials::derive(b"pencil2", &salt, 4096)),
            RFC_SERVER_NONCE,
        )
        .unwrap();
        let result = server.finish(RFC_CLIENT_FINAL.as_bytes());
        assert_eq!(result, Err(AuthError::InvalidProof));
    }

    /// Client side of SCRAM-SHA-256, written from RFC 5802 section 3.
    struct TestClient {
        username: String,
        password: Vec<u8>,
        nonce: String,
        gs2_header: &'static str,
    }

    impl TestClient {
        fn new(username: &str, password: &[u8]) -> Self {
            TestClient {
                username: username.to_string(),
                password: password.to_vec(),
                nonce: "fyko+d2lbbFgONRv9qkxdawL".to_string(),
                gs2_header: "n,,",
            }
        }

        fn bare(&self) -> String {
            let escaped = self.username.replace('=', "=3D").replace(',', "=2C");
            format!("n={escaped},r={}", self.nonce)
        }

        fn client_first(&self) -> Vec<u8> {
            format!("{}{}", self.gs2_header, self.bare()).into_bytes()
        }

        /// Returns the client-final message and the server signature the
        /// client expects.
        fn client_final(&self, server_first: &[u8]) -> (Vec<u8>, String) {
            let server_first = std::str::from_utf8(server_first).unwrap();
            let mut nonce = "";
            let mut salt = Vec::new();
            let mut iterations = 0;
            for attribute in server_first.split(',') {
                let (key, value) = attribute.split_at(2);
                match key {
                    "r=" => nonce = value,
                    "s=" => salt = BASE64.decode(value).unwrap(),
                    "i=" => iterations = value.parse().unwrap(),
                    _ => panic!("unexpected attribute {attribute}"),
                }
            }
            assert!(
                nonce.starts_with(&self.nonce),
                "server nonce extends the client's"
            );
            assert!(nonce.len() > self.nonce.len(), "server added its own nonce");

            let salted = salted_password(&self.password, &salt, iterations);
            let client_key = hmac(&salted, b"Client Key");
            let stored_key = Sha256::digest(client_key);
            let without_proof = format!("c={},r={nonce}", BASE64.encode(self.gs2_header));
            let auth_message = format!("{},{server_first},{without_proof}", self.bare());
            let signature = hmac(&stored_key, auth_message.as_bytes());
            let proof: Vec<u8> = client_key
                .iter()
                .zip(signature)
                .map(|(k, s)| k ^ s)
                .collect();
            let server_key = hmac(&salted, b"Server Key");
            let expected = format!(
                "v={}",
                BASE64.encode(hmac(&server_key, auth_message.as_bytes()))
            );
            let message = format!("{without_proof},p={}", BASE64.encode(proof));
            (message.into_bytes(), expected)
        }
    }

    fn run_exchange(client: &TestClient, stored: &ScramCredentials) -> Result<(), AuthError> {
        let (server, server_first) =
            ScramServer::start(&client.client_first(), |_| Some(stored.clone()))?;
        let (client_final, expected) = client.client_final(&server_first);
        let server_final = server.finish(&client_final)?;
        assert_eq!(String::from_utf8(server_final).unwrap(), expected);
        Ok(())
    }

    #[test]
    fn client_with_right_password_accepted() {
        let stored = ScramCredentials::generate(b"correct horse");
        let client = TestClient::new("alice", b"correct horse");
        assert_eq!(run_exchange(&client, &stored), Ok(()));
    }

    #[test]
    fn client_with_wrong_password_rejected() {
        let stored = ScramCredentials::generate(b"correct horse");
        let client = TestClient::new("alice", b"battery staple");
        assert_eq!(run_exchange(&client, &stored), Err(AuthError::InvalidProof));
    }

    #[test]
    fn escaped_user_name_decoded() {
        let stored = ScramCredentials::generate(b"pw");
        let client = TestClient::new("a,b=c", b"pw");
        let (server, _) = ScramServer::start(&client.client_first(), |name| {
            assert_eq!(name, "a,b=c");
            Some(stored.clone())
        })
        .expect("escaped name accepted");
        assert_eq!(server.username(), "a,b=c");
    }

    #[test]
    fn server_nonces_differ() {
        let stored = ScramCredentials::generate(b"pw");
        let client = TestClient::new("alice", b"pw");
        let (_, first) =
            ScramServer::start(&client.client_first(), |_| Some(stored.clone())).unwrap();
        let (_, second) =
            ScramServer::start(&client.client_first(), |_| Some(stored.clone())).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn replayed_nonce_rejected() {
        let stored = rfc_credentials();
        let (server, _) =
            ScramServer::start(RFC_CLIENT_FIRST.as_bytes(), |_| Some(stored.clone())).unwrap();
        // The RFC's final message carries the RFC's server nonce, not ours.
        let result = server.finish(RFC_CLIENT_FINAL.as_bytes());
        assert_eq!(result, Err(AuthError::Mismatch));
    }

    #[test]
    fn malformed_client_first_rejected() {
        let cases: [(&str, AuthError); 7] = [
            (
                "p=tls-unique,,n=user,r=abc",
                AuthError::ChannelBindingUnsupported,
            ),
            ("n,,m=ext,n=user,r=abc", AuthError::ExtensionUnsupported),
            (
                "n,a=admin,n=user,r=abc",
                AuthError::AuthorizationIdentityUnsupported,
            ),
            (
                "x,,n=user,r=abc",
                AuthError::Malformed("GS2 channel binding flag must be n, y or p="),
            ),
            (
                "n,,r=abc",
                AuthError::Malformed("client-first message must name the user with n="),
            ),
            (
                "n,,n=user",
                AuthError::Malformed("client-first message has no nonce r="),
            ),
            (
                "n,,n=us=er,r=abc",
                AuthError::Malformed("invalid escape in user name"),
            ),
        ];
        for (message, expected) in cases {
            let result = ScramServer::start(message.as_bytes(), |_| Some(rfc_credentials()));
            assert_eq!(result.err(), Some(expected), "message {message}");
        }
    }

    #[test]
    fn unknown_user_reported() {
        let result = ScramServer::start(RFC_CLIENT_FIRST.as_bytes(), |_| None);
        assert_eq!(result.err(), Some(AuthError::UnknownUser));
    }

    #[test]
    fn verifier_round_trip() {
        let stored = ScramCredentials::generate(b"secret");
        let text = stored.to_verifier();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert_eq!(ScramCredentials::parse_verifier(&text), Ok(stored.clone()));
        assert!(stored.verify_password(b"secret"));
        assert!(!stored.verify_password(b"Secret"));
    }

    #[test]
    fn invalid_verifiers_rejected() {
        let valid = ScramCredentials::generate(b"x").to_verifier();
        let low_iterations = valid.replacen("$4096:", "$1000:", 1);
        let cases = [
            "SCRAM-SHA-1$4096:c2FsdA==$a:b".to_string(),
            "SCRAM-SHA-256$4096:c2FsdA==".to_string(),
            low_iterations,
            valid.replacen(':', ":!!", 1),
            format!("{valid}AAAA"),
        ];
        for case in cases {
            assert!(
                ScramCredentials::parse_verifier(&case).is_err(),
                "verifier {case} must be rejected"
            );
        }
    }
}

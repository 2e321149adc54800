//! Client authentication and authorization.
//!
//! [`Authenticator`] decides whether a CONNECT may proceed, with a user name
//! and password checked against a [`password::PasswordFile`] or with MQTT 5.0
//! enhanced authentication ([`scram`]). [`acl::Acl`] decides per PUBLISH and
//! SUBSCRIBE. Failures map to the reason codes that CONNACK carries.
//!
//! The checks run on the shard that serves the connection. Password checks
//! cost CPU time by design (argon2, PBKDF2), tens of milliseconds each with
//! the default parameters, so they stall that shard for that long per
//! CONNECT that carries a password.

pub mod acl;
pub mod password;
pub mod scram;

use std::path::Path;
use std::sync::Arc;

use coremq_codec::ReasonCode;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use thiserror::Error;

use acl::{Acl, AclError, Permission};
use password::{PasswordFile, PasswordFileError};
use scram::{ScramCredentials, ScramServer};

/// A password or ACL file that cannot be loaded at start-up.
#[derive(Debug, Error)]
pub enum SecurityError {
    #[error(transparent)]
    Passwords(#[from] PasswordFileError),
    #[error(transparent)]
    Acl(#[from] AclError),
}

/// Authentication and authorization state, loaded once at start-up and
/// shared read-only by every shard.
pub struct Security {
    /// One authenticator per listener, by listener index, because anonymous
    /// access is a per-listener setting.
    authenticators: Vec<Authenticator>,
    acl: Option<Arc<Acl>>,
}

impl std::fmt::Debug for Security {
    // Leaves out the password hashes and the decoy key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("listeners", &self.authenticators.len())
            .field("acl", &self.acl.is_some())
            .finish()
    }
}

impl Security {
    /// Loads the password file and the ACL file, if given, and builds one
    /// authenticator per entry of `allow_anonymous` (one per listener).
    ///
    /// # Errors
    ///
    /// [`SecurityError`] naming the file and line that cannot be used.
    pub fn load(
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
        acl_default: Permission,
        allow_anonymous: &[bool],
    ) -> Result<Security, SecurityError> {
        let passwords = password_file.map(PasswordFile::load).transpose()?;
        let acl = match acl_file {
            Some(path) => Some(Arc::new(Acl::load(path, acl_default)?)),
            None => None,
        };
        if let (Some(path), Some(passwords)) = (password_file, &passwords) {
            tracing::info!(path = %path.display(), users = passwords.len(), "loaded password file");
        }
        let authenticators = allow_anonymous
            .iter()
            .map(|allow| Authenticator::new(passwords.clone(), *allow))
            .collect();
        Ok(Security {
            authenticators,
            acl,
        })
    }

    /// Returns the authenticator of listener `index`.
    ///
    /// # Panics
    ///
    /// Panics when `index` is not a listener index of the configuration.
    pub fn authenticator(&self, index: usize) -> &Authenticator {
        &self.authenticators[index]
    }

    /// Returns the ACL, if one was configured.
    pub fn acl(&self) -> Option<Arc<Acl>> {
        self.acl.clone()
    }
}

/// Decides whether a connecting client is who it claims to be.
#[derive(Debug)]
pub struct Authenticator {
    passwords: Option<PasswordFile>,
    allow_anonymous: bool,
    /// Key that derives decoy SCRAM salts for unknown users, so the salt
    /// of an unknown name stays the same across attempts like a real one.
    decoy_key: [u8; 32],
}

/// A SCRAM exchange waiting for the client's AUTH packet.
#[derive(Debug)]
pub struct EnhancedAuth {
    server: ScramServer,
}

impl EnhancedAuth {
    /// Returns the Authentication Method of this exchange.
    pub fn method(&self) -> &'static str {
        scram::MECHANISM
    }

    /// Returns the user name the client claims. It is verified only once
    /// [`EnhancedAuth::finish`] succeeds.
    pub fn username(&self) -> &str {
        self.server.username()
    }

    /// Checks the client's second message (Authentication Data of its AUTH
    /// packet) and returns the Authentication Data for CONNACK.
    ///
    /// # Errors
    ///
    /// 0x87 (Not authorized) for a wrong password or unknown user, 0x82
    /// (Protocol error) for a malformed message.
    pub fn finish(self, data: &[u8]) -> Result<Vec<u8>, ReasonCode> {
        let username = self.server.username().to_string();
        self.server.finish(data).map_err(|error| {
            tracing::info!(user = %username, %error, "SCRAM authentication failed");
            scram_reason(&error)
        })
    }
}

fn scram_reason(error: &scram::AuthError) -> ReasonCode {
    match error {
        scram::AuthError::Malformed(_) => ReasonCode::PROTOCOL_ERROR,
        _ => ReasonCode::NOT_AUTHORIZED,
    }
}

impl Authenticator {
    /// Creates an authenticator. Without a password file every user name is
    /// accepted unchecked when `allow_anonymous` is true, and every client is
    /// rejected otherwise.
    pub fn new(passwords: Option<PasswordFile>, allow_anonymous: bool) -> Self {
        let mut decoy_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut decoy_key);
        Authenticator {
            passwords,
            allow_anonymous,
            decoy_key,
        }
    }

    /// Checks the User Name and Password of a CONNECT packet.
    ///
    /// # Errors
    ///
    /// 0x87 (Not authorized) for a client without a user name when anonymous
    /// clients are not allowed, or for any client when there is neither a
    /// password file nor anonymous access. 0x86 (Bad user name or password)
    /// for an unknown user, a wrong password, or a missing password.
    pub fn authenticate_password(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), ReasonCode> {
        let Some(username) = username else {
            return if self.allow_anonymous {
                Ok(())
            } else {
                Err(ReasonCode::NOT_AUTHORIZED)
            };
        };
        let Some(passwords) = &self.passwords else {
            return if self.allow_anonymous {
                Ok(())
            } else {
                Err(ReasonCode::NOT_AUTHORIZED)
            };
        };
        let Some(password) = password else {
            return Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        };

        if passwords.verify(username, password) {
            Ok(())
        } else {
            tracing::info!(user = %username, "password authentication failed");
            Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        }
    }

    /// Starts enhanced authentication from the Authentication Method and
    /// Authentication Data of a CONNECT packet. Returns the exchange state
    /// and the Authentication Data for the AUTH packet (reason 0x18) that
    /// the server sends next.
    ///
    /// # Errors
    ///
    /// 0x8C (Bad authentication method) for a method other than
    /// `SCRAM-SHA-256` or when there is no password file to check against,
    /// and 0x82 or 0x87 for a malformed or unsupported first message.
    pub fn start_enhanced(
        &self,
        method: &str,
        data: &[u8],
    ) -> Result<(EnhancedAuth, Vec<u8>), ReasonCode> {
        if method != scram::MECHANISM {
            return Err(ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
        let Some(passwords) = &self.passwords else {
            return Err(ReasonCode::BAD_AUTHENTICATION_METHOD);
        };

        // Unknown users get decoy credentials so that the reply does not
        // reveal whether the name exists. Their proof can never verify.
        let lookup = |user: &str| {
            Some(
                passwords
                    .scram_credentials(user)
                    .unwrap_or_else(|| self.decoy_credentials(user)),
            )
        };
        match ScramServer::start(data, lookup) {
            Ok((server, server_first)) => Ok((EnhancedAuth { server }, server_first)),
            Err(error) => {
                tracing::info!(%error, "SCRAM client-first message rejected");
                Err(scram_reason(&error))
            }
        }
    }

    /// Derives stable decoy credentials for a user without a SCRAM verifier.
    /// The stored key is a keyed hash, so no password maps to it.
    fn decoy_credentials(&self, user: &str) -> ScramCredentials {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut mac = Hmac::<Sha256>::new_from_slice(&self.decoy_key)
                .expect("HMAC accepts keys of any length");
            mac.update(label);
            mac.update(user.as_bytes());
            mac.finalize().into_bytes().into()
        };
        ScramCredentials {
            salt: derive(b"salt")[..16].to_vec(),
            iterations: scram::DEFAULT_ITERATIONS,
            stored_key: derive(b"stored key"),
            server_key: derive(b"server key"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn authenticator(allow_anonymous: bool) -> Authenticator {
        let verifier = ScramCredentials::generate(b"scram-pw").to_verifier();
        let text = format!(
            "alice:{}\ncarol:{verifier}\n",
            password::hash_password(b"alice-pw").expect("hash")
        );
        let file = PasswordFile::parse(&text, Path::new("test")).expect("parse");
        Authenticator::new(Some(file), allow_anonymous)
    }

    #[test]
    fn password_results() {
        let auth = authenticator(false);
        assert_eq!(
            auth.authenticate_password(Some("alice"), Some(b"alice-pw")),
            Ok(())
        );
        assert_eq!(
            auth.authenticate_password(Some("carol"), Some(b"scram-pw")),
            Ok(())
        );
        let bad = Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        assert_eq!(
            auth.authenticate_password(Some("alice"), Some(b"wrong")),
            bad
        );
        assert_eq!(auth.authenticate_password(Some("alice"), None), bad);
        assert_eq!(
            auth.authenticate_password(Some("mallory"), Some(b"alice-pw")),
            bad
        );
        assert_eq!(
            auth.authenticate_password(None, None),
            Err(ReasonCode::NOT_AUTHORIZED)
        );
    }

    #[test]
    fn anonymous_allowed_only_without_user_name() {
        let auth = authenticator(true);
        assert_eq!(auth.authenticate_password(None, None), Ok(()));
        assert_eq!(
            auth.authenticate_password(Some("alice"), Some(b"wrong")),
            Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        );
    }

    #[test]
    fn no_password_file() {
        let open = Authenticator::new(None, true);
        assert_eq!(
            open.authenticate_password(Some("anyone"), Some(b"x")),
            Ok(())
        );
        assert_eq!(open.authenticate_password(None, None), Ok(()));

        let closed = Authenticator::new(None, false);
        let not_authorized = Err(ReasonCode::NOT_AUTHORIZED);
        assert_eq!(
            closed.authenticate_password(Some("anyone"), Some(b"x")),
            not_authorized
        );
        assert_eq!(closed.authenticate_password(None, None), not_authorized);
        let enhanced = closed.start_enhanced(scram::MECHANISM, b"n,,n=a,r=abc");
        assert_eq!(enhanced.err(), Some(ReasonCode::BAD_AUTHENTICATION_METHOD));
    }

    #[test]
    fn unknown_method_gets_0x8c() {
        let auth = authenticator(false);
        let result = auth.start_enhanced("GS2-KRB5", b"data");
        assert_eq!(result.err(), Some(ReasonCode::BAD_AUTHENTICATION_METHOD));
    }

    #[test]
    fn malformed_client_first_gets_protocol_error() {
        let auth = authenticator(false);
        let result = auth.start_enhanced(scram::MECHANISM, b"garbage");
        assert_eq!(result.err(), Some(ReasonCode::PROTOCOL_ERROR));
    }

    /// Runs a SCRAM client for `user`/`password` against `auth` and returns
    /// the result of the final step.
    fn scram_login(
        auth: &Authenticator,
        user: &str,
        password: &[u8],
    ) -> Result<Vec<u8>, ReasonCode> {
        use base64::engine::general_purpose::STANDARD as BASE64;
        use base64::Engine;
        use sha2::Digest;

        let client_nonce = "3rfcNHYJY1ZVvWVs7j";
        let bare = format!("n={user},r={client_nonce}");
        let (exchange, server_first) = auth
            .start_enhanced(scram::MECHANISM, format!("n,,{bare}").as_bytes())
            .expect("client-first accepted");
        assert_eq!(exchange.username(), user);

        let server_first = String::from_utf8(server_first).expect("UTF-8");
        let fields: Vec<&str> = server_first.split(',').collect();
        let nonce = fields[0].strip_prefix("r=").expect("nonce");
        let salt = BASE64
            .decode(fields[1].strip_prefix("s=").expect("salt"))
            .expect("base64");
        let iterations: u32 = fields[2]
            .strip_prefix("i=")
            .expect("iterations")
            .parse()
            .unwrap();

        let credentials = ScramCredentials::derive(password, &salt, iterations);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, iterations, &mut salted);
        let mut mac = Hmac::<Sha256>::new_from_slice(&salted).unwrap();
        mac.update(b"Client Key");
        let client_key: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(
            <[u8; 32]>::from(Sha256::digest(client_key)),
            credentials.stored_key
        );

        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let mut mac = Hmac::<Sha256>::new_from_slice(&credentials.stored_key).unwrap();
        mac.update(auth_message.as_bytes());
        let signature: [u8; 32] = mac.finalize().into_bytes().into();
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let client_final = format!("{without_proof},p={}", BASE64.encode(proof));
        exchange.finish(client_final.as_bytes())
    }

    #[test]
    fn scram_login_succeeds_and_fails() {
        let auth = authenticator(false);
        let server_final = scram_login(&auth, "carol", b"scram-pw").expect("right password");
        assert!(server_final.starts_with(b"v="));
        assert_eq!(
            scram_login(&auth, "carol", b"wrong").err(),
            Some(ReasonCode::NOT_AUTHORIZED)
        );
    }

    #[test]
    fn scram_unknown_user_looks_like_wrong_password() {
        let auth = authenticator(false);
        // alice has only an argon2 hash, mallory has no entry at all.
        for user in ["alice", "mallory"] {
            assert_eq!(
                scram_login(&auth, user, b"alice-pw").err(),
                Some(ReasonCode::NOT_AUTHORIZED),
                "user {user}"
            );
        }

        let salt_of = |user: &str| {
            let data = format!("n,,n={user},r=abc");
            let (_, first) = auth
                .start_enhanced(scram::MECHANISM, data.as_bytes())
                .unwrap();
            String::from_utf8(first)
                .unwrap()
                .split(',')
                .nth(1)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            salt_of("mallory"),
            salt_of("mallory"),
            "decoy salt is stable"
        );
        assert_ne!(
            salt_of("mallory"),
            salt_of("trent"),
            "decoy salts differ per user"
        );
    }
}

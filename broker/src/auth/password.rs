//! Password file: user names with salted password hashes.
//!
//! Format: one `user:hash` entry per line. Blank lines and lines starting
//! with `#` are ignored. A hash is one of:
//!
//! - an argon2 PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
//!   checked for plain CONNECT passwords;
//! - an RFC 5803 SCRAM verifier (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`),
//!   used for SCRAM-SHA-256 enhanced authentication and, when the user has
//!   no argon2 line, for plain passwords too.
//!
//! A user may have one line of each kind, and [`passwd_command`] writes both.
//! User names cannot contain `:` or line breaks and cannot start with `#`.
//!
//! Verifying an argon2 hash costs about as much CPU time as the parameters
//! ask for (tens of milliseconds with the crate defaults), so callers on a
//! shard's executor should expect that stall per CONNECT.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use thiserror::Error;

use super::scram::{ScramCredentials, MECHANISM as SCRAM_MECHANISM};

/// File mode of a written password file: owner read and write only.
const PASSWORD_FILE_MODE: u32 = 0o600;

/// A password file that cannot be read, parsed or written.
#[derive(Debug, Error)]
pub enum PasswordFileError {
    /// Reading or writing the file failed.
    #[error("cannot access password file {path}: {source}")]
    Io {
        /// Path of the password file.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A line does not follow the `user:hash` format.
    #[error("invalid password file {path} line {line}: {reason}")]
    InvalidLine {
        /// Path of the password file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Problem found in the line.
        reason: String,
    },
    /// The user name cannot be stored in the file.
    #[error("invalid user name {0:?}: it must be non-empty, must not start with '#' and must not contain ':' or line breaks")]
    InvalidUserName(String),
    /// The password given to the passwd command is unusable.
    #[error("{0}")]
    InvalidPassword(&'static str),
    /// Hashing failed inside the argon2 crate.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Stored hashes of one user.
#[derive(Clone, Debug, Default)]
struct UserEntry {
    /// argon2 PHC string.
    argon2: Option<String>,
    scram: Option<ScramCredentials>,
}

/// A loaded password file.
#[derive(Clone, Debug, Default)]
pub struct PasswordFile {
    users: HashMap<String, UserEntry>,
}

/// argon2 hash of a fixed internal password, verified for unknown users so
/// that a failed login takes as long for them as for known users.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(b"decoy password for unknown users").expect("argon2 hashes"))
}

impl PasswordFile {
    /// Reads and parses the password file at `path`.
    ///
    /// # Errors
    ///
    /// [`PasswordFileError::Io`] when the file cannot be read,
    /// [`PasswordFileError::InvalidLine`] naming the first bad line.
    pub fn load(path: &Path) -> Result<Self, PasswordFileError> {
        let text = fs::read_to_string(path).map_err(|source| PasswordFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses password file text. `path` only appears in error messages.
    ///
    /// # Errors
    ///
    /// [`PasswordFileError::InvalidLine`] naming the first bad line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PasswordFileError> {
        let mut users: HashMap<String, UserEntry> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let invalid = |reason: String| PasswordFileError::InvalidLine {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }

            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| invalid("expected user:hash".to_string()))?;
            if user.is_empty() {
                return Err(invalid("user name is empty".to_string()));
            }
            let entry = users.entry(user.to_string()).or_default();

            if hash.starts_with(SCRAM_MECHANISM) {
                let credentials = ScramCredentials::parse_verifier(hash)
                    .map_err(|error| invalid(error.to_string()))?;
                if entry.scram.replace(credentials).is_some() {
                    return Err(invalid(format!("second SCRAM verifier for user {user}")));
                }
            } else {
                let parsed = PasswordHash::new(hash)
                    .map_err(|error| invalid(format!("invalid PHC hash string: {error}")))?;
                if !parsed.algorithm.as_str().starts_with("argon2") {
                    return Err(invalid(format!(
                        "unsupported hash algorithm {}; use argon2id or a SCRAM-SHA-256 verifier",
                        parsed.algorithm
                    )));
                }
                if entry.argon2.replace(hash.to_string()).is_some() {
                    return Err(invalid(format!("second argon2 hash for user {user}")));
                }
            }
        }
        Ok(PasswordFile { users })
    }

    /// Returns the number of users in the file.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Returns true when the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks `password` for `user`. The argon2 hash is used when the user
    /// has one, the SCRAM verifier otherwise. An unknown user costs one
    /// argon2 verification like a known one, so timing does not tell them
    /// apart.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(entry) = self.users.get(user) else {
            verify_argon2(decoy_hash(), password);
            return false;
        };
        match (&entry.argon2, &entry.scram) {
            (Some(hash), _) => verify_argon2(hash, password),
            (None, Some(scram)) => scram.verify_password(password),
            (None, None) => false,
        }
    }

    /// Returns the SCRAM-SHA-256 credentials of `user`, if the file has a
    /// verifier for that user.
    pub fn scram_credentials(&self, user: &str) -> Option<ScramCredentials> {
        self.users.get(user)?.scram.clone()
    }
}

fn verify_argon2(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(_) => false,
    }
}

/// Hashes `password` with argon2id, the argon2 crate's default parameters
/// and a fresh random salt, and returns the PHC string.
///
/// # Errors
///
/// [`PasswordFileError::Hash`] if the argon2 crate rejects the input.
pub fn hash_password(password: &[u8]) -> Result<String, PasswordFileError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| PasswordFileError::Hash(error.to_string()))
}

fn check_user_name(user: &str) -> Result<(), PasswordFileError> {
    let invalid = user.is_empty()
        || user.starts_with('#')
        || user.contains([':', '\n', '\r'])
        || user.trim() != user;
    if invalid {
        return Err(PasswordFileError::InvalidUserName(user.to_string()));
    }
    Ok(())
}

/// Adds `user` to the password file at `file`, or replaces that user's
/// hashes, writing an argon2 hash and a SCRAM-SHA-256 verifier. Other lines,
/// comments included, are kept. The file is replaced atomically through a
/// temporary file in the same folder and ends up with mode 0600.
///
/// # Errors
///
/// [`PasswordFileError::InvalidUserName`] for a name the format cannot
/// hold, [`PasswordFileError::Io`] when reading or writing fails.
pub fn set_password(file: &Path, user: &str, password: &[u8]) -> Result<(), PasswordFileError> {
    check_user_name(user)?;
    let io_error = |source: io::Error| PasswordFileError::Io {
        path: file.to_path_buf(),
        source,
    };

    let existing = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(io_error(error)),
    };

    let prefix = format!("{user}:");
    let mut contents = String::with_capacity(existing.len() + 512);
    for line in existing.lines() {
        if !line.starts_with(&prefix) {
            contents.push_str(line);
            contents.push('\n');
        }
    }
    contents.push_str(&format!("{user}:{}\n", hash_password(password)?));
    let scram = ScramCredentials::generate(password);
    contents.push_str(&format!("{user}:{}\n", scram.to_verifier()));

    let temporary = temporary_path(file);
    let write_result = write_private_file(&temporary, contents.as_bytes());
    if let Err(error) = write_result {
        let _ = fs::remove_file(&temporary);
        return Err(io_error(error));
    }
    fs::rename(&temporary, file).map_err(io_error)
}

fn temporary_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    file.with_file_name(name)
}

/// Creates `path` with mode 0600 and writes `contents` durably.
fn write_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PASSWORD_FILE_MODE)
        .open(path)?;
    // The mode above applies only when the file is new.
    output.set_permissions(fs::Permissions::from_mode(PASSWORD_FILE_MODE))?;
    output.write_all(contents)?;
    output.sync_all()
}

/// Runs `coremq passwd FILE USER`: reads a password and stores it for
/// `user` with [`set_password`].
///
/// When `stdin_is_tty` is true the password is read twice from the terminal
/// with echo off, and the two must match. Otherwise one line is read from
/// `stdin`, so scripts can pipe the password in.
///
/// # Errors
///
/// [`PasswordFileError::InvalidPassword`] for an empty password or two
/// entries that differ, and the errors of [`set_password`].
pub fn passwd_command(
    file: &Path,
    user: &str,
    stdin: &mut impl BufRead,
    stdin_is_tty: bool,
) -> Result<(), PasswordFileError> {
    check_user_name(user)?;
    let stdin_error = |source: io::Error| PasswordFileError::Io {
        path: PathBuf::from("<stdin>"),
        source,
    };

    // NOTE: the unit tests have no terminal, so they run only the stdin
    // branch below. The terminal branch relies on rpassword.
    let password = if stdin_is_tty {
        let first = rpassword::prompt_password("Password: ").map_err(stdin_error)?;
        let second = rpassword::prompt_password("Repeat password: ").map_err(stdin_error)?;
        if first != second {
            return Err(PasswordFileError::InvalidPassword(
                "the passwords do not match",
            ));
        }
        first
    } else {
        let mut line = String::new();
        stdin.read_line(&mut line).map_err(stdin_error)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };

    if password.is_empty() {
        return Err(PasswordFileError::InvalidPassword("the password is empty"));
    }
    set_password(file, user, password.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("passwd");
        (dir, path)
    }

    #[test]
    fn passwd_adds_user_that_verifies() {
        let (_dir, path) = temp_file();
        passwd_command(&path, "alice", &mut &b"s3cret\n"[..], false).expect("passwd");

        let file = PasswordFile::load(&path).expect("load");
        assert_eq!(file.len(), 1);
        assert!(file.verify("alice", b"s3cret"));
        assert!(!file.verify("alice", b"s3cret\n"));
        assert!(!file.verify("alice", b"other"));
        assert!(!file.verify("bob", b"s3cret"));
        let scram = file.scram_credentials("alice").expect("SCRAM line written");
        assert!(scram.verify_password(b"s3cret"));
    }

    #[test]
    fn passwd_sets_mode_0600() {
        let (_dir, path) = temp_file();
        fs::write(&path, "# users\n").expect("seed file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        passwd_command(&path, "alice", &mut &b"pw\n"[..], false).expect("passwd");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn passwd_replaces_user_and_keeps_others() {
        let (_dir, path) = temp_file();
        fs::write(&path, "# CoreMQ users\n").expect("seed file");
        set_password(&path, "alice", b"old").expect("add alice");
        set_password(&path, "bob", b"bobpw").expect("add bob");
        set_password(&path, "alice", b"new").expect("replace alice");

        let text = fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# CoreMQ users\n"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("alice:")).count(), 2);
        assert_eq!(text.lines().filter(|l| l.starts_with("bob:")).count(), 2);

        let file = PasswordFile::load(&path).expect("load");
        assert!(file.verify("alice", b"new"));
        assert!(!file.verify("alice", b"old"));
        assert!(file.verify("bob", b"bobpw"));
    }

    #[test]
    fn passwd_rejects_bad_input() {
        let (_dir, path) = temp_file();
        let empty = passwd_command(&path, "alice", &mut &b"\n"[..], false);
        assert!(matches!(empty, Err(PasswordFileError::InvalidPassword(_))));
        for name in ["", "a:b", "#x", "a\nb", " a"] {
            let result = set_password(&path, name, b"pw");
            assert!(
                matches!(result, Err(PasswordFileError::InvalidUserName(_))),
                "name {name:?}"
            );
        }
        assert!(!path.exists(), "no file written for rejected input");
    }

    #[test]
    fn scram_only_entry_verifies_plain_password() {
        let verifier = ScramCredentials::generate(b"pw").to_verifier();
        let text = format!("carol:{verifier}\n");
        let file = PasswordFile::parse(&text, Path::new("test")).expect("parse");
        assert!(file.verify("carol", b"pw"));
        assert!(!file.verify("carol", b"wrong"));
    }

    #[test]
    fn invalid_lines_reported_with_number() {
        let cases = [
            ("alice\n", 1, "expected user:hash"),
            ("# ok\nalice:plaintext\n", 2, "invalid PHC hash string"),
            (
                "\n:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA\n",
                2,
                "user name is empty",
            ),
            (
                "bob:SCRAM-SHA-256$10:c2FsdA==$a:b\n",
                1,
                "SCRAM-SHA-256 verifier",
            ),
            (
                "bob:$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n",
                1,
                "unsupported hash algorithm",
            ),
        ];
        for (text, line_number, fragment) in cases {
            let error = PasswordFile::parse(text, Path::new("users.txt")).expect_err(text);
            let message = error.to_string();
            assert!(
                matches!(error, PasswordFileError::InvalidLine { line, .. } if line == line_number),
                "{message}"
            );
            assert!(message.contains(fragment), "{message}");
            assert!(message.contains("users.txt"), "{message}");
        }
    }

    #[test]
    fn missing_file_named_in_error() {
        let error =
            PasswordFile::load(Path::new("/nonexistent/coremq-passwd")).expect_err("missing");
        assert!(
            error.to_string().contains("/nonexistent/coremq-passwd"),
            "{error}"
        );
    }
}

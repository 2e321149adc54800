//! Retry with exponential backoff for the networked backends.

use std::time::Duration;

use crate::{StoreError, StoreResult};

/// Attempts per operation, the first included. With the delays below a
/// request gives up after about 3 seconds of failed attempts, long enough to
/// ride out a server restart on the same machine, short enough that a
/// publisher waiting for its PUBACK sees an error rather than a hang.
const MAX_ATTEMPTS: u32 = 6;

/// Delay before the second attempt; it doubles per attempt.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// Upper bound on one delay.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Runs `attempt` until it succeeds, fails with a non-retryable error, or
/// [`MAX_ATTEMPTS`] is reached, sleeping between attempts. Each retry is
/// logged with the error.
///
/// The callers mark an error retryable only when repeating the call cannot
/// store anything twice (see [`StoreError::is_retryable`]).
pub(crate) fn with_backoff<T>(mut attempt: impl FnMut() -> StoreResult<T>) -> StoreResult<T> {
    let mut delay = FIRST_DELAY;
    let mut attempt_number = 1;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && attempt_number < MAX_ATTEMPTS => {
                tracing::warn!(
                    backend = error.backend(),
                    operation = error.operation(),
                    key = error.key(),
                    attempt = attempt_number,
                    delay_ms = delay.as_millis() as u64,
                    %error,
                    "store request failed, retrying"
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(MAX_DELAY);
                attempt_number += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Returns a [`StoreError::Unavailable`] for a connection failure, or a
/// [`StoreError::OutcomeUnknown`] when a write that must not be repeated may
/// have been applied before the connection failed.
pub(crate) fn connection_error(
    backend: &'static str,
    operation: &'static str,
    key: &str,
    maybe_applied: bool,
    source: crate::SourceError,
) -> StoreError {
    if maybe_applied {
        StoreError::OutcomeUnknown {
            backend,
            operation,
            key: key.to_owned(),
            source,
        }
    } else {
        StoreError::Unavailable {
            backend,
            operation,
            key: key.to_owned(),
            source,
        }
    }
}

//! Retry with capped exponential backoff for the networked backends.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant, SystemTime};

use crate::{SourceError, StoreError, StoreResult};

/// Default retry window of the MySQL and Redis backends. It is meant to ride
/// out a server restart, which takes seconds, and longer after a crash while
/// the server replays its log. A publisher waits up to this long, plus one
/// attempt, for its PUBACK.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// Delay before the second attempt; it doubles per attempt.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// Upper bound on one delay, which is also how late a retry can notice
/// that the server is back.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Runs `attempt` until it succeeds or fails with a non-retryable error,
/// sleeping between attempts, for at most `timeout` after the first attempt
/// started. The last attempt starts at the deadline at the latest, so the
/// call may take `timeout` plus one attempt. A zero `timeout` makes a single
/// attempt.
///
/// Each retry is logged at warn level with the backend, operation, key,
/// attempt number, delay and error. A success after retries is logged at
/// info level.
///
/// The callers mark an error retryable only when repeating the call cannot
/// store anything twice (see [`StoreError::is_retryable`]).
pub(crate) fn with_backoff<T>(
    timeout: Duration,
    attempt: impl FnMut() -> StoreResult<T>,
) -> StoreResult<T> {
    retry_while(timeout, StoreError::is_retryable, attempt)
}

/// Runs a write that the backend deduplicates, with retries as in
/// [`with_backoff`].
///
/// The backend tags each write with a sequence number. In the same atomic
/// step as the write, it checks the number against the last one it applied
/// for this appender: a higher number is applied, an equal one returns the
/// stored result of the earlier attempt. So an attempt that failed with
/// [`StoreError::OutcomeUnknown`] may be repeated: the repeat either applies
/// the write, or finds it applied and returns its result.
///
/// When the retries end in an error after an attempt whose outcome was
/// unknown, returns that attempt's [`StoreError::OutcomeUnknown`].
pub(crate) fn with_backoff_deduplicated<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> StoreResult<T>,
) -> StoreResult<T> {
    let mut first_unknown: Option<StoreError> = None;
    let is_retryable = |error: &StoreError| {
        error.is_retryable() || matches!(error, StoreError::OutcomeUnknown { .. })
    };
    let result = retry_while(timeout, is_retryable, || {
        attempt().inspect_err(|error| {
            if first_unknown.is_none() && matches!(error, StoreError::OutcomeUnknown { .. }) {
                first_unknown = Some(error.clone());
            }
        })
    });
    match (result, first_unknown) {
        (Err(_), Some(unknown)) => Err(unknown),
        (result, _) => result,
    }
}

fn retry_while<T>(
    timeout: Duration,
    is_retryable: impl Fn(&StoreError) -> bool,
    mut attempt: impl FnMut() -> StoreResult<T>,
) -> StoreResult<T> {
    let started = Instant::now();
    let mut delay = FIRST_DELAY;
    let mut attempt_number: u32 = 1;
    let mut last_error: Option<StoreError> = None;
    loop {
        match attempt() {
            Ok(value) => {
                if let Some(error) = last_error {
                    tracing::info!(
                        backend = error.backend(),
                        operation = error.operation(),
                        key = error.key(),
                        attempts = attempt_number,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "store request succeeded after retries"
                    );
                }
                return Ok(value);
            }
            Err(error) if is_retryable(&error) => {
                let remaining = timeout.saturating_sub(started.elapsed());
                if remaining.is_zero() {
                    if attempt_number > 1 {
                        tracing::warn!(
                            backend = error.backend(),
                            operation = error.operation(),
                            key = error.key(),
                            attempts = attempt_number,
                            timeout_ms = timeout.as_millis() as u64,
                            %error,
                            "store request failed, retry timeout reached"
                        );
                    }
                    return Err(error);
                }
                let sleep = delay.min(remaining);
                tracing::warn!(
                    backend = error.backend(),
                    operation = error.operation(),
                    key = error.key(),
                    attempt = attempt_number,
                    delay_ms = sleep.as_millis() as u64,
                    %error,
                    "store request failed, retrying"
                );
                std::thread::sleep(sleep);
                delay = (delay * 2).min(MAX_DELAY);
                attempt_number += 1;
                last_error = Some(error);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Returns a random id for one open store, which tags its deduplicated
/// writes apart from those of other processes that share the server.
pub(crate) fn new_appender_id() -> String {
    // RandomState is seeded from the operating system's random source; the
    // process id and time make two stores in one process differ as well.
    let random = RandomState::new();
    let now = SystemTime::now();
    let high = random.hash_one((std::process::id(), now, 1u8));
    let low = random.hash_one((std::process::id(), now, 2u8));
    format!("{high:016x}{low:016x}")
}

/// Returns a [`StoreError::Unavailable`] for a connection failure, or a
/// [`StoreError::OutcomeUnknown`] when a write that must not be repeated may
/// have been applied before the connection failed.
pub(crate) fn connection_error(
    backend: &'static str,
    operation: &'static str,
    key: &str,
    maybe_applied: bool,
    source: SourceError,
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

/// Shortest socket timeout of one request, so that a retry timeout of 0
/// still gives a healthy server time to reply.
const MIN_IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Socket read and write timeout of one request: at most the retry timeout,
/// so that a server that accepts connections but stops replying (a
/// stopped process, a full disk) cannot hold a request longer than the
/// retry timeout promises.
pub(crate) fn io_timeout(retry_timeout: Duration, longest: Duration) -> Duration {
    retry_timeout.clamp(MIN_IO_TIMEOUT, longest.max(MIN_IO_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            backend: "test",
            operation: "append",
            key: "q".to_owned(),
            source: SourceError::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        }
    }

    #[test]
    fn retries_until_success() {
        let mut calls = 0;
        let result = with_backoff(Duration::from_secs(5), || {
            calls += 1;
            if calls < 3 {
                Err(unavailable())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.expect("third attempt succeeds"), 3);
    }

    #[test]
    fn stops_at_timeout() {
        let started = Instant::now();
        let mut calls = 0;
        let result: StoreResult<()> = with_backoff(Duration::from_millis(400), || {
            calls += 1;
            Err(unavailable())
        });
        let elapsed = started.elapsed();
        assert!(matches!(result, Err(StoreError::Unavailable { .. })));
        // Delays 100, 200, then the 100 ms left: attempts at 0, 100, 300, 400 ms.
        assert_eq!(calls, 4);
        assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
    }

    #[test]
    fn zero_timeout_makes_one_attempt() {
        let mut calls = 0;
        let result: StoreResult<()> = with_backoff(Duration::ZERO, || {
            calls += 1;
            Err(unavailable())
        });
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }

    fn outcome_unknown() -> StoreError {
        StoreError::OutcomeUnknown {
            backend: "test",
            operation: "append",
            key: "q".to_owned(),
            source: SourceError::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        }
    }

    #[test]
    fn deduplicated_write_repeats_outcome_unknown() {
        let mut calls = 0;
        let result = with_backoff_deduplicated(Duration::from_secs(5), || {
            calls += 1;
            if calls == 1 {
                Err(outcome_unknown())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.expect("second attempt succeeds"), 2);
    }

    #[test]
    fn deduplicated_write_reports_outcome_unknown_at_timeout() {
        let mut calls = 0;
        let result: StoreResult<()> = with_backoff_deduplicated(Duration::from_millis(150), || {
            calls += 1;
            if calls == 1 {
                Err(outcome_unknown())
            } else {
                Err(unavailable())
            }
        });
        assert!(
            matches!(result, Err(StoreError::OutcomeUnknown { .. })),
            "{result:?}"
        );
        assert!(calls >= 2, "{calls}");
    }

    #[test]
    fn appender_ids_differ() {
        let first = new_appender_id();
        assert_eq!(first.len(), 32);
        assert_ne!(first, new_appender_id());
    }

    #[test]
    fn never_repeats_outcome_unknown() {
        let mut calls = 0;
        let result: StoreResult<()> = with_backoff(Duration::from_secs(5), || {
            calls += 1;
            Err(StoreError::OutcomeUnknown {
                backend: "test",
                operation: "append",
                key: "q".to_owned(),
                source: SourceError::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            })
        });
        assert!(matches!(result, Err(StoreError::OutcomeUnknown { .. })));
        assert_eq!(calls, 1);
    }

    #[test]
    fn io_timeout_follows_retry_timeout() {
        let longest = Duration::from_secs(30);
        assert_eq!(
            io_timeout(Duration::from_secs(5), longest),
            Duration::from_secs(5)
        );
        assert_eq!(io_timeout(Duration::ZERO, longest), Duration::from_secs(1));
        assert_eq!(io_timeout(Duration::from_secs(3600), longest), longest);
    }
}

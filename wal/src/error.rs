//! The error type every backend and the handle return.

use std::fmt;
use std::sync::Arc;

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// An error from the client library or server under a backend, shared so
/// one failed group commit can be reported to every waiter.
#[derive(Clone)]
pub struct SourceError(Arc<dyn std::error::Error + Send + Sync>);

impl SourceError {
    /// Wraps a backend error.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }
}

impl fmt::Debug for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Errors from a [`Store`](crate::Store) or a [`StoreHandle`](crate::StoreHandle).
///
/// Each variant that comes from a backend names the backend, the operation
/// and the key (queue name, client id or topic) it failed on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The server could not be reached, or the connection was lost before
    /// the request was sent; retrying the operation is safe.
    #[error("{backend} {operation} on {key:?} failed: server unavailable: {source}")]
    Unavailable {
        /// Backend name, for example `"mysql"`.
        backend: &'static str,
        /// Store operation, for example `"append"`.
        operation: &'static str,
        /// Queue name, client id or topic the operation was for.
        key: String,
        /// Error from the client library.
        source: SourceError,
    },

    /// The backend rejected or failed the operation.
    #[error("{backend} {operation} on {key:?} failed: {source}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// Store operation.
        operation: &'static str,
        /// Queue name, client id or topic the operation was for.
        key: String,
        /// Whether the same call may succeed if repeated later.
        retryable: bool,
        /// Error from the client library or server.
        source: SourceError,
    },

    /// The connection failed after an append was sent, so whether it was
    /// stored is unknown. Retrying could store the batch twice.
    #[error("{backend} {operation} on {key:?}: outcome unknown, connection lost after the write was sent: {source}")]
    OutcomeUnknown {
        /// Backend name.
        backend: &'static str,
        /// Store operation.
        operation: &'static str,
        /// Queue name the append was for.
        key: String,
        /// Error from the client library.
        source: SourceError,
    },

    /// A stored record could not be decoded.
    #[error("{backend} {operation} on {key:?} failed: corrupt record: {detail}")]
    Corrupt {
        /// Backend name.
        backend: &'static str,
        /// Store operation.
        operation: &'static str,
        /// Key of the record that failed to decode.
        key: String,
        /// What was wrong with the bytes.
        detail: String,
    },

    /// The caller passed a value the backend cannot store.
    #[error("{backend} {operation} on {key:?} failed: invalid input: {detail}")]
    InvalidInput {
        /// Backend name.
        backend: &'static str,
        /// Store operation.
        operation: &'static str,
        /// Queue name, client id or topic that was rejected.
        key: String,
        /// Why it was rejected.
        detail: String,
    },

    /// The handle's worker threads have stopped, so the request was not run.
    #[error("store handle is closed: its worker threads have stopped")]
    Closed,
}

impl StoreError {
    /// Returns true when repeating the same call later may succeed and
    /// cannot store anything twice.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::Backend { retryable, .. } => *retryable,
            StoreError::OutcomeUnknown { .. }
            | StoreError::Corrupt { .. }
            | StoreError::InvalidInput { .. }
            | StoreError::Closed => false,
        }
    }

    /// Returns the backend name, or `None` for [`StoreError::Closed`].
    pub fn backend(&self) -> Option<&'static str> {
        match self {
            StoreError::Unavailable { backend, .. }
            | StoreError::Backend { backend, .. }
            | StoreError::OutcomeUnknown { backend, .. }
            | StoreError::Corrupt { backend, .. }
            | StoreError::InvalidInput { backend, .. } => Some(backend),
            StoreError::Closed => None,
        }
    }

    /// Returns the failed operation, or `None` for [`StoreError::Closed`].
    pub fn operation(&self) -> Option<&'static str> {
        match self {
            StoreError::Unavailable { operation, .. }
            | StoreError::Backend { operation, .. }
            | StoreError::OutcomeUnknown { operation, .. }
            | StoreError::Corrupt { operation, .. }
            | StoreError::InvalidInput { operation, .. } => Some(operation),
            StoreError::Closed => None,
        }
    }

    /// Returns the queue name, client id or topic, or `None` for
    /// [`StoreError::Closed`].
    pub fn key(&self) -> Option<&str> {
        match self {
            StoreError::Unavailable { key, .. }
            | StoreError::Backend { key, .. }
            | StoreError::OutcomeUnknown { key, .. }
            | StoreError::Corrupt { key, .. }
            | StoreError::InvalidInput { key, .. } => Some(key),
            StoreError::Closed => None,
        }
    }
}

//! Authorization hook that the engine calls for every PUBLISH, every
//! SUBSCRIBE filter and every Will at CONNECT.

use std::time::{Duration, Instant};

use tracing::warn;

/// Operation a client requests on a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// PUBLISH to a topic name (a Will counts as one).
    Publish,
    /// SUBSCRIBE to a topic filter.
    Subscribe,
}

/// Decides whether a client may publish to a topic or subscribe to a filter.
///
/// The broker installs one shared, read-only implementation on every shard
/// with [`crate::Shard::set_authorizer`]. It runs on the shard's thread for
/// each packet, so it must not block or take locks.
pub trait Authorizer: Send + Sync {
    /// Returns true when the client may perform `access` on `topic` (a topic
    /// name for [`Access::Publish`], a topic filter for [`Access::Subscribe`]).
    /// `user` is the authenticated user name, if the client has one.
    fn allows(&self, user: Option<&str>, client_id: &str, access: Access, topic: &str) -> bool;
}

/// Minimum time between two log lines about denied packets on one shard.
/// A client that keeps publishing to a denied topic would otherwise write
/// one line per message.
const DENIAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Rate-limited log of packets that the authorizer denied.
#[derive(Default)]
pub(crate) struct DenialLog {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl DenialLog {
    /// Logs a denial, unless one was logged less than
    /// [`DENIAL_LOG_INTERVAL`] ago, in which case it only counts it. The
    /// next line that is written reports the count.
    pub(crate) fn record(&mut self, now: Instant, client_id: &str, access: Access, topic: &str) {
        let due = match self.last_logged {
            Some(last) => now.duration_since(last) >= DENIAL_LOG_INTERVAL,
            None => true,
        };
        if !due {
            self.suppressed += 1;
            return;
        }
        warn!(
            client_id,
            topic,
            access = ?access,
            suppressed_since_last_line = self.suppressed,
            "denied by ACL"
        );
        self.last_logged = Some(now);
        self.suppressed = 0;
    }
}

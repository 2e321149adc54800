//! Access control list: which clients may publish to which topics and
//! subscribe to which topic filters.
//!
//! # File format
//!
//! ```text
//! # Comments start with '#'. Rules before the first section header
//! # apply to every client.
//! user alice                 # rules below apply to user name "alice"
//! allow publish sensors/%u/#
//! client dashboard-1         # rules below apply to client id "dashboard-1"
//! allow subscribe sensors/+/temperature
//! all                        # rules below apply to every client again
//! allow pubsub public/#
//! deny subscribe #
//! ```
//!
//! A rule is `allow` or `deny`, an action (`publish`, `subscribe` or
//! `pubsub` for both) and a topic filter. In the filter, `%u` stands for the
//! client's user name and `%c` for its client id. A rule that uses `%u` does
//! not apply to a client without a user name. A rule also does not apply
//! when the substituted value contains `/`, `+` or `#`, so no user name can
//! widen a rule.
//!
//! Rules are checked in file order and the first rule that applies decides.
//! If none applies, the configured default decides.
//!
//! - Publish: a rule applies when its filter matches the topic name.
//! - Subscribe: an `allow` rule applies only when its filter covers every
//!   topic the requested filter can match (`a/#` covers `a/b/+` but not
//!   `#`). A `deny` rule applies when its filter and the requested filter
//!   can match a common topic, so `deny subscribe a/secret` also stops a
//!   subscription to `a/#`. A shared subscription `$share/GROUP/FILTER` is
//!   checked as FILTER.
//!
//! Matching follows MQTT: `+` and `#` at the first level do not match
//! topics that start with `$`, so rules for `$SYS` must name it.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Operation a client requests on a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// PUBLISH to a topic name.
    Publish,
    /// SUBSCRIBE to a topic filter.
    Subscribe,
}

/// Outcome of a rule or of the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// The action is permitted.
    Allow,
    /// The action is rejected.
    Deny,
}

/// An ACL file that cannot be read or parsed.
#[derive(Debug, Error)]
pub enum AclError {
    /// The file cannot be read.
    #[error("cannot read ACL file {path}: {source}")]
    Io {
        /// Path of the ACL file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A line is not a section header or a rule.
    #[error("invalid ACL file {path} line {line}: {reason}")]
    InvalidLine {
        /// Path of the ACL file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Problem found in the line.
        reason: String,
    },
}

/// Clients that a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    All,
    User(String),
    Client(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    scope: Scope,
    permission: Permission,
    publish: bool,
    subscribe: bool,
    /// Filter levels before `%u`/`%c` substitution.
    levels: Vec<String>,
}

/// A parsed ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
    default: Permission,
}

impl Acl {
    /// Reads and parses the ACL file at `path`; `default` decides when no
    /// rule applies.
    ///
    /// # Errors
    ///
    /// [`AclError::Io`] when the file cannot be read,
    /// [`AclError::InvalidLine`] naming the first bad line.
    pub fn load(path: &Path, default: Permission) -> Result<Self, AclError> {
        let text = fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, default)
    }

    /// Parses ACL text. `path` only appears in error messages.
    ///
    /// # Errors
    ///
    /// [`AclError::InvalidLine`] naming the first bad line.
    pub fn parse(text: &str, path: &Path, default: Permission) -> Result<Self, AclError> {
        let mut rules = Vec::new();
        let mut scope = Scope::All;
        for (index, raw_line) in text.lines().enumerate() {
            let invalid = |reason: String| AclError::InvalidLine {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let words = significant_words(raw_line);

            match words.as_slice() {
                [] => {}
                ["all"] => scope = Scope::All,
                ["user", name] => scope = Scope::User((*name).to_string()),
                ["client", id] => scope = Scope::Client((*id).to_string()),
                [permission @ ("allow" | "deny"), action, filter] => {
                    let permission = if *permission == "allow" {
                        Permission::Allow
                    } else {
                        Permission::Deny
                    };
                    let (publish, subscribe) = match *action {
                        "publish" => (true, false),
                        "subscribe" => (false, true),
                        "pubsub" => (true, true),
                        other => {
                            return Err(invalid(format!(
                                "unknown action {other:?}; expected publish, subscribe or pubsub"
                            )))
                        }
                    };
                    validate_filter(filter).map_err(|reason| invalid(reason.to_string()))?;
                    rules.push(Rule {
                        scope: scope.clone(),
                        permission,
                        publish,
                        subscribe,
                        levels: filter.split('/').map(str::to_string).collect(),
                    });
                }
                _ => {
                    return Err(invalid(format!(
                        "expected `user NAME`, `client ID`, `all` or \
                         `allow|deny publish|subscribe|pubsub FILTER`, found {:?}",
                        raw_line.trim()
                    )))
                }
            }
        }
        Ok(Acl { rules, default })
    }

    /// Returns true when the client may perform `action` on
    /// `topic_or_filter`: a topic name for [`Action::Publish`], a topic
    /// filter for [`Action::Subscribe`].
    pub fn check(
        &self,
        user: Option<&str>,
        client_id: &str,
        action: Action,
        topic_or_filter: &str,
    ) -> bool {
        let target = match action {
            Action::Publish => topic_or_filter,
            Action::Subscribe => strip_shared_prefix(topic_or_filter),
        };
        let target_levels: Vec<&str> = target.split('/').collect();

        for rule in &self.rules {
            let in_scope = match &rule.scope {
                Scope::All => true,
                Scope::User(name) => user == Some(name.as_str()),
                Scope::Client(id) => client_id == id,
            };
            let action_matches = match action {
                Action::Publish => rule.publish,
                Action::Subscribe => rule.subscribe,
            };
            if !in_scope || !action_matches {
                continue;
            }
            let Some(levels) = substitute(&rule.levels, user, client_id) else {
                continue;
            };
            let levels: Vec<&str> = levels.iter().map(String::as_str).collect();

            let applies = match (action, rule.permission) {
                (Action::Publish, _) => filter_covers(&levels, &target_levels),
                (Action::Subscribe, Permission::Allow) => filter_covers(&levels, &target_levels),
                (Action::Subscribe, Permission::Deny) => filters_overlap(&levels, &target_levels),
            };
            if applies {
                return rule.permission == Permission::Allow;
            }
        }
        self.default == Permission::Allow
    }
}

impl coremq_shard::Authorizer for Acl {
    fn allows(
        &self,
        user: Option<&str>,
        client_id: &str,
        access: coremq_shard::Access,
        topic: &str,
    ) -> bool {
        let action = match access {
            coremq_shard::Access::Publish => Action::Publish,
            coremq_shard::Access::Subscribe => Action::Subscribe,
        };
        self.check(user, client_id, action, topic)
    }
}

/// Splits a line into words without its comment. A word starting with `#`
/// starts a comment, except a bare `#` in the filter position of a rule,
/// which is the multi-level wildcard.
fn significant_words(line: &str) -> Vec<&str> {
    let mut words: Vec<&str> = Vec::new();
    for word in line.split_whitespace() {
        let is_rule_filter =
            word == "#" && words.len() == 2 && matches!(words[0], "allow" | "deny");
        if word.starts_with('#') && !is_rule_filter {
            break;
        }
        words.push(word);
    }
    words
}

/// Returns the filter inside `$share/GROUP/FILTER`, or `filter` itself.
fn strip_shared_prefix(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, inner)| inner)
}

/// Checks MQTT filter syntax: `#` only as the whole last level, `+` only as
/// a whole level.
fn validate_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("topic filter is empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
            return Err("'#' must be the whole last level of a topic filter");
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level of a topic filter");
        }
    }
    Ok(())
}

/// Replaces `%u` and `%c` in the rule's levels. Returns `None` when the
/// rule cannot apply: `%u` without a user name, or a value that contains a
/// level separator or wildcard.
fn substitute(levels: &[String], user: Option<&str>, client_id: &str) -> Option<Vec<String>> {
    let safe = |value: &str| !value.is_empty() && !value.contains(['/', '+', '#']);
    let mut output = Vec::with_capacity(levels.len());
    for level in levels {
        let mut level = level.clone();
        if level.contains("%u") {
            let user = user.filter(|name| safe(name))?;
            level = level.replace("%u", user);
        }
        if level.contains("%c") {
            if !safe(client_id) {
                return None;
            }
            level = level.replace("%c", client_id);
        }
        output.push(level);
    }
    Some(output)
}

fn starts_with_dollar(levels: &[&str]) -> bool {
    levels.first().is_some_and(|level| level.starts_with('$'))
}

/// Returns true when every topic that `inner` matches is also matched by
/// `outer`. A topic name is a filter without wildcards, so this also
/// decides whether `outer` matches a topic.
fn filter_covers(outer: &[&str], inner: &[&str]) -> bool {
    // A wildcard first level does not match `$` topics, so it cannot cover
    // a filter that names one.
    let outer_wild_first = matches!(outer.first(), Some(&"+" | &"#"));
    if outer_wild_first && starts_with_dollar(inner) {
        return false;
    }

    for (index, outer_level) in outer.iter().enumerate() {
        if *outer_level == "#" {
            return true;
        }
        let Some(inner_level) = inner.get(index) else {
            // `a/#` also matches `a`, so `a/#` covers `a`.
            return outer.len() == index + 2 && outer[index + 1] == "#";
        };
        match (*outer_level, *inner_level) {
            (_, "#") => return false,
            ("+", _) => {}
            (_, "+") => return false,
            (outer_literal, inner_literal) if outer_literal != inner_literal => return false,
            _ => {}
        }
    }
    outer.len() == inner.len()
}

/// Returns true when some topic matches both filters.
fn filters_overlap(first: &[&str], second: &[&str]) -> bool {
    let wild_first = |levels: &[&str]| matches!(levels.first(), Some(&"+" | &"#"));
    if (wild_first(first) && starts_with_dollar(second))
        || (wild_first(second) && starts_with_dollar(first))
    {
        return false;
    }

    let mut index = 0;
    loop {
        match (first.get(index), second.get(index)) {
            (Some(&"#"), _) | (_, Some(&"#")) => return true,
            (None, None) => return true,
            // `a/#` matches `a`, so a filter that ends where the other
            // continues with only `#` still shares a topic.
            (None, Some(_)) => return second.len() == index + 1 && second[index] == "#",
            (Some(_), None) => return first.len() == index + 1 && first[index] == "#",
            (Some(&a), Some(&b)) => {
                if a != "+" && b != "+" && a != b {
                    return false;
                }
            }
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str, default: Permission) -> Acl {
        Acl::parse(text, Path::new("test.acl"), default).expect("ACL parses")
    }

    fn levels(filter: &str) -> Vec<&str> {
        filter.split('/').collect()
    }

    #[test]
    fn covers_table() {
        let cases = [
            ("a/#", "a/b/+", true),
            ("a/#", "#", false),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/b", "a/+", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a", "a/b", false),
            ("a/b", "a", false),
            ("#", "#", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/load", true),
            ("+", "+", true),
            ("+", "a/b", false),
        ];
        for (outer, inner, expected) in cases {
            assert_eq!(
                filter_covers(&levels(outer), &levels(inner)),
                expected,
                "{outer} covers {inner}"
            );
        }
    }

    #[test]
    fn overlap_table() {
        let cases = [
            ("a/secret", "a/#", true),
            ("a/secret", "a/+", true),
            ("a/secret", "b/#", false),
            ("a/+/c", "a/b/+", true),
            ("a/+/c", "a/b/d", false),
            ("a/#", "a", true),
            ("a", "a/b", false),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
        ];
        for (first, second, expected) in cases {
            assert_eq!(
                filters_overlap(&levels(first), &levels(second)),
                expected,
                "{first} ~ {second}"
            );
            assert_eq!(
                filters_overlap(&levels(second), &levels(first)),
                expected,
                "{second} ~ {first}"
            );
        }
    }

    #[test]
    fn user_rules_with_substitution() {
        let acl = acl(
            "user alice\n\
             allow publish sensors/%u/#\n\
             all\n\
             deny publish #\n",
            Permission::Allow,
        );
        assert!(acl.check(Some("alice"), "c1", Action::Publish, "sensors/alice/temp"));
        assert!(!acl.check(Some("alice"), "c1", Action::Publish, "sensors/bob/temp"));
        assert!(!acl.check(Some("bob"), "c1", Action::Publish, "sensors/bob/temp"));
        assert!(!acl.check(None, "c1", Action::Publish, "sensors/alice/temp"));
    }

    #[test]
    fn substitution_in_all_section() {
        let acl = acl(
            "allow pubsub clients/%c/#\nallow publish users/%u\n",
            Permission::Deny,
        );
        assert!(acl.check(None, "dev-7", Action::Publish, "clients/dev-7/state"));
        assert!(acl.check(None, "dev-7", Action::Subscribe, "clients/dev-7/#"));
        assert!(!acl.check(None, "dev-7", Action::Subscribe, "clients/+/#"));
        assert!(acl.check(Some("eve"), "x", Action::Publish, "users/eve"));
        assert!(!acl.check(None, "x", Action::Publish, "users/"));
    }

    #[test]
    fn wildcard_in_name_never_widens_rule() {
        let acl = acl(
            "allow subscribe users/%u/#\nallow subscribe dev/%c\n",
            Permission::Deny,
        );
        assert!(!acl.check(Some("#"), "c", Action::Subscribe, "users/#"));
        assert!(!acl.check(Some("+"), "c", Action::Subscribe, "users/+/#"));
        assert!(!acl.check(Some("a/b"), "c", Action::Subscribe, "users/a/b/#"));
        assert!(!acl.check(None, "+", Action::Subscribe, "dev/+"));
        assert!(acl.check(None, "c", Action::Subscribe, "dev/c"));
    }

    #[test]
    fn client_rules_apply_by_client_id() {
        let acl = acl(
            "client dashboard\nallow subscribe metrics/#\n",
            Permission::Deny,
        );
        assert!(acl.check(Some("any"), "dashboard", Action::Subscribe, "metrics/cpu/+"));
        assert!(!acl.check(Some("any"), "other", Action::Subscribe, "metrics/cpu/+"));
        assert!(!acl.check(None, "dashboard", Action::Publish, "metrics/cpu"));
    }

    #[test]
    fn subscribe_needs_covering_allow_rule() {
        let acl = acl("allow subscribe a/#\n", Permission::Deny);
        assert!(acl.check(None, "c", Action::Subscribe, "a/b/+"));
        assert!(acl.check(None, "c", Action::Subscribe, "a"));
        assert!(!acl.check(None, "c", Action::Subscribe, "#"));
        assert!(!acl.check(None, "c", Action::Subscribe, "+/b"));
    }

    #[test]
    fn deny_rule_blocks_overlapping_subscription() {
        let acl = acl(
            "deny subscribe a/secret\nallow subscribe a/#\n",
            Permission::Deny,
        );
        assert!(!acl.check(None, "c", Action::Subscribe, "a/#"));
        assert!(!acl.check(None, "c", Action::Subscribe, "a/+"));
        assert!(acl.check(None, "c", Action::Subscribe, "a/public"));
        assert!(!acl.check(None, "c", Action::Publish, "a/secret"));
    }

    #[test]
    fn first_match_wins() {
        let allow_first = acl("allow publish a/b\ndeny publish a/#\n", Permission::Deny);
        assert!(allow_first.check(None, "c", Action::Publish, "a/b"));
        assert!(!allow_first.check(None, "c", Action::Publish, "a/c"));

        let deny_first = acl("deny publish a/#\nallow publish a/b\n", Permission::Allow);
        assert!(!deny_first.check(None, "c", Action::Publish, "a/b"));
    }

    #[test]
    fn default_applies_without_match() {
        let text = "allow publish x\n";
        assert!(acl(text, Permission::Allow).check(None, "c", Action::Publish, "y"));
        assert!(!acl(text, Permission::Deny).check(None, "c", Action::Publish, "y"));
        assert!(acl("", Permission::Allow).check(None, "c", Action::Subscribe, "#"));
        assert!(!acl("", Permission::Deny).check(None, "c", Action::Subscribe, "#"));
    }

    #[test]
    fn publish_and_subscribe_separate() {
        let acl = acl(
            "allow publish cmd/#\nallow subscribe status/#\n",
            Permission::Deny,
        );
        assert!(acl.check(None, "c", Action::Publish, "cmd/reboot"));
        assert!(!acl.check(None, "c", Action::Subscribe, "cmd/reboot"));
        assert!(acl.check(None, "c", Action::Subscribe, "status/+"));
        assert!(!acl.check(None, "c", Action::Publish, "status/x"));
    }

    #[test]
    fn dollar_topics_need_explicit_rules() {
        let acl = acl(
            "allow pubsub #\nallow subscribe $SYS/broker/#\n",
            Permission::Deny,
        );
        assert!(acl.check(None, "c", Action::Subscribe, "#"));
        assert!(!acl.check(None, "c", Action::Subscribe, "$SYS/#"));
        assert!(acl.check(None, "c", Action::Subscribe, "$SYS/broker/uptime"));
        assert!(!acl.check(None, "c", Action::Publish, "$SYS/broker/uptime"));
    }

    #[test]
    fn shared_subscription_checked_as_inner_filter() {
        let acl = acl("allow subscribe jobs/#\n", Permission::Deny);
        assert!(acl.check(None, "c", Action::Subscribe, "$share/workers/jobs/+"));
        assert!(!acl.check(None, "c", Action::Subscribe, "$share/workers/other/+"));
    }

    #[test]
    fn comments_and_wildcard_filters() {
        let text = "# header comment\n\
                    user alice # trailing comment\n\
                    allow subscribe #\n\
                    allow publish a/# # the wildcard stays\n";
        let acl = acl(text, Permission::Deny);
        assert!(acl.check(Some("alice"), "c", Action::Subscribe, "x/y"));
        assert!(acl.check(Some("alice"), "c", Action::Publish, "a/b"));
        assert!(!acl.check(Some("bob"), "c", Action::Subscribe, "x/y"));
    }

    #[test]
    fn invalid_lines_reported() {
        let cases = [
            ("allow publish\n", 1, "expected `user NAME`"),
            ("\nallow read a\n", 2, "unknown action"),
            (
                "deny subscribe a/#/b\n",
                1,
                "'#' must be the whole last level",
            ),
            ("allow publish a+\n", 1, "'+' must be a whole level"),
            ("user\n", 1, "expected `user NAME`"),
        ];
        for (text, line_number, fragment) in cases {
            let error = Acl::parse(text, Path::new("rules.acl"), Permission::Deny).expect_err(text);
            let message = error.to_string();
            assert!(
                matches!(error, AclError::InvalidLine { line, .. } if line == line_number),
                "{message}"
            );
            assert!(message.contains(fragment), "{message}");
            assert!(message.contains("rules.acl"), "{message}");
        }
    }
}

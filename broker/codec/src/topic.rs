//! Topic Name and Topic Filter rules of MQTT 5.0 section 4.7, shared
//! subscription syntax (`$share/{group}/{filter}`), and filter matching.
//!
//! Functions here allocate nothing, so the broker can call them per message.

/// Longest Topic Name or Topic Filter in bytes, the limit of a UTF-8
/// Encoded String's 2-byte length.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of a shared subscription's Topic Filter.
pub const SHARED_PREFIX: &str = "$share/";

/// Checks a Topic Name as sent in PUBLISH, a Will or a Response Topic.
///
/// An empty name is rejected here. A PUBLISH may carry an empty name only
/// together with a Topic Alias, and the PUBLISH decoder checks that case
/// before calling this.
///
/// # Errors
///
/// Returns a short description of the broken rule: empty, longer than
/// 65,535 bytes, containing U+0000, or containing a `+` or `#` wildcard.
pub fn validate_topic_name(name: &str) -> Result<(), &'static str> {
    check_length_and_null(name)?;
    if name.contains(['+', '#']) {
        return Err("a topic name must not contain the wildcards + or #");
    }
    Ok(())
}

/// Checks a Topic Filter as sent in SUBSCRIBE or UNSUBSCRIBE, including the
/// shared subscription form `$share/{group}/{filter}`.
///
/// # Errors
///
/// Returns a short description of the broken rule: empty, too long,
/// containing U+0000, `#` not alone on the last level, `+` not alone on its
/// level, or a shared subscription with an empty or wildcard group or an
/// empty filter.
pub fn validate_topic_filter(filter: &str) -> Result<(), &'static str> {
    check_length_and_null(filter)?;

    if let Some(rest) = filter.strip_prefix(SHARED_PREFIX) {
        let Some((group, inner)) = rest.split_once('/') else {
            return Err("a shared subscription needs the form $share/{group}/{filter}");
        };
        if group.is_empty() {
            return Err("the share name of a shared subscription is empty");
        }
        if group.contains(['+', '#']) {
            return Err("the share name of a shared subscription must not contain + or #");
        }
        if inner.is_empty() {
            return Err("the topic filter of a shared subscription is empty");
        }
        return check_filter_levels(inner);
    }
    check_filter_levels(filter)
}

fn check_length_and_null(text: &str) -> Result<(), &'static str> {
    if text.is_empty() {
        return Err("a topic must be at least one byte long");
    }
    if text.len() > MAX_TOPIC_LEN {
        return Err("a topic must be at most 65,535 bytes long");
    }
    if text.contains('\0') {
        return Err("a topic must not contain the null character U+0000");
    }
    Ok(())
}

fn check_filter_levels(filter: &str) -> Result<(), &'static str> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" {
                return Err("the wildcard # must occupy a whole level");
            }
            if levels.peek().is_some() {
                return Err("the wildcard # must be the last level");
            }
        }
        if level.contains('+') && level != "+" {
            return Err("the wildcard + must occupy a whole level");
        }
    }
    Ok(())
}

/// Splits a shared subscription's filter `$share/{group}/{filter}` into its
/// group and its filter. Returns `None` for a filter without the `$share/`
/// prefix or without a `/` after the group. The parts are not validated:
/// call [`validate_topic_filter`] for that.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix(SHARED_PREFIX)?.split_once('/')
}

/// Returns whether Topic Name `topic` matches Topic Filter `filter`.
///
/// `#` matches its parent level and any number of levels below it, so
/// `sport/#` matches `sport`. `+` matches exactly one level, which may be
/// empty. A filter whose first level is a wildcard does not match a topic
/// starting with `$`, such as `$SYS/uptime`. Pass a shared subscription's
/// inner filter (see [`parse_shared`]), not the `$share/...` form. The
/// result for an invalid filter is unspecified.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }

    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(filter_level), Some(topic_level)) => {
                if filter_level != topic_level {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_name_rules() {
        assert!(validate_topic_name("a/b").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert!(validate_topic_name("$SYS/x").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("a/+").is_err());
        assert!(validate_topic_name("a/#").is_err());
        assert!(validate_topic_name("sp+rt").is_err());
        assert!(validate_topic_name("a\0b").is_err());
        assert!(validate_topic_name(&"x".repeat(MAX_TOPIC_LEN)).is_ok());
        assert!(validate_topic_name(&"x".repeat(MAX_TOPIC_LEN + 1)).is_err());
    }

    #[test]
    fn topic_filter_valid_cases() {
        for filter in [
            "sport/tennis/player1/#",
            "sport/#",
            "#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/+",
            "+/+",
            "a//c",
            "$share/group/a/b",
            "$share/g/#",
            "$share",
            "$SYS/#",
        ] {
            assert!(
                validate_topic_filter(filter).is_ok(),
                "{filter:?} should be valid"
            );
        }
    }

    #[test]
    fn topic_filter_invalid_cases() {
        for filter in [
            "",
            "sport/tennis#",
            "sport/#/ranking",
            "sp+rt",
            "sport+",
            "#/a",
            "a\0b",
            "$share/",
            "$share/group",
            "$share//a",
            "$share/gr+oup/a",
            "$share/gr#oup/a",
            "$share/group/",
            "$share/group/a#",
        ] {
            assert!(
                validate_topic_filter(filter).is_err(),
                "{filter:?} should be invalid"
            );
        }
    }

    #[test]
    fn parse_shared_splits_group() {
        assert_eq!(parse_shared("$share/g1/a/b"), Some(("g1", "a/b")));
        assert_eq!(parse_shared("$share/g1/#"), Some(("g1", "#")));
        assert_eq!(parse_shared("$share/g1"), None);
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(parse_shared("$sharex/g/a"), None);
    }

    /// Examples from MQTT 5.0 section 4.7, wildcards and `$` topics.
    #[test]
    fn matches_spec_examples() {
        let cases: &[(&str, &str, bool)] = &[
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/monitor/Clients", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        ];
        for &(filter, topic, expected) in cases {
            assert_eq!(
                matches(filter, topic),
                expected,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn matches_table_of_topics() {
        let filters = ["sport/#", "sport/+", "+/+", "/+", "+", "a/+/c", "#"];
        let expected: &[(&str, &[&str])] = &[
            ("sport", &["sport/#", "+", "#"]),
            ("sport/", &["sport/#", "sport/+", "+/+", "#"]),
            ("sport/tennis", &["sport/#", "sport/+", "+/+", "#"]),
            ("/finance", &["/+", "+/+", "#"]),
            ("finance", &["+", "#"]),
            ("a//c", &["a/+/c", "#"]),
            ("a/b/c", &["a/+/c", "#"]),
        ];
        for &(topic, matching) in expected {
            for filter in filters {
                assert_eq!(
                    matches(filter, topic),
                    matching.contains(&filter),
                    "filter {filter:?} topic {topic:?}"
                );
            }
        }
    }

    #[test]
    fn matches_exact_and_levels() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/c"));
        assert!(matches("a/+/+", "a//"));
        assert!(matches("$share-like/#", "$share-like/x"));
    }
}

//! Topic tries.
//!
//! [`FilterTrie`] maps topic filters to values and finds every filter that
//! matches a topic name: the subscription table and the interest table are
//! both built on it. [`TopicTrie`] maps topic names to values and finds every
//! topic that matches a filter: the retained store is built on it.
//!
//! Matching follows MQTT 5.0 section 4.7: `+` matches one whole level (also an
//! empty one), `#` matches the parent level and every level below it, and a
//! wildcard in the first level never matches a topic that starts with `$`.

use std::collections::HashMap;
use std::hash::Hash;

/// The tries' maps. Topic levels come from clients, so the hasher keeps a
/// random key, and it is faster than the standard library's on short
/// strings, which matters because a publish hashes each level of its topic.
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Topic filters mapped to `(key, value)` entries.
#[derive(Debug)]
pub struct FilterTrie<K, V> {
    root: FilterNode<K, V>,
    len: usize,
}

#[derive(Debug)]
struct FilterNode<K, V> {
    /// Entries whose filter ends at this node.
    exact: Map<K, V>,
    /// Entries whose filter ends with `#` below this node.
    multi: Map<K, V>,
    children: Map<Box<str>, FilterNode<K, V>>,
    single: Option<Box<FilterNode<K, V>>>,
}

impl<K, V> Default for FilterNode<K, V> {
    fn default() -> Self {
        FilterNode {
            exact: Map::default(),
            multi: Map::default(),
            children: Map::default(),
            single: None,
        }
    }
}

impl<K, V> FilterNode<K, V> {
    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.multi.is_empty()
            && self.children.is_empty()
            && self.single.is_none()
    }
}

impl<K: Hash + Eq + Clone, V> Default for FilterTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone, V> FilterTrie<K, V> {
    pub fn new() -> Self {
        FilterTrie {
            root: FilterNode::default(),
            len: 0,
        }
    }

    /// Number of `(filter, key)` entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts or replaces the value of `key` under `filter`; returns the
    /// previous value. `filter` must be a valid topic filter.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        let mut multi = false;
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                multi = true;
                break;
            }
            node = if level == "+" {
                node.single.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
        }
        let map = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let previous = map.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Looks up the value of `key` under `filter`.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return node.multi.get_mut(key);
            }
            node = if level == "+" {
                node.single.as_deref_mut()?
            } else {
                node.children.get_mut(level)?
            };
        }
        node.exact.get_mut(key)
    }

    /// Removes `key` from `filter` and prunes nodes left empty.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut FilterNode<K, V>, levels: &[&str], key: &K) -> Option<V> {
        let Some((level, rest)) = levels.split_first() else {
            return node.exact.remove(key);
        };
        if *level == "#" && rest.is_empty() {
            return node.multi.remove(key);
        }
        if *level == "+" {
            let child = node.single.as_deref_mut()?;
            let removed = Self::remove_at(child, rest, key);
            if child.is_empty() {
                node.single = None;
            }
            removed
        } else {
            let child = node.children.get_mut(*level)?;
            let removed = Self::remove_at(child, rest, key);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }

    /// Calls `visit` for every entry whose filter matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a K, &'a V)) {
        let dollar = topic.starts_with('$');
        let mut levels = [""; MAX_STACK_LEVELS];
        let mut count = 0;
        for level in topic.split('/') {
            if count == MAX_STACK_LEVELS {
                count += 1;
                break;
            }
            levels[count] = level;
            count += 1;
        }
        if count <= MAX_STACK_LEVELS {
            Self::match_at(&self.root, &levels[..count], true, dollar, &mut visit);
        } else {
            let levels: Vec<&str> = topic.split('/').collect();
            Self::match_at(&self.root, &levels, true, dollar, &mut visit);
        }
    }

    /// Returns true when at least one filter matches `topic`.
    pub fn has_match(&self, topic: &str) -> bool {
        let mut found = false;
        self.for_each_match(topic, |_, _| found = true);
        found
    }

    fn match_at<'a>(
        node: &'a FilterNode<K, V>,
        levels: &[&str],
        first: bool,
        dollar: bool,
        visit: &mut impl FnMut(&'a K, &'a V),
    ) {
        let wildcards_allowed = !(first && dollar);
        if wildcards_allowed {
            for (key, value) in &node.multi {
                visit(key, value);
            }
        }
        let Some((level, rest)) = levels.split_first() else {
            for (key, value) in &node.exact {
                visit(key, value);
            }
            return;
        };
        if let Some(child) = node.children.get(*level) {
            Self::match_at(child, rest, false, dollar, visit);
        }
        if wildcards_allowed {
            if let Some(child) = node.single.as_deref() {
                Self::match_at(child, rest, false, dollar, visit);
            }
        }
    }
}

/// Topics deeper than this are split into a heap-allocated level list.
const MAX_STACK_LEVELS: usize = 16;

/// Topic names mapped to values, searched by topic filter.
#[derive(Debug)]
pub struct TopicTrie<V> {
    root: TopicNode<V>,
    len: usize,
}

#[derive(Debug)]
struct TopicNode<V> {
    value: Option<V>,
    children: Map<Box<str>, TopicNode<V>>,
}

impl<V> Default for TopicNode<V> {
    fn default() -> Self {
        TopicNode {
            value: None,
            children: Map::default(),
        }
    }
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TopicTrie<V> {
    pub fn new() -> Self {
        TopicTrie {
            root: TopicNode::default(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the value of `topic`; returns the previous one.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let previous = node.value.replace(value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the value of `topic` and prunes nodes left empty.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut TopicNode<V>, levels: &[&str]) -> Option<V> {
        let Some((level, rest)) = levels.split_first() else {
            return node.value.take();
        };
        let child = node.children.get_mut(*level)?;
        let removed = Self::remove_at(child, rest);
        if child.value.is_none() && child.children.is_empty() {
            node.children.remove(*level);
        }
        removed
    }

    /// Calls `visit` with every stored topic that `filter` matches.
    pub fn for_each_match<'a>(&'a self, filter: &str, mut visit: impl FnMut(&'a V)) {
        let levels: Vec<&str> = filter.split('/').collect();
        Self::match_at(&self.root, &levels, true, &mut visit);
    }

    fn match_at<'a>(
        node: &'a TopicNode<V>,
        levels: &[&str],
        first: bool,
        visit: &mut impl FnMut(&'a V),
    ) {
        let Some((level, rest)) = levels.split_first() else {
            if let Some(value) = &node.value {
                visit(value);
            }
            return;
        };
        match *level {
            "#" => {
                // `#` also matches the parent level itself.
                if let Some(value) = &node.value {
                    if !first {
                        visit(value);
                    }
                }
                for (name, child) in &node.children {
                    if first && name.starts_with('$') {
                        continue;
                    }
                    Self::visit_all(child, visit);
                }
            }
            "+" => {
                for (name, child) in &node.children {
                    if first && name.starts_with('$') {
                        continue;
                    }
                    Self::match_at(child, rest, false, visit);
                }
            }
            literal => {
                if let Some(child) = node.children.get(literal) {
                    Self::match_at(child, rest, false, visit);
                }
            }
        }
    }

    fn visit_all<'a>(node: &'a TopicNode<V>, visit: &mut impl FnMut(&'a V)) {
        if let Some(value) = &node.value {
            visit(value);
        }
        for child in node.children.values() {
            Self::visit_all(child, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(filters: &[&str], topic: &str) -> Vec<String> {
        let mut trie = FilterTrie::new();
        for filter in filters {
            trie.insert(filter, filter.to_string(), ());
        }
        let mut found: Vec<String> = Vec::new();
        trie.for_each_match(topic, |key, _| found.push(key.clone()));
        found.sort();
        found
    }

    const FILTERS: &[&str] = &["sport/#", "sport/+", "+/+", "/+", "+", "a/+/c", "#"];

    #[test]
    fn filter_trie_spec_examples() {
        let cases: &[(&str, &[&str])] = &[
            ("sport", &["#", "+", "sport/#"]),
            ("sport/", &["#", "+/+", "sport/#", "sport/+"]),
            ("sport/tennis", &["#", "+/+", "sport/#", "sport/+"]),
            ("/finance", &["#", "+/+", "/+"]),
            ("finance", &["#", "+"]),
            ("a//c", &["#", "a/+/c"]),
            ("a/b/c", &["#", "a/+/c"]),
        ];
        for (topic, expected) in cases {
            let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            expected.sort();
            assert_eq!(matching(FILTERS, topic), expected, "topic {topic:?}");
        }
    }

    #[test]
    fn filter_trie_dollar_topics() {
        let filters = ["#", "+/x", "$SYS/#", "$SYS/+"];
        assert_eq!(matching(&filters, "$SYS/x"), vec!["$SYS/#", "$SYS/+"]);
        assert_eq!(matching(&filters, "a/x"), vec!["#", "+/x"]);
    }

    #[test]
    fn filter_trie_remove_prunes() {
        let mut trie = FilterTrie::new();
        trie.insert("a/+/c", 1, ());
        trie.insert("a/#", 2, ());
        assert_eq!(trie.len(), 2);
        assert!(trie.remove("a/+/c", &1).is_some());
        assert!(trie.remove("a/+/c", &1).is_none());
        assert!(trie.remove("a/#", &2).is_some());
        assert!(trie.is_empty());
        assert!(trie.root.is_empty());
    }

    #[test]
    fn topic_trie_filter_lookup() {
        let mut trie = TopicTrie::new();
        for topic in ["sport", "sport/tennis", "sport/", "$SYS/load", "a/b/c"] {
            trie.insert(topic, topic.to_string());
        }
        fn lookup(trie: &TopicTrie<String>, filter: &str) -> Vec<String> {
            let mut found: Vec<String> = Vec::new();
            trie.for_each_match(filter, |value| found.push(value.clone()));
            found.sort();
            found
        }
        assert_eq!(
            lookup(&trie, "sport/#"),
            vec!["sport", "sport/", "sport/tennis"]
        );
        assert_eq!(lookup(&trie, "sport/+"), vec!["sport/", "sport/tennis"]);
        assert_eq!(
            lookup(&trie, "#"),
            vec!["a/b/c", "sport", "sport/", "sport/tennis"]
        );
        assert_eq!(lookup(&trie, "+/+/c"), vec!["a/b/c"]);
        assert_eq!(lookup(&trie, "$SYS/#"), vec!["$SYS/load"]);
        assert!(trie.remove("sport").is_some());
        assert_eq!(lookup(&trie, "sport/#"), vec!["sport/", "sport/tennis"]);
    }
}

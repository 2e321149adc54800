//! Topic matching against 100,000 subscriptions in the shard's [`FilterTrie`].
//!
//! The table mimics a fleet: 1,000 sites of 100 devices each, one exact
//! filter per device, plus a share of wildcard filters (`+` for one level,
//! `#` for a subtree). Each case times one `for_each_match` call for one topic.
//! Run with `cargo bench -p coremq-shard --bench trie`.

use std::hint::black_box;
use std::sync::Arc;

use coremq_shard::trie::FilterTrie;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// Subscriptions in every table.
const FILTERS: u32 = 100_000;

/// Devices per site, so `FILTERS / DEVICES_PER_SITE` sites.
const DEVICES_PER_SITE: u32 = 100;

/// Builds a table of `FILTERS` entries, one client id each, where one filter
/// in `wildcard_every` is a wildcard filter (0 for none).
fn build_table(wildcard_every: u32) -> FilterTrie<Arc<str>, u8> {
    let mut trie = FilterTrie::new();
    for n in 0..FILTERS {
        let site = n / DEVICES_PER_SITE;
        let device = n % DEVICES_PER_SITE;
        let filter = if wildcard_every != 0 && n % wildcard_every == 0 {
            // Alternate the two wildcard kinds so both branches are walked.
            if (n / wildcard_every) % 2 == 1 {
                format!("fleet/site{site}/#")
            } else {
                format!("fleet/site{site}/+/temp")
            }
        } else {
            format!("fleet/site{site}/dev{device}/temp")
        };
        let client_id: Arc<str> = format!("client-{n}").into();
        trie.insert(&filter, client_id, 1);
    }
    trie
}

/// Returns the number of entries matching `topic`, visiting each one.
fn count_matches(trie: &FilterTrie<Arc<str>, u8>, topic: &str) -> usize {
    let mut matches = 0;
    trie.for_each_match(topic, |key, value| {
        black_box((key, value));
        matches += 1;
    });
    matches
}

fn topic_matching(c: &mut Criterion) {
    let exact_only = build_table(0);
    let mixed = build_table(10);
    // Expected counts: in the mixed table, site 500 has 5 `+` filters, 5 `#`
    // filters and the device's own exact filter.
    let cases = [
        ("exact/hit", &exact_only, "fleet/site500/dev42/temp", 1),
        ("exact/miss", &exact_only, "fleet/site500/dev42/humidity", 0),
        ("mixed/hit", &mixed, "fleet/site500/dev42/temp", 11),
        ("mixed/miss", &mixed, "other/site500/dev42/temp", 0),
    ];

    let mut group = c.benchmark_group("filter_trie_100k");
    group.throughput(Throughput::Elements(1));
    for (name, trie, topic, expected) in cases {
        assert_eq!(count_matches(trie, topic), expected, "matches of {topic}");
        group.bench_with_input(BenchmarkId::from_parameter(name), topic, |b, topic| {
            b.iter(|| count_matches(trie, black_box(topic)));
        });
    }
    group.finish();
}

fn table_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("filter_trie_build");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(FILTERS)));
    group.bench_function("insert_100k_mixed", |b| b.iter(|| build_table(10).len()));
    group.finish();
}

criterion_group!(benches, topic_matching, table_build);
criterion_main!(benches);

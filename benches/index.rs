//! The search indexes, each figure against a baseline measured in the same run:
//! - indexing: contactd's writers applying the change stream (both indexes,
//!   upserts) vs bare tantivy adding the same entry texts to a one-field index;
//! - search latency on the resulting index (about 1.1 million timeline entries
//!   at the default size): `TimelineIndex::search` (tenant scope, filters,
//!   stored entries, snippets) vs the same parsed query on the bare index;
//! - freshness under sustained load: `contactd::indexer::run` consuming changes
//!   produced at a steady rate, time from produce to searchable, vs a bare
//!   consumer's produce-to-receive time on the same broker with the indexer's
//!   fetch settings.
//!
//! `cargo bench --bench index`. CONTACTD_BENCH_EVENTS sets the corpus (default
//! 1000000), CONTACTD_BENCH_RATE the sustained changes/s (default 2000) and
//! CONTACTD_BENCH_SECONDS its duration (default 30); KAFKA_BROKERS points at a
//! broker instead of starting Apache Kafka (tests/servers).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contactd::config::Config;
use contactd::health::Health;
use contactd::index::{Delivery, SearchIndex, SortOrder, TimelineQuery};
use contactd::metrics::IndexerMetrics;
use contactd::model::{Change, TimelineEntry};
use contactd::pipeline;
use contactd::publish::ChangeLog;
use contactd::store::sqlite::{SqliteOptions, SqliteStore};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Schema, TEXT};
use tantivy::{Index, TantivyDocument};

mod common;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WRITER_MEMORY: usize = 128 << 20;
const QUERIES: usize = 2000;
const CHANGES_TOPIC: &str = "directory-changes";
const PARTITIONS: i32 = 3;
/// One change in this many is a probe whose searchability is timed.
const PROBE_EVERY: usize = 20;
const PROBE_WORD: &str = "freshnessprobe";
/// How often the freshness checker searches for probes.
const CHECK_INTERVAL: Duration = Duration::from_millis(10);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn millis_quantiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (common::quantile(&samples, 0.5) * 1e3, common::quantile(&samples, 0.99) * 1e3)
}

/// The corpus through the pipeline into a store: its outbox holds the change
/// stream an indexer consumes.
fn change_stream(events: u64) -> Vec<Change> {
    let corpus = common::corpus(events);
    let records = common::records(&common::lines(&corpus));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = SqliteStore::open(&dir.path().join("bench.sqlite3"), &SqliteOptions::default()).expect("store");
    for batch in records.chunks(5_000) {
        pipeline::process_batch(&mut store, batch).expect("batch");
    }
    store.read_after(0, usize::MAX).expect("outbox").into_iter().flat_map(|unit| unit.changes).collect()
}

fn entries(changes: &[Change]) -> Vec<(&Change, &TimelineEntry)> {
    changes.iter().filter_map(|c| Some((c, c.data.entry.as_deref()?))).collect()
}

struct Bare {
    index: Index,
    text: tantivy::schema::Field,
}

/// Documents per second of bare tantivy indexing the entry texts.
fn bare_indexing(dir: &std::path::Path, entries: &[(&Change, &TimelineEntry)]) -> (Bare, f64) {
    let mut builder = Schema::builder();
    let text = builder.add_text_field("text", TEXT);
    let index = Index::create_in_dir(dir, builder.build()).expect("bare index");
    let started = Instant::now();
    let mut writer = index.writer_with_num_threads(1, WRITER_MEMORY).expect("writer");
    for (_, entry) in entries {
        let mut doc = TantivyDocument::default();
        doc.add_text(text, &entry.text);
        writer.add_document(doc).expect("add");
    }
    writer.commit().expect("commit");
    let rate = entries.len() as f64 / started.elapsed().as_secs_f64();
    (Bare { index, text }, rate)
}

/// Timeline documents per second of contactd applying the whole change stream,
/// committing as often as the indexer does by default.
fn contactd_indexing(index: &SearchIndex, changes: &[Change]) -> f64 {
    let every = Config::default().indexer.commit_every_ops;
    let started = Instant::now();
    let mut writer = index.writer(WRITER_MEMORY).expect("writer");
    let checkpoint = contactd::index::Checkpoint::default;
    for change in changes {
        writer.apply(change, &checkpoint, Delivery::AtLeastOnce).expect("apply");
        if writer.pending_ops() >= every {
            writer.commit(&checkpoint()).expect("commit");
        }
    }
    writer.commit(&checkpoint()).expect("commit");
    index.timeline.num_docs() as f64 / started.elapsed().as_secs_f64()
}

/// A realistic query mix drawn from indexed entries: one word, two words, one
/// word within a contact, and one word newest first.
fn queries(entries: &[(&Change, &TimelineEntry)]) -> Vec<TimelineQuery> {
    let mut rng = SmallRng::seed_from_u64(11);
    let mut queries = Vec::with_capacity(QUERIES);
    while queries.len() < QUERIES {
        let (change, entry) = entries[rng.random_range(0..entries.len())];
        let words: Vec<&str> = entry.text.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 3).collect();
        if words.len() < 2 {
            continue;
        }
        let word = |rng: &mut SmallRng| words[rng.random_range(0..words.len())].to_lowercase();
        let mut query = TimelineQuery { tenant: change.tenant_id.clone(), limit: 20, ..TimelineQuery::default() };
        match queries.len() % 4 {
            0 => query.text = word(&mut rng),
            1 => query.text = format!("{} {}", word(&mut rng), word(&mut rng)),
            2 => {
                query.text = word(&mut rng);
                query.contact_id = Some(change.contact_id.clone());
            }
            _ => {
                query.text = word(&mut rng);
                query.order = SortOrder::Newest;
            }
        }
        queries.push(query);
    }
    queries
}

fn search_latency(index: &SearchIndex, queries: &[TimelineQuery]) -> (f64, f64) {
    let samples = queries
        .iter()
        .map(|query| {
            let started = Instant::now();
            black_box(index.timeline.search(query).expect("search"));
            started.elapsed().as_secs_f64()
        })
        .collect();
    millis_quantiles(samples)
}

fn bare_search_latency(bare: &Bare, queries: &[TimelineQuery]) -> (f64, f64) {
    let searcher = bare.index.reader().expect("reader").searcher();
    let mut parser = QueryParser::for_index(&bare.index, vec![bare.text]);
    parser.set_conjunction_by_default();
    let samples = queries
        .iter()
        .map(|query| {
            let started = Instant::now();
            let parsed = parser.parse_query(&query.text).expect("query");
            black_box(searcher.search(&parsed, &TopDocs::with_limit(20).order_by_score()).expect("search"));
            started.elapsed().as_secs_f64()
        })
        .collect();
    millis_quantiles(samples)
}

/// Produce-to-searchable (contactd) and produce-to-received (bare consumer)
/// seconds of the probes among `rate` changes/s sent for `seconds`.
fn freshness(brokers: &str, changes: &[(&Change, &TimelineEntry)], rate: u64, seconds: u64) -> (Vec<f64>, Vec<f64>, usize) {
    common::create_topics(brokers, &[(CHANGES_TOPIC, PARTITIONS)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    config.kafka.brokers = brokers.to_owned();
    config.kafka.changes_topic = CHANGES_TOPIC.into();
    let index = Arc::new(SearchIndex::open_or_create(&config.index_path()).expect("index"));
    let shutdown = Arc::new(AtomicBool::new(false));
    let indexer = {
        let (config, index, shutdown) = (config.clone(), Arc::clone(&index), Arc::clone(&shutdown));
        std::thread::spawn(move || {
            let health = Health::new(Duration::from_secs(600));
            contactd::indexer::run(&config, &index, &IndexerMetrics::new(), &health, &shutdown).expect("indexer runs")
        })
    };
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<Vec<f64>>> = Arc::default();
    let bare = {
        let (kafka, sent, received, shutdown) =
            (config.kafka.clone(), Arc::clone(&sent), Arc::clone(&received), Arc::clone(&shutdown));
        std::thread::spawn(move || {
            let consumer: BaseConsumer =
                contactd::source::kafka::consumer_config(&kafka, "bench-bare", contactd::indexer::CONSUMER_SETTINGS)
                    .create()
                    .expect("consumer");
            let mut list = TopicPartitionList::new();
            for partition in 0..PARTITIONS {
                list.add_partition_offset(CHANGES_TOPIC, partition, Offset::Beginning).expect("partition");
            }
            consumer.assign(&list).expect("assign");
            while !shutdown.load(Ordering::Acquire) {
                let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else { continue };
                let Ok(change) = serde_json::from_slice::<Change>(message.payload().unwrap_or_default()) else { continue };
                let Some(entry) = change.data.entry else { continue };
                if let Some(at) = sent.lock().unwrap().get(&entry.entry_id) {
                    received.lock().unwrap().push(at.elapsed().as_secs_f64());
                }
            }
        })
    };
    let searchable: Arc<Mutex<Vec<f64>>> = Arc::default();
    let checker = {
        let (index, sent, searchable, shutdown) =
            (Arc::clone(&index), Arc::clone(&sent), Arc::clone(&searchable), Arc::clone(&shutdown));
        let tenants: Vec<contactd::model::TenantId> = {
            let mut tenants: Vec<contactd::model::TenantId> = changes.iter().map(|(c, _)| c.tenant_id.clone()).collect();
            tenants.sort();
            tenants.dedup();
            tenants
        };
        std::thread::spawn(move || {
            let mut found = std::collections::HashSet::new();
            while !shutdown.load(Ordering::Acquire) {
                std::thread::sleep(CHECK_INTERVAL);
                for tenant in &tenants {
                    let query = TimelineQuery {
                        tenant: tenant.clone(),
                        text: PROBE_WORD.into(),
                        order: SortOrder::Newest,
                        limit: 100,
                        ..TimelineQuery::default()
                    };
                    for hit in index.timeline.search(&query).expect("search") {
                        if found.insert(hit.entry_id.clone())
                            && let Some(at) = sent.lock().unwrap().get(&hit.entry_id)
                        {
                            searchable.lock().unwrap().push(at.elapsed().as_secs_f64());
                        }
                    }
                }
            }
        })
    };
    // Let the consumers join before the clock starts.
    std::thread::sleep(Duration::from_secs(3));
    let producer: ThreadedProducer<DefaultProducerContext> =
        config.kafka.client_config(&[("linger.ms", "5")]).create().expect("producer");
    let total = usize::try_from(rate * seconds).expect("a count");
    let started = Instant::now();
    let mut probes = 0;
    for (i, (change, entry)) in changes.iter().cycle().take(total).enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut change = (*change).clone();
        let mut entry = (*entry).clone();
        entry.entry_id = format!("{}-{i}", entry.entry_id);
        let probe = i % PROBE_EVERY == 0;
        if probe {
            entry.text = format!("{PROBE_WORD} {}", entry.text);
            probes += 1;
        }
        let key = format!("{}/{}", change.tenant_id, change.contact_id);
        let entry_id = entry.entry_id.clone();
        change.data.entry = Some(Box::new(entry));
        let payload = serde_json::to_vec(&change).expect("a change serializes");
        if probe {
            sent.lock().unwrap().insert(entry_id, Instant::now());
        }
        let mut record = BaseRecord::to(CHANGES_TOPIC).key(&key).payload(&payload);
        while let Err((_, returned)) = producer.send(record) {
            std::thread::sleep(Duration::from_millis(1));
            record = returned;
        }
    }
    let drained = Instant::now();
    while searchable.lock().unwrap().len() < probes && drained.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    shutdown.store(true, Ordering::Release);
    for thread in [bare, checker] {
        thread.join().expect("thread");
    }
    indexer.join().expect("indexer");
    let searchable = std::mem::take(&mut *searchable.lock().unwrap());
    let received = std::mem::take(&mut *received.lock().unwrap());
    let missing = probes - searchable.len();
    (searchable, received, missing)
}

fn main() {
    let events = common::corpus_size(1_000_000);
    let setup = Instant::now();
    let changes = change_stream(events);
    let entries = entries(&changes);
    println!(
        "contactd index benchmark: {events} events -> {} changes, {} timeline entries (setup {:.0} s)",
        changes.len(),
        entries.len(),
        setup.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("bare")).expect("dir");
    let (bare, bare_rate) = bare_indexing(&dir.path().join("bare"), &entries);
    let index = SearchIndex::open_or_create(&dir.path().join("index")).expect("index");
    let rate = contactd_indexing(&index, &changes);
    println!("{:<56} {:>12} {:>8}", "indexing", "docs/s", "ratio");
    println!("{:<56} {:>12.0} {:>8.3}", "bare tantivy, entry text only (baseline)", bare_rate, 1.0);
    println!("{:<56} {:>12.0} {:>8.3}", "contactd, change stream into both indexes", rate, rate / bare_rate);

    let queries = queries(&entries);
    let (bare_p50, bare_p99) = bare_search_latency(&bare, &queries);
    let (p50, p99) = search_latency(&index, &queries);
    println!(
        "{:<56} {:>8} {:>8} {:>8}",
        format!("search latency, {} entries, {QUERIES} queries", index.timeline.num_docs()),
        "p50 ms",
        "p99 ms",
        "p99 x"
    );
    println!("{:<56} {:>8.3} {:>8.3} {:>8.3}", "bare tantivy, top 20 by score (baseline)", bare_p50, bare_p99, 1.0);
    println!("{:<56} {:>8.3} {:>8.3} {:>8.3}", "contactd search, top 20 with entries and snippets", p50, p99, p99 / bare_p99);
    drop(index);
    drop(dir);

    let (rate, seconds) = (env_or("CONTACTD_BENCH_RATE", 2000), env_or("CONTACTD_BENCH_SECONDS", 30));
    let brokers = common::brokers();
    let (searchable, received, missing) = freshness(&brokers, &entries, rate, seconds);
    let (bare_p50, bare_p99) = millis_quantiles(received);
    let (p50, p99) = millis_quantiles(searchable);
    println!("{:<56} {:>8} {:>8} {:>8}", format!("freshness, {rate} changes/s for {seconds} s"), "p50 ms", "p99 ms", "p99 x");
    println!("{:<56} {:>8.1} {:>8.1} {:>8.3}", "bare consumer, produced to received (baseline)", bare_p50, bare_p99, 1.0);
    println!("{:<56} {:>8.1} {:>8.1} {:>8.3}", "contactd indexer, produced to searchable", p50, p99, p99 / bare_p99);
    if missing > 0 {
        println!("{missing} probes never became searchable within 15 s of the load's end");
    }
}

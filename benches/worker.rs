//! The Kafka worker's throughput against a baseline measured in the same run on
//! the same broker and data: a bare rdkafka consumer that only decodes each
//! event. `cargo bench --bench worker` starts tansu on a free port (or uses
//! KAFKA_BROKERS); CONTACTD_BENCH_EVENTS sets the corpus size (default 100000).
//!
//! Both runs are timed from their first event to their last, so the consumer
//! group join, which depends on the broker, is left out of both. The worker
//! runs with its configuration (defaults, or `CONTACTD__WORKER__*` variables) on
//! a fresh SQLite store, except that it never pauses fetching.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use contactd::api::Health;
use contactd::config::{Config, FlagOverrides};
use contactd::metrics::WorkerMetrics;
use contactd::store::sqlite::SqliteStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

mod common;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 4;

fn prepare(brokers: &str, lines: &[&[u8]]) {
    common::create_topics(
        brokers,
        &[("contact-events", PARTITIONS), ("directory-changes", PARTITIONS), ("contact-events-dlq", 1)],
    );
    let producer: FutureProducer = common::client(brokers).set("linger.ms", "20").create().expect("producer");
    // Keyed as the connectors key them: tenant/session, or tenant/contact.
    let keys: Vec<Option<String>> = lines
        .iter()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_slice(line).ok()?;
            let scope = event["session_id"].as_str().or(event["contact_id"].as_str()).unwrap_or("");
            Some(format!("{}/{scope}", event["tenant_id"].as_str()?))
        })
        .collect();
    let records = lines.iter().zip(&keys).map(|(line, key)| {
        let record = FutureRecord::<[u8], [u8]>::to("contact-events").payload(*line);
        match key {
            Some(key) => record.key(key.as_bytes()),
            None => record,
        }
    });
    contactd::publish::kafka::send_all(&producer, records).expect("corpus produced");
}

/// Events per second of a consumer that only decodes, first event to last.
fn baseline(brokers: &str, total: usize) -> f64 {
    let consumer: BaseConsumer = common::client(brokers)
        .set("group.id", "bench-baseline")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&["contact-events"]).expect("subscribe");
    let mut seen = 0;
    let mut started = None;
    while seen < total {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.expect("a record");
            started.get_or_insert_with(Instant::now);
            std::hint::black_box(contactd::event::decode(message.payload().unwrap_or_default()).ok());
            seen += 1;
        }
    }
    (total - 1) as f64 / started.expect("events arrived").elapsed().as_secs_f64()
}

/// Events per second of `contactd worker` on a fresh SQLite store, from the
/// first processed event to the last.
fn worker(brokers: &str, total: usize, mut config: Config) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    config.data_dir = dir.path().to_path_buf();
    config.kafka.brokers = brokers.to_owned();
    config.kafka.group_id = "bench-worker".into();
    // Never pause: a fetch resumed inside a record batch returns nothing on
    // tansu 0.6.0, and the corpus fits in memory anyway.
    config.worker.max_in_flight = total + 1;
    let metrics = WorkerMetrics::new();
    let shutdown = Arc::new(AtomicBool::new(false));
    let running = {
        let (config, metrics, shutdown) = (config.clone(), metrics.clone(), Arc::clone(&shutdown));
        std::thread::spawn(move || {
            let Ok(contactd::config::StoreLocation::Sqlite(path)) = config.store_location() else {
                panic!("the worker bench runs on the embedded store")
            };
            let options = config.sqlite_options();
            let health = Arc::new(Health::new(Duration::from_secs(600)));
            contactd::worker::run(&config, || SqliteStore::open(&path, &options), metrics, health, &shutdown)
        })
    };
    let processed = || {
        use prometheus::core::Collector;
        metrics.events.collect().iter().flat_map(|family| family.get_metric()).map(|m| m.get_counter().get_value()).sum::<f64>()
    };
    let (started, first) = loop {
        let done = processed();
        if done > 0.0 {
            break (Instant::now(), done);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    while processed() < total as f64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let rate = (total as f64 - first) / started.elapsed().as_secs_f64();
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    running.join().expect("worker thread").expect("worker ran");
    rate
}

fn main() {
    let corpus = common::corpus(common::corpus_size(100_000));
    let lines = common::lines(&corpus);
    let brokers = common::brokers();
    prepare(&brokers, &lines);
    let n = lines.len();
    let bare = baseline(&brokers, n);
    // `CONTACTD__WORKER__*` variables tune the run like they tune a worker.
    let config = Config::load(None, &FlagOverrides::default()).expect("configuration loads");
    let label = format!("contactd worker (SQLite, {} lanes of {})", config.worker.lanes, config.worker.batch_size);
    let full = worker(&brokers, n, config);
    println!("contactd worker benchmark, {n} events on {PARTITIONS} partitions");
    println!("{:<44} {:>12} {:>8}", "consumer", "events/s", "ratio");
    println!("{:<44} {:>12.0} {:>8.3}", "bare rdkafka consumer, decode only (baseline)", bare, 1.0);
    println!("{:<44} {:>12.0} {:>8.3}", label, full, full / bare);
}

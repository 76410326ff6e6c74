//! The Kafka worker's throughput against a baseline measured in the same run on
//! the same broker and data: a bare rdkafka consumer that only decodes each
//! event. `cargo bench --bench worker` starts Apache Kafka and Cassandra
//! (tests/servers; KAFKA_BROKERS points at another broker);
//! CONTACTD_BENCH_EVENTS sets the corpus size (default 100000).
//!
//! Every run is timed from its first event to its last, so the consumer group
//! join, which depends on the broker, is left out. Workers run with their
//! configuration (defaults, or `CONTACTD__WORKER__*` variables), except that
//! they never pause fetching: on a fresh SQLite store, then on a fresh
//! Cassandra keyspace as one worker and as two in one group (the horizontal
//! scaling ratio), with the lightweight transactions each event cost and the
//! store time of a write unit.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use contactd::config::{Config, FlagOverrides};
use contactd::health::Health;
use contactd::metrics::WorkerMetrics;
use contactd::store::scylla::{ScyllaBackend, ScyllaStore};
use contactd::store::sqlite::{SqliteOptions, SqliteStore};
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

/// What one worker configuration did, first processed event to last.
struct Run {
    events_per_second: f64,
    lightweight_transactions_per_event: Option<f64>,
    /// Upper bounds of the histogram buckets holding the 50th and 99th
    /// percentile of one write unit's time in the store.
    unit_p50: f64,
    unit_p99: f64,
}

/// A fresh store for each worker instance of a run: every instance of a run
/// shares one store, each with its own connections, as processes would.
enum Backend {
    Sqlite(std::path::PathBuf),
    Cassandra(Box<contactd::store::scylla::ScyllaOptions>),
}

/// `instances` workers in one consumer group, each `contactd::worker::run`
/// with its own consumer, lanes and store connections, on a fresh store.
fn worker(brokers: &str, total: usize, mut config: Config, group: &str, instances: usize, backend: &Backend) -> Run {
    config.kafka.brokers = brokers.to_owned();
    config.kafka.group_id = group.to_owned();
    // The corpus fits in memory: never pause, so pauses do not enter the figure.
    config.worker.max_in_flight = total + 1;
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut running = Vec::new();
    let mut metrics = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..instances {
        let (config, shutdown, instance_metrics) = (config.clone(), Arc::clone(&shutdown), WorkerMetrics::new());
        metrics.push(instance_metrics.clone());
        let health = Arc::new(Health::new(Duration::from_secs(600)));
        running.push(match backend {
            Backend::Sqlite(path) => {
                let (path, options) = (path.clone(), SqliteOptions::from(&config.sqlite));
                std::thread::spawn(move || {
                    contactd::worker::run(&config, || SqliteStore::open(&path, &options), instance_metrics, health, &shutdown)
                })
            }
            Backend::Cassandra(options) => {
                let shared = ScyllaBackend::connect(options).expect("Cassandra connects");
                backends.push(Arc::clone(&shared));
                std::thread::spawn(move || {
                    let open = || Ok(ScyllaStore::new(Arc::clone(&shared)));
                    contactd::worker::run(&config, open, instance_metrics, health, &shutdown)
                })
            }
        });
    }
    let processed = || {
        use prometheus::core::Collector;
        metrics
            .iter()
            .flat_map(|m| m.events.collect())
            .flat_map(|family| family.get_metric().to_vec())
            .map(|m| m.get_counter().get_value())
            .sum::<f64>()
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
    let events_per_second = (total as f64 - first) / started.elapsed().as_secs_f64();
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    for thread in running {
        thread.join().expect("worker thread").expect("worker ran");
    }
    let lightweight_transactions = backends.iter().map(|b| b.lightweight_transactions()).sum::<u64>();
    let (unit_p50, unit_p99) = unit_quantiles(&metrics);
    Run {
        events_per_second,
        lightweight_transactions_per_event: (!backends.is_empty()).then(|| lightweight_transactions as f64 / total as f64),
        unit_p50,
        unit_p99,
    }
}

/// The 50th and 99th percentile of the successful write units' store time,
/// each as the upper bound of the histogram bucket it falls in.
fn unit_quantiles(metrics: &[WorkerMetrics]) -> (f64, f64) {
    use prometheus::core::Collector;
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for family in metrics.iter().flat_map(|m| m.store_seconds.collect()) {
        for metric in family.get_metric() {
            if !metric.get_label().iter().any(|label| label.value() == "ok") {
                continue;
            }
            for (i, bucket) in metric.get_histogram().get_bucket().iter().enumerate() {
                match buckets.get_mut(i) {
                    Some(seen) => seen.1 += bucket.cumulative_count(),
                    None => buckets.push((bucket.upper_bound(), bucket.cumulative_count())),
                }
            }
        }
    }
    let total = buckets.last().map_or(0, |b| b.1).max(1);
    let at = |q: f64| buckets.iter().find(|b| b.1 as f64 >= q * total as f64).map_or(f64::INFINITY, |b| b.0);
    (at(0.5), at(0.99))
}

fn main() {
    let corpus = common::corpus(common::corpus_size(100_000));
    let lines = common::lines(&corpus);
    let brokers = common::brokers();
    prepare(&brokers, &lines);
    let n = lines.len();
    let bare = baseline(&brokers, n);
    // `CONTACTD__WORKER__*` variables tune the runs like they tune a worker.
    let config = Config::load(None, &FlagOverrides::default()).expect("configuration loads");
    let shape = format!("{} lanes of {}", config.worker.lanes, config.worker.batch_size);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut runs = vec![(format!("worker, SQLite ({shape})"), {
        worker(&brokers, n, config.clone(), "bench-sqlite", 1, &Backend::Sqlite(dir.path().join("directory.sqlite3")))
    })];
    for instances in [1, 2] {
        let options = Box::new(cassandra_keyspace(&format!("bench_{instances}_{:08x}", rand::random::<u32>())));
        let group = format!("bench-cassandra-{instances}");
        let label = format!("{instances} worker{}, Cassandra ({shape})", if instances > 1 { "s" } else { "" });
        runs.push((label, worker(&brokers, n, config.clone(), &group, instances, &Backend::Cassandra(options))));
    }
    println!("contactd worker benchmark, {n} events on {PARTITIONS} partitions, Apache Kafka and Cassandra on this machine");
    println!("{:<40} {:>10} {:>8} {:>9} {:>10} {:>10}", "consumer", "events/s", "ratio", "LWT/event", "unit p50", "unit p99");
    println!("{:<40} {:>10.0} {:>8.3} {:>9} {:>10} {:>10}", "bare rdkafka consumer, decode only", bare, 1.0, "", "", "");
    for (label, run) in &runs {
        let lwt = run.lightweight_transactions_per_event.map_or(String::new(), |l| format!("{l:.2}"));
        let ms = |seconds: f64| format!("<= {:.0} ms", seconds * 1000.0);
        println!(
            "{label:<40} {:>10.0} {:>8.3} {lwt:>9} {:>10} {:>10}",
            run.events_per_second,
            run.events_per_second / bare,
            ms(run.unit_p50),
            ms(run.unit_p99)
        );
    }
    if let [.., (_, one), (_, two)] = &runs[..] {
        println!("horizontal scaling on Cassandra, two workers over one: {:.2}", two.events_per_second / one.events_per_second);
    }
}

/// A migrated keyspace on the bench's Cassandra.
fn cassandra_keyspace(keyspace: &str) -> contactd::store::scylla::ScyllaOptions {
    let options = contactd::store::scylla::ScyllaOptions {
        nodes: vec![common::servers::cassandra().to_owned()],
        keyspace: keyspace.to_owned(),
        username: None,
        password: None,
        tls: None,
        local_dc: None,
        replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
        request_timeout: Duration::from_secs(10),
        max_concurrency: 64,
    };
    contactd::store::scylla::migrate(&options).expect("migrate");
    options
}

//! `contactd worker` and `contactd indexer` against Apache Kafka 4 (KRaft),
//! started once for the test binary (`servers::kafka`). Each test has topics
//! and consumer groups of its own, so tests share the broker and run in
//! parallel. A TCP proxy on the broker's second listener stands in for a
//! network outage.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use contactd::model::Change;
use contactd::publish::ChangeLog;
use contactd::store::sqlite::{SqliteOptions, SqliteStore};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Value, json};

use crate::harness::{
    Conversation, EXAMPLES, PATIENCE, Service, assert_one_owner_per_identifier, canonical, contactd, conversation_events,
    eventually, export,
};
use crate::servers;

/// Forwards a port to the broker; taking it down cuts every connection and
/// refuses new ones until it is brought up again on the same port.
struct Proxy {
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    fn up(port: u16, upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("the proxy port is free");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, connections) = (Arc::clone(&stop), Arc::clone(&connections));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                    let mut open = connections.lock().unwrap();
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server.try_clone().unwrap(), client.try_clone().unwrap()),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                    open.extend([client, server]);
                }
            })
        };
        Self { stop, connections, acceptor: Some(acceptor) }
    }

    fn down(mut self) {
        self.cut();
    }

    fn cut(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.join().unwrap();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// One test's share of the broker: its own topics and worker group.
pub struct Cluster {
    pub events: String,
    pub changes: String,
    pub dead_letters: String,
    pub group: String,
    /// Configuration for `contactd produce`.
    producer_config: tempfile::NamedTempFile,
}

impl Cluster {
    /// Creates the test's topics with these numbers of partitions.
    pub fn start(events: i32, changes: i32, dead_letters: i32) -> Self {
        let name = format!("t{:08x}", rand::random::<u32>());
        let cluster = Self {
            events: format!("{name}-contact-events"),
            changes: format!("{name}-directory-changes"),
            dead_letters: format!("{name}-contact-events-dlq"),
            group: format!("{name}-contactd-worker"),
            producer_config: tempfile::NamedTempFile::new().unwrap(),
        };
        std::fs::write(cluster.producer_config.path(), cluster.kafka_section(&servers::kafka().address)).unwrap();
        cluster.create_topics(&[(&cluster.events, events), (&cluster.changes, changes), (&cluster.dead_letters, dead_letters)]);
        cluster
    }

    /// The `[kafka]` section of a configuration that reaches the broker at `address`.
    pub fn kafka_section(&self, address: &str) -> String {
        format!(
            "[kafka]\nbrokers = \"{address}\"\nevents_topics = [\"{}\"]\nchanges_topic = \"{}\"\n\
             dead_letter_topic = \"{}\"\ngroup_id = \"{}\"\n",
            self.events, self.changes, self.dead_letters, self.group
        )
    }

    pub fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &servers::kafka().address);
        config
    }

    fn create_topics(&self, topics: &[(&str, i32)]) {
        let admin: AdminClient<_> = self.client().create().expect("admin client");
        let new: Vec<NewTopic> =
            topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
        for result in futures::executor::block_on(admin.create_topics(&new, &AdminOptions::new())).expect("topics are created") {
            result.unwrap_or_else(|(topic, error)| panic!("creating {topic}: {error}"));
        }
    }

    /// Sends raw records to a topic, waiting for every acknowledgement.
    fn send(&self, topic: &str, records: &[(Option<&str>, &[u8])]) {
        self.send_to(topic, None, records);
    }

    /// Sends raw records to one partition of a topic, or where their keys
    /// lead with `None`, waiting for every acknowledgement.
    fn send_to(&self, topic: &str, partition: Option<i32>, records: &[(Option<&str>, &[u8])]) {
        let producer: FutureProducer = self.client().create().expect("producer");
        let deliveries: Vec<_> = records
            .iter()
            .map(|(key, payload)| {
                let record = FutureRecord::<str, [u8]>::to(topic).payload(payload);
                let record = match partition {
                    Some(partition) => record.partition(partition),
                    None => record,
                };
                producer
                    .send_result(match key {
                        Some(key) => record.key(key),
                        None => record,
                    })
                    .map_err(|(error, _)| error)
                    .expect("queued")
            })
            .collect();
        for delivery in deliveries {
            futures::executor::block_on(delivery).expect("not cancelled").expect("acknowledged");
        }
    }

    /// Publishes a JSONL file with `contactd produce`.
    pub fn produce(&self, file: &Path) -> usize {
        let output = Command::new(env!("CARGO_BIN_EXE_contactd"))
            .arg("--config")
            .arg(self.producer_config.path())
            .arg("produce")
            .arg(file)
            .env_remove("CONTACTD_CONFIG")
            .output()
            .expect("contactd produce runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "produce failed: {}", String::from_utf8_lossy(&output.stderr));
        stdout.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("unexpected summary {stdout}"))
    }

    /// The workers' committed offset of each events partition (0 where none).
    pub fn committed(&self, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self.client().set("group.id", &self.group).create().expect("consumer");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&self.events, partition);
        }
        match consumer.committed_offsets(list, Duration::from_secs(10)) {
            Ok(committed) => committed
                .elements()
                .iter()
                .map(|element| match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => 0,
                })
                .collect(),
            Err(_) => vec![-1; partitions as usize],
        }
    }

    /// Commits `offset` for one events partition in the workers' group from
    /// outside it, as a partition's former owner does with a late commit.
    fn commit_stray_offset(&self, partition: i32, offset: i64) -> rdkafka::error::KafkaResult<()> {
        let consumer: BaseConsumer = self.client().set("group.id", &self.group).create().expect("consumer");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.events, partition, Offset::Offset(offset)).unwrap();
        consumer.commit(&list, CommitMode::Sync)
    }

    /// Reads `topic` from the beginning until `count` records arrived.
    pub fn read(&self, topic: &str, partitions: i32, count: usize) -> Vec<Record> {
        let consumer = self.reader(topic, partitions);
        let mut records = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while records.len() < count {
            assert!(Instant::now() < deadline, "only {} of {count} records arrived on {topic}", records.len());
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                records.push(Record::of(&message.expect("a record")));
            }
        }
        records
    }

    /// Reads every record `topic` holds now, in each partition's order.
    pub fn read_all(&self, topic: &str, partitions: i32) -> Vec<Record> {
        let consumer = self.reader(topic, partitions);
        let mut left: BTreeMap<i32, i64> = (0..partitions)
            .map(|partition| {
                let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
                (partition, high - low)
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        let mut records = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while !left.is_empty() {
            assert!(Instant::now() < deadline, "{topic} was not read to its end: {left:?} records left per partition");
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.expect("a record");
                if let Some(count) = left.get_mut(&message.partition()) {
                    *count -= 1;
                    if *count == 0 {
                        left.remove(&message.partition());
                    }
                }
                records.push(Record::of(&message));
            }
        }
        records
    }

    fn reader(&self, topic: &str, partitions: i32) -> BaseConsumer {
        let consumer: BaseConsumer =
            self.client().set("group.id", "contactd-test-reader").set("enable.auto.commit", "false").create().expect("consumer");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        }
        consumer.assign(&list).expect("assign");
        consumer
    }
}

pub struct Record {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    fn of(message: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| (header.key.to_owned(), String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Self { key: message.key().map(<[u8]>::to_vec), payload: message.payload().unwrap_or_default().to_vec(), headers }
    }
}

/// Worker settings for tests: quick commits (unless `extra` sets
/// `commit_interval_ms`) and failure detection.
pub fn write_config(dir: &Path, name: &str, cluster: &Cluster, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let commit_interval = if extra.contains("commit_interval_ms") { "" } else { "commit_interval_ms = 200\n" };
    let drain_deadline = if extra.contains("drain_deadline_secs") { "" } else { "drain_deadline_secs = 30\n" };
    let text = format!(
        "{}[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [worker]\n{commit_interval}statistics_interval_ms = 500\n{drain_deadline}{extra}",
        cluster.kafka_section(&servers::kafka().address)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The examples through `contactd ingest`: the directory and the changes the
/// worker must reproduce.
fn ingested_examples() -> (tempfile::TempDir, Vec<Change>) {
    let dir = tempfile::tempdir().unwrap();
    assert!(contactd(dir.path(), &["ingest", "--quiet", EXAMPLES]).status.success());
    let store = SqliteStore::open(&dir.path().join("directory.sqlite3"), &SqliteOptions::default()).unwrap();
    let changes = store.read_after(0, usize::MAX).unwrap().into_iter().flat_map(|unit| unit.changes).collect();
    (dir, changes)
}

fn sorted_by_id(mut changes: Vec<Change>) -> Vec<Change> {
    changes.sort_by(|a, b| a.change_id.cmp(&b.change_id));
    changes
}

#[test]
fn the_worker_builds_the_same_directory_as_ingest_and_dead_letters_poison() {
    let cluster = Cluster::start(1, 2, 1);
    let produced = cluster.produce(Path::new(EXAMPLES));
    assert_eq!(produced, 19);
    cluster.send(&cluster.events, &[(Some("acme/s1"), b""), (None, &[0xff, 0x00, 0xfe])]);
    let dir = tempfile::tempdir().unwrap();
    // Commits every second, so the idle worker resends its points every ten.
    let config = write_config(dir.path(), "contactd.toml", &cluster, "lanes = 1\ncommit_interval_ms = 1000\n");
    let data = dir.path().join("data");
    let worker = Service::start(&data, &config, "worker");

    eventually("every offset is committed", || cluster.committed(1) == [21]);
    eventually("the worker is ready", || worker.ready() == Some(true));
    // Idle, the worker still resends its commit points.
    let resends = || worker.metric("contactd_offset_commits_total", "mode=\"async\",result=\"ok\"");
    let before = resends();
    eventually("the idle worker resends its commit points", || resends() > before);
    // Kafka fences a commit from outside the group's generation, such as a
    // former owner's late one: the group's offset stays where the worker put it.
    assert!(cluster.commit_stray_offset(0, 5).is_err(), "a commit from outside the group is refused");
    assert_eq!(cluster.committed(1), [21]);
    assert_eq!(worker.metric("contactd_dead_letters_total", ""), 4.0);
    assert!(worker.metric("contactd_events_total", "outcome=\"applied\"") > 0.0);
    assert!(worker.metric("contactd_event_processing_seconds_count", "") >= 21.0);
    assert!(worker.terminate().success(), "SIGTERM ends the worker cleanly");

    let (ingested, expected_changes) = ingested_examples();
    assert_eq!(export(&data), export(ingested.path()), "the worker and ingest agree on the directory");

    let published: Vec<Change> = cluster
        .read(&cluster.changes, 2, expected_changes.len())
        .into_iter()
        .map(|record| {
            let change: Change = serde_json::from_slice(&record.payload).expect("a change event");
            assert_eq!(record.key.as_deref(), Some(format!("{}/{}", change.tenant_id, change.contact_id).as_bytes()));
            change
        })
        .collect();
    assert_eq!(sorted_by_id(published), sorted_by_id(expected_changes));

    let lines: Vec<&str> = include_str!("../../examples/events.jsonl").lines().collect();
    let letters = cluster.read(&cluster.dead_letters, 1, 4);
    let reasons: BTreeSet<&str> = letters.iter().map(|letter| letter.headers["reason"].as_str()).collect();
    assert!(reasons.contains("not_json"), "{reasons:?}");
    for letter in &letters {
        assert_eq!(letter.headers["source_topic"], cluster.events);
        assert_eq!(letter.headers["source_partition"], "0");
        assert!(!letter.headers["detail"].is_empty());
        let offset: usize = letter.headers["source_offset"].parse().unwrap();
        let original: &[u8] = match offset {
            19 => b"",
            20 => &[0xff, 0x00, 0xfe],
            n => lines[n].as_bytes(),
        };
        assert_eq!(letter.payload, original, "dead letter of offset {offset} is the input unchanged");
    }
    assert_eq!(letters.iter().find(|l| l.headers["source_offset"] == "19").unwrap().key.as_deref(), Some(&b"acme/s1"[..]));
}

/// The worker as a library call (`app::worker`), ended by the future it was
/// given instead of a signal: it drains, commits and returns, having built
/// the directory `ingest` builds. The indexer and `serve` take their
/// shutdown the same way.
#[test]
fn a_worker_run_in_process_drains_and_returns_when_its_shutdown_future_completes() {
    use contactd::config::{Config, FlagOverrides};
    let cluster = Cluster::start(1, 2, 1);
    assert_eq!(cluster.produce(Path::new(EXAMPLES)), 19);
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "contactd.toml", &cluster, "lanes = 1\nlisten = \"127.0.0.1:0\"\n");
    let mut config = Config::load(Some(&path), &FlagOverrides::default()).unwrap();
    let data = dir.path().join("data");
    config.data_dir = data.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = std::thread::spawn(move || {
        contactd::app::worker(&config, async move {
            let _ = stopped.await;
        })
    });
    eventually("every offset is committed", || cluster.committed(1) == [19]);
    assert!(!worker.is_finished(), "the worker runs until told to stop");
    stop.send(()).unwrap();
    worker.join().unwrap().expect("the worker drains and returns");
    let (ingested, _) = ingested_examples();
    assert_eq!(export(&data), export(ingested.path()), "the worker and ingest agree on the directory");
}

/// The production shape: `contactd migrate`, then a worker on the Scylla store,
/// then `contactd export` from it, on Cassandra. One lane, so that events
/// found contacts in the order ingest does and the ids match; racing workers
/// are the scale test's.
#[test]
fn a_worker_on_the_scylla_store_builds_the_same_directory_as_ingest() {
    let cluster = Cluster::start(1, 2, 1);
    let produced = cluster.produce(Path::new(EXAMPLES));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "contactd.toml", &cluster, "lanes = 1\n");
    let version = on_scylla(&config);
    assert_eq!(version, contactd::store::scylla::SCHEMA_VERSION, "migrated to this build's schema");
    let data = dir.path().join("data");

    let worker = Service::start(&data, &config, "worker");
    eventually("every offset is committed", || cluster.committed(1) == [produced as i64]);
    assert!(worker.terminate().success());

    let exported = Command::new(env!("CARGO_BIN_EXE_contactd")).arg("--config").arg(&config).arg("export").output().unwrap();
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let from_scylla: Vec<Value> =
        String::from_utf8(exported.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (ingested, expected_changes) = ingested_examples();
    assert_eq!(from_scylla, export(ingested.path()), "the worker on Scylla and ingest on SQLite agree");
    let published: Vec<Change> = cluster
        .read(&cluster.changes, 2, expected_changes.len())
        .into_iter()
        .map(|record| serde_json::from_slice(&record.payload).expect("a change event"))
        .collect();
    assert_eq!(sorted_by_id(published), sorted_by_id(expected_changes), "the outbox published every change once");
}

fn corpus(conversations: usize, first: usize) -> Vec<Value> {
    let conversations: Vec<Conversation> = (first..first + conversations)
        .map(|n| Conversation {
            customer: (n % 37) as u8,
            phone: n % 3 == 0,
            messages: (n % 4) as u8,
            name: (n % 5 < 2).then_some((n % 3) as u8),
        })
        .collect();
    conversation_events(&conversations)
}

fn write_jsonl(path: &Path, events: &[Value]) {
    let text: String = events.iter().map(|event| format!("{event}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn workers_sharing_a_data_dir_survive_rebalances_and_kill_9_without_loss_or_duplicates() {
    const PARTITIONS: i32 = 4;
    let cluster = Cluster::start(PARTITIONS, 2, 1);
    let dir = tempfile::tempdir().unwrap();
    // A small in-flight bound makes the workers pause and resume fetching.
    let config = write_config(dir.path(), "contactd.toml", &cluster, "lanes = 3\nbatch_size = 16\nmax_in_flight = 8\n");
    // One event per write unit: slow enough that a kill finds work in flight.
    let slow = write_config(dir.path(), "slow.toml", &cluster, "lanes = 1\nbatch_size = 1\n");
    let data = dir.path().join("data");
    let all = corpus(900, 0);
    let thirds: Vec<&[Value]> = all.chunks(all.len().div_ceil(3)).collect();
    let total = |cluster: &Cluster| cluster.committed(PARTITIONS).iter().sum::<i64>();
    let mut produced = 0;
    let mut produce = |part: &[Value], name: &str| {
        let file = dir.path().join(name);
        write_jsonl(&file, part);
        produced += cluster.produce(&file);
        produced
    };

    let first = produce(thirds[0], "first.jsonl");
    let mut a = Service::start(&data, &slow, "worker");
    eventually("the first worker makes progress", || total(&cluster) > 0);
    let b = Service::start(&data, &config, "worker");
    eventually("the second worker gets partitions", || {
        b.metric("contactd_rebalances_total", "kind=\"assigned\"") > 0.0 && total(&cluster) >= first as i64
    });
    let second = produce(thirds[1], "second.jsonl");
    eventually("the second worker processes events", || b.metric("contactd_events_total", "") > 0.0);
    eventually("the second part is committed", || total(&cluster) == second as i64);

    let before = a.metric("contactd_events_total", "");
    let third = produce(thirds[2], "third.jsonl");
    eventually("the first worker is busy with the third part, some of it committed", || {
        a.metric("contactd_events_total", "") > before
            && a.metric("contactd_in_flight_events", "") >= 10.0
            && total(&cluster) > second as i64
    });
    a.kill();
    assert!(total(&cluster) < third as i64, "the kill comes before the third part is done");
    a = Service::start(&data, &config, "worker");
    // Says where commits stopped, for the logs the services print on failure.
    let mut committed = Vec::new();
    let all_committed = crate::harness::holds_within_patience(|| {
        committed = cluster.committed(PARTITIONS);
        committed.iter().sum::<i64>() == third as i64
    });
    assert!(all_committed, "gave up waiting for every offset to be committed: {committed:?} per partition of {third}");
    assert!(b.metric("contactd_partition_pauses_total", "") > 0.0, "the second worker paused fetching");
    assert!(a.terminate().success());
    assert!(b.terminate().success());

    let mut alone = crate::harness::Directory::on_disk();
    alone.feed(&all);
    let store = SqliteStore::open(&data.join("directory.sqlite3"), &SqliteOptions::default()).unwrap();
    assert_eq!(canonical(&store), canonical(&alone.store), "same directory as one process reading in order");
    assert_one_owner_per_identifier(&export(&data));
}

/// Another member of the workers' group that takes a share of the partitions
/// and processes nothing, until dropped: then it leaves the group, and its
/// partitions go back to the worker.
struct Bystander {
    assigned: Arc<Mutex<Vec<i32>>>,
    stop: Arc<AtomicBool>,
    polling: Option<JoinHandle<()>>,
}

impl Bystander {
    fn join(cluster: &Cluster) -> Self {
        let consumer: BaseConsumer = cluster
            .client()
            .set("group.id", &cluster.group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .expect("consumer");
        consumer.subscribe(&[cluster.events.as_str()]).expect("subscribed");
        let (assigned, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (seen, stopped) = (Arc::clone(&assigned), Arc::clone(&stop));
        let polling = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let _ = consumer.poll(Duration::from_millis(100));
                let partitions = consumer.assignment().map(|list| list.elements().iter().map(|e| e.partition()).collect());
                *seen.lock().unwrap() = partitions.unwrap_or_default();
            }
        });
        Self { assigned, stop, polling: Some(polling) }
    }

    fn assigned(&self) -> Vec<i32> {
        self.assigned.lock().unwrap().clone()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(polling) = self.polling.take() {
            let _ = polling.join();
        }
    }
}

/// librdkafka keeps a partition's pause across its revocation. A partition
/// revoked while the worker had fetching paused, and assigned back after the
/// worker resumed, stayed paused for good: the stall behind the kill -9 test's
/// intermittent failures.
#[test]
fn a_partition_revoked_while_fetching_was_paused_is_fetched_when_it_comes_back() {
    let cluster = Cluster::start(2, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "contactd.toml",
        &cluster,
        "lanes = 1\nmax_in_flight = 4\ndrain_deadline_secs = 1\nmax_backoff_ms = 200\n[sqlite]\nbusy_timeout_ms = 50\n",
    );
    let data = dir.path().join("data");
    let worker = Service::start(&data, &config, "worker");
    eventually("the worker owns both partitions", || worker.metric("contactd_rebalances_total", "kind=\"assigned\"") == 2.0);

    // A locked store keeps events in flight, so the worker pauses fetching.
    let lock = rusqlite::Connection::open(data.join("directory.sqlite3")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut lines: [Vec<String>; 2] = Default::default();
    for event in corpus(40, 0) {
        // One session's events stay in one partition, in order.
        let session: usize = event["session_id"].as_str().and_then(|s| s.strip_prefix('s')?.parse().ok()).expect("a session");
        lines[session % 2].push(event.to_string());
    }
    for (partition, lines) in (0..).zip(&lines) {
        let records: Vec<(Option<&str>, &[u8])> = lines.iter().map(|line| (None, line.as_bytes())).collect();
        cluster.send_to(&cluster.events, Some(partition), &records);
    }
    let per_partition = lines.each_ref().map(|lines| lines.len() as i64);
    eventually("the worker pauses fetching", || worker.metric("contactd_partition_pauses_total", "") > 0.0);

    let bystander = Bystander::join(&cluster);
    eventually("one partition moves to the bystander", || bystander.assigned().len() == 1);
    eventually("the worker gave it up", || worker.metric("contactd_rebalances_total", "kind=\"revoked\"") == 1.0);
    let (moved, kept) = match bystander.assigned()[..] {
        [0] => (0, 1),
        _ => (1, 0),
    };
    lock.execute_batch("COMMIT").unwrap();
    eventually("the worker finishes the partition it kept", || cluster.committed(2)[kept] == per_partition[kept]);
    drop(bystander);
    eventually("the partition that came back is processed too", || cluster.committed(2)[moved] == per_partition[moved]);
    assert!(worker.terminate().success());
}

#[test]
fn a_busy_store_holds_the_partition_and_readiness_without_dead_letters() {
    let cluster = Cluster::start(1, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), "contactd.toml", &cluster, "lanes = 1\nmax_backoff_ms = 500\n[sqlite]\nbusy_timeout_ms = 50\n");
    let data = dir.path().join("data");
    let worker = Service::start(&data, &config, "worker");
    eventually("the worker is ready", || worker.ready() == Some(true));

    let lock = rusqlite::Connection::open(data.join("directory.sqlite3")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let produced = cluster.produce(Path::new(EXAMPLES));
    eventually("the worker retries the busy store", || worker.metric("contactd_store_retries_total", "") > 0.0);
    eventually("readiness turns false", || worker.ready() == Some(false));
    assert_eq!(cluster.committed(1)[0], 0, "nothing is committed past a busy store");
    assert_eq!(worker.metric("contactd_dead_letters_total", ""), 0.0);

    lock.execute_batch("COMMIT").unwrap();
    eventually("every offset is committed", || cluster.committed(1)[0] == produced as i64);
    eventually("the worker is ready again", || worker.ready() == Some(true));
    assert_eq!(worker.metric("contactd_dead_letters_total", ""), 2.0, "only the two bad example lines");
    assert!(worker.terminate().success());
    let (ingested, _) = ingested_examples();
    assert_eq!(export(&data), export(ingested.path()));
}

#[test]
fn the_worker_waits_for_a_broker_that_is_down_at_start_and_mid_run() {
    let kafka = servers::kafka();
    let cluster = Cluster::start(1, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("contactd.toml");
    // The worker reaches the broker only through the proxy, which is not up yet.
    let proxied = format!("127.0.0.1:{}", kafka.proxied_port);
    let worker_section = "[worker]\ncommit_interval_ms = 200\nstatistics_interval_ms = 500\n";
    std::fs::write(&config, format!("{}{worker_section}", cluster.kafka_section(&proxied))).unwrap();
    let data = dir.path().join("data");
    let worker = Service::start(&data, &config, "worker");
    assert_eq!(worker.get("/healthz").map(|(status, _)| status), Some(200), "alive while the broker is down");
    assert_eq!(worker.ready(), Some(false), "not ready without a broker");

    let proxy = Proxy::up(kafka.proxied_port, kafka.proxied_upstream);
    let all = corpus(60, 0);
    let (before, after) = all.split_at(all.len() / 2);
    let first = dir.path().join("first.jsonl");
    write_jsonl(&first, before);
    let produced = cluster.produce(&first);
    eventually("the events are committed once the broker is up", || cluster.committed(1) == [produced as i64]);
    eventually("the worker is ready", || worker.ready() == Some(true));

    proxy.down();
    eventually("readiness turns false when the broker goes away", || worker.ready() == Some(false));
    assert_eq!(worker.get("/healthz").map(|(status, _)| status), Some(200));

    let _proxy = Proxy::up(kafka.proxied_port, kafka.proxied_upstream);
    let second = dir.path().join("second.jsonl");
    write_jsonl(&second, after);
    let total = produced + cluster.produce(&second);
    eventually("events after the outage are committed", || cluster.committed(1) == [total as i64]);
    eventually("the worker is ready again", || worker.ready() == Some(true));
    assert!(worker.terminate().success());

    let mut alone = crate::harness::Directory::on_disk();
    alone.feed(&all);
    let store = SqliteStore::open(&data.join("directory.sqlite3"), &SqliteOptions::default()).unwrap();
    assert_eq!(canonical(&store), canonical(&alone.store));
}

/// At scale an operator's write is an event on the events topic: the indexer
/// publishes it and answers 202 with its id, a worker applies it, and
/// `?after=` on the contact waits until it has.
/// A fresh Scylla keyspace (on the test servers' Cassandra), migrated, as the
/// store of `config`.
fn on_scylla(config: &Path) -> i32 {
    let keyspace = format!("contactd_worker_{:08x}", rand::random::<u32>());
    let store = format!(
        "store = \"scylla://{}/{keyspace}\"\n[scylla]\nreplication = \"{{'class': 'SimpleStrategy', 'replication_factor': 1}}\"\n",
        servers::cassandra()
    );
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, format!("{store}{text}")).unwrap();
    let migrated = Command::new(env!("CARGO_BIN_EXE_contactd")).arg("--config").arg(config).arg("migrate").output().unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let said = String::from_utf8_lossy(&migrated.stdout);
    said.split("schema version ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("{said}"))
}

/// The operator API at scale: Kafka in, the Scylla store (on Cassandra), the
/// indexer publishing writes and reading the store, a worker applying them.
#[test]
fn operator_writes_at_scale_go_through_the_events_topic_and_after_waits_for_them() {
    let cluster = Cluster::start(1, 2, 1);
    let dir = tempfile::tempdir().unwrap();
    let tokens = "lanes = 1\n[api.tokens]\nacme = [\"acme-token\"]\n[api.write_tokens]\nacme = [\"acme-writer\"]\n";
    let config = write_config(dir.path(), "contactd.toml", &cluster, tokens);
    on_scylla(&config);
    let data = dir.path().join("data");
    let worker = Service::start(&data, &config, "worker");
    let indexer = Service::start(&data, &config, "indexer");
    let send =
        |method: &str, path: &str, body: &str| indexer.send(method, path, "acme-writer", "", body).expect("the API answers");
    let event_of = |head: &str| {
        head.lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("event-id: ").map(str::to_owned))
            .expect("an Event-Id")
    };
    let after = |event: &str| {
        indexer.get_with(&format!("/v1/tenants/acme/contacts/c-ops?after={event}"), Some("acme-token")).expect("answers")
    };

    let created = r#"{"contact_id": "c-ops", "identity": {"name": "Petr Svoboda", "emails": ["petr@example.cz"]}}"#;
    let (status, head, body) = send("POST", "/v1/tenants/acme/contacts", created);
    assert_eq!(status, 202, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["contact_id"], "c-ops");
    let (status, shown) = after(&event_of(&head));
    assert_eq!(status, 200, "{shown}");
    assert_eq!(serde_json::from_str::<Value>(&shown).unwrap()["name"], "Petr Svoboda");

    let (status, head, _) = send("PATCH", "/v1/tenants/acme/contacts/c-ops", r#"{"add": {"phones": ["+420 777 000 111"]}}"#);
    assert_eq!(status, 202);
    let (_, shown) = after(&event_of(&head));
    assert!(shown.contains("+420777000111"), "{shown}");
    let (status, head, _) = send("PUT", "/v1/tenants/acme/sessions/s-call/contact", r#"{"contact_id": "c-ops"}"#);
    assert_eq!(status, 202);
    let (_, shown) = after(&event_of(&head));
    assert!(shown.contains("s-call"), "{shown}");

    // A second contact claims Petr's e-mail: a conflict in the queue, which
    // a merge settles, and explain tells how the merged identifiers came.
    let (status, head, _) =
        send("POST", "/v1/tenants/acme/contacts", r#"{"contact_id": "c-two", "identity": {"whatsapp_id": "+420606000111"}}"#);
    assert_eq!(status, 202);
    assert_eq!(after(&event_of(&head)).0, 200);
    let (status, head, _) = send("PATCH", "/v1/tenants/acme/contacts/c-two", r#"{"add": {"emails": ["petr@example.cz"]}}"#);
    assert_eq!(status, 202);
    after(&event_of(&head));
    let read = |path: &str| {
        let (status, body) = indexer.get_with(path, Some("acme-token")).expect("answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let queue = read("/v1/tenants/acme/conflicts");
    assert_eq!(queue["conflicts"][0]["owner_contact_id"], "c-ops", "{queue}");
    assert_eq!(queue["conflicts"][0]["claimant_contact_id"], "c-two", "{queue}");
    assert_eq!(send("POST", "/v1/tenants/acme/conflicts/cf-none/dismiss", "").0, 404, "checked against the store");
    let (status, head, body) = send("POST", "/v1/tenants/acme/contacts/c-ops/merge", r#"{"from_contact_id": "c-two"}"#);
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["contact_id"].as_str()), (202, Some("c-ops")));
    let (_, shown) = after(&event_of(&head));
    assert!(shown.contains("+420606000111"), "{shown}");
    assert_eq!(read("/v1/tenants/acme/conflicts")["conflicts"], json!([]), "the merge settled it");
    let why = read("/v1/tenants/acme/contacts/c-two/explain");
    assert_eq!(why["contact_id"], "c-ops");
    let whatsapp = why["identifiers"].as_array().unwrap().iter().find(|i| i["kind"] == "whatsapp").unwrap().clone();
    assert_eq!(
        (whatsapp["rule"].as_str(), whatsapp["merged"][0]["by"].as_str()),
        (Some("founded_contact"), Some("contact.merged"))
    );

    let (status, head, _) = send("DELETE", "/v1/tenants/acme/contacts/c-ops", "");
    assert_eq!(status, 202);
    assert_eq!(after(&event_of(&head)).0, 410, "erased once the worker applied the deletion");
    let (status, body) = after("api-never-sent");
    assert_eq!(status, 503, "a bounded wait for an event nobody sent: {body}");
    assert!(worker.terminate().success());
    assert!(indexer.terminate().success());
}

/// The lag alerts read the workers' committed offsets through the indexer,
/// so they still speak while every worker is gone.
#[test]
fn the_indexer_reports_the_workers_lag_while_no_worker_runs() {
    let cluster = Cluster::start(2, 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "contactd.toml", &cluster, "");
    let data = dir.path().join("data");
    let file = dir.path().join("events.jsonl");
    write_jsonl(&file, &corpus(100, 0));
    let events = cluster.produce(&file) as f64;
    let indexer = Service::start(&data, &config, "indexer");
    eventually("with no worker, the whole topic is the group's lag", || {
        indexer.metric("contactd_group_lag", &format!("topic=\"{}\"", cluster.events)) == events
    });
    let worker = Service::start(&data, &config, "worker");
    eventually("the worker commits every event", || cluster.committed(2).iter().sum::<i64>() as f64 == events);
    assert!(worker.terminate().success());
    eventually("the indexer sees the lag gone after the worker left", || indexer.metric("contactd_group_lag", "") == 0.0);
    assert!(indexer.terminate().success());
}

#[test]
fn the_indexer_resumes_from_its_index_after_kill_9_with_no_missing_or_duplicate_documents() {
    let cluster = Cluster::start(2, 3, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "contactd.toml",
        &cluster,
        "[indexer]\ncommit_interval_ms = 100\n[api.tokens]\nacme = [\"acme-token\"]\n",
    );
    let data = dir.path().join("data");
    let file = dir.path().join("events.jsonl");
    write_jsonl(&file, &corpus(600, 0));
    let events = cluster.produce(&file) as i64;
    let worker = Service::start(&data, &config, "worker");
    eventually("the worker commits every event", || cluster.committed(2).iter().sum::<i64>() == events);
    let changes = worker.metric("contactd_changes_published_total", "");
    assert!(worker.terminate().success());
    let directory = export(&data);
    let entries: f64 = directory.iter().map(|c| c["timeline_entries"].as_f64().unwrap()).sum();
    let contacts = directory.len() as f64;

    let documents = |indexer: &Service, index: &str| indexer.metric("contactd_index_documents", &format!("index=\"{index}\""));
    let mut indexer = Service::start(&data, &config, "indexer");
    // Read in this order, a ready replica must already show documents: it is
    // never ready on an empty index while the topic holds changes.
    if indexer.ready() == Some(true) {
        assert!(documents(&indexer, "timeline") > 0.0, "ready before applying what the topic held");
    }
    eventually("the first indexer commits", || documents(&indexer, "timeline") > 0.0);
    for pause_ms in [0, 150, 400] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        indexer.kill();
        indexer = Service::start(&data, &config, "indexer");
    }
    eventually("the indexer catches up", || {
        documents(&indexer, "timeline") == entries && documents(&indexer, "contacts") == contacts
    });
    eventually("the caught-up indexer is ready", || indexer.ready() == Some(true));
    eventually("and reports no lag", || {
        indexer.get("/metrics").is_some_and(|(_, body)| body.contains("contactd_index_lag{partition=\"0\"} 0"))
            && indexer.metric("contactd_index_lag", "") == 0.0
    });
    let replayed = indexer.metric("contactd_index_changes_total", "");
    assert!(replayed < changes, "the last indexer resumed from its index ({replayed} of {changes} changes)");
    let (status, body) = indexer.get_with("/v1/tenants/acme/search?order=newest&limit=1", Some("acme-token")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(indexer.terminate().success());

    let index = contactd::index::SearchIndex::open_or_create(&data.join("index")).unwrap();
    assert_eq!(index.timeline.num_docs() as f64, entries, "no missing and no duplicate entries");
    assert_eq!(index.contacts.num_docs() as f64, contacts);
    for contact in &directory {
        let indexed =
            index.timeline.contact_docs(contact["tenant_id"].as_str().unwrap(), contact["contact_id"].as_str().unwrap());
        assert_eq!(indexed.unwrap() as f64, contact["timeline_entries"].as_f64().unwrap(), "{contact}");
    }
}

/// A transactional producer leaves a control record after each transaction,
/// at an offset a read-committed consumer never receives: the worker counts
/// each such gap (the signal that would have caught tansu's skipped runs of
/// records) and still applies every event and commits past the gaps.
#[test]
fn offset_gaps_left_by_transactions_are_counted_while_every_event_is_applied() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let cluster = Cluster::start(1, 1, 1);
    let events = corpus(12, 0);
    let producer: BaseProducer =
        cluster.client().set("transactional.id", format!("{}-producer", cluster.group)).create().expect("producer");
    producer.init_transactions(PATIENCE).expect("transactions start");
    let transactions = events.chunks(events.len().div_ceil(3)).collect::<Vec<_>>();
    for transaction in &transactions {
        producer.begin_transaction().unwrap();
        for event in *transaction {
            let line = event.to_string();
            producer.send(BaseRecord::<(), str>::to(&cluster.events).payload(&line)).map_err(|(error, _)| error).unwrap();
        }
        producer.commit_transaction(PATIENCE).expect("the transaction commits");
    }
    // Each transaction's records, then its commit marker.
    let end_of_last_transaction = (events.len() + transactions.len() - 1) as i64;

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "contactd.toml", &cluster, "lanes = 1\n");
    let data = dir.path().join("data");
    let worker = Service::start(&data, &config, "worker");
    eventually("every event is committed", || cluster.committed(1) == [end_of_last_transaction]);
    let gaps = worker.metric("contactd_offset_gaps_total", &format!("partition=\"0\",topic=\"{}\"", cluster.events));
    assert_eq!(gaps, (transactions.len() - 1) as f64, "one gap after each transaction but the last");
    assert!(worker.terminate().success());

    let mut alone = crate::harness::Directory::on_disk();
    alone.feed(&events);
    let store = SqliteStore::open(&data.join("directory.sqlite3"), &SqliteOptions::default()).unwrap();
    assert_eq!(canonical(&store), canonical(&alone.store), "every event applied");
}

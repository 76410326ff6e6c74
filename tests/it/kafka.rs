//! `contactd worker` against a real Kafka-compatible broker: tansu, started by
//! the fixture on a free loopback port with in-memory storage and killed when
//! the test ends. A TCP proxy in front of it stands in for a network outage,
//! since restarting an in-memory broker would also erase its topics.
//!
//! tansu 0.6.0 returns nothing for a fetch that starts inside a record batch,
//! which a consumer resuming from a committed offset does all the time. Test
//! producers therefore send one record per batch; the worker is unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
use serde_json::Value;

use crate::harness::{
    Conversation, EXAMPLES, PATIENCE, Service, assert_one_owner_per_identifier, canonical, contactd, conversation_events,
    eventually, export, free_port,
};

const EVENTS: &str = "contact-events";
const CHANGES: &str = "directory-changes";
const DEAD_LETTERS: &str = "contact-events-dlq";
const GROUP: &str = "contactd-worker";
fn tansu() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU") {
        return path.into();
    }
    let installed = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|home| home.join("bin/tansu"));
    installed.filter(|path| path.exists()).unwrap_or_else(|| "tansu".into())
}

/// A tansu broker listening on `port` and advertising `advertised`.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(advertised: u16) -> Self {
        let port = free_port();
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{advertised}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start tansu ({error}); install it: cargo install tansu --locked --version 0.6.0 --features dynostore"
                )
            });
        eventually("tansu accepts connections", || TcpStream::connect(("127.0.0.1", port)).is_ok());
        Self { child, port }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// A broker reached through a proxy on a fixed port.
struct Cluster {
    broker: Broker,
    proxy: Option<Proxy>,
    port: u16,
    /// Configuration for `contactd produce`.
    producer_config: tempfile::NamedTempFile,
}

impl Cluster {
    fn start(topics: &[(&str, i32)]) -> Self {
        Self::start_on(free_port(), topics)
    }

    fn start_on(port: u16, topics: &[(&str, i32)]) -> Self {
        let broker = Broker::start(port);
        let producer_config = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            producer_config.path(),
            format!("[kafka]\nbrokers = \"127.0.0.1:{port}\"\n[kafka.properties]\n\"batch.num.messages\" = \"1\"\n"),
        )
        .unwrap();
        let cluster = Self { proxy: Some(Proxy::up(port, broker.port)), broker, port, producer_config };
        cluster.create_topics(topics);
        cluster
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.address());
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

    fn disconnect(&mut self) {
        self.proxy.take().expect("connected").down();
    }

    fn reconnect(&mut self) {
        self.proxy = Some(Proxy::up(self.port, self.broker.port));
    }

    /// Sends raw records to a topic, waiting for every acknowledgement.
    fn send(&self, topic: &str, records: &[(Option<&str>, &[u8])]) {
        self.send_to(topic, None, records);
    }

    /// Sends raw records to one partition of a topic, or where their keys
    /// lead with `None`, waiting for every acknowledgement.
    fn send_to(&self, topic: &str, partition: Option<i32>, records: &[(Option<&str>, &[u8])]) {
        let producer: FutureProducer = self.client().set("batch.num.messages", "1").create().expect("producer");
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
    fn produce(&self, file: &Path) -> usize {
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

    /// The group's committed offset of each partition (0 where none).
    fn committed(&self, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = self.client().set("group.id", GROUP).create().expect("consumer");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
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

    /// Commits `offset` for one partition in the workers' group from outside
    /// it, as a partition's former owner does with a late commit.
    fn commit_stray_offset(&self, topic: &str, partition: i32, offset: i64) {
        let consumer: BaseConsumer = self.client().set("group.id", GROUP).create().expect("consumer");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(offset)).unwrap();
        consumer.commit(&list, CommitMode::Sync).expect("the stray commit is sent");
    }

    /// Reads `topic` from the beginning until `count` records arrived.
    fn read(&self, topic: &str, partitions: i32, count: usize) -> Vec<Record> {
        let consumer: BaseConsumer =
            self.client().set("group.id", "contactd-test-reader").set("enable.auto.commit", "false").create().expect("consumer");
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        }
        consumer.assign(&list).expect("assign");
        let mut records = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while records.len() < count {
            assert!(Instant::now() < deadline, "only {} of {count} records arrived on {topic}", records.len());
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.expect("a record");
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|header| {
                                (header.key.to_owned(), String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        records
    }
}

struct Record {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
}

/// Worker settings for tests: quick commits (unless `extra` sets
/// `commit_interval_ms`) and failure detection.
fn write_config(dir: &Path, name: &str, cluster: &Cluster, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let commit_interval = if extra.contains("commit_interval_ms") { "" } else { "commit_interval_ms = 200\n" };
    let drain_deadline = if extra.contains("drain_deadline_secs") { "" } else { "drain_deadline_secs = 30\n" };
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         [worker]\n{commit_interval}statistics_interval_ms = 500\n{drain_deadline}{extra}",
        cluster.address()
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
    let cluster = Cluster::start(&[(EVENTS, 1), (CHANGES, 2), (DEAD_LETTERS, 1)]);
    let produced = cluster.produce(Path::new(EXAMPLES));
    assert_eq!(produced, 19);
    cluster.send(EVENTS, &[(Some("acme/s1"), b""), (None, &[0xff, 0x00, 0xfe])]);
    let dir = tempfile::tempdir().unwrap();
    // Commits every second, so the idle worker resends its points every ten.
    let config = write_config(dir.path(), "contactd.toml", &cluster, "lanes = 1\ncommit_interval_ms = 1000\n");
    let data = dir.path().join("data");
    let worker = Service::start(&data, &config, "worker");

    eventually("every offset is committed", || cluster.committed(EVENTS, 1) == [21]);
    eventually("the worker is ready", || worker.ready() == Some(true));
    // tansu does not fence a commit from outside the group's generation; the
    // worker's periodic resend must undo it, though nothing new was processed.
    // Idle, the worker's asynchronous commits are its resends: each try starts
    // right after one, so the stray offset is read back before the next; a try
    // that a slow read lets a resend overtake is repeated.
    let resends = || worker.metric("contactd_offset_commits_total", "mode=\"async\",result=\"ok\"");
    let regressed = (0..5).any(|_| {
        let before = resends();
        eventually("the idle worker resends its commit points", || resends() > before);
        std::thread::sleep(Duration::from_millis(500));
        cluster.commit_stray_offset(EVENTS, 0, 5);
        cluster.committed(EVENTS, 1) == [5]
    });
    assert!(regressed, "the stray commit moved the group's offset back (else this checks nothing)");
    eventually("the worker restores its commit point", || cluster.committed(EVENTS, 1) == [21]);
    assert_eq!(worker.metric("contactd_dead_letters_total", ""), 4.0);
    assert!(worker.metric("contactd_events_total", "outcome=\"applied\"") > 0.0);
    assert!(worker.metric("contactd_event_processing_seconds_count", "") >= 21.0);
    assert!(worker.terminate().success(), "SIGTERM ends the worker cleanly");

    let (ingested, expected_changes) = ingested_examples();
    assert_eq!(export(&data), export(ingested.path()), "the worker and ingest agree on the directory");

    let published: Vec<Change> = cluster
        .read(CHANGES, 2, expected_changes.len())
        .into_iter()
        .map(|record| {
            let change: Change = serde_json::from_slice(&record.payload).expect("a change event");
            assert_eq!(record.key.as_deref(), Some(format!("{}/{}", change.tenant_id, change.contact_id).as_bytes()));
            change
        })
        .collect();
    assert_eq!(sorted_by_id(published), sorted_by_id(expected_changes));

    let lines: Vec<&str> = include_str!("../../examples/events.jsonl").lines().collect();
    let letters = cluster.read(DEAD_LETTERS, 1, 4);
    let reasons: BTreeSet<&str> = letters.iter().map(|letter| letter.headers["reason"].as_str()).collect();
    assert!(reasons.contains("not_json"), "{reasons:?}");
    for letter in &letters {
        assert_eq!(letter.headers["source_topic"], EVENTS);
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

/// The production shape: `contactd migrate`, then a worker on the Scylla store,
/// then `contactd export` from it. kassandra ignores lightweight transactions,
/// so one worker lane; racing workers are tested against a real Scylla.
#[test]
fn a_worker_on_the_scylla_store_builds_the_same_directory_as_ingest() {
    let cluster = Cluster::start(&[(EVENTS, 1), (CHANGES, 2), (DEAD_LETTERS, 1)]);
    let produced = cluster.produce(Path::new(EXAMPLES));
    let dir = tempfile::tempdir().unwrap();
    let keyspace = format!("contactd_worker_{:08x}", rand::random::<u32>());
    let store = format!(
        "store = \"scylla://{}/{keyspace}\"\n[scylla]\nreplication = \"{{'class': 'SimpleStrategy', 'replication_factor': 1}}\"\n\
         await_schema_agreement = false\n",
        crate::scylla::kassandra()
    );
    let config = write_config(dir.path(), "contactd.toml", &cluster, "lanes = 1\n");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{store}{text}")).unwrap();
    let data = dir.path().join("data");
    let migrated = Command::new(env!("CARGO_BIN_EXE_contactd")).arg("--config").arg(&config).arg("migrate").output().unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("schema version 1"));

    let worker = Service::start(&data, &config, "worker");
    eventually("every offset is committed", || cluster.committed(EVENTS, 1) == [produced as i64]);
    assert!(worker.terminate().success());

    let exported = Command::new(env!("CARGO_BIN_EXE_contactd")).arg("--config").arg(&config).arg("export").output().unwrap();
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let from_scylla: Vec<Value> =
        String::from_utf8(exported.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (ingested, expected_changes) = ingested_examples();
    assert_eq!(from_scylla, export(ingested.path()), "the worker on Scylla and ingest on SQLite agree");
    let published: Vec<Change> = cluster
        .read(CHANGES, 2, expected_changes.len())
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
    let cluster = Cluster::start(&[(EVENTS, PARTITIONS), (CHANGES, 2), (DEAD_LETTERS, 1)]);
    let dir = tempfile::tempdir().unwrap();
    // A small in-flight bound makes the workers pause and resume fetching.
    let config = write_config(dir.path(), "contactd.toml", &cluster, "lanes = 3\nbatch_size = 16\nmax_in_flight = 8\n");
    // One event per write unit: slow enough that a kill finds work in flight.
    let slow = write_config(dir.path(), "slow.toml", &cluster, "lanes = 1\nbatch_size = 1\n");
    let data = dir.path().join("data");
    let all = corpus(900, 0);
    let thirds: Vec<&[Value]> = all.chunks(all.len().div_ceil(3)).collect();
    let total = |cluster: &Cluster| cluster.committed(EVENTS, PARTITIONS).iter().sum::<i64>();
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
        committed = cluster.committed(EVENTS, PARTITIONS);
        committed.iter().sum::<i64>() == third as i64
    });
    assert!(all_committed, "gave up waiting for every offset to be committed: {committed:?} per partition of {third}");
    assert!(b.metric("contactd_partition_pauses_total", "") > 0.0, "the second worker paused fetching");
    assert!(a.terminate().success());
    assert!(b.terminate().success());

    let mut alone = crate::harness::Directory::new();
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
            .set("group.id", GROUP)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .expect("consumer");
        consumer.subscribe(&[EVENTS]).expect("subscribed");
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
    let cluster = Cluster::start(&[(EVENTS, 2), (CHANGES, 1), (DEAD_LETTERS, 1)]);
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
        cluster.send_to(EVENTS, Some(partition), &records);
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
    eventually("the worker finishes the partition it kept", || cluster.committed(EVENTS, 2)[kept] == per_partition[kept]);
    drop(bystander);
    eventually("the partition that came back is processed too", || cluster.committed(EVENTS, 2)[moved] == per_partition[moved]);
    assert!(worker.terminate().success());
}

#[test]
fn a_busy_store_holds_the_partition_and_readiness_without_dead_letters() {
    let cluster = Cluster::start(&[(EVENTS, 1), (CHANGES, 1), (DEAD_LETTERS, 1)]);
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
    assert_eq!(cluster.committed(EVENTS, 1)[0], 0, "nothing is committed past a busy store");
    assert_eq!(worker.metric("contactd_dead_letters_total", ""), 0.0);

    lock.execute_batch("COMMIT").unwrap();
    eventually("every offset is committed", || cluster.committed(EVENTS, 1)[0] == produced as i64);
    eventually("the worker is ready again", || worker.ready() == Some(true));
    assert_eq!(worker.metric("contactd_dead_letters_total", ""), 2.0, "only the two bad example lines");
    assert!(worker.terminate().success());
    let (ingested, _) = ingested_examples();
    assert_eq!(export(&data), export(ingested.path()));
}

#[test]
fn the_worker_waits_for_a_broker_that_is_down_at_start_and_mid_run() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("contactd.toml");
    std::fs::write(
        &config,
        format!("[kafka]\nbrokers = \"127.0.0.1:{port}\"\n[worker]\ncommit_interval_ms = 200\nstatistics_interval_ms = 500\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    let worker = Service::start(&data, &config, "worker");
    assert_eq!(worker.get("/healthz").map(|(status, _)| status), Some(200), "alive while the broker is down");
    assert_eq!(worker.ready(), Some(false), "not ready without a broker");

    let mut cluster = Cluster::start_on(port, &[(EVENTS, 1), (CHANGES, 1), (DEAD_LETTERS, 1)]);
    let all = corpus(60, 0);
    let (before, after) = all.split_at(all.len() / 2);
    let first = dir.path().join("first.jsonl");
    write_jsonl(&first, before);
    let produced = cluster.produce(&first);
    eventually("the events are committed once the broker is up", || cluster.committed(EVENTS, 1) == [produced as i64]);
    eventually("the worker is ready", || worker.ready() == Some(true));

    cluster.disconnect();
    eventually("readiness turns false when the broker goes away", || worker.ready() == Some(false));
    assert_eq!(worker.get("/healthz").map(|(status, _)| status), Some(200));

    cluster.reconnect();
    let second = dir.path().join("second.jsonl");
    write_jsonl(&second, after);
    let total = produced + cluster.produce(&second);
    eventually("events after the outage are committed", || cluster.committed(EVENTS, 1) == [total as i64]);
    eventually("the worker is ready again", || worker.ready() == Some(true));
    assert!(worker.terminate().success());

    let mut alone = crate::harness::Directory::new();
    alone.feed(&all);
    let store = SqliteStore::open(&data.join("directory.sqlite3"), &SqliteOptions::default()).unwrap();
    assert_eq!(canonical(&store), canonical(&alone.store));
}

#[test]
fn the_indexer_resumes_from_its_index_after_kill_9_with_no_missing_or_duplicate_documents() {
    let cluster = Cluster::start(&[(EVENTS, 2), (CHANGES, 3), (DEAD_LETTERS, 1)]);
    let dir = tempfile::tempdir().unwrap();
    // One change per record batch: the indexer resumes at arbitrary offsets,
    // which tansu cannot serve from inside a batch.
    let config = dir.path().join("contactd.toml");
    let text = format!(
        "[kafka]\nbrokers = \"{}\"\n[kafka.properties]\n\"batch.num.messages\" = \"1\"\n\
         [worker]\ncommit_interval_ms = 200\nstatistics_interval_ms = 500\n\
         [indexer]\ncommit_interval_ms = 100\n[api.tokens]\nacme = [\"acme-token\"]\n",
        cluster.address()
    );
    std::fs::write(&config, text).unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("events.jsonl");
    write_jsonl(&file, &corpus(600, 0));
    let events = cluster.produce(&file) as i64;
    let worker = Service::start(&data, &config, "worker");
    eventually("the worker commits every event", || cluster.committed(EVENTS, 2).iter().sum::<i64>() == events);
    let changes = worker.metric("contactd_changes_published_total", "");
    assert!(worker.terminate().success());
    let directory = export(&data);
    let entries: f64 = directory.iter().map(|c| c["timeline_entries"].as_f64().unwrap()).sum();
    let contacts = directory.len() as f64;

    let documents = |indexer: &Service, index: &str| indexer.metric("contactd_index_documents", &format!("index=\"{index}\""));
    let mut indexer = Service::start(&data, &config, "indexer");
    eventually("the first indexer commits", || documents(&indexer, "timeline") > 0.0);
    for pause_ms in [0, 150, 400] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        indexer.kill();
        indexer = Service::start(&data, &config, "indexer");
    }
    eventually("the indexer catches up", || {
        documents(&indexer, "timeline") == entries && documents(&indexer, "contacts") == contacts
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

//! No loss at scale: three `contactd worker` processes on real Kafka and one
//! store (a shared SQLite data dir, or one Cassandra keyspace), 200,000
//! generated events on 8 partitions, an in-flight bound so small that fetching
//! pauses and resumes all the time, two kill -9s each followed by a
//! replacement, then a scale-down to two workers and back up to three. The
//! directory is then checked against the corpus with rules that hold in any
//! processing order.
//!
//! What it catches: a broker or client that skips records when fetching
//! resumes (tansu 0.6.0 lost 2,840 of 100,000 events that way, in blocks, with
//! every offset committed), an offset committed before its event is durable,
//! a redelivered event applied twice or under two contacts, a claim race that
//! gives an identifier two owners, a dead letter lost or invented, and a
//! change published for a unit that was never committed or never published
//! for one that was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use contactd::model::{Change, ChangeKind, EntryKind};
use contactd::store::Store;
use serde_json::Value;

use crate::harness::{Service, assert_one_owner_per_identifier};
use crate::kafka::{Cluster, write_config};

const EVENTS: u64 = 200_000;
const PARTITIONS: i32 = 8;
const CHANGE_PARTITIONS: i32 = 4;
/// The whole run on a debug build with both servers on two cores.
const RUN_PATIENCE: Duration = Duration::from_secs(40 * 60);

#[test]
fn three_workers_on_one_sqlite_data_dir_lose_nothing_through_kill_9_and_rescaling() {
    use contactd::store::sqlite::{SqliteOptions, SqliteStore};
    let run = Run::new("");
    let path = run.data.join("directory.sqlite3");
    run.check(&|| SqliteStore::open(&path, &SqliteOptions::default()).unwrap());
}

#[test]
fn three_workers_on_one_cassandra_keyspace_lose_nothing_through_kill_9_and_rescaling() {
    use contactd::store::scylla::{ScyllaBackend, ScyllaStore};
    let keyspace = crate::scylla::fresh_keyspace();
    let store_line = format!(
        "store = \"scylla://{}/{keyspace}\"\n[scylla]\nreplication = \"{{'class': 'SimpleStrategy', 'replication_factor': 1}}\"\n",
        crate::servers::cassandra()
    );
    let run = Run::new(&store_line);
    let backend = ScyllaBackend::connect(&crate::scylla::options(keyspace)).unwrap();
    // Checked before anything reads an event: a read finishes such a unit.
    assert_eq!(backend.unfinished_units().unwrap(), 0, "every unit a killed worker left half written was finished");
    run.check(&|| ScyllaStore::new(std::sync::Arc::clone(&backend)));
}

/// One run of the scenario, finished: every offset committed, every worker stopped.
struct Run {
    cluster: Cluster,
    corpus: Vec<String>,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Run {
    /// `store_line` leads the workers' configuration (empty: SQLite in the data dir).
    fn new(store_line: &str) -> Self {
        let cluster = Cluster::start(PARTITIONS, CHANGE_PARTITIONS, 1);
        let dir = tempfile::tempdir().unwrap();
        let mut corpus = Vec::new();
        let options = contactd::corpus::GenOptions { events: EVENTS, ..Default::default() };
        contactd::corpus::Generator::new(options).write(&mut corpus).unwrap();
        let file = dir.path().join("corpus.jsonl");
        std::fs::write(&file, &corpus).unwrap();
        let corpus: Vec<String> = String::from_utf8(corpus).unwrap().lines().map(str::to_owned).collect();
        assert_eq!(cluster.produce(&file), corpus.len());

        // A small in-flight bound: fetching pauses and resumes several times a
        // second. (Each resume costs a fetch round trip, so a bound of tens of
        // events would make the run take most of an hour.)
        let workers = "lanes = 2\nbatch_size = 100\nmax_in_flight = 400\n";
        let config = write_config(dir.path(), "worker.toml", &cluster, workers);
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, format!("{store_line}{text}")).unwrap();
        if !store_line.is_empty() {
            let migrated =
                Command::new(env!("CARGO_BIN_EXE_contactd")).arg("--config").arg(&config).arg("migrate").output().unwrap();
            assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
        }
        let data = dir.path().join("data");
        let start = || Service::start(&data, &config, "worker");
        let committed = || cluster.committed(PARTITIONS).iter().sum::<i64>();
        let reach = |share: f64, what: &str| {
            let target = (corpus.len() as f64 * share) as i64;
            wait_for(&format!("{what}: {target} of {} offsets committed", corpus.len()), || committed() >= target);
        };

        let mut workers: Vec<Service> = (0..3).map(|_| start()).collect();
        let mut pauses = 0.0;
        let mut stopped = |worker: &Service| pauses += worker.metric("contactd_partition_pauses_total", "");
        reach(0.15, "before the first kill");
        let first = workers.remove(0);
        stopped(&first);
        first.kill();
        workers.push(start());
        reach(0.35, "before the second kill");
        let second = workers.remove(1);
        stopped(&second);
        second.kill();
        workers.push(start());
        reach(0.55, "before scaling down");
        let leaving = workers.remove(0);
        stopped(&leaving);
        assert!(leaving.terminate().success(), "a worker scaled down drains and exits cleanly");
        reach(0.75, "before scaling up");
        workers.push(start());
        reach(1.0, "every offset");
        for worker in workers {
            stopped(&worker);
            assert_eq!(worker.metric("contactd_offset_gaps_total", ""), 0.0, "no record skipped");
            assert!(worker.terminate().success());
        }
        assert!(pauses > 10.0, "fetching paused and resumed all the time ({pauses} pauses)");
        Self { cluster, corpus, data, _dir: dir }
    }

    /// `open` gives a connection to the store; the per-event reads run on several.
    fn check<S: Store>(&self, open: &(dyn Fn() -> S + Sync)) {
        let corpus = Corpus::of(&self.corpus);
        let store = open();
        let store = &store;

        let valid: Vec<&(String, String)> = corpus.valid.keys().collect();
        let unapplied: Vec<&(String, String)> = std::thread::scope(|scope| {
            let readers: Vec<_> = valid
                .chunks(valid.len().div_ceil(8))
                .map(|events| {
                    scope.spawn(move || {
                        let store = open();
                        let unapplied =
                            events.iter().filter(|(tenant, id)| store.event_unit(&tenant.as_str().into(), id).unwrap().is_none());
                        unapplied.copied().collect::<Vec<_>>()
                    })
                })
                .collect();
            readers.into_iter().flat_map(|reader| reader.join().unwrap()).collect()
        });
        assert!(
            unapplied.is_empty(),
            "{} valid events the store never applied, for example {:?}",
            unapplied.len(),
            &unapplied[..unapplied.len().min(10)]
        );

        let mut contacts = Vec::new();
        store
            .export(&mut |contact| {
                contacts.push(contact);
                Ok(())
            })
            .unwrap();
        let exported: Vec<Value> = contacts.iter().map(|c| serde_json::to_value(c).unwrap()).collect();
        assert_one_owner_per_identifier(&exported);
        let started = std::time::Instant::now();
        let report = crate::harness::assert_invariants(store);
        eprintln!("invariant check: {report:?} in {:?}", started.elapsed());

        let mut owners: HashMap<(&str, &str), usize> = HashMap::new();
        for contact in &contacts {
            for session in &contact.sessions {
                *owners.entry((&contact.tenant_id, session)).or_default() += 1;
            }
        }
        // A session without a strong identifier may still have resolved, to the
        // contact that owns its browser id by then.
        for (session, strong) in &corpus.sessions {
            let owned = owners.get(&(session.0.as_str(), session.1.as_str())).copied().unwrap_or(0);
            let allowed = if *strong { 1..=1 } else { 0..=1 };
            assert!(allowed.contains(&owned), "session {session:?} (strong identifier: {strong}) belongs to {owned} contacts");
        }

        // Every message is a timeline entry exactly once: of its session's
        // contact, or waiting in its unresolved session.
        let mut entries: HashMap<(String, String), usize> = HashMap::new();
        let mut attached: BTreeSet<(String, String)> = BTreeSet::new();
        for contact in &contacts {
            for entry in store.timeline(&contact.tenant_id, &contact.contact_id, None, usize::MAX).unwrap() {
                let key = (contact.tenant_id.to_string(), entry.entry_id.clone());
                assert!(attached.insert(key.clone()), "entry {key:?} is in two contacts' timelines");
                if entry.kind == EntryKind::Message {
                    *entries.entry(key).or_default() += 1;
                }
            }
        }
        let unresolved =
            corpus.sessions.keys().filter(|(tenant, session)| !owners.contains_key(&(tenant.as_str(), session.as_str())));
        for (tenant, session) in unresolved {
            for entry in store.pending(&tenant.as_str().into(), &session.as_str().into()).unwrap() {
                *entries.entry((tenant.clone(), entry.entry_id)).or_default() += 1;
            }
        }
        for message in &corpus.messages {
            assert_eq!(entries.get(message), Some(&1), "message event {message:?} is not one timeline entry");
        }

        let letters = self.cluster.read_all(&self.cluster.dead_letters, 1);
        let mut by_offset: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
        for letter in letters {
            let at = (letter.headers["source_partition"].clone(), letter.headers["source_offset"].clone());
            let earlier = by_offset.insert(at.clone(), letter.payload.clone());
            assert!(earlier.is_none_or(|earlier| earlier == letter.payload), "dead letters of {at:?} differ");
        }
        assert_eq!(by_offset.len(), corpus.broken.len(), "one dead letter per broken line");
        for payload in by_offset.values() {
            assert!(corpus.broken.contains(&String::from_utf8_lossy(payload).into_owned()), "a dead letter not in the corpus");
        }

        self.check_changes(&corpus, &contacts, &attached);
    }

    /// `directory-changes`, deduplicated by change id: no change of an event
    /// the corpus lacks, a redelivered change identical to the first, one
    /// `timeline.appended` per stored entry, and every contact's final state published.
    fn check_changes(
        &self,
        corpus: &Corpus,
        contacts: &[contactd::model::ExportedContact],
        attached: &BTreeSet<(String, String)>,
    ) {
        let mut changes: HashMap<String, Change> = HashMap::new();
        for record in self.cluster.read_all(&self.cluster.changes, CHANGE_PARTITIONS) {
            let change: Change = serde_json::from_slice(&record.payload).expect("a change event");
            assert!(
                corpus.valid.contains_key(&(change.tenant_id.to_string(), change.caused_by.clone())),
                "change {} caused by {} of {}, which the corpus lacks",
                change.change_id,
                change.caused_by,
                change.tenant_id
            );
            if let Some(first) = changes.get(&change.change_id) {
                assert_eq!(first, &change, "a change published twice differs");
            }
            changes.insert(change.change_id.clone(), change);
        }
        let mut appended = BTreeSet::new();
        for change in changes.values().filter(|change| change.kind == ChangeKind::TimelineAppended) {
            let entry = change.data.entry.as_ref().expect("a timeline change carries its entry");
            assert!(appended.insert((change.tenant_id.to_string(), entry.entry_id.clone())), "entry appended twice: {change:?}");
        }
        assert_eq!(&appended, attached, "one timeline.appended change per stored entry");
        let published: BTreeSet<(&str, &str, String)> = changes
            .values()
            .filter_map(|change| {
                let state = change.data.contact.as_ref()?;
                Some((change.tenant_id.as_str(), change.contact_id.as_str(), serde_json::to_string(state).unwrap()))
            })
            .collect();
        for contact in contacts {
            let state = serde_json::to_string(&contact.state).unwrap();
            assert!(
                published.contains(&(contact.tenant_id.as_str(), contact.contact_id.as_str(), state)),
                "the final state of {}/{} was never published",
                contact.tenant_id,
                contact.contact_id
            );
        }
    }
}

/// What the corpus holds, keyed by tenant.
struct Corpus {
    /// Every valid event once, by (tenant, event id), with its type.
    valid: HashMap<(String, String), String>,
    /// `message.posted` events, whose timeline entry has the event's id.
    messages: Vec<(String, String)>,
    /// Sessions, and whether any of their events carries a strong identifier
    /// (anything but a browser id; e-mail participants count).
    sessions: BTreeMap<(String, String), bool>,
    /// Lines that are not valid events, as many times as they occur.
    broken: Vec<String>,
}

impl Corpus {
    fn of(lines: &[String]) -> Self {
        let mut corpus = Self { valid: HashMap::new(), messages: Vec::new(), sessions: BTreeMap::new(), broken: Vec::new() };
        for line in lines {
            if contactd::event::decode(line.as_bytes()).is_err() {
                corpus.broken.push(line.clone());
                continue;
            }
            let event: Value = serde_json::from_str(line).unwrap();
            let text = |field: &str| event[field].as_str().unwrap_or_default().to_owned();
            let (tenant, id, kind) = (text("tenant_id"), text("event_id"), text("type"));
            if corpus.valid.insert((tenant.clone(), id.clone()), kind.clone()).is_some() {
                continue;
            }
            if kind == "message.posted" {
                corpus.messages.push((tenant.clone(), id));
            }
            if let Some(session) = event["session_id"].as_str() {
                let strong = kind.starts_with("email.")
                    || event["identity"].as_object().is_some_and(|identity| {
                        identity.keys().any(|key| !["name", "browser_id", "source"].contains(&key.as_str()))
                    });
                *corpus.sessions.entry((tenant, session.to_owned())).or_default() |= strong;
            }
        }
        corpus
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + RUN_PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

//! The Scylla store against Apache Cassandra 5.0, which the test binary starts
//! itself (`servers::cassandra`): the same CQL protocol, with the lightweight
//! transactions, write timestamps and clustering order the store relies on.
//! Every test here runs in CI; none is skipped. What differs from ScyllaDB and
//! what that leaves untested is in docs/testing.md.

use std::time::Duration;

use contactd::source::{Origin, RawRecord};
use contactd::store::Store;
use contactd::store::scylla::{SCHEMA_VERSION, ScyllaBackend, ScyllaOptions, ScyllaStore, migrate};

pub fn options(keyspace: String) -> ScyllaOptions {
    ScyllaOptions {
        nodes: vec![crate::servers::cassandra().to_owned()],
        keyspace,
        username: None,
        password: None,
        tls: None,
        local_dc: None,
        replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
        request_timeout: Duration::from_secs(10),
        max_concurrency: 32,
    }
}

pub fn fresh_keyspace() -> String {
    format!("contactd_test_{:016x}", rand::random::<u64>())
}

/// A connection to a fresh, migrated keyspace, for stores that share it.
pub fn fresh_backend() -> std::sync::Arc<ScyllaBackend> {
    let options = options(fresh_keyspace());
    assert_eq!(migrate(&options).expect("migrate"), SCHEMA_VERSION);
    ScyllaBackend::connect(&options).expect("connect")
}

/// A store on a fresh, migrated keyspace.
pub fn store() -> ScyllaStore {
    ScyllaStore::new(fresh_backend())
}

#[test]
fn migrate_is_idempotent_and_reports_the_schema_version() {
    let options = options(fresh_keyspace());
    assert_eq!(migrate(&options).expect("migrate"), SCHEMA_VERSION);
    assert_eq!(migrate(&options).expect("migrate again"), SCHEMA_VERSION);
}

/// An upgrade that stopped after adding some of a version's columns, and one
/// that runs beside another, add each column once and carry on.
#[test]
fn an_upgrade_that_stopped_halfway_runs_again() {
    let options = options(fresh_keyspace());
    migrate(&options).expect("migrate");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let session =
            scylla::client::session_builder::SessionBuilder::new().known_node(crate::servers::cassandra()).build().await.unwrap();
        let statement = format!("UPDATE {}.schema_version SET version = 2 WHERE component = 'directory'", options.keyspace);
        session.query_unpaged(statement, ()).await.unwrap();
    });
    assert_eq!(migrate(&options).expect("migrate from version 2 again"), SCHEMA_VERSION);
}

/// Two workers, each with its own connection pool, racing for the same
/// identifiers: the lightweight transactions must keep one owner each.
#[test]
fn concurrent_workers_never_double_claim() {
    let options = options(fresh_keyspace());
    migrate(&options).expect("migrate");
    super::conformance::concurrent_writers_never_double_claim(&|| {
        ScyllaStore::new(ScyllaBackend::connect(&options).expect("connect"))
    });
}

/// The engine's one code path on the Scylla store: the example events and a
/// synthetic corpus (redeliveries, merges, anonymous sessions), in batches,
/// give the same directory as on SQLite.
#[test]
fn the_examples_and_a_corpus_build_the_same_directory_as_on_sqlite() {
    let examples: Vec<String> = std::fs::read_to_string(crate::harness::EXAMPLES).unwrap().lines().map(str::to_owned).collect();
    same_directory_as_on_sqlite(&examples, 5);
    let mut corpus = Vec::new();
    let options = contactd::corpus::GenOptions { events: 3_000, tenants: 3, ..Default::default() };
    contactd::corpus::Generator::new(options).write(&mut corpus).unwrap();
    let corpus: Vec<String> = String::from_utf8(corpus).unwrap().lines().map(str::to_owned).collect();
    same_directory_as_on_sqlite(&corpus, 200);
}

fn same_directory_as_on_sqlite(lines: &[String], batch_size: usize) {
    let mut scylla = store();
    let mut sqlite = crate::harness::Directory::new();
    for (number, chunk) in lines.chunks(batch_size).enumerate() {
        let batch: Vec<RawRecord> = chunk
            .iter()
            .map(|line| RawRecord {
                payload: line.clone().into_bytes(),
                origin: Origin { source: "examples".into(), partition: None, position: number as u64 },
            })
            .collect();
        let on_scylla = contactd::pipeline::process_batch(&mut scylla, &batch).unwrap();
        let on_sqlite = contactd::pipeline::process_batch(&mut sqlite.store, &batch).unwrap();
        assert_eq!(on_scylla.report, on_sqlite.report, "batch {number}");
    }
    let expected = exported(&sqlite.store);
    assert!(expected.len() >= 2, "the examples make a directory");
    assert_eq!(exported(&scylla), expected);
    assert_eq!(crate::harness::canonical(&scylla), crate::harness::canonical(&sqlite.store));
}

/// The directory a batch of lines makes on `store`, and the changes of the
/// batch's units, as the publisher would read them from the outbox.
fn process(store: &mut ScyllaStore, lines: &[String]) -> (Vec<serde_json::Value>, Vec<String>) {
    use contactd::publish::Outbox;
    let batch: Vec<RawRecord> = lines
        .iter()
        .map(|line| RawRecord {
            payload: line.clone().into_bytes(),
            origin: Origin { source: "test".into(), partition: None, position: 0 },
        })
        .collect();
    let outcome = contactd::pipeline::process_batch(store, &batch).expect("the batch applies");
    // A unit of nothing but redelivered events has no outbox row.
    let units = outcome
        .units
        .iter()
        .filter_map(|seq| store.unit(*seq).unwrap())
        .flat_map(|unit| unit.changes().map(|(_, json)| json.to_owned()).collect::<Vec<_>>());
    (exported(store), units.collect())
}

/// The snapshot of any store, as JSON lines would give it.
fn exported(store: &dyn Store) -> Vec<serde_json::Value> {
    let mut contacts = Vec::new();
    store
        .export(&mut |c| {
            contacts.push(serde_json::to_value(c).unwrap());
            Ok(())
        })
        .unwrap();
    contacts
}

fn example_lines() -> Vec<String> {
    std::fs::read_to_string(crate::harness::EXAMPLES).unwrap().lines().map(str::to_owned).collect()
}

/// A worker killed at any step of a commit leaves its unit half written. The
/// next worker to meet one of its events finishes the unit instead of
/// resolving the events again: the directory is the one an uninterrupted
/// commit makes, and the changes it publishes are the first attempt's.
#[test]
fn a_unit_left_half_written_is_finished_by_the_next_worker_to_meet_its_events() {
    use contactd::store::scylla::CommitStep;
    let lines = example_lines();
    let (expected, _) = process(&mut store(), &lines);
    for step in [CommitStep::ProcessedEvents, CommitStep::Records, CommitStep::Rows] {
        let backend = fresh_backend();
        let mut killed = ScyllaStore::new(std::sync::Arc::clone(&backend));
        killed.crash_next_commit_after(step);
        let (_, first_attempt) = process(&mut killed, &lines);

        let mut next = ScyllaStore::new(backend);
        let (directory, republished) = process(&mut next, &lines);
        assert_eq!(directory, expected, "after a crash past {step:?}");
        assert_eq!(republished, first_attempt, "the first attempt's changes, published again, after {step:?}");
    }
}

/// A worker killed after writing its unit's redo but before marking any of
/// its events processed left nothing the directory shows: the unit is no
/// unfinished unit, and the next worker resolves its events afresh.
#[test]
fn a_unit_whose_writer_died_before_marking_its_events_has_no_effect() {
    use contactd::store::scylla::CommitStep;
    let lines = example_lines();
    let (expected, _) = process(&mut store(), &lines);
    let backend = fresh_backend();
    let mut killed = ScyllaStore::new(std::sync::Arc::clone(&backend));
    killed.crash_next_commit_after(CommitStep::Redo);
    process(&mut killed, &lines);
    assert_eq!(backend.unfinished_units().unwrap(), 0, "a redo no event points at is no unfinished unit");
    let (directory, _) = process(&mut ScyllaStore::new(std::sync::Arc::clone(&backend)), &lines);
    assert_eq!(directory, expected);
    assert_eq!(backend.unfinished_units().unwrap(), 0);
}

/// A reader outside a unit (the API waiting for an operator's event) counts
/// an event as applied only once its unit is whole, and never takes the unit
/// over from its writer: the next worker to redeliver the event does.
#[test]
fn a_reader_outside_a_unit_waits_for_the_events_unit_and_never_takes_it_over() {
    use contactd::store::DirectoryView;
    use contactd::store::scylla::CommitStep;
    let lines = example_lines();
    let backend = fresh_backend();
    let mut killed = ScyllaStore::new(std::sync::Arc::clone(&backend));
    killed.crash_next_commit_after(CommitStep::ProcessedEvents);
    process(&mut killed, &lines);
    let reader = ScyllaStore::new(std::sync::Arc::clone(&backend));
    let first = serde_json::from_str::<serde_json::Value>(&lines[0]).unwrap();
    let (tenant, event) = (first["tenant_id"].as_str().unwrap().into(), first["event_id"].as_str().unwrap());
    assert_eq!(reader.event_unit(&tenant, event).unwrap(), None, "marked, but its unit is not whole");
    assert_eq!(backend.unfinished_units().unwrap(), 1, "the reader left the unit to its writer or a worker");
    process(&mut ScyllaStore::new(std::sync::Arc::clone(&backend)), &lines);
    assert!(reader.event_unit(&tenant, event).unwrap().is_some(), "applied once a worker finished the unit");
}

/// When another worker has meanwhile moved on a record the half-written unit
/// meant to write, the unit cannot be finished: it is undone, and its events
/// are resolved again against what the other worker wrote.
#[test]
fn a_half_written_unit_that_lost_its_race_meanwhile_is_undone_and_its_events_resolved_again() {
    use contactd::store::scylla::CommitStep;
    let started = |id: &str, session: &str| {
        let identity = serde_json::json!({ "emails": ["jana@example.cz"] });
        crate::harness::with(crate::harness::event(id, "session.started", 1, Some(session)), "identity", identity).to_string()
    };
    let backend = fresh_backend();
    let mut killed = ScyllaStore::new(std::sync::Arc::clone(&backend));
    killed.crash_next_commit_after(CommitStep::ProcessedEvents);
    process(&mut killed, &[started("e1", "s1")]);

    // Another worker claims the same e-mail first, for another session.
    let mut other = ScyllaStore::new(std::sync::Arc::clone(&backend));
    let (directory, _) = process(&mut other, &[started("e2", "s2")]);
    assert_eq!(directory.len(), 1);
    let owner = directory[0]["contact_id"].clone();

    let (directory, _) = process(&mut other, &[started("e1", "s1")]);
    assert_eq!(directory.len(), 1, "one contact for the e-mail: {directory:?}");
    assert_eq!(directory[0]["contact_id"], owner, "the event joined the contact that won");
    assert_eq!(directory[0]["sessions"], serde_json::json!(["s1", "s2"]));
}

/// What an undone unit can leave behind: a claim naming a contact that went
/// back. Two workers then take the identifier for their own contacts at once:
/// one re-creates the named contact (its claim already has the value it
/// writes), the other founds a new one. Only one of them may win.
#[test]
fn a_claim_rewritten_with_the_value_it_holds_still_races_as_a_write() {
    use contactd::model::{Claim, Timestamp};
    use contactd::model::{Identifier, IdentifierKind};
    use contactd::store::{DirectoryView, Mutation};
    let backend = fresh_backend();
    let open = || ScyllaStore::new(std::sync::Arc::clone(&backend));
    let email = Identifier { kind: IdentifierKind::Email, value: "jana@example.cz".into() };
    let at = Timestamp::from_micros(1);
    let owned_by = |id: &str| Mutation::SetClaim { identifier: email.clone(), claim: Claim::Owned { contact_id: id.into() } };
    let mut leftover = open();
    leftover.begin().unwrap();
    leftover.apply(&"acme".into(), at, &[owned_by("c-a")]).unwrap();
    leftover.commit().unwrap();

    let mut founder = open();
    founder.begin().unwrap();
    assert_eq!(founder.claim(&"acme".into(), &email).unwrap(), Some(Claim::Owned { contact_id: "c-a".into() }));
    assert_eq!(founder.contact(&"acme".into(), &"c-a".into()).unwrap(), None, "the claim's contact went back");
    founder.apply(&"acme".into(), at, &[owned_by("c-b"), contact_owning("c-b", &email)]).unwrap();

    let mut recreator = open();
    recreator.begin().unwrap();
    assert_eq!(recreator.claim(&"acme".into(), &email).unwrap(), Some(Claim::Owned { contact_id: "c-a".into() }));
    recreator.apply(&"acme".into(), at, &[owned_by("c-a"), contact_owning("c-a", &email)]).unwrap();
    recreator.commit().unwrap();

    let error = founder.commit().expect_err("the founder read the claim before the re-creator wrote it");
    assert!(error.is_transient(), "{error}");
    let exported = exported(&open());
    assert_eq!(exported.len(), 1, "one owner for the e-mail: {exported:?}");
}

/// A worker that read a contact as absent early in its unit, and meets a
/// claim naming it after another worker wrote both, must see the contact:
/// taking the identifier for unowned would give it a second owner.
#[test]
fn a_claim_is_checked_against_its_contact_as_stored_now_not_as_read_earlier() {
    use contactd::model::{Claim, Timestamp};
    use contactd::model::{Identifier, IdentifierKind};
    use contactd::store::{DirectoryView, Mutation};
    let backend = fresh_backend();
    let open = || ScyllaStore::new(std::sync::Arc::clone(&backend));
    let email = Identifier { kind: IdentifierKind::Email, value: "jana@example.cz".into() };
    let at = Timestamp::from_micros(1);

    let mut reader = open();
    reader.begin().unwrap();
    assert_eq!(reader.contact(&"acme".into(), &"c-a".into()).unwrap(), None);

    let mut writer = open();
    writer.begin().unwrap();
    let claim = Claim::Owned { contact_id: "c-a".into() };
    writer.apply(&"acme".into(), at, &[Mutation::SetClaim { identifier: email.clone(), claim: claim.clone() }]).unwrap();
    writer.apply(&"acme".into(), at, &[contact_owning("c-a", &email)]).unwrap();
    writer.commit().unwrap();

    assert_eq!(reader.claim(&"acme".into(), &email).unwrap(), Some(claim));
    assert!(reader.contact(&"acme".into(), &"c-a".into()).unwrap().is_some(), "the claim's contact, read again");
}

fn contact_owning(id: &str, identifier: &contactd::model::Identifier) -> contactd::store::Mutation {
    use contactd::model::{Contact, ContactRecord, OwnedIdentifier, Timestamp};
    use contactd::store::Mutation;
    let owned = OwnedIdentifier { identifier: identifier.clone(), added_at: Timestamp::from_micros(1), by: None };
    let contact = Contact {
        id: id.into(),
        name: None,
        identifiers: vec![owned],
        created_at: Timestamp::from_micros(1),
        conflicts: Vec::new(),
    };
    Mutation::PutContact { contact_id: id.into(), record: ContactRecord::Active(contact) }
}

/// A unit reads ahead what its events will read; a record read ahead is a
/// read like any other, checked at commit: a claim another worker took
/// after it was read ahead makes the commit a lost race.
#[test]
fn a_claim_read_ahead_is_checked_at_commit_like_any_read() {
    use contactd::model::{Claim, Timestamp};
    use contactd::model::{Identifier, IdentifierKind};
    use contactd::store::{DirectoryView, Mutation, ReadAhead};
    let backend = fresh_backend();
    let open = || ScyllaStore::new(std::sync::Arc::clone(&backend));
    let email = Identifier { kind: IdentifierKind::Email, value: "jana@example.cz".into() };
    let at = Timestamp::from_micros(1);
    let owned_by = |id: &str| Mutation::SetClaim { identifier: email.clone(), claim: Claim::Owned { contact_id: id.into() } };

    let mut late = open();
    late.begin().unwrap();
    assert!(late.reads_ahead());
    let keys = ReadAhead {
        claims: vec![("acme".into(), email.clone())],
        events: vec![("acme".into(), "e1".into())],
        ..ReadAhead::default()
    };
    late.read_ahead(&keys).unwrap();

    let mut first = open();
    first.begin().unwrap();
    first
        .apply(
            &"acme".into(),
            at,
            &[Mutation::MarkSeen { event_id: "e2".into() }, owned_by("c-b"), contact_owning("c-b", &email)],
        )
        .unwrap();
    first.commit().unwrap();

    assert_eq!(late.claim(&"acme".into(), &email).unwrap(), None, "what was read ahead");
    assert_eq!(late.event_unit(&"acme".into(), "e1").unwrap(), None);
    late.apply(
        &"acme".into(),
        at,
        &[Mutation::MarkSeen { event_id: "e1".into() }, owned_by("c-a"), contact_owning("c-a", &email)],
    )
    .unwrap();
    let error = late.commit().expect_err("the claim moved on after it was read ahead");
    assert!(error.is_transient(), "{error}");
    assert_eq!(exported(&open()).len(), 1, "one owner for the e-mail");
}

fn attached(contact: &str, session: &str) -> [contactd::store::Mutation; 2] {
    use contactd::model::SessionRecord;
    use contactd::store::Mutation;
    let record = SessionRecord { contact_id: Some(contact.into()), ..SessionRecord::default() };
    [
        Mutation::PutSession { session_id: session.into(), record },
        Mutation::LinkSession { contact_id: contact.into(), session_id: session.into() },
    ]
}

/// A unit writes its records before its rows (`unit.rs`), so a contact can be
/// read before the session links of the unit that wrote it are. A merge or an
/// erasure that read the links then would leave the session behind, on a
/// contact that no longer exists: the rows of a record are read only once the
/// unit that last wrote the record is whole (finished here once stale).
#[test]
fn the_rows_of_a_record_are_read_only_once_the_unit_that_wrote_it_is_whole() {
    use contactd::model::{Identifier, IdentifierKind, Timestamp};
    use contactd::store::DirectoryView;
    use contactd::store::scylla::CommitStep;
    let backend = fresh_backend();
    let open = || ScyllaStore::new(std::sync::Arc::clone(&backend));
    let email = Identifier { kind: IdentifierKind::Email, value: "jana@example.cz".into() };
    let mut killed = open();
    killed.crash_next_commit_after(CommitStep::Records);
    killed.begin().unwrap();
    killed.apply(&"acme".into(), Timestamp::from_micros(1), &[contact_owning("c-a", &email)]).unwrap();
    killed.apply(&"acme".into(), Timestamp::from_micros(1), &attached("c-a", "s1")).unwrap();
    killed.commit().unwrap();

    let mut merger = open();
    let started = std::time::Instant::now();
    let sessions = loop {
        merger.begin().unwrap();
        assert!(merger.contact(&"acme".into(), &"c-a".into()).unwrap().is_some(), "the contact is written before its links");
        match merger.contact_sessions(&"acme".into(), &"c-a".into()) {
            Ok(sessions) => break sessions,
            Err(error) => {
                assert!(error.is_transient(), "{error}");
                assert!(started.elapsed() < Duration::from_secs(60), "the dead writer's unit is finished: {error}");
                merger.rollback().unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    assert_eq!(sessions, ["s1"], "the link of the half-written unit, finished before the links were read");
}

/// A message appended to a contact's timeline changes no field of the
/// contact. A merge or an erasure of that contact committed between the
/// append's read and its commit moved or cleared the timeline without the
/// new entry, which would then land on a contact that no longer exists: a
/// unit that writes a record's rows races with every writer of that record.
#[test]
fn a_unit_writing_the_rows_of_a_record_races_with_every_writer_of_the_record() {
    use contactd::model::{Channel, ContactRecord, Details, EntryKind, Identifier, IdentifierKind, TimelineEntry, Timestamp};
    use contactd::store::{DirectoryView, Mutation};
    let backend = fresh_backend();
    let open = || ScyllaStore::new(std::sync::Arc::clone(&backend));
    let email = Identifier { kind: IdentifierKind::Email, value: "jana@example.cz".into() };
    let at = Timestamp::from_micros(1);
    let mut setup = open();
    setup.begin().unwrap();
    setup.apply(&"acme".into(), at, &[contact_owning("c-a", &email)]).unwrap();
    setup.apply(&"acme".into(), at, &attached("c-a", "s1")).unwrap();
    setup.commit().unwrap();

    let mut appender = open();
    appender.begin().unwrap();
    assert!(appender.contact(&"acme".into(), &"c-a".into()).unwrap().is_some());
    let entry = TimelineEntry {
        entry_id: "m1".into(),
        occurred_at: Timestamp::from_micros(2),
        channel: Channel::Chat,
        session_id: Some("s1".into()),
        kind: EntryKind::Message,
        text: "hello".into(),
        details: Details::of(&serde_json::json!({})),
    };
    appender.apply(&"acme".into(), at, &[Mutation::PutEntry { contact_id: "c-a".into(), entry }]).unwrap();

    let mut eraser = open();
    eraser.begin().unwrap();
    assert!(eraser.contact(&"acme".into(), &"c-a".into()).unwrap().is_some());
    let erased = Timestamp::from_micros(3);
    eraser
        .apply(
            &"acme".into(),
            erased,
            &[
                Mutation::DeleteTimeline { contact_id: "c-a".into() },
                Mutation::PutContact { contact_id: "c-a".into(), record: ContactRecord::Deleted { at: erased } },
            ],
        )
        .unwrap();
    eraser.commit().unwrap();

    let error = appender.commit().expect_err("the contact was erased after the append read it");
    assert!(error.is_transient(), "{error}");
}

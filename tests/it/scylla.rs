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

/// A store on a fresh, migrated keyspace.
pub fn store() -> ScyllaStore {
    let options = options(fresh_keyspace());
    assert_eq!(migrate(&options).expect("migrate"), SCHEMA_VERSION);
    ScyllaStore::new(ScyllaBackend::connect(&options).expect("connect"))
}

#[test]
fn migrate_is_idempotent_and_reports_the_schema_version() {
    let options = options(fresh_keyspace());
    assert_eq!(migrate(&options).expect("migrate"), SCHEMA_VERSION);
    assert_eq!(migrate(&options).expect("migrate again"), SCHEMA_VERSION);
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
    let export = |store: &dyn Store| {
        let mut contacts = Vec::new();
        store
            .export(&mut |c| {
                contacts.push(serde_json::to_value(c).unwrap());
                Ok(())
            })
            .unwrap();
        contacts
    };
    let expected = export(&sqlite.store);
    assert!(expected.len() >= 2, "the examples make a directory");
    assert_eq!(export(&scylla), expected);
    assert_eq!(crate::harness::canonical(&scylla), crate::harness::canonical(&sqlite.store));
}

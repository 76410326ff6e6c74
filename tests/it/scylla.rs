//! The Scylla store. The full conformance suite runs against a real cluster
//! when `SCYLLA_NODES` is set (docker-compose starts one); without it, each of
//! its tests says it was skipped. CI has no Scylla, so it runs a smoke test
//! against kassandra, an in-memory CQL server that ignores lightweight
//! transactions, write timestamps and clustering order: schema creation and
//! plain reads and writes only.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use contactd::store::scylla::{ScyllaBackend, ScyllaOptions, ScyllaStore, migrate};

fn options(nodes: Vec<String>, keyspace: String, await_schema_agreement: bool) -> ScyllaOptions {
    ScyllaOptions {
        nodes,
        keyspace,
        username: std::env::var("SCYLLA_USERNAME").ok(),
        password: std::env::var("SCYLLA_PASSWORD").ok(),
        tls: None,
        local_dc: None,
        replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
        request_timeout: Duration::from_secs(10),
        max_concurrency: 32,
        await_schema_agreement,
    }
}

/// `SCYLLA_NODES`, or `None` after saying, once and past the test harness's
/// output capture, that the real-Scylla tests pass vacuously here.
fn scylla_nodes() -> Option<String> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let nodes = std::env::var("SCYLLA_NODES").ok().filter(|nodes| !nodes.is_empty());
    if nodes.is_none() {
        SAID.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the Scylla conformance suite and concurrency test need SCYLLA_NODES (see README); \
                 only the kassandra smoke test ran"
            );
        });
    }
    nodes
}

fn fresh_keyspace() -> String {
    format!("contactd_test_{:016x}", rand::random::<u64>())
}

/// A store on a fresh keyspace of the cluster named by `SCYLLA_NODES`, or `None`
/// (after saying so) when it is not set.
pub fn real_scylla() -> Option<ScyllaStore> {
    let nodes = scylla_nodes()?;
    let options = options(nodes.split(',').map(str::to_owned).collect(), fresh_keyspace(), true);
    migrate(&options).expect("migrate");
    Some(ScyllaStore::new(ScyllaBackend::connect(&options).expect("connect")))
}

/// One kassandra server for the whole test binary, on its own thread.
pub fn kassandra() -> SocketAddr {
    static ADDRESS: OnceLock<SocketAddr> = OnceLock::new();
    *ADDRESS.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let tester = kassandra_tester::KassandraTester::new(kassandra_tester::kassandra::KassandraSession::new());
            let served = runtime.block_on(tester.in_scope(|address| {
                let sender = sender.clone();
                async move {
                    sender.send(address).unwrap();
                    std::future::pending::<()>().await;
                    Ok::<(), ()>(())
                }
            }));
            drop(served);
        });
        receiver.recv_timeout(Duration::from_secs(10)).expect("kassandra started")
    })
}

fn kassandra_store() -> ScyllaStore {
    let options = options(vec![kassandra().to_string()], fresh_keyspace(), false);
    assert_eq!(migrate(&options).expect("migrate"), contactd::store::scylla::SCHEMA_VERSION);
    assert_eq!(migrate(&options).expect("migrate again"), contactd::store::scylla::SCHEMA_VERSION, "idempotent");
    ScyllaStore::new(ScyllaBackend::connect(&options).expect("connect"))
}

/// Two workers, each with its own connection pool, racing for the same
/// identifiers: the lightweight transactions must keep one owner each.
#[test]
fn concurrent_workers_never_double_claim() {
    let Some(nodes) = scylla_nodes() else { return };
    let options = options(nodes.split(',').map(str::to_owned).collect(), fresh_keyspace(), true);
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
    use contactd::source::{Origin, RawRecord};
    use contactd::store::Store;
    let mut scylla = kassandra_store();
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

// Clustering order and ranges, conditional writes and write timestamps are
// what kassandra ignores, so `timelines_page_newest_first` and the
// concurrency checks run against a real Scylla only.
crate::conformance::conformance_suite!(
    smoke_on_kassandra,
    Some(super::kassandra_store()),
    [
        reads_return_what_was_written,
        tenants_are_isolated,
        writes_are_idempotent_overwrites,
        deletes_remove_what_they_name,
        reads_see_the_units_own_writes,
        rollback_discards_the_unit,
        export_lists_live_contacts_in_order,
        events_lead_back_to_their_change_units,
    ]
);

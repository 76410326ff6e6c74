//! Benchmarks of the hot paths and of `ingest` end to end, each reported as
//! events per second and as a ratio to a baseline measured in the same run
//! (JSON decoding alone), so the figures compare across machines (though not
//! across every slow hour of one: docs/benchmarks.md shows one that slowed the store
//! and not decoding). `cargo bench` runs it; CONTACTD_BENCH_EVENTS sets the
//! corpus size (default 200000).

use std::hint::black_box;
use std::time::Instant;

use contactd::event;
use contactd::identity;
use contactd::model::TenantConfig;
use contactd::pipeline;
use contactd::store::sqlite::{SqliteOptions, SqliteStore};

mod common;

/// The same allocator as the `contactd` binary, so stages compare with ingest.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rate(events: usize, started: Instant) -> f64 {
    events as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let corpus = common::corpus(common::corpus_size(200_000));
    let lines = common::lines(&corpus);
    let n = lines.len();

    let started = Instant::now();
    let decoded: Vec<event::Event> = lines.iter().filter_map(|l| event::decode(l).ok()).collect();
    let baseline = rate(n, started);

    let config =
        TenantConfig { identifying_params: vec!["crm_id".into()], default_phone_region: Some("CZ".into()), version: None };
    let started = Instant::now();
    for event in &decoded {
        if let Some(identity) = &event.identity {
            black_box(identity::normalize(identity, &config));
        }
    }
    let normalize = rate(n, started);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = SqliteStore::open(&dir.path().join("bench.sqlite3"), &SqliteOptions::default()).expect("store");
    let records = common::records(&lines);
    let started = Instant::now();
    for batch in records.chunks(5_000) {
        pipeline::process_batch(&mut store, batch).expect("batch");
    }
    let resolve_store = rate(n, started);

    let index = contactd::index::SearchIndex::open_or_create(&dir.path().join("index")).expect("index");
    let mut log = SqliteStore::open(&dir.path().join("bench.sqlite3"), &SqliteOptions::default()).expect("store");
    let options = contactd::pipeline::FollowOptions::from(&contactd::config::Config::default().index);
    let started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(true);
    let followed = pipeline::follow_changes(&mut log, &index, &options, &done).expect("index");
    let indexing = rate(n, started);

    // The whole command on the same corpus, as a file: reading, both threads,
    // both indexes. The binary keeps freed memory for ingest (src/main.rs);
    // MIMALLOC_PURGE_DELAY=-1 does the same here.
    let file = dir.path().join("corpus.jsonl");
    std::fs::write(&file, &corpus).expect("corpus file");
    let config = contactd::config::Config { data_dir: dir.path().join("ingest"), ..contactd::config::Config::default() };
    let args = contactd::cli::IngestArgs { file, quiet: true };
    let started = Instant::now();
    let ingested = contactd::app::ingest(&args, &config).expect("ingest");
    let ingest = rate(n, started);
    assert_eq!(ingested.report.records, n as u64, "ingest read every line");

    println!("contactd pipeline benchmark, {n} events ({} changes indexed)", followed.changes);
    println!("{:<28} {:>12} {:>8}", "stage", "events/s", "ratio");
    for (stage, value) in [
        ("decode (baseline)", baseline),
        ("normalize identities", normalize),
        ("resolve + SQLite store", resolve_store),
        ("index changes (tantivy)", indexing),
        ("ingest end to end", ingest),
    ] {
        println!("{stage:<28} {value:>12.0} {:>8.3}", value / baseline);
    }
}

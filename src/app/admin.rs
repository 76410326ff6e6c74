//! The administrative commands: `migrate` the store, `reindex` from it,
//! `produce` a file to Kafka, `gen` a corpus.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};

use super::{open_sqlite, open_store, output, say};
use crate::cli::{GenArgs, ProduceArgs};
use crate::config::{Config, StoreLocation};
use crate::event::partition_key;
use crate::index::SearchIndex;
use crate::store::scylla::ScyllaOptions;

pub(super) fn migrate(config: &Config) -> anyhow::Result<()> {
    match config.store_location()? {
        StoreLocation::Sqlite(_) => {
            let (_, path) = open_sqlite(config)?;
            say(&format!("{} is at the current schema (SQLite migrates itself when opened)\n", path.display()))?;
        }
        StoreLocation::Scylla(target) => {
            let options = ScyllaOptions::new(target, &config.scylla);
            let version = crate::store::scylla::migrate(&options)
                .with_context(|| format!("migrating Scylla {} keyspace {}", options.nodes.join(","), options.keyspace))?;
            say(&format!("keyspace {} is at schema version {version}\n", options.keyspace))?;
        }
    }
    Ok(())
}

pub(super) fn generate(args: &GenArgs) -> anyhow::Result<()> {
    let options = crate::corpus::GenOptions { events: args.events, tenants: args.tenants, seed: args.seed, ..Default::default() };
    let mut out = output(args.out.as_deref())?;
    crate::corpus::Generator::new(options).write(&mut out).context("writing the corpus")?;
    out.flush()?;
    Ok(())
}

/// Rebuilds both indexes from the store, keeping the change-stream checkpoint:
/// changes after it re-apply as idempotent upserts and deletes.
pub(super) fn reindex(config: &Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let store = open_store(config)?;
    let index = SearchIndex::open_or_create(&config.index_path()).context("opening the index")?;
    let checkpoint = index.checkpoint()?;
    let mut writer = match index.writer(config.index.writer_memory_mb << 20) {
        Err(crate::index::IndexError::WriterBusy) => bail!("another process writes the index; stop the indexer first"),
        other => other?,
    };
    writer.clear()?;
    let (mut contacts, mut entries) = (0u64, 0u64);
    let mut failure = None;
    store.export(&mut |contact| {
        let (tenant, id) = (&contact.tenant_id, &contact.contact_id);
        if let Err(error) = writer.contacts.upsert(tenant, id, &contact.state) {
            failure = Some(error);
            return Ok(());
        }
        contacts += 1;
        let mut cursor = None;
        loop {
            let page = store.timeline(tenant, id, cursor.as_ref(), REINDEX_PAGE)?;
            for entry in &page {
                if let Err(error) = writer.timeline.upsert(tenant, id, entry) {
                    failure = Some(error);
                    return Ok(());
                }
            }
            entries += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == REINDEX_PAGE => {
                    cursor = Some(crate::model::TimelineCursor { occurred_at: last.occurred_at, entry_id: last.entry_id.clone() })
                }
                _ => return Ok(()),
            }
        }
    })?;
    if let Some(error) = failure {
        return Err(error).context("indexing");
    }
    writer.commit(&checkpoint)?;
    say(&format!("reindexed {contacts} contacts and {entries} timeline entries in {:.2} s\n", started.elapsed().as_secs_f64()))
}

/// Timeline entries read from the store per query while reindexing.
const REINDEX_PAGE: usize = 1000;

/// Publishes JSONL events to Kafka, waiting for every acknowledgement.
pub(super) fn produce(args: &ProduceArgs, config: &Config) -> anyhow::Result<()> {
    const CHUNK: usize = 10_000;
    let topic = args.topic.as_deref().unwrap_or(&config.kafka.events_topics[0]);
    let reader: Box<dyn BufRead> = if args.file == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::new(File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?))
    };
    let producer = crate::publish::kafka::producer(&config.kafka).context("creating the producer")?;
    let mut lines = reader.split(b'\n');
    let mut produced = 0;
    loop {
        let chunk: Vec<Vec<u8>> = lines.by_ref().take(CHUNK).collect::<io::Result<_>>()?;
        if chunk.is_empty() {
            break;
        }
        let keyed: Vec<(Option<String>, &[u8])> = chunk
            .iter()
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(|line| (partition_key(line), line))
            .collect();
        produced += crate::publish::kafka::send_all(
            &producer,
            keyed.iter().map(|(key, line)| {
                let record = rdkafka::producer::FutureRecord::to(topic).payload(*line);
                match key {
                    Some(key) => record.key(key.as_bytes()),
                    None => record,
                }
            }),
        )
        .context("publishing")?;
    }
    say(&format!("produced {produced} events to {topic}\n"))
}

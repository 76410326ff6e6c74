//! The embedded commands: `ingest` runs a JSONL file through the pipeline
//! into the SQLite store and the local index; `export`, `search` and
//! `contact` read what it built.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tracing::debug;

use super::{open_existing_store, open_sqlite, output, say};
use crate::cli::{CheckArgs, ConflictsArgs, ContactArgs, ExportArgs, IngestArgs, SearchArgs};
use crate::config::Config;
use crate::index::{SearchIndex, TimelineQuery};
use crate::model::{Claim, ContactId, Identifier, TenantId};
use crate::pipeline::{self, FollowOptions, FollowReport, Report};
use crate::publish::feed::{self, FedLog};
use crate::publish::jsonl::JsonlDeadLetters;
use crate::publish::{ChangeLog, DeadLetterSink};
use crate::source::file::JsonlSource;
use crate::source::{EventSource, RawRecord};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::view;
use crate::usage::{self, Usage};

#[derive(Clone, Debug)]
pub struct IngestSummary {
    pub report: Report,
    pub index: FollowReport,
    pub elapsed: Duration,
    pub usage: Usage,
}

impl IngestSummary {
    pub fn events_per_second(&self) -> f64 {
        self.report.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(super) fn render(&self, config: &Config) -> String {
        let r = &self.report;
        let mut out = String::new();
        let mut line = |label: &str, value: String| out.push_str(&format!("{label:<18} {value}\n"));
        line("lines read", r.records.to_string());
        line("applied", r.applied.to_string());
        line("duplicates", r.duplicates.to_string());
        for (reason, n) in &r.skipped {
            line(&format!("skipped ({reason})"), n.to_string());
        }
        line("rejected", r.rejected_total().to_string());
        for (reason, n) in &r.rejected {
            line(&format!("  {reason}"), n.to_string());
        }
        line("contacts created", r.contacts_created.to_string());
        line("timeline entries", r.entries_appended.to_string());
        line(
            "index",
            if self.index.indexed {
                format!("{} changes applied", self.index.changes)
            } else {
                "queued: another process holds the writer".into()
            },
        );
        line("elapsed", format!("{:.2} s", self.elapsed.as_secs_f64()));
        line("throughput", format!("{:.0} events/s", self.events_per_second()));
        if let Some(cpu) = self.usage.cpu {
            let cores = cpu.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9);
            line("cpu time", format!("{:.1} s ({cores:.2} cores on average)", cpu.as_secs_f64()));
        }
        if let Some(peak) = self.usage.peak_memory_bytes {
            line("peak memory", format!("{:.1} MiB", peak as f64 / 1_048_576.0));
        }
        if r.rejected_total() > 0 {
            line("dead letters", config.dead_letter_path().display().to_string());
        }
        out
    }
}

fn progress_bar(total_bytes: Option<u64>, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    match total_bytes {
        Some(total) => indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner(),
    }
}

/// Events whose changes are handed to the indexing thread in memory and not yet
/// indexed. The thread falls behind while tantivy commits; beyond this it reads
/// the outbox instead (measured over 1,000,000 events in units of 20,000: 40,000
/// left a third of the units to be read back, 160,000 a seventh, for about
/// 85 MiB more at peak).
const FEED_EVENTS: usize = 160_000;

/// A batch as read, its decoding, and the bytes read so far.
type ReadBatch = (Vec<RawRecord>, pipeline::DecodedBatch, u64);

/// Runs a JSONL file through the pipeline while a second thread indexes the
/// changes it produces.
pub fn ingest(args: &IngestArgs, config: &Config) -> anyhow::Result<IngestSummary> {
    let (started, mark) = (Instant::now(), usage::Mark::now());
    let (reader, total_bytes, name): (Box<dyn BufRead + Send>, Option<u64>, String) = if args.file == Path::new("-") {
        (Box::new(BufReader::with_capacity(1 << 20, io::stdin())), None, "stdin".into())
    } else {
        let file = File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 20, file)), size, args.file.display().to_string())
    };
    let mut source = JsonlSource::new(reader, name).with_max_event_bytes(config.limits.event_bytes);
    let (mut store, store_path) = open_sqlite(config)?;
    let index = SearchIndex::open_or_create(&config.index_path()).context("opening the index")?;
    let mut dead_letters = JsonlDeadLetters::open(&config.dead_letter_path()).context("opening the dead-letter file")?;
    let producer_done = AtomicBool::new(false);
    let progress = progress_bar(total_bytes, args.quiet);
    store.keep_committed_units();
    let (feed, fed) = feed::channel((FEED_EVENTS / config.ingest.batch_size.max(1)).max(1));

    let (report, follow) = std::thread::scope(|scope| {
        let (index, store_path, producer_done) = (&index, &store_path, &producer_done);
        let follower = std::thread::Builder::new()
            .name("contactd-index".into())
            .spawn_scoped(scope, move || -> anyhow::Result<FollowReport> {
                // The index catches up when the store's writes are done.
                crate::priority::run_this_thread_in_background();
                let mut log = FedLog::new(SqliteStore::open(store_path, &SqliteOptions::from(&config.sqlite))?, fed);
                let report = pipeline::follow_changes(&mut log, index, &FollowOptions::from(&config.index), producer_done)?;
                debug!(units = log.units_from_feed(), "units indexed from memory rather than the outbox");
                Ok(report)
            })
            .expect("spawning the indexing thread");
        // Reading and decoding run one batch ahead of the store on their own
        // thread: the thread writing the store is the ingest's critical path.
        let (decoded_sender, decoded_batches) = mpsc::sync_channel::<io::Result<ReadBatch>>(1);
        // Written batches come back to be freed where they were allocated:
        // freeing them on the writing thread cost it about 2% (perf).
        let (spent_sender, spent_batches) = mpsc::channel::<ReadBatch>();
        let batch_size = config.ingest.batch_size;
        std::thread::Builder::new()
            .name("contactd-read".into())
            .spawn_scoped(scope, move || {
                loop {
                    spent_batches.try_iter().for_each(drop);
                    let read = source.next_batch(batch_size).map(|batch| {
                        let decoded = pipeline::decode_batch_within(&batch, &config.limits);
                        (batch, decoded, source.bytes_read())
                    });
                    let last = read.as_ref().map_or(true, |(batch, _, _)| batch.is_empty());
                    // A closed channel means the writing side stopped on an error.
                    if decoded_sender.send(read).is_err() || last {
                        return;
                    }
                }
            })
            .expect("spawning the reading thread");
        let (progress, store, feed) = (&progress, &mut store, &feed);
        let produced = (move || -> anyhow::Result<Report> {
            let mut report = Report::default();
            let mut trimmed = 0;
            for read in decoded_batches {
                let (batch, decoded, bytes_read) = read.context("reading events")?;
                if batch.is_empty() {
                    break;
                }
                trimmed = trim_indexed(store, feed, trimmed)?;
                let outcome = pipeline::apply_batch_with_retry(store, &decoded, config.ingest.max_attempts)?;
                if let Some(unit) = store.take_committed_unit() {
                    feed.offer(unit);
                }
                for rejection in &outcome.rejections {
                    dead_letters.send(rejection.letter(&batch)).context("writing a dead letter")?;
                }
                report.add(&outcome.report);
                progress.set_position(bytes_read);
                progress.set_message(format!("{} events", report.records));
                // After the last batch the reading thread is gone, the send
                // fails and the batch is freed here.
                let _ = spent_sender.send((batch, decoded, bytes_read));
            }
            dead_letters.flush().context("flushing dead letters")?;
            Ok(report)
        })();
        producer_done.store(true, Ordering::Release);
        let follow = follower.join().unwrap_or_else(|_| bail!("the indexing thread panicked"));
        (produced, follow)
    });
    let trimmed = trim_indexed(&mut store, &feed, 0);
    progress.finish_and_clear();
    // The run's own failure, if any, is the one to report, not the trim's.
    let (report, index) = (report?, follow.context("indexing")?);
    trimmed?;
    Ok(IngestSummary { report, index, elapsed: started.elapsed(), usage: mark.usage() })
}

/// Deletes the outbox units the indexing thread is done with, on the writing
/// thread's own connection (see `publish::feed`), when there are more than
/// `trimmed`; returns the last one deleted.
fn trim_indexed(store: &mut SqliteStore, feed: &feed::Feed, trimmed: u64) -> anyhow::Result<u64> {
    let through = feed.trimmable_through();
    if through > trimmed {
        store.trim_through(through).context("trimming the outbox")?;
    }
    Ok(through.max(trimmed))
}

pub(super) fn export(args: &ExportArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_existing_store(config)?;
    let mut out = output(args.out.as_deref())?;
    let mut write_error = None;
    store.export(&mut |contact| {
        if let Err(e) = serde_json::to_writer(&mut out, &contact).map_err(io::Error::from).and_then(|()| out.write_all(b"\n")) {
            write_error.get_or_insert(e);
        }
        Ok(())
    })?;
    if let Some(error) = write_error {
        return Err(error).context("writing the export");
    }
    out.flush().context("writing the export")?;
    Ok(())
}

pub(super) fn search(args: &SearchArgs, config: &Config) -> anyhow::Result<()> {
    let path = config.index_path();
    if !path.join("timeline").join("meta.json").exists() {
        bail!("no index at {}; run `contactd ingest` first", path.display());
    }
    let index = SearchIndex::open_or_create(&path)?;
    let hits = index.timeline.search(&TimelineQuery {
        tenant: TenantId::parse(args.tenant.clone())?,
        text: args.query.clone(),
        contact_id: args.contact.as_deref().map(ContactId::from),
        limit: args.limit,
        ..TimelineQuery::default()
    })?;
    let mut out = output(None)?;
    for hit in hits {
        serde_json::to_writer(&mut out, &hit)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

pub(super) fn contact(args: &ContactArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_existing_store(config)?;
    let tenant = &TenantId::parse(args.tenant.clone())?;
    let requested = match (&args.id, &args.identifier) {
        (Some(id), _) => ContactId::from(id.as_str()),
        (None, Some(typed)) => {
            let settings = store.tenant_config(tenant)?.unwrap_or_default();
            let identifier = Identifier::parse_typed(typed, &settings)?;
            match store.claim(tenant, &identifier)? {
                Some(Claim::Owned { contact_id }) => contact_id,
                _ => bail!("no contact of tenant {tenant} has {identifier}"),
            }
        }
        (None, None) => bail!("give a contact id or --identifier"),
    };
    if args.explain {
        let explained = view::explain_view(&*store, tenant, &requested)?;
        return say(&format!("{}\n", serde_json::to_string_pretty(&explained)?));
    }
    let mut view = view::contact_view(&*store, tenant, &requested)?;
    let page = view::timeline_page(&*store, tenant, &requested, args.cursor.as_deref(), args.limit)?;
    let object = view.as_object_mut().expect("a contact view is an object");
    object.insert("timeline".into(), json!(page.entries));
    object.insert("next_cursor".into(), json!(page.next_cursor));
    say(&format!("{}\n", serde_json::to_string_pretty(&view)?))
}

pub(super) fn conflicts(args: &ConflictsArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_existing_store(config)?;
    let tenant = &TenantId::parse(args.tenant.clone())?;
    let page = view::conflict_page(&*store, tenant, args.cursor.as_deref(), args.limit)?;
    let mut out = output(None)?;
    for conflict in &page.conflicts {
        serde_json::to_writer(&mut out, conflict)?;
        out.write_all(b"\n")?;
    }
    if let Some(cursor) = page.next_cursor {
        serde_json::to_writer(&mut out, &json!({ "next_cursor": cursor }))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Walks the directory and reports every invariant it finds broken
/// (`store::check`): an error, so exit code 1, when there is one.
pub(super) fn check(args: &CheckArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_existing_store(config)?;
    let tenant = args.tenant.clone().map(TenantId::parse).transpose()?;
    let report = crate::store::check::check(&*store, tenant.as_ref())?;
    let mut out = output(None)?;
    serde_json::to_writer(&mut out, &report)?;
    out.write_all(b"\n")?;
    out.flush()?;
    if !report.violations.is_empty() {
        bail!("{} invariants broken", report.violations.len());
    }
    Ok(())
}

//! The commands: wires config, stores, sources and the index together. The only
//! layer that uses `anyhow`; everything below returns typed errors.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tracing::debug;

use crate::api;
use crate::cli::{Command, ContactArgs, ExportArgs, GenArgs, IngestArgs, ProduceArgs, SearchArgs};
use crate::config::{Config, StoreLocation};
use crate::health::Health;
use crate::index::{SearchIndex, TimelineQuery};
use crate::metrics::{IndexerMetrics, WorkerMetrics};
use crate::model::{Claim, Identifier};
use crate::pipeline::{self, FollowOptions, FollowReport, Report};
use crate::publish::feed::{self, FedLog};
use crate::publish::jsonl::JsonlDeadLetters;
use crate::publish::{ChangeLog, DeadLetterSink};
use crate::source::file::JsonlSource;
use crate::source::{EventSource, RawRecord};
use crate::store::scylla::{ScyllaBackend, ScyllaOptions, ScyllaStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Store, view};
use crate::usage::{self, Usage};

pub fn run(command: Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Ingest(args) => {
            let summary = ingest(&args, config)?;
            say(&summary.render(config))
        }
        Command::Export(args) => export(&args, config),
        Command::Search(args) => search(&args, config),
        Command::Contact(args) => contact(&args, config),
        Command::Worker(_) => worker(config),
        Command::Indexer(_) => search_server(config, Mode::Indexer),
        Command::Serve(_) => search_server(config, Mode::Embedded),
        Command::Reindex => reindex(config),
        Command::Migrate => migrate(config),
        Command::Produce(args) => produce(&args, config),
        Command::Gen(args) => generate(&args),
        Command::Config => say(&format!("{}\n", serde_json::to_string_pretty(&config.redacted())?)),
    }
}

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

    fn render(&self, config: &Config) -> String {
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

/// The embedded store, for the commands that only run on it.
fn open_sqlite(config: &Config) -> anyhow::Result<(SqliteStore, PathBuf)> {
    let path = match config.store_location()? {
        StoreLocation::Sqlite(path) => path,
        StoreLocation::Scylla(_) => bail!(
            "ingest feeds the embedded index from the SQLite store's outbox; with Scylla, publish the file \
             with `contactd produce` and run `contactd worker` and `contactd indexer`"
        ),
    };
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = SqliteStore::open(&path, &SqliteOptions::from(&config.sqlite))
        .with_context(|| format!("opening the store {}", path.display()))?;
    Ok((store, path))
}

/// The store `store` names, for commands that work on either.
fn open_store(config: &Config) -> anyhow::Result<Box<dyn Store + Send>> {
    Ok(match config.store_location()? {
        StoreLocation::Sqlite(_) => Box::new(open_sqlite(config)?.0),
        StoreLocation::Scylla(target) => Box::new(ScyllaStore::new(connect_scylla(&ScyllaOptions::new(target, &config.scylla))?)),
    })
}

/// The store, for commands that only read it: a mistyped `--data-dir` is an
/// error, not a new empty directory that answers "no such contact".
fn open_existing_store(config: &Config) -> anyhow::Result<Box<dyn Store + Send>> {
    if let StoreLocation::Sqlite(path) = config.store_location()?
        && !path.is_file()
    {
        bail!("no directory at {}; run `contactd ingest` first, or check --data-dir", path.display());
    }
    open_store(config)
}

fn connect_scylla(options: &ScyllaOptions) -> anyhow::Result<Arc<ScyllaBackend>> {
    ScyllaBackend::connect(options)
        .with_context(|| format!("connecting to Scylla {} keyspace {}", options.nodes.join(","), options.keyspace))
}

fn migrate(config: &Config) -> anyhow::Result<()> {
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

/// Writes to stdout without `print!`, which panics when the reader has gone
/// away (`contactd export | head`); the error reaches [`is_broken_pipe`] instead.
fn say(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Whether a command failed only because its stdout reader closed early. The
/// binary then exits quietly with success, as a pipeline stage is expected to:
/// the reader chose to stop, and everything the command changed is already durable.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let kind = match (cause.downcast_ref::<io::Error>(), cause.downcast_ref::<serde_json::Error>()) {
            (Some(io), _) => Some(io.kind()),
            (None, Some(json)) => json.io_error_kind(),
            (None, None) => None,
        };
        kind == Some(io::ErrorKind::BrokenPipe)
    })
}

fn output(path: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => Box::new(BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    })
}

pub fn export(args: &ExportArgs, config: &Config) -> anyhow::Result<()> {
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

pub fn search(args: &SearchArgs, config: &Config) -> anyhow::Result<()> {
    let path = config.index_path();
    if !path.join("timeline").join("meta.json").exists() {
        bail!("no index at {}; run `contactd ingest` first", path.display());
    }
    let index = SearchIndex::open_or_create(&path)?;
    let hits = index.timeline.search(&TimelineQuery {
        tenant: args.tenant.clone(),
        text: args.query.clone(),
        contact_id: args.contact.clone(),
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

pub fn contact(args: &ContactArgs, config: &Config) -> anyhow::Result<()> {
    let store = open_existing_store(config)?;
    let tenant = &args.tenant;
    let requested = match (&args.id, &args.identifier) {
        (Some(id), _) => id.clone(),
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
    let mut view = view::contact_view(&*store, tenant, &requested)?;
    let page = view::timeline_page(&*store, tenant, &requested, args.cursor.as_deref(), args.limit)?;
    let object = view.as_object_mut().expect("a contact view is an object");
    object.insert("timeline".into(), json!(page.entries));
    object.insert("next_cursor".into(), json!(page.next_cursor));
    say(&format!("{}\n", serde_json::to_string_pretty(&view)?))
}

fn generate(args: &GenArgs) -> anyhow::Result<()> {
    let options = crate::corpus::GenOptions { events: args.events, tenants: args.tenants, seed: args.seed, ..Default::default() };
    let mut out = output(args.out.as_deref())?;
    crate::corpus::Generator::new(options).write(&mut out).context("writing the corpus")?;
    out.flush()?;
    Ok(())
}

/// Runs the Kafka worker with its probes and metrics until SIGTERM or SIGINT.
fn worker(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let listen: std::net::SocketAddr =
        config.worker.listen.parse().with_context(|| format!("worker.listen {:?} is not an address", config.worker.listen))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(listen)).with_context(|| format!("binding {listen}"))?;
    let metrics = WorkerMetrics::new();
    // The poll loop may wait out a revocation's drain deadline; only far longer
    // silence means it hangs.
    let health = Arc::new(Health::new(Duration::from_secs(config.worker.drain_deadline_secs * 2 + 30)));
    let shutdown = Arc::new(AtomicBool::new(false));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(api::serve(
        listener,
        api::probes(Arc::clone(&health), {
            let metrics = metrics.clone();
            Arc::new(move || metrics.render())
        }),
        async move {
            let _ = server_stopped.await;
        },
    ));
    runtime.spawn(wait_for_signal(Arc::clone(&shutdown)));
    let exit = match config.store_location()? {
        StoreLocation::Sqlite(path) => {
            let options = SqliteOptions::from(&config.sqlite);
            crate::worker::run(config, || SqliteStore::open(&path, &options), metrics, health, &shutdown)
        }
        StoreLocation::Scylla(target) => {
            let backend = connect_scylla(&ScyllaOptions::new(target, &config.scylla))?;
            crate::worker::run(config, || Ok(ScyllaStore::new(Arc::clone(&backend))), metrics, health, &shutdown)
        }
    };
    let _ = stop_server.send(());
    runtime.shutdown_timeout(Duration::from_secs(2));
    match exit? {
        crate::worker::Exit::Drained => Ok(()),
        crate::worker::Exit::DeadlineExceeded(unfinished) => {
            eprintln!("contactd: stopped with {unfinished} events unfinished; they will be redelivered");
            Ok(())
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Index from Kafka's changes topic.
    Indexer,
    /// Serve what `ingest` indexes into the data directory.
    Embedded,
}

/// How often `serve` looks for the commits another process made to the index.
const EMBEDDED_RELOAD: Duration = Duration::from_secs(1);

/// Serves the search API with probes and metrics; as `indexer`, also keeps the
/// indexes current from Kafka until SIGTERM or SIGINT.
fn search_server(config: &Config, mode: Mode) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let listen: std::net::SocketAddr =
        config.indexer.listen.parse().with_context(|| format!("indexer.listen {:?} is not an address", config.indexer.listen))?;
    if config.api.tokens.is_empty() {
        tracing::warn!("no api.tokens configured: every search request will be refused");
    }
    let index = Arc::new(SearchIndex::open_or_create(&config.index_path()).context("opening the index")?);
    let store: api::search::SharedStore = Arc::new(std::sync::Mutex::new(open_store(config)?));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(listen)).with_context(|| format!("binding {listen}"))?;
    let metrics = IndexerMetrics::new();
    let health = Arc::new(Health::new(Duration::from_secs(60)));
    let shutdown = Arc::new(AtomicBool::new(false));
    let render: api::RenderMetrics = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.render())
    };
    let search = api::search::SearchState::new(Arc::clone(&index), store, &config.api.tokens, metrics.clone());
    let router = api::probes(Arc::clone(&health), render).merge(api::search::routes(search));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(api::serve(listener, router, async move {
        let _ = server_stopped.await;
    }));
    runtime.spawn(wait_for_signal(Arc::clone(&shutdown)));
    let outcome = match mode {
        Mode::Indexer => crate::indexer::run(config, &index, &metrics, &health, &shutdown).context("indexing"),
        Mode::Embedded => {
            health.set_broker_up(true);
            while !shutdown.load(Ordering::Acquire) {
                health.polled();
                if let Err(error) = index.reload() {
                    tracing::warn!(%error, "reloading the index failed");
                }
                std::thread::sleep(EMBEDDED_RELOAD);
            }
            Ok(())
        }
    };
    let _ = stop_server.send(());
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

/// Rebuilds both indexes from the store, keeping the change-stream checkpoint:
/// changes after it re-apply as idempotent upserts and deletes.
fn reindex(config: &Config) -> anyhow::Result<()> {
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

async fn wait_for_signal(shutdown: Arc<AtomicBool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.store(true, Ordering::Relaxed);
}

/// The connectors' key: `tenant_id/session_id`, or the contact for events
/// without a session. Only a hint, as the contract says.
fn event_key(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Keys {
        tenant_id: Option<String>,
        session_id: Option<String>,
        contact_id: Option<String>,
    }
    let keys: Keys = serde_json::from_slice(line).ok()?;
    let tenant = keys.tenant_id?;
    Some(format!("{tenant}/{}", keys.session_id.or(keys.contact_id).unwrap_or_default()))
}

/// Publishes JSONL events to Kafka, waiting for every acknowledgement.
fn produce(args: &ProduceArgs, config: &Config) -> anyhow::Result<()> {
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
            .map(|line| (event_key(line), line))
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

//! The long-running services: `worker`, `indexer` and `serve`. Each runs
//! until the future it is given completes (the binary gives it SIGTERM or
//! SIGINT, a test a channel), so a test can run one in-process and stop it;
//! each serves its probes, metrics and API through one helper, `Serving`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use super::{connect_scylla, open_store};
use crate::api;
use crate::config::{Config, StoreLocation};
use crate::health::Health;
use crate::index::SearchIndex;
use crate::metrics::{IndexerMetrics, WorkerMetrics};
use crate::pipeline::FollowOptions;
use crate::publish::ChangeLog;
use crate::store::scylla::{ScyllaOptions, ScyllaStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};

/// Completes on SIGTERM or SIGINT: the shutdown the binary gives its services.
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for signals; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

/// A service's HTTP server (probes, metrics, and the search API where there is
/// one) on a runtime of its own, and the service's stop flag, raised when the
/// shutdown future completes: the service's loop runs on the caller's thread
/// and polls the flag.
struct Serving {
    runtime: tokio::runtime::Runtime,
    stop_server: tokio::sync::oneshot::Sender<()>,
    shutdown: Arc<AtomicBool>,
}

impl Serving {
    /// `option` names the setting `listen` came from, for the error.
    fn start(
        listen: &str,
        option: &str,
        router: axum::Router,
        threads: usize,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Self> {
        let address: SocketAddr = listen.parse().with_context(|| format!("{option} {listen:?} is not an address"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(address)).with_context(|| format!("binding {address}"))?;
        let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(api::serve(listener, router, async move {
            let _ = server_stopped.await;
        }));
        let flag = Arc::new(AtomicBool::new(false));
        let raised = Arc::clone(&flag);
        runtime.spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            raised.store(true, Ordering::Release);
        });
        Ok(Self { runtime, stop_server, shutdown: flag })
    }

    fn stop(self) {
        let _ = self.stop_server.send(());
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

/// Runs the Kafka worker with its probes and metrics until `shutdown`
/// completes, then drains (up to `worker.drain_deadline_secs`) and returns.
pub fn worker(config: &Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let metrics = WorkerMetrics::new();
    // The poll loop may wait out a revocation's drain deadline; only far longer
    // silence means it hangs.
    let health = Arc::new(Health::new(Duration::from_secs(config.worker.drain_deadline_secs * 2 + 30)));
    let render: api::RenderMetrics = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.render())
    };
    let router = api::probes(Arc::clone(&health), render);
    let serving = Serving::start(&config.worker.listen, "worker.listen", router, 1, shutdown)?;
    let stop = &serving.shutdown;
    let exit = match config.store_location() {
        Ok(StoreLocation::Sqlite(path)) => {
            let options = SqliteOptions::from(&config.sqlite);
            crate::worker::run(config, || SqliteStore::open(&path, &options), metrics, health, stop).map_err(Into::into)
        }
        Ok(StoreLocation::Scylla(target)) => connect_scylla(&ScyllaOptions::new(target, &config.scylla)).and_then(|backend| {
            crate::worker::run(config, || Ok(ScyllaStore::new(Arc::clone(&backend))), metrics, health, stop).map_err(Into::into)
        }),
        Err(error) => Err(error.into()),
    };
    serving.stop();
    match exit? {
        crate::worker::Exit::Drained => Ok(()),
        crate::worker::Exit::DeadlineExceeded(unfinished) => {
            eprintln!("contactd: stopped with {unfinished} events unfinished; they will be redelivered");
            Ok(())
        }
    }
}

/// Keeps the indexes current from Kafka's changes topic and serves the API
/// until `shutdown` completes; operators' writes are published to the first
/// events topic for the workers to apply.
pub fn indexer(config: &Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    // Operators' writes join the events topic as the connectors' events do,
    // keyed the same way, for the workers to apply.
    let writes = api::search::Writes::Published {
        producer: crate::publish::kafka::producer(&config.kafka).context("creating the producer")?,
        topic: config.kafka.events_topics[0].clone(),
        limits: config.limits,
    };
    search_server(config, writes, shutdown, |index, metrics, health, stop| {
        crate::indexer::run(config, index, metrics, health, stop).context("indexing")
    })
}

/// How often `serve` looks for the commits another process made to the index.
const EMBEDDED_RELOAD: Duration = Duration::from_secs(1);

/// Serves the search API and the operator endpoints over the data directory
/// until `shutdown` completes. Operator writes are applied to the SQLite
/// store here; their changes reach the index within `EMBEDDED_RELOAD`, as do
/// `ingest`'s from another process.
pub fn serve(config: &Config, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let sqlite = match config.store_location()? {
        StoreLocation::Sqlite(path) => Some(path),
        StoreLocation::Scylla(_) => None,
    };
    let writes = match sqlite {
        Some(_) => api::search::Writes::Applied(config.limits),
        None => api::search::Writes::Refused(
            "serve applies operator writes to the embedded SQLite store; with Scylla, publish the contract's operator \
             event to the events topic",
        ),
    };
    let follow = FollowOptions { lock_wait: Duration::ZERO, ..FollowOptions::from(&config.index) };
    search_server(config, writes, shutdown, |index, _, health, stop| {
        let mut log = sqlite.map(|path| SqliteStore::open(&path, &SqliteOptions::from(&config.sqlite))).transpose()?;
        health.set_broker_up(true);
        while !stop.load(Ordering::Acquire) {
            health.polled();
            if let Some(log) = &mut log
                && let Err(error) = index_new_units(log, index, &follow)
            {
                tracing::warn!(%error, "indexing the operators' changes failed; retrying");
            }
            if let Err(error) = index.reload() {
                tracing::warn!(%error, "reloading the index failed");
            }
            std::thread::sleep(EMBEDDED_RELOAD);
        }
        Ok(())
    })
}

/// Indexes the outbox units the index has not seen, if any (the writer lock
/// is taken only then, and not waited for: an `ingest` holding it indexes
/// them itself).
fn index_new_units(log: &mut SqliteStore, index: &SearchIndex, follow: &FollowOptions) -> anyhow::Result<()> {
    let applied_through = index.checkpoint()?.applied_through;
    if log.read_after(applied_through, 1)?.is_empty() {
        return Ok(());
    }
    crate::pipeline::follow_changes(log, index, follow, &AtomicBool::new(true))?;
    Ok(())
}

/// The search API with probes and metrics, while `keep_current` keeps the
/// index current until the stop flag is raised.
fn search_server(
    config: &Config,
    writes: api::search::Writes,
    shutdown: impl Future<Output = ()> + Send + 'static,
    keep_current: impl FnOnce(&SearchIndex, &IndexerMetrics, &Health, &AtomicBool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    if config.api.tokens.is_empty() {
        tracing::warn!("no api.tokens configured: every search request will be refused");
    }
    let index = Arc::new(SearchIndex::open_or_create(&config.index_path()).context("opening the index")?);
    let store: api::search::SharedStore = Arc::new(std::sync::Mutex::new(open_store(config)?));
    let metrics = IndexerMetrics::new();
    let health = Arc::new(Health::new(Duration::from_secs(60)));
    let render: api::RenderMetrics = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.render())
    };
    let search = api::search::SearchState::new(Arc::clone(&index), store, &config.api, writes, metrics.clone());
    let router = api::probes(Arc::clone(&health), render).merge(api::search::routes(search));
    let serving = Serving::start(&config.indexer.listen, "indexer.listen", router, 2, shutdown)?;
    let outcome = keep_current(&index, &metrics, &health, &serving.shutdown);
    serving.stop();
    outcome
}

//! Prometheus metrics of the worker and the indexer. Names and labels are part of the operations
//! contract: the Grafana dashboard and alert rules next to the Helm chart use them.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    names: Vec<String>,
    /// Events by `type` and `outcome` (applied, duplicate, skipped, rejected).
    pub events: IntCounterVec,
    /// From fetch to offset release: processing, store, publishing.
    pub processing_seconds: Histogram,
    /// From `occurred_at` to processing: how far behind real time the directory is.
    pub event_age_seconds: Histogram,
    /// One write unit in the store, by `result` (ok, transient, fatal).
    pub store_seconds: HistogramVec,
    pub store_retries: IntCounter,
    /// Errors that stop the worker, by `stage` (`store`: writing a unit or
    /// reading its changes back).
    pub fatal_errors: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub in_flight: IntGauge,
    pub pauses: IntCounter,
    pub dead_letters: IntCounterVec,
    pub changes_published: IntCounter,
    pub publish_retries: IntCounter,
    /// Partitions assigned and revoked, by `kind`.
    pub rebalances: IntCounterVec,
    pub commits: IntCounterVec,
    pub commit_refusals: IntCounter,
    /// Records that came past their partition's next expected offset, by
    /// `topic` and `partition`: a signal, since compaction and transactions
    /// leave such gaps legitimately.
    pub offset_gaps: IntCounterVec,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerMetrics")
    }
}

/// Registers the collectors and returns their metric names.
fn register_all<const N: usize>(registry: &Registry, collectors: [Box<dyn prometheus::core::Collector>; N]) -> Vec<String> {
    let mut names = Vec::with_capacity(N);
    for collector in collectors {
        names.extend(collector.desc().iter().map(|desc| desc.fq_name.clone()));
        registry.register(collector).expect("metric names are unique");
    }
    names
}

/// What every process exports beside its own metrics: the build it runs in
/// which role (its presence says the process is up, so an alert can see the
/// whole fleet gone) and the process collector's CPU, memory, descriptors and
/// start time (`process_*`, whose start time counts restarts). Returns the
/// names of contactd's own: the process collector's are standard.
fn register_process(registry: &Registry, role: &'static str) -> Vec<String> {
    let build = IntGaugeVec::new(
        Opts::new("contactd_build_info", "The running build, 1 per process, by role and version"),
        &["role", "version"],
    )
    .expect("valid metric");
    build.with_label_values(&[role, env!("CARGO_PKG_VERSION")]).set(1);
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("metric names are unique");
    register_all(registry, [Box::new(build)])
}

fn render(registry: &Registry) -> String {
    TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default()
}

/// The `result` label of `contactd_store_unit_seconds`.
pub const STORE_RESULTS: [&str; 3] = ["ok", "transient", "fatal"];

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const AGE_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21_600.0, 86_400.0];

impl WorkerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let mut metrics = Self {
            events: IntCounterVec::new(Opts::new("contactd_events_total", "Events processed"), &["type", "outcome"])
                .expect("valid metric"),
            processing_seconds: Histogram::with_opts(
                HistogramOpts::new("contactd_event_processing_seconds", "From fetch to a releasable offset")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            event_age_seconds: Histogram::with_opts(
                HistogramOpts::new("contactd_event_age_seconds", "From occurred_at to processing").buckets(AGE_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            store_seconds: HistogramVec::new(
                HistogramOpts::new("contactd_store_unit_seconds", "One write unit in the store")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["result"],
            )
            .expect("valid metric"),
            store_retries: IntCounter::new("contactd_store_retries_total", "Write units retried after a transient failure")
                .expect("valid metric"),
            fatal_errors: IntCounterVec::new(
                Opts::new("contactd_fatal_errors_total", "Errors that stop the worker, by stage"),
                &["stage"],
            )
            .expect("valid metric"),
            consumer_lag: IntGaugeVec::new(
                Opts::new("contactd_consumer_lag", "High watermark minus committed offset"),
                &["topic", "partition"],
            )
            .expect("valid metric"),
            in_flight: IntGauge::new("contactd_in_flight_events", "Fetched and not finished").expect("valid metric"),
            pauses: IntCounter::new("contactd_partition_pauses_total", "Times fetching paused on a full pipeline")
                .expect("valid metric"),
            dead_letters: IntCounterVec::new(Opts::new("contactd_dead_letters_total", "Inputs dead-lettered"), &["reason"])
                .expect("valid metric"),
            changes_published: IntCounter::new("contactd_changes_published_total", "Change events acknowledged by the broker")
                .expect("valid metric"),
            publish_retries: IntCounter::new("contactd_publish_retries_total", "Publishes retried after a broker failure")
                .expect("valid metric"),
            rebalances: IntCounterVec::new(Opts::new("contactd_rebalances_total", "Partition assignment changes"), &["kind"])
                .expect("valid metric"),
            commits: IntCounterVec::new(Opts::new("contactd_offset_commits_total", "Offset commits sent"), &["mode", "result"])
                .expect("valid metric"),
            commit_refusals: IntCounter::new(
                "contactd_offset_commit_refusals_total",
                "Partition offsets whose commit the broker refused or that failed in transit",
            )
            .expect("valid metric"),
            offset_gaps: IntCounterVec::new(
                Opts::new("contactd_offset_gaps_total", "Records fetched past their partition's next expected offset"),
                &["topic", "partition"],
            )
            .expect("valid metric"),
            registry,
            names: Vec::new(),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 16] = [
            Box::new(metrics.events.clone()),
            Box::new(metrics.processing_seconds.clone()),
            Box::new(metrics.event_age_seconds.clone()),
            Box::new(metrics.store_seconds.clone()),
            Box::new(metrics.store_retries.clone()),
            Box::new(metrics.fatal_errors.clone()),
            Box::new(metrics.consumer_lag.clone()),
            Box::new(metrics.in_flight.clone()),
            Box::new(metrics.pauses.clone()),
            Box::new(metrics.dead_letters.clone()),
            Box::new(metrics.changes_published.clone()),
            Box::new(metrics.publish_retries.clone()),
            Box::new(metrics.rebalances.clone()),
            Box::new(metrics.commits.clone()),
            Box::new(metrics.commit_refusals.clone()),
            Box::new(metrics.offset_gaps.clone()),
        ];
        metrics.names = register_all(&metrics.registry, collectors);
        metrics.names.extend(register_process(&metrics.registry, "worker"));
        // Every result's series exists from the start, so a rate or increase
        // sees the first fatal unit of a worker that exits right after it.
        for result in STORE_RESULTS {
            metrics.store_seconds.with_label_values(&[result]);
        }
        metrics.fatal_errors.with_label_values(&["store"]);
        metrics
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Every metric's name, whether or not it has been observed yet.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Freshness and search latency are judged against a one-second target.
const FRESHNESS_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Prometheus metrics of the indexer and the search API.
#[derive(Clone)]
pub struct IndexerMetrics {
    registry: Registry,
    names: Vec<String>,
    /// Changes consumed, by `type` and `outcome` (applied, malformed).
    pub changes: IntCounterVec,
    pub commit_seconds: Histogram,
    /// From a change's producer timestamp to the commit that makes it searchable.
    pub freshness_seconds: Histogram,
    /// Searchable documents, by `index` (timeline, contacts).
    pub documents: IntGaugeVec,
    /// Changes on the topic not yet in this replica's index, by `partition`.
    pub lag: IntGaugeVec,
    /// The workers' consumer group's lag from its committed offsets, by
    /// `topic` and `partition`: reported while no worker runs.
    pub group_lag: IntGaugeVec,
    /// Offset commits mirroring the index's checkpoint to Kafka, by `result`.
    pub offset_mirrors: IntCounterVec,
    /// API requests by `route` and `status`.
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
}

impl std::fmt::Debug for IndexerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexerMetrics")
    }
}

impl IndexerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let mut metrics = Self {
            changes: IntCounterVec::new(Opts::new("contactd_index_changes_total", "Changes consumed"), &["type", "outcome"])
                .expect("valid metric"),
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new("contactd_index_commit_seconds", "One index commit").buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            freshness_seconds: Histogram::with_opts(
                HistogramOpts::new("contactd_index_freshness_seconds", "From a change being produced to being searchable")
                    .buckets(FRESHNESS_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            documents: IntGaugeVec::new(Opts::new("contactd_index_documents", "Searchable documents"), &["index"])
                .expect("valid metric"),
            lag: IntGaugeVec::new(
                Opts::new("contactd_index_lag", "Changes on the topic not yet applied to this replica's index"),
                &["partition"],
            )
            .expect("valid metric"),
            group_lag: IntGaugeVec::new(
                Opts::new(
                    "contactd_group_lag",
                    "The workers' consumer group: high watermark minus the offset it committed, as the broker keeps them",
                ),
                &["topic", "partition"],
            )
            .expect("valid metric"),
            offset_mirrors: IntCounterVec::new(
                Opts::new("contactd_index_offset_mirrors_total", "Offset commits mirroring the index checkpoint"),
                &["result"],
            )
            .expect("valid metric"),
            requests: IntCounterVec::new(Opts::new("contactd_api_requests_total", "API requests"), &["route", "status"])
                .expect("valid metric"),
            request_seconds: HistogramVec::new(
                HistogramOpts::new("contactd_api_request_seconds", "API request latency").buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )
            .expect("valid metric"),
            registry,
            names: Vec::new(),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 9] = [
            Box::new(metrics.changes.clone()),
            Box::new(metrics.commit_seconds.clone()),
            Box::new(metrics.freshness_seconds.clone()),
            Box::new(metrics.documents.clone()),
            Box::new(metrics.lag.clone()),
            Box::new(metrics.group_lag.clone()),
            Box::new(metrics.offset_mirrors.clone()),
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_seconds.clone()),
        ];
        metrics.names = register_all(&metrics.registry, collectors);
        metrics.names.extend(register_process(&metrics.registry, "indexer"));
        metrics
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Every metric's name, whether or not it has been observed yet.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Default for IndexerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_says_what_build_runs_and_how_the_process_fares() {
        let worker = WorkerMetrics::new().render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(worker.contains(&format!("contactd_build_info{{role=\"worker\",version=\"{version}\"}} 1")), "{worker}");
        assert!(worker.contains("contactd_store_unit_seconds_count{result=\"fatal\"} 0"), "{worker}");
        assert!(worker.contains("contactd_fatal_errors_total{stage=\"store\"} 0"), "{worker}");
        let indexer = IndexerMetrics::new().render();
        assert!(indexer.contains("contactd_build_info{role=\"indexer\""), "{indexer}");
        if cfg!(target_os = "linux") {
            for text in [&worker, &indexer] {
                assert!(text.contains("process_start_time_seconds ") && text.contains("process_resident_memory_bytes "));
            }
        }
    }
}

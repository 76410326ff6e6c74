//! `contactd indexer`: keeps the search indexes current from `directory-changes`.
//! The indexes' commits record the consumed offsets, so the indexes, not Kafka,
//! say where to resume: every replica reads every partition from its own
//! index's checkpoint, and Kafka commits only mirror those offsets for lag tools.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::Config;
use crate::health::Health;
use crate::index::{Checkpoint, Delivery, IndexError, SearchIndex};
use crate::metrics::IndexerMetrics;
use crate::model::Change;
use crate::source::kafka::{GroupLag, consumer_config};

/// How often the topic's partition count is checked, so partitions added while
/// running are indexed too.
const METADATA_REFRESH: Duration = Duration::from_secs(30);
/// Freshness is the indexer's promise: a broker that has no new data answers a
/// fetch only after this wait (librdkafka's default is 500 ms).
pub const CONSUMER_SETTINGS: &[(&str, &str)] = &[("fetch.wait.max.ms", "100")];
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often the replica asks the broker how far behind the topic it is.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum IndexerError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// The indexing loop's position: per partition, the offset of the next change
/// to apply.
struct Positions {
    topic: String,
    partitions: i32,
    next: BTreeMap<String, i64>,
}

impl Positions {
    fn checkpoint(&self) -> Checkpoint {
        Checkpoint { offsets: self.next.clone(), ..Checkpoint::default() }
    }

    /// Assigns every partition from the recorded positions, never Kafka's.
    fn assign(&self, consumer: &BaseConsumer) -> Result<(), IndexerError> {
        let mut list = TopicPartitionList::new();
        for partition in 0..self.partitions {
            let key = Checkpoint::partition_key(&self.topic, partition);
            let offset = self.next.get(&key).map_or(Offset::Beginning, |next| Offset::Offset(*next));
            list.add_partition_offset(&self.topic, partition, offset)?;
        }
        consumer.assign(&list)?;
        info!(topic = %self.topic, partitions = self.partitions, "assigned from the index's checkpoint");
        Ok(())
    }

    /// The next offset to apply in `partition`, given its low watermark.
    fn next_in(&self, partition: i32, low: i64) -> i64 {
        self.next.get(&Checkpoint::partition_key(&self.topic, partition)).copied().unwrap_or(low).max(low)
    }

    /// Each partition's high watermark, as the broker says it now; none for a
    /// partition it did not answer for.
    fn watermarks(&self, consumer: &BaseConsumer) -> BTreeMap<i32, (i64, i64)> {
        (0..self.partitions)
            .filter_map(|partition| Some((partition, consumer.fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT).ok()?)))
            .collect()
    }

    fn mirror(&self, consumer: &BaseConsumer, metrics: &IndexerMetrics) {
        let mut list = TopicPartitionList::new();
        for (key, next) in &self.next {
            let Some(partition) = key.rsplit('/').next().and_then(|p| p.parse().ok()) else { continue };
            if list.add_partition_offset(&self.topic, partition, Offset::Offset(*next)).is_err() {
                return;
            }
        }
        if list.count() > 0 {
            let result = consumer.commit(&list, CommitMode::Async);
            metrics.offset_mirrors.with_label_values(&[if result.is_ok() { "ok" } else { "error" }]).inc();
        }
    }
}

/// Waits until the topic exists and reports its partition count.
fn partition_count(consumer: &BaseConsumer, topic: &str, health: &Health, shutdown: &AtomicBool) -> Option<i32> {
    let mut backoff = Duration::from_millis(200);
    while !shutdown.load(Ordering::Acquire) {
        match consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
            Ok(metadata) => {
                health.set_broker_up(true);
                let count = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
                if count > 0 {
                    return i32::try_from(count).ok();
                }
                warn!(topic, "waiting for the changes topic to exist");
            }
            Err(error) => {
                health.set_broker_up(false);
                warn!(%error, "no broker reachable, retrying");
            }
        }
        health.polled();
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    None
}

/// Consumes `indexer.topic` into `index` until `shutdown` is set, committing by
/// time or size; returns after a final commit. Meanwhile reports the workers'
/// lag as the broker keeps it.
pub fn run(
    config: &Config,
    index: &SearchIndex,
    metrics: &IndexerMetrics,
    health: &Health,
    shutdown: &AtomicBool,
) -> Result<(), IndexerError> {
    let indexing_ended = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            report_group_lag(config, metrics, || shutdown.load(Ordering::Acquire) || indexing_ended.load(Ordering::Acquire))
        });
        let result = index_changes(config, index, metrics, health, shutdown);
        indexing_ended.store(true, Ordering::Release);
        result
    })
}

/// Sets `contactd_group_lag` every `LAG_INTERVAL` until `ended`. A failed
/// read keeps the last figures and is retried: the alert on them has its own
/// `for` delay, and the indexer's health says whether the broker answers.
fn report_group_lag(config: &Config, metrics: &IndexerMetrics, ended: impl Fn() -> bool) {
    let group = match GroupLag::new(&config.kafka) {
        Ok(group) => group,
        Err(error) => {
            warn!(%error, "cannot read the workers' consumer group; contactd_group_lag stays unset");
            return;
        }
    };
    let mut last_read: Option<Instant> = None;
    while !ended() {
        if last_read.is_none_or(|at| at.elapsed() >= LAG_INTERVAL) {
            last_read = Some(Instant::now());
            match group.read(METADATA_TIMEOUT) {
                Ok(lags) => {
                    for (topic, partition, lag) in lags {
                        metrics.group_lag.with_label_values(&[topic.as_str(), &partition.to_string()]).set(lag);
                    }
                }
                Err(error) => warn!(%error, "reading the workers' committed offsets failed; retrying"),
            }
        }
        std::thread::sleep(POLL_TIMEOUT);
    }
}

fn index_changes(
    config: &Config,
    index: &SearchIndex,
    metrics: &IndexerMetrics,
    health: &Health,
    shutdown: &AtomicBool,
) -> Result<(), IndexerError> {
    let mut writer = index.writer(config.index.writer_memory_mb << 20)?;
    let topic = config.kafka.changes_topic.clone();
    let consumer: BaseConsumer = consumer_config(&config.kafka, &config.indexer.group_id, CONSUMER_SETTINGS).create()?;
    health.set_catching_up(true);
    let Some(partitions) = partition_count(&consumer, &topic, health, shutdown) else { return Ok(()) };
    let mut positions = Positions { topic: topic.clone(), partitions, next: index.checkpoint()?.offsets };
    positions.assign(&consumer)?;
    report_documents(index, metrics);
    // Ready once what the topic held at the start is applied and committed:
    // until then a search would answer from part of the history.
    let mut catching_up = true;
    let mut catch_up_to: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut last_lag_check: Option<Instant> = None;
    let commit_interval = Duration::from_millis(config.indexer.commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_refresh = Instant::now();
    // Producer timestamps of the changes applied since the last commit, for freshness.
    let mut uncommitted: Vec<i64> = Vec::new();
    let mut dirty = false;
    let commit = |writer: &mut crate::index::IndexWriters, positions: &Positions, uncommitted: &mut Vec<i64>| {
        let started = Instant::now();
        writer.commit(&positions.checkpoint())?;
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        let now_ms = crate::model::Timestamp::now().micros() / 1000;
        for produced_ms in uncommitted.drain(..) {
            metrics.freshness_seconds.observe((now_ms - produced_ms).max(0) as f64 / 1000.0);
        }
        report_documents(index, metrics);
        positions.mirror(&consumer, metrics);
        Ok::<(), IndexerError>(())
    };
    while !shutdown.load(Ordering::Acquire) {
        health.polled();
        if let Some(message) = consumer.poll(POLL_TIMEOUT) {
            match message {
                Ok(message) => {
                    health.set_broker_up(true);
                    let key = Checkpoint::partition_key(message.topic(), message.partition());
                    match serde_json::from_slice::<Change>(message.payload().unwrap_or_default()) {
                        Ok(change) => match writer.apply(&change, &|| positions.checkpoint(), Delivery::AtLeastOnce) {
                            Ok(()) => metrics.changes.with_label_values(&[change.kind.as_str(), "applied"]).inc(),
                            Err(IndexError::BadChange(reason)) => {
                                warn!(%key, offset = message.offset(), reason, "skipping a malformed change");
                                metrics.changes.with_label_values(&[change.kind.as_str(), "malformed"]).inc();
                            }
                            Err(other) => return Err(other.into()),
                        },
                        Err(error) => {
                            warn!(%key, offset = message.offset(), %error, "skipping a change that is not valid JSON");
                            metrics.changes.with_label_values(&["unknown", "malformed"]).inc();
                        }
                    }
                    positions.next.insert(key, message.offset() + 1);
                    if let Some(produced_ms) = message.timestamp().to_millis() {
                        uncommitted.push(produced_ms);
                    }
                    dirty = true;
                }
                Err(error) => {
                    warn!(%error, "consumer error");
                }
            }
        }
        if dirty && (last_commit.elapsed() >= commit_interval || writer.pending_ops() >= config.indexer.commit_every_ops) {
            commit(&mut writer, &positions, &mut uncommitted)?;
            dirty = false;
            last_commit = Instant::now();
        }
        if last_lag_check.is_none_or(|at| at.elapsed() >= LAG_INTERVAL) {
            last_lag_check = Some(Instant::now());
            for (partition, (low, high)) in positions.watermarks(&consumer) {
                let lag = (high - positions.next_in(partition, low)).max(0);
                metrics.lag.with_label_values(&[&partition.to_string()]).set(lag);
                if catching_up {
                    catch_up_to.entry(partition).or_insert((low, high));
                }
            }
        }
        if catching_up
            && !dirty
            && (0..positions.partitions).all(|partition| {
                catch_up_to.get(&partition).is_some_and(|(low, high)| positions.next_in(partition, *low) >= *high)
            })
        {
            info!("caught up with the changes topic; serving searches");
            catching_up = false;
            health.set_catching_up(false);
        }
        if last_refresh.elapsed() >= METADATA_REFRESH {
            last_refresh = Instant::now();
            if let Ok(metadata) = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT) {
                let count = metadata.topics().first().map_or(0, |t| t.partitions().len());
                if let Ok(count) = i32::try_from(count)
                    && count > positions.partitions
                {
                    positions.partitions = count;
                    positions.assign(&consumer)?;
                }
            }
        }
    }
    if dirty {
        commit(&mut writer, &positions, &mut uncommitted)?;
    }
    info!("indexer stopped after its final commit");
    Ok(())
}

fn report_documents(index: &SearchIndex, metrics: &IndexerMetrics) {
    metrics.documents.with_label_values(&["timeline"]).set(saturating_i64(index.timeline.num_docs()));
    metrics.documents.with_label_values(&["contacts"]).set(saturating_i64(index.contacts.num_docs()));
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

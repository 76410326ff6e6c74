//! `contactd worker`: Kafka in, the store and `directory-changes` out, at least
//! once. One poll thread fetches and dispatches events to lanes by key; each
//! lane runs `pipeline::process_batch`, whose two halves `ingest` runs,
//! publishes the changes and dead letters, and only then releases the offsets.
//! The poll thread commits released offsets periodically, on revocation (after
//! draining the revoked partitions) and on shutdown.

mod lane;
pub mod tracker;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use self::lane::{Job, Lane};
use self::tracker::{PartitionKey, Tracker};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::WorkerMetrics;
use crate::publish::kafka::{KafkaPublisher, PublishError};
use crate::publish::{ChangeSink, Outbox};
use crate::source::kafka;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not start a lane: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Every this many commit intervals, the periodic commit resends every
/// partition's commit point, moved or not. Apache Kafka fences a former
/// owner's late commit by the group's generation (the worker tests check it),
/// but a Kafka-compatible broker that does not would let it move the group's
/// offset backwards, which would otherwise hold until the next revocation.
/// One request with a few offsets every ten seconds (at the default
/// interval) is negligible.
const RESEND_ALL_EVERY: u32 = 10;

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Every fetched event finished and its offset was committed.
    Drained,
    /// The drain deadline passed with this many events unfinished; they are
    /// uncommitted and will be redelivered.
    DeadlineExceeded(usize),
}

/// State shared by the poll thread, the rebalance callbacks and the lanes.
struct Shared {
    tracker: Mutex<Tracker>,
    /// Signalled whenever lanes finish or abandon events.
    progress: Condvar,
    metrics: WorkerMetrics,
    health: Arc<Health>,
    paused: AtomicBool,
    /// Set when lanes must stop retrying: the drain deadline passed.
    give_up: AtomicBool,
    fatal: Mutex<Option<StoreError>>,
    drain_deadline: Duration,
}

impl Shared {
    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fail(&self, error: StoreError) {
        error!(%error, "store failure; the worker stops without committing past it");
        self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(error);
    }

    fn failed(&self) -> bool {
        self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    /// Waits until `done` holds for the tracker or the deadline passes.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&Tracker) -> bool) -> bool {
        let mut tracker = self.tracker();
        while !done(&tracker) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            tracker = self
                .progress
                .wait_timeout(tracker, left.min(Duration::from_millis(100)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Commits the commit points of `keys` (all partitions when `None`): those
    /// that moved, or every one with `resend`. Revocation and shutdown resend,
    /// since an earlier asynchronous commit may still be unanswered, or a
    /// stray one may have moved the group's offset back.
    fn commit(&self, consumer: &BaseConsumer<WorkerContext>, keys: Option<&[PartitionKey]>, mode: CommitMode, resend: bool) {
        let sync = matches!(mode, CommitMode::Sync);
        let points = self.tracker().commit_points(keys, resend);
        if points.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &points {
            if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                warn!(%error, topic, partition, "bad commit point");
            }
        }
        let mode_label = if sync { "sync" } else { "async" };
        // The tracker learns what the broker took from `commit_callback`,
        // which replies to both modes.
        match consumer.commit(&list, mode) {
            Ok(()) => self.metrics.commits.with_label_values(&[mode_label, "ok"]).inc(),
            Err(error) => {
                self.metrics.commits.with_label_values(&[mode_label, "error"]).inc();
                warn!(%error, "offset commit failed; it is retried at the next interval");
            }
        }
    }

    fn pause_if_saturated(&self, consumer: &BaseConsumer<WorkerContext>, max_in_flight: usize) {
        let pending = self.tracker().pending();
        self.metrics.in_flight.set(i64::try_from(pending).unwrap_or(i64::MAX));
        let paused = self.paused.load(Ordering::Relaxed);
        let toggle = if !paused && pending >= max_in_flight {
            self.metrics.pauses.inc();
            consumer.assignment().and_then(|assigned| consumer.pause(&assigned))
        } else if paused && pending <= max_in_flight / 2 {
            consumer.assignment().and_then(|assigned| consumer.resume(&assigned))
        } else {
            return;
        };
        match toggle {
            Ok(()) => self.paused.store(!paused, Ordering::Relaxed),
            Err(error) => warn!(%error, "could not pause or resume fetching"),
        }
    }
}

/// The consumer's callbacks: rebalances, commits, statistics and errors.
pub struct WorkerContext {
    shared: Arc<Shared>,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        self.shared.health.set_broker_up(kafka::any_broker_up(&statistics));
        for (topic, partition, lag) in kafka::lag(&statistics) {
            self.shared.metrics.consumer_lag.with_label_values(&[topic.as_str(), &partition.to_string()]).set(lag);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.shared.health.set_broker_up(false);
        }
        warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for WorkerContext {
    /// A partition counts as committed only once the broker says so: an
    /// offset refused, or lost with its request, stays ahead of the tracker's
    /// record and is sent again at the next interval.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) = result {
            return;
        }
        let mut tracker = self.shared.tracker();
        for element in offsets.elements() {
            let key = (element.topic().to_owned(), element.partition());
            match (&result, element.error(), element.offset()) {
                (Ok(()), Ok(()), Offset::Offset(offset)) => tracker.committed(&key, offset),
                (Ok(()), Ok(()), _) => {}
                (outcome, partition_error, offset) => {
                    self.shared.metrics.commit_refusals.inc();
                    let error = partition_error.err().or_else(|| outcome.clone().err());
                    warn!(topic = %key.0, partition = key.1, ?offset, error = ?error, "an offset commit failed; it is retried at the next interval");
                }
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else { return };
        let keys = partition_keys(list);
        self.shared.metrics.rebalances.with_label_values(&["revoked"]).inc_by(keys.len() as u64);
        info!(partitions = ?keys, "partitions revoked; draining them");
        {
            let mut tracker = self.shared.tracker();
            for key in &keys {
                tracker.revoke(key);
            }
        }
        // After a missed shutdown deadline, leaving the group must not wait again.
        let wait = if self.shared.give_up.load(Ordering::Relaxed) { Duration::ZERO } else { self.shared.drain_deadline };
        if !self.shared.wait_until(Instant::now() + wait, |tracker| keys.iter().all(|key| tracker.pending_in(key) == 0)) {
            warn!("revoked partitions did not drain in time; their unfinished events go to the next owner");
        }
        self.shared.commit(consumer, Some(&keys), CommitMode::Sync, true);
        let mut tracker = self.shared.tracker();
        for key in &keys {
            tracker.remove(key);
            let _ = self.shared.metrics.consumer_lag.remove_label_values(&[key.0.as_str(), &key.1.to_string()]);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let keys = partition_keys(list);
                self.shared.metrics.rebalances.with_label_values(&["assigned"]).inc_by(keys.len() as u64);
                self.shared.health.set_broker_up(true);
                info!(partitions = ?keys, "partitions assigned");
                {
                    let mut tracker = self.shared.tracker();
                    for key in keys {
                        tracker.assign(key);
                    }
                }
                // New partitions take the worker's fetching state, whichever it
                // is. A full pipeline stays paused across a rebalance, or they
                // would refill it at once. And librdkafka keeps a partition's
                // pause across its revocation: one revoked while paused and
                // assigned back after the worker resumed would never be fetched
                // again, as the worker only resumes what it owns when it resumes.
                let aligned =
                    if self.shared.paused.load(Ordering::Relaxed) { consumer.pause(list) } else { consumer.resume(list) };
                if let Err(error) = aligned {
                    warn!(%error, "could not pause or resume newly assigned partitions");
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => warn!(%error, "rebalance failed"),
        }
    }
}

fn partition_keys(list: &TopicPartitionList) -> Vec<PartitionKey> {
    list.elements().iter().map(|element| (element.topic().to_owned(), element.partition())).collect()
}

/// Events of one key go to one lane, in fetch order; keyless events stay with
/// their partition.
fn lane_of(message: &rdkafka::message::BorrowedMessage<'_>, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match message.key() {
        Some(key) => key.hash(&mut hasher),
        None => (message.topic(), message.partition()).hash(&mut hasher),
    }
    usize::try_from(hasher.finish() % lanes as u64).unwrap_or(0)
}

/// Runs until `shutdown` is set (then drains and commits) or a store failure
/// that retrying cannot fix.
pub fn run<S, F>(
    config: &Config,
    open_store: F,
    metrics: WorkerMetrics,
    health: Arc<Health>,
    shutdown: &AtomicBool,
) -> Result<Exit, WorkerError>
where
    S: Store + ChangeSink + Outbox + Send + 'static,
    F: Fn() -> Result<S, StoreError>,
{
    let worker = &config.worker;
    let shared = Arc::new(Shared {
        tracker: Mutex::new(Tracker::default()),
        progress: Condvar::new(),
        metrics,
        health,
        paused: AtomicBool::new(false),
        give_up: AtomicBool::new(false),
        fatal: Mutex::new(None),
        drain_deadline: Duration::from_secs(worker.drain_deadline_secs),
    });
    let publisher = Arc::new(KafkaPublisher::new(&config.kafka)?);
    let mut senders: Vec<Sender<Job>> = Vec::with_capacity(worker.lanes);
    let mut handles = Vec::with_capacity(worker.lanes);
    for number in 0..worker.lanes {
        let (sender, receiver) = mpsc::channel();
        let lane = Lane {
            receiver,
            store: open_store()?,
            publisher: Arc::clone(&publisher),
            shared: Arc::clone(&shared),
            batch_size: worker.batch_size,
            max_backoff: Duration::from_millis(worker.max_backoff_ms),
            limits: config.limits,
        };
        senders.push(sender);
        handles.push(std::thread::Builder::new().name(format!("contactd-lane-{number}")).spawn(move || lane.run())?);
    }

    let consumer: BaseConsumer<WorkerContext> = kafka::worker_consumer_config(&config.kafka, worker)
        .create_with_context(WorkerContext { shared: Arc::clone(&shared) })?;
    let topics: Vec<&str> = config.kafka.events_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    info!(topics = ?topics, group = %config.kafka.group_id, lanes = worker.lanes, "worker started");

    let commit_interval = Duration::from_millis(worker.commit_interval_ms);
    let mut last_commit = Instant::now();
    let mut last_resend = Instant::now();
    while !shutdown.load(Ordering::Relaxed) && !shared.failed() {
        shared.health.polled();
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(error)) => warn!(%error, "fetch failed"),
            Some(Ok(message)) => {
                let key = (message.topic().to_owned(), message.partition());
                let Some(dispatched) = shared.tracker().dispatch(&key, message.offset()) else { continue };
                if let Some(expected) = dispatched.gap_from {
                    shared.metrics.offset_gaps.with_label_values(&[key.0.as_str(), &key.1.to_string()]).inc();
                    warn!(
                        topic = %key.0, partition = key.1, expected, offset = message.offset(),
                        "a record past the partition's next expected offset: the ones between were never fetched \
                         (normal on compacted or transactional topics, lost records anywhere else)"
                    );
                }
                let generation = dispatched.generation;
                let job = Job {
                    record: kafka::record_of(&message, config.limits.event_bytes),
                    key: message.key().map(<[u8]>::to_vec),
                    partition: key,
                    generation,
                    fetched: Instant::now(),
                };
                // A lane's receiver lives until its sender is dropped, below.
                let _ = senders[lane_of(&message, worker.lanes)].send(job);
            }
        }
        shared.pause_if_saturated(&consumer, worker.max_in_flight);
        if last_commit.elapsed() >= commit_interval {
            let resend = last_resend.elapsed() >= commit_interval * RESEND_ALL_EVERY;
            shared.commit(&consumer, None, CommitMode::Async, resend);
            last_commit = Instant::now();
            if resend {
                last_resend = last_commit;
            }
        }
    }

    shared.health.set_draining();
    if let Ok(assigned) = consumer.assignment() {
        let _ = consumer.pause(&assigned);
    }
    let deadline = Instant::now() + shared.drain_deadline;
    let drained = shared.wait_until(deadline, |tracker| tracker.pending() == 0);
    shared.give_up.store(true, Ordering::Relaxed);
    shared.progress.notify_all();
    shared.commit(&consumer, None, CommitMode::Sync, true);
    let unfinished = shared.tracker().pending();
    drop(senders);
    if drained {
        for handle in handles {
            let _ = handle.join();
        }
    }
    let fatal = shared.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    // Closing the consumer leaves the group at once, so the partitions move
    // without waiting for the session timeout; its revocation commits nothing new.
    drop(consumer);
    if let Some(error) = fatal {
        return Err(error.into());
    }
    if drained {
        info!("drained and committed; stopping");
        Ok(Exit::Drained)
    } else {
        warn!(unfinished, "drain deadline passed; unfinished events will be redelivered");
        Ok(Exit::DeadlineExceeded(unfinished))
    }
}

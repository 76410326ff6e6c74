//! One processing lane: batches of its own keys through the pipeline, then the
//! changes and dead letters to Kafka, then the offsets released. A lane owns
//! its store connection; lanes run concurrently.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::Shared;
use super::tracker::PartitionKey;
use crate::model::Timestamp;
use crate::pipeline::{self, BatchOutcome};
use crate::publish::kafka::KafkaPublisher;
use crate::publish::{ChangeSink, EncodedUnit, Outbox};
use crate::source::RawRecord;
use crate::store::{Store, StoreError};

pub(super) struct Job {
    pub record: RawRecord,
    pub key: Option<Vec<u8>>,
    pub partition: PartitionKey,
    pub generation: u64,
    pub fetched: Instant,
}

pub(super) struct Lane<S> {
    pub receiver: Receiver<Job>,
    pub store: S,
    pub publisher: Arc<KafkaPublisher>,
    pub shared: Arc<Shared>,
    pub batch_size: usize,
    pub max_backoff: Duration,
}

/// One try of a step that may be retried.
enum Attempt<T> {
    Done(T),
    /// Worth retrying after a pause: the store was busy or the broker unreachable.
    Retry(String),
    Fatal(StoreError),
}

/// Why a lane stopped retrying.
enum Stop {
    /// The drain deadline passed.
    GaveUp,
    /// The store failed in a way retrying cannot fix.
    Fatal(StoreError),
}

impl<S: Store + ChangeSink + Outbox> Lane<S> {
    pub fn run(mut self) {
        while let Ok(first) = self.receiver.recv() {
            let mut jobs = vec![first];
            while jobs.len() < self.batch_size {
                match self.receiver.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.drop_revoked(&mut jobs);
            if jobs.is_empty() {
                continue;
            }
            match self.handle(&jobs) {
                Ok(()) => {}
                Err(Stop::GaveUp) => return,
                Err(Stop::Fatal(error)) => {
                    self.shared.fail(error);
                    return;
                }
            }
        }
    }

    /// Events of partitions revoked while they waited are left for the next owner.
    fn drop_revoked(&self, jobs: &mut Vec<Job>) {
        let before = jobs.len();
        let mut tracker = self.shared.tracker();
        jobs.retain(|job| {
            let current = tracker.is_current(&job.partition, job.generation);
            if !current {
                tracker.abandon(&job.partition, job.generation, job.record.origin.position.cast_signed());
            }
            current
        });
        if jobs.len() < before {
            self.shared.progress.notify_all();
        }
    }

    fn handle(&mut self, jobs: &[Job]) -> Result<(), Stop> {
        let records: Vec<RawRecord> = jobs.iter().map(|job| job.record.clone()).collect();
        let outcome = self.retry("store", |lane| {
            let started = Instant::now();
            let result = pipeline::process_batch(&mut lane.store, &records);
            let label = match &result {
                Ok(_) => "ok",
                Err(error) if error.is_transient() => "transient",
                Err(_) => "fatal",
            };
            lane.shared.metrics.store_seconds.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
            match result {
                Ok(outcome) => Attempt::Done(outcome),
                Err(error) if error.is_transient() => {
                    lane.shared.metrics.store_retries.inc();
                    Attempt::Retry(error.to_string())
                }
                Err(error) => Attempt::Fatal(error),
            }
        })?;
        let units = self.retry("store", |lane| match read_units(&lane.store, &outcome) {
            Ok(units) => Attempt::Done(units),
            Err(error) if error.is_transient() => Attempt::Retry(error.to_string()),
            Err(error) => Attempt::Fatal(error),
        })?;
        self.retry("broker", |lane| match lane.publisher.publish_units(&units) {
            Ok(count) => {
                lane.shared.metrics.changes_published.inc_by(count as u64);
                Attempt::Done(())
            }
            Err(error) => {
                lane.shared.metrics.publish_retries.inc();
                Attempt::Retry(error.to_string())
            }
        })?;
        let letters: Vec<_> = outcome
            .rejections
            .iter()
            .map(|rejection| (rejection.letter(&records), jobs[rejection.index].key.as_deref()))
            .collect();
        self.retry("broker", |lane| match lane.publisher.dead_letters(&letters) {
            Ok(_) => Attempt::Done(()),
            Err(error) => {
                lane.shared.metrics.publish_retries.inc();
                Attempt::Retry(error.to_string())
            }
        })?;
        for unit in &units {
            // Only a republish is at stake: a unit left behind is published
            // again if one of its events is redelivered.
            if let Err(error) = self.store.forget_unit(unit.seq) {
                warn!(%error, unit = unit.seq, "could not forget a published change unit");
            }
        }
        self.record(jobs, &outcome);
        Ok(())
    }

    fn record(&self, jobs: &[Job], outcome: &BatchOutcome) {
        let metrics = &self.shared.metrics;
        for ((kind, result), count) in &outcome.by_type {
            metrics.events.with_label_values(&[kind, result]).inc_by(*count);
        }
        for rejection in &outcome.rejections {
            metrics.dead_letters.with_label_values(&[rejection.reason]).inc();
        }
        let now = Timestamp::now();
        for occurred_at in &outcome.occurred_at {
            metrics.event_age_seconds.observe((now.micros() - occurred_at.micros()).max(0) as f64 / 1e6);
        }
        let mut tracker = self.shared.tracker();
        for job in jobs {
            metrics.processing_seconds.observe(job.fetched.elapsed().as_secs_f64());
            tracker.finish(&job.partition, job.generation, job.record.origin.position.cast_signed());
        }
        drop(tracker);
        self.shared.progress.notify_all();
        debug!(events = jobs.len(), units = outcome.units.len(), "batch released");
    }

    /// Runs `attempt` until it is done, backing off exponentially while it
    /// asks for a retry. The lane counts as stalled for readiness while it waits.
    fn retry<T>(&mut self, what: &'static str, mut attempt: impl FnMut(&mut Self) -> Attempt<T>) -> Result<T, Stop> {
        let mut delay = Duration::from_millis(50);
        let mut stalled = false;
        let result = loop {
            match attempt(self) {
                Attempt::Done(value) => break Ok(value),
                Attempt::Fatal(error) => break Err(Stop::Fatal(error)),
                Attempt::Retry(reason) => {
                    if self.shared.give_up.load(Ordering::Relaxed) {
                        break Err(Stop::GaveUp);
                    }
                    if !stalled {
                        stalled = true;
                        self.shared.health.stall();
                    }
                    warn!(what, %reason, retry_in = ?delay, "retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.max_backoff);
                }
            }
        };
        if stalled {
            self.shared.health.unstall();
        }
        result
    }
}

/// The change units the batch's events produced or, for redelivered events,
/// produced before and still wait for delivery.
fn read_units<S: Outbox>(store: &S, outcome: &BatchOutcome) -> Result<Vec<EncodedUnit>, StoreError> {
    let mut units = Vec::with_capacity(outcome.units.len());
    for seq in &outcome.units {
        if let Some(unit) = store.unit(*seq)? {
            units.push(unit);
        }
    }
    Ok(units)
}

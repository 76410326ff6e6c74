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
use crate::model::{Limits, Timestamp};
use crate::pipeline::{self, BatchOutcome};
use crate::publish::kafka::{KafkaPublisher, Pending, PublishError};
use crate::publish::{ChangeSink, DeadLetter, EncodedUnit, Outbox};
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
    pub limits: Limits,
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

/// Where a batch's records for the broker stand.
enum Sending {
    /// Queued in the producer; the acknowledgements are still to come.
    Queued(Pending),
    /// Queueing failed, or the records must go out again behind an earlier batch's.
    Unsent,
    Sent,
}

/// A batch whose effects are durable and whose changes and dead letters are on
/// their way to the broker; its offsets are released once they have arrived.
struct Staged {
    jobs: Vec<Job>,
    records: Vec<RawRecord>,
    outcome: BatchOutcome,
    units: Vec<EncodedUnit>,
    changes: Sending,
    letters: Sending,
}

impl<S: Store + ChangeSink + Outbox> Lane<S> {
    /// Writes each batch while the previous one's records travel to the broker,
    /// and releases that one's offsets once they have arrived: the lane does not
    /// sit idle for a round trip per batch (measured: a third of its time).
    pub fn run(mut self) {
        let mut in_flight: Option<Staged> = None;
        loop {
            let first = match &in_flight {
                // With a batch in flight, take only what is queued: waiting for
                // more would hold back the release of its offsets.
                Some(_) => self.receiver.try_recv().ok(),
                None => match self.receiver.recv() {
                    Ok(job) => Some(job),
                    Err(_) => return,
                },
            };
            let mut staged = match first.map(|first| self.stage(first)).transpose() {
                Ok(staged) => staged.flatten(),
                Err(stop) => return self.stop(stop),
            };
            if let Some(previous) = in_flight.take()
                && let Err(stop) = self.finish(previous, staged.as_mut())
            {
                return self.stop(stop);
            }
            in_flight = staged;
        }
    }

    fn stop(&self, stop: Stop) {
        if let Stop::Fatal(error) = stop {
            self.shared.fail(error);
        }
    }

    /// Takes what is queued behind `first` up to a batch, writes it, and queues
    /// its changes and dead letters for the broker. `None` when every event of it
    /// belongs to a partition revoked meanwhile.
    fn stage(&mut self, first: Job) -> Result<Option<Staged>, Stop> {
        let mut jobs = vec![first];
        while jobs.len() < self.batch_size {
            match self.receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        self.drop_revoked(&mut jobs);
        if jobs.is_empty() {
            return Ok(None);
        }
        let records: Vec<RawRecord> = jobs.iter().map(|job| job.record.clone()).collect();
        let outcome = self.retry("store", |lane| {
            let started = Instant::now();
            let result = pipeline::process_batch_within(&mut lane.store, &records, &lane.limits);
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
        let changes = queued(self.publisher.publish_units(&units));
        let letters = queued(self.publisher.dead_letters(&dead_letters(&jobs, &records, &outcome)));
        Ok(Some(Staged { jobs, records, outcome, units, changes, letters }))
    }

    /// Waits until `batch`'s records have arrived, sending again what did not,
    /// then forgets its units and releases its offsets. When its changes must go
    /// out again, so must those of `next`, queued behind them: each contact's
    /// latest state stays the last one on the topic.
    fn finish(&mut self, mut batch: Staged, next: Option<&mut Staged>) -> Result<(), Stop> {
        if let Some(count) = self.arrived(&mut batch.changes) {
            self.shared.metrics.changes_published.inc_by(count as u64);
        } else {
            let mut resend = vec![&batch.units];
            if let Some(next) = next {
                if let Sending::Queued(pending) = std::mem::replace(&mut next.changes, Sending::Sent) {
                    // Whatever becomes of these, they are sent again below.
                    let _ = pending.wait();
                }
                resend.push(&next.units);
            }
            for units in resend {
                let count = self.send_until_acknowledged(|publisher| publisher.publish_units(units))?;
                self.shared.metrics.changes_published.inc_by(count as u64);
            }
        }
        if self.arrived(&mut batch.letters).is_none() {
            let letters = dead_letters(&batch.jobs, &batch.records, &batch.outcome);
            self.send_until_acknowledged(|publisher| publisher.dead_letters(&letters))?;
        }
        for unit in &batch.units {
            // Only a republish is at stake: a unit left behind is published
            // again if one of its events is redelivered.
            if let Err(error) = self.store.forget_unit(unit.seq) {
                warn!(%error, unit = unit.seq, "could not forget a published change unit");
            }
        }
        self.record(&batch.jobs, &batch.outcome);
        Ok(())
    }

    /// Sends records and waits for their acknowledgements, again and again with
    /// backoff until the broker has them all; how many were delivered.
    fn send_until_acknowledged(
        &mut self,
        send: impl Fn(&KafkaPublisher) -> Result<Pending, PublishError>,
    ) -> Result<usize, Stop> {
        self.retry("broker", |lane| match send(&lane.publisher).and_then(Pending::wait) {
            Ok(count) => Attempt::Done(count),
            Err(error) => {
                lane.shared.metrics.publish_retries.inc();
                Attempt::Retry(error.to_string())
            }
        })
    }

    /// Waits for queued records: how many arrived now (none when they were sent
    /// before), or `None` when they must be sent again.
    fn arrived(&self, sending: &mut Sending) -> Option<usize> {
        match std::mem::replace(sending, Sending::Sent) {
            Sending::Sent => Some(0),
            Sending::Unsent => None,
            Sending::Queued(pending) => match pending.wait() {
                Ok(count) => Some(count),
                Err(error) => {
                    warn!(%error, "records did not reach the broker; sending them again");
                    self.shared.metrics.publish_retries.inc();
                    None
                }
            },
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
                Attempt::Fatal(error) => {
                    self.shared.metrics.fatal_errors.with_label_values(&[what]).inc();
                    break Err(Stop::Fatal(error));
                }
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

fn queued(enqueued: Result<Pending, PublishError>) -> Sending {
    match enqueued {
        Ok(pending) => Sending::Queued(pending),
        Err(error) => {
            warn!(%error, "records could not be queued for the broker; sending them again");
            Sending::Unsent
        }
    }
}

fn dead_letters<'a>(
    jobs: &'a [Job],
    records: &'a [RawRecord],
    outcome: &'a BatchOutcome,
) -> Vec<(DeadLetter<'a>, Option<&'a [u8]>)> {
    outcome.rejections.iter().map(|rejection| (rejection.letter(records), jobs[rejection.index].key.as_deref())).collect()
}

//! The pipeline: decode -> normalize -> resolve -> store -> changes, one batch per
//! write unit. `process_batch` is the step function every runner drives: the
//! worker's lanes call it, and `ingest` calls its two halves, `decode_batch` on
//! a reading thread and `apply_batch` on the writing one. `follow_changes` keeps
//! the index current from the outbox.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::config::IndexConfig;
use crate::event::{self, Event};
use crate::index::{Checkpoint, Delivery, IndexError, IndexWriters, SearchIndex};
use crate::model::{Limits, TenantId, Timestamp};
use crate::publish::{ChangeLog, ChangeSink, DeadLetter};
use crate::resolve::{self, Resolution};
use crate::source::RawRecord;
use crate::store::{ReadAhead, Store, StoreError};

/// What a batch did, summed over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub applied: u64,
    pub duplicates: u64,
    /// Accepted but without effect, by reason (events of erased history).
    pub skipped: BTreeMap<&'static str, u64>,
    /// Sent to the dead letters, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    pub contacts_created: u64,
    pub entries_appended: u64,
}

impl Report {
    pub fn add(&mut self, other: &Report) {
        self.records += other.records;
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.contacts_created += other.contacts_created;
        self.entries_appended += other.entries_appended;
        for (reason, n) in &other.skipped {
            *self.skipped.entry(reason).or_default() += n;
        }
        for (reason, n) in &other.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// A record the pipeline could not process, to be dead-lettered by the runner
/// once the batch is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub index: usize,
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    pub fn letter<'a>(&'a self, batch: &'a [RawRecord]) -> DeadLetter<'a> {
        let record = &batch[self.index];
        DeadLetter { payload: &record.payload, reason: self.reason, detail: self.detail.clone(), origin: &record.origin }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub report: Report,
    pub rejections: Vec<Rejection>,
    /// The change units holding the effects of the batch's events: the unit
    /// this batch committed and, for redelivered events, the units of their
    /// first delivery. A publisher delivers those still in the log.
    pub units: BTreeSet<u64>,
    /// Events by (type, outcome): `applied`, `duplicate`, `skipped`, `rejected`.
    pub by_type: BTreeMap<(&'static str, &'static str), u64>,
    /// When each decoded event happened, for age metrics.
    pub occurred_at: Vec<Timestamp>,
}

/// A batch's records decoded: the events in order with their record's index,
/// and the records that are not events. Decoding needs no store, so a runner
/// may do it on another thread while the previous batch is written.
#[derive(Clone, Debug, Default)]
pub struct DecodedBatch {
    events: Vec<(usize, Event)>,
    rejections: Vec<Rejection>,
    records: usize,
    /// The limits decoding applied, which resolution applies too.
    limits: Limits,
}

pub fn decode_batch(batch: &[RawRecord]) -> DecodedBatch {
    decode_batch_within(batch, &Limits::default())
}

pub fn decode_batch_within(batch: &[RawRecord], limits: &Limits) -> DecodedBatch {
    let mut decoded = DecodedBatch { records: batch.len(), limits: *limits, ..DecodedBatch::default() };
    decoded.events.reserve(batch.len());
    for (index, record) in batch.iter().enumerate() {
        match event::decode_within(&record.payload, limits) {
            Ok(event) => decoded.events.push((index, event)),
            Err(error) => decoded.rejections.push(Rejection { index, reason: error.code(), detail: error.to_string() }),
        }
    }
    decoded
}

/// Decodes a batch, then resolves and applies each event in order inside one
/// write unit. On a store error nothing of the batch is kept, so the caller may
/// retry it whole.
pub fn process_batch<S: Store + ChangeSink + ?Sized>(store: &mut S, batch: &[RawRecord]) -> Result<BatchOutcome, StoreError> {
    apply_batch(store, &decode_batch(batch))
}

/// [`process_batch`] within configured limits.
pub fn process_batch_within<S: Store + ChangeSink + ?Sized>(
    store: &mut S,
    batch: &[RawRecord],
    limits: &Limits,
) -> Result<BatchOutcome, StoreError> {
    apply_batch(store, &decode_batch_within(batch, limits))
}

/// Resolves and applies a decoded batch's events in order inside one write
/// unit; see [`process_batch`].
pub fn apply_batch<S: Store + ChangeSink + ?Sized>(store: &mut S, decoded: &DecodedBatch) -> Result<BatchOutcome, StoreError> {
    let mut outcome = BatchOutcome { rejections: decoded.rejections.clone(), ..BatchOutcome::default() };
    outcome.occurred_at = decoded.events.iter().map(|(_, event)| event.occurred_at).collect();
    if !outcome.rejections.is_empty() {
        *outcome.by_type.entry(("unknown", "rejected")).or_default() += outcome.rejections.len() as u64;
    }
    store.begin()?;
    // A failed commit leaves the unit open just like a failed write: either way
    // it is rolled back, so a retry starts clean.
    let applied = read_ahead(store, &decoded.events)
        .and_then(|()| apply_events(store, &decoded.events, &decoded.limits, &mut outcome))
        .and_then(|()| {
            outcome.units.extend(store.open_unit());
            store.commit()
        });
    if let Err(error) = applied {
        if let Err(rollback) = store.rollback() {
            warn!(error = %rollback, "rollback failed");
        }
        return Err(error);
    }
    outcome.report.records = decoded.records as u64;
    for rejection in &outcome.rejections {
        *outcome.report.rejected.entry(rejection.reason).or_default() += 1;
    }
    outcome.rejections.sort_by_key(|r| r.index);
    Ok(outcome)
}

/// Reads what the events will read first, in two rounds: the tenants'
/// configurations, which normalizing identities needs, then the rest.
fn read_ahead<S: Store + ?Sized>(store: &S, events: &[(usize, Event)]) -> Result<(), StoreError> {
    if !store.reads_ahead() || events.is_empty() {
        return Ok(());
    }
    let tenants: BTreeSet<&TenantId> = events.iter().map(|(_, event)| &event.tenant_id).collect();
    store.read_ahead(&ReadAhead { tenants: tenants.iter().map(|&t| t.clone()).collect(), ..ReadAhead::default() })?;
    let mut configs = HashMap::new();
    for tenant in tenants {
        configs.insert(tenant, store.tenant_config(tenant)?.unwrap_or_default());
    }
    let mut keys = ReadAhead::default();
    for (_, event) in events {
        let tenant = &event.tenant_id;
        keys.events.push((tenant.clone(), event.event_id.clone()));
        keys.sessions.extend(event.session_id.iter().map(|session| (tenant.clone(), session.clone())));
        keys.contacts.extend(event.contact_id.iter().map(|contact| (tenant.clone(), contact.clone())));
        let looked_up = resolve::identifiers_looked_up(event, &configs[tenant]);
        keys.claims.extend(looked_up.into_iter().map(|identifier| (tenant.clone(), identifier)));
    }
    store.read_ahead(&keys)
}

fn apply_events<S: Store + ChangeSink + ?Sized>(
    store: &mut S,
    events: &[(usize, Event)],
    limits: &Limits,
    outcome: &mut BatchOutcome,
) -> Result<(), StoreError> {
    for (index, event) in events {
        let span =
            tracing::debug_span!("event", tenant = %event.tenant_id, event_id = %event.event_id, kind = event.body.type_name());
        let _entered = span.enter();
        let result = match resolve::resolve_within(event, &*store, limits)? {
            Resolution::Duplicate { unit } => {
                outcome.report.duplicates += 1;
                outcome.units.insert(unit);
                debug!("duplicate event");
                "duplicate"
            }
            Resolution::Skipped(skip, plan) => {
                store.apply(&event.tenant_id, event.occurred_at, &plan.mutations)?;
                *outcome.report.skipped.entry(skip.code()).or_default() += 1;
                debug!(reason = skip.code(), "event skipped");
                "skipped"
            }
            Resolution::Rejected(why) => {
                outcome.rejections.push(Rejection { index: *index, reason: why.code(), detail: why.to_string() });
                "rejected"
            }
            Resolution::Applied(plan) => {
                store.apply(&event.tenant_id, event.occurred_at, &plan.mutations)?;
                outcome.report.applied += 1;
                outcome.report.contacts_created += u64::from(plan.contacts_created);
                outcome.report.entries_appended += u64::from(plan.entries_appended);
                store.publish(plan.changes)?;
                "applied"
            }
        };
        *outcome.by_type.entry((event.body.type_name(), result)).or_default() += 1;
    }
    Ok(())
}

/// Retries a decoded batch on transient store failures with exponential
/// backoff; any other failure stops the run.
pub fn apply_batch_with_retry<S: Store + ChangeSink + ?Sized>(
    store: &mut S,
    decoded: &DecodedBatch,
    max_attempts: u32,
) -> Result<BatchOutcome, StoreError> {
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match apply_batch(store, decoded) {
            Err(error) if error.is_transient() && attempt < max_attempts => {
                warn!(attempt, error = %error, "store busy, retrying batch");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FollowOptions {
    pub writer_memory_bytes: usize,
    /// Commit at least this often while changes arrive, bounding how stale search is.
    pub commit_interval: Duration,
    /// ... or after this many index operations, bounding memory and replay work.
    pub commit_every_ops: usize,
    /// How long to wait for another process's index writer before giving up; the
    /// changes stay in the outbox for the next run.
    pub lock_wait: Duration,
}

impl From<&IndexConfig> for FollowOptions {
    fn from(settings: &IndexConfig) -> Self {
        Self {
            writer_memory_bytes: settings.writer_memory_mb << 20,
            commit_interval: Duration::from_millis(settings.commit_interval_ms),
            commit_every_ops: settings.commit_every_ops,
            lock_wait: Duration::from_secs(settings.lock_wait_secs),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowReport {
    pub changes: u64,
    pub commits: u64,
    /// False when the writer lock stayed with another process for `lock_wait`.
    pub indexed: bool,
}

/// Write units read per poll; each holds up to one ingest batch of changes.
const UNITS_PER_READ: usize = 4;
const IDLE_POLL: Duration = Duration::from_millis(20);

/// Applies the change log to the index until `producer_done` is set and the log
/// is drained. Resumes from the position recorded in the index's last commit and
/// trims the log behind each commit.
pub fn follow_changes<L: ChangeLog>(
    log: &mut L,
    index: &SearchIndex,
    options: &FollowOptions,
    producer_done: &AtomicBool,
) -> Result<FollowReport, FollowError> {
    let mut report = FollowReport::default();
    let waiting_since = Instant::now();
    let mut writer = loop {
        match index.writer(options.writer_memory_bytes) {
            Ok(writer) => break writer,
            Err(IndexError::WriterBusy) if waiting_since.elapsed() < options.lock_wait => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(IndexError::WriterBusy) => {
                warn!("index writer held by another process; changes stay queued for the next run");
                return Ok(report);
            }
            Err(other) => return Err(other.into()),
        }
    };
    let mut applied_through = index.checkpoint()?.applied_through;
    // The units the timeline index may hold documents of already: those through
    // its own last commit (the directory index's may lag behind it) and the next
    // one, which a merge's mid-unit commit may have begun. Later units are new to it.
    let replays_through = index.timeline.checkpoint()?.applied_through.saturating_add(1);
    let mut committed_through = applied_through;
    let mut last_commit = Instant::now();
    loop {
        let done = producer_done.load(Ordering::Acquire);
        let units = log.read_after(applied_through, UNITS_PER_READ)?;
        if units.is_empty() {
            if done {
                break;
            }
            if applied_through > committed_through && last_commit.elapsed() >= options.commit_interval {
                checkpoint(&mut writer, log, applied_through, &mut report)?;
                committed_through = applied_through;
                last_commit = Instant::now();
            }
            std::thread::sleep(IDLE_POLL);
            continue;
        }
        for unit in &units {
            // A merge commits in the middle of a unit; replaying the whole unit
            // after a crash is safe because index operations are upserts.
            let before = || Checkpoint { applied_through: unit.seq.saturating_sub(1), ..Checkpoint::default() };
            let delivery = if unit.seq <= replays_through { Delivery::AtLeastOnce } else { Delivery::FirstTime };
            for change in &unit.changes {
                writer.apply(change, &before, delivery)?;
                report.changes += 1;
            }
            applied_through = unit.seq;
        }
        if writer.pending_ops() >= options.commit_every_ops || last_commit.elapsed() >= options.commit_interval {
            checkpoint(&mut writer, log, applied_through, &mut report)?;
            committed_through = applied_through;
            last_commit = Instant::now();
        }
    }
    if applied_through > committed_through || report.commits == 0 {
        checkpoint(&mut writer, log, applied_through, &mut report)?;
    }
    report.indexed = true;
    Ok(report)
}

/// Makes the index durable through unit `through`, then forgets the log behind it.
fn checkpoint<L: ChangeLog>(
    writer: &mut IndexWriters,
    log: &mut L,
    through: u64,
    report: &mut FollowReport,
) -> Result<(), FollowError> {
    writer.commit(&Checkpoint { applied_through: through, ..Checkpoint::default() })?;
    log.trim_through(through)?;
    report.commits += 1;
    Ok(())
}

//! How a write unit reaches the database, and how a unit that a worker left
//! half written (killed, or cut off from the cluster mid-commit) is finished
//! or undone by whoever meets it next. Without this, a redelivered event of
//! such a unit would be resolved again against a store that already holds
//! part of its effects, and publish other changes under the same change ids.
//!
//! A unit is written in this order:
//!
//! 1. its outbox row, `IF NOT EXISTS` (which also proves its position unique);
//! 2. its `units` row: state `writing` and the redo, every record it writes
//!    with the version and value it read, and every row it writes;
//! 3. the processed-event rows, pointing at the unit;
//! 4. the records (identifier claims, contacts, sessions, then tenants: see
//!    `write_order`), each by compare-and-set on the version the unit read,
//!    concurrently within a table. On a lost race the worker takes the unit over (as below; a worker
//!    that met one of its events may be finishing it already, and then that
//!    one decides), puts back what still holds the unit's values and abandons
//!    the unit: its processed-event rows, outbox row and `units` row are
//!    deleted, in that order, and the pipeline resolves the batch again;
//! 5. timeline, pending and session-link rows, idempotent, timeline and pending
//!    with the causing event's time as their write timestamp so that an
//!    erasure's tombstones shadow older events' writes;
//! 6. the `units` row is deleted if still `writing`: the unit is whole.
//!
//! An event whose processed-event row names a unit that still has a `units`
//! row belongs to an unfinished unit. The reader takes the unit over (a
//! conditional write, `finishing` with a lease) and replays the redo: a record
//! still at the version the unit read is written, one that moved on to the
//! unit's value is done, and one that moved on to another value means another
//! worker built on a different state, so the unit is undone instead, as if it
//! had lost a race.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use scylla::value::CqlValue;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    RecordKey, ScyllaBackend, ScyllaStore, Statements, StoreError, StoreResult, Table, Unit, Write, bind_key, from_json,
    record_key, to_json, update_values,
};
use crate::model::Timestamp;

const WRITING: &str = "writing";
const FINISHING: &str = "finishing";
/// How long a worker finishing another's unit holds it before a third may
/// take it over (the second having died meanwhile).
const FINISH_LEASE: Duration = Duration::from_secs(60);
/// How long a unit is left to its writer by a worker that only met one of its
/// claims (a writer takes well under a second; one still `writing` after this
/// is taken for dead).
const WRITE_GRACE: Duration = Duration::from_secs(10);
/// How long a worker waits for a live writer's unit to become whole before
/// taking it for stuck (a writer takes well under a second).
const WHOLE_PATIENCE: Duration = Duration::from_secs(2);
const WHOLE_POLL: Duration = Duration::from_millis(20);

/// Records are written claims first: a worker that meets a claim naming a
/// contact that does not exist yet waits for (or finishes) the claim's unit
/// instead of taking the identifier for unowned, and no contact ever lists an
/// identifier before the unit holds its claim, so nobody builds on a contact
/// whose identifiers may yet go to another. Sessions follow contacts, so a
/// session never names a contact that does not exist.
fn write_order(table: Table) -> u8 {
    match table {
        Table::Claims => 0,
        Table::Contacts => 1,
        Table::Sessions => 2,
        Table::Tenants => 3,
    }
}

/// The records that guard the rows the unit writes: a contact its timeline
/// and session links, a session its pending entries and its link.
fn row_guards(unit: &Unit) -> BTreeSet<RecordKey> {
    let contact = |tenant: &str, contact: &str| record_key(Table::Contacts, tenant, contact.as_bytes());
    let session = |tenant: &str, session: &str| record_key(Table::Sessions, tenant, session.as_bytes());
    let mut guards: BTreeSet<RecordKey> = unit.timelines.keys().map(|(tenant, id)| contact(tenant, id)).collect();
    guards.extend(unit.pending.keys().map(|(tenant, id)| session(tenant, id)));
    for ((tenant, id), sessions) in &unit.links {
        guards.insert(contact(tenant, id));
        guards.extend(sessions.keys().map(|id| session(tenant, id)));
    }
    guards
}

/// Who asks to finish a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Asker {
    /// A worker redelivered one of the unit's events: its writer lost the
    /// partition, so the unit is taken over at once.
    Redelivery,
    /// A worker that met one of the unit's claims: the writer is given
    /// `WRITE_GRACE` to finish first.
    ClaimReader,
}

/// What a unit writes, kept in its `units` row until the unit is whole.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Redo {
    records: Vec<RecordWrite>,
    rows: Vec<RowWrite>,
    seen: Vec<(String, String)>,
}

/// One record the unit changes, and what it read of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RecordWrite {
    key: RecordKey,
    json: String,
    read_version: Option<i64>,
    read_stored: Option<String>,
}

/// One idempotent row write of a unit.
#[derive(Debug, Serialize, Deserialize)]
enum RowWrite {
    ClearTimeline { tenant: String, contact: String, at: Timestamp },
    DeleteEntry { tenant: String, contact: String, micros: i64, entry_id: String, at: Timestamp },
    PutEntry { tenant: String, contact: String, micros: i64, entry_id: String, entry: String, at: Timestamp },
    ClearPending { tenant: String, session: String, at: Timestamp },
    PutPending { tenant: String, session: String, entry_id: String, entry: String, at: Timestamp },
    Link { tenant: String, contact: String, session: String, linked: bool },
    PutConflict { tenant: String, micros: i64, conflict_id: String, record: String, at: Timestamp },
    PutConflictById { tenant: String, conflict_id: String, record: String, at: Timestamp },
}

impl RowWrite {
    fn statement<'s>(&self, s: &'s Statements) -> Write<'s> {
        let text = |value: &str| CqlValue::Text(value.to_owned());
        match self {
            Self::ClearTimeline { tenant, contact, at } => (&s.delete_timeline, vec![text(tenant), text(contact)], Some(*at)),
            Self::DeleteEntry { tenant, contact, micros, entry_id, at } => {
                (&s.delete_entry, vec![text(tenant), text(contact), CqlValue::BigInt(*micros), text(entry_id)], Some(*at))
            }
            Self::PutEntry { tenant, contact, micros, entry_id, entry, at } => (
                &s.put_entry,
                vec![text(tenant), text(contact), CqlValue::BigInt(*micros), text(entry_id), text(entry)],
                Some(*at),
            ),
            Self::ClearPending { tenant, session, at } => (&s.clear_pending, vec![text(tenant), text(session)], Some(*at)),
            Self::PutPending { tenant, session, entry_id, entry, at } => {
                (&s.put_pending, vec![text(tenant), text(session), text(entry_id), text(entry)], Some(*at))
            }
            Self::Link { tenant, contact, session, linked } => {
                (if *linked { &s.link } else { &s.unlink }, vec![text(tenant), text(contact), text(session)], None)
            }
            Self::PutConflict { tenant, micros, conflict_id, record, at } => {
                (&s.put_conflict, vec![text(tenant), CqlValue::BigInt(*micros), text(conflict_id), text(record)], Some(*at))
            }
            Self::PutConflictById { tenant, conflict_id, record, at } => {
                (&s.put_conflict_by_id, vec![text(tenant), text(conflict_id), text(record)], Some(*at))
            }
        }
    }
}

/// One write of `statement` per processed event: its tenant and id, then `rest`.
fn per_event<'s>(statement: &'s super::Statement, seen: &[(String, String)], rest: &[CqlValue]) -> Vec<Write<'s>> {
    seen.iter()
        .map(|(tenant, event)| {
            let mut values = vec![CqlValue::Text(tenant.clone()), CqlValue::Text(event.clone())];
            values.extend_from_slice(rest);
            (statement, values, None)
        })
        .collect()
}

/// The rows a unit writes, in effect order.
fn row_writes(unit: &Unit) -> Vec<RowWrite> {
    let mut rows = Vec::new();
    for ((tenant, contact), overlay) in &unit.timelines {
        let (tenant, contact) = (tenant.clone(), contact.clone());
        if let Some(at) = overlay.cleared_at {
            rows.push(RowWrite::ClearTimeline { tenant: tenant.clone(), contact: contact.clone(), at });
        }
        for ((micros, entry_id), at) in &overlay.deleted {
            let (tenant, contact, entry_id) = (tenant.clone(), contact.clone(), entry_id.clone());
            rows.push(RowWrite::DeleteEntry { tenant, contact, micros: *micros, entry_id, at: *at });
        }
        for ((micros, entry_id), (entry, at)) in &overlay.put {
            let (tenant, contact, entry_id) = (tenant.clone(), contact.clone(), entry_id.clone());
            rows.push(RowWrite::PutEntry { tenant, contact, micros: *micros, entry_id, entry: to_json(entry), at: *at });
        }
    }
    for ((tenant, session), overlay) in &unit.pending {
        if let Some(at) = overlay.cleared_at {
            rows.push(RowWrite::ClearPending { tenant: tenant.clone(), session: session.clone(), at });
        }
        for (entry_id, (entry, at)) in &overlay.put {
            let (tenant, session, entry_id) = (tenant.clone(), session.clone(), entry_id.clone());
            rows.push(RowWrite::PutPending { tenant, session, entry_id, entry: to_json(entry), at: *at });
        }
    }
    for ((tenant, contact), sessions) in &unit.links {
        for (session, linked) in sessions {
            let (tenant, contact, session) = (tenant.clone(), contact.clone(), session.clone());
            rows.push(RowWrite::Link { tenant, contact, session, linked: *linked });
        }
    }
    for ((tenant, conflict_id), (record, at)) in &unit.conflicts {
        let (tenant, conflict_id, json) = (tenant.clone(), conflict_id.clone(), to_json(record));
        rows.push(RowWrite::PutConflict {
            tenant: tenant.clone(),
            micros: record.raised_at.micros(),
            conflict_id: conflict_id.clone(),
            record: json.clone(),
            at: *at,
        });
        rows.push(RowWrite::PutConflictById { tenant, conflict_id, record: json, at: *at });
    }
    rows
}

/// A unit's state from now on: `writing` or `finishing` (held by the worker
/// that undoes or finishes it), with when it began.
fn state_now(kind: &str) -> String {
    format!("{kind} {}", Timestamp::now().micros())
}

/// A state's kind and how long ago it began.
fn parse_state(state: &str) -> Option<(&str, Duration)> {
    let (kind, micros) = state.split_once(' ')?;
    let since: i64 = micros.parse().ok()?;
    let age = Timestamp::now().micros().saturating_sub(since).max(0);
    Some((kind, Duration::from_micros(age.unsigned_abs())))
}

/// Where a commit stops when a test stands in for a crash
/// ([`ScyllaStore::crash_next_commit_after`]).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommitStep {
    /// The `units` row, before any event is marked processed.
    Redo,
    ProcessedEvents,
    Records,
    Rows,
}

impl ScyllaBackend {
    /// Units some worker left half written with events marked processed under
    /// them that nobody has met since (`unit.rs`): each is finished or undone
    /// by the next reader of one of its events. A unit whose writer died
    /// before marking any of its events had no effect (they are resolved
    /// again) and is not counted; its row expires with the table's TTL. Scans
    /// a small table.
    pub fn unfinished_units(&self) -> StoreResult<u64> {
        self.block_on(async {
            let rows: Vec<(i64, Option<String>)> = self.rows(&self.statements.units_scan, ()).await?;
            let mut unfinished = 0;
            for (seq, redo) in rows {
                let redo: Redo = from_json(&redo.unwrap_or_default())?;
                for (tenant, event) in &redo.seen {
                    let marked: Vec<(Option<i64>,)> = self.rows(&self.statements.event_unit, (tenant, event)).await?;
                    if marked.iter().any(|(unit,)| *unit == Some(seq)) {
                        unfinished += 1;
                        break;
                    }
                }
            }
            Ok(unfinished)
        })
    }
}

/// How a unit left half written ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Finished {
    /// Whole: its events are processed.
    Completed,
    /// Undone: its events are not processed.
    Undone,
}

impl ScyllaStore {
    /// Writes the unit by the protocol of this module, or stops after `crash`
    /// as a killed worker would.
    pub(super) fn write_unit(&self, unit: &Unit, crash: Option<CommitStep>) -> StoreResult<()> {
        let crashes_after = |step| crash == Some(step);
        let backend = &self.backend;
        let s = &backend.statements;
        backend.block_on(async {
            let (records, writers) = self.record_writes(unit).await?;
            let redo = Redo { records, rows: row_writes(unit), seen: unit.seen.clone() };
            if !unit.stamped && unit.changes.is_empty() && redo.records.is_empty() && redo.rows.is_empty() {
                return Ok(());
            }
            self.await_whole(writers).await?;
            let seq = CqlValue::BigInt(unit.seq.cast_signed());
            let lines: String = unit.changes.iter().map(|change| to_json(change) + "\n").collect();
            if !backend.applied(&s.outbox_insert, vec![seq.clone(), CqlValue::Text(lines)]).await? {
                return Err(StoreError::Transient(format!("unit position {} taken by another worker", unit.seq)));
            }
            let writing = state_now(WRITING);
            let state = CqlValue::Text(writing.clone());
            backend.execute(&s.unit_insert, vec![seq.clone(), state, CqlValue::Text(to_json(&redo))]).await?;
            if crashes_after(CommitStep::Redo) {
                return Ok(());
            }
            self.mark_seen(unit.seq, &redo.seen).await?;
            if crashes_after(CommitStep::ProcessedEvents) {
                return Ok(());
            }
            if let Err(error) = self.write_records(&redo.records, unit.seq).await {
                // Only the unit's holder may undo it: a worker that met one of
                // its events (after this one's partition moved on) may be
                // finishing it, counting on the records written so far.
                let mine = state_now(FINISHING);
                if self.claim_unit(unit.seq, &writing, &mine).await.unwrap_or(false) {
                    self.abandon(unit.seq, &redo, &mine).await;
                }
                return Err(error);
            }
            // A failure from here on leaves the unit `writing`: the retry meets
            // its events and finishes it.
            if crashes_after(CommitStep::Records) {
                return Ok(());
            }
            self.write_rows(&redo.rows).await?;
            if crashes_after(CommitStep::Rows) {
                return Ok(());
            }
            if !self.release(unit.seq, &writing).await? {
                return Err(StoreError::Transient(format!("another worker took over unit {} first", unit.seq)));
            }
            Ok(())
        })
    }

    /// Finishes or undoes the unit at `seq` if it is not whole; `None` when
    /// it is (or never existed, or expired).
    pub(super) async fn finish_unit(&self, seq: u64, asker: Asker) -> StoreResult<Option<Finished>> {
        let backend = &self.backend;
        let rows: Vec<(Option<String>, Option<String>)> =
            backend.rows(&backend.statements.unit_read, (seq.cast_signed(),)).await?;
        let Some((state, redo)) = rows.into_iter().next() else { return Ok(None) };
        let state = state.unwrap_or_default();
        let held = parse_state(&state).is_some_and(|(kind, age)| {
            let patience = match kind {
                WRITING if asker == Asker::Redelivery => Duration::ZERO,
                WRITING => WRITE_GRACE,
                _ => FINISH_LEASE,
            };
            age < patience
        });
        if held {
            return Err(StoreError::Transient(format!("unit {seq} is still being written or finished by another worker")));
        }
        let mine = state_now(FINISHING);
        if !self.claim_unit(seq, &state, &mine).await? {
            // Lost to its writer finishing it just now, or to another worker.
            if self.is_whole(seq).await? {
                return Ok(None);
            }
            return Err(StoreError::Transient(format!("unit {seq} is being finished by another worker")));
        }
        let redo: Redo = from_json(&redo.unwrap_or_default())?;
        if self.replay_records(&redo.records, seq).await? {
            self.write_rows(&redo.rows).await?;
            self.mark_seen(seq, &redo.seen).await?;
            if !self.release(seq, &mine).await? {
                return Err(StoreError::Transient(format!("unit {seq} was taken over while being finished")));
            }
            info!(seq, events = redo.seen.len(), "finished a unit another worker left half written");
            Ok(Some(Finished::Completed))
        } else {
            self.abandon(seq, &redo, &mine).await;
            info!(seq, events = redo.seen.len(), "undid a unit another worker left half written");
            Ok(Some(Finished::Undone))
        }
    }

    /// The records the unit changes, with what it read of each, and the
    /// units that wrote them last. Records the unit read and left as they
    /// were are not written, claims and the guards of its rows excepted.
    async fn record_writes(&self, unit: &Unit) -> StoreResult<(Vec<RecordWrite>, BTreeSet<u64>)> {
        let guards = row_guards(unit);
        let mut writes = Vec::with_capacity(unit.records.len() + guards.len());
        let mut writers = BTreeSet::new();
        let unchanged = guards.iter().filter(|key| !unit.records.contains_key(*key)).map(|key| (key, None));
        for (key, json) in unit.records.iter().map(|(key, json)| (key, Some(json))).chain(unchanged) {
            let known = self.reads.borrow().get(key).cloned();
            let read = match known {
                Some(read) => read,
                None => self.read(key).await?,
            };
            let json = json.or(read.stored.as_ref()).cloned().unwrap_or_default();
            // A claim is the identifier's lock: writing the value it already
            // holds (a contact that went back being founded again) must still
            // race with a worker that read it to take the identifier. A
            // record's rows are valid for the record as read: a worker that
            // merged or erased the contact since must make this unit lose.
            if read.stored.as_ref() != Some(&json) || key.table == Table::Claims || guards.contains(key) {
                writers.extend(read.writer.map(i64::unsigned_abs));
                writes.push(RecordWrite { key: key.clone(), json, read_version: read.version, read_stored: read.stored });
            }
        }
        Ok((writes, writers))
    }

    /// Waits until each unit of `writers` is whole: a unit writes its records
    /// before its rows, so one that is not may still add rows that the
    /// records read already guard. A writer that stays unfinished past
    /// `WHOLE_PATIENCE` is finished or undone here once stale, or else
    /// reported as a transient error.
    pub(super) async fn await_whole(&self, writers: impl IntoIterator<Item = u64>) -> StoreResult<()> {
        let own = self.unit.as_ref().map(|unit| unit.seq);
        let unknown: Vec<u64> = {
            let whole = self.whole.borrow();
            writers.into_iter().filter(|seq| Some(*seq) != own && !whole.contains(seq)).collect()
        };
        let settled: Vec<u64> = futures::stream::iter(unknown.into_iter().map(|seq| async move {
            self.await_unit(seq).await?;
            StoreResult::Ok(seq)
        }))
        .buffer_unordered(self.backend.max_concurrency)
        .try_collect()
        .await?;
        self.whole.borrow_mut().extend(settled);
        Ok(())
    }

    /// Whether the unit at `seq` is whole: its `units` row is gone.
    pub(super) async fn is_whole(&self, seq: u64) -> StoreResult<bool> {
        let backend = &self.backend;
        let rows: Vec<(Option<String>,)> = backend.rows(&backend.statements.unit_state, (seq.cast_signed(),)).await?;
        Ok(rows.is_empty())
    }

    async fn await_unit(&self, seq: u64) -> StoreResult<()> {
        let started = Instant::now();
        loop {
            if self.is_whole(seq).await? {
                return Ok(());
            }
            if started.elapsed() >= WHOLE_PATIENCE {
                break;
            }
            tokio::time::sleep(WHOLE_POLL).await;
        }
        self.finish_unit(seq, Asker::ClaimReader).await.map(drop)
    }

    /// Compare-and-set of every record, stopping at the first table where one
    /// fails (a lost race or an error); undoing what was written is the
    /// caller's, once it holds the unit. Tables go one after another; within a
    /// table the writes run concurrently.
    async fn write_records(&self, records: &[RecordWrite], seq: u64) -> StoreResult<()> {
        let mut by_table: BTreeMap<u8, Vec<&RecordWrite>> = BTreeMap::new();
        for record in records {
            by_table.entry(write_order(record.key.table)).or_default().push(record);
        }
        for records in by_table.into_values() {
            let outcomes: Vec<StoreResult<()>> =
                futures::stream::iter(records.into_iter().map(|record| self.compare_and_set(record, seq)))
                    .buffer_unordered(self.backend.max_concurrency)
                    .collect()
                    .await;
            outcomes.into_iter().collect::<StoreResult<()>>()?;
        }
        Ok(())
    }

    /// Writes one record of the unit at `seq` on condition that it is still
    /// at the version the unit read.
    async fn compare_and_set(&self, record: &RecordWrite, seq: u64) -> StoreResult<()> {
        let statements = &self.backend.statements;
        let key = &record.key;
        let next = record.read_version.map_or(1, |v| v + 1);
        let applied = match record.read_version {
            None => {
                let values =
                    vec![CqlValue::Text(record.json.clone()), CqlValue::BigInt(next), CqlValue::BigInt(seq.cast_signed())];
                self.backend.applied(&statements.insert[&key.table], bind_key(key, values)?).await?
            }
            Some(version) => {
                let values = update_values(key, Some(&record.json), next, seq, version)?;
                self.backend.applied(&statements.update[&key.table], values).await?
            }
        };
        if !applied {
            return Err(StoreError::Transient(format!(
                "another worker changed a {:?} record of tenant {} first; resolving again",
                key.table, key.tenant
            )));
        }
        Ok(())
    }

    /// Replays a half-written unit's records in table order: whether every
    /// one now holds the unit's value.
    async fn replay_records(&self, records: &[RecordWrite], seq: u64) -> StoreResult<bool> {
        let mut ordered: Vec<&RecordWrite> = records.iter().collect();
        ordered.sort_by_key(|record| write_order(record.key.table));
        for record in ordered {
            let now = self.read(&record.key).await?;
            let written = if now.version == record.read_version {
                self.compare_and_set(record, seq).await.is_ok()
            } else {
                now.stored.as_deref() == Some(record.json.as_str())
            };
            if !written {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Undoes a unit held in `state`: the records that still hold its values
    /// are put back, then its processed-event rows, outbox row and `units` row
    /// are deleted, in that order, so that its events are never taken for
    /// processed while any of it stands.
    ///
    /// Records go back in the reverse of their write order, claims last, and
    /// claims only if every contact of the unit went back: a contact that another worker changed after
    /// this unit wrote it was built on, and keeps the identifiers it lists, so
    /// their claims must keep naming it or a later event would claim them for
    /// a second contact. A claim left naming a contact that went back is
    /// harmless: resolution takes a claim on a missing contact as unowned.
    ///
    /// Best effort: what a failure leaves, the next reader of one of the
    /// unit's events undoes.
    async fn abandon(&self, seq: u64, redo: &Redo, state: &str) {
        let backend = &self.backend;
        let s = &backend.statements;
        let mut ordered: Vec<&RecordWrite> = redo.records.iter().collect();
        ordered.sort_by_key(|record| std::cmp::Reverse(write_order(record.key.table)));
        let mut contact_kept = false;
        for record in ordered {
            if record.key.table == Table::Claims && contact_kept {
                continue;
            }
            let went_back = match self.read(&record.key).await {
                // Never written by this unit.
                Ok(now) if now.version == record.read_version => true,
                Ok(now) if now.stored.as_deref() == Some(record.json.as_str()) => self.put_back(record, now.version, seq).await,
                // Changed by another since this unit wrote it.
                Ok(_) => false,
                Err(error) => {
                    warn!(%error, seq, "could not read a record of a unit being undone");
                    false
                }
            };
            contact_kept |= record.key.table == Table::Contacts && !went_back;
        }
        let deleted = async {
            self.run_all(&per_event(&s.forget_seen, &redo.seen, &[])).await?;
            backend.execute(&s.outbox_delete, (seq.cast_signed(),)).await?;
            self.release(seq, state).await
        };
        if let Err(error) = deleted.await {
            warn!(%error, seq, "could not delete what remains of an undone unit; its next reader will");
        }
    }

    /// Puts back what the unit at `seq` read of a record that holds its value
    /// at `version`; a record that did not exist is put back as an empty
    /// record under a newer version, so that a worker which read it in between
    /// cannot write over it. Whether it went back. The record names the unit
    /// as its writer still: readers wait for the undo to end.
    async fn put_back(&self, record: &RecordWrite, version: Option<i64>, seq: u64) -> bool {
        let Some(version) = version else { return false };
        let statements = &self.backend.statements;
        let result = match update_values(&record.key, record.read_stored.as_deref(), version + 1, seq, version) {
            Ok(values) => self.backend.applied(&statements.update[&record.key.table], values).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(applied) => applied,
            Err(error) => {
                warn!(%error, table = ?record.key.table, tenant = %record.key.tenant, "could not undo a record of a failed unit");
                false
            }
        }
    }

    /// The unfinished unit, if any, that writes the record at `key` (a scan
    /// of the few units in progress; only for a claim that names a contact
    /// that does not exist).
    pub(super) async fn unit_writing(&self, key: &RecordKey) -> StoreResult<Option<u64>> {
        let backend = &self.backend;
        let rows: Vec<(i64, Option<String>)> = backend.rows(&backend.statements.units_scan, ()).await?;
        for (seq, redo) in rows {
            let redo: Redo = from_json(&redo.unwrap_or_default())?;
            if redo.records.iter().any(|record| &record.key == key) {
                return Ok(Some(seq.unsigned_abs()));
            }
        }
        Ok(None)
    }

    async fn mark_seen(&self, seq: u64, seen: &[(String, String)]) -> StoreResult<()> {
        let unit = [CqlValue::BigInt(seq.cast_signed())];
        self.run_all(&per_event(&self.backend.statements.mark_seen, seen, &unit)).await
    }

    async fn write_rows(&self, rows: &[RowWrite]) -> StoreResult<()> {
        let s = &self.backend.statements;
        let writes: Vec<Write<'_>> = rows.iter().map(|row| row.statement(s)).collect();
        self.run_all(&writes).await
    }

    /// Moves the unit from `from` to `to`, if it is still in `from`.
    async fn claim_unit(&self, seq: u64, from: &str, to: &str) -> StoreResult<bool> {
        let values = vec![CqlValue::Text(to.to_owned()), CqlValue::BigInt(seq.cast_signed()), CqlValue::Text(from.to_owned())];
        self.backend.applied(&self.backend.statements.unit_claim, values).await
    }

    /// Deletes the unit's `units` row if it is still in `state`.
    async fn release(&self, seq: u64, state: &str) -> StoreResult<bool> {
        let values = vec![CqlValue::BigInt(seq.cast_signed()), CqlValue::Text(state.to_owned())];
        self.backend.applied(&self.backend.statements.unit_release, values).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_read_back_with_its_age() {
        let state = state_now(FINISHING);
        let (kind, age) = parse_state(&state).unwrap();
        assert_eq!(kind, FINISHING);
        assert!(age < Duration::from_secs(60));
        let old = format!("{WRITING} {}", Timestamp::now().micros() - 20_000_000);
        assert!(parse_state(&old).is_some_and(|(kind, age)| kind == WRITING && age >= WRITE_GRACE));
        assert_eq!(parse_state("finishing soon"), None);
        assert_eq!(parse_state(WRITING), None);
    }

    #[test]
    fn claims_are_written_first_and_sessions_after_contacts() {
        assert!(write_order(Table::Claims) < write_order(Table::Contacts));
        assert!(write_order(Table::Contacts) < write_order(Table::Sessions));
    }

    #[test]
    fn a_redo_survives_its_stored_form() {
        let redo = Redo {
            records: vec![RecordWrite {
                key: RecordKey { table: Table::Claims, tenant: "acme".into(), key: vec![0, 255, 7] },
                json: "{}".into(),
                read_version: Some(3),
                read_stored: None,
            }],
            rows: vec![RowWrite::Link { tenant: "acme".into(), contact: "c-1".into(), session: "s-1".into(), linked: true }],
            seen: vec![("acme".into(), "e-1".into())],
        };
        let back: Redo = from_json(&to_json(&redo)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{redo:?}"));
    }
}

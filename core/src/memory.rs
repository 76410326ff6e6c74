//! A directory in memory: a `Store` with no file, server or runtime, on which
//! the resolution rules are tested as plain functions. A unit is all or
//! nothing, as on the real backends: `begin` keeps the state to go back to and
//! `rollback` restores it. The changes of every committed unit are kept, in
//! order, as an outbox would keep them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{
    Change, Claim, ConflictRecord, ContactId, ContactRecord, ExportedContact, Identifier, SessionId, SessionRecord, TenantConfig,
    TenantId, TimelineCursor, TimelineEntry, Timestamp,
};
use crate::store::{ChangeSink, DirectoryView, Mutation, Store, StoreError, StoreResult};

/// A timeline's (or conflict queue's) position: newest last, read backwards.
type Position = (Timestamp, String);

/// At most `limit` values strictly before `before`, newest first.
fn newest_first<T: Clone>(ordered: &BTreeMap<Position, T>, before: Option<&TimelineCursor>, limit: usize) -> Vec<T> {
    let newest_first: Box<dyn Iterator<Item = &T>> = match before {
        None => Box::new(ordered.values().rev()),
        Some(cursor) => Box::new(ordered.range(..(cursor.occurred_at, cursor.entry_id.clone())).rev().map(|(_, v)| v)),
    };
    newest_first.take(limit).cloned().collect()
}

#[derive(Clone, Debug, Default)]
struct State {
    tenants: HashMap<TenantId, TenantConfig>,
    events: HashMap<(TenantId, String), u64>,
    sessions: HashMap<(TenantId, SessionId), SessionRecord>,
    /// Ordered, so that `export` lists tenants and contacts in order.
    contacts: BTreeMap<(TenantId, ContactId), ContactRecord>,
    claims: HashMap<(TenantId, Identifier), Claim>,
    links: HashMap<(TenantId, ContactId), BTreeSet<SessionId>>,
    timelines: HashMap<(TenantId, ContactId), BTreeMap<Position, TimelineEntry>>,
    pending: HashMap<(TenantId, SessionId), BTreeMap<String, TimelineEntry>>,
    /// Per tenant, by when raised and id: the queue's order read backwards.
    conflicts: HashMap<TenantId, BTreeMap<Position, ConflictRecord>>,
    units: Vec<(u64, Vec<Change>)>,
}

/// The open unit: its position, the state before it, its changes, and
/// whether it marked events processed (such a unit is recorded even without
/// changes: its events lead back to it).
#[derive(Debug)]
struct OpenUnit {
    seq: u64,
    before: State,
    changes: Vec<Change>,
    stamped: bool,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: State,
    open: Option<OpenUnit>,
    last_seq: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The changes of every committed unit not forgotten, in commit order.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.state.units.iter().flat_map(|(_, changes)| changes)
    }

    /// The changes of the unit at `seq`, unless it was forgotten (or had
    /// neither changes nor processed events).
    pub fn unit_changes(&self, seq: u64) -> Option<&[Change]> {
        self.state.units.iter().find(|(unit, _)| *unit == seq).map(|(_, changes)| changes.as_slice())
    }

    /// Forgets the unit at `seq` once its changes are delivered elsewhere.
    pub fn forget_unit(&mut self, seq: u64) {
        self.state.units.retain(|(unit, _)| *unit != seq);
    }

    fn apply_one(&mut self, tenant: &TenantId, mutation: &Mutation) -> StoreResult<()> {
        let unit = self.open.as_mut().ok_or_else(|| StoreError::Fatal("a write outside a unit".into()))?;
        let state = &mut self.state;
        let t = tenant.clone();
        match mutation {
            Mutation::MarkSeen { event_id } => {
                unit.stamped = true;
                state.events.entry((t, event_id.clone())).or_insert(unit.seq);
            }
            Mutation::PutTenantConfig(config) => {
                state.tenants.insert(t, config.clone());
            }
            Mutation::PutSession { session_id, record } => {
                state.sessions.insert((t, session_id.clone()), record.clone());
            }
            Mutation::PutContact { contact_id, record } => {
                state.contacts.insert((t, contact_id.clone()), record.clone());
            }
            Mutation::SetClaim { identifier, claim } => {
                state.claims.insert((t, identifier.clone()), claim.clone());
            }
            Mutation::LinkSession { contact_id, session_id } => {
                state.links.entry((t, contact_id.clone())).or_default().insert(session_id.clone());
            }
            Mutation::UnlinkSession { contact_id, session_id } => {
                if let Some(sessions) = state.links.get_mut(&(t, contact_id.clone())) {
                    sessions.remove(session_id);
                }
            }
            Mutation::PutEntry { contact_id, entry } => {
                let position = (entry.occurred_at, entry.entry_id.clone());
                state.timelines.entry((t, contact_id.clone())).or_default().insert(position, entry.clone());
            }
            Mutation::DeleteEntry { contact_id, occurred_at, entry_id } => {
                if let Some(timeline) = state.timelines.get_mut(&(t, contact_id.clone())) {
                    timeline.remove(&(*occurred_at, entry_id.clone()));
                }
            }
            Mutation::DeleteTimeline { contact_id } => {
                state.timelines.remove(&(t, contact_id.clone()));
            }
            Mutation::PutPending { session_id, entry } => {
                state.pending.entry((t, session_id.clone())).or_default().insert(entry.entry_id.clone(), entry.clone());
            }
            Mutation::ClearPending { session_id } => {
                state.pending.remove(&(t, session_id.clone()));
            }
            Mutation::PutConflict(record) => {
                let position = (record.raised_at, record.conflict_id.clone());
                state.conflicts.entry(t).or_default().insert(position, record.clone());
            }
        }
        Ok(())
    }
}

impl DirectoryView for MemoryStore {
    fn tenant_config(&self, tenant: &TenantId) -> StoreResult<Option<TenantConfig>> {
        Ok(self.state.tenants.get(tenant).cloned())
    }

    fn event_unit(&self, tenant: &TenantId, event_id: &str) -> StoreResult<Option<u64>> {
        Ok(self.state.events.get(&(tenant.clone(), event_id.to_owned())).copied())
    }

    fn session(&self, tenant: &TenantId, session_id: &SessionId) -> StoreResult<Option<SessionRecord>> {
        Ok(self.state.sessions.get(&(tenant.clone(), session_id.clone())).cloned())
    }

    fn claim(&self, tenant: &TenantId, identifier: &Identifier) -> StoreResult<Option<Claim>> {
        Ok(self.state.claims.get(&(tenant.clone(), identifier.clone())).cloned())
    }

    fn contact(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<Option<ContactRecord>> {
        Ok(self.state.contacts.get(&(tenant.clone(), contact_id.clone())).cloned())
    }

    fn contact_sessions(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<Vec<SessionId>> {
        let sessions = self.state.links.get(&(tenant.clone(), contact_id.clone()));
        Ok(sessions.map(|sessions| sessions.iter().cloned().collect()).unwrap_or_default())
    }

    fn timeline(
        &self,
        tenant: &TenantId,
        contact_id: &ContactId,
        before: Option<&TimelineCursor>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEntry>> {
        let timeline = self.state.timelines.get(&(tenant.clone(), contact_id.clone()));
        Ok(timeline.map(|timeline| newest_first(timeline, before, limit)).unwrap_or_default())
    }

    fn timeline_len(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<u64> {
        Ok(self.state.timelines.get(&(tenant.clone(), contact_id.clone())).map_or(0, |timeline| timeline.len() as u64))
    }

    fn pending(&self, tenant: &TenantId, session_id: &SessionId) -> StoreResult<Vec<TimelineEntry>> {
        let entries = self.state.pending.get(&(tenant.clone(), session_id.clone()));
        Ok(entries.map(|entries| entries.values().cloned().collect()).unwrap_or_default())
    }

    fn conflict(&self, tenant: &TenantId, conflict_id: &str) -> StoreResult<Option<ConflictRecord>> {
        let conflicts = self.state.conflicts.get(tenant);
        Ok(conflicts.and_then(|c| c.values().find(|record| record.conflict_id == conflict_id)).cloned())
    }

    fn conflicts(&self, tenant: &TenantId, before: Option<&TimelineCursor>, limit: usize) -> StoreResult<Vec<ConflictRecord>> {
        Ok(self.state.conflicts.get(tenant).map(|conflicts| newest_first(conflicts, before, limit)).unwrap_or_default())
    }
}

impl Store for MemoryStore {
    fn begin(&mut self) -> StoreResult<()> {
        if self.open.is_some() {
            return Err(StoreError::Fatal("begin inside an open unit".into()));
        }
        self.open = Some(OpenUnit { seq: self.last_seq + 1, before: self.state.clone(), changes: Vec::new(), stamped: false });
        Ok(())
    }

    fn apply(&mut self, tenant: &TenantId, _at: Timestamp, mutations: &[Mutation]) -> StoreResult<()> {
        mutations.iter().try_for_each(|mutation| self.apply_one(tenant, mutation))
    }

    fn commit(&mut self) -> StoreResult<()> {
        let unit = self.open.take().ok_or_else(|| StoreError::Fatal("commit without begin".into()))?;
        self.last_seq = unit.seq;
        if unit.stamped || !unit.changes.is_empty() {
            self.state.units.push((unit.seq, unit.changes));
        }
        Ok(())
    }

    fn rollback(&mut self) -> StoreResult<()> {
        if let Some(unit) = self.open.take() {
            self.state = unit.before;
        }
        Ok(())
    }

    fn export(&self, visit: &mut dyn FnMut(ExportedContact) -> StoreResult<()>) -> StoreResult<()> {
        for ((tenant, contact_id), record) in &self.state.contacts {
            let ContactRecord::Active(contact) = record else { continue };
            visit(ExportedContact {
                tenant_id: tenant.clone(),
                contact_id: contact_id.clone(),
                state: contact.state(),
                sessions: self.contact_sessions(tenant, contact_id)?,
                timeline_entries: self.timeline_len(tenant, contact_id)?,
            })?;
        }
        Ok(())
    }
}

impl ChangeSink for MemoryStore {
    fn publish(&mut self, changes: Vec<Change>) -> StoreResult<()> {
        let unit = self.open.as_mut().ok_or_else(|| StoreError::Fatal("changes outside a unit".into()))?;
        unit.changes.extend(changes);
        Ok(())
    }

    fn open_unit(&self) -> Option<u64> {
        self.open.as_ref().map(|unit| unit.seq)
    }
}

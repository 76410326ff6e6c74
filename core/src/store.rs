//! The store seam. Resolution reads through `DirectoryView` and answers with
//! `Mutation`s; a `Store` (the `contactd` crate has SQLite and ScyllaDB) applies
//! them. Every read and write names its partition (tenant plus one key), so the
//! same trait fits SQLite and a wide-column store.

use crate::model::{
    Change, Claim, ConflictRecord, Contact, ContactId, ContactRecord, ExportedContact, Identifier, SessionId, SessionRecord,
    TenantConfig, TenantId, TimelineCursor, TimelineEntry, Timestamp,
};

/// What a store failure means to the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying with backoff: the store was busy or unreachable.
    #[error("store temporarily unavailable: {0}")]
    Transient(String),
    /// Stored data could not be read back: stop and page someone.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Anything else the backend reports: stop.
    #[error("store failure: {0}")]
    Fatal(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The keys a write unit's events will read first: whether each event was
/// processed, each tenant's configuration, each session, each identifier's
/// claim and each named contact. A store with a network round trip per read
/// reads them all at once instead of one after another.
#[derive(Debug, Default)]
pub struct ReadAhead {
    pub tenants: Vec<TenantId>,
    pub events: Vec<(TenantId, String)>,
    pub sessions: Vec<(TenantId, SessionId)>,
    pub claims: Vec<(TenantId, Identifier)>,
    pub contacts: Vec<(TenantId, ContactId)>,
}

/// Reads by partition key only: no joins, no scans on the hot path.
pub trait DirectoryView {
    /// Whether [`DirectoryView::read_ahead`] is worth computing its keys for.
    fn reads_ahead(&self) -> bool {
        false
    }
    /// Reads `keys` into the open unit, so that the unit's later reads of
    /// them cost nothing. What a unit read is what it read, whenever it read
    /// it: the commit checks it the same way.
    fn read_ahead(&self, _keys: &ReadAhead) -> StoreResult<()> {
        Ok(())
    }
    fn tenant_config(&self, tenant: &TenantId) -> StoreResult<Option<TenantConfig>>;
    /// The change unit an event was recorded in, if it was processed before: a
    /// redelivery republishes that unit when it is still undelivered.
    fn event_unit(&self, tenant: &TenantId, event_id: &str) -> StoreResult<Option<u64>>;
    fn session(&self, tenant: &TenantId, session_id: &SessionId) -> StoreResult<Option<SessionRecord>>;
    fn claim(&self, tenant: &TenantId, identifier: &Identifier) -> StoreResult<Option<Claim>>;
    fn contact(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<Option<ContactRecord>>;
    /// The contact's sessions, sorted.
    fn contact_sessions(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<Vec<SessionId>>;
    /// Newest first, strictly older than `before`, at most `limit` entries.
    fn timeline(
        &self,
        tenant: &TenantId,
        contact_id: &ContactId,
        before: Option<&TimelineCursor>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEntry>>;
    fn timeline_len(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<u64>;
    /// Entries of a session that has not resolved to a contact yet.
    fn pending(&self, tenant: &TenantId, session_id: &SessionId) -> StoreResult<Vec<TimelineEntry>>;
    fn conflict(&self, tenant: &TenantId, conflict_id: &str) -> StoreResult<Option<ConflictRecord>>;
    /// The tenant's conflicts, newest raised first (ties by id, descending),
    /// strictly before `before`, at most `limit`; dismissed and settled ones
    /// included (readers judge which are open).
    fn conflicts(&self, tenant: &TenantId, before: Option<&TimelineCursor>, limit: usize) -> StoreResult<Vec<ConflictRecord>>;
}

/// One write, within one tenant. A plan's mutations are applied in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Mutation {
    MarkSeen {
        event_id: String,
    },
    PutTenantConfig(TenantConfig),
    PutSession {
        session_id: SessionId,
        record: SessionRecord,
    },
    PutContact {
        contact_id: ContactId,
        record: ContactRecord,
    },
    LinkSession {
        contact_id: ContactId,
        session_id: SessionId,
    },
    UnlinkSession {
        contact_id: ContactId,
        session_id: SessionId,
    },
    SetClaim {
        identifier: Identifier,
        claim: Claim,
    },
    PutEntry {
        contact_id: ContactId,
        entry: TimelineEntry,
    },
    DeleteEntry {
        contact_id: ContactId,
        occurred_at: Timestamp,
        entry_id: String,
    },
    DeleteTimeline {
        contact_id: ContactId,
    },
    PutPending {
        session_id: SessionId,
        entry: TimelineEntry,
    },
    ClearPending {
        session_id: SessionId,
    },
    /// Raises a conflict, or records its dismissal: an upsert by id.
    PutConflict(ConflictRecord),
}

/// A directory backend. Writes happen in units opened by `begin` and closed by
/// `commit`; backends without transactions make them no-ops and rely on the
/// mutations being idempotent.
pub trait Store: DirectoryView {
    fn begin(&mut self) -> StoreResult<()>;
    /// Applies one event's mutations. `at` is when that event happened: a store
    /// that orders concurrent writes by timestamp writes with it, so an erasure's
    /// tombstones shadow whatever an older event writes after them.
    fn apply(&mut self, tenant: &TenantId, at: Timestamp, mutations: &[Mutation]) -> StoreResult<()>;
    fn commit(&mut self) -> StoreResult<()>;
    fn rollback(&mut self) -> StoreResult<()>;
    /// Every live contact, ordered by tenant then contact id. A batch job, not a
    /// hot path: backends may scan.
    fn export(&self, visit: &mut dyn FnMut(ExportedContact) -> StoreResult<()>) -> StoreResult<()>;
}

/// Receives the change events of applied events, in processing order: every
/// store keeps them with the write unit that caused them (an outbox).
pub trait ChangeSink {
    fn publish(&mut self, changes: Vec<Change>) -> StoreResult<()>;
    /// The log position the open write unit's changes will be committed under.
    fn open_unit(&self) -> Option<u64>;
}

/// Redirect chains longer than this mean corrupt data, not a real merge history.
const MAX_REDIRECTS: usize = 64;

/// Where a contact id leads once merges are followed.
pub enum Followed {
    /// The live contact, read unless `known_live` already knew it.
    Active(ContactId, Option<Contact>),
    Deleted(Timestamp),
    Unknown,
}

/// Follows merge redirects from `contact_id` to the live contact, a tombstone
/// or nothing; `known_live` stops the walk at an id the caller holds already.
/// The one walk resolution and the read views share: a redirect loop in
/// corrupt data is an error after `MAX_REDIRECTS` hops, never a hang.
pub fn follow_merges<V: DirectoryView + ?Sized>(
    view: &V,
    tenant: &TenantId,
    contact_id: &ContactId,
    known_live: impl Fn(&ContactId) -> bool,
) -> StoreResult<Followed> {
    let mut id = contact_id.clone();
    for _ in 0..MAX_REDIRECTS {
        if known_live(&id) {
            return Ok(Followed::Active(id, None));
        }
        match view.contact(tenant, &id)? {
            Some(ContactRecord::Active(contact)) => return Ok(Followed::Active(id, Some(contact))),
            Some(ContactRecord::Merged { into }) => id = into,
            Some(ContactRecord::Deleted { at }) => return Ok(Followed::Deleted(at)),
            None => return Ok(Followed::Unknown),
        }
    }
    Err(StoreError::Corrupt(format!("redirect loop from contact {contact_id} of tenant {tenant}")))
}

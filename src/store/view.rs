//! Read views over any store, shared by the commands and the HTTP API: a
//! contact as people see it, following merges, its timeline in pages, why
//! each identifier and conversation is its (explain), and the open identity
//! conflicts.

use serde_json::{Value, json};

use super::{DirectoryView, Followed, StoreError, follow_merges};
use crate::model::{Claim, ConflictRecord, ContactId, Provenance, TenantId, TimelineCursor, TimelineEntry};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("tenant {tenant} has no contact {contact_id}")]
    NotFound { tenant: TenantId, contact_id: ContactId },
    #[error("contact {0} was deleted")]
    Deleted(ContactId),
    #[error("malformed cursor {0:?}")]
    BadCursor(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The live contact `requested` is or was merged into, with its id.
fn live_contact(
    view: &dyn DirectoryView,
    tenant: &TenantId,
    requested: &ContactId,
) -> Result<(ContactId, crate::model::Contact), ViewError> {
    match follow_merges(view, tenant, requested, |_| false)? {
        Followed::Active(id, Some(contact)) => Ok((id, contact)),
        Followed::Deleted(_) => Err(ViewError::Deleted(requested.clone())),
        Followed::Active(_, None) | Followed::Unknown => {
            Err(ViewError::NotFound { tenant: tenant.clone(), contact_id: requested.clone() })
        }
    }
}

/// The live contact `id` is or was merged into, if any; `known`, when given,
/// is taken as live without reading it.
pub(crate) fn live_id(
    view: &dyn DirectoryView,
    tenant: &TenantId,
    id: &ContactId,
    known: Option<&ContactId>,
) -> Result<Option<ContactId>, ViewError> {
    Ok(match follow_merges(view, tenant, id, |id| Some(id) == known)? {
        Followed::Active(id, _) => Some(id),
        Followed::Deleted(_) | Followed::Unknown => None,
    })
}

/// One page of a timeline, newest first.
#[derive(Debug, serde::Serialize)]
pub struct TimelinePage {
    pub contact_id: ContactId,
    pub entries: Vec<TimelineEntry>,
    /// Pass back to get the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A page's cursor as the caller passed it back.
fn decode_cursor(text: Option<&str>) -> Result<Option<TimelineCursor>, ViewError> {
    text.map(|c| TimelineCursor::decode(c).ok_or_else(|| ViewError::BadCursor(c.to_owned()))).transpose()
}

pub fn timeline_page(
    view: &dyn DirectoryView,
    tenant: &TenantId,
    requested: &ContactId,
    cursor: Option<&str>,
    limit: usize,
) -> Result<TimelinePage, ViewError> {
    let cursor = decode_cursor(cursor)?;
    let (contact_id, _) = live_contact(view, tenant, requested)?;
    let limit = limit.max(1);
    let mut entries = view.timeline(tenant, &contact_id, cursor.as_ref(), limit + 1)?;
    let next_cursor = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| TimelineCursor { occurred_at: e.occurred_at, entry_id: e.entry_id.clone() }.encode())
    } else {
        None
    };
    Ok(TimelinePage { contact_id, entries, next_cursor })
}

/// The contact's fields, sessions and timeline size. When `requested` was
/// merged, the survivor is shown and `requested_contact_id` says so.
pub fn contact_view(view: &dyn DirectoryView, tenant: &TenantId, requested: &ContactId) -> Result<Value, ViewError> {
    let (id, contact) = live_contact(view, tenant, requested)?;
    let mut value = serde_json::to_value(contact.state()).expect("contact states serialize");
    let object = value.as_object_mut().expect("a contact state is an object");
    object.insert("tenant_id".into(), json!(tenant));
    object.insert("contact_id".into(), json!(id));
    if id != *requested {
        object.insert("requested_contact_id".into(), json!(requested));
    }
    object.insert("created_at".into(), json!(contact.created_at));
    object.insert("sessions".into(), json!(view.contact_sessions(tenant, &id)?));
    object.insert("timeline_entries".into(), json!(view.timeline_len(tenant, &id)?));
    Ok(value)
}

/// Why each identifier and conversation is this contact's
/// (docs/contract.md 3): the rule and event that attached it, and the merges
/// that carried it here, as recorded when it was written. Entries written
/// before provenance was kept say `"rule": "unrecorded"`.
pub fn explain_view(view: &dyn DirectoryView, tenant: &TenantId, requested: &ContactId) -> Result<Value, ViewError> {
    let (id, contact) = live_contact(view, tenant, requested)?;
    let identifiers: Vec<Value> = contact
        .identifiers
        .iter()
        .map(|owned| {
            let mut value = provenance(owned.by.as_ref());
            value["kind"] = json!(owned.identifier.kind);
            value["value"] = json!(owned.identifier.value);
            value
        })
        .collect();
    let mut sessions = Vec::new();
    for session_id in view.contact_sessions(tenant, &id)? {
        let record = view.session(tenant, &session_id)?;
        let mut value = provenance(record.as_ref().and_then(|r| r.attached_by.as_ref()));
        value["session_id"] = json!(session_id);
        sessions.push(value);
    }
    let mut value = json!({ "tenant_id": tenant, "contact_id": id, "identifiers": identifiers, "sessions": sessions });
    if id != *requested {
        value["requested_contact_id"] = json!(requested);
    }
    Ok(value)
}

fn provenance(by: Option<&Provenance>) -> Value {
    match by {
        Some(by) => json!({
            "rule": by.rule,
            "event_id": by.event_id,
            "occurred_at": by.at,
            "merged": by.merges.iter().map(|step| json!({
                "from_contact_id": step.from_contact_id,
                "event_id": step.event_id,
                "occurred_at": step.at,
                "by": step.by,
            })).collect::<Vec<_>>(),
        }),
        None => json!({ "rule": "unrecorded", "merged": [] }),
    }
}

/// A conflict as the review queue shows it: its record, with owner and
/// claimant followed through merges to the contacts they are now.
#[derive(Debug, serde::Serialize)]
pub struct OpenConflict {
    pub conflict_id: String,
    pub kind: crate::model::IdentifierKind,
    pub value: String,
    pub owner_contact_id: Option<ContactId>,
    pub claimant_contact_id: ContactId,
    pub session_id: Option<crate::model::SessionId>,
    pub event_id: String,
    pub raised_at: crate::model::Timestamp,
}

#[derive(Debug, serde::Serialize)]
pub struct ConflictPage {
    pub conflicts: Vec<OpenConflict>,
    /// Pass back to get the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// How many stored conflicts one page may read past settled and dismissed
/// ones, per conflict asked for: the page is then shorter, with a cursor.
const SCAN_PER_RESULT: usize = 10;

/// Open conflicts, newest raised first: those no event has closed yet
/// (docs/contract.md 3.4), with owner and claimant as merges left them.
pub fn conflict_page(
    view: &dyn DirectoryView,
    tenant: &TenantId,
    cursor: Option<&str>,
    limit: usize,
) -> Result<ConflictPage, ViewError> {
    let mut cursor = decode_cursor(cursor)?;
    let limit = limit.max(1);
    let mut conflicts = Vec::new();
    let mut budget = limit.saturating_mul(SCAN_PER_RESULT);
    loop {
        let batch = view.conflicts(tenant, cursor.as_ref(), limit + 1)?;
        let exhausted = batch.len() <= limit;
        for record in batch {
            if conflicts.len() == limit || budget == 0 {
                return Ok(ConflictPage { conflicts, next_cursor: cursor.map(|c| c.encode()) });
            }
            budget -= 1;
            cursor = Some(TimelineCursor { occurred_at: record.raised_at, entry_id: record.conflict_id.clone() });
            if let Some(open) = still_open(view, tenant, record)? {
                conflicts.push(open);
            }
        }
        if exhausted {
            return Ok(ConflictPage { conflicts, next_cursor: None });
        }
    }
}

fn still_open(view: &dyn DirectoryView, tenant: &TenantId, record: ConflictRecord) -> Result<Option<OpenConflict>, ViewError> {
    if record.closed.is_some() {
        return Ok(None);
    }
    let live = |id: &ContactId| live_id(view, tenant, id, None);
    let Some(claimant) = live(&record.claimant_contact_id)? else { return Ok(None) };
    let owner = match &record.owner_contact_id {
        Some(owner) => live(owner)?,
        None => None,
    };
    // A conflict stored before its closing was recorded is judged from the
    // claims as they are now: settled once the claimant owns the identifier
    // (merged with its owner, or the identifier moved), or once a conflict
    // over an owned identifier lost its owner.
    if !record.closure_recorded {
        let holder = match view.claim(tenant, &record.identifier)? {
            Some(Claim::Owned { contact_id }) => live(&contact_id)?,
            _ => None,
        };
        if holder.as_ref() == Some(&claimant) || (record.owner_contact_id.is_some() && holder.is_none()) {
            return Ok(None);
        }
    }
    Ok(Some(OpenConflict {
        conflict_id: record.conflict_id,
        kind: record.identifier.kind,
        value: record.identifier.value,
        owner_contact_id: owner,
        claimant_contact_id: claimant,
        session_id: record.session_id,
        event_id: record.event_id,
        raised_at: record.raised_at,
    }))
}

//! Read views over any store, shared by the `contact` command and the HTTP API:
//! a contact as people see it, following merges, and its timeline in pages.

use serde_json::{Value, json};

use super::{DirectoryView, Followed, StoreError, follow_merges};
use crate::model::{ContactId, TenantId, TimelineCursor, TimelineEntry};

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

/// One page of a timeline, newest first.
#[derive(Debug, serde::Serialize)]
pub struct TimelinePage {
    pub contact_id: ContactId,
    pub entries: Vec<TimelineEntry>,
    /// Pass back to get the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

pub fn timeline_page(
    view: &dyn DirectoryView,
    tenant: &TenantId,
    requested: &ContactId,
    cursor: Option<&str>,
    limit: usize,
) -> Result<TimelinePage, ViewError> {
    let cursor = cursor.map(|c| TimelineCursor::decode(c).ok_or_else(|| ViewError::BadCursor(c.to_owned()))).transpose()?;
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

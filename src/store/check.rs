//! The directory's invariants, checked over any store (`contactd check`, and
//! the end of the scale tests): every session under one contact at most and
//! in that contact's list; every owned identifier listed by its owner and by
//! nobody else; no open conflict whose settling facts hold (docs/contract.md
//! 3.1 and 3.4). A read-only walk: it costs a read per contact, per session
//! and per identifier, plus the conflict queue.

use std::collections::HashMap;

use super::Store;
use super::view::{self, ViewError};
use crate::model::{Claim, ConflictRole, ContactId, ContactRecord, Identifier, SessionId, TenantId};

/// What the walk saw, and each invariant it found broken, in words.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub contacts: u64,
    pub sessions: u64,
    pub identifiers: u64,
    pub open_conflicts: u64,
    pub violations: Vec<String>,
}

/// Conflicts read per page of the queue.
const CONFLICT_PAGE: usize = 100;

/// Checks every tenant, or only `tenant`.
pub fn check(store: &dyn Store, tenant: Option<&TenantId>) -> Result<Report, ViewError> {
    let mut report = Report::default();
    let mut contacts: Vec<(TenantId, ContactId, Vec<SessionId>)> = Vec::new();
    store.export(&mut |contact| {
        if tenant.is_none_or(|t| *t == contact.tenant_id) {
            contacts.push((contact.tenant_id, contact.contact_id, contact.sessions));
        }
        Ok(())
    })?;
    let mut session_homes: HashMap<(TenantId, SessionId), ContactId> = HashMap::new();
    let mut identifier_homes: HashMap<(TenantId, Identifier), ContactId> = HashMap::new();
    // The contact checked is live (the export listed it): a record naming it needs no read.
    let live_or = |tenant: &TenantId, id: &ContactId, known: &ContactId| view::live_id(store, tenant, id, Some(known));
    for (tenant, contact_id, sessions) in &contacts {
        report.contacts += 1;
        for session in sessions {
            report.sessions += 1;
            if let Some(other) = session_homes.insert((tenant.clone(), session.clone()), contact_id.clone()) {
                report.violations.push(format!("{tenant}: session {session} is listed by contacts {other} and {contact_id}"));
            }
            let named = store.session(tenant, session)?.and_then(|record| record.contact_id);
            let home = match &named {
                Some(id) => live_or(tenant, id, contact_id)?,
                None => None,
            };
            if home.as_ref() != Some(contact_id) {
                report.violations.push(format!(
                    "{tenant}: session {session} is listed by contact {contact_id} but its record names {named:?}"
                ));
            }
        }
        let Some(ContactRecord::Active(contact)) = store.contact(tenant, contact_id)? else { continue };
        for owned in &contact.identifiers {
            report.identifiers += 1;
            let identifier = &owned.identifier;
            if let Some(other) = identifier_homes.insert((tenant.clone(), identifier.clone()), contact_id.clone()) {
                report.violations.push(format!("{tenant}: {identifier} is held by contacts {other} and {contact_id}"));
            }
            let owner = match store.claim(tenant, identifier)? {
                Some(Claim::Owned { contact_id: owner }) => live_or(tenant, &owner, contact_id)?,
                _ => None,
            };
            if owner.as_ref() != Some(contact_id) {
                report
                    .violations
                    .push(format!("{tenant}: {identifier} is held by contact {contact_id} but claimed by {owner:?}"));
            }
        }
        for link in &contact.conflicts {
            let stored = store.conflict(tenant, &link.conflict.conflict_id)?;
            if stored.is_none_or(|record| record.closed.is_some()) {
                let id = &link.conflict.conflict_id;
                report.violations.push(format!("{tenant}: contact {contact_id} lists conflict {id}, which is not open"));
            }
        }
    }
    let tenants: Vec<TenantId> = match tenant {
        Some(tenant) => vec![tenant.clone()],
        None => {
            let mut all: Vec<TenantId> = contacts.iter().map(|(tenant, _, _)| tenant.clone()).collect();
            all.dedup();
            all
        }
    };
    for tenant in &tenants {
        check_conflicts(store, tenant, &identifier_homes, &mut report)?;
    }
    Ok(report)
}

/// Every open conflict: its claimant live, and its owner (if it had one)
/// live, another contact, holding the identifier and listing the conflict.
fn check_conflicts(
    store: &dyn Store,
    tenant: &TenantId,
    identifier_homes: &HashMap<(TenantId, Identifier), ContactId>,
    report: &mut Report,
) -> Result<(), ViewError> {
    let mut cursor = None;
    loop {
        let page = view::conflict_page(store, tenant, cursor.as_deref(), CONFLICT_PAGE)?;
        for open in page.conflicts {
            report.open_conflicts += 1;
            let id = &open.conflict_id;
            let Some(record) = store.conflict(tenant, id)? else { continue };
            if !record.closure_recorded {
                continue;
            }
            let identifier = &record.identifier;
            let listed_by = |contact_id: &ContactId, role: ConflictRole| -> Result<bool, ViewError> {
                Ok(match store.contact(tenant, contact_id)? {
                    Some(ContactRecord::Active(contact)) => {
                        contact.conflicts.iter().any(|link| link.conflict.conflict_id == *id && link.role == role)
                    }
                    _ => false,
                })
            };
            if !listed_by(&open.claimant_contact_id, ConflictRole::Claimant)? {
                report.violations.push(format!("{tenant}: open conflict {id} is not listed by its claimant"));
            }
            if record.owner_contact_id.is_none() {
                continue;
            }
            match &open.owner_contact_id {
                None => report.violations.push(format!("{tenant}: open conflict {id} has lost its owner")),
                Some(owner) if *owner == open.claimant_contact_id => {
                    report.violations.push(format!("{tenant}: open conflict {id} has one contact as owner and claimant"));
                }
                Some(owner) => {
                    if identifier_homes.get(&(tenant.clone(), identifier.clone())) != Some(owner) {
                        report
                            .violations
                            .push(format!("{tenant}: open conflict {id}'s owner {owner} no longer holds {identifier}"));
                    }
                    if !listed_by(owner, ConflictRole::Owner)? {
                        report.violations.push(format!("{tenant}: open conflict {id} is not listed by its owner"));
                    }
                }
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

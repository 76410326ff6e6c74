//! Resolution (docs/contract.md section 3): decides which contact an event belongs to and
//! what changes, as a plan of mutations plus outbound changes. Pure: it reads
//! through `DirectoryView` and writes nothing, so it knows no Kafka and no SQL.
//!
//! One file per family of events: `interaction.rs` (conversations and
//! operators' edits), `details.rs` (identifiers and names), `links.rs`
//! (sessions attached, linked, merged, unlinked), `erasure.rs`, `conflicts.rs`
//! (raised, dismissed, settled). This file holds
//! the dispatch and the steps they share: following merges, founding a
//! contact, timeline entries and changes.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use crate::event::{ContactRef, Event, EventBody};
use crate::model::{
    CHANGE_SCHEMA_V1, Change, ChangeData, ChangeKind, Claim, Contact, ContactId, ContactRecord, Details, EntryKind, Identifier,
    Limits, SessionId, TenantConfig, TenantId, TimelineEntry, Timestamp, Version, derived_id,
};
use crate::store::{DirectoryView, Followed, Mutation, StoreResult, follow_merges};

mod conflicts;
mod details;
mod erasure;
mod interaction;
mod links;

pub use interaction::identifiers_looked_up;

/// Why an event was accepted but changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// It belongs to history that a later `contact.deleted` erased (docs/contract.md 3.8).
    Erased,
}

impl Skip {
    pub fn code(self) -> &'static str {
        match self {
            Self::Erased => "erased",
        }
    }
}

/// Why a well-formed event cannot be applied: it goes to the dead letters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolvable {
    #[error("contact {0:?} is not in the directory")]
    UnknownContact(ContactId),
    #[error("session {0:?} has no contact")]
    NoContact(SessionId),
    #[error("conflict {0:?} is not in the directory")]
    UnknownConflict(String),
    /// `contact.created` always adds a contact: one naming a live contact's
    /// id (or a merged one's) would edit it instead.
    #[error("contact {0:?} exists already")]
    ContactExists(ContactId),
}

impl Unresolvable {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownContact(_) | Self::NoContact(_) => "unknown_contact",
            Self::UnknownConflict(_) => "unknown_conflict",
            Self::ContactExists(_) => "contact_exists",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub mutations: Vec<Mutation>,
    pub changes: Vec<Change>,
    pub contacts_created: u32,
    pub entries_appended: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// The same `event_id` was processed before, in change unit `unit`: nothing
    /// to apply.
    Duplicate {
        unit: u64,
    },
    /// Accepted and recorded as seen, with no other effect.
    Skipped(Skip, Plan),
    Rejected(Unresolvable),
    Applied(Plan),
}

/// Resolves within the default limits.
pub fn resolve<V: DirectoryView + ?Sized>(event: &Event, view: &V) -> StoreResult<Resolution> {
    resolve_within(event, view, &Limits::default())
}

/// A contact takes at most `limits.identifiers_per_contact` identifiers;
/// past that they are refused in the open (docs/contract.md 3.4), which bounds
/// what every later event of the contact reads and writes back. A merge may
/// join two contacts past it.
pub fn resolve_within<V: DirectoryView + ?Sized>(event: &Event, view: &V, limits: &Limits) -> StoreResult<Resolution> {
    if let Some(unit) = view.event_unit(&event.tenant_id, &event.event_id)? {
        return Ok(Resolution::Duplicate { unit });
    }
    let config = view.tenant_config(&event.tenant_id)?.unwrap_or_default();
    let mut resolver = Resolver {
        event,
        view,
        config,
        limits: *limits,
        plan: Plan::default(),
        contacts: HashMap::new(),
        touched: HashSet::new(),
        entry_session: event.session_id.clone(),
        entries: 0,
    };
    resolver.plan.mutations.push(Mutation::MarkSeen { event_id: event.event_id.clone() });
    let step = match &event.body {
        EventBody::TenantConfigured { identifying_params, default_phone_region } => {
            resolver.configure(identifying_params, default_phone_region.as_deref())
        }
        EventBody::ContactDeleted { target } => resolver.delete(target),
        EventBody::SessionLinked { session_id, contact_id } => resolver.link(session_id, contact_id),
        EventBody::SessionUnlinked { session_id } => resolver.unlink(session_id),
        EventBody::ContactMerged { into, from } => resolver.merge_contacts(into, from),
        EventBody::ConflictDismissed { conflict_id } => resolver.dismiss_conflict(conflict_id),
        _ => resolver.interaction(),
    }?;
    Ok(match step {
        Step::Done => Resolution::Applied(resolver.finish()),
        Step::Skip(skip) => {
            resolver.plan.mutations.truncate(1);
            resolver.plan.changes.clear();
            Resolution::Skipped(skip, resolver.plan)
        }
        Step::Reject(why) => Resolution::Rejected(why),
    })
}

/// The identity an event brings: its own, and what an operator's edit adds.
/// The id of the contact `event` founds, if it founds one: derived from the
/// event, so that a redelivery or a replay founds the same contact.
pub fn founded_contact_id(event: &Event) -> ContactId {
    ContactId::from(derived_id("c-", &[&event.tenant_id, &event.event_id]))
}

enum Step {
    Done,
    Skip(Skip),
    Reject(Unresolvable),
}

enum Target {
    Active(ContactId),
    Deleted(Timestamp),
    Unknown,
}

enum Lookup {
    Owner(ContactId),
    Erased,
    Nobody,
}

struct Resolver<'a, V: ?Sized> {
    event: &'a Event,
    view: &'a V,
    config: TenantConfig,
    limits: Limits,
    plan: Plan,
    /// Working copies of the live contacts this event touches, written once in `finish`.
    contacts: HashMap<ContactId, Contact>,
    /// Contacts whose record changed with no change event to say so (a
    /// conflict they are party to was raised or closed): written in `finish` too.
    touched: HashSet<ContactId>,
    /// The session the event's detail entries belong to: the event's, unless
    /// the event went to a contact its session is not attached to (an
    /// operator's edit naming another contact), whose timeline must not
    /// hold entries of a session it does not have.
    entry_session: Option<SessionId>,
    entries: u32,
}

impl<V: DirectoryView + ?Sized> Resolver<'_, V> {
    fn tenant(&self) -> &TenantId {
        &self.event.tenant_id
    }

    fn version(&self) -> Version {
        Version { at: self.event.occurred_at, event_id: self.event.event_id.clone() }
    }

    fn configure(&mut self, identifying_params: &[String], default_phone_region: Option<&str>) -> StoreResult<Step> {
        let version = self.version();
        if self.config.version.as_ref().is_none_or(|current| *current < version) {
            self.plan.mutations.push(Mutation::PutTenantConfig(TenantConfig {
                identifying_params: identifying_params.to_vec(),
                default_phone_region: default_phone_region.map(str::to_ascii_uppercase),
                version: Some(version),
            }));
        }
        Ok(Step::Done)
    }

    /// The contact an operator's event names: by id, or as the contact the
    /// session is attached to (merges not followed); or the session, when it
    /// has none.
    fn named_contact<'t>(&self, target: &'t ContactRef) -> StoreResult<Result<ContactId, &'t SessionId>> {
        Ok(match target {
            ContactRef::Contact(contact_id) => Ok(contact_id.clone()),
            ContactRef::OfSession(session_id) => {
                self.view.session(self.tenant(), session_id)?.and_then(|r| r.contact_id).ok_or(session_id)
            }
        })
    }

    /// Follows merge redirects to the live contact, if any.
    fn follow(&mut self, contact_id: &ContactId) -> StoreResult<Target> {
        let contacts = &self.contacts;
        Ok(match follow_merges(self.view, &self.event.tenant_id, contact_id, |id| contacts.contains_key(id))? {
            Followed::Active(id, read) => {
                if let Some(contact) = read {
                    self.contacts.insert(id.clone(), contact);
                }
                Target::Active(id)
            }
            Followed::Deleted(at) => Target::Deleted(at),
            Followed::Unknown => Target::Unknown,
        })
    }

    fn contact(&mut self, id: &ContactId) -> &mut Contact {
        self.contacts.get_mut(id).expect("working copy loaded by follow or create")
    }

    /// The live owner of an identifier, or whether it was erased after this event.
    fn lookup(&mut self, identifier: &Identifier) -> StoreResult<Lookup> {
        let occurred_at = self.event.occurred_at;
        Ok(match self.view.claim(self.tenant(), identifier)? {
            Some(Claim::Owned { contact_id }) => match self.follow(&contact_id)? {
                Target::Active(id) => Lookup::Owner(id),
                Target::Deleted(at) if occurred_at < at => Lookup::Erased,
                _ => Lookup::Nobody,
            },
            Some(Claim::Released { at, erased: true }) if occurred_at < at => Lookup::Erased,
            _ => Lookup::Nobody,
        })
    }

    fn entry(&mut self, kind: EntryKind, session_id: Option<&SessionId>, text: String, details: Details) -> TimelineEntry {
        let entry_id = match self.entries {
            0 => self.event.event_id.clone(),
            n => format!("{}#{n}", self.event.event_id),
        };
        self.entries += 1;
        TimelineEntry {
            entry_id,
            occurred_at: self.event.occurred_at,
            channel: self.event.channel,
            session_id: session_id.cloned(),
            kind,
            text,
            details,
        }
    }

    fn change(&mut self, contact_id: &ContactId, kind: ChangeKind, data: ChangeData) {
        let n = self.plan.changes.len().to_string();
        let change_id = derived_id("chg-", &[self.tenant(), &self.event.event_id, &n]);
        self.plan.changes.push(Change {
            schema: CHANGE_SCHEMA_V1.to_owned(),
            change_id,
            tenant_id: self.event.tenant_id.clone(),
            contact_id: contact_id.clone(),
            kind,
            occurred_at: self.event.occurred_at,
            caused_by: self.event.event_id.clone(),
            data,
        });
    }

    fn append(&mut self, contact_id: &ContactId, entry: TimelineEntry) {
        self.change(
            contact_id,
            ChangeKind::TimelineAppended,
            ChangeData { entry: Some(Box::new(entry.clone())), ..ChangeData::default() },
        );
        self.plan.mutations.push(Mutation::PutEntry { contact_id: contact_id.clone(), entry });
        self.plan.entries_appended += 1;
    }

    /// Records a change of contact details both as a change event and in the timeline.
    fn record(&mut self, contact_id: &ContactId, change: ChangeKind, entry: EntryKind, text: String, details: ChangeData) {
        let entry_details = Details::of(&details);
        self.change(contact_id, change, details);
        let session = self.entry_session.clone();
        let entry = self.entry(entry, session.as_ref(), text, entry_details);
        self.append(contact_id, entry);
    }

    fn create(&mut self, contact_id: ContactId) {
        let contact = Contact {
            id: contact_id.clone(),
            name: None,
            identifiers: Vec::new(),
            created_at: self.event.occurred_at,
            conflicts: Vec::new(),
        };
        self.contacts.insert(contact_id.clone(), contact);
        self.plan.contacts_created += 1;
        self.change(&contact_id, ChangeKind::ContactCreated, ChangeData::default());
        let entry = self.entry(
            EntryKind::ContactCreated,
            None,
            "contact created".into(),
            Details::of(&json!({ "by_event": self.event.body.type_name() })),
        );
        self.append(&contact_id, entry);
    }

    /// Writes the changed contacts once and stamps the last contact change of
    /// each with its state after the event (docs/contract.md 5): once, not per
    /// change, so an event's changes grow with what it changed, not with that
    /// times the contact's size.
    fn finish(mut self) -> Plan {
        for (id, contact) in &self.contacts {
            match self.plan.changes.iter_mut().rev().find(|c| &c.contact_id == id && carries_state(c.kind)) {
                Some(last) => last.data.contact = Some(Box::new(contact.state())),
                None if self.touched.contains(id) => {}
                None => continue,
            }
            self.plan
                .mutations
                .push(Mutation::PutContact { contact_id: id.clone(), record: ContactRecord::Active(contact.clone()) });
        }
        self.plan
    }
}

fn carries_state(kind: ChangeKind) -> bool {
    matches!(
        kind,
        ChangeKind::ContactCreated
            | ChangeKind::ContactUpdated
            | ChangeKind::IdentifierAdded
            | ChangeKind::IdentifierRemoved
            | ChangeKind::IdentityConflict
            | ChangeKind::ContactMerged
    )
}

#[cfg(test)]
mod tests {
    //! The rules as plain functions: events decoded, resolved against the
    //! in-memory store and their plans applied, with nothing else running.
    //! The whole contract is exercised in the `contactd` crate's rule tests.

    use super::*;
    use crate::memory::MemoryStore;
    use crate::store::Store;

    fn event(id: &str, kind: &str, minute: u32, session: &str, extra: &str) -> Event {
        let line = format!(
            r#"{{"schema":"contact-event/v1","event_id":"{id}","tenant_id":"acme","type":"{kind}","occurred_at":"2026-11-02T08:{minute:02}:00Z","channel":"chat","session_id":"{session}"{extra}}}"#
        );
        crate::event::decode(line.as_bytes()).expect("a valid event")
    }

    fn apply(store: &mut MemoryStore, event: &Event) -> Resolution {
        let resolution = resolve(event, store).expect("resolves");
        if let Resolution::Applied(plan) | Resolution::Skipped(_, plan) = &resolution {
            store.begin().unwrap();
            store.apply(&event.tenant_id, event.occurred_at, &plan.mutations).unwrap();
            store.commit().unwrap();
        }
        resolution
    }

    fn session_contact(store: &MemoryStore, session: &str) -> Option<ContactId> {
        store.session(&"acme".into(), &session.into()).unwrap().and_then(|record| record.contact_id)
    }

    #[test]
    fn two_sessions_with_one_email_resolve_to_one_contact_and_a_redelivery_changes_nothing() {
        let mut store = MemoryStore::new();
        let identity = r#","identity":{"emails":["Jana@Example.cz"]}"#;
        let first = event("e1", "session.started", 0, "s1", identity);
        assert!(matches!(apply(&mut store, &first), Resolution::Applied(plan) if plan.contacts_created == 1));
        apply(&mut store, &event("e2", "session.started", 5, "s2", r#","identity":{"emails":["jana@example.cz"]}"#));
        assert!(session_contact(&store, "s1").is_some());
        assert_eq!(session_contact(&store, "s1"), session_contact(&store, "s2"), "one contact for one e-mail");
        assert!(matches!(apply(&mut store, &first), Resolution::Duplicate { .. }));
    }

    #[test]
    fn a_session_without_a_strong_identifier_waits_and_joins_when_one_arrives() {
        let mut store = MemoryStore::new();
        let message = r#","payload":{"message_id":"m1","author":"guest","text":"hello"}"#;
        apply(&mut store, &event("e1", "message.posted", 0, "s1", message));
        assert_eq!(session_contact(&store, "s1"), None);
        assert_eq!(store.pending(&"acme".into(), &"s1".into()).unwrap().len(), 1, "the message waits in its session");
        apply(&mut store, &event("e2", "identity.provided", 1, "s1", r#","identity":{"phones":["+420 777 123 456"]}"#));
        let contact = session_contact(&store, "s1").expect("the phone founds a contact");
        assert!(store.pending(&"acme".into(), &"s1".into()).unwrap().is_empty());
        let texts: Vec<String> =
            store.timeline(&"acme".into(), &contact, None, 10).unwrap().into_iter().map(|entry| entry.text).collect();
        assert!(texts.contains(&"hello".to_owned()), "{texts:?}");
    }
}

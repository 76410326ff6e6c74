//! Interactions (docs/contract.md 3.1-3.6): every event about a conversation
//! or a contact's details, from a channel or an operator's edit. The event
//! joins the contact its session, an explicit contact id or one of its
//! identifiers names, or founds one; without a strong identifier it waits in
//! its session.

use serde_json::json;

use super::{Lookup, Resolver, Skip, Step, Target, Unresolvable};
use crate::event::{EmailDirection, Event, EventBody};
use crate::identity::{self, IdentitySource, NormalizedIdentity};
use crate::model::{
    Channel, Details, EntryKind, Identifier, IdentifierKind, NameSource, Rule, SessionId, TenantConfig, TimelineEntry,
};
use crate::store::{DirectoryView, Mutation, StoreResult};

fn provided_identity(event: &Event, config: &TenantConfig) -> NormalizedIdentity {
    let mut identity = event.identity.as_ref().map(|i| identity::normalize(i, config)).unwrap_or_default();
    if let EventBody::ContactUpdated { add: Some(add), .. } = &event.body {
        let added = identity::normalize(add, config);
        identity.identifiers.extend(added.identifiers);
        identity.identifiers.sort_by_key(|i| i.kind);
        identity.identifiers.dedup();
        identity.name = identity.name.or(added.name);
    }
    identity
}

/// An e-mail's participants that are addresses, in thread order.
fn participants(event: &Event) -> Vec<Identifier> {
    match &event.body {
        EventBody::Email { participants, .. } => participants
            .iter()
            .filter_map(|p| identity::normalize_email(p))
            .map(|value| Identifier { kind: IdentifierKind::Email, value })
            .collect(),
        _ => Vec::new(),
    }
}

/// The identifiers whose claims resolving `event` may read, for reading ahead.
pub fn identifiers_looked_up(event: &Event, config: &TenantConfig) -> Vec<Identifier> {
    let mut identifiers = provided_identity(event, config).identifiers;
    identifiers.extend(participants(event));
    identifiers
}

/// Details of a message entry; messages are most of the traffic, so they skip
/// the intermediate JSON tree the other kinds build.
#[derive(serde::Serialize)]
struct MessageDetails<'a> {
    message_id: &'a str,
    author: crate::event::Author,
    author_name: Option<&'a str>,
}

impl<V: DirectoryView + ?Sized> Resolver<'_, V> {
    /// Every event about a conversation or a contact's details.
    pub(super) fn interaction(&mut self) -> StoreResult<Step> {
        let event = self.event;
        let tenant = event.tenant_id.clone();
        let operator_edit = matches!(event.body, EventBody::ContactCreated | EventBody::ContactUpdated { .. });
        let identity = provided_identity(event, &self.config);
        let name_source = if operator_edit
            || event.channel == Channel::Operator
            || event.identity.as_ref().and_then(|i| i.source) == Some(IdentitySource::Operator)
        {
            NameSource::Operator
        } else {
            NameSource::Guest
        };
        let (removed, set_name) = match &event.body {
            EventBody::ContactUpdated { set_name, remove, .. } => {
                let removed = remove.as_ref().map(|r| identity::normalize(r, &self.config).identifiers).unwrap_or_default();
                (removed, set_name.as_deref().and_then(identity::normalize_name))
            }
            _ => (Vec::new(), None),
        };
        let participants = participants(event);

        let session = match &event.session_id {
            Some(id) => {
                let record = self.view.session(&tenant, id)?.unwrap_or_default();
                if record.erased_at.is_some_and(|at| event.occurred_at < at) {
                    return Ok(Step::Skip(Skip::Erased));
                }
                Some((id.clone(), record))
            }
            None => None,
        };

        // The session's contact, if it has a live one. A session belongs to
        // one contact at a time: only a link, an unlink or a merge moves it.
        let mut session_erased = false;
        let session_contact = match session.as_ref().and_then(|(_, r)| r.contact_id.clone()) {
            Some(attached) => match self.follow(&attached)? {
                Target::Active(id) => Some(id),
                Target::Deleted(at) => {
                    session_erased = event.occurred_at < at;
                    None
                }
                Target::Unknown => None,
            },
            None => None,
        };

        // The contact, and the rule that found it (the session's provenance
        // when it attaches here).
        let mut target = None;
        let mut found_by = Rule::ExplicitContact;
        let (mut founded, mut found_by_session) = (false, false);
        if matches!(event.body, EventBody::ContactCreated) {
            // "+ Add client" always adds a contact (docs/contract.md 3.1).
            let id = match &event.contact_id {
                Some(explicit) => match self.follow(explicit)? {
                    Target::Active(_) => return Ok(Step::Reject(Unresolvable::ContactExists(explicit.clone()))),
                    Target::Deleted(at) if event.occurred_at < at => return Ok(Step::Skip(Skip::Erased)),
                    Target::Deleted(_) | Target::Unknown => explicit.clone(),
                },
                None => super::founded_contact_id(event),
            };
            self.create(id.clone());
            target = Some(id);
            (found_by, founded) = (Rule::FoundedContact, true);
        } else {
            // A conversation event or a session note goes to its session's
            // contact, whatever contact it names; an operator's edit to the
            // contact it names, else to its session's.
            let edit = matches!(event.body, EventBody::ContactUpdated { .. });
            for explicit_turn in [edit, !edit] {
                if target.is_some() {
                    break;
                }
                if explicit_turn {
                    let Some(explicit) = &event.contact_id else { continue };
                    match self.follow(explicit)? {
                        Target::Active(id) => target = Some(id),
                        Target::Deleted(at) if event.occurred_at < at => return Ok(Step::Skip(Skip::Erased)),
                        Target::Deleted(_) | Target::Unknown => {
                            return Ok(Step::Reject(Unresolvable::UnknownContact(explicit.clone())));
                        }
                    }
                } else if let Some(id) = &session_contact {
                    target = Some(id.clone());
                    found_by_session = true;
                } else if session_erased {
                    return Ok(Step::Skip(Skip::Erased));
                }
            }
        }
        // E-mail threads (docs/contract.md 3.6): the first participant already in the
        // directory takes the message; otherwise the first participant founds one.
        let mut founding = identity.clone();
        let mut founding_rule = Rule::FoundedContact;
        if target.is_none() {
            let own = identity.identifiers.len();
            for (n, identifier) in identity.identifiers.iter().chain(&participants).enumerate() {
                match self.lookup(identifier)? {
                    Lookup::Owner(id) => {
                        target = Some(id);
                        found_by = if n < own { Rule::OwnerOfIdentifier } else { Rule::EmailThread };
                        break;
                    }
                    Lookup::Erased => return Ok(Step::Skip(Skip::Erased)),
                    Lookup::Nobody => {}
                }
            }
        }
        if target.is_none() {
            let founds = if let Some(first) = participants.first().filter(|_| identity.strongest().is_none()) {
                founding = NormalizedIdentity { identifiers: vec![first.clone()], ..identity.clone() };
                founding_rule = Rule::EmailThread;
                true
            } else {
                identity.strongest().is_some()
            };
            if founds {
                let id = super::founded_contact_id(event);
                self.create(id.clone());
                target = Some(id);
                (found_by, founded) = (founding_rule, true);
            }
        }

        let Some(contact_id) = target else {
            // No strong identifier yet: the entries and identifiers wait for the
            // session to resolve.
            if let Some((session_id, mut record)) = session {
                let before = record.waiting_identifiers.len();
                for identifier in identity.identifiers {
                    if !record.waiting_identifiers.contains(&identifier) {
                        record.waiting_identifiers.push(identifier);
                    }
                }
                let entry = self.own_entry(Some(&session_id));
                let newly_pending = entry.is_some() && !record.has_pending;
                if record.waiting_identifiers.len() > before || newly_pending {
                    record.has_pending |= entry.is_some();
                    self.plan.mutations.push(Mutation::PutSession { session_id: session_id.clone(), record });
                }
                if let Some(entry) = entry {
                    self.plan.mutations.push(Mutation::PutPending { session_id, entry });
                }
            }
            return Ok(Step::Done);
        };

        let rule = if founded {
            founding_rule
        } else if operator_edit {
            Rule::OperatorAdd
        } else {
            Rule::UnownedIdentifier
        };
        let mut claims: Vec<(Identifier, Rule)> = founding.identifiers.into_iter().map(|i| (i, rule)).collect();
        // The session attaches here if it has no contact (or is re-pointed
        // here from a contact merged into this one); one attached elsewhere
        // stays there, and so do its entries.
        if session_contact.as_ref().is_some_and(|attached| *attached != contact_id) {
            self.entry_session = None;
        } else if let Some((session_id, mut record)) = session
            && record.contact_id.as_deref() != Some(contact_id.as_str())
        {
            claims.extend(record.waiting_identifiers.drain(..).map(|i| (i, Rule::WaitedInSession)));
            claims.sort_by_key(|(i, _)| i.kind);
            claims.dedup_by(|a, b| a.0 == b.0);
            // A session whose contact merged keeps how it first attached.
            self.attach_session(&session_id, record, &contact_id, Some(found_by).filter(|_| !found_by_session))?;
        }
        self.release_all(&contact_id, &removed)?;
        self.claim_all(&contact_id, &claims)?;
        if let Some(name) = identity.name.clone() {
            self.set_name(&contact_id, name, name_source);
        }
        if let Some(name) = set_name {
            self.set_name(&contact_id, name, NameSource::Operator);
        }
        let session = self.entry_session.clone();
        if let Some(entry) = self.own_entry(session.as_ref()) {
            self.append(&contact_id, entry);
        }
        Ok(Step::Done)
    }

    /// The timeline entry an interaction event itself makes, if any.
    pub(super) fn own_entry(&mut self, session_id: Option<&SessionId>) -> Option<TimelineEntry> {
        let event = self.event;
        let channel = event.channel;
        let (kind, text, details) = match &event.body {
            EventBody::SessionStarted { invited, direction } => {
                let how = if *invited { " by operator invitation" } else { "" };
                (
                    EntryKind::SessionStarted,
                    format!("{channel} session started{how}"),
                    Details::of(&json!({ "invited": invited, "direction": direction })),
                )
            }
            EventBody::MessagePosted { message_id, author, author_name, text } => (
                EntryKind::Message,
                text.clone(),
                Details::of(&MessageDetails { message_id, author: *author, author_name: author_name.as_deref() }),
            ),
            EventBody::SessionEnded { duration_ms } => {
                (EntryKind::SessionEnded, format!("{channel} session ended"), Details::of(&json!({ "duration_ms": duration_ms })))
            }
            EventBody::Email { direction, thread_id, message_id, subject, text, participants } => (
                EntryKind::Email,
                text.clone(),
                Details::of(&json!({
                    "direction": if *direction == EmailDirection::Sent { "sent" } else { "received" },
                    "thread_id": thread_id, "message_id": message_id, "subject": subject, "participants": participants,
                })),
            ),
            EventBody::CallEnded { direction, duration_ms, transcript } => (
                EntryKind::Call,
                transcript.clone().unwrap_or_default(),
                Details::of(&json!({ "direction": direction, "duration_ms": duration_ms })),
            ),
            EventBody::NoteAdded { note_id, author, text } => {
                (EntryKind::Note, text.clone(), Details::of(&json!({ "note_id": note_id, "author": author })))
            }
            _ => return None,
        };
        Some(self.entry(kind, session_id, text, details))
    }
}

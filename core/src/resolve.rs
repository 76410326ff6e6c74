//! Resolution (docs/contract.md section 3): decides which contact an event belongs to and
//! what changes, as a plan of mutations plus outbound changes. Pure: it reads
//! through `DirectoryView` and writes nothing, so it knows no Kafka and no SQL.

use std::collections::HashMap;

use serde_json::json;

use crate::event::{EmailDirection, Event, EventBody};
use crate::identity::{self, IdentitySource, NormalizedIdentity};
use crate::model::{
    CHANGE_SCHEMA_V1, Change, ChangeData, ChangeKind, Channel, Claim, Contact, ContactRecord, Details, EntryKind, Identifier,
    IdentifierKind, Limits, LinkedBy, NameField, NameSource, OwnedIdentifier, SessionRecord, TenantConfig, TimelineEntry,
    Timestamp, Version, derived_id,
};
use crate::store::{DirectoryView, Followed, Mutation, StoreResult, follow_merges};

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
    UnknownContact(String),
    /// The decoder refuses such events; resolution refuses them again rather
    /// than trust that.
    #[error("the event lacks the contact_id or session_id its type needs")]
    MissingTarget,
}

impl Unresolvable {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownContact(_) => "unknown_contact",
            Self::MissingTarget => "missing_field",
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
    let mut resolver =
        Resolver { event, view, config, limits: *limits, plan: Plan::default(), contacts: HashMap::new(), entries: 0 };
    resolver.plan.mutations.push(Mutation::MarkSeen { event_id: event.event_id.clone() });
    let step = match &event.body {
        EventBody::TenantConfigured { identifying_params, default_phone_region } => {
            resolver.configure(identifying_params, default_phone_region.as_deref())
        }
        EventBody::ContactDeleted => resolver.delete(),
        EventBody::SessionLinked => resolver.link(),
        EventBody::SessionUnlinked => resolver.unlink(),
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

enum Step {
    Done,
    Skip(Skip),
    Reject(Unresolvable),
}

enum Target {
    Active(String),
    Deleted(Timestamp),
    Unknown,
}

enum Lookup {
    Owner(String),
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
    contacts: HashMap<String, Contact>,
    entries: u32,
}

impl<V: DirectoryView + ?Sized> Resolver<'_, V> {
    fn tenant(&self) -> &str {
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

    /// Follows merge redirects to the live contact, if any.
    fn follow(&mut self, contact_id: &str) -> StoreResult<Target> {
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

    fn contact(&mut self, id: &str) -> &mut Contact {
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

    fn entry(&mut self, kind: EntryKind, session_id: Option<&str>, text: String, details: Details) -> TimelineEntry {
        let entry_id = match self.entries {
            0 => self.event.event_id.clone(),
            n => format!("{}#{n}", self.event.event_id),
        };
        self.entries += 1;
        TimelineEntry {
            entry_id,
            occurred_at: self.event.occurred_at,
            channel: self.event.channel,
            session_id: session_id.map(str::to_owned),
            kind,
            text,
            details,
        }
    }

    fn change(&mut self, contact_id: &str, kind: ChangeKind, data: ChangeData) {
        let n = self.plan.changes.len().to_string();
        let change_id = derived_id("chg-", &[self.tenant(), &self.event.event_id, &n]);
        self.plan.changes.push(Change {
            schema: CHANGE_SCHEMA_V1.to_owned(),
            change_id,
            tenant_id: self.event.tenant_id.clone(),
            contact_id: contact_id.to_owned(),
            kind,
            occurred_at: self.event.occurred_at,
            caused_by: self.event.event_id.clone(),
            data,
        });
    }

    fn append(&mut self, contact_id: &str, entry: TimelineEntry) {
        self.change(
            contact_id,
            ChangeKind::TimelineAppended,
            ChangeData { entry: Some(Box::new(entry.clone())), ..ChangeData::default() },
        );
        self.plan.mutations.push(Mutation::PutEntry { contact_id: contact_id.to_owned(), entry });
        self.plan.entries_appended += 1;
    }

    /// Records a change of contact details both as a change event and in the timeline.
    fn record(&mut self, contact_id: &str, change: ChangeKind, entry: EntryKind, text: String, details: ChangeData) {
        let entry_details = Details::of(&details);
        self.change(contact_id, change, details);
        let session = self.event.session_id.clone();
        let entry = self.entry(entry, session.as_deref(), text, entry_details);
        self.append(contact_id, entry);
    }

    fn create(&mut self, contact_id: String) {
        let contact = Contact { id: contact_id.clone(), name: None, identifiers: Vec::new(), created_at: self.event.occurred_at };
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

    fn attach_session(
        &mut self,
        session_id: &str,
        record: SessionRecord,
        contact_id: &str,
        by_operator: bool,
    ) -> StoreResult<()> {
        let tenant = self.tenant().to_owned();
        let had_pending = record.has_pending;
        self.plan.mutations.push(Mutation::PutSession {
            session_id: session_id.to_owned(),
            record: SessionRecord {
                contact_id: Some(contact_id.to_owned()),
                waiting_identifiers: Vec::new(),
                has_pending: false,
                ..record
            },
        });
        self.plan.mutations.push(Mutation::LinkSession { contact_id: contact_id.to_owned(), session_id: session_id.to_owned() });
        if had_pending {
            self.plan.mutations.push(Mutation::ClearPending { session_id: session_id.to_owned() });
            for entry in self.view.pending(&tenant, session_id)? {
                self.append(contact_id, entry);
            }
        }
        let by = if by_operator { LinkedBy::Operator } else { LinkedBy::Resolution };
        let data = ChangeData { session_id: Some(session_id.to_owned()), by: Some(by), ..ChangeData::default() };
        self.change(contact_id, ChangeKind::SessionLinked, data);
        if by_operator {
            let entry = self.entry(
                EntryKind::SessionLinked,
                None,
                format!("session {session_id} linked by an operator"),
                Details::of(&json!({ "session_id": session_id })),
            );
            self.append(contact_id, entry);
        }
        Ok(())
    }

    /// Attaches identifiers nobody owns; records a conflict for those owned by
    /// someone else (never moves them, docs/contract.md 3.4).
    fn claim_all(&mut self, contact_id: &str, identifiers: &[Identifier]) -> StoreResult<()> {
        let occurred_at = self.event.occurred_at;
        for identifier in identifiers {
            if self.contact(contact_id).owns(identifier) {
                continue;
            }
            let most = self.limits.identifiers_per_contact;
            if self.contact(contact_id).identifiers.len() >= most {
                let details = ChangeData { identifier: Some(identifier.to_string()), ..ChangeData::default() };
                let text = format!("{identifier} not added: the contact holds {most} identifiers, the most one contact may");
                self.record(contact_id, ChangeKind::IdentityConflict, EntryKind::IdentityConflict, text, details);
                continue;
            }
            match self.view.claim(self.tenant(), identifier)? {
                Some(Claim::Owned { contact_id: owner }) => {
                    if let Target::Active(owner) = self.follow(&owner)?
                        && owner != contact_id
                    {
                        let details = ChangeData {
                            identifier: Some(identifier.to_string()),
                            owner_contact_id: Some(owner.clone()),
                            ..ChangeData::default()
                        };
                        let text = format!("{identifier} belongs to contact {owner}; left there for an operator to settle");
                        self.record(contact_id, ChangeKind::IdentityConflict, EntryKind::IdentityConflict, text, details);
                        continue;
                    }
                }
                // Removed or erased after this event happened: a late event must
                // not bring it back (last writer wins).
                Some(Claim::Released { at, .. }) if occurred_at < at => continue,
                _ => {}
            }
            self.plan.mutations.push(Mutation::SetClaim {
                identifier: identifier.clone(),
                claim: Claim::Owned { contact_id: contact_id.to_owned() },
            });
            self.contact(contact_id).identifiers.push(OwnedIdentifier { identifier: identifier.clone(), added_at: occurred_at });
            let details = ChangeData { identifier: Some(identifier.to_string()), ..ChangeData::default() };
            self.record(
                contact_id,
                ChangeKind::IdentifierAdded,
                EntryKind::IdentifierAdded,
                format!("{identifier} added"),
                details,
            );
        }
        Ok(())
    }

    fn release_all(&mut self, contact_id: &str, identifiers: &[Identifier]) {
        let occurred_at = self.event.occurred_at;
        for identifier in identifiers {
            let contact = self.contact(contact_id);
            let Some(position) =
                contact.identifiers.iter().position(|o| &o.identifier == identifier && o.added_at <= occurred_at)
            else {
                continue;
            };
            contact.identifiers.remove(position);
            self.plan.mutations.push(Mutation::SetClaim {
                identifier: identifier.clone(),
                claim: Claim::Released { at: occurred_at, erased: false },
            });
            let details = ChangeData { identifier: Some(identifier.to_string()), ..ChangeData::default() };
            self.record(
                contact_id,
                ChangeKind::IdentifierRemoved,
                EntryKind::IdentifierRemoved,
                format!("{identifier} removed"),
                details,
            );
        }
    }

    fn set_name(&mut self, contact_id: &str, value: String, source: NameSource) {
        let field = NameField { value, source, version: self.version() };
        if !field.supersedes(self.contact(contact_id).name.as_ref()) {
            return;
        }
        let text = format!("name set to {}", field.value);
        let details = ChangeData { name: Some(field.value.clone()), set_by: Some(source), ..ChangeData::default() };
        self.contact(contact_id).name = Some(field);
        self.record(contact_id, ChangeKind::ContactUpdated, EntryKind::NameSet, text, details);
    }

    /// Every event about a conversation or a contact's details.
    fn interaction(&mut self) -> StoreResult<Step> {
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

        let mut target = None;
        if let Some(explicit) = &event.contact_id {
            match self.follow(explicit)? {
                Target::Active(id) => target = Some(id),
                Target::Deleted(at) if event.occurred_at < at => return Ok(Step::Skip(Skip::Erased)),
                Target::Deleted(_) | Target::Unknown if matches!(event.body, EventBody::ContactCreated) => {
                    self.create(explicit.clone());
                    target = Some(explicit.clone());
                }
                Target::Deleted(_) | Target::Unknown => return Ok(Step::Reject(Unresolvable::UnknownContact(explicit.clone()))),
            }
        }
        if target.is_none()
            && let Some(attached) = session.as_ref().and_then(|(_, r)| r.contact_id.clone())
        {
            match self.follow(&attached)? {
                Target::Active(id) => target = Some(id),
                Target::Deleted(at) if event.occurred_at < at => return Ok(Step::Skip(Skip::Erased)),
                Target::Deleted(_) | Target::Unknown => {}
            }
        }
        // E-mail threads (docs/contract.md 3.6): the first participant already in the
        // directory takes the message; otherwise the first participant founds one.
        let mut founding = identity.clone();
        if target.is_none() {
            for identifier in identity.identifiers.iter().chain(&participants) {
                match self.lookup(identifier)? {
                    Lookup::Owner(id) => {
                        target = Some(id);
                        break;
                    }
                    Lookup::Erased => return Ok(Step::Skip(Skip::Erased)),
                    Lookup::Nobody => {}
                }
            }
        }
        if target.is_none() {
            let founder = if matches!(event.body, EventBody::ContactCreated) {
                Some(derived_id("c-", &[&tenant, &event.event_id]))
            } else if let Some(first) = participants.first().filter(|_| identity.strongest().is_none()) {
                founding = NormalizedIdentity { identifiers: vec![first.clone()], ..identity.clone() };
                Some(derived_id("c-", &[&tenant, &event.event_id]))
            } else {
                identity.strongest().map(|_| derived_id("c-", &[&tenant, &event.event_id]))
            };
            if let Some(id) = founder {
                self.create(id.clone());
                target = Some(id);
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

        let mut claims = founding.identifiers;
        if let Some((session_id, mut record)) = session
            && record.contact_id.as_deref() != Some(contact_id.as_str())
        {
            claims.append(&mut record.waiting_identifiers);
            claims.sort_by_key(|i| i.kind);
            claims.dedup();
            self.attach_session(&session_id, record, &contact_id, false)?;
        }
        self.release_all(&contact_id, &removed);
        self.claim_all(&contact_id, &claims)?;
        if let Some(name) = identity.name.clone() {
            self.set_name(&contact_id, name, name_source);
        }
        if let Some(name) = set_name {
            self.set_name(&contact_id, name, NameSource::Operator);
        }
        if let Some(entry) = self.own_entry(event.session_id.as_deref()) {
            self.append(&contact_id, entry);
        }
        Ok(Step::Done)
    }

    /// The timeline entry an interaction event itself makes, if any.
    fn own_entry(&mut self, session_id: Option<&str>) -> Option<TimelineEntry> {
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

    fn link(&mut self) -> StoreResult<Step> {
        let event = self.event;
        let tenant = event.tenant_id.clone();
        let (Some(session_id), Some(contact_id)) = (&event.session_id, &event.contact_id) else {
            return Ok(Step::Reject(Unresolvable::MissingTarget));
        };
        let into = match self.follow(contact_id)? {
            Target::Active(id) => id,
            Target::Deleted(at) if event.occurred_at < at => return Ok(Step::Skip(Skip::Erased)),
            _ => return Ok(Step::Reject(Unresolvable::UnknownContact(contact_id.clone()))),
        };
        let record = self.view.session(&tenant, session_id)?.unwrap_or_default();
        if record.erased_at.is_some_and(|at| event.occurred_at < at) {
            return Ok(Step::Skip(Skip::Erased));
        }
        let current = match &record.contact_id {
            Some(current) => match self.follow(current)? {
                Target::Active(id) => Some(id),
                _ => None,
            },
            None => None,
        };
        match current {
            Some(current) if current == into => {}
            Some(current) => self.merge(&current, &into, session_id)?,
            None => {
                // The session resolves here: what it waited with attaches as
                // on any other resolution (docs/contract.md 3.3 and 3.4).
                let waiting = record.waiting_identifiers.clone();
                self.attach_session(session_id, record, &into, true)?;
                self.claim_all(&into, &waiting)?;
            }
        }
        Ok(Step::Done)
    }

    /// Merges `from` into `into` (docs/contract.md 3.7): identifiers, sessions and timeline
    /// move; `from` becomes a redirect.
    fn merge(&mut self, from: &str, into: &str, session_id: &str) -> StoreResult<()> {
        let tenant = self.tenant().to_owned();
        let merged = self.contacts.remove(from).expect("loaded by follow");
        for owned in &merged.identifiers {
            self.plan.mutations.push(Mutation::SetClaim {
                identifier: owned.identifier.clone(),
                claim: Claim::Owned { contact_id: into.to_owned() },
            });
        }
        let target = self.contact(into);
        for owned in merged.identifiers {
            if !target.owns(&owned.identifier) {
                target.identifiers.push(owned);
            }
        }
        if let Some(name) = merged.name
            && name.supersedes(target.name.as_ref())
        {
            target.name = Some(name);
        }
        target.created_at = target.created_at.min(merged.created_at);
        for session in self.view.contact_sessions(&tenant, from)? {
            self.plan.mutations.push(Mutation::UnlinkSession { contact_id: from.to_owned(), session_id: session.clone() });
            self.plan.mutations.push(Mutation::LinkSession { contact_id: into.to_owned(), session_id: session.clone() });
            self.plan.mutations.push(Mutation::PutSession {
                session_id: session,
                record: SessionRecord { contact_id: Some(into.to_owned()), ..SessionRecord::default() },
            });
        }
        for entry in self.view.timeline(&tenant, from, None, usize::MAX)? {
            self.plan.mutations.push(Mutation::PutEntry { contact_id: into.to_owned(), entry });
        }
        self.plan.mutations.push(Mutation::DeleteTimeline { contact_id: from.to_owned() });
        self.plan
            .mutations
            .push(Mutation::PutContact { contact_id: from.to_owned(), record: ContactRecord::Merged { into: into.to_owned() } });
        let linked =
            ChangeData { session_id: Some(session_id.to_owned()), by: Some(LinkedBy::Operator), ..ChangeData::default() };
        self.change(into, ChangeKind::SessionLinked, linked);
        let details = ChangeData {
            merged_contact_id: Some(from.to_owned()),
            session_id: Some(session_id.to_owned()),
            ..ChangeData::default()
        };
        self.record(
            into,
            ChangeKind::ContactMerged,
            EntryKind::ContactMerged,
            format!("contact {from} merged into this contact"),
            details,
        );
        Ok(())
    }

    fn unlink(&mut self) -> StoreResult<Step> {
        let event = self.event;
        let tenant = event.tenant_id.clone();
        let Some(session_id) = event.session_id.clone() else { return Ok(Step::Reject(Unresolvable::MissingTarget)) };
        let Some(record) = self.view.session(&tenant, &session_id)? else { return Ok(Step::Done) };
        let Some(attached) = record.contact_id.clone() else { return Ok(Step::Done) };
        let Target::Active(contact_id) = self.follow(&attached)? else { return Ok(Step::Done) };
        let moved: Vec<TimelineEntry> = self
            .view
            .timeline(&tenant, &contact_id, None, usize::MAX)?
            .into_iter()
            .filter(|e| e.session_id.as_deref() == Some(session_id.as_str()))
            .collect();
        let has_pending = record.has_pending || !moved.is_empty();
        for entry in moved {
            self.plan.mutations.push(Mutation::DeleteEntry {
                contact_id: contact_id.clone(),
                occurred_at: entry.occurred_at,
                entry_id: entry.entry_id.clone(),
            });
            self.plan.mutations.push(Mutation::PutPending { session_id: session_id.clone(), entry });
        }
        self.plan.mutations.push(Mutation::PutSession {
            session_id: session_id.clone(),
            record: SessionRecord { contact_id: None, has_pending, ..record },
        });
        self.plan.mutations.push(Mutation::UnlinkSession { contact_id: contact_id.clone(), session_id: session_id.clone() });
        self.change(
            &contact_id,
            ChangeKind::SessionUnlinked,
            ChangeData { session_id: Some(session_id.clone()), ..ChangeData::default() },
        );
        let entry = self.entry(
            EntryKind::SessionUnlinked,
            None,
            format!("session {session_id} disconnected by an operator"),
            Details::of(&json!({ "session_id": session_id })),
        );
        self.append(&contact_id, entry);
        Ok(Step::Done)
    }

    /// Erases a contact (docs/contract.md 3.8), named by `contact_id` or as the
    /// contact of `session_id`, and leaves tombstones so that older events
    /// cannot bring any of it back. A session not attached to any contact is
    /// erased itself: its waiting entries and identifiers.
    fn delete(&mut self) -> StoreResult<Step> {
        let event = self.event;
        let tenant = event.tenant_id.clone();
        let at = event.occurred_at;
        let requested = match (&event.contact_id, &event.session_id) {
            (Some(contact_id), _) => contact_id.clone(),
            (None, Some(session_id)) => match self.view.session(&tenant, session_id)?.and_then(|record| record.contact_id) {
                Some(contact_id) => contact_id,
                None => {
                    self.plan.mutations.push(Mutation::PutSession {
                        session_id: session_id.clone(),
                        record: SessionRecord { erased_at: Some(at), ..SessionRecord::default() },
                    });
                    self.plan.mutations.push(Mutation::ClearPending { session_id: session_id.clone() });
                    return Ok(Step::Done);
                }
            },
            (None, None) => return Ok(Step::Reject(Unresolvable::MissingTarget)),
        };
        let contact_id = match self.follow(&requested)? {
            Target::Active(id) => id,
            Target::Deleted(_) => return Ok(Step::Done),
            Target::Unknown => {
                // Deleted before we saw it created: the tombstone stops the late create.
                self.plan.mutations.push(Mutation::PutContact { contact_id: requested, record: ContactRecord::Deleted { at } });
                return Ok(Step::Done);
            }
        };
        let contact = self.contacts.remove(&contact_id).expect("loaded by follow");
        for owned in contact.identifiers {
            self.plan
                .mutations
                .push(Mutation::SetClaim { identifier: owned.identifier, claim: Claim::Released { at, erased: true } });
        }
        for session in self.view.contact_sessions(&tenant, &contact_id)? {
            self.plan.mutations.push(Mutation::UnlinkSession { contact_id: contact_id.clone(), session_id: session.clone() });
            self.plan.mutations.push(Mutation::PutSession {
                session_id: session.clone(),
                record: SessionRecord { erased_at: Some(at), ..SessionRecord::default() },
            });
            self.plan.mutations.push(Mutation::ClearPending { session_id: session });
        }
        self.plan.mutations.push(Mutation::DeleteTimeline { contact_id: contact_id.clone() });
        self.plan.mutations.push(Mutation::PutContact { contact_id: contact_id.clone(), record: ContactRecord::Deleted { at } });
        self.change(&contact_id, ChangeKind::ContactDeleted, ChangeData::default());
        Ok(Step::Done)
    }

    /// Writes the touched contacts once and stamps the last contact change of
    /// each with its state after the event (docs/contract.md 5): once, not per
    /// change, so an event's changes grow with what it changed, not with that
    /// times the contact's size.
    fn finish(mut self) -> Plan {
        for (id, contact) in &self.contacts {
            let Some(last) = self.plan.changes.iter_mut().rev().find(|c| &c.contact_id == id && carries_state(c.kind)) else {
                continue;
            };
            last.data.contact = Some(Box::new(contact.state()));
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

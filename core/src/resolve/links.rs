//! Sessions and contacts joined and parted (docs/contract.md 3.3 and 3.7): a
//! session attached to the contact it resolves to, an operator's link (a merge
//! when the session had a contact already), an operator's merge, and unlink.
//! A merge carries every identifier's and session's provenance along, with
//! the merge added to it.

use serde_json::json;

use super::{Resolver, Skip, Step, Target, Unresolvable};
use crate::event::ContactRef;
use crate::model::{
    ChangeData, ChangeKind, Claim, ContactId, ContactRecord, Details, EntryKind, LinkedBy, MergeStep, MergedBy, Provenance, Rule,
    SessionId, SessionRecord, TimelineEntry,
};
use crate::store::{DirectoryView, Mutation, StoreResult};

impl<V: DirectoryView + ?Sized> Resolver<'_, V> {
    /// Attaches `session_id` to `contact_id` with what waited in it, recording
    /// `rule` as how it came (or, given none, keeping how it first attached:
    /// a session re-attached after its contact merged).
    pub(super) fn attach_session(
        &mut self,
        session_id: &SessionId,
        record: SessionRecord,
        contact_id: &ContactId,
        rule: Option<Rule>,
    ) -> StoreResult<()> {
        let tenant = self.tenant().clone();
        let by_operator = rule == Some(Rule::OperatorLink);
        let had_pending = record.has_pending;
        let attached_by = match rule {
            Some(rule) => {
                Some(Provenance { rule, event_id: self.event.event_id.clone(), at: self.event.occurred_at, merges: Vec::new() })
            }
            None => record.attached_by.clone(),
        };
        self.plan.mutations.push(Mutation::PutSession {
            session_id: session_id.clone(),
            record: SessionRecord {
                contact_id: Some(contact_id.clone()),
                waiting_identifiers: Vec::new(),
                has_pending: false,
                attached_by,
                ..record
            },
        });
        self.plan.mutations.push(Mutation::LinkSession { contact_id: contact_id.clone(), session_id: session_id.clone() });
        if had_pending {
            self.plan.mutations.push(Mutation::ClearPending { session_id: session_id.clone() });
            for entry in self.view.pending(&tenant, session_id)? {
                self.append(contact_id, entry);
            }
        }
        let by = if by_operator { LinkedBy::Operator } else { LinkedBy::Resolution };
        let data = ChangeData { session_id: Some(session_id.clone()), by: Some(by), ..ChangeData::default() };
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

    /// An operator links `session_id` to `contact_id`: the session attaches,
    /// or its contact merges into that one.
    pub(super) fn link(&mut self, session_id: &SessionId, contact_id: &ContactId) -> StoreResult<Step> {
        let event = self.event;
        let tenant = event.tenant_id.clone();
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
            Some(current) => self.merge(&current, &into, Some(session_id))?,
            None => {
                // The session resolves here: what it waited with attaches as
                // on any other resolution (docs/contract.md 3.3 and 3.4).
                let waiting: Vec<_> = record.waiting_identifiers.iter().map(|i| (i.clone(), Rule::WaitedInSession)).collect();
                self.attach_session(session_id, record, &into, Some(Rule::OperatorLink))?;
                self.claim_all(&into, &waiting)?;
            }
        }
        Ok(Step::Done)
    }

    /// An operator merges `from` into the contact `into` names
    /// (`contact.merged`), with a link's effects (docs/contract.md 3.7).
    pub(super) fn merge_contacts(&mut self, into: &ContactRef, from: &ContactId) -> StoreResult<Step> {
        let event = self.event;
        let named = match self.named_contact(into)? {
            Ok(contact_id) => contact_id,
            Err(session_id) => return Ok(Step::Reject(Unresolvable::NoContact(session_id.clone()))),
        };
        let mut live = Vec::with_capacity(2);
        for id in [&named, from] {
            match self.follow(id)? {
                Target::Active(id) => live.push(id),
                Target::Deleted(at) if event.occurred_at < at => return Ok(Step::Skip(Skip::Erased)),
                _ => return Ok(Step::Reject(Unresolvable::UnknownContact(id.clone()))),
            }
        }
        if live[0] != live[1] {
            self.merge(&live[1], &live[0], None)?;
        }
        Ok(Step::Done)
    }

    /// Merges `from` into `into` (docs/contract.md 3.7): identifiers, sessions and timeline
    /// move, each with the merge added to its provenance; `from` becomes a
    /// redirect. An operator's link of `session_id` causes it, or else an
    /// operator's merge.
    pub(super) fn merge(&mut self, from: &ContactId, into: &ContactId, session_id: Option<&SessionId>) -> StoreResult<()> {
        let tenant = self.tenant().clone();
        let by = if session_id.is_some() { MergedBy::SessionLinked } else { MergedBy::ContactMerged };
        let step =
            MergeStep { from_contact_id: from.clone(), event_id: self.event.event_id.clone(), at: self.event.occurred_at, by };
        self.settle_merged(from, into)?;
        let mut merged = self.contacts.remove(from).expect("loaded by follow");
        for owned in &mut merged.identifiers {
            if let Some(provenance) = &mut owned.by {
                provenance.merges.push(step.clone());
            }
        }
        for owned in &merged.identifiers {
            self.plan.mutations.push(Mutation::SetClaim {
                identifier: owned.identifier.clone(),
                claim: Claim::Owned { contact_id: into.clone() },
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
        target.conflicts.append(&mut merged.conflicts);
        for session in self.view.contact_sessions(&tenant, from)? {
            let mut attached_by = self.view.session(&tenant, &session)?.and_then(|record| record.attached_by);
            if let Some(provenance) = &mut attached_by {
                provenance.merges.push(step.clone());
            }
            self.plan.mutations.push(Mutation::UnlinkSession { contact_id: from.clone(), session_id: session.clone() });
            self.plan.mutations.push(Mutation::LinkSession { contact_id: into.clone(), session_id: session.clone() });
            self.plan.mutations.push(Mutation::PutSession {
                session_id: session,
                record: SessionRecord { contact_id: Some(into.clone()), attached_by, ..SessionRecord::default() },
            });
        }
        for entry in self.view.timeline(&tenant, from, None, usize::MAX)? {
            self.plan.mutations.push(Mutation::PutEntry { contact_id: into.clone(), entry });
        }
        self.plan.mutations.push(Mutation::DeleteTimeline { contact_id: from.clone() });
        self.plan
            .mutations
            .push(Mutation::PutContact { contact_id: from.clone(), record: ContactRecord::Merged { into: into.clone() } });
        if let Some(session_id) = session_id {
            let linked =
                ChangeData { session_id: Some(session_id.clone()), by: Some(LinkedBy::Operator), ..ChangeData::default() };
            self.change(into, ChangeKind::SessionLinked, linked);
        }
        let details =
            ChangeData { merged_contact_id: Some(from.clone()), session_id: session_id.cloned(), ..ChangeData::default() };
        self.record(
            into,
            ChangeKind::ContactMerged,
            EntryKind::ContactMerged,
            format!("contact {from} merged into this contact"),
            details,
        );
        Ok(())
    }

    /// An operator parts `session_id` from its contact: the session's entries
    /// wait in it again.
    pub(super) fn unlink(&mut self, session_id: &SessionId) -> StoreResult<Step> {
        let tenant = self.event.tenant_id.clone();
        let Some(record) = self.view.session(&tenant, session_id)? else { return Ok(Step::Done) };
        let Some(attached) = record.contact_id.clone() else { return Ok(Step::Done) };
        let Target::Active(contact_id) = self.follow(&attached)? else { return Ok(Step::Done) };
        let moved: Vec<TimelineEntry> = self
            .view
            .timeline(&tenant, &contact_id, None, usize::MAX)?
            .into_iter()
            .filter(|e| e.session_id.as_ref() == Some(session_id))
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
            record: SessionRecord { contact_id: None, has_pending, attached_by: None, ..record },
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
}

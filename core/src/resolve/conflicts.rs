//! Identity conflicts (docs/contract.md 3.4): raised when a contact claims an
//! identifier another owns, closed by the event that dismisses or settles
//! them. Both parties' contact records list the open conflicts they are party
//! to, so the event that merges, erases or releases a party finds what it
//! settles among records it reads anyway, and records the closing: a closed
//! conflict never opens again, whoever holds the identifier later.

use super::{Resolver, Step, Target, Unresolvable};
use crate::model::{
    ChangeData, ChangeKind, ClosedBy, Closure, ConflictLink, ConflictRecord, ConflictRole, ContactId, EntryKind, Identifier,
    derived_id,
};
use crate::store::{DirectoryView, Mutation, StoreResult};

impl<V: DirectoryView + ?Sized> Resolver<'_, V> {
    /// Records an identity conflict: a change, a timeline entry and a record
    /// in the review queue, all naming the conflict's id (derived from the
    /// tenant, the event and the identifier, so a redelivery raises the same
    /// one), and lists it in both parties' records.
    pub(super) fn raise_conflict(
        &mut self,
        claimant: &ContactId,
        identifier: &Identifier,
        owner: Option<ContactId>,
        text: String,
    ) {
        let event = self.event;
        let value = identifier.to_string();
        let conflict_id = derived_id("cf-", &[&event.tenant_id, &event.event_id, &value]);
        let record = ConflictRecord {
            conflict_id: conflict_id.clone(),
            identifier: identifier.clone(),
            owner_contact_id: owner.clone(),
            claimant_contact_id: claimant.clone(),
            session_id: event.session_id.clone(),
            event_id: event.event_id.clone(),
            raised_at: event.occurred_at,
            closed: None,
            closure_recorded: true,
        };
        self.plan.mutations.push(Mutation::PutConflict(record.clone()));
        if let Some(owner) = &owner {
            let link = ConflictLink { role: ConflictRole::Owner, conflict: record.clone() };
            self.contact(owner).conflicts.push(link);
            self.touched.insert(owner.clone());
        }
        self.contact(claimant).conflicts.push(ConflictLink { role: ConflictRole::Claimant, conflict: record });
        self.touched.insert(claimant.clone());
        let details = ChangeData {
            identifier: Some(value),
            owner_contact_id: owner,
            conflict_id: Some(conflict_id),
            ..ChangeData::default()
        };
        self.record(claimant, ChangeKind::IdentityConflict, EntryKind::IdentityConflict, text, details);
    }

    /// An operator leaves a conflict as it is (`conflict.dismissed`): the
    /// queue no longer lists it. Dismissing it again changes nothing.
    pub(super) fn dismiss_conflict(&mut self, conflict_id: &str) -> StoreResult<Step> {
        let Some(record) = self.view.conflict(&self.event.tenant_id, conflict_id)? else {
            return Ok(Step::Reject(Unresolvable::UnknownConflict(conflict_id.to_owned())));
        };
        if record.closed.is_none() {
            self.close(record, ClosedBy::Dismissed)?;
        }
        Ok(Step::Done)
    }

    /// Closes the open conflicts `contact_id` is party to for which `settles`
    /// gives a reason.
    pub(super) fn settle(
        &mut self,
        contact_id: &ContactId,
        settles: impl Fn(&ConflictLink) -> Option<ClosedBy>,
    ) -> StoreResult<()> {
        let settled: Vec<(ConflictRecord, ClosedBy)> = self
            .contact(contact_id)
            .conflicts
            .iter()
            .filter_map(|link| settles(link).map(|reason| (link.conflict.clone(), reason)))
            .collect();
        for (conflict, reason) in settled {
            self.close(conflict, reason)?;
        }
        Ok(())
    }

    /// `from` merges into `into`: the conflicts between them close. Called
    /// while `from` is still a working copy, so that following a party that
    /// redirects to it stops there.
    pub(super) fn settle_merged(&mut self, from: &ContactId, into: &ContactId) -> StoreResult<()> {
        let links = self.contact(from).conflicts.clone();
        for link in links {
            let Some(other) = link.other() else { continue };
            if let Target::Active(other) = self.follow(other)?
                && (other == *into || other == *from)
            {
                self.close(link.conflict, ClosedBy::Merged)?;
            }
        }
        Ok(())
    }

    /// Records `conflict`'s closing by this event and takes it off both
    /// parties' lists (as merges left them).
    fn close(&mut self, conflict: ConflictRecord, reason: ClosedBy) -> StoreResult<()> {
        let parties = [Some(&conflict.claimant_contact_id), conflict.owner_contact_id.as_ref()];
        for party in parties.into_iter().flatten() {
            if let Target::Active(id) = self.follow(party)? {
                let contact = self.contact(&id);
                let before = contact.conflicts.len();
                contact.conflicts.retain(|link| link.conflict.conflict_id != conflict.conflict_id);
                if contact.conflicts.len() != before {
                    self.touched.insert(id);
                }
            }
        }
        let closure = Closure { event_id: self.event.event_id.clone(), at: self.event.occurred_at, reason };
        self.plan.mutations.push(Mutation::PutConflict(ConflictRecord { closed: Some(closure), ..conflict }));
        Ok(())
    }
}

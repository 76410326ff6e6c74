//! A contact's details (docs/contract.md 3.4 and 3.5): identifiers claimed
//! and released, and names, as interactions and operators' edits change them.

use super::{Resolver, Target};
use crate::model::{
    ChangeData, ChangeKind, Claim, ClosedBy, ConflictRole, ContactId, EntryKind, Identifier, NameField, NameSource,
    OwnedIdentifier, Provenance, Rule,
};
use crate::store::{DirectoryView, Mutation, StoreResult};

impl<V: DirectoryView + ?Sized> Resolver<'_, V> {
    /// Attaches identifiers nobody owns, each with the rule that brings it
    /// (its provenance); raises a conflict for those owned by someone else
    /// (never moves them, docs/contract.md 3.4).
    pub(super) fn claim_all(&mut self, contact_id: &ContactId, identifiers: &[(Identifier, Rule)]) -> StoreResult<()> {
        let occurred_at = self.event.occurred_at;
        for (identifier, rule) in identifiers {
            if self.contact(contact_id).owns(identifier) {
                continue;
            }
            let most = self.limits.identifiers_per_contact;
            if self.contact(contact_id).identifiers.len() >= most {
                let text = format!("{identifier} not added: the contact holds {most} identifiers, the most one contact may");
                self.raise_conflict(contact_id, identifier, None, text);
                continue;
            }
            match self.view.claim(self.tenant(), identifier)? {
                Some(Claim::Owned { contact_id: owner }) => {
                    if let Target::Active(owner) = self.follow(&owner)?
                        && owner != *contact_id
                    {
                        let text = format!("{identifier} belongs to contact {owner}; left there for an operator to settle");
                        self.raise_conflict(contact_id, identifier, Some(owner), text);
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
                claim: Claim::Owned { contact_id: contact_id.clone() },
            });
            let by = Provenance { rule: *rule, event_id: self.event.event_id.clone(), at: occurred_at, merges: Vec::new() };
            let owned = OwnedIdentifier { identifier: identifier.clone(), added_at: occurred_at, by: Some(by) };
            self.contact(contact_id).identifiers.push(owned);
            // A conflict it raised over the identifier at its limit is settled.
            self.settle(contact_id, |link| {
                (link.role == ConflictRole::Claimant && link.conflict.identifier == *identifier).then_some(ClosedBy::Claimed)
            })?;
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

    /// Releases identifiers the contact holds (an operator's removal); the
    /// conflicts raised over them against it are settled.
    pub(super) fn release_all(&mut self, contact_id: &ContactId, identifiers: &[Identifier]) -> StoreResult<()> {
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
            self.settle(contact_id, |link| {
                (link.role == ConflictRole::Owner && link.conflict.identifier == *identifier).then_some(ClosedBy::Released)
            })?;
            let details = ChangeData { identifier: Some(identifier.to_string()), ..ChangeData::default() };
            self.record(
                contact_id,
                ChangeKind::IdentifierRemoved,
                EntryKind::IdentifierRemoved,
                format!("{identifier} removed"),
                details,
            );
        }
        Ok(())
    }

    pub(super) fn set_name(&mut self, contact_id: &ContactId, value: String, source: NameSource) {
        let field = NameField { value, source, version: self.version() };
        if !field.supersedes(self.contact(contact_id).name.as_ref()) {
            return;
        }
        let text = format!("name set to {}", field.value);
        let details = ChangeData { name: Some(field.value.clone()), set_by: Some(source), ..ChangeData::default() };
        self.contact(contact_id).name = Some(field);
        self.record(contact_id, ChangeKind::ContactUpdated, EntryKind::NameSet, text, details);
    }
}

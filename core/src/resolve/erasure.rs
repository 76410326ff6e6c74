//! Erasure (docs/contract.md 3.8): `contact.deleted` removes a contact, its
//! sessions' waiting entries and its identifiers, and leaves tombstones.

use super::{Resolver, Step, Target};
use crate::event::ContactRef;
use crate::model::{ChangeData, ChangeKind, Claim, ClosedBy, ConflictRole, ContactRecord, SessionRecord};
use crate::store::{DirectoryView, Mutation, StoreResult};

impl<V: DirectoryView + ?Sized> Resolver<'_, V> {
    /// Erases a contact (docs/contract.md 3.8), named by its id or as the
    /// contact of a session, and leaves tombstones so that older events
    /// cannot bring any of it back. A session not attached to any contact is
    /// erased itself: its waiting entries and identifiers.
    pub(super) fn delete(&mut self, target: &ContactRef) -> StoreResult<Step> {
        let event = self.event;
        let tenant = event.tenant_id.clone();
        let at = event.occurred_at;
        let requested = match self.named_contact(target)? {
            Ok(contact_id) => contact_id,
            Err(session_id) => {
                self.plan.mutations.push(Mutation::PutSession {
                    session_id: session_id.clone(),
                    record: SessionRecord { erased_at: Some(at), ..SessionRecord::default() },
                });
                self.plan.mutations.push(Mutation::ClearPending { session_id: session_id.clone() });
                return Ok(Step::Done);
            }
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
        // Every conflict it is party to is settled: as claimant it is erased,
        // as owner it no longer holds the identifier.
        self.settle(&contact_id, |link| {
            Some(match link.role {
                ConflictRole::Claimant => ClosedBy::ClaimantErased,
                ConflictRole::Owner => ClosedBy::Released,
            })
        })?;
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
}

//! The in-memory store of the core (`contactd_core::memory`), with the outbox
//! the publish seam reads: the backend the rule tests run on.

pub use contactd_core::memory::MemoryStore;

use super::{StoreResult, to_json};
use crate::publish::{EncodedUnit, Outbox};

impl Outbox for MemoryStore {
    fn unit(&self, seq: u64) -> StoreResult<Option<EncodedUnit>> {
        let Some(changes) = self.unit_changes(seq) else { return Ok(None) };
        let text: String = changes.iter().map(|change| to_json(change) + "\n").collect();
        EncodedUnit::parse(seq, text).map(Some)
    }

    fn forget_unit(&mut self, seq: u64) -> StoreResult<()> {
        MemoryStore::forget_unit(self, seq);
        Ok(())
    }
}

//! The publish seam: where change events and dead letters go once an event's
//! effects are durable. Embedded runs keep changes in the store's outbox, which
//! the in-process indexer tails; dead letters go to a JSONL file.

pub mod jsonl;
pub mod kafka;

use crate::model::Change;
use crate::store::StoreResult;

/// Receives the change events of applied events, in processing order.
pub trait ChangeSink {
    fn publish(&mut self, changes: &[Change]) -> StoreResult<()>;
    /// The log position the open write unit's changes will be committed under.
    fn open_unit(&self) -> Option<u64>;
}

/// The changes of one write unit, in order, under the unit's log position.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeUnit {
    pub seq: u64,
    pub changes: Vec<Change>,
}

/// Changes kept with the effects they describe until a publisher has delivered
/// them: what the worker needs from every store.
pub trait Outbox {
    /// One unit, unless it was forgotten.
    fn unit(&self, seq: u64) -> StoreResult<Option<ChangeUnit>>;
    /// Forgets one unit once its changes are delivered elsewhere (the worker's
    /// broker), leaving the others for their own publishers.
    fn forget_unit(&mut self, seq: u64) -> StoreResult<()>;
}

/// An outbox that is also a durable, ordered log a consumer reads by position:
/// how the embedded runs feed their in-process indexer. Consumers record
/// positions of whole units only.
pub trait ChangeLog: Outbox {
    /// Up to `max_units` units after position `after`, oldest first.
    fn read_after(&self, after: u64, max_units: usize) -> StoreResult<Vec<ChangeUnit>>;
    /// Forgets units every consumer has made durable.
    fn trim_through(&mut self, seq: u64) -> StoreResult<()>;
}

/// Where an input that cannot be processed goes, unchanged, with why and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    pub payload: &'a [u8],
    pub reason: &'static str,
    pub detail: String,
    pub origin: &'a crate::source::Origin,
}

pub trait DeadLetterSink {
    fn send(&mut self, letter: DeadLetter<'_>) -> std::io::Result<()>;
    /// Makes everything sent so far durable.
    fn flush(&mut self) -> std::io::Result<()>;
}

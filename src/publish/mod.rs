//! The publish seam: where change events and dead letters go once an event's
//! effects are durable. Embedded runs keep changes in the store's outbox, which
//! the in-process indexer tails; dead letters go to a JSONL file.

pub mod feed;
pub mod jsonl;
pub mod kafka;

use crate::model::Change;
pub use contactd_core::store::ChangeSink;
use contactd_core::store::{StoreError, StoreResult};

/// The changes of one write unit, in order, under the unit's log position.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeUnit {
    pub seq: u64,
    pub changes: Vec<Change>,
}

/// The changes of one write unit as the store keeps them, one JSON object a
/// line, each with its Kafka key (`tenant_id/contact_id`): the worker publishes
/// these bytes as they are, without decoding and encoding them again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedUnit {
    pub seq: u64,
    text: String,
    /// Each change's key and where its line lies in `text`.
    changes: Vec<(String, std::ops::Range<usize>)>,
}

/// The fields of a change that make its key; serde skips the rest unparsed.
#[derive(serde::Deserialize)]
struct ChangeKey<'a> {
    #[serde(borrow)]
    tenant_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    contact_id: std::borrow::Cow<'a, str>,
}

impl EncodedUnit {
    /// Reads a unit stored as JSON lines; a line that is not a change means
    /// the store is corrupt.
    pub fn parse(seq: u64, text: String) -> StoreResult<Self> {
        let mut changes = Vec::new();
        let mut start = 0;
        for line in text.split_inclusive('\n') {
            let json = line.trim_end_matches('\n');
            if !json.is_empty() {
                let key: ChangeKey<'_> = serde_json::from_str(json)
                    .map_err(|e| StoreError::Corrupt(format!("change unit {seq} holds a line that is not a change: {e}")))?;
                changes.push((format!("{}/{}", key.tenant_id, key.contact_id), start..start + json.len()));
            }
            start += line.len();
        }
        Ok(Self { seq, text, changes })
    }

    /// Each change's key and JSON, in order.
    pub fn changes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.changes.iter().map(|(key, range)| (key.as_str(), &self.text[range.clone()]))
    }
}

/// Changes kept with the effects they describe until a publisher has delivered
/// them: what the worker needs from every store.
pub trait Outbox {
    /// One unit, unless it was forgotten.
    fn unit(&self, seq: u64) -> StoreResult<Option<EncodedUnit>>;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_unit_yields_each_change_verbatim_with_its_key() {
        let first = r#"{"change_id":"x1","tenant_id":"acme","contact_id":"c-1","data":{"text":"a\nb"}}"#;
        let second = r#"{"tenant_id":"acme","contact_id":"c\"2","change_id":"x2"}"#;
        let unit = EncodedUnit::parse(7, format!("{first}\n{second}\n")).unwrap();
        let changes: Vec<_> = unit.changes().collect();
        assert_eq!(changes, [("acme/c-1", first), ("acme/c\"2", second)]);
        assert_eq!(EncodedUnit::parse(8, String::new()).unwrap().changes().count(), 0);
    }

    #[test]
    fn a_line_that_is_not_a_change_is_corruption() {
        for text in ["not json\n", "{\"tenant_id\":\"acme\"}\n"] {
            assert!(matches!(EncodedUnit::parse(1, text.into()), Err(StoreError::Corrupt(_))), "{text}");
        }
    }
}

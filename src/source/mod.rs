//! The source seam: where raw events come from. A file replays JSONL through the
//! same pipeline a Kafka consumer feeds.

pub mod file;
pub mod kafka;

use serde::Serialize;

/// Where one raw record came from, for dead letters and logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// A file path, or a Kafka topic.
    pub source: String,
    /// The Kafka partition; none for a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// A 1-based line number, or a Kafka offset.
    pub position: u64,
}

#[derive(Clone, Debug)]
pub struct RawRecord {
    pub payload: Vec<u8>,
    pub origin: Origin,
}

pub trait EventSource {
    /// Up to `max` records; an empty batch means the source is exhausted.
    fn next_batch(&mut self, max: usize) -> std::io::Result<Vec<RawRecord>>;
}

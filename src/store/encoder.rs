//! Serializes an open unit's changes to the outbox's JSON lines on a thread of
//! its own while the unit is still being written, so the committing thread only
//! collects the text. That serialization was a twelfth of the ingest's writing
//! thread, which is the pipeline's critical path.

use std::sync::mpsc::{self, Receiver, Sender};

use crate::model::Change;

/// Changes handed over at a time: large enough that the channel costs nothing
/// per change, small enough that little is left to encode at commit.
const CHUNK: usize = 1024;
/// Linux shows at most 15 bytes of a thread's name.
const ENCODER_THREAD: &str = "outbox-encoder";

/// A unit's changes with their outbox text, one JSON object per line.
#[derive(Debug, Default)]
pub struct EncodedChanges {
    pub changes: Vec<Change>,
    pub lines: Vec<u8>,
}

enum Job {
    Encode(Vec<Change>),
    /// Ends the unit: answer with its changes (or drop them on the encoder's
    /// thread when `keep` is false) and its text.
    Finish {
        keep: bool,
    },
    /// A text buffer the store is done with, to encode the next unit into.
    Reuse(Vec<u8>),
}

/// The store's end. The thread starts with the first change and stops when
/// this is dropped.
#[derive(Debug, Default)]
pub struct ChangeEncoder {
    worker: Option<Worker>,
    chunk: Vec<Change>,
    /// Changes of the open unit, handed over or not.
    len: usize,
}

#[derive(Debug)]
struct Worker {
    jobs: Sender<Job>,
    finished: Receiver<EncodedChanges>,
    /// Chunks the encoder emptied, so handing over changes allocates nothing.
    spare: Receiver<Vec<Change>>,
}

impl ChangeEncoder {
    pub fn push(&mut self, changes: Vec<Change>) {
        self.len += changes.len();
        self.chunk.extend(changes);
        if self.chunk.len() >= CHUNK {
            let next = self.worker().spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK * 2));
            let full = std::mem::replace(&mut self.chunk, next);
            self.send(Job::Encode(full));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends the open unit and returns what it published, encoded. With `keep`
    /// false the changes themselves are dropped on the encoder's thread.
    pub fn finish(&mut self, keep: bool) -> EncodedChanges {
        self.len = 0;
        if self.worker.is_none() && self.chunk.is_empty() {
            return EncodedChanges::default();
        }
        if !self.chunk.is_empty() {
            let rest = std::mem::take(&mut self.chunk);
            self.send(Job::Encode(rest));
        }
        self.send(Job::Finish { keep });
        self.worker().finished.recv().expect("the outbox encoder thread stopped")
    }

    /// Forgets the open unit's changes, as a rollback must. Those not handed
    /// over yet are dropped here rather than encoded for nothing.
    pub fn discard(&mut self) {
        self.chunk.clear();
        self.len = 0;
        if self.worker.is_some() {
            let encoded = self.finish(false);
            self.reuse(encoded.lines);
        }
    }

    pub fn reuse(&mut self, lines: Vec<u8>) {
        if self.worker.is_some() {
            self.send(Job::Reuse(lines));
        }
    }

    fn send(&mut self, job: Job) {
        self.worker().jobs.send(job).expect("the outbox encoder thread stopped");
    }

    fn worker(&mut self) -> &Worker {
        self.worker.get_or_insert_with(Worker::spawn)
    }
}

impl Worker {
    fn spawn() -> Self {
        let (jobs, incoming) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let (emptied, spare) = mpsc::channel();
        std::thread::Builder::new()
            .name(ENCODER_THREAD.into())
            .spawn(move || encode(&incoming, &done, &emptied))
            .expect("spawning the outbox encoder thread");
        Self { jobs, finished, spare }
    }
}

fn encode(jobs: &Receiver<Job>, done: &Sender<EncodedChanges>, emptied: &Sender<Vec<Change>>) {
    let mut unit = EncodedChanges::default();
    for job in jobs {
        match job {
            Job::Encode(mut chunk) => {
                for change in &chunk {
                    serde_json::to_writer(&mut unit.lines, change).expect("changes serialize to JSON");
                    unit.lines.push(b'\n');
                }
                unit.changes.append(&mut chunk);
                // The store may be gone already; the chunk is then only freed.
                let _ = emptied.send(chunk);
            }
            Job::Finish { keep } => {
                let changes = if keep {
                    // The next unit is likely as large as this one: room for it
                    // up front spares a chain of reallocations, each copying the
                    // changes into fresh pages.
                    let next = Vec::with_capacity(unit.changes.len());
                    std::mem::replace(&mut unit.changes, next)
                } else {
                    unit.changes.clear();
                    Vec::new()
                };
                let lines = std::mem::take(&mut unit.lines);
                if done.send(EncodedChanges { changes, lines }).is_err() {
                    return;
                }
            }
            Job::Reuse(mut lines) => {
                if unit.lines.is_empty() && lines.capacity() > unit.lines.capacity() {
                    lines.clear();
                    unit.lines = lines;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeData, ChangeKind, Timestamp};

    fn change(n: usize) -> Change {
        Change {
            schema: "contactd.change/1".into(),
            change_id: format!("c{n}"),
            tenant_id: "t".into(),
            contact_id: format!("k{}", n % 7).into(),
            kind: ChangeKind::ContactUpdated,
            occurred_at: Timestamp::from_micros(n as i64),
            caused_by: format!("e{n}"),
            data: ChangeData::default(),
        }
    }

    fn lines_of(changes: &[Change]) -> Vec<u8> {
        changes.iter().flat_map(|c| serde_json::to_string(c).unwrap().into_bytes().into_iter().chain([b'\n'])).collect()
    }

    #[test]
    fn a_unit_comes_back_in_publishing_order_with_one_line_per_change() {
        let mut encoder = ChangeEncoder::default();
        let all: Vec<Change> = (0..CHUNK * 3 + 5).map(change).collect();
        for piece in all.chunks(3) {
            encoder.push(piece.to_vec());
        }
        assert!(!encoder.is_empty());
        let unit = encoder.finish(true);
        assert!(encoder.is_empty());
        assert_eq!(unit.changes, all);
        assert_eq!(unit.lines, lines_of(&all));
    }

    #[test]
    fn a_discarded_unit_leaves_nothing_in_the_next_one() {
        let mut encoder = ChangeEncoder::default();
        encoder.push((0..CHUNK + 1).map(change).collect());
        encoder.discard();
        encoder.push(vec![change(9)]);
        let unit = encoder.finish(true);
        assert_eq!(unit.changes, vec![change(9)]);
        assert_eq!(unit.lines, lines_of(&[change(9)]));
    }

    #[test]
    fn discarding_a_unit_never_handed_over_starts_no_thread() {
        let mut encoder = ChangeEncoder::default();
        encoder.push(vec![change(1), change(2)]);
        encoder.discard();
        assert!(encoder.worker.is_none());
        assert!(encoder.is_empty());
        encoder.push(vec![change(3)]);
        assert_eq!(encoder.finish(true).changes, vec![change(3)]);
    }

    #[test]
    fn units_not_kept_return_only_their_text() {
        let mut encoder = ChangeEncoder::default();
        encoder.push(vec![change(1), change(2)]);
        let unit = encoder.finish(false);
        assert!(unit.changes.is_empty());
        assert_eq!(unit.lines, lines_of(&[change(1), change(2)]));
        encoder.reuse(unit.lines);
        encoder.push(vec![change(3)]);
        assert_eq!(encoder.finish(true).lines, lines_of(&[change(3)]));
    }

    #[test]
    fn a_unit_without_changes_is_empty() {
        let mut encoder = ChangeEncoder::default();
        let unit = encoder.finish(true);
        assert!(unit.changes.is_empty() && unit.lines.is_empty());
    }
}

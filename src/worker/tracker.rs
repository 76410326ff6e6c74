//! Which offsets of each assigned partition are safe to commit. Events finish
//! out of order across lanes; a partition's commit point only ever advances to
//! its lowest unfinished offset, so nothing after a slow or failed event is
//! committed before it.

use std::collections::{BTreeSet, HashMap};

pub type PartitionKey = (String, i32);

#[derive(Debug, Default)]
struct Partition {
    /// Distinguishes this assignment from earlier ones of the same partition,
    /// so that a lane finishing work of a revoked assignment changes nothing.
    generation: u64,
    /// Dispatched and not finished.
    pending: BTreeSet<i64>,
    /// One past the highest offset dispatched.
    next: Option<i64>,
    /// The lowest offset dropped unprocessed after revocation: the commit point
    /// must stop there, for the next owner to process it.
    first_abandoned: Option<i64>,
    committed: Option<i64>,
    revoked: bool,
}

impl Partition {
    fn commit_point(&self) -> Option<i64> {
        [self.pending.first().copied(), self.first_abandoned, self.next].into_iter().flatten().min()
    }
}

/// A record handed to a lane: its assignment's generation, and where its
/// partition's records were expected to continue when it came later than that.
#[derive(Debug, PartialEq, Eq)]
pub struct Dispatched {
    pub generation: u64,
    /// The next expected offset, when this record's offset is past it: the
    /// offsets between were never fetched. Legitimate on compacted and
    /// transactional topics (control records), a lost run of records anywhere else.
    pub gap_from: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    partitions: HashMap<PartitionKey, Partition>,
    generations: u64,
    pending: usize,
}

impl Tracker {
    /// Starts tracking a newly assigned partition; returns its generation.
    pub fn assign(&mut self, key: PartitionKey) -> u64 {
        self.generations += 1;
        if let Some(old) = self.partitions.insert(key, Partition { generation: self.generations, ..Partition::default() }) {
            self.pending -= old.pending.len();
        }
        self.generations
    }

    /// Records an offset handed to a lane. `None` when the partition is not
    /// assigned (a message fetched just before a revocation): drop it.
    pub fn dispatch(&mut self, key: &PartitionKey, offset: i64) -> Option<Dispatched> {
        let partition = self.partitions.get_mut(key).filter(|p| !p.revoked)?;
        if partition.pending.insert(offset) {
            self.pending += 1;
        }
        let gap_from = partition.next.filter(|&next| offset > next);
        partition.next = Some(partition.next.map_or(offset + 1, |next| next.max(offset + 1)));
        Some(Dispatched { generation: partition.generation, gap_from })
    }

    /// Whether work of this assignment should still be done.
    pub fn is_current(&self, key: &PartitionKey, generation: u64) -> bool {
        self.partitions.get(key).is_some_and(|p| p.generation == generation && !p.revoked)
    }

    /// The event at `offset` is durable with its changes and dead letters.
    pub fn finish(&mut self, key: &PartitionKey, generation: u64, offset: i64) {
        if let Some(partition) = self.partitions.get_mut(key).filter(|p| p.generation == generation)
            && partition.pending.remove(&offset)
        {
            self.pending -= 1;
        }
    }

    /// The event at `offset` was dropped unprocessed because its partition was
    /// revoked: it stays uncommitted for the next owner.
    pub fn abandon(&mut self, key: &PartitionKey, generation: u64, offset: i64) {
        if let Some(partition) = self.partitions.get_mut(key).filter(|p| p.generation == generation)
            && partition.pending.remove(&offset)
        {
            self.pending -= 1;
            partition.first_abandoned = Some(partition.first_abandoned.map_or(offset, |first| first.min(offset)));
        }
    }

    /// Stops new work on a partition; work already running may finish.
    pub fn revoke(&mut self, key: &PartitionKey) {
        if let Some(partition) = self.partitions.get_mut(key) {
            partition.revoked = true;
        }
    }

    /// Forgets a partition after its final commit.
    pub fn remove(&mut self, key: &PartitionKey) {
        if let Some(old) = self.partitions.remove(key) {
            self.pending -= old.pending.len();
        }
    }

    /// Events dispatched and not yet finished, over all partitions.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn pending_in(&self, key: &PartitionKey) -> usize {
        self.partitions.get(key).map_or(0, |p| p.pending.len())
    }

    /// Offsets to commit (the next offset to read, Kafka's convention): of the
    /// partitions whose commit point moved since the last commit, or of all
    /// with `unchanged_too`. The caller reports success with `committed`.
    pub fn commit_points(&self, keys: Option<&[PartitionKey]>, unchanged_too: bool) -> Vec<(PartitionKey, i64)> {
        let wanted = |key: &PartitionKey| keys.is_none_or(|keys| keys.contains(key));
        let mut points: Vec<_> = self
            .partitions
            .iter()
            .filter(|(key, _)| wanted(key))
            .filter_map(|(key, p)| {
                let point = p.commit_point()?;
                (unchanged_too || p.committed.is_none_or(|committed| point > committed)).then(|| (key.clone(), point))
            })
            .collect();
        points.sort();
        points
    }

    pub fn committed(&mut self, key: &PartitionKey, offset: i64) {
        if let Some(partition) = self.partitions.get_mut(key) {
            partition.committed = Some(partition.committed.map_or(offset, |c| c.max(offset)));
        }
    }

    pub fn assigned(&self) -> Vec<PartitionKey> {
        let mut keys: Vec<_> = self.partitions.keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PartitionKey {
        ("events".into(), 0)
    }

    #[test]
    fn the_commit_point_stops_at_the_lowest_unfinished_offset() {
        let mut tracker = Tracker::default();
        let generation = tracker.assign(key());
        for offset in 10..15 {
            tracker.dispatch(&key(), offset);
        }
        tracker.finish(&key(), generation, 10);
        tracker.finish(&key(), generation, 12);
        tracker.finish(&key(), generation, 13);
        assert_eq!(tracker.commit_points(None, false), vec![(key(), 11)]);
        tracker.committed(&key(), 11);
        assert!(tracker.commit_points(None, false).is_empty(), "nothing moved since the last commit");
        assert_eq!(tracker.commit_points(None, true), vec![(key(), 11)]);
        tracker.finish(&key(), generation, 11);
        assert_eq!(tracker.commit_points(None, false), vec![(key(), 14)]);
        tracker.finish(&key(), generation, 14);
        assert_eq!(tracker.commit_points(None, false), vec![(key(), 15)]);
        assert_eq!(tracker.pending(), 0);
    }

    #[test]
    fn abandoned_offsets_are_left_for_the_next_owner() {
        let mut tracker = Tracker::default();
        let generation = tracker.assign(key());
        for offset in 0..4 {
            tracker.dispatch(&key(), offset);
        }
        tracker.revoke(&key());
        assert!(!tracker.is_current(&key(), generation));
        assert_eq!(tracker.dispatch(&key(), 4), None, "no new work after revocation");
        tracker.finish(&key(), generation, 0);
        tracker.abandon(&key(), generation, 1);
        tracker.finish(&key(), generation, 2);
        tracker.abandon(&key(), generation, 3);
        assert_eq!(tracker.pending_in(&key()), 0);
        assert_eq!(tracker.commit_points(None, false), vec![(key(), 1)]);
    }

    #[test]
    fn a_record_past_the_next_expected_offset_reports_the_gap_once() {
        let mut tracker = Tracker::default();
        let generation = tracker.assign(key());
        let gap = |tracker: &mut Tracker, offset| tracker.dispatch(&key(), offset).map(|d| d.gap_from);
        assert_eq!(gap(&mut tracker, 7), Some(None), "an assignment's first record sets where it continues");
        assert_eq!(gap(&mut tracker, 8), Some(None));
        assert_eq!(gap(&mut tracker, 12), Some(Some(9)), "9, 10 and 11 were never fetched");
        assert_eq!(gap(&mut tracker, 13), Some(None));
        assert_eq!(gap(&mut tracker, 8), Some(None), "a record fetched again is no gap");
        assert_eq!(gap(&mut tracker, 14), Some(None), "nor is the one after it");
        tracker.remove(&key());
        let next = tracker.assign(key());
        assert_ne!(next, generation);
        assert_eq!(gap(&mut tracker, 40), Some(None), "a new assignment starts where the group's commit says");
    }

    #[test]
    fn work_of_an_earlier_assignment_changes_nothing() {
        let mut tracker = Tracker::default();
        let old = tracker.assign(key());
        tracker.dispatch(&key(), 5);
        tracker.remove(&key());
        let new = tracker.assign(key());
        tracker.dispatch(&key(), 5);
        tracker.finish(&key(), old, 5);
        assert_eq!(tracker.pending(), 1);
        assert!(tracker.is_current(&key(), new));
        assert_eq!(tracker.commit_points(None, false), vec![(key(), 5)]);
    }
}

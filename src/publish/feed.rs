//! Hands each committed unit's changes to the in-process indexer as the values
//! they are, while the store keeps them in its outbox all the same: the indexer
//! decodes nothing it was handed and reads the outbox only for what it was not
//! (units of other processes, units committed before it started, units offered
//! while it was behind). Reading and decoding the outbox was about half of the
//! indexing thread's time in `ingest`.
//!
//! The consumer leaves trimming the log to the producer. A trim committed on
//! the consumer's own connection tells the producer's connection that another
//! one wrote, and the producer drops its whole cache of records: in `ingest`
//! that was nine times per million events, 35,000 to 100,000 records each time.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

use crate::publish::{ChangeLog, ChangeUnit, EncodedUnit, Outbox};
use contactd_core::store::StoreResult;

/// The producer's end: offers committed units without ever waiting.
#[derive(Clone, Debug)]
pub struct Feed {
    sender: SyncSender<ChangeUnit>,
    trimmable: Arc<AtomicU64>,
}

/// The consumer's end, before it is joined to the log it stands in front of.
#[derive(Debug)]
pub struct Fed {
    receiver: Receiver<ChangeUnit>,
    capacity: usize,
    trimmable: Arc<AtomicU64>,
}

/// A feed holding at most `capacity` units offered and not yet read, on each side
/// of the channel: what it costs in memory is bounded by twice that.
pub fn channel(capacity: usize) -> (Feed, Fed) {
    let (sender, receiver) = mpsc::sync_channel(capacity);
    let trimmable = Arc::new(AtomicU64::new(0));
    (Feed { sender, trimmable: Arc::clone(&trimmable) }, Fed { receiver, capacity, trimmable })
}

impl Feed {
    /// Offers a unit that is already durable in the log. Returns false when the
    /// feed is full or its consumer has gone; the unit is then read from the log,
    /// so dropping it loses nothing and never slows the producer down.
    pub fn offer(&self, unit: ChangeUnit) -> bool {
        match self.sender.try_send(unit) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// The last unit the consumer no longer needs: the producer trims the log
    /// through it on its own connection.
    pub fn trimmable_through(&self) -> u64 {
        self.trimmable.load(Ordering::Acquire)
    }
}

/// A change log whose reads are served from the feed when it holds the next
/// unit, and from `log` otherwise.
pub struct FedLog<L> {
    log: L,
    fed: Receiver<ChangeUnit>,
    capacity: usize,
    /// Units taken from the feed and not yet read, in sequence order.
    ready: RefCell<VecDeque<ChangeUnit>>,
    from_feed: Cell<u64>,
    trimmable: Arc<AtomicU64>,
}

impl<L: ChangeLog> FedLog<L> {
    pub fn new(log: L, fed: Fed) -> Self {
        Self {
            log,
            fed: fed.receiver,
            capacity: fed.capacity,
            ready: RefCell::default(),
            from_feed: Cell::new(0),
            trimmable: fed.trimmable,
        }
    }

    /// Units read from the feed rather than from the log.
    pub fn units_from_feed(&self) -> u64 {
        self.from_feed.get()
    }
}

impl<L: ChangeLog> Outbox for FedLog<L> {
    fn unit(&self, seq: u64) -> StoreResult<Option<EncodedUnit>> {
        self.log.unit(seq)
    }

    fn forget_unit(&mut self, seq: u64) -> StoreResult<()> {
        self.log.forget_unit(seq)
    }
}

impl<L: ChangeLog> ChangeLog for FedLog<L> {
    fn read_after(&self, after: u64, max_units: usize) -> StoreResult<Vec<ChangeUnit>> {
        let mut ready = self.ready.borrow_mut();
        while ready.len() < self.capacity {
            match self.fed.try_recv() {
                Ok(unit) => ready.push_back(unit),
                Err(_) => break,
            }
        }
        // Units already read from the log, or replayed from it, are stale copies.
        while ready.front().is_some_and(|unit| unit.seq <= after) {
            ready.pop_front();
        }
        let next = after.saturating_add(1);
        match ready.front().map(|unit| unit.seq) {
            Some(seq) if seq == next => {
                let mut units: Vec<ChangeUnit> = Vec::new();
                while units.len() < max_units
                    && ready.front().is_some_and(|unit| unit.seq == units.last().map_or(next, |last| last.seq + 1))
                {
                    units.extend(ready.pop_front());
                }
                self.from_feed.set(self.from_feed.get() + units.len() as u64);
                Ok(units)
            }
            // The log holds the units in between: at most `seq - next`, as units are
            // numbered densely. Had it a hole, the later units it returned would
            // make the fed copies stale and they would be dropped above.
            Some(seq) => self.log.read_after(after, max_units.min(usize::try_from(seq - next).unwrap_or(usize::MAX))),
            None => self.log.read_after(after, max_units),
        }
    }

    /// Leaves the trim to the producer (see the module's documentation).
    fn trim_through(&mut self, seq: u64) -> StoreResult<()> {
        self.trimmable.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A log of units `1..=last` that records which units it was asked for.
    struct Units {
        last: u64,
        served: RefCell<Vec<u64>>,
    }

    impl Outbox for Units {
        fn unit(&self, _: u64) -> StoreResult<Option<EncodedUnit>> {
            Ok(None)
        }

        fn forget_unit(&mut self, _: u64) -> StoreResult<()> {
            Ok(())
        }
    }

    impl ChangeLog for Units {
        fn read_after(&self, after: u64, max_units: usize) -> StoreResult<Vec<ChangeUnit>> {
            let units: Vec<ChangeUnit> =
                (after + 1..=self.last).take(max_units).map(|seq| ChangeUnit { seq, changes: Vec::new() }).collect();
            self.served.borrow_mut().extend(units.iter().map(|unit| unit.seq));
            Ok(units)
        }

        fn trim_through(&mut self, seq: u64) -> StoreResult<()> {
            panic!("the consumer trimmed the log through {seq}; the producer should have");
        }
    }

    fn unit(seq: u64) -> ChangeUnit {
        ChangeUnit { seq, changes: Vec::new() }
    }

    /// Reads the log after `after` as a follower does; the sequences in the order read.
    fn read_from(log: &FedLog<Units>, mut after: u64) -> Vec<u64> {
        let mut read = Vec::new();
        loop {
            let units = log.read_after(after, 4).unwrap();
            let Some(last) = units.last() else { return read };
            after = last.seq;
            read.extend(units.iter().map(|unit| unit.seq));
        }
    }

    #[test]
    fn every_unit_is_read_once_in_order_whether_it_was_fed_or_not() {
        let (feed, fed) = channel(8);
        for seq in [2, 3, 5] {
            assert!(feed.offer(unit(seq)));
        }
        let log = FedLog::new(Units { last: 6, served: RefCell::default() }, fed);
        assert_eq!(read_from(&log, 0), [1, 2, 3, 4, 5, 6]);
        assert_eq!(log.units_from_feed(), 3);
        assert_eq!(*log.log.served.borrow(), [1, 4, 6], "the log serves only the units the feed lacks");
    }

    #[test]
    fn fed_copies_of_units_already_read_are_dropped() {
        let (feed, fed) = channel(8);
        let log = FedLog::new(Units { last: 4, served: RefCell::default() }, fed);
        assert_eq!(log.read_after(0, 2).unwrap().iter().map(|u| u.seq).collect::<Vec<_>>(), [1, 2]);
        for seq in [1, 2, 3] {
            assert!(feed.offer(unit(seq)));
        }
        assert_eq!(read_from(&log, 2), [3, 4]);
        assert_eq!(log.units_from_feed(), 1);
    }

    #[test]
    fn a_full_or_abandoned_feed_refuses_without_waiting() {
        let (feed, fed) = channel(1);
        assert!(feed.offer(unit(1)));
        assert!(!feed.offer(unit(2)), "full");
        drop(fed);
        assert!(!feed.offer(unit(3)), "nobody reads it");
    }

    #[test]
    fn trims_are_left_to_the_producer_and_never_go_back() {
        let (feed, fed) = channel(8);
        let mut log = FedLog::new(Units { last: 6, served: RefCell::default() }, fed);
        assert_eq!(feed.trimmable_through(), 0);
        log.trim_through(5).unwrap();
        log.trim_through(3).unwrap();
        assert_eq!(feed.trimmable_through(), 5);
    }
}

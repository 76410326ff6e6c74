//! Property tests of the guarantees in docs/contract.md 3.9: redeliveries change
//! nothing, and a session's entries and a contact's name do not depend on the
//! order in which events arrive.

use std::collections::BTreeSet;

use contactd::store::DirectoryView;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::harness::{Conversation, Directory, canonical, conversation_events as events, identified};

fn conversation() -> impl Strategy<Value = Conversation> {
    (0u8..4, any::<bool>(), 0u8..4, proptest::option::of(0u8..3)).prop_map(|(customer, phone, messages, name)| Conversation {
        customer,
        phone,
        messages,
        name,
    })
}

fn run(events: &[Value]) -> Directory {
    let mut directory = Directory::new();
    directory.feed(events);
    directory
}

fn shuffled(events: &[Value], seed: u64) -> Vec<Value> {
    use rand::seq::SliceRandom;
    use rand::{SeedableRng, rngs::SmallRng};
    let mut out = events.to_vec();
    out.shuffle(&mut SmallRng::seed_from_u64(seed));
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn redeliveries_leave_the_snapshot_unchanged(
        conversations in proptest::collection::vec(conversation(), 1..6),
        redeliveries in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..8),
    ) {
        let once = events(&conversations);
        // Each event sorts at its own position; a redelivery sorts strictly after
        // the original it repeats, anywhere later in the stream.
        let mut keyed: Vec<((usize, usize), &Value)> = once.iter().enumerate().map(|(i, e)| ((i, 0), e)).collect();
        for (copy, (which, delay)) in redeliveries.iter().enumerate() {
            let original = which.index(once.len());
            let after = original + 1 + delay.index(once.len() - original);
            keyed.push(((after, copy + 1), &once[original]));
        }
        keyed.sort_by_key(|(key, _)| *key);
        let twice: Vec<Value> = keyed.into_iter().map(|(_, e)| e.clone()).collect();
        let expected = run(&once);
        let actual = run(&twice);
        prop_assert_eq!(expected.export(), actual.export());
        prop_assert_eq!(expected.changes().len(), actual.changes().len());
    }

    #[test]
    fn arrival_order_does_not_change_who_owns_what(
        conversations in proptest::collection::vec(conversation(), 1..6),
        seed in any::<u64>(),
    ) {
        let ordered = events(&conversations);
        let expected = canonical(&run(&ordered).store);
        let directory = run(&shuffled(&ordered, seed));
        prop_assert_eq!(&canonical(&directory.store), &expected);
        for n in 0..conversations.len() {
            prop_assert!(directory.store.pending(&"acme".into(), &format!("s{n}").into()).unwrap().is_empty(), "no entry of a resolved session is left waiting");
        }
    }

    #[test]
    fn the_newest_guest_name_wins_whatever_the_order(names in proptest::collection::vec(0u32..500, 1..8), seed in any::<u64>()) {
        let distinct: BTreeSet<u32> = names.into_iter().collect();
        let events: Vec<Value> = distinct
            .iter()
            .map(|minute| identified(&format!("n{minute}"), *minute, "s1", json!({ "emails": ["n@example.cz"], "name": format!("Name {minute}") })))
            .collect();
        let directory = run(&shuffled(&events, seed));
        let newest = distinct.iter().max().unwrap();
        prop_assert_eq!(directory.contact_with_email("n@example.cz").state.name, Some(format!("Name {newest}")));
    }
}

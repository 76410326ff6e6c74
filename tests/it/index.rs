//! The index follows the change log exactly once: whatever point a run stops
//! at, the next run leaves one document per timeline entry, no more, no less.

use std::sync::atomic::AtomicBool;

use contactd::config::Config;
use contactd::index::{Checkpoint, ContactQuery, Delivery, Hit, IndexWriters, SearchIndex, TimelineQuery};
use contactd::pipeline::{FollowOptions, follow_changes};
use contactd::publish::ChangeLog;
use contactd::store::sqlite::{SqliteOptions, SqliteStore};
use serde_json::json;

use crate::harness::{Directory, identified, message, with};

/// The index reads the embedded store's outbox and sits beside it on disk.
type OnDisk = Directory<contactd::store::sqlite::SqliteStore>;

fn entries_in_store(directory: &OnDisk) -> u64 {
    directory.export().iter().map(|c| c.timeline_entries).sum()
}

pub(crate) fn follow(directory: &OnDisk, index: &SearchIndex) {
    let mut log = SqliteStore::open(&directory.path().join("directory.sqlite3"), &SqliteOptions::default()).unwrap();
    let report = follow_changes(&mut log, index, &FollowOptions::from(&Config::default().index), &AtomicBool::new(true)).unwrap();
    assert!(report.indexed);
    index.reload().unwrap();
}

fn refunds(index: &SearchIndex) -> Vec<Hit> {
    let query = TimelineQuery { tenant: "acme".into(), text: "refund".into(), limit: 10, ..TimelineQuery::default() };
    index.timeline.search(&query).unwrap()
}

fn contacts_matching(index: &SearchIndex, text: &str) -> usize {
    let query = ContactQuery { tenant: "acme".into(), text: text.into(), limit: 10, ..ContactQuery::default() };
    index.contacts.search(&query).unwrap().len()
}

fn conversation(directory: &mut OnDisk) {
    let lines: Vec<String> = [
        identified("e1", 1, "s1", json!({ "emails": ["x@example.cz"] })),
        message("e2", 2, "s1", "first refund request"),
        identified("e3", 3, "s2", json!({ "phones": ["+420777000444"] })),
        message("e4", 4, "s2", "second refund request"),
        with(crate::harness::event("e5", "session.linked", 5, Some("s2")), "contact_id", json!("PLACEHOLDER")),
        message("e6", 6, "s1", "after the merge"),
    ]
    .iter()
    .map(|e| e.to_string())
    .collect();
    // The link names x's contact, known only once e1 is applied. The second
    // unit appends before it merges, so the merge's mid-unit commit holds part
    // of that unit.
    directory.feed_lines(&lines[..3]);
    let x = directory.contact_with_email("x@example.cz").contact_id;
    let rest: Vec<String> = lines[3..].iter().map(|l| l.replace("PLACEHOLDER", &x)).collect();
    directory.feed_lines(&rest);
}

#[test]
fn a_full_run_indexes_every_entry_once() {
    let mut directory = Directory::on_disk();
    conversation(&mut directory);
    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    follow(&directory, &index);
    assert_eq!(index.timeline.num_docs(), entries_in_store(&directory));
    let hits = refunds(&index);
    let x = directory.contact_with_email("x@example.cz").contact_id;
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.contact_id == x), "merged entries moved with their contact");
    follow(&directory, &index);
    assert_eq!(index.timeline.num_docs(), entries_in_store(&directory), "a second run adds nothing");
    assert_eq!(index.contacts.num_docs(), directory.export().len() as u64, "one directory document per live contact");
}

/// Applies the whole outbox from the start as the follower does (only the first
/// unit may be a replay) without a final commit; returns the last unit.
fn apply_every_unit(directory: &OnDisk, writer: &mut IndexWriters) -> u64 {
    let units = directory.store.read_after(0, usize::MAX).unwrap();
    for unit in &units {
        let delivery = if unit.seq == 1 { Delivery::AtLeastOnce } else { Delivery::FirstTime };
        for change in &unit.changes {
            writer.apply(change, &|| Checkpoint { applied_through: unit.seq - 1, ..Checkpoint::default() }, delivery).unwrap();
        }
    }
    units.last().expect("the conversation wrote units").seq
}

#[test]
fn a_run_that_dies_before_committing_is_replayed_exactly() {
    let mut directory = Directory::on_disk();
    conversation(&mut directory);
    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    // Apply every unit, including the merge that commits mid-unit, then stop
    // without the final commit, as a killed process would.
    apply_every_unit(&directory, &mut index.writer(50 << 20).unwrap());
    index.reload().unwrap();
    assert!(index.timeline.num_docs() > 0, "the merge committed part of the work");
    follow(&directory, &index);
    assert_eq!(index.timeline.num_docs(), entries_in_store(&directory), "no missing and no duplicate documents");
    assert_eq!(refunds(&index).len(), 2);
}

#[test]
fn an_erased_contact_leaves_neither_index() {
    let mut directory = Directory::on_disk();
    conversation(&mut directory);
    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    follow(&directory, &index);
    let x = directory.contact_with_email("x@example.cz").contact_id;
    assert!(index.timeline.contact_docs("acme", &x).unwrap() > 0);
    let contacts_before = index.contacts.num_docs();
    assert_eq!(contacts_matching(&index, "x@example.cz"), 1, "the directory finds x by e-mail");
    directory.feed(&[with(crate::harness::event("del", "contact.deleted", 30, None), "contact_id", json!(x))]);
    follow(&directory, &index);
    assert_eq!(index.timeline.contact_docs("acme", &x).unwrap(), 0, "the timeline documents are gone");
    assert_eq!(index.contacts.num_docs(), contacts_before - 1, "the directory document is gone");
    assert_eq!(contacts_matching(&index, "x@example.cz"), 0);
    assert!(refunds(&index).is_empty());
}

#[test]
fn entries_appended_again_after_an_unlink_are_indexed_once() {
    let mut directory = Directory::on_disk();
    // One unit per event: after the first, each is new to the index and added
    // without a delete by key. The unlink's delete by session is what removes
    // the documents that the second identification appends again.
    directory.feed(&[
        identified("e1", 1, "s1", json!({ "emails": ["x@example.cz"] })),
        message("e2", 2, "s1", "refund for the wrong person"),
        with(crate::harness::event("e3", "session.unlinked", 3, Some("s1")), "channel", json!("operator")),
        identified("e4", 4, "s1", json!({ "emails": ["x@example.cz"] })),
    ]);
    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    follow(&directory, &index);
    let x = directory.contact_with_email("x@example.cz");
    assert_eq!(x.sessions, ["s1"], "the session is attached again");
    assert_eq!(index.timeline.num_docs(), entries_in_store(&directory));
    assert_eq!(refunds(&index).len(), 1);
}

#[test]
fn a_run_killed_between_the_two_index_commits_is_replayed_exactly() {
    let mut directory = Directory::on_disk();
    conversation(&mut directory);
    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    {
        let mut writer = index.writer(50 << 20).unwrap();
        let last = apply_every_unit(&directory, &mut writer);
        // The timeline commits everything; the process dies before the directory
        // index commits, so the next run resumes from the directory index's point.
        writer.timeline.commit(&Checkpoint { applied_through: last, ..Checkpoint::default() }).unwrap();
    }
    index.reload().unwrap();
    assert_eq!(index.timeline.num_docs(), entries_in_store(&directory), "the timeline holds everything");
    assert_eq!(index.checkpoint().unwrap().applied_through, 0, "the run resumes from the start");
    follow(&directory, &index);
    assert_eq!(index.timeline.num_docs(), entries_in_store(&directory), "the replay added no second document");
    assert_eq!(index.contacts.num_docs(), directory.export().len() as u64);
}

/// Applies every unit and commits once, so all of them fall between two commits.
fn index_in_one_commit(directory: &OnDisk, index: &SearchIndex) {
    let mut writer = index.writer(50 << 20).unwrap();
    let last = apply_every_unit(directory, &mut writer);
    writer.commit(&Checkpoint { applied_through: last, ..Checkpoint::default() }).unwrap();
    index.reload().unwrap();
}

#[test]
fn a_contact_changed_several_times_between_two_commits_is_found_by_its_last_state_only() {
    let mut directory = Directory::on_disk();
    directory.feed(&[
        identified("e1", 1, "s1", json!({ "name": "Olga", "emails": ["x@example.cz"] })),
        identified("e2", 2, "s1", json!({ "phones": ["+420777000444"] })),
        identified("e3", 3, "s1", json!({ "name": "Petra" })),
    ]);
    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    index_in_one_commit(&directory, &index);
    assert_eq!(index.contacts.num_docs(), 1);
    assert_eq!(contacts_matching(&index, "Petra"), 1, "the last name is searchable");
    assert_eq!(contacts_matching(&index, "420777000444"), 1, "so is the phone the second change added");
    assert_eq!(contacts_matching(&index, "Olga"), 0, "the name it replaced is not");
}

#[test]
fn a_contact_deleted_after_changes_between_two_commits_is_not_indexed() {
    let mut directory = Directory::on_disk();
    directory.feed(&[
        identified("e1", 1, "s1", json!({ "emails": ["x@example.cz"] })),
        identified("e2", 2, "s2", json!({ "emails": ["y@example.cz"] })),
    ]);
    let x = directory.contact_with_email("x@example.cz").contact_id;
    directory.feed(&[
        identified("e3", 3, "s1", json!({ "name": "Olga" })),
        with(crate::harness::event("e4", "contact.deleted", 4, None), "contact_id", json!(x)),
    ]);
    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    index_in_one_commit(&directory, &index);
    assert_eq!(index.contacts.num_docs(), 1, "only the contact that is left");
    assert_eq!(contacts_matching(&index, "x@example.cz"), 0);
    assert_eq!(contacts_matching(&index, "Olga"), 0);
    assert_eq!(contacts_matching(&index, "y@example.cz"), 1);
}

/// Directory search is a lookup as people type: a phone in any format the
/// normalizer accepts, with or without the country code, and the start of a
/// name or address.
#[test]
fn the_directory_finds_phones_as_written_and_names_by_their_start() {
    let mut directory = Directory::on_disk();
    directory.feed(&[
        crate::harness::configure("e0", 0),
        identified("e1", 1, "s1", json!({ "phones": ["+420 777 123 456"], "name": "Jana Nováková" })),
        identified("e2", 2, "s2", json!({ "emails": ["petr@example.cz"], "name": "Petr Dvořák" })),
    ]);
    let index = SearchIndex::open_or_create(&directory.path().join("index")).unwrap();
    follow(&directory, &index);
    for phone in ["777 123 456", "+420 777 123 456", "00420777123456", "(+420) 777-123-456", "777.123.456", "0777 123 456"] {
        assert_eq!(contacts_matching(&index, phone), 1, "{phone}");
    }
    assert_eq!(contacts_matching(&index, "777 123 999"), 0);
    assert_eq!(contacts_matching(&index, "nov"), 1, "a name's start");
    assert_eq!(contacts_matching(&index, "Jana Nov"), 1);
    assert_eq!(contacts_matching(&index, "petr@exa"), 1, "an address's start");
    assert_eq!(contacts_matching(&index, "dvořák"), 1);
    assert_eq!(contacts_matching(&index, "\"Nov\""), 0, "a quoted word is whole");
}

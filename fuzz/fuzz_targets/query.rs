//! Any text as a search, in both indexes: an answer or a refusal of the query
//! (`BadQuery`), never a panic, a stack overflow or another error.

#![no_main]

use std::sync::LazyLock;

use contactd::index::{ContactQuery, IndexError, SearchIndex, TimelineQuery};
use libfuzzer_sys::fuzz_target;

static INDEX: LazyLock<SearchIndex> = LazyLock::new(|| {
    // Kept, not removed on drop: the index's files must outlive every run.
    let dir = tempfile::tempdir().expect("temp dir").keep();
    SearchIndex::open_or_create(&dir.join("index")).expect("index")
});

fn refused_or_answered<T>(result: Result<T, IndexError>) {
    match result {
        Ok(_) | Err(IndexError::BadQuery(_)) => {}
        Err(other) => panic!("a query failed the index: {other}"),
    }
}

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let timeline = TimelineQuery { tenant: "t".into(), text: text.clone(), limit: 10, ..TimelineQuery::default() };
    refused_or_answered(INDEX.timeline.search(&timeline));
    let contacts = ContactQuery { tenant: "t".into(), text, limit: 10, ..ContactQuery::default() };
    refused_or_answered(INDEX.contacts.search(&contacts));
});

//! docs/contract.md sections 2-4, rule by rule, through the real pipeline and store.

use contactd::model::{Change, ChangeKind};
use contactd::store::DirectoryView;
use serde_json::{Value, json};

use crate::harness::{Directory, configure, event, identified, message, with};

fn examples() -> Vec<String> {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.jsonl"))
        .expect("examples/events.jsonl")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_example_events_build_the_expected_directory() {
    let mut directory = Directory::new();
    let (report, rejected) = directory.feed_lines(&examples());
    assert_eq!(report.duplicates, 1);
    assert_eq!(rejected, ["not_json", "missing_field"]);
    let contacts = directory.export();
    assert_eq!(contacts.len(), 3);

    let jana = directory.contact_with_email("jana.novakova@example.cz");
    assert_eq!(jana.tenant_id, "acme");
    assert_eq!(jana.state.name.as_deref(), Some("Jana Nováková"));
    assert_eq!(jana.state.phones, ["+420777123456"]);
    assert_eq!(jana.state.channel_ids.whatsapp, ["420777123456"]);
    assert_eq!(jana.state.channel_ids.browser, ["b-7f3a"]);
    assert_eq!(jana.sessions, ["call-500", "chat-100", "mail-300", "wa-200"]);

    let karel = contacts.iter().find(|c| c.state.channel_ids.facebook == ["acme-page:2231"]).expect("Karel");
    assert_eq!(karel.state.name.as_deref(), Some("Karel Dvořák Jr."));
    assert_eq!(karel.state.params.get("crm_id").map(String::as_str), Some("C-1002"));
    assert_eq!(karel.state.emails, ["karel@dvorak.example"]);

    let globex: Vec<_> = contacts.iter().filter(|c| c.tenant_id == "globex").collect();
    assert_eq!(globex.len(), 1, "tenants never share contacts");
    assert_ne!(globex[0].contact_id, jana.contact_id);
}

#[test]
fn an_anonymous_session_waits_and_attaches_when_it_resolves() {
    let mut directory = Directory::new();
    directory.feed(&[
        with(event("e1", "session.started", 0, Some("s1")), "identity", json!({ "browser_id": "b-1" })),
        message("e2", 1, "s1", "where is my parcel"),
    ]);
    assert!(directory.export().is_empty(), "a browser id alone never founds a contact");
    directory.feed(&[identified("e3", 2, "s1", json!({ "emails": ["ann@example.cz"], "name": "Ann" }))]);
    let ann = directory.contact_with_email("ann@example.cz");
    assert_eq!(ann.state.channel_ids.browser, ["b-1"]);
    assert_eq!(ann.sessions, ["s1"]);
    let timeline = directory.store.timeline(&"acme".into(), &ann.contact_id, None, 100).unwrap();
    assert!(timeline.iter().any(|e| e.text == "where is my parcel"), "the waiting message attached");
}

#[test]
fn a_returning_browser_finds_its_contact_but_cannot_found_one() {
    let mut directory = Directory::new();
    directory.feed(&[
        with(
            event("e1", "session.started", 0, Some("s1")),
            "identity",
            json!({ "browser_id": "b-1", "emails": ["ann@example.cz"] }),
        ),
        with(event("e2", "session.started", 10, Some("s2")), "identity", json!({ "browser_id": "b-1" })),
        message("e3", 11, "s2", "me again"),
    ]);
    let ann = directory.contact_with_email("ann@example.cz");
    assert_eq!(ann.sessions, ["s1", "s2"]);
}

#[test]
fn the_highest_priority_identifier_decides_and_others_are_never_moved() {
    let mut directory = Directory::new();
    directory.feed(&[
        configure("cfg", 0),
        identified("e1", 1, "s1", json!({ "phones": ["+420 777 000 111"] })),
        identified("e2", 2, "s2", json!({ "emails": ["bob@example.cz"] })),
        identified("e3", 3, "s3", json!({ "emails": ["bob@example.cz"], "phones": ["777 000 111"] })),
    ]);
    let bob = directory.contact_with_email("bob@example.cz");
    assert_eq!(bob.sessions, ["s2", "s3"], "email outranks phone");
    assert!(bob.state.phones.is_empty(), "the phone stays with its first owner");
    let conflicts: Vec<_> = directory.changes().into_iter().filter(|c| c.kind == ChangeKind::IdentityConflict).collect();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].contact_id, bob.contact_id);
    assert_eq!(conflicts[0].data.identifier.as_deref(), Some("phone:+420777000111"));
    let timeline = directory.store.timeline(&"acme".into(), &bob.contact_id, None, 100).unwrap();
    assert!(timeline.iter().any(|e| e.kind == contactd::model::EntryKind::IdentityConflict));
}

#[test]
fn custom_parameters_identify_only_when_the_tenant_says_so() {
    let mut directory = Directory::new();
    directory.feed(&[
        identified("e1", 1, "s1", json!({ "params": { "crm_id": "C-1" } })),
        configure("cfg", 2),
        identified("e2", 3, "s2", json!({ "params": { "crm_id": "C-1", "color": "red" } })),
        identified("e3", 4, "s3", json!({ "params": { "crm_id": "C-1" } })),
    ]);
    let contacts = directory.export();
    assert_eq!(contacts.len(), 1, "before configuration crm_id was not an identifier");
    assert_eq!(contacts[0].sessions, ["s2", "s3"]);
    assert_eq!(contacts[0].state.params, [("crm_id".to_owned(), "C-1".to_owned())].into());
}

#[test]
fn operator_names_win_and_guest_names_are_last_writer_wins() {
    let mut directory = Directory::new();
    directory.feed(&[
        identified("e1", 10, "s1", json!({ "emails": ["cy@example.cz"], "name": "Cy New" })),
        identified("e2", 5, "s1", json!({ "name": "Cy Old" })),
    ]);
    assert_eq!(
        directory.contact_with_email("cy@example.cz").state.name.as_deref(),
        Some("Cy New"),
        "an older name arriving late loses"
    );
    directory.feed(&[with(event("e3", "contact.updated", 1, Some("s1")), "payload", json!({ "set_name": "Cyril (VIP)" }))]);
    directory.feed(&[identified("e4", 20, "s1", json!({ "name": "cy" }))]);
    assert_eq!(
        directory.contact_with_email("cy@example.cz").state.name.as_deref(),
        Some("Cyril (VIP)"),
        "an operator's name always wins"
    );
}

fn email(id: &str, minute: u32, session: &str, participants: &[&str]) -> serde_json::Value {
    let e = with(event(id, "email.received", minute, Some(session)), "channel", json!("email"));
    with(
        e,
        "payload",
        json!({ "thread_id": session, "message_id": id, "subject": "Invoice", "text": "see attached", "participants": participants }),
    )
}

#[test]
fn email_threads_go_to_the_first_participant_in_the_directory() {
    let mut directory = Directory::new();
    directory.feed(&[
        identified("known-a", 0, "s0", json!({ "emails": ["a@example.cz"] })),
        identified("known-b", 0, "s00", json!({ "emails": ["b@example.cz"] })),
        // a) the first participant is known
        email("m1", 1, "t1", &["a@example.cz", "b@example.cz"]),
        // b) only a later participant is known
        email("m2", 2, "t2", &["stranger@example.cz", "b@example.cz"]),
        // c) nobody is known: the first address founds a contact
        email("m3", 3, "t3", &["new@example.cz", "other@example.cz"]),
    ]);
    assert!(directory.contact_with_email("a@example.cz").sessions.contains(&"t1".into()));
    assert!(directory.contact_with_email("b@example.cz").sessions.contains(&"t2".into()));
    let new = directory.contact_with_email("new@example.cz");
    assert_eq!(new.sessions, ["t3"]);
    assert!(
        directory.export().iter().all(|c| !c.state.emails.contains(&"other@example.cz".to_owned())),
        "other participants are other people"
    );
}

#[test]
fn linking_a_resolved_session_merges_its_contact() {
    let mut directory = Directory::new();
    directory.feed(&[
        identified("e1", 1, "s1", json!({ "emails": ["x@example.cz"] })),
        identified("e2", 2, "s2", json!({ "phones": ["+420777000222"] })),
        message("e3", 3, "s2", "hello from y"),
    ]);
    let x = directory.contact_with_email("x@example.cz").contact_id;
    let y = directory.export().into_iter().find(|c| c.contact_id != x).unwrap().contact_id;
    directory.feed(&[with(event("e4", "session.linked", 4, Some("s2")), "contact_id", json!(x))]);
    let contacts = directory.export();
    assert_eq!(contacts.len(), 1, "y was merged into x");
    assert_eq!(contacts[0].contact_id, x);
    assert_eq!(contacts[0].state.phones, ["+420777000222"]);
    assert_eq!(contacts[0].sessions, ["s1", "s2"]);
    let timeline = directory.store.timeline(&"acme".into(), &x, None, 100).unwrap();
    assert!(timeline.iter().any(|e| e.text == "hello from y"));
    // The old id redirects, so events naming it still land on x.
    directory.feed(&[with(
        with(event("e5", "note.added", 5, None), "contact_id", json!(y)),
        "payload",
        json!({ "note_id": "n", "author": "op", "text": "note via old id" }),
    )]);
    assert!(directory.store.timeline(&"acme".into(), &x, None, 100).unwrap().iter().any(|e| e.text == "note via old id"));
}

/// Found by the reference model (tests/it/model.rs): an operator resolving an
/// anonymous session resolves it like any other event would, so the browser
/// it waited with finds the contact next time.
#[test]
fn linking_an_unresolved_session_attaches_what_it_waited_with() {
    let mut directory = Directory::new();
    directory.feed(&[
        identified("e1", 1, "s1", json!({ "emails": ["x@example.cz"] })),
        with(event("e2", "session.started", 2, Some("s2")), "identity", json!({ "browser_id": "b-9" })),
        message("e3", 3, "s2", "anonymous question"),
    ]);
    let x = directory.contact_with_email("x@example.cz").contact_id;
    directory.feed(&[with(event("e4", "session.linked", 4, Some("s2")), "contact_id", json!(x))]);
    let contact = directory.contact_with_email("x@example.cz");
    assert_eq!(contact.state.channel_ids.browser, ["b-9"]);
    assert_eq!(contact.sessions, ["s1", "s2"]);
    directory.feed(&[
        with(event("e5", "session.started", 5, Some("s3")), "identity", json!({ "browser_id": "b-9" })),
        message("e6", 6, "s3", "back again"),
    ]);
    assert_eq!(directory.contact_with_email("x@example.cz").sessions, ["s1", "s2", "s3"]);
}

#[test]
fn unlinking_returns_the_session_entries_to_waiting() {
    let mut directory = Directory::new();
    directory.feed(&[
        identified("e1", 1, "s1", json!({ "emails": ["x@example.cz"] })),
        message("e2", 2, "s1", "wrong person"),
        with(event("e3", "session.unlinked", 3, Some("s1")), "channel", json!("operator")),
    ]);
    let x = directory.contact_with_email("x@example.cz");
    assert!(x.sessions.is_empty());
    let timeline = directory.store.timeline(&"acme".into(), &x.contact_id, None, 100).unwrap();
    assert!(timeline.iter().all(|e| e.session_id.as_deref() != Some("s1")));
    assert_eq!(
        directory.store.pending(&"acme".into(), &"s1".into()).unwrap().len(),
        2,
        "the message and the identifier change of e1 wait again"
    );
}

#[test]
fn deletion_erases_and_older_events_never_bring_it_back() {
    let mut directory = Directory::new();
    directory.feed(&[identified("e1", 10, "s1", json!({ "emails": ["gone@example.cz"] })), message("e2", 11, "s1", "secret")]);
    let id = directory.contact_with_email("gone@example.cz").contact_id;
    directory.feed(&[with(event("del", "contact.deleted", 20, None), "contact_id", json!(id))]);
    assert!(directory.export().is_empty());
    assert!(directory.store.timeline(&"acme".into(), &id, None, 10).unwrap().is_empty());
    let late = directory.feed(&[
        message("e3", 12, "s1", "late message of the erased session"),
        identified("e4", 15, "s9", json!({ "emails": ["gone@example.cz"] })),
        with(
            with(event("e5", "note.added", 15, None), "contact_id", json!(id)),
            "payload",
            json!({ "note_id": "n", "author": "op", "text": "t" }),
        ),
    ]);
    assert_eq!(late.skipped.get("erased"), Some(&3));
    assert!(directory.export().is_empty(), "nothing older than the deletion resurrects it");
    directory.feed(&[identified("e6", 30, "s10", json!({ "emails": ["gone@example.cz"] }))]);
    let reborn = directory.contact_with_email("gone@example.cz");
    assert_ne!(reborn.contact_id, id, "a later event starts a new contact");
    assert_eq!(reborn.sessions, ["s10"]);
}

/// An operator deletes "the contact of this conversation": `contact.deleted`
/// with `session_id` instead of `contact_id` (resolution step 1).
#[test]
fn deletion_by_session_erases_the_sessions_contact_and_a_replay_never_brings_it_back() {
    let mut directory = Directory::new();
    let first = [identified("e1", 10, "s1", json!({ "emails": ["gone@example.cz"] })), message("e2", 11, "s1", "secret")];
    directory.feed(&first);
    let id = directory.contact_with_email("gone@example.cz").contact_id;
    let (report, rejected) = directory.feed_lines(&[event("del", "contact.deleted", 20, Some("s1")).to_string()]);
    assert!(rejected.is_empty(), "deletion by session is not dead-lettered: {rejected:?}");
    assert_eq!(report.applied, 1);
    assert!(directory.export().is_empty(), "the session's contact is erased");
    assert!(directory.store.timeline(&"acme".into(), &id, None, 10).unwrap().is_empty());

    // The same events redelivered, and an older one arriving late, change nothing.
    let replayed: Vec<String> = first.iter().map(ToString::to_string).collect();
    directory.feed_lines(&replayed);
    directory.feed(&[message("e3", 15, "s1", "late message of the erased conversation")]);
    assert!(directory.export().is_empty(), "nothing older than the deletion resurrects it");

    directory.feed(&[identified("e4", 30, "s2", json!({ "emails": ["gone@example.cz"] }))]);
    let reborn = directory.contact_with_email("gone@example.cz");
    assert_ne!(reborn.contact_id, id, "a newer conversation starts a new contact");
    assert_eq!(reborn.sessions, ["s2"]);
}

/// A session that never resolved has no contact to delete: deleting it by
/// session erases what waits in it, and nothing older brings that back.
#[test]
fn deletion_by_an_unresolved_session_erases_what_waits_in_it() {
    let mut directory = Directory::new();
    directory.feed(&[
        with(event("e1", "session.started", 1, Some("s1")), "identity", json!({ "browser_id": "b-1" })),
        message("e2", 2, "s1", "anonymous words"),
    ]);
    assert_eq!(directory.store.pending(&"acme".into(), &"s1".into()).unwrap().len(), 2);
    directory.feed(&[event("del", "contact.deleted", 5, Some("s1"))]);
    assert!(directory.store.pending(&"acme".into(), &"s1".into()).unwrap().is_empty());
    directory.feed(&[
        message("e3", 3, "s1", "late anonymous words"),
        identified("e4", 4, "s1", json!({ "emails": ["late@example.cz"] })),
    ]);
    assert!(directory.export().is_empty(), "events older than the deletion are dropped");
    assert!(directory.store.pending(&"acme".into(), &"s1".into()).unwrap().is_empty());
}

#[test]
fn a_removed_identifier_is_not_re_added_by_an_older_event() {
    let mut directory = Directory::new();
    directory.feed(&[
        identified("e1", 1, "s1", json!({ "emails": ["z@example.cz"], "phones": ["+420777000333"] })),
        with(event("e2", "contact.updated", 10, Some("s1")), "payload", json!({ "remove": { "phones": ["+420777000333"] } })),
        identified("e3", 5, "s1", json!({ "phones": ["+420777000333"] })),
    ]);
    assert!(directory.contact_with_email("z@example.cz").state.phones.is_empty());
    directory.feed(&[identified("e4", 11, "s1", json!({ "phones": ["+420777000333"] }))]);
    assert_eq!(directory.contact_with_email("z@example.cz").state.phones, ["+420777000333"], "a newer event may add it again");
}

#[test]
fn an_event_for_an_unknown_contact_is_dead_lettered() {
    let mut directory = Directory::new();
    let note = with(event("e1", "note.added", 1, None), "contact_id", json!("c-nobody"));
    let (_, rejected) =
        directory.feed_lines(&[with(note, "payload", json!({ "note_id": "n", "author": "op", "text": "t" })).to_string()]);
    assert_eq!(rejected, ["unknown_contact"]);
}

#[test]
fn operators_create_contacts_and_the_changes_carry_state() {
    let mut directory = Directory::new();
    let created = with(event("op-1", "contact.created", 1, None), "channel", json!("operator"));
    directory.feed(&[with(created, "identity", json!({ "name": "Dana", "emails": ["dana@example.cz"], "source": "operator" }))]);
    let dana = directory.contact_with_email("dana@example.cz");
    assert_eq!(dana.state.name.as_deref(), Some("Dana"));
    let changes = directory.changes();
    let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
    assert!(kinds.contains(&ChangeKind::ContactCreated) && kinds.contains(&ChangeKind::IdentifierAdded));
    let with_state: Vec<&Change> = changes.iter().filter(|c| c.data.contact.is_some()).collect();
    assert_eq!(with_state.len(), 1, "the state travels once per event and contact: {changes:?}");
    let last_contact_change = changes.iter().rfind(|c| c.kind != ChangeKind::TimelineAppended).unwrap();
    assert_eq!(with_state[0], last_contact_change);
    let state = with_state[0].data.contact.as_ref().unwrap();
    assert_eq!((state.name.as_deref(), &state.emails[..]), (Some("Dana"), &["dana@example.cz".to_owned()][..]));
    assert!(changes.iter().all(|c| c.caused_by == "op-1" && c.contact_id == dana.contact_id));
}

#[test]
fn a_contact_takes_identifiers_up_to_its_limit_and_records_each_it_refuses() {
    let mut directory = Directory::new();
    let events: Vec<Value> = (0..11)
        .map(|batch| {
            let emails: Vec<String> = (0..100).map(|n| format!("u{}@example.cz", batch * 100 + n)).collect();
            identified(&format!("e{batch}"), batch + 1, "s1", json!({ "emails": emails }))
        })
        .collect();
    let report = directory.feed(&events);
    assert_eq!(report.rejected_total(), 0);
    let contact = directory.contact_with_email("u0@example.cz");
    assert_eq!(contact.state.emails.len(), contactd::model::Limits::default().identifiers_per_contact);
    let changes = directory.changes();
    let refused: Vec<&Change> =
        changes.iter().filter(|c| c.kind == ChangeKind::IdentityConflict && c.data.owner_contact_id.is_none()).collect();
    assert_eq!(refused.len(), 100, "each identifier past the limit is refused in the open");
    assert!(refused.iter().all(|c| c.caused_by == "e10" && c.data.identifier.as_deref().unwrap().starts_with("email:u10")));
    let entries = directory.store.timeline(&"acme".into(), &contact.contact_id, None, 5000).unwrap();
    let noted = entries.iter().filter(|e| e.text.contains("not added: the contact holds 1000 identifiers")).count();
    assert_eq!(noted, 100);

    let mut configured = Directory::new();
    let limits = contactd::model::Limits { identifiers_per_contact: 5, ..contactd::model::Limits::default() };
    let emails: Vec<String> = (0..8).map(|n| format!("v{n}@example.cz")).collect();
    configured.feed_within(&[identified("e1", 1, "s1", json!({ "emails": emails }))], &limits);
    assert_eq!(configured.contact_with_email("v0@example.cz").state.emails.len(), 5, "a configured limit is the one applied");
}

#[test]
fn a_redelivered_event_changes_nothing() {
    let mut directory = Directory::new();
    let events = [identified("e1", 1, "s1", json!({ "emails": ["r@example.cz"] })), message("e2", 2, "s1", "hi")];
    directory.feed(&events);
    let (before, changes) = (directory.export(), directory.changes().len());
    let report = directory.feed(&events);
    assert_eq!(report.duplicates, 2);
    assert_eq!(directory.export(), before);
    assert_eq!(directory.changes().len(), changes);
}

#[test]
fn a_merge_loop_in_corrupt_data_is_an_error_not_a_hang() {
    use contactd::model::{ContactRecord, Timestamp};
    use contactd::store::view::{self, ViewError};
    use contactd::store::{Mutation, Store, StoreError};

    let mut directory = Directory::new();
    let redirect = |from: &str, into: &str| Mutation::PutContact {
        contact_id: from.into(),
        record: ContactRecord::Merged { into: into.into() },
    };
    directory.store.begin().unwrap();
    directory.store.apply(&"acme".into(), Timestamp::from_micros(0), &[redirect("c-a", "c-b"), redirect("c-b", "c-a")]).unwrap();
    directory.store.commit().unwrap();
    let shown = view::contact_view(&directory.store, &"acme".into(), &"c-a".into());
    assert!(matches!(shown, Err(ViewError::Store(StoreError::Corrupt(_)))), "{shown:?}");
    let page = view::timeline_page(&directory.store, &"acme".into(), &"c-b".into(), None, 10);
    assert!(matches!(page, Err(ViewError::Store(StoreError::Corrupt(_)))), "{page:?}");
}

fn operator(id: &str, kind: &str, minute: u32, fields: Value) -> Value {
    let mut e = with(event(id, kind, minute, None), "channel", json!("operator"));
    e.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    e
}

fn open_conflicts(directory: &Directory) -> Vec<contactd::store::view::OpenConflict> {
    contactd::store::view::conflict_page(&directory.store, &"acme".into(), None, 100).unwrap().conflicts
}

/// Two customers' sessions that collide on one e-mail: Jana's chat founds
/// her contact with it, then the WhatsApp contact of another session claims it.
fn a_conflict(directory: &mut Directory) -> (String, String) {
    directory.feed(&[
        identified("e1", 0, "chat-1", json!({ "emails": ["jana@example.cz"] })),
        identified("e2", 1, "wa-1", json!({ "whatsapp_id": "+420777123456" })),
        identified("e3", 2, "wa-1", json!({ "emails": ["jana@example.cz"] })),
    ]);
    let jana = directory.contact_with_email("jana@example.cz").contact_id.into_string();
    let other = directory.export().into_iter().find(|c| c.state.emails.is_empty()).unwrap().contact_id.into_string();
    (jana, other)
}

#[test]
fn an_identity_conflict_waits_in_the_review_queue_until_a_merge_settles_it() {
    let mut directory = Directory::new();
    let (jana, other) = a_conflict(&mut directory);
    let open = open_conflicts(&directory);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0].owner_contact_id.as_deref(), open[0].claimant_contact_id.as_str()),
        (Some(jana.as_str()), other.as_str())
    );
    assert_eq!(
        (open[0].value.as_str(), open[0].event_id.as_str(), open[0].session_id.as_deref()),
        ("jana@example.cz", "e3", Some("wa-1"))
    );
    let raised = directory.changes().into_iter().find(|c| c.kind == ChangeKind::IdentityConflict).expect("a conflict change");
    assert_eq!(raised.data.conflict_id.as_deref(), Some(open[0].conflict_id.as_str()), "the change names the queue's conflict");

    directory.feed(&[operator(
        "e4",
        "contact.merged",
        10,
        json!({ "contact_id": jana, "payload": { "from_contact_id": other } }),
    )]);
    assert!(open_conflicts(&directory).is_empty(), "merged: one contact owns the e-mail");
    let merged = directory.contact_with_email("jana@example.cz");
    assert_eq!(merged.contact_id, jana.as_str());
    assert_eq!(merged.state.channel_ids.whatsapp, ["+420777123456"]);
    assert_eq!(merged.sessions, ["chat-1", "wa-1"]);
    assert_eq!(directory.export().len(), 1);
    let kinds: Vec<ChangeKind> = directory.changes().iter().filter(|c| c.caused_by == "e4").map(|c| c.kind).collect();
    assert_eq!(kinds, [ChangeKind::ContactMerged, ChangeKind::TimelineAppended]);
}

#[test]
fn a_dismissed_or_moved_conflict_leaves_the_queue_and_a_replayed_dismissal_changes_nothing() {
    let mut dismissed = Directory::new();
    a_conflict(&mut dismissed);
    let conflict_id = open_conflicts(&dismissed)[0].conflict_id.clone();
    let dismissal = operator("e4", "conflict.dismissed", 10, json!({ "payload": { "conflict_id": conflict_id } }));
    dismissed.feed(std::slice::from_ref(&dismissal));
    assert!(open_conflicts(&dismissed).is_empty());
    assert_eq!(dismissed.export().len(), 2, "leave as is: nothing moved");
    let replay = dismissed.feed(&[dismissal]);
    assert_eq!(replay.duplicates, 1);
    let stored = dismissed.store.conflict(&"acme".into(), &conflict_id).unwrap().unwrap();
    assert_eq!(stored.closed.map(|d| (d.event_id, d.reason)), Some(("e4".to_owned(), contactd::model::ClosedBy::Dismissed)));
    let (_, rejected) =
        dismissed.feed_lines(&[
            operator("e5", "conflict.dismissed", 11, json!({ "payload": { "conflict_id": "cf-none" } })).to_string()
        ]);
    assert_eq!(rejected, ["unknown_conflict"]);

    // Moved by an operator: removed from the owner, added to the claimant.
    let mut moved = Directory::new();
    let (jana, other) = a_conflict(&mut moved);
    moved.feed(&[operator(
        "e4",
        "contact.updated",
        10,
        json!({ "contact_id": jana, "payload": { "remove": { "emails": ["jana@example.cz"] } } }),
    )]);
    assert!(open_conflicts(&moved).is_empty(), "released: nobody owns the e-mail, so nothing is in conflict");
    moved.feed(&[operator(
        "e5",
        "contact.updated",
        11,
        json!({ "contact_id": other, "payload": { "add": { "emails": ["jana@example.cz"] } } }),
    )]);
    assert_eq!(moved.contact_with_email("jana@example.cz").contact_id, other.as_str());
}

#[test]
fn a_merge_names_its_contacts_and_is_dead_lettered_when_one_is_unknown() {
    let mut directory = Directory::new();
    let (jana, other) = a_conflict(&mut directory);
    let (_, rejected) = directory.feed_lines(&[
        operator("m1", "contact.merged", 10, json!({ "contact_id": jana, "payload": { "from_contact_id": "c-nobody" } }))
            .to_string(),
        operator("m2", "contact.merged", 10, json!({ "contact_id": "c-nobody", "payload": { "from_contact_id": other } }))
            .to_string(),
        operator("m3", "contact.merged", 10, json!({ "contact_id": jana, "payload": { "from_contact_id": jana } })).to_string(),
    ]);
    assert_eq!(rejected, ["unknown_contact", "unknown_contact"], "merging a contact into itself changes nothing");
    // By session: the contact of the conversation in front of the operator.
    directory.feed(&[operator(
        "m4",
        "contact.merged",
        11,
        json!({ "session_id": "chat-1", "payload": { "from_contact_id": other } }),
    )]);
    assert_eq!(directory.export().len(), 1);
    assert_eq!(directory.contact_with_email("jana@example.cz").contact_id, jana.as_str());
}

#[test]
fn explain_says_which_rule_and_event_attached_each_identifier_and_session_through_merges() {
    let mut directory = Directory::new();
    directory.feed(&[
        with(event("e1", "session.started", 0, Some("anon")), "identity", json!({ "browser_id": "b-1" })),
        identified("e2", 1, "anon", json!({ "phones": ["+420 603 111 222"] })),
        identified("e3", 2, "chat-2", json!({ "phones": ["+420603111222"], "emails": ["ann@example.cz"] })),
        with(
            with(event("e4", "email.received", 3, Some("mail-1")), "channel", json!("email")),
            "payload",
            json!({ "thread_id": "t1", "message_id": "m1", "subject": "hi", "text": "hello", "participants": ["ann@example.cz"] }),
        ),
        operator("e5", "contact.created", 4, json!({ "contact_id": "c-op", "identity": { "emails": ["bob@example.cz"] } })),
        operator("e6", "contact.updated", 5, json!({ "contact_id": "c-op", "payload": { "add": { "phones": ["+420 604 000 111"] } } })),
        with(with(event("e7", "session.linked", 6, Some("chat-2")), "contact_id", json!("c-op")), "channel", json!("operator")),
    ]);
    let ann = directory.contact_with_email("ann@example.cz");
    assert_eq!(ann.contact_id, "c-op", "the link merged Ann's contact into the operator's");
    let explained = contactd::store::view::explain_view(&directory.store, &"acme".into(), &"c-op".into()).unwrap();
    let rule_of = |list: &str, key: &str, value: &str| -> (String, String, Vec<String>) {
        let item = explained[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i[key] == value)
            .unwrap_or_else(|| panic!("{value} in {explained}"));
        let merged = item["merged"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| format!("{}:{}", m["by"].as_str().unwrap(), m["event_id"].as_str().unwrap()))
            .collect();
        (item["rule"].as_str().unwrap().to_owned(), item["event_id"].as_str().unwrap().to_owned(), merged)
    };
    let link = vec!["session.linked:e7".to_owned()];
    assert_eq!(rule_of("identifiers", "value", "+420603111222"), ("founded_contact".into(), "e2".into(), link.clone()));
    assert_eq!(rule_of("identifiers", "value", "b-1"), ("waited_in_session".into(), "e2".into(), link.clone()));
    assert_eq!(rule_of("identifiers", "value", "ann@example.cz"), ("unowned_identifier".into(), "e3".into(), link.clone()));
    assert_eq!(rule_of("identifiers", "value", "bob@example.cz"), ("founded_contact".into(), "e5".into(), vec![]));
    assert_eq!(rule_of("identifiers", "value", "+420604000111"), ("operator_add".into(), "e6".into(), vec![]));
    assert_eq!(rule_of("sessions", "session_id", "anon"), ("founded_contact".into(), "e2".into(), link.clone()));
    assert_eq!(rule_of("sessions", "session_id", "chat-2"), ("owner_of_identifier".into(), "e3".into(), link.clone()));
    assert_eq!(rule_of("sessions", "session_id", "mail-1"), ("email_thread".into(), "e4".into(), link));
}

#[test]
fn the_queue_and_explain_stay_right_after_unlinks_and_deletions() {
    // The owner erased: its identifiers are released, so nothing is in conflict.
    let mut owner_gone = Directory::new();
    let (jana, _) = a_conflict(&mut owner_gone);
    owner_gone.feed(&[operator("e4", "contact.deleted", 10, json!({ "contact_id": jana }))]);
    assert!(open_conflicts(&owner_gone).is_empty());
    // The claimant erased: nobody is left to claim it.
    let mut claimant_gone = Directory::new();
    let (_, other) = a_conflict(&mut claimant_gone);
    claimant_gone.feed(&[operator("e4", "contact.deleted", 10, json!({ "contact_id": other }))]);
    assert!(open_conflicts(&claimant_gone).is_empty());
    // An unlink leaves the conflict (ownership did not change) and takes the
    // session out of explain; linking it again records the operator's link.
    let mut unlinked = Directory::new();
    let (jana, other) = a_conflict(&mut unlinked);
    unlinked.feed(&[with(event("e4", "session.unlinked", 10, Some("wa-1")), "channel", json!("operator"))]);
    assert_eq!(open_conflicts(&unlinked).len(), 1);
    let explain = |directory: &Directory, contact: &str| {
        contactd::store::view::explain_view(&directory.store, &"acme".into(), &contact.into()).unwrap()
    };
    assert_eq!(explain(&unlinked, &other)["sessions"], json!([]), "{}", explain(&unlinked, &other));
    let link = with(event("e5", "session.linked", 11, Some("wa-1")), "contact_id", json!(jana));
    unlinked.feed(&[with(link, "channel", json!("operator"))]);
    let sessions = explain(&unlinked, &jana)["sessions"].clone();
    let wa = sessions.as_array().unwrap().iter().find(|s| s["session_id"] == "wa-1").expect("linked again").clone();
    assert_eq!((wa["rule"].as_str(), wa["event_id"].as_str()), (Some("operator_link"), Some("e5")), "{sessions}");
}

/// The lines of a reproduction, tenant `acme`, one minute apart in order.
fn in_order(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .enumerate()
        .map(|(n, fields)| {
            let mut event = json!({
                "schema": "contact-event/v1", "tenant_id": "acme",
                "occurred_at": format!("2026-11-02T08:{n:02}:00Z"),
            });
            for (key, value) in fields.as_object().unwrap() {
                event[key] = value.clone();
            }
            event.to_string()
        })
        .collect()
}

#[test]
fn a_note_naming_another_contact_leaves_the_session_where_it_is_and_its_messages_follow_it() {
    let mut directory = Directory::new();
    directory.feed_lines(&in_order(&[
        json!({"event_id":"e1","type":"session.started","channel":"chat","session_id":"s1","identity":{"emails":["y@example.cz"]},"payload":{}}),
        json!({"event_id":"e2","type":"message.posted","channel":"chat","session_id":"s1","payload":{"message_id":"m1","author":"guest","text":"before"}}),
        json!({"event_id":"e3","type":"contact.created","channel":"operator","contact_id":"X","identity":{"emails":["x@example.cz"]}}),
        json!({"event_id":"e4","type":"note.added","channel":"operator","contact_id":"X","session_id":"s1","payload":{"note_id":"n1","author":"op","text":"note"}}),
        json!({"event_id":"e5","type":"message.posted","channel":"chat","session_id":"s1","payload":{"message_id":"m2","author":"guest","text":"after"}}),
    ]));
    let y = directory.contact_with_email("y@example.cz");
    let x = directory.contact_with_email("x@example.cz");
    assert_eq!(y.sessions, ["s1"]);
    assert!(x.sessions.is_empty(), "a session belongs to one contact: {x:?}");
    let texts = |contact: &contactd::model::ExportedContact| -> Vec<String> {
        let timeline = directory.store.timeline(&"acme".into(), &contact.contact_id, None, 100).unwrap();
        timeline.into_iter().map(|entry| entry.text).collect()
    };
    let y_texts = texts(&y);
    for text in ["before", "note", "after"] {
        assert!(y_texts.contains(&text.to_owned()), "{text} goes with its session to Y: {y_texts:?}");
    }
    assert!(!texts(&x).iter().any(|t| ["before", "note", "after"].contains(&t.as_str())));

    // An operator's edit naming X and the session goes to X, and leaves the session with Y.
    directory.feed_lines(&[json!({
        "schema": "contact-event/v1", "tenant_id": "acme", "occurred_at": "2026-11-02T08:10:00Z",
        "event_id": "e6", "type": "contact.updated", "channel": "operator", "contact_id": "X", "session_id": "s1",
        "payload": { "set_name": "Xena" },
    })
    .to_string()]);
    let x = directory.contact_with_email("x@example.cz");
    assert_eq!(x.state.name.as_deref(), Some("Xena"));
    assert!(x.sessions.is_empty());
    let x_timeline = directory.store.timeline(&"acme".into(), &x.contact_id, None, 100).unwrap();
    assert!(x_timeline.iter().all(|entry| entry.session_id.is_none()), "no entry of a session X does not have: {x_timeline:?}");
    directory.assert_invariants();
}

#[test]
fn a_conflict_settled_by_a_removal_stays_closed_when_a_new_customer_brings_the_phone() {
    let mut directory = Directory::new();
    let lines = in_order(&[
        json!({"event_id":"e1","type":"session.started","channel":"whatsapp","session_id":"s1","identity":{"whatsapp_id":"420704000001","phones":["+420704000001"]},"payload":{}}),
        json!({"event_id":"e2","type":"session.started","channel":"chat","session_id":"s2","identity":{"emails":["b@example.cz"]},"payload":{}}),
        json!({"event_id":"e3","type":"identity.provided","channel":"chat","session_id":"s2","identity":{"phones":["+420704000001"]}}),
        json!({"event_id":"e4","type":"contact.updated","channel":"operator","session_id":"s1","payload":{"remove":{"phones":["+420704000001"]}}}),
        json!({"event_id":"e5","type":"session.started","channel":"whatsapp","session_id":"s3","identity":{"whatsapp_id":"420704000009","phones":["+420704000001"]},"payload":{}}),
    ]);
    directory.feed_lines(&lines[..3]);
    assert_eq!(open_conflicts(&directory).len(), 1);
    directory.feed_lines(&lines[3..4]);
    assert!(open_conflicts(&directory).is_empty(), "released");
    let conflict = directory.store.conflicts(&"acme".into(), None, 10).unwrap().remove(0);
    let closed = conflict.closed.expect("the removal recorded the closing");
    assert_eq!((closed.event_id.as_str(), closed.reason), ("e4", contactd::model::ClosedBy::Released));
    directory.feed_lines(&lines[4..]);
    assert!(open_conflicts(&directory).is_empty(), "C never conflicted with anyone");
    let c = directory.export().into_iter().find(|c| c.state.channel_ids.whatsapp == ["420704000009"]).unwrap();
    assert_eq!(c.state.phones, ["+420704000001"], "the released phone is C's");
    directory.assert_invariants();
}

#[test]
fn an_erased_claimants_conflict_stays_closed_when_its_id_is_reused() {
    let mut directory = Directory::new();
    let lines = in_order(&[
        json!({"event_id":"e1","type":"session.started","channel":"chat","session_id":"s1","identity":{"emails":["a@example.cz"]},"payload":{}}),
        json!({"event_id":"e2","type":"contact.created","channel":"operator","contact_id":"Z","identity":{"emails":["a@example.cz"]}}),
        json!({"event_id":"e3","type":"contact.deleted","channel":"operator","contact_id":"Z"}),
        json!({"event_id":"e4","type":"contact.created","channel":"operator","contact_id":"Z","identity":{"emails":["z@example.cz"]}}),
    ]);
    directory.feed_lines(&lines[..2]);
    assert_eq!(open_conflicts(&directory).len(), 1, "Z claims the e-mail the session's contact owns");
    let (_, rejected) = directory.feed_lines(&lines[2..]);
    assert!(rejected.is_empty());
    assert!(open_conflicts(&directory).is_empty(), "the claimant was erased; the new Z conflicts with nobody");
    assert_eq!(directory.contact_with_email("z@example.cz").contact_id, "Z");
    directory.assert_invariants();
}

#[test]
fn add_client_with_a_known_email_adds_a_contact_and_raises_conflicts() {
    let mut directory = Directory::new();
    let lines = in_order(&[
        json!({"event_id":"e1","type":"session.started","channel":"chat","session_id":"s1","identity":{"emails":["a@example.cz"]},"payload":{}}),
        json!({"event_id":"e2","type":"contact.created","channel":"operator","identity":{"name":"New Person","emails":["a@example.cz"],"phones":["+420704000001"],"source":"operator"}}),
        // Naming a live contact's id, it would edit that contact instead.
        json!({"event_id":"e3","type":"contact.created","channel":"operator","contact_id":"c-of-e1","identity":{"name":"Renamed"}}),
        // With a session: attaches it only if the session has no contact.
        json!({"event_id":"e4","type":"contact.created","channel":"operator","session_id":"s1","identity":{"emails":["c@example.cz"]}}),
        json!({"event_id":"e5","type":"message.posted","channel":"chat","session_id":"s2","payload":{"message_id":"m1","author":"guest","text":"hi"}}),
        json!({"event_id":"e6","type":"contact.created","channel":"operator","session_id":"s2","identity":{"emails":["d@example.cz"]}}),
    ]);
    let (_, rejected) = directory.feed_lines(&lines[..2]);
    assert!(rejected.is_empty());
    let contacts = directory.export();
    assert_eq!(contacts.len(), 2, "+ Add client always adds: {contacts:?}");
    let existing = directory.contact_with_email("a@example.cz");
    assert_eq!(existing.state.name, None, "the existing customer is not renamed");
    assert!(existing.state.phones.is_empty());
    let added = contacts.iter().find(|c| c.contact_id != existing.contact_id).unwrap();
    let create = contactd::event::decode(lines[1].as_bytes()).unwrap();
    assert_eq!(added.contact_id, contactd::resolve::founded_contact_id(&create), "its id is derived from its event");
    assert_eq!(added.state.name.as_deref(), Some("New Person"));
    assert_eq!(added.state.phones, ["+420704000001"], "what nobody owns is the new contact's");
    let open = open_conflicts(&directory);
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (open[0].value.as_str(), open[0].owner_contact_id.as_ref(), &open[0].claimant_contact_id),
        ("a@example.cz", Some(&existing.contact_id), &added.contact_id)
    );

    let renaming = lines[2].replace("c-of-e1", existing.contact_id.as_str());
    assert_eq!(directory.feed_lines(&[renaming]).1, ["contact_exists"]);
    assert_eq!(directory.contact_with_email("a@example.cz").state.name, None);

    directory.feed_lines(&lines[3..]);
    assert!(directory.contact_with_email("c@example.cz").sessions.is_empty(), "s1 stays with its contact");
    assert_eq!(directory.contact_with_email("a@example.cz").sessions, ["s1"]);
    assert_eq!(directory.contact_with_email("d@example.cz").sessions, ["s2"], "an unresolved session attaches");
    directory.assert_invariants();
}

#[test]
fn the_invariant_check_names_each_broken_invariant() {
    let mut directory = Directory::new();
    directory.feed(&[
        identified("e1", 0, "s1", json!({ "emails": ["ann@example.cz"] })),
        identified("e2", 1, "s2", json!({ "emails": ["bob@example.cz"] })),
    ]);
    let clean = directory.assert_invariants();
    assert_eq!((clean.contacts, clean.sessions, clean.identifiers), (2, 2, 2));

    // Corrupt it by hand: Bob's contact also lists Ann's session, and Ann's
    // e-mail claim names Bob.
    let ann = directory.contact_with_email("ann@example.cz").contact_id;
    let bob = directory.contact_with_email("bob@example.cz").contact_id;
    let ann_email = contactd::model::Identifier { kind: contactd::model::IdentifierKind::Email, value: "ann@example.cz".into() };
    use contactd::store::{Mutation, Store};
    directory.store.begin().unwrap();
    let corrupt = [
        Mutation::LinkSession { contact_id: bob.clone(), session_id: "s1".into() },
        Mutation::SetClaim { identifier: ann_email, claim: contactd::model::Claim::Owned { contact_id: bob.clone() } },
    ];
    directory.store.apply(&"acme".into(), contactd::model::Timestamp::from_micros(1), &corrupt).unwrap();
    directory.store.commit().unwrap();
    let report = contactd::store::check::check(&directory.store, None).unwrap();
    let expected = [
        format!("acme: session s1 is listed by contacts {ann} and {bob}"),
        format!("acme: session s1 is listed by contact {bob} but its record names Some(ContactId(\"{ann}\"))"),
        format!("acme: email:ann@example.cz is held by contact {ann} but claimed by Some(ContactId(\"{bob}\"))"),
    ];
    for violation in &expected {
        assert!(report.violations.contains(violation), "{violation} in {:#?}", report.violations);
    }
    assert_eq!(report.violations.len(), expected.len(), "{:#?}", report.violations);
}

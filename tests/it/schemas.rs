//! The JSON Schemas in `schemas/` are the contract's machine-readable form. These
//! tests hold them to the code: the inbound schema accepts exactly what the
//! decoder accepts, and everything the directory emits validates.

use contactd::corpus::{GenOptions, Generator};
use serde_json::{Value, json};

use crate::harness::Directory;

fn validator(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file")).expect("schema is JSON");
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name} is not a valid schema: {e}"))
}

fn assert_schema_agrees_with_decoder(validator: &jsonschema::Validator, line: &str) {
    let decoded = contactd::event::decode(line.as_bytes());
    let valid = serde_json::from_str::<Value>(line).is_ok_and(|v| validator.is_valid(&v));
    assert_eq!(valid, decoded.is_ok(), "schema says {valid}, decoder says {decoded:?} for {line}");
}

#[test]
fn the_event_schema_accepts_exactly_what_the_decoder_accepts() {
    let events = validator("contact-event.v1.schema.json");
    let examples = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.jsonl")).unwrap();
    for line in examples.lines() {
        assert_schema_agrees_with_decoder(&events, line);
    }
    let mut corpus = Vec::new();
    Generator::new(GenOptions { events: 3_000, bad_ratio: 0.01, ..GenOptions::default() }).write(&mut corpus).unwrap();
    for line in String::from_utf8(corpus).unwrap().lines() {
        assert_schema_agrees_with_decoder(&events, line);
    }
}

#[test]
fn the_event_schema_rejects_what_the_decoder_dead_letters() {
    let events = validator("contact-event.v1.schema.json");
    let base = json!({ "schema": "contact-event/v1", "event_id": "e1", "tenant_id": "acme", "type": "message.posted",
        "occurred_at": "2026-11-02T09:00:00+01:00", "channel": "chat", "session_id": "s1",
        "payload": { "message_id": "m", "author": "guest", "text": "hi" } });
    let mutations: Vec<(&str, Value)> = vec![
        ("schema", json!("contact-event/v2")),
        ("event_id", json!("")),
        ("event_id", json!("x".repeat(129))),
        ("tenant_id", json!("a b")),
        ("type", json!("message.deleted")),
        ("occurred_at", json!("2026-11-02T09:00:00")),
        ("occurred_at", json!("2026-11-02 09:00:00Z")),
        ("occurred_at", json!("0000-11-02T09:00:00Z")),
        ("occurred_at", json!("2026-11-02t09:00:00z")),
        ("channel", json!("fax")),
        ("session_id", json!(7)),
        ("payload", json!({ "message_id": "m", "author": "robot", "text": "hi" })),
        ("payload", json!({ "author": "guest", "text": "hi" })),
        ("identity", json!({ "emails": "not-a-list" })),
        ("identity", json!({ "facebook_psid": { "psid": "1" } })),
        ("identity", json!({ "source": "telepathy" })),
        ("identity", json!([])),
        ("identity", json!(["Ann"])),
        ("extra_field", json!("ignored")),
        ("identity", json!({ "name": "Ann", "params": { "crm_id": "C-1" } })),
        ("identity", json!({ "emails": (0..100).map(|n| format!("u{n}@example.cz")).collect::<Vec<_>>() })),
        ("identity", json!({ "phones": (0..101).map(|n| format!("+420777000{n:03}")).collect::<Vec<_>>() })),
        ("identity", json!({ "params": (0..101).map(|n| (format!("p{n}"), json!("v"))).collect::<serde_json::Map<_, _>>() })),
    ];
    assert_schema_agrees_with_decoder(&events, &base.to_string());
    for (field, value) in mutations {
        let mut event = base.clone();
        event[field] = value;
        assert_schema_agrees_with_decoder(&events, &event.to_string());
    }
    let mut no_session = base.clone();
    no_session.as_object_mut().unwrap().remove("session_id");
    assert_schema_agrees_with_decoder(&events, &no_session.to_string());
    let deleted = json!({ "schema": "contact-event/v1", "event_id": "e1", "tenant_id": "acme", "type": "contact.deleted",
        "occurred_at": "2026-11-02T09:00:00Z", "channel": "operator" });
    assert_schema_agrees_with_decoder(&events, &deleted.to_string());

    let operator = |kind: &str, extra: Value| {
        let mut event = json!({ "schema": "contact-event/v1", "event_id": "e1", "tenant_id": "acme", "type": kind,
            "occurred_at": "2026-11-02T09:00:00Z", "channel": "operator" });
        event.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        event.to_string()
    };
    for (kind, extra) in [
        ("contact.merged", json!({ "contact_id": "c-1", "payload": { "from_contact_id": "c-2" } })),
        ("contact.merged", json!({ "session_id": "s1", "payload": { "from_contact_id": "c-2" } })),
        ("contact.merged", json!({ "payload": { "from_contact_id": "c-2" } })),
        ("contact.merged", json!({ "contact_id": "c-1" })),
        ("contact.merged", json!({ "contact_id": "c-1", "payload": { "from_contact_id": "" } })),
        ("contact.merged", json!({ "contact_id": "c-1", "payload": { "from_contact_id": 7 } })),
        ("conflict.dismissed", json!({ "payload": { "conflict_id": "cf-1" } })),
        ("conflict.dismissed", json!({ "payload": {} })),
        ("conflict.dismissed", json!({ "payload": { "conflict_id": "" } })),
        ("conflict.dismissed", json!({})),
    ] {
        assert_schema_agrees_with_decoder(&events, &operator(kind, extra));
    }
}

#[test]
fn every_change_and_snapshot_line_validates() {
    let changes = validator("directory-change.v1.schema.json");
    let snapshot = validator("directory-snapshot.v1.schema.json");
    let mut directory = Directory::new();
    let mut corpus = Vec::new();
    Generator::new(GenOptions { events: 1_500, ..GenOptions::default() }).write(&mut corpus).unwrap();
    let mut lines: Vec<String> = String::from_utf8(corpus).unwrap().lines().map(str::to_owned).collect();
    lines.extend(
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_owned),
    );
    directory.feed_lines(&lines);
    let emitted = directory.changes();
    assert!(emitted.len() > 1_000);
    for change in emitted {
        let value = serde_json::to_value(&change).unwrap();
        if let Err(error) = changes.validate(&value) {
            panic!("{error} in {value}");
        }
    }
    let contacts = directory.export();
    assert!(!contacts.is_empty());
    for contact in contacts {
        let value = serde_json::to_value(&contact).unwrap();
        if let Err(error) = snapshot.validate(&value) {
            panic!("{error} in {value}");
        }
    }
}

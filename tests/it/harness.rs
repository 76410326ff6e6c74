//! A directory in a temporary folder, fed events through the real pipeline.

use contactd::model::{Change, ExportedContact};
use contactd::pipeline::{self, Report};
use contactd::publish::ChangeLog;
use contactd::source::{Origin, RawRecord};
use contactd::store::Store;
use contactd::store::sqlite::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};

pub struct Directory {
    pub store: SqliteStore,
    /// Kept so the folder lives as long as the store.
    _dir: tempfile::TempDir,
}

impl Directory {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("directory.sqlite3"), &SqliteOptions::default()).expect("store opens");
        Self { store, _dir: dir }
    }

    /// Feeds raw lines as one batch, returning the report and rejection reasons.
    pub fn feed_lines(&mut self, lines: &[String]) -> (Report, Vec<&'static str>) {
        let batch: Vec<RawRecord> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| RawRecord {
                payload: line.as_bytes().to_vec(),
                origin: Origin { source: "test".into(), partition: None, position: i as u64 + 1 },
            })
            .collect();
        let outcome = pipeline::process_batch(&mut self.store, &batch).expect("batch applies");
        (outcome.report, outcome.rejections.iter().map(|r| r.reason).collect())
    }

    /// Feeds events one batch each, so every event sees the previous ones committed.
    pub fn feed(&mut self, events: &[Value]) -> Report {
        let mut total = Report::default();
        for event in events {
            total.add(&self.feed_lines(&[event.to_string()]).0);
        }
        total
    }

    pub fn path(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn export(&self) -> Vec<ExportedContact> {
        let mut contacts = Vec::new();
        self.store
            .export(&mut |c| {
                contacts.push(c);
                Ok(())
            })
            .expect("export");
        contacts
    }

    pub fn changes(&self) -> Vec<Change> {
        self.store.read_after(0, usize::MAX).expect("outbox").into_iter().flat_map(|unit| unit.changes).collect()
    }

    pub fn contact_with_email(&self, email: &str) -> ExportedContact {
        self.export()
            .into_iter()
            .find(|c| c.state.emails.iter().any(|e| e == email))
            .unwrap_or_else(|| panic!("no contact has {email}"))
    }
}

/// An event of tenant `acme` at minute `minute` of 2026-11-02.
pub fn event(id: &str, kind: &str, minute: u32, session: Option<&str>) -> Value {
    let mut e = json!({
        "schema": "contact-event/v1",
        "event_id": id,
        "tenant_id": "acme",
        "type": kind,
        "occurred_at": format!("2026-11-02T{:02}:{:02}:00Z", 8 + minute / 60, minute % 60),
        "channel": "chat",
    });
    if let Some(session) = session {
        e["session_id"] = json!(session);
    }
    e
}

pub fn with(mut event: Value, key: &str, value: Value) -> Value {
    event[key] = value;
    event
}

pub fn message(id: &str, minute: u32, session: &str, text: &str) -> Value {
    with(
        event(id, "message.posted", minute, Some(session)),
        "payload",
        json!({ "message_id": id, "author": "guest", "text": text }),
    )
}

pub fn identified(id: &str, minute: u32, session: &str, identity: Value) -> Value {
    with(event(id, "identity.provided", minute, Some(session)), "identity", identity)
}

pub fn configure(id: &str, minute: u32) -> Value {
    let e = with(event(id, "tenant.configured", minute, None), "channel", json!("operator"));
    with(e, "payload", json!({ "identifying_params": ["crm_id"], "default_phone_region": "CZ" }))
}

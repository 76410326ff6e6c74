//! A directory, in memory or in a temporary folder, fed events through the
//! real pipeline; and the servers and processes the tests drive.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use contactd::model::{Change, EntryKind, ExportedContact};
use contactd::pipeline::{self, Report};
use contactd::source::{Origin, RawRecord};
use contactd::store::memory::MemoryStore;
use contactd::store::sqlite::{SqliteOptions, SqliteStore};
use contactd::store::{ChangeSink, Store};
use serde_json::{Value, json};

pub struct Directory<S = MemoryStore> {
    pub store: S,
    /// Kept so the folder lives as long as a store on disk.
    dir: Option<tempfile::TempDir>,
}

impl Directory {
    /// In memory: what the rule tests run on, no file and no server.
    pub fn new() -> Self {
        Self { store: MemoryStore::new(), dir: None }
    }

    pub fn changes(&self) -> Vec<Change> {
        self.store.changes().cloned().collect()
    }
}

impl Directory<SqliteStore> {
    /// The embedded store in a temporary folder, for what reads it back from
    /// disk: its outbox, the index beside it, the CLI.
    pub fn on_disk() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("directory.sqlite3"), &SqliteOptions::default()).expect("store opens");
        Self { store, dir: Some(dir) }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.as_ref().expect("a store on disk has its folder").path()
    }
}

impl<S: Store + ChangeSink> Directory<S> {
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

    /// Feeds events as one batch within `limits`.
    pub fn feed_within(&mut self, events: &[Value], limits: &contactd::model::Limits) -> Report {
        let batch: Vec<RawRecord> = events
            .iter()
            .enumerate()
            .map(|(i, event)| RawRecord {
                payload: event.to_string().into_bytes(),
                origin: Origin { source: "test".into(), partition: None, position: i as u64 + 1 },
            })
            .collect();
        pipeline::process_batch_within(&mut self.store, &batch, limits).expect("batch applies").report
    }

    /// Feeds events one batch each, so every event sees the previous ones committed.
    pub fn feed(&mut self, events: &[Value]) -> Report {
        let mut total = Report::default();
        for event in events {
            total.add(&self.feed_lines(&[event.to_string()]).0);
        }
        total
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

    /// Runs the directory's invariant check (`contactd check`) and fails the
    /// test on any broken invariant.
    pub fn assert_invariants(&self) -> contactd::store::check::Report {
        assert_invariants(&self.store)
    }

    pub fn contact_with_email(&self, email: &str) -> ExportedContact {
        self.export()
            .into_iter()
            .find(|c| c.state.emails.iter().any(|e| e == email))
            .unwrap_or_else(|| panic!("no contact has {email}"))
    }
}

/// The invariant check over every tenant of `store`, failing on a broken one.
pub fn assert_invariants(store: &dyn Store) -> contactd::store::check::Report {
    let report = contactd::store::check::check(store, None).expect("the check reads the store");
    assert!(report.violations.is_empty(), "broken invariants: {:#?}", report.violations);
    report
}

/// An event of tenant `acme` `minute` minutes after 08:00 on 2026-11-02 (up to
/// four weeks later).
pub fn event(id: &str, kind: &str, minute: u32, session: Option<&str>) -> Value {
    let since_midnight = 8 * 60 + minute;
    let (day, hour) = (2 + since_midnight / (24 * 60), since_midnight / 60 % 24);
    let mut e = json!({
        "schema": "contact-event/v1",
        "event_id": id,
        "tenant_id": "acme",
        "type": kind,
        "occurred_at": format!("2026-11-{day:02}T{hour:02}:{:02}:00Z", minute % 60),
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

/// One conversation: which customer, whether they also give a phone, how many
/// messages, and the guest name they type (if any).
#[derive(Clone, Debug)]
pub struct Conversation {
    pub customer: u8,
    pub phone: bool,
    pub messages: u8,
    pub name: Option<u8>,
}

/// Events with distinct times; every identity carries the customer's e-mail, so
/// each customer ends up as exactly one contact whatever the order.
pub fn conversation_events(conversations: &[Conversation]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut minute = 0;
    let mut tick = || {
        minute += 1;
        minute
    };
    for (n, c) in conversations.iter().enumerate() {
        let session = format!("s{n}");
        let mut identity = json!({ "emails": [format!("customer{}@example.cz", c.customer)] });
        if c.phone {
            identity["phones"] = json!([format!("+42077700{:04}", c.customer)]);
        }
        let started = event(&format!("{session}-start"), "session.started", tick(), Some(&session));
        out.push(with(started, "identity", identity.clone()));
        for m in 0..c.messages {
            out.push(message(&format!("{session}-m{m}"), tick(), &session, &format!("{session} message {m}")));
        }
        if let Some(name) = c.name {
            identity["name"] = json!(format!("Name {name} of {}", c.customer));
            out.push(identified(&format!("{session}-id"), tick(), &session, identity));
        }
    }
    out
}

/// The directory with contact ids abstracted away: per contact its e-mails,
/// phones, sessions, name and message texts (sorted, so a duplicate shows).
pub type Canonical = BTreeSet<(Vec<String>, Vec<String>, Vec<String>, Option<String>, Vec<String>)>;

pub fn canonical<S: Store + ?Sized>(store: &S) -> Canonical {
    let mut contacts = Vec::new();
    store
        .export(&mut |c| {
            contacts.push(c);
            Ok(())
        })
        .expect("export");
    contacts
        .into_iter()
        .map(|c| {
            let mut texts: Vec<String> = store
                .timeline(&c.tenant_id, &c.contact_id, None, usize::MAX)
                .expect("timeline")
                .into_iter()
                .filter(|e| e.kind == EntryKind::Message)
                .map(|e| e.text)
                .collect();
            texts.sort();
            let sessions = c.sessions.into_iter().map(contactd::model::SessionId::into_string).collect();
            (c.state.emails, c.state.phones, sessions, c.state.name, texts)
        })
        .collect()
}

/// Panics when an identifier (e-mail, phone, session, channel id) belongs to
/// two contacts of one tenant in an export.
pub fn assert_one_owner_per_identifier(export: &[Value]) {
    let mut owners = std::collections::HashMap::new();
    for contact in export {
        let owned = ["emails", "phones", "sessions"]
            .iter()
            .flat_map(|field| contact[*field].as_array().expect("a list").iter().map(move |v| (*field, v)));
        let channel_ids = contact["channel_ids"]
            .as_object()
            .expect("channel ids")
            .iter()
            .flat_map(|(kind, ids)| ids.as_array().expect("a list").iter().map(move |v| (kind.as_str(), v)));
        for (kind, value) in owned.chain(channel_ids) {
            let key = (contact["tenant_id"].to_string(), kind, value.to_string());
            assert!(owners.insert(key, contact["contact_id"].clone()).is_none(), "{kind} {value} has two owners");
        }
    }
}

/// Long enough for a debug build on a busy two-core machine; only a hang reaches it.
pub const PATIENCE: Duration = Duration::from_secs(180);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port()
}

/// Polls `check` until it holds, panicking with `what` if it never does.
pub fn eventually(what: &str, check: impl FnMut() -> bool) {
    assert!(holds_within_patience(check), "gave up waiting: {what}");
}

/// Polls `check` until it holds or `PATIENCE` runs out; whether it held.
pub fn holds_within_patience(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// A `contactd` process serving HTTP (`worker`, `indexer` or `serve`), killed
/// when dropped.
pub struct Service {
    child: Child,
    probes: String,
    log: PathBuf,
}

impl Service {
    pub fn start(data_dir: &Path, config: &Path, command: &str) -> Self {
        let probes = format!("127.0.0.1:{}", free_port());
        let log = data_dir.with_extension(format!("{}.log", probes.replace([':', '.'], "-")));
        let child = Command::new(env!("CARGO_BIN_EXE_contactd"))
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args([command, "--listen", &probes])
            .env("RUST_LOG", "info,contactd=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("contactd starts");
        let service = Self { child, probes, log };
        eventually("the process serves its probes", || service.get("/healthz").is_some());
        service
    }

    /// Status and body of a GET.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.get_with(path, None)
    }

    /// Status and body of a GET with a bearer token.
    pub fn get_with(&self, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let (status, _, body) = self.request(&format!("GET {path} HTTP/1.1\r\n{authorization}"))?;
        Some((status, body))
    }

    /// Status, head and body of a `method` request with a bearer token, extra
    /// header lines (each ending in CRLF) and a JSON body.
    pub fn send(&self, method: &str, path: &str, token: &str, headers: &str, body: &str) -> Option<(u16, String, String)> {
        let lines = format!(
            "{method} {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n{headers}Content-Type: application/json\r\n\
             Content-Length: {}\r\n",
            body.len()
        );
        let mut stream = TcpStream::connect(&self.probes).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(stream, "{lines}Host: {}\r\nConnection: close\r\n\r\n{body}", self.probes).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        Some((status, head.to_owned(), body.to_owned()))
    }

    /// Status, head and body of a request given as its first lines (request
    /// line and headers, each ending in CRLF); `Host` and `Connection: close` are added.
    pub fn request(&self, lines: &str) -> Option<(u16, String, String)> {
        let mut stream = TcpStream::connect(&self.probes).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        // A server refusing an oversized head answers and closes before it has
        // read the rest, so the write may fail; its answer is still there to read.
        let written = write!(stream, "{lines}Host: {}\r\nConnection: close\r\n\r\n", self.probes);
        let mut response = Vec::new();
        let read = stream.read_to_end(&mut response);
        if response.is_empty() {
            written.ok()?;
            read.ok()?;
        }
        let response = String::from_utf8(response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        Some((status, head.to_owned(), body.to_owned()))
    }

    pub fn ready(&self) -> Option<bool> {
        self.get("/readyz").map(|(status, _)| status == 200)
    }

    /// The sum of every sample of `metric` whose labels contain `labels`.
    pub fn metric(&self, metric: &str, labels: &str) -> f64 {
        let (_, body) = self.get("/metrics").expect("metrics are served");
        body.lines()
            .filter(|line| line.starts_with(metric) && line[metric.len()..].starts_with(['{', ' ']) && line.contains(labels))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(mut self) {
        self.child.kill().expect("the process is killed");
        self.child.wait().expect("the process is reaped");
    }

    /// SIGTERM, then the exit status; the process's log is shown when it is not
    /// a success, since the caller's assertion fails after the log file is gone.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
        let exit = self.child.wait().expect("the process exits");
        if !exit.success() {
            self.show_log(&format!(", which exited with {exit}"));
        }
        exit
    }

    fn show_log(&self, what_happened: &str) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        eprintln!("--- log of the process on {}{what_happened} ---\n{log}", self.probes);
    }
}

impl Drop for Service {
    /// A failing test shows the process's log.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.show_log("");
        }
    }
}

/// The snapshot `contactd export` prints for `data_dir`.
pub fn export(data_dir: &Path) -> Vec<Value> {
    let output = contactd(data_dir, &["export"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Runs the `contactd` binary on `data_dir` with no configuration file.
pub fn contactd(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_contactd"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("CONTACTD_CONFIG")
        .output()
        .expect("contactd runs")
}

pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.jsonl");

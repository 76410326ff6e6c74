//! The embedded store: one SQLite file in WAL mode. Write units are `BEGIN
//! IMMEDIATE` transactions, so several processes can share a data directory and
//! still see identifier claims one at a time. Small records (tenants, sessions,
//! contacts, claims) are served from a cache and written back once per unit;
//! the cache is dropped whenever another process has committed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::encoder::ChangeEncoder;
use super::{DirectoryView, Mutation, Store, StoreError, StoreResult, from_json, identifier_hash, to_json};
use crate::config::SqliteConfig;
use crate::model::{
    Change, Claim, ConflictRecord, ContactId, ContactRecord, ExportedContact, Identifier, SessionId, SessionRecord, TenantConfig,
    TenantId, TimelineCursor, TimelineEntry, Timestamp,
};
use crate::publish::{ChangeLog, ChangeSink, ChangeUnit, EncodedUnit, Outbox};

const SCHEMA_VERSION: i64 = 2;
const STATEMENT_CACHE_CAPACITY: usize = 64;
const PAGE_SIZE: i64 = 16_384;
/// When the background checkpoints fall this many times `checkpoint_pages`
/// behind, the committing connection checkpoints itself, so the log stays
/// bounded.
const INLINE_CHECKPOINT_FACTOR: i32 = 4;
/// Linux shows at most 15 bytes of a thread's name.
pub const CHECKPOINT_THREAD: &str = "sqlite-wal-ckpt";

// Timeline and pending rows are JSON of several hundred bytes: kept in rowid
// tables (appended in arrival order) with a narrow unique index for partition
// reads, because wide rows in a WITHOUT ROWID B-tree make every insert shift and
// split pages. The small record tables stay WITHOUT ROWID.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (tenant TEXT PRIMARY KEY, config TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (tenant TEXT NOT NULL, event_id TEXT NOT NULL, unit INTEGER NOT NULL,
    PRIMARY KEY (tenant, event_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (tenant TEXT NOT NULL, session_id TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (tenant, session_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contacts (tenant TEXT NOT NULL, contact_id TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (tenant, contact_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS contact_sessions (tenant TEXT NOT NULL, contact_id TEXT NOT NULL, session_id TEXT NOT NULL,
    PRIMARY KEY (tenant, contact_id, session_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (tenant TEXT NOT NULL, identifier_hash BLOB NOT NULL, claim TEXT NOT NULL,
    PRIMARY KEY (tenant, identifier_hash)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timeline (tenant TEXT NOT NULL, contact_id TEXT NOT NULL, occurred_at INTEGER NOT NULL,
    entry_id TEXT NOT NULL, entry TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS timeline_by_contact ON timeline (tenant, contact_id, occurred_at, entry_id);
CREATE TABLE IF NOT EXISTS pending (tenant TEXT NOT NULL, session_id TEXT NOT NULL, entry_id TEXT NOT NULL, entry TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS pending_by_session ON pending (tenant, session_id, entry_id);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, changes TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conflicts (tenant TEXT NOT NULL, conflict_id TEXT NOT NULL, raised_at INTEGER NOT NULL,
    record TEXT NOT NULL, PRIMARY KEY (tenant, conflict_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conflicts_newest_first ON conflicts (tenant, raised_at DESC, conflict_id DESC);
";

#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// How long a writer waits for another process's write transaction.
    pub busy_timeout: Duration,
    /// Records kept in the read cache before it is emptied at the next unit.
    pub cache_records: usize,
    /// SQLite's page cache per connection, in MiB.
    pub page_cache_mb: usize,
    /// Log pages that make a commit nudge the checkpoint thread.
    pub checkpoint_pages: i32,
}

impl From<&SqliteConfig> for SqliteOptions {
    fn from(settings: &SqliteConfig) -> Self {
        Self {
            busy_timeout: Duration::from_millis(settings.busy_timeout_ms),
            cache_records: settings.cache_records,
            page_cache_mb: settings.page_cache_mb,
            ..Self::default()
        }
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        // Fewer, larger checkpoints: a page rewritten many times between two
        // checkpoints is copied back once (measured: 4,096 rather than SQLite's
        // 1,000 made ingest about 10% faster).
        Self { busy_timeout: Duration::from_secs(30), cache_records: 2_000_000, page_cache_mb: 256, checkpoint_pages: 4_096 }
    }
}

type Key = (String, String);

/// What this process's connections to one file share.
#[derive(Default)]
struct FileLocks {
    write: WriteGate,
    /// Held while one of this process's connections checkpoints the file.
    /// SQLite answers BUSY at once, busy handler or not, to a checkpoint that
    /// finds another running; a commit that must checkpoint waits on this
    /// instead, so a preempted background checkpoint cannot make it skip.
    checkpoint: Mutex<()>,
}

impl FileLocks {
    /// The locks of the file at `path`, shared by this process's connections to it.
    fn of(path: &Path) -> Arc<Self> {
        static FILES: OnceLock<Mutex<HashMap<PathBuf, Weak<FileLocks>>>> = OnceLock::new();
        let key = path.canonicalize().unwrap_or_else(|_| path.to_owned());
        let mut files = FILES.get_or_init(Mutex::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        files.retain(|_, locks| locks.strong_count() > 0);
        if let Some(locks) = files.get(&key).and_then(Weak::upgrade) {
            return locks;
        }
        let locks = Arc::new(Self::default());
        files.insert(key, Arc::downgrade(&locks));
        locks
    }

    fn checkpointing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.checkpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Lets one connection of this process at a time into a write transaction on a
/// file. Without it, a connection finding another's transaction open sleeps in
/// SQLite's busy handler (1, 2, 5, ... up to 100 ms between tries) well past the
/// other's commit; here it wakes when the other is done (measured: two worker
/// lanes were slower than one before). Other processes still meet SQLite's lock.
#[derive(Default)]
struct WriteGate {
    taken: Mutex<bool>,
    freed: Condvar,
}

impl WriteGate {
    /// False when another connection kept it for all of `timeout`.
    fn enter(&self, timeout: Duration) -> bool {
        let taken = self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut taken, waited) =
            self.freed.wait_timeout_while(taken, timeout, |taken| *taken).unwrap_or_else(std::sync::PoisonError::into_inner);
        if waited.timed_out() && *taken {
            return false;
        }
        *taken = true;
        true
    }

    fn leave(&self) {
        *self.taken.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        self.freed.notify_one();
    }
}

/// Records as last read or written by this connection. `None` caches absence.
/// `dirty` keys were written in the open unit and are flushed at commit.
#[derive(Default)]
struct Cache {
    tenants: HashMap<String, Option<TenantConfig>>,
    sessions: HashMap<Key, Option<SessionRecord>>,
    contacts: HashMap<Key, Option<ContactRecord>>,
    claims: HashMap<(String, [u8; 16]), Option<Claim>>,
    dirty_tenants: Vec<String>,
    dirty_sessions: Vec<Key>,
    dirty_contacts: Vec<Key>,
    dirty_claims: Vec<(String, [u8; 16])>,
}

impl Cache {
    fn len(&self) -> usize {
        self.tenants.len() + self.sessions.len() + self.contacts.len() + self.claims.len()
    }
}

pub struct SqliteStore {
    conn: Connection,
    cache: RefCell<Cache>,
    cache_records: usize,
    /// `PRAGMA data_version` when this connection last held the write lock; a
    /// different value means another process committed and the cache is stale.
    data_version: Option<i64>,
    /// Changes of the open unit, encoded as they come and written as one
    /// outbox row at commit. The row's text buffer goes back to the encoder
    /// after each unit: a unit of 20,000 events is megabytes of JSON, and
    /// growing a new buffer for each one cost a twentieth of the ingest's
    /// writing thread (measured).
    unit_changes: ChangeEncoder,
    /// Units forgotten since the last commit, deleted by the next one.
    forgotten: Vec<u64>,
    /// The last committed unit's changes, when the caller asked to keep them.
    committed: Option<ChangeUnit>,
    keep_committed: bool,
    /// The outbox position of the open unit, taken while holding the write lock
    /// so that events can be stamped with it before the row exists.
    open_unit: Cell<Option<OpenUnit>>,
    background_checkpoints: Arc<AtomicU64>,
    locks: Arc<FileLocks>,
    /// Whether this connection holds the write gate: from `begin` to commit or rollback.
    in_gate: bool,
    busy_timeout: Duration,
}

#[derive(Clone, Copy, Debug)]
struct OpenUnit {
    seq: u64,
    /// Whether an event was stamped with `seq`, so the row must be written even
    /// without changes: a redelivered event must never point at a later unit.
    stamped: bool,
}

impl Drop for SqliteStore {
    /// Lets the process's other connections write, then deletes the units
    /// forgotten since the last commit, so a worker that stops leaves none of them
    /// behind; failing that, they are only published again.
    fn drop(&mut self) {
        self.leave_gate();
        if !self.conn.is_autocommit() {
            return;
        }
        if let Err(error) = self.delete_forgotten() {
            debug!(%error, units = self.forgotten.len(), "forgotten change units stay in the outbox");
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.conn.path()).finish()
    }
}

fn sql_error(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Transient(error.to_string()),
        _ => StoreError::Fatal(error.to_string()),
    }
}

/// Writes the records dirtied in this unit, once each and in key order, so
/// B-tree pages are visited in sequence.
fn write_back<K, T>(
    conn: &Connection,
    sql: &str,
    dirty: &mut Vec<(String, K)>,
    records: &HashMap<(String, K), Option<T>>,
) -> rusqlite::Result<()>
where
    K: Ord + std::hash::Hash + rusqlite::ToSql,
    T: Serialize,
{
    dirty.sort();
    dirty.dedup();
    let mut statement = conn.prepare_cached(sql)?;
    for key in dirty.drain(..) {
        if let Some(Some(record)) = records.get(&key) {
            statement.execute(params![key.0, key.1, to_json(record)])?;
        }
    }
    Ok(())
}

/// WAL is persistent, so only the process that creates the file switches it.
/// The switch needs an exclusive lock and SQLite does not call the busy handler
/// for it: two processes opening a new data dir together must retry by hand.
fn switch_to_wal(conn: &Connection, busy_timeout: Duration) -> StoreResult<()> {
    let started = Instant::now();
    loop {
        // A switch refused for a lock either fails with BUSY or reports the old mode.
        let refused = match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => StoreError::Transient(format!("journal mode stayed {mode}")),
            Err(error) => sql_error(error),
        };
        match refused {
            StoreError::Transient(_) if started.elapsed() < busy_timeout => std::thread::sleep(Duration::from_millis(10)),
            other => return Err(other),
        }
    }
}

/// Every connection that writes has a checkpointer (the ingest thread's and the
/// indexing thread's, or several processes'), and only one checkpoint runs at a
/// time. Within a process they take turns on `FileLocks::checkpoint`; one that
/// finds another process's running gets BUSY at once, which is not a failure,
/// since the next commit over the threshold asks for a checkpoint again.
fn is_busy(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
}

/// Replaces SQLite's automatic checkpoint, which copies the log back into the
/// database inside the commit that crosses the threshold, by a nudge to a
/// thread of this connection's own: the writer goes on while the copy runs
/// (measured: the inline checkpoint was a tenth of the ingest thread's time).
fn install_checkpointer(
    conn: &mut Connection,
    path: &Path,
    locks: &Arc<FileLocks>,
    options: &SqliteOptions,
) -> rusqlite::Result<Arc<AtomicU64>> {
    let done = Arc::new(AtomicU64::new(0));
    let inline_locks = Arc::clone(locks);
    let mut checkpointer = Checkpointer {
        path: path.to_owned(),
        locks: Arc::clone(locks),
        busy_timeout: options.busy_timeout,
        done: Arc::clone(&done),
        nudge: None,
        thread: None,
    };
    let nudge_at = options.checkpoint_pages.max(1);
    let inline_at = nudge_at.saturating_mul(INLINE_CHECKPOINT_FACTOR);
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
        if pages >= inline_at {
            let _running = inline_locks.checkpointing();
            // A failed checkpoint is not an error of the commit that triggered it.
            match wal.checkpoint() {
                Err(error) if is_busy(&error) => debug!(pages, "inline WAL checkpoint skipped: another process's is running"),
                Err(error) => warn!(%error, pages, "inline WAL checkpoint failed"),
                Ok(()) => {}
            }
        } else if pages >= nudge_at {
            checkpointer.nudge();
        }
        Ok(())
    }))?;
    Ok(done)
}

/// The background half of `install_checkpointer`; started on the first nudge,
/// so connections that only read never start a thread. Dropped with the
/// connection, it lets the running checkpoint finish.
struct Checkpointer {
    path: PathBuf,
    locks: Arc<FileLocks>,
    busy_timeout: Duration,
    /// Background checkpoints that ran.
    done: Arc<AtomicU64>,
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn nudge(&mut self) {
        if self.nudge.is_none() {
            let (nudge, nudged) = mpsc::sync_channel::<()>(1);
            let (path, busy_timeout, done) = (self.path.clone(), self.busy_timeout, Arc::clone(&self.done));
            let locks = Arc::clone(&self.locks);
            let started = std::thread::Builder::new().name(CHECKPOINT_THREAD.into()).spawn(move || {
                // A commit waits for this thread only when it is far behind,
                // and then the core it waits on is free for it.
                crate::priority::run_this_thread_in_background();
                // A connection learns that the file is in WAL mode on its first
                // read; until then every checkpoint reports (-1, -1) and copies nothing.
                let opened = Connection::open(&path).and_then(|conn| {
                    conn.busy_timeout(busy_timeout)?;
                    conn.query_row("PRAGMA journal_mode", [], |row| row.get::<_, String>(0))?;
                    Ok(conn)
                });
                let conn = match opened {
                    Ok(conn) => conn,
                    Err(error) => return warn!(%error, "cannot open the checkpoint connection; commits will checkpoint"),
                };
                while nudged.recv().is_ok() {
                    let checkpointed = {
                        let _running = locks.checkpointing();
                        conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE)
                    };
                    match checkpointed {
                        Ok((log_frames, _)) if log_frames >= 0 => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => warn!("background WAL checkpoint did not run"),
                        Err(error) if is_busy(&error) => {
                            debug!("background WAL checkpoint skipped: another process's is running")
                        }
                        Err(error) => warn!(%error, "background WAL checkpoint failed"),
                    }
                }
            });
            match started {
                Ok(thread) => self.thread = Some(thread),
                Err(error) => warn!(%error, "cannot start the checkpoint thread; commits will checkpoint"),
            }
            // Kept even when the thread did not start, so that it is tried once:
            // its receiver is gone and every later nudge finds it disconnected.
            self.nudge = Some(nudge);
        }
        if let Some(nudge) = &self.nudge {
            // Full: a checkpoint is already due and will take these pages too.
            // Disconnected: the thread could not start or open its connection
            // and said so; the inline checkpoint keeps the log bounded.
            let _ = nudge.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.nudge = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteStore {
    pub fn open(path: &Path, options: &SqliteOptions) -> StoreResult<Self> {
        let mut conn = Connection::open(path).map_err(sql_error)?;
        conn.busy_timeout(options.busy_timeout).map_err(sql_error)?;
        // Timeline rows are JSON of several hundred bytes; larger pages keep them
        // out of overflow pages. Only takes effect when the file is created.
        conn.pragma_update(None, "page_size", PAGE_SIZE).map_err(sql_error)?;
        // Room for every statement of the hot path, so none is parsed twice.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        switch_to_wal(&conn, options.busy_timeout)?;
        // NORMAL in WAL mode is durable against process crashes; a power loss may
        // lose the last transactions, which Kafka redelivers.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql_error)?;
        // Negative means KiB. Ingest slows as the file outgrows the page cache.
        let cache_kib = i64::try_from(options.page_cache_mb.saturating_mul(1024)).unwrap_or(i64::MAX);
        conn.pragma_update(None, "cache_size", -cache_kib).map_err(sql_error)?;
        let locks = FileLocks::of(path);
        let background_checkpoints = install_checkpointer(&mut conn, path, &locks, options).map_err(sql_error)?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_error)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(sql_error)?;
        if version > SCHEMA_VERSION {
            conn.execute_batch("ROLLBACK").map_err(sql_error)?;
            return Err(StoreError::Fatal(format!(
                "{} has schema version {version}; this build knows up to {SCHEMA_VERSION}",
                path.display()
            )));
        }
        if version == 1 {
            // Version 2 records, per event, the outbox unit holding its changes.
            conn.execute_batch("ALTER TABLE events ADD COLUMN unit INTEGER NOT NULL DEFAULT 0").map_err(sql_error)?;
        }
        conn.execute_batch(SCHEMA).map_err(sql_error)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sql_error)?;
        conn.execute_batch("COMMIT").map_err(sql_error)?;
        Ok(Self {
            conn,
            cache: RefCell::new(Cache::default()),
            cache_records: options.cache_records,
            data_version: None,
            unit_changes: ChangeEncoder::default(),
            forgotten: Vec::new(),
            committed: None,
            keep_committed: false,
            locks,
            in_gate: false,
            busy_timeout: options.busy_timeout,
            open_unit: Cell::new(None),
            background_checkpoints,
        })
    }

    /// Checkpoints this connection's commits have had run on its checkpoint thread.
    pub fn background_checkpoints(&self) -> u64 {
        self.background_checkpoints.load(Ordering::Relaxed)
    }

    fn data_version(&self) -> StoreResult<i64> {
        self.conn.pragma_query_value(None, "data_version", |row| row.get(0)).map_err(sql_error)
    }

    /// Looks `key` up in a cache map, reading and remembering it on a miss.
    /// Outside a unit (the API, `contact`) it reads the file: only `begin`
    /// learns whether another process committed since the cache was filled.
    fn cached<K, T>(
        &self,
        map: impl Fn(&mut Cache) -> &mut HashMap<K, Option<T>>,
        key: K,
        load: impl FnOnce() -> StoreResult<Option<T>>,
    ) -> StoreResult<Option<T>>
    where
        K: std::hash::Hash + Eq,
        T: Clone,
    {
        if self.open_unit.get().is_none() {
            return load();
        }
        if let Some(hit) = map(&mut self.cache.borrow_mut()).get(&key) {
            return Ok(hit.clone());
        }
        let value = load()?;
        map(&mut self.cache.borrow_mut()).insert(key, value.clone());
        Ok(value)
    }

    fn delete_forgotten(&self) -> rusqlite::Result<()> {
        if self.forgotten.is_empty() {
            return Ok(());
        }
        let mut forget = self.conn.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        for seq in &self.forgotten {
            forget.execute(params![seq.cast_signed()])?;
        }
        Ok(())
    }

    fn leave_gate(&mut self) {
        if std::mem::take(&mut self.in_gate) {
            self.locks.write.leave();
        }
    }

    /// Keeps each committed unit's changes for [`Self::take_committed_unit`],
    /// for a caller that hands them to its indexer in memory.
    pub fn keep_committed_units(&mut self) {
        self.keep_committed = true;
    }

    /// The changes of the unit the last commit wrote to the outbox, as values;
    /// `None` when it wrote none or they were taken.
    pub fn take_committed_unit(&mut self) -> Option<ChangeUnit> {
        self.committed.take()
    }

    /// Writes the unit's dirty records and its changes; returns the outbox
    /// position it wrote them under, if it wrote a row, with the changes when
    /// they are to be kept.
    fn flush(&mut self) -> rusqlite::Result<Option<(u64, Vec<Change>)>> {
        let mut cache = self.cache.borrow_mut();
        let cache = &mut *cache;
        let mut tenants = std::mem::take(&mut cache.dirty_tenants);
        tenants.sort();
        tenants.dedup();
        for tenant in tenants {
            if let Some(Some(config)) = cache.tenants.get(&tenant) {
                self.conn
                    .prepare_cached("INSERT OR REPLACE INTO tenants (tenant, config) VALUES (?1, ?2)")?
                    .execute(params![tenant.as_str(), to_json(config)])?;
            }
        }
        write_back(
            &self.conn,
            "INSERT OR REPLACE INTO sessions (tenant, session_id, record) VALUES (?1, ?2, ?3)",
            &mut cache.dirty_sessions,
            &cache.sessions,
        )?;
        write_back(
            &self.conn,
            "INSERT OR REPLACE INTO contacts (tenant, contact_id, record) VALUES (?1, ?2, ?3)",
            &mut cache.dirty_contacts,
            &cache.contacts,
        )?;
        write_back(
            &self.conn,
            "INSERT OR REPLACE INTO claims (tenant, identifier_hash, claim) VALUES (?1, ?2, ?3)",
            &mut cache.dirty_claims,
            &cache.claims,
        )?;
        self.delete_forgotten()?;
        let Some(unit) = self.open_unit.get() else { return Ok(None) };
        if !unit.stamped && self.unit_changes.is_empty() {
            return Ok(None);
        }
        let encoded = self.unit_changes.finish(self.keep_committed);
        let lines = std::str::from_utf8(&encoded.lines).expect("serde_json writes UTF-8");
        let written = self
            .conn
            .prepare_cached("INSERT INTO outbox (seq, changes) VALUES (?1, ?2)")
            .and_then(|mut insert| insert.execute(params![unit.seq.cast_signed(), lines]));
        self.unit_changes.reuse(encoded.lines);
        written?;
        Ok(Some((unit.seq, encoded.changes)))
    }

    /// The JSON rows of a query, decoded.
    fn entries<T: DeserializeOwned>(&self, sql: &str, params: impl rusqlite::Params) -> StoreResult<Vec<T>> {
        let mut statement = self.conn.prepare_cached(sql).map_err(sql_error)?;
        let rows = statement.query_map(params, |row| row.get::<_, String>(0)).map_err(sql_error)?;
        rows.map(|row| from_json(&row.map_err(sql_error)?)).collect()
    }

    fn apply_one(&self, tenant: &TenantId, mutation: &Mutation) -> rusqlite::Result<()> {
        let conn = &self.conn;
        let mut cache = self.cache.borrow_mut();
        match mutation {
            Mutation::MarkSeen { event_id } => {
                let seq = self.open_unit.get().map_or(0, |unit| unit.seq);
                self.open_unit.set(Some(OpenUnit { seq, stamped: true }));
                conn.prepare_cached("INSERT OR IGNORE INTO events (tenant, event_id, unit) VALUES (?1, ?2, ?3)")?
                    .execute(params![tenant.as_str(), event_id, seq.cast_signed()])?;
            }
            Mutation::PutTenantConfig(config) => {
                cache.tenants.insert(tenant.to_string(), Some(config.clone()));
                cache.dirty_tenants.push(tenant.to_string());
            }
            Mutation::PutSession { session_id, record } => {
                let key = (tenant.to_string(), session_id.to_string());
                cache.sessions.insert(key.clone(), Some(record.clone()));
                cache.dirty_sessions.push(key);
            }
            Mutation::PutContact { contact_id, record } => {
                let key = (tenant.to_string(), contact_id.to_string());
                cache.contacts.insert(key.clone(), Some(record.clone()));
                cache.dirty_contacts.push(key);
            }
            Mutation::SetClaim { identifier, claim } => {
                let key = (tenant.to_string(), identifier_hash(identifier));
                cache.claims.insert(key.clone(), Some(claim.clone()));
                cache.dirty_claims.push(key);
            }
            Mutation::LinkSession { contact_id, session_id } => {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO contact_sessions (tenant, contact_id, session_id) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![tenant.as_str(), contact_id.as_str(), session_id.as_str()])?;
            }
            Mutation::UnlinkSession { contact_id, session_id } => {
                conn.prepare_cached("DELETE FROM contact_sessions WHERE tenant = ?1 AND contact_id = ?2 AND session_id = ?3")?
                    .execute(params![tenant.as_str(), contact_id.as_str(), session_id.as_str()])?;
            }
            Mutation::PutEntry { contact_id, entry } => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO timeline (tenant, contact_id, occurred_at, entry_id, entry) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![tenant.as_str(), contact_id.as_str(), entry.occurred_at.micros(), entry.entry_id, to_json(entry)])?;
            }
            Mutation::DeleteEntry { contact_id, occurred_at, entry_id } => {
                conn.prepare_cached(
                    "DELETE FROM timeline WHERE tenant = ?1 AND contact_id = ?2 AND occurred_at = ?3 AND entry_id = ?4",
                )?
                .execute(params![tenant.as_str(), contact_id.as_str(), occurred_at.micros(), entry_id])?;
            }
            Mutation::DeleteTimeline { contact_id } => {
                conn.prepare_cached("DELETE FROM timeline WHERE tenant = ?1 AND contact_id = ?2")?
                    .execute(params![tenant.as_str(), contact_id.as_str()])?;
            }
            Mutation::PutPending { session_id, entry } => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO pending (tenant, session_id, entry_id, entry) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![tenant.as_str(), session_id.as_str(), entry.entry_id, to_json(entry)])?;
            }
            Mutation::ClearPending { session_id } => {
                conn.prepare_cached("DELETE FROM pending WHERE tenant = ?1 AND session_id = ?2")?
                    .execute(params![tenant.as_str(), session_id.as_str()])?;
            }
            Mutation::PutConflict(record) => {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO conflicts (tenant, conflict_id, raised_at, record) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    tenant.as_str(),
                    record.conflict_id,
                    record.raised_at.micros(),
                    to_json(record)
                ])?;
            }
        }
        Ok(())
    }

    fn row<T: DeserializeOwned>(&self, sql: &str, params: impl rusqlite::Params) -> StoreResult<Option<T>> {
        let text: Option<String> = self
            .conn
            .prepare_cached(sql)
            .map_err(sql_error)?
            .query_row(params, |row| row.get(0))
            .optional()
            .map_err(sql_error)?;
        text.map(|t| from_json(&t)).transpose()
    }
}

impl DirectoryView for SqliteStore {
    fn tenant_config(&self, tenant: &TenantId) -> StoreResult<Option<TenantConfig>> {
        self.cached(
            |c| &mut c.tenants,
            tenant.to_string(),
            || self.row("SELECT config FROM tenants WHERE tenant = ?1", params![tenant.as_str()]),
        )
    }

    fn event_unit(&self, tenant: &TenantId, event_id: &str) -> StoreResult<Option<u64>> {
        self.conn
            .prepare_cached("SELECT unit FROM events WHERE tenant = ?1 AND event_id = ?2")
            .map_err(sql_error)?
            .query_row(params![tenant.as_str(), event_id], |row| row.get::<_, i64>(0))
            .optional()
            .map(|unit| unit.map(i64::unsigned_abs))
            .map_err(sql_error)
    }

    fn session(&self, tenant: &TenantId, session_id: &SessionId) -> StoreResult<Option<SessionRecord>> {
        self.cached(
            |c| &mut c.sessions,
            (tenant.to_string(), session_id.to_string()),
            || {
                self.row(
                    "SELECT record FROM sessions WHERE tenant = ?1 AND session_id = ?2",
                    params![tenant.as_str(), session_id.as_str()],
                )
            },
        )
    }

    fn claim(&self, tenant: &TenantId, identifier: &Identifier) -> StoreResult<Option<Claim>> {
        let hash = identifier_hash(identifier);
        self.cached(
            |c| &mut c.claims,
            (tenant.to_string(), hash),
            || self.row("SELECT claim FROM claims WHERE tenant = ?1 AND identifier_hash = ?2", params![tenant.as_str(), hash]),
        )
    }

    fn contact(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<Option<ContactRecord>> {
        self.cached(
            |c| &mut c.contacts,
            (tenant.to_string(), contact_id.to_string()),
            || {
                self.row(
                    "SELECT record FROM contacts WHERE tenant = ?1 AND contact_id = ?2",
                    params![tenant.as_str(), contact_id.as_str()],
                )
            },
        )
    }

    fn contact_sessions(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<Vec<SessionId>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT session_id FROM contact_sessions WHERE tenant = ?1 AND contact_id = ?2 ORDER BY session_id")
            .map_err(sql_error)?;
        let rows = statement
            .query_map(params![tenant.as_str(), contact_id.as_str()], |row| row.get::<_, String>(0).map(SessionId::from))
            .map_err(sql_error)?;
        rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
    }

    fn timeline(
        &self,
        tenant: &TenantId,
        contact_id: &ContactId,
        before: Option<&TimelineCursor>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match before {
            None => self.entries(
                "SELECT entry FROM timeline WHERE tenant = ?1 AND contact_id = ?2
                 ORDER BY occurred_at DESC, entry_id DESC LIMIT ?3",
                params![tenant.as_str(), contact_id.as_str(), limit],
            ),
            Some(cursor) => self.entries(
                "SELECT entry FROM timeline WHERE tenant = ?1 AND contact_id = ?2 AND (occurred_at, entry_id) < (?3, ?4)
                 ORDER BY occurred_at DESC, entry_id DESC LIMIT ?5",
                params![tenant.as_str(), contact_id.as_str(), cursor.occurred_at.micros(), cursor.entry_id, limit],
            ),
        }
    }

    fn timeline_len(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<u64> {
        self.conn
            .prepare_cached("SELECT COUNT(*) FROM timeline WHERE tenant = ?1 AND contact_id = ?2")
            .map_err(sql_error)?
            .query_row(params![tenant.as_str(), contact_id.as_str()], |row| row.get::<_, i64>(0))
            .map(i64::unsigned_abs)
            .map_err(sql_error)
    }

    fn pending(&self, tenant: &TenantId, session_id: &SessionId) -> StoreResult<Vec<TimelineEntry>> {
        self.entries(
            "SELECT entry FROM pending WHERE tenant = ?1 AND session_id = ?2 ORDER BY entry_id",
            params![tenant.as_str(), session_id.as_str()],
        )
    }

    fn conflict(&self, tenant: &TenantId, conflict_id: &str) -> StoreResult<Option<ConflictRecord>> {
        self.row("SELECT record FROM conflicts WHERE tenant = ?1 AND conflict_id = ?2", params![tenant.as_str(), conflict_id])
    }

    fn conflicts(&self, tenant: &TenantId, before: Option<&TimelineCursor>, limit: usize) -> StoreResult<Vec<ConflictRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match before {
            None => self.entries(
                "SELECT record FROM conflicts WHERE tenant = ?1 ORDER BY raised_at DESC, conflict_id DESC LIMIT ?2",
                params![tenant.as_str(), limit],
            ),
            Some(cursor) => self.entries(
                "SELECT record FROM conflicts WHERE tenant = ?1 AND (raised_at, conflict_id) < (?2, ?3)
                 ORDER BY raised_at DESC, conflict_id DESC LIMIT ?4",
                params![tenant.as_str(), cursor.occurred_at.micros(), cursor.entry_id, limit],
            ),
        }
    }
}

impl Store for SqliteStore {
    fn begin(&mut self) -> StoreResult<()> {
        if !self.in_gate {
            if !self.locks.write.enter(self.busy_timeout) {
                return Err(StoreError::Transient("another connection of this process kept the write lock".into()));
            }
            self.in_gate = true;
        }
        if let Err(error) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            self.leave_gate();
            return Err(sql_error(error));
        }
        let version = match self.data_version() {
            Ok(version) => version,
            Err(error) => {
                self.rollback()?;
                return Err(error);
            }
        };
        if self.data_version != Some(version) || self.cache.borrow().len() > self.cache_records {
            *self.cache.borrow_mut() = Cache::default();
        }
        self.data_version = Some(version);
        let next_seq =
            self.conn.query_row("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0) + 1", [], |row| {
                row.get::<_, i64>(0)
            });
        match next_seq {
            Ok(seq) => self.open_unit.set(Some(OpenUnit { seq: seq.unsigned_abs(), stamped: false })),
            Err(error) => {
                self.rollback()?;
                return Err(sql_error(error));
            }
        }
        Ok(())
    }

    fn apply(&mut self, tenant: &TenantId, _at: Timestamp, mutations: &[Mutation]) -> StoreResult<()> {
        if self.open_unit.get().is_none() {
            return Err(StoreError::Fatal("a write outside a unit; call begin first".into()));
        }
        for mutation in mutations {
            self.apply_one(tenant, mutation).map_err(sql_error)?;
        }
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        let written = self.flush().map_err(sql_error)?;
        self.conn.execute_batch("COMMIT").map_err(sql_error)?;
        self.open_unit.set(None);
        self.leave_gate();
        self.forgotten.clear();
        self.committed = written.filter(|_| self.keep_committed).map(|(seq, changes)| ChangeUnit { seq, changes });
        Ok(())
    }

    fn rollback(&mut self) -> StoreResult<()> {
        // The cache holds the unit's uncommitted writes: forget it all.
        *self.cache.borrow_mut() = Cache::default();
        self.unit_changes.discard();
        self.open_unit.set(None);
        self.data_version = None;
        let rolled_back = if self.conn.is_autocommit() { Ok(()) } else { self.conn.execute_batch("ROLLBACK").map_err(sql_error) };
        self.leave_gate();
        rolled_back
    }

    fn export(&self, visit: &mut dyn FnMut(ExportedContact) -> StoreResult<()>) -> StoreResult<()> {
        let mut statement = self
            .conn
            .prepare("SELECT tenant, contact_id, record FROM contacts ORDER BY tenant, contact_id")
            .map_err(sql_error)?;
        let mut rows = statement.query([]).map_err(sql_error)?;
        while let Some(row) = rows.next().map_err(sql_error)? {
            let tenant = TenantId::from(row.get::<_, String>(0).map_err(sql_error)?);
            let contact_id = ContactId::from(row.get::<_, String>(1).map_err(sql_error)?);
            let ContactRecord::Active(contact) = from_json(&row.get::<_, String>(2).map_err(sql_error)?)? else {
                continue;
            };
            visit(ExportedContact {
                sessions: self.contact_sessions(&tenant, &contact_id)?,
                timeline_entries: self.timeline_len(&tenant, &contact_id)?,
                state: contact.state(),
                tenant_id: tenant,
                contact_id,
            })?;
        }
        Ok(())
    }
}

impl ChangeSink for SqliteStore {
    /// Kept with the open write unit and written in the same transaction: a
    /// change is durable exactly when the effects it describes are.
    fn publish(&mut self, changes: Vec<Change>) -> StoreResult<()> {
        self.unit_changes.push(changes);
        Ok(())
    }

    fn open_unit(&self) -> Option<u64> {
        self.open_unit.get().map(|unit| unit.seq)
    }
}

impl Outbox for SqliteStore {
    fn unit(&self, seq: u64) -> StoreResult<Option<EncodedUnit>> {
        if self.forgotten.contains(&seq) {
            return Ok(None);
        }
        let text: Option<String> = self
            .conn
            .prepare_cached("SELECT changes FROM outbox WHERE seq = ?1")
            .map_err(sql_error)?
            .query_row(params![seq.cast_signed()], |row| row.get(0))
            .optional()
            .map_err(sql_error)?;
        text.map(|text| EncodedUnit::parse(seq, text)).transpose()
    }

    /// Deleted with the next unit's write rather than in a transaction of its own,
    /// which cost the worker a fifth of its lanes' time (a commit, and a wait for
    /// the write lock another lane held). Until then `unit` no longer returns it;
    /// should the process stop first, the row is published again only if one of
    /// its events is redelivered, which at-least-once delivery allows.
    fn forget_unit(&mut self, seq: u64) -> StoreResult<()> {
        self.forgotten.push(seq);
        Ok(())
    }
}

impl ChangeLog for SqliteStore {
    fn read_after(&self, after: u64, max_units: usize) -> StoreResult<Vec<ChangeUnit>> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT seq, changes FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(sql_error)?;
        let limit = i64::try_from(max_units).unwrap_or(i64::MAX);
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(params![after, limit], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))
            .map_err(sql_error)?;
        rows.map(|row| {
            let (seq, text) = row.map_err(sql_error)?;
            let changes = text.lines().map(from_json).collect::<StoreResult<_>>()?;
            Ok(ChangeUnit { seq: seq.unsigned_abs(), changes })
        })
        .collect()
    }

    fn trim_through(&mut self, seq: u64) -> StoreResult<()> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached("DELETE FROM outbox WHERE seq <= ?1")
            .map_err(sql_error)?
            .execute(params![seq])
            .map_err(sql_error)?;
        Ok(())
    }
}

//! The store at scale: ScyllaDB through the `scylla` driver, shared by any
//! number of workers. There are no multi-row transactions, so a write unit is
//! kept in memory (reads see it) and written at commit by the protocol in
//! `unit.rs`: records by compare-and-set with lightweight transactions, rows
//! idempotently, and a redo kept until the unit is whole, so that a unit a
//! worker left half written is finished or undone by the next one to meet it.
//!
//! The driver is async; the `Store` seam is synchronous and runs on the
//! worker's lane threads, so the store blocks on its own small runtime.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

mod unit;

pub use unit::CommitStep;

use super::{DirectoryView, Mutation, ReadAhead, Store, StoreError, StoreResult, from_json, identifier_hash, to_json};
use crate::config::{ScyllaConfig, ScyllaTarget};
use crate::model::{
    Change, Claim, ConflictRecord, ContactId, ContactRecord, ExportedContact, Identifier, SessionId, SessionRecord, TenantConfig,
    TenantId, TimelineCursor, TimelineEntry, Timestamp,
};
use crate::publish::{ChangeSink, EncodedUnit, Outbox};

/// The schema this build reads and writes; `contactd migrate` brings a keyspace to it.
pub const SCHEMA_VERSION: i32 = 4;
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../schemas/scylla/001_directory.cql")),
    (2, include_str!("../../../schemas/scylla/002_units.cql")),
    (3, include_str!("../../../schemas/scylla/003_writers.cql")),
    (4, include_str!("../../../schemas/scylla/004_conflicts.cql")),
];
const SCHEMA_COMPONENT: &str = "directory";

/// Where the directory lives and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScyllaOptions {
    /// Contact points, `host` or `host:port` (9042 when omitted).
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsFiles>,
    /// Prefer replicas of this datacenter; LOCAL_* consistency applies to it.
    pub local_dc: Option<String>,
    /// The keyspace's replication map, as CQL, used by `migrate` when it creates the keyspace.
    pub replication: String,
    pub request_timeout: Duration,
    /// Statements one unit keeps in flight while writing its rows.
    pub max_concurrency: usize,
}

impl ScyllaOptions {
    /// The options for `target` with the `[scylla]` section's settings.
    pub fn new(target: ScyllaTarget, settings: &ScyllaConfig) -> Self {
        let tls = settings.tls.then(|| TlsFiles {
            ca_file: settings.tls_ca_file.clone(),
            cert_file: settings.tls_cert_file.clone(),
            key_file: settings.tls_key_file.clone(),
        });
        Self {
            nodes: target.nodes,
            keyspace: target.keyspace,
            username: settings.username.clone(),
            password: settings.password.clone(),
            tls,
            local_dc: settings.local_dc.clone(),
            replication: settings.replication.clone(),
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            max_concurrency: settings.max_concurrency,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the certificate authorities to trust; the system's when absent.
    pub ca_file: Option<String>,
    /// Client certificate and key (PEM), for clusters that require mutual TLS.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

fn transient(error: impl std::fmt::Display) -> StoreError {
    StoreError::Transient(error.to_string())
}

/// Unreachable nodes, timeouts and overload are worth a retry; a rejected
/// statement, missing permission or schema is not.
fn execution_error(error: ExecutionError) -> StoreError {
    let fatal = match &error {
        ExecutionError::BadQuery(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::Unauthorized
                | DbError::AuthenticationError
                | DbError::ConfigError
                | DbError::AlreadyExists { .. }
        ),
        _ => false,
    };
    if fatal { StoreError::Fatal(error.to_string()) } else { StoreError::Transient(error.to_string()) }
}

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

/// Keyspace names are spliced into CQL, so only plain identifiers are accepted.
fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

async fn connect(options: &ScyllaOptions) -> StoreResult<Session> {
    if !valid_keyspace(&options.keyspace) {
        return Err(StoreError::Fatal(format!(
            "keyspace {:?} must be a letter then up to 47 letters, digits or underscores",
            options.keyspace
        )));
    }
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &options.local_dc {
        policy = policy.prefer_datacenter(dc.clone()).permit_dc_failover(false);
    }
    let (consistency, serial) = match options.local_dc {
        Some(_) => (Consistency::LocalQuorum, SerialConsistency::LocalSerial),
        None => (Consistency::Quorum, SerialConsistency::Serial),
    };
    let profile = ExecutionProfile::builder()
        .consistency(consistency)
        .serial_consistency(Some(serial))
        .request_timeout(Some(options.request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&options.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(options.request_timeout)
        .auto_await_schema_agreement(true);
    if let (Some(user), Some(password)) = (&options.username, &options.password) {
        builder = builder.user(user, password);
    }
    if let Some(tls) = &options.tls {
        builder = builder.tls_context(Some(tls_connector(tls)?));
    }
    builder.build().await.map_err(transient)
}

fn tls_connector(files: &TlsFiles) -> StoreResult<openssl::ssl::SslConnectorBuilder> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
    let tls_error = |what: &str, error: openssl::error::ErrorStack| StoreError::Fatal(format!("TLS {what}: {error}"));
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls_error("setup", e))?;
    builder.set_verify(SslVerifyMode::PEER);
    if let Some(ca) = &files.ca_file {
        builder.set_ca_file(ca).map_err(|e| tls_error(&format!("CA file {ca}"), e))?;
    }
    if let Some(cert) = &files.cert_file {
        builder.set_certificate_chain_file(cert).map_err(|e| tls_error(&format!("certificate {cert}"), e))?;
    }
    if let Some(key) = &files.key_file {
        builder.set_private_key_file(key, SslFiletype::PEM).map_err(|e| tls_error(&format!("key {key}"), e))?;
    }
    Ok(builder)
}

/// Creates the keyspace and tables, or brings them up to this build's schema,
/// and records the version. Safe to run any number of times, concurrently too.
pub fn migrate(options: &ScyllaOptions) -> StoreResult<i32> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let session = connect(options).await?;
        let keyspace_options = keyspace_options(&options.keyspace, tablets(&session, &options.keyspace).await?)?;
        let current = schema_version(&session, &options.keyspace).await.unwrap_or(0);
        for (version, script) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
            let script = script
                .replace("{keyspace}", &options.keyspace)
                .replace("{replication}", &options.replication)
                .replace("{keyspace_options}", keyspace_options);
            for statement in statements(&script) {
                if let Err(error) = session.query_unpaged(statement.as_str(), ()).await {
                    // CQL has no `ADD IF NOT EXISTS` that both servers take:
                    // a column that a concurrent or earlier run added is fine.
                    let added = match added_column(&statement) {
                        Some((table, column)) => column_exists(&session, &options.keyspace, table, column).await?,
                        None => false,
                    };
                    if !added {
                        return Err(execution_error(error));
                    }
                }
            }
            session.await_schema_agreement().await.map_err(transient)?;
            session
                .query_unpaged(
                    format!("INSERT INTO {}.schema_version (component, version, applied_at) VALUES (?, ?, ?)", options.keyspace),
                    (SCHEMA_COMPONENT, *version, Timestamp::now().micros()),
                )
                .await
                .map_err(execution_error)?;
        }
        Ok(current.max(SCHEMA_VERSION))
    })
}

/// What the server says about tablets, ScyllaDB's data distribution that
/// (through 2025.3 at least) refuses lightweight transactions, which every
/// claim and record write of this store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tablets {
    /// Apache Cassandra, or a ScyllaDB from before tablets: nothing to say.
    Unknown,
    /// A ScyllaDB that has tablets; whether the keyspace exists and uses them.
    Available { keyspace: Option<bool> },
}

/// ScyllaDB describes its keyspaces' tablets in `system_schema.scylla_keyspaces`
/// (`initial_tablets` is null when they are off); Cassandra has no such table.
async fn tablets(session: &Session, keyspace: &str) -> StoreResult<Tablets> {
    let query = "SELECT * FROM system_schema.scylla_keyspaces WHERE keyspace_name = ?";
    let result = match session.query_unpaged(query, (keyspace,)).await {
        Ok(result) => result,
        // "unconfigured table": not a ScyllaDB.
        Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, _))) => return Ok(Tablets::Unknown),
        Err(other) => return Err(execution_error(other)),
    };
    let rows = result.into_rows_result().map_err(corrupt)?;
    let Some(column) = rows.column_specs().as_slice().iter().position(|spec| spec.name() == "initial_tablets") else {
        return Ok(Tablets::Unknown);
    };
    let row = rows.maybe_first_row::<scylla::value::Row>().map_err(corrupt)?;
    Ok(Tablets::Available { keyspace: row.map(|row| row.columns.get(column).is_some_and(Option::is_some)) })
}

/// What `CREATE KEYSPACE` adds after the replication: tablets off where the
/// server has them. A keyspace that already uses them is refused, with how to
/// make one that works: tablets cannot be turned off in place.
fn keyspace_options(keyspace: &str, tablets: Tablets) -> StoreResult<&'static str> {
    match tablets {
        Tablets::Unknown => Ok(""),
        Tablets::Available { keyspace: Some(true) } => Err(StoreError::Fatal(format!(
            "keyspace {keyspace} uses tablets, and ScyllaDB refuses lightweight transactions there; every claim needs \
             one. Let `contactd migrate` create a new keyspace (it turns tablets off), or create it yourself WITH \
             tablets = {{'enabled': false}} (docs/operations.md)"
        ))),
        Tablets::Available { .. } => Ok(" AND tablets = {'enabled': false}"),
    }
}

/// The statements of a CQL script: `;`-terminated, `--` comments dropped.
fn statements(script: &str) -> Vec<String> {
    let without_comments: String =
        script.lines().map(|line| line.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    without_comments.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// The table and column of an `ALTER TABLE <keyspace>.<table> ADD <column> <type>`.
fn added_column(statement: &str) -> Option<(&str, &str)> {
    let words: Vec<&str> = statement.split_whitespace().collect();
    match words.as_slice() {
        [alter, table_word, name, add, column, _type]
            if alter.eq_ignore_ascii_case("ALTER")
                && table_word.eq_ignore_ascii_case("TABLE")
                && add.eq_ignore_ascii_case("ADD") =>
        {
            Some((name.rsplit('.').next()?, column))
        }
        _ => None,
    }
}

async fn column_exists(session: &Session, keyspace: &str, table: &str, column: &str) -> StoreResult<bool> {
    let result = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
            (keyspace, table, column),
        )
        .await
        .map_err(execution_error)?;
    Ok(result.into_rows_result().map_err(corrupt)?.rows_num() > 0)
}

async fn schema_version(session: &Session, keyspace: &str) -> StoreResult<i32> {
    let result = session
        .query_unpaged(format!("SELECT version FROM {keyspace}.schema_version WHERE component = ?"), (SCHEMA_COMPONENT,))
        .await
        .map_err(execution_error)?;
    let rows = result.into_rows_result().map_err(corrupt)?;
    Ok(rows.maybe_first_row::<(Option<i32>,)>().map_err(corrupt)?.and_then(|(v,)| v).unwrap_or(0))
}

fn runtime() -> StoreResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("contactd-scylla")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Fatal(format!("starting the Scylla driver's runtime: {e}")))
}

/// The four record tables written by compare-and-set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
enum Table {
    Contacts,
    Sessions,
    Tenants,
    Claims,
}

/// A statement prepared once per process, at start-up or, if the server
/// refused it then, at first use: a server that cannot parse a statement (a
/// test server) only fails the operations that need it.
struct Statement {
    cql: String,
    idempotent: bool,
    prepared: tokio::sync::OnceCell<PreparedStatement>,
}

impl Statement {
    fn new(cql: String, idempotent: bool) -> Self {
        Self { cql, idempotent, prepared: tokio::sync::OnceCell::new() }
    }

    async fn prepared(&self, session: &Session) -> StoreResult<&PreparedStatement> {
        self.prepared
            .get_or_try_init(|| async {
                let mut statement = session.prepare(self.cql.as_str()).await.map_err(|error| match error {
                    scylla::errors::PrepareError::ConnectionPoolError(e) => transient(e),
                    other => StoreError::Fatal(format!("preparing {}: {other}", self.cql)),
                })?;
                statement.set_is_idempotent(self.idempotent);
                Ok(statement)
            })
            .await
    }
}

/// Every statement binds its full partition key, so the driver routes it to a
/// replica (and shard) that owns it.
struct Statements {
    read: HashMap<Table, Statement>,
    insert: HashMap<Table, Statement>,
    update: HashMap<Table, Statement>,
    event_unit: Statement,
    mark_seen: Statement,
    contact_sessions: Statement,
    link: Statement,
    unlink: Statement,
    timeline_first: Statement,
    timeline_after: Statement,
    timeline_keys: Statement,
    put_entry: Statement,
    delete_entry: Statement,
    delete_timeline: Statement,
    pending: Statement,
    put_pending: Statement,
    clear_pending: Statement,
    conflict: Statement,
    conflicts_first: Statement,
    conflicts_after: Statement,
    put_conflict: Statement,
    put_conflict_by_id: Statement,
    outbox_insert: Statement,
    outbox_read: Statement,
    outbox_delete: Statement,
    contacts_scan: Statement,
    unit_insert: Statement,
    unit_read: Statement,
    unit_state: Statement,
    units_scan: Statement,
    unit_claim: Statement,
    unit_release: Statement,
    forget_seen: Statement,
}

/// (table, key columns as bound, record column names)
fn record_table(table: Table) -> (&'static str, &'static str) {
    match table {
        Table::Contacts => ("contacts", "tenant = ? AND contact_id = ?"),
        Table::Sessions => ("sessions", "tenant = ? AND session_id = ?"),
        Table::Tenants => ("tenants", "tenant = ?"),
        Table::Claims => ("claims", "tenant = ? AND identifier_hash = ?"),
    }
}

fn insert_columns(table: Table) -> (&'static str, &'static str) {
    match table {
        Table::Contacts => ("tenant, contact_id, record, version, unit", "?, ?, ?, ?, ?"),
        Table::Sessions => ("tenant, session_id, record, version, unit", "?, ?, ?, ?, ?"),
        Table::Tenants => ("tenant, record, version, unit", "?, ?, ?, ?"),
        Table::Claims => ("tenant, identifier_hash, record, version, unit", "?, ?, ?, ?, ?"),
    }
}

impl Statements {
    fn new(keyspace: &str) -> Self {
        let prepare = Statement::new;
        let tables = [Table::Contacts, Table::Sessions, Table::Tenants, Table::Claims];
        let (mut read, mut insert, mut update) = (HashMap::new(), HashMap::new(), HashMap::new());
        for table in tables {
            let (name, key) = record_table(table);
            let (columns, markers) = insert_columns(table);
            read.insert(table, prepare(format!("SELECT record, version, unit FROM {keyspace}.{name} WHERE {key}"), true));
            // Conditional writes are not idempotent to the driver: a retried LWT
            // that already applied would report a conflict.
            insert.insert(
                table,
                prepare(format!("INSERT INTO {keyspace}.{name} ({columns}) VALUES ({markers}) IF NOT EXISTS"), false),
            );
            update.insert(
                table,
                prepare(
                    format!("UPDATE {keyspace}.{name} SET record = ?, version = ?, unit = ? WHERE {key} IF version = ?"),
                    false,
                ),
            );
        }
        let ks = keyspace;
        Self {
            read,
            insert,
            update,
            event_unit: prepare(format!("SELECT unit FROM {ks}.events WHERE tenant = ? AND event_id = ?"), true),
            mark_seen: prepare(format!("INSERT INTO {ks}.events (tenant, event_id, unit) VALUES (?, ?, ?)"), true),
            contact_sessions: prepare(
                format!("SELECT session_id FROM {ks}.contact_sessions WHERE tenant = ? AND contact_id = ?"),
                true,
            ),
            link: prepare(format!("INSERT INTO {ks}.contact_sessions (tenant, contact_id, session_id) VALUES (?, ?, ?)"), true),
            unlink: prepare(
                format!("DELETE FROM {ks}.contact_sessions WHERE tenant = ? AND contact_id = ? AND session_id = ?"),
                true,
            ),
            timeline_first: prepare(format!("SELECT entry FROM {ks}.timeline WHERE tenant = ? AND contact_id = ?"), true),
            timeline_after: prepare(
                format!(
                    "SELECT entry FROM {ks}.timeline WHERE tenant = ? AND contact_id = ? \
                     AND (occurred_at, entry_id) < (?, ?)"
                ),
                true,
            ),
            // Counted by paging through the clustering keys: what COUNT(*) does
            // server-side, in a form every CQL server parses.
            timeline_keys: prepare(format!("SELECT entry_id FROM {ks}.timeline WHERE tenant = ? AND contact_id = ?"), true),
            put_entry: prepare(
                format!(
                    "INSERT INTO {ks}.timeline (tenant, contact_id, occurred_at, entry_id, entry) \
                     VALUES (?, ?, ?, ?, ?)"
                ),
                true,
            ),
            delete_entry: prepare(
                format!(
                    "DELETE FROM {ks}.timeline \
                     WHERE tenant = ? AND contact_id = ? AND occurred_at = ? AND entry_id = ?"
                ),
                true,
            ),
            delete_timeline: prepare(format!("DELETE FROM {ks}.timeline WHERE tenant = ? AND contact_id = ?"), true),
            pending: prepare(format!("SELECT entry FROM {ks}.pending WHERE tenant = ? AND session_id = ?"), true),
            put_pending: prepare(
                format!("INSERT INTO {ks}.pending (tenant, session_id, entry_id, entry) VALUES (?, ?, ?, ?)"),
                true,
            ),
            clear_pending: prepare(format!("DELETE FROM {ks}.pending WHERE tenant = ? AND session_id = ?"), true),
            conflict: prepare(format!("SELECT record FROM {ks}.conflicts_by_id WHERE tenant = ? AND conflict_id = ?"), true),
            conflicts_first: prepare(format!("SELECT record FROM {ks}.conflicts WHERE tenant = ?"), true),
            conflicts_after: prepare(
                format!("SELECT record FROM {ks}.conflicts WHERE tenant = ? AND (raised_at, conflict_id) < (?, ?)"),
                true,
            ),
            put_conflict: prepare(
                format!("INSERT INTO {ks}.conflicts (tenant, raised_at, conflict_id, record) VALUES (?, ?, ?, ?)"),
                true,
            ),
            put_conflict_by_id: prepare(
                format!("INSERT INTO {ks}.conflicts_by_id (tenant, conflict_id, record) VALUES (?, ?, ?)"),
                true,
            ),
            outbox_insert: prepare(format!("INSERT INTO {ks}.outbox (seq, changes) VALUES (?, ?) IF NOT EXISTS"), false),
            outbox_read: prepare(format!("SELECT changes FROM {ks}.outbox WHERE seq = ?"), true),
            outbox_delete: prepare(format!("DELETE FROM {ks}.outbox WHERE seq = ?"), true),
            contacts_scan: prepare(format!("SELECT tenant, contact_id, record FROM {ks}.contacts"), true),
            unit_insert: prepare(format!("INSERT INTO {ks}.units (seq, state, redo) VALUES (?, ?, ?)"), true),
            unit_read: prepare(format!("SELECT state, redo FROM {ks}.units WHERE seq = ?"), true),
            unit_state: prepare(format!("SELECT state FROM {ks}.units WHERE seq = ?"), true),
            units_scan: prepare(format!("SELECT seq, redo FROM {ks}.units"), true),
            unit_claim: prepare(format!("UPDATE {ks}.units SET state = ? WHERE seq = ? IF state = ?"), false),
            unit_release: prepare(format!("DELETE FROM {ks}.units WHERE seq = ? IF state = ?"), false),
            forget_seen: prepare(format!("DELETE FROM {ks}.events WHERE tenant = ? AND event_id = ?"), true),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Statement> {
        let tables = self.read.values().chain(self.insert.values()).chain(self.update.values());
        tables.chain([
            &self.event_unit,
            &self.mark_seen,
            &self.contact_sessions,
            &self.link,
            &self.unlink,
            &self.timeline_first,
            &self.timeline_after,
            &self.timeline_keys,
            &self.put_entry,
            &self.delete_entry,
            &self.delete_timeline,
            &self.pending,
            &self.put_pending,
            &self.clear_pending,
            &self.conflict,
            &self.conflicts_first,
            &self.conflicts_after,
            &self.put_conflict,
            &self.put_conflict_by_id,
            &self.outbox_insert,
            &self.outbox_read,
            &self.outbox_delete,
            &self.contacts_scan,
            &self.unit_insert,
            &self.unit_read,
            &self.unit_state,
            &self.units_scan,
            &self.unit_claim,
            &self.unit_release,
            &self.forget_seen,
        ])
    }
}

/// One connection pool and set of prepared statements per process, shared by
/// every `ScyllaStore` (one per worker lane).
pub struct ScyllaBackend {
    runtime: tokio::runtime::Runtime,
    session: Session,
    statements: Statements,
    max_concurrency: usize,
    last_seq: AtomicU64,
    /// Conditional writes sent, each a Paxos round of the replicas.
    lightweight_transactions: AtomicU64,
}

impl std::fmt::Debug for ScyllaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaBackend").finish_non_exhaustive()
    }
}

impl ScyllaBackend {
    /// Connects and checks that the keyspace has this build's schema.
    pub fn connect(options: &ScyllaOptions) -> StoreResult<Arc<Self>> {
        let runtime = runtime()?;
        let (session, statements) = runtime.block_on(async {
            let session = connect(options).await?;
            let version = schema_version(&session, &options.keyspace).await.map_err(|error| {
                StoreError::Fatal(format!(
                    "keyspace {} has no contactd schema ({error}); run `contactd migrate` first",
                    options.keyspace
                ))
            })?;
            if version != SCHEMA_VERSION {
                return Err(StoreError::Fatal(format!(
                    "keyspace {} has schema version {version}, this build needs {SCHEMA_VERSION}; run `contactd migrate`",
                    options.keyspace
                )));
            }
            let statements = Statements::new(&options.keyspace);
            for statement in statements.all() {
                if let Err(error) = statement.prepared(&session).await {
                    warn!(%error, "statement not prepared at start-up; retried at first use");
                }
            }
            Ok::<_, StoreError>((session, statements))
        })?;
        Ok(Arc::new(Self {
            runtime,
            session,
            statements,
            max_concurrency: options.max_concurrency.max(1),
            last_seq: AtomicU64::new(0),
            lightweight_transactions: AtomicU64::new(0),
        }))
    }

    /// Conditional writes (lightweight transactions) this process has sent.
    pub fn lightweight_transactions(&self) -> u64 {
        self.lightweight_transactions.load(Ordering::Relaxed)
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    async fn execute(&self, statement: &Statement, values: impl SerializeRow) -> StoreResult<QueryResult> {
        let prepared = statement.prepared(&self.session).await?;
        self.session.execute_unpaged(prepared, values).await.map_err(execution_error)
    }

    /// A write whose timestamp is `at`, not the time it reaches the server.
    async fn execute_at(&self, statement: &Statement, values: impl SerializeRow, at: Timestamp) -> StoreResult<()> {
        let mut prepared = statement.prepared(&self.session).await?.clone();
        prepared.set_timestamp(Some(at.micros()));
        self.session.execute_unpaged(&prepared, values).await.map_err(execution_error)?;
        Ok(())
    }

    /// The first `limit` rows, read in pages of at most that size: a bound
    /// limit in the CQL would work as well on Scylla, but paging stops the
    /// server from reading further on every CQL server.
    async fn first<T>(&self, statement: &Statement, values: impl SerializeRow, limit: usize) -> StoreResult<Vec<T>>
    where
        T: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        const MAX_PAGE: usize = 1_000;
        let page = i32::try_from(limit.clamp(1, MAX_PAGE)).unwrap_or(1);
        let rows = self.pages::<T>(statement, values, Some(page)).await?;
        rows.take(limit).try_collect().await
    }

    /// A paged read, for partitions or tables of unbounded size.
    async fn pages<T>(
        &self,
        statement: &Statement,
        values: impl SerializeRow,
        page_size: Option<i32>,
    ) -> StoreResult<impl futures::Stream<Item = StoreResult<T>>>
    where
        T: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        let mut prepared = statement.prepared(&self.session).await?.clone();
        if let Some(size) = page_size {
            prepared.set_page_size(size);
        }
        let pager = self.session.execute_iter(prepared, values).await.map_err(transient)?;
        Ok(pager.rows_stream::<T>().map_err(corrupt)?.map(|row| row.map_err(transient)))
    }

    async fn rows<T>(&self, statement: &Statement, values: impl SerializeRow) -> StoreResult<Vec<T>>
    where
        T: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
    {
        let result = self.execute(statement, values).await?.into_rows_result().map_err(corrupt)?;
        result.rows::<T>().map_err(corrupt)?.collect::<Result<_, _>>().map_err(corrupt)
    }

    /// A conditional write's verdict. A server that answers without an
    /// `[applied]` column ignored the condition: concurrent workers on it could
    /// give one identifier two owners, so the store refuses to go on.
    async fn applied(&self, statement: &Statement, values: Vec<CqlValue>) -> StoreResult<bool> {
        self.lightweight_transactions.fetch_add(1, Ordering::Relaxed);
        let result = self.execute(statement, values).await?;
        let rows = result.into_rows_result().map_err(|_| conditions_ignored())?;
        if rows.column_specs().get_by_index(0).is_none_or(|spec| spec.name() != "[applied]") {
            return Err(conditions_ignored());
        }
        let first = rows.maybe_first_row::<Row>().map_err(corrupt)?;
        Ok(matches!(first.and_then(|row| row.columns.into_iter().next()), Some(Some(CqlValue::Boolean(true)))))
    }

    /// Unit positions: time-ordered, unique across workers by their random low
    /// bits (checked with `IF NOT EXISTS`), increasing within a process.
    fn next_seq(&self) -> u64 {
        let micros = Timestamp::now().micros().unsigned_abs();
        let candidate = (micros << 11 | rand::random::<u64>() & 0x7ff) & (i64::MAX as u64);
        let mut last = self.last_seq.load(Ordering::Relaxed);
        loop {
            let next = candidate.max(last + 1);
            match self.last_seq.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

fn conditions_ignored() -> StoreError {
    StoreError::Fatal(
        "the CQL server ignored a lightweight transaction's condition (no [applied] column): the store needs \
         ScyllaDB or Cassandra with lightweight transactions"
            .into(),
    )
}

/// A statement, its values and, for rows ordered by event time, the write timestamp.
type Write<'a> = (&'a Statement, Vec<CqlValue>, Option<Timestamp>);

/// A record row as read from the database: `version` is `None` when the row
/// was absent; `writer` is the unit that last wrote it, if one may still be
/// writing its rows.
#[derive(Clone, Debug, Default)]
struct Read {
    version: Option<i64>,
    stored: Option<String>,
    writer: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct RecordKey {
    table: Table,
    tenant: String,
    key: Vec<u8>,
}

/// Timeline writes of the unit for one contact, in effect order.
#[derive(Debug, Default)]
struct TimelineOverlay {
    cleared_at: Option<Timestamp>,
    deleted: BTreeMap<(i64, String), Timestamp>,
    put: BTreeMap<(i64, String), (TimelineEntry, Timestamp)>,
}

#[derive(Debug, Default)]
struct PendingOverlay {
    cleared_at: Option<Timestamp>,
    put: BTreeMap<String, (TimelineEntry, Timestamp)>,
}

/// A write unit: everything read and written since `begin`.
#[derive(Debug, Default)]
struct Unit {
    seq: u64,
    stamped: bool,
    /// Records written in this unit, as JSON, by key.
    records: BTreeMap<RecordKey, String>,
    seen: Vec<(String, String)>,
    timelines: BTreeMap<(String, String), TimelineOverlay>,
    pending: BTreeMap<(String, String), PendingOverlay>,
    links: BTreeMap<(String, String), BTreeMap<String, bool>>,
    /// Conflicts raised or dismissed, by tenant and id, with their write time.
    conflicts: BTreeMap<(String, String), (ConflictRecord, Timestamp)>,
    changes: Vec<Change>,
}

/// A later write in the same unit must win over an earlier one even when its
/// event is older: it was resolved against the earlier one's effects.
fn after(at: Timestamp, earlier: Option<Timestamp>) -> Timestamp {
    match earlier {
        Some(earlier) if earlier >= at => Timestamp::from_micros(earlier.micros() + 1),
        _ => at,
    }
}

pub struct ScyllaStore {
    backend: Arc<ScyllaBackend>,
    unit: Option<Unit>,
    /// Records read in the open unit, whose versions its commit checks. Reads
    /// outside a unit (the API, export) are not kept.
    reads: RefCell<BTreeMap<RecordKey, Read>>,
    /// Events of the open unit read ahead and found unprocessed.
    unprocessed: RefCell<HashSet<(String, String)>>,
    /// Units the open unit found whole (`unit::await_whole`).
    whole: RefCell<HashSet<u64>>,
    crash: Option<CommitStep>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore").field("open_unit", &self.unit.as_ref().map(|u| u.seq)).finish()
    }
}

fn record_key(table: Table, tenant: &str, key: &[u8]) -> RecordKey {
    RecordKey { table, tenant: tenant.to_owned(), key: key.to_vec() }
}

fn text_key(key: &RecordKey) -> StoreResult<&str> {
    std::str::from_utf8(&key.key).map_err(corrupt)
}

/// A stored record, or `None` for an empty one: what `undo` leaves of a record
/// that did not exist before a failed unit, which every reader takes as absent.
fn present(stored: Option<String>) -> Option<String> {
    stored.filter(|record| !record.is_empty())
}

/// `SET record = ?, version = ?, unit = ? WHERE <key> IF version = ?`
fn update_values(key: &RecordKey, json: Option<&str>, version: i64, writer: u64, expected: i64) -> StoreResult<Vec<CqlValue>> {
    // An empty record reads as absent (see `read`).
    let record = CqlValue::Text(json.unwrap_or_default().to_owned());
    let mut values = vec![record, CqlValue::BigInt(version), CqlValue::BigInt(writer.cast_signed())];
    values.extend(bind_key(key, vec![CqlValue::BigInt(expected)])?);
    Ok(values)
}

/// Binds a record key's partition key columns, followed by `rest`.
fn bind_key(key: &RecordKey, rest: Vec<CqlValue>) -> StoreResult<Vec<CqlValue>> {
    let mut values = vec![CqlValue::Text(key.tenant.clone())];
    match key.table {
        Table::Tenants => {}
        Table::Claims => values.push(CqlValue::Blob(key.key.clone())),
        Table::Contacts | Table::Sessions => values.push(CqlValue::Text(text_key(key)?.to_owned())),
    }
    values.extend(rest);
    Ok(values)
}

impl ScyllaStore {
    pub fn new(backend: Arc<ScyllaBackend>) -> Self {
        Self {
            backend,
            unit: None,
            reads: RefCell::new(BTreeMap::new()),
            unprocessed: RefCell::new(HashSet::new()),
            whole: RefCell::new(HashSet::new()),
            crash: None,
        }
    }

    fn record<T: DeserializeOwned>(&self, key: RecordKey) -> StoreResult<Option<T>> {
        if let Some(json) = self.unit.as_ref().and_then(|unit| unit.records.get(&key)) {
            return from_json(json).map(Some);
        }
        if let Some(read) = self.reads.borrow().get(&key) {
            return read.stored.as_deref().map(from_json).transpose();
        }
        let read = self.backend.block_on(self.read(&key))?;
        let value = read.stored.as_deref().map(from_json).transpose();
        if self.unit.is_some() {
            self.reads.borrow_mut().insert(key, read);
        }
        value
    }

    async fn read(&self, key: &RecordKey) -> StoreResult<Read> {
        let backend = &self.backend;
        let rows: Vec<(Option<String>, Option<i64>, Option<i64>)> =
            backend.rows(&backend.statements.read[&key.table], bind_key(key, Vec::new())?).await?;
        Ok(match rows.into_iter().next() {
            Some((stored, version, writer)) => Read { version: Some(version.unwrap_or(0)), stored: present(stored), writer },
            None => Read::default(),
        })
    }

    fn unit_mut(&mut self) -> StoreResult<&mut Unit> {
        self.unit.as_mut().ok_or_else(|| StoreError::Fatal("a write outside a unit; call begin first".into()))
    }

    fn write_record(&mut self, key: RecordKey, json: String) -> StoreResult<()> {
        self.unit_mut()?.records.insert(key, json);
        Ok(())
    }

    fn apply_one(&mut self, tenant: &TenantId, at: Timestamp, mutation: &Mutation) -> StoreResult<()> {
        let t = tenant.to_string();
        match mutation {
            Mutation::MarkSeen { event_id } => {
                let unit = self.unit_mut()?;
                unit.stamped = true;
                unit.seen.push((t, event_id.clone()));
            }
            Mutation::PutTenantConfig(config) => self.write_record(record_key(Table::Tenants, tenant, b""), to_json(config))?,
            Mutation::PutSession { session_id, record } => {
                self.write_record(record_key(Table::Sessions, tenant, session_id.as_bytes()), to_json(record))?;
            }
            Mutation::PutContact { contact_id, record } => {
                self.write_record(record_key(Table::Contacts, tenant, contact_id.as_bytes()), to_json(record))?;
            }
            Mutation::SetClaim { identifier, claim } => {
                self.write_record(record_key(Table::Claims, tenant, &identifier_hash(identifier)), to_json(claim))?;
            }
            Mutation::LinkSession { contact_id, session_id } => {
                self.unit_mut()?.links.entry((t, contact_id.to_string())).or_default().insert(session_id.to_string(), true);
            }
            Mutation::UnlinkSession { contact_id, session_id } => {
                self.unit_mut()?.links.entry((t, contact_id.to_string())).or_default().insert(session_id.to_string(), false);
            }
            Mutation::PutEntry { contact_id, entry } => {
                let overlay = self.unit_mut()?.timelines.entry((t, contact_id.to_string())).or_default();
                let key = (entry.occurred_at.micros(), entry.entry_id.clone());
                let at = after(at, overlay.deleted.remove(&key).or(overlay.cleared_at));
                overlay.put.insert(key, (entry.clone(), at));
            }
            Mutation::DeleteEntry { contact_id, occurred_at, entry_id } => {
                let overlay = self.unit_mut()?.timelines.entry((t, contact_id.to_string())).or_default();
                let key = (occurred_at.micros(), entry_id.clone());
                let at = after(at, overlay.put.remove(&key).map(|(_, put_at)| put_at));
                overlay.deleted.insert(key, at);
            }
            Mutation::DeleteTimeline { contact_id } => {
                let overlay = self.unit_mut()?.timelines.entry((t, contact_id.to_string())).or_default();
                let latest = overlay.put.values().map(|(_, put_at)| *put_at).chain(overlay.deleted.values().copied()).max();
                *overlay = TimelineOverlay { cleared_at: Some(after(at, latest)), ..TimelineOverlay::default() };
            }
            Mutation::PutPending { session_id, entry } => {
                let overlay = self.unit_mut()?.pending.entry((t, session_id.to_string())).or_default();
                let at = after(at, overlay.cleared_at);
                overlay.put.insert(entry.entry_id.clone(), (entry.clone(), at));
            }
            Mutation::ClearPending { session_id } => {
                let overlay = self.unit_mut()?.pending.entry((t, session_id.to_string())).or_default();
                let latest = overlay.put.values().map(|(_, put_at)| *put_at).max();
                *overlay = PendingOverlay { cleared_at: Some(after(at, latest)), put: BTreeMap::new() };
            }
            Mutation::PutConflict(record) => {
                // A conflict is raised at its event's time; its closing
                // must shadow that write even when the closing event's clock
                // is behind the raising one's.
                let at = match record.closed {
                    Some(_) => at.max(Timestamp::from_micros(record.raised_at.micros() + 1)),
                    None => at,
                };
                let conflicts = &mut self.unit_mut()?.conflicts;
                let key = (t, record.conflict_id.clone());
                let at = after(at, conflicts.get(&key).map(|(_, written_at)| *written_at));
                conflicts.insert(key, (record.clone(), at));
            }
        }
        Ok(())
    }

    fn stored_conflicts(&self, tenant: &str, before: Option<&TimelineCursor>, limit: usize) -> StoreResult<Vec<ConflictRecord>> {
        let backend = &self.backend;
        let s = &backend.statements;
        let rows: Vec<(Option<String>,)> = backend.block_on(async {
            match before {
                None => backend.first(&s.conflicts_first, (tenant,), limit).await,
                Some(cursor) => {
                    let values = (tenant, cursor.occurred_at.micros(), cursor.entry_id.as_str());
                    backend.first(&s.conflicts_after, values, limit).await
                }
            }
        })?;
        rows.into_iter().filter_map(|(record,)| record).map(|text| from_json(&text)).collect()
    }

    fn stored_timeline(
        &self,
        tenant: &str,
        contact_id: &str,
        before: Option<&TimelineCursor>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEntry>> {
        let backend = &self.backend;
        let s = &backend.statements;
        let rows: Vec<(Option<String>,)> = backend.block_on(async {
            match before {
                None => backend.first(&s.timeline_first, (tenant, contact_id), limit).await,
                Some(cursor) => {
                    let values = (tenant, contact_id, cursor.occurred_at.micros(), cursor.entry_id.as_str());
                    backend.first(&s.timeline_after, values, limit).await
                }
            }
        })?;
        rows.into_iter().filter_map(|(entry,)| entry).map(|text| from_json(&text)).collect()
    }

    /// Runs idempotent writes with bounded concurrency, retrying each a few times
    /// so that one timeout does not send a whole batch back through resolution.
    async fn run_all(&self, writes: &[Write<'_>]) -> StoreResult<()> {
        const ATTEMPTS: u32 = 3;
        let backend = &self.backend;
        futures::stream::iter(writes)
            .map(|(statement, values, at)| async move {
                let mut attempt = 1;
                loop {
                    let result = match at {
                        Some(at) => backend.execute_at(statement, values, *at).await,
                        None => backend.execute(statement, values).await.map(drop),
                    };
                    match result {
                        Ok(()) => return Ok(()),
                        Err(error) if error.is_transient() && attempt < ATTEMPTS => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                        }
                        Err(error) => return Err(error),
                    }
                }
            })
            .buffer_unordered(backend.max_concurrency)
            .try_collect::<()>()
            .await
    }
}

impl ScyllaStore {
    /// The next commit stops after `step` and reports success, as a worker
    /// killed there would leave the unit: for tests of what the next worker
    /// makes of it.
    #[doc(hidden)]
    pub fn crash_next_commit_after(&mut self, step: CommitStep) {
        self.crash = Some(step);
    }
}

impl ScyllaStore {
    /// A claim naming a contact this unit read as absent. That read may
    /// predate the claim's unit, which may be still writing, or half written
    /// by a dead worker. The claim is read again after a scan for its unit
    /// (finished or undone here once stale), until a version read before the
    /// scan is still the stored one: its writer had written its `units` row
    /// before that read and is gone after the scan, so the contact, read again
    /// from now on, is as that writer left it. An identifier is only ever
    /// taken for unowned on that read.
    fn claim_on_missing_contact(&self, key: &RecordKey) -> StoreResult<Option<Claim>> {
        const SCANS: usize = 3;
        let backend = &self.backend;
        let mut before = self.read_again(key)?;
        for _ in 0..SCANS {
            if let Some(seq) = backend.block_on(self.unit_writing(key))? {
                backend.block_on(self.finish_unit(seq, unit::Asker::ClaimReader))?;
            }
            let now = self.read_again(key)?;
            if now.version == before.version {
                let claim: Option<Claim> = now.stored.as_deref().map(from_json).transpose()?;
                if let Some(Claim::Owned { contact_id }) = &claim {
                    self.reads.borrow_mut().remove(&record_key(Table::Contacts, &key.tenant, contact_id.as_bytes()));
                }
                return Ok(claim);
            }
            before = now;
        }
        Err(StoreError::Transient(format!("a claim of tenant {} kept changing while read; resolving again", key.tenant)))
    }

    /// Reads the records at `keys` that the unit has not read, concurrently,
    /// and keeps them for its commit to check; answers the keys of the
    /// contacts that the claims and sessions among them name.
    fn read_records(&self, mut keys: Vec<RecordKey>) -> StoreResult<Vec<RecordKey>> {
        keys.sort();
        keys.dedup();
        keys.retain(|key| !self.reads.borrow().contains_key(key));
        let backend = &self.backend;
        let reads: Vec<(RecordKey, Read)> = backend.block_on(
            futures::stream::iter(keys.into_iter().map(|key| async move {
                let read = self.read(&key).await?;
                StoreResult::Ok((key, read))
            }))
            .buffer_unordered(backend.max_concurrency)
            .try_collect(),
        )?;
        let mut named = Vec::new();
        for (key, read) in &reads {
            let contact = match (key.table, read.stored.as_deref()) {
                (Table::Claims, Some(json)) => match from_json(json)? {
                    Claim::Owned { contact_id } => Some(contact_id),
                    Claim::Released { .. } => None,
                },
                (Table::Sessions, Some(json)) => from_json::<SessionRecord>(json)?.contact_id,
                _ => None,
            };
            named.extend(contact.map(|id| record_key(Table::Contacts, &key.tenant, id.as_bytes())));
        }
        self.reads.borrow_mut().extend(reads);
        Ok(named)
    }

    /// Before a unit reads rows that the record at `guard` guards: the unit
    /// that wrote the record as read (now, if the unit has not read it) is
    /// whole, so its rows are there too.
    fn settle(&self, guard: &RecordKey) -> StoreResult<()> {
        if self.unit.is_none() {
            return Ok(());
        }
        let known = self.reads.borrow().get(guard).map(|read| read.writer);
        let writer = match known {
            Some(writer) => writer,
            None => self.read_again(guard)?.writer,
        };
        self.backend.block_on(self.await_whole(writer.map(i64::unsigned_abs)))
    }

    /// Reads a record from the database, not from what this unit read before,
    /// and keeps the read for the unit's commit to check.
    fn read_again(&self, key: &RecordKey) -> StoreResult<Read> {
        let read = self.backend.block_on(self.read(key))?;
        if self.unit.is_some() {
            self.reads.borrow_mut().insert(key.clone(), read.clone());
        }
        Ok(read)
    }
}

impl DirectoryView for ScyllaStore {
    fn reads_ahead(&self) -> bool {
        true
    }

    /// Reads concurrently what the unit has not read yet, then the contacts
    /// that the claims and sessions just read name.
    fn read_ahead(&self, keys: &ReadAhead) -> StoreResult<()> {
        if self.unit.is_none() {
            return Ok(());
        }
        let mut records: Vec<RecordKey> = keys.tenants.iter().map(|t| record_key(Table::Tenants, t, b"")).collect();
        records.extend(keys.sessions.iter().map(|(t, session)| record_key(Table::Sessions, t, session.as_bytes())));
        records.extend(keys.claims.iter().map(|(t, identifier)| record_key(Table::Claims, t, &identifier_hash(identifier))));
        records.extend(keys.contacts.iter().map(|(t, contact)| record_key(Table::Contacts, t, contact.as_bytes())));
        let named = self.read_records(records)?;
        self.read_records(named)?;
        let backend = &self.backend;
        let unread: Vec<(String, String)> = {
            let unprocessed = self.unprocessed.borrow();
            let events = keys.events.iter().map(|(tenant, event)| (tenant.to_string(), event.clone()));
            events.filter(|event| !unprocessed.contains(event)).collect()
        };
        let found: Vec<((String, String), bool)> = backend.block_on(
            futures::stream::iter(unread.into_iter().map(|(tenant, event)| async move {
                let rows: Vec<(Option<i64>,)> = backend.rows(&backend.statements.event_unit, (&tenant, &event)).await?;
                StoreResult::Ok(((tenant, event), rows.into_iter().any(|(unit,)| unit.is_some())))
            }))
            .buffer_unordered(backend.max_concurrency)
            .try_collect(),
        )?;
        self.unprocessed.borrow_mut().extend(found.into_iter().filter(|(_, processed)| !processed).map(|(event, _)| event));
        Ok(())
    }

    fn tenant_config(&self, tenant: &TenantId) -> StoreResult<Option<TenantConfig>> {
        self.record(record_key(Table::Tenants, tenant, b""))
    }

    fn event_unit(&self, tenant: &TenantId, event_id: &str) -> StoreResult<Option<u64>> {
        if let Some(unit) = &self.unit
            && unit.seen.iter().any(|(t, e)| t == tenant.as_str() && e == event_id)
        {
            return Ok(Some(unit.seq));
        }
        if self.unprocessed.borrow().contains(&(tenant.to_string(), event_id.to_owned())) {
            return Ok(None);
        }
        let backend = &self.backend;
        let rows: Vec<(Option<i64>,)> =
            backend.block_on(backend.rows(&backend.statements.event_unit, (tenant.as_str(), event_id)))?;
        let Some(seq) = rows.into_iter().next().and_then(|(unit,)| unit).map(i64::unsigned_abs) else { return Ok(None) };
        if self.unit.is_none() {
            // A reader outside a unit (the API waiting for an operator's
            // event) takes no unit over from its writer: the event counts
            // as applied once its unit is whole.
            return Ok(backend.block_on(self.is_whole(seq))?.then_some(seq));
        }
        // The event's unit may be one a worker left half written.
        match backend.block_on(self.finish_unit(seq, unit::Asker::Redelivery))? {
            None | Some(unit::Finished::Completed) => Ok(Some(seq)),
            Some(unit::Finished::Undone) => Ok(None),
        }
    }

    fn session(&self, tenant: &TenantId, session_id: &SessionId) -> StoreResult<Option<SessionRecord>> {
        self.record(record_key(Table::Sessions, tenant, session_id.as_bytes()))
    }

    /// Claims are written before the contacts they name (`unit.rs`): a claim
    /// on a contact that does not exist belongs to a unit in progress, which is
    /// waited for (a transient error) or, once stale, finished or undone here.
    /// A claim that no unit in progress wrote names a contact that was undone,
    /// and resolution takes it for unowned.
    fn claim(&self, tenant: &TenantId, identifier: &Identifier) -> StoreResult<Option<Claim>> {
        let key = record_key(Table::Claims, tenant, &identifier_hash(identifier));
        let claim: Option<Claim> = self.record(key.clone())?;
        let Some(Claim::Owned { contact_id }) = &claim else { return Ok(claim) };
        let contact = record_key(Table::Contacts, tenant, contact_id.as_bytes());
        let written_here = self.unit.as_ref().is_some_and(|unit| unit.records.contains_key(&key));
        if written_here || self.record::<ContactRecord>(contact)?.is_some() {
            return Ok(claim);
        }
        self.claim_on_missing_contact(&key)
    }

    fn contact(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<Option<ContactRecord>> {
        self.record(record_key(Table::Contacts, tenant, contact_id.as_bytes()))
    }

    fn contact_sessions(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<Vec<SessionId>> {
        self.settle(&record_key(Table::Contacts, tenant, contact_id.as_bytes()))?;
        let backend = &self.backend;
        let rows: Vec<(Option<String>,)> =
            backend.block_on(backend.rows(&backend.statements.contact_sessions, (tenant.as_str(), contact_id.as_str())))?;
        let mut sessions: BTreeSet<String> = rows.into_iter().filter_map(|(s,)| s).collect();
        if let Some(links) = self.unit.as_ref().and_then(|u| u.links.get(&(tenant.to_string(), contact_id.to_string()))) {
            for (session, linked) in links {
                if *linked {
                    sessions.insert(session.clone());
                } else {
                    sessions.remove(session);
                }
            }
        }
        Ok(sessions.into_iter().map(SessionId::from).collect())
    }

    fn timeline(
        &self,
        tenant: &TenantId,
        contact_id: &ContactId,
        before: Option<&TimelineCursor>,
        limit: usize,
    ) -> StoreResult<Vec<TimelineEntry>> {
        self.settle(&record_key(Table::Contacts, tenant, contact_id.as_bytes()))?;
        let overlay = self.unit.as_ref().and_then(|u| u.timelines.get(&(tenant.to_string(), contact_id.to_string())));
        let Some(overlay) = overlay else { return self.stored_timeline(tenant, contact_id, before, limit) };
        let mut merged: BTreeMap<(i64, String), TimelineEntry> = BTreeMap::new();
        if overlay.cleared_at.is_none() {
            for entry in self.stored_timeline(tenant, contact_id, before, limit.saturating_add(overlay.deleted.len()))? {
                let key = (entry.occurred_at.micros(), entry.entry_id.clone());
                if !overlay.deleted.contains_key(&key) {
                    merged.insert(key, entry);
                }
            }
        }
        let below = |key: &(i64, String)| {
            before.is_none_or(|cursor| (key.0, key.1.as_str()) < (cursor.occurred_at.micros(), cursor.entry_id.as_str()))
        };
        for (key, (entry, _)) in &overlay.put {
            if below(key) {
                merged.insert(key.clone(), entry.clone());
            }
        }
        Ok(merged.into_values().rev().take(limit).collect())
    }

    fn timeline_len(&self, tenant: &TenantId, contact_id: &ContactId) -> StoreResult<u64> {
        self.settle(&record_key(Table::Contacts, tenant, contact_id.as_bytes()))?;
        if self.unit.as_ref().is_some_and(|u| u.timelines.contains_key(&(tenant.to_string(), contact_id.to_string()))) {
            return Ok(self.timeline(tenant, contact_id, None, usize::MAX)?.len() as u64);
        }
        let backend = &self.backend;
        backend.block_on(async {
            let mut rows = std::pin::pin!(
                backend
                    .pages::<(Option<String>,)>(&backend.statements.timeline_keys, (tenant.as_str(), contact_id.as_str()), None)
                    .await?
            );
            let mut count = 0;
            while let Some(row) = rows.next().await {
                row?;
                count += 1;
            }
            Ok(count)
        })
    }

    fn pending(&self, tenant: &TenantId, session_id: &SessionId) -> StoreResult<Vec<TimelineEntry>> {
        self.settle(&record_key(Table::Sessions, tenant, session_id.as_bytes()))?;
        let overlay = self.unit.as_ref().and_then(|u| u.pending.get(&(tenant.to_string(), session_id.to_string())));
        let mut entries: BTreeMap<String, TimelineEntry> = BTreeMap::new();
        if overlay.is_none_or(|o| o.cleared_at.is_none()) {
            let backend = &self.backend;
            let rows: Vec<(Option<String>,)> =
                backend.block_on(backend.rows(&backend.statements.pending, (tenant.as_str(), session_id.as_str())))?;
            for text in rows.into_iter().filter_map(|(entry,)| entry) {
                let entry: TimelineEntry = from_json(&text)?;
                entries.insert(entry.entry_id.clone(), entry);
            }
        }
        for (entry_id, (entry, _)) in overlay.map(|o| &o.put).into_iter().flatten() {
            entries.insert(entry_id.clone(), entry.clone());
        }
        Ok(entries.into_values().collect())
    }

    fn conflict(&self, tenant: &TenantId, conflict_id: &str) -> StoreResult<Option<ConflictRecord>> {
        if let Some((record, _)) = self.unit.as_ref().and_then(|u| u.conflicts.get(&(tenant.to_string(), conflict_id.to_owned())))
        {
            return Ok(Some(record.clone()));
        }
        let backend = &self.backend;
        let rows: Vec<(Option<String>,)> =
            backend.block_on(backend.rows(&backend.statements.conflict, (tenant.as_str(), conflict_id)))?;
        rows.into_iter().find_map(|(record,)| record).map(|text| from_json(&text)).transpose()
    }

    fn conflicts(&self, tenant: &TenantId, before: Option<&TimelineCursor>, limit: usize) -> StoreResult<Vec<ConflictRecord>> {
        let stored = self.stored_conflicts(tenant, before, limit)?;
        let Some(unit) = self.unit.as_ref().filter(|u| !u.conflicts.is_empty()) else { return Ok(stored) };
        let below = |record: &ConflictRecord| {
            before.is_none_or(|cursor| {
                (record.raised_at, record.conflict_id.as_str()) < (cursor.occurred_at, cursor.entry_id.as_str())
            })
        };
        let mut merged: BTreeMap<(Timestamp, String), ConflictRecord> =
            stored.into_iter().map(|record| ((record.raised_at, record.conflict_id.clone()), record)).collect();
        for ((of_tenant, _), (record, _)) in &unit.conflicts {
            if of_tenant == tenant.as_str() && below(record) {
                merged.insert((record.raised_at, record.conflict_id.clone()), record.clone());
            }
        }
        Ok(merged.into_values().rev().take(limit).collect())
    }
}

impl Store for ScyllaStore {
    fn begin(&mut self) -> StoreResult<()> {
        self.reads.borrow_mut().clear();
        self.unprocessed.borrow_mut().clear();
        self.whole.borrow_mut().clear();
        self.unit = Some(Unit { seq: self.backend.next_seq(), ..Unit::default() });
        Ok(())
    }

    fn apply(&mut self, tenant: &TenantId, at: Timestamp, mutations: &[Mutation]) -> StoreResult<()> {
        for mutation in mutations {
            self.apply_one(tenant, at, mutation)?;
        }
        Ok(())
    }

    fn commit(&mut self) -> StoreResult<()> {
        let crash = self.crash.take();
        let unit = self.unit.as_ref().ok_or_else(|| StoreError::Fatal("commit without begin".into()))?;
        self.write_unit(unit, crash)?;
        self.unit = None;
        self.reads.borrow_mut().clear();
        Ok(())
    }

    fn rollback(&mut self) -> StoreResult<()> {
        self.unit = None;
        self.reads.borrow_mut().clear();
        Ok(())
    }

    /// Scans the contacts table (token order), then sorts the live ones: memory
    /// grows with the number of contacts, not their histories.
    fn export(&self, visit: &mut dyn FnMut(ExportedContact) -> StoreResult<()>) -> StoreResult<()> {
        let backend = &self.backend;
        let mut live = backend.block_on(async {
            let mut rows = std::pin::pin!(
                backend.pages::<(String, String, Option<String>)>(&backend.statements.contacts_scan, (), None).await?
            );
            let mut live = Vec::new();
            while let Some(row) = rows.next().await {
                let (tenant, contact_id, record) = row?;
                let Some(record) = present(record) else { continue };
                if let ContactRecord::Active(contact) = from_json(&record)? {
                    live.push((TenantId::from(tenant), ContactId::from(contact_id), contact.state()));
                }
            }
            Ok::<_, StoreError>(live)
        })?;
        live.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        for (tenant, contact_id, state) in live {
            visit(ExportedContact {
                sessions: self.contact_sessions(&tenant, &contact_id)?,
                timeline_entries: self.timeline_len(&tenant, &contact_id)?,
                state,
                tenant_id: tenant,
                contact_id,
            })?;
        }
        Ok(())
    }
}

impl ChangeSink for ScyllaStore {
    fn publish(&mut self, changes: Vec<Change>) -> StoreResult<()> {
        self.unit_mut()?.changes.extend(changes);
        Ok(())
    }

    fn open_unit(&self) -> Option<u64> {
        self.unit.as_ref().map(|unit| unit.seq)
    }
}

impl Outbox for ScyllaStore {
    fn unit(&self, seq: u64) -> StoreResult<Option<EncodedUnit>> {
        let backend = &self.backend;
        let rows: Vec<(Option<String>,)> =
            backend.block_on(backend.rows(&backend.statements.outbox_read, (seq.cast_signed(),)))?;
        rows.into_iter().next().map(|(text,)| EncodedUnit::parse(seq, text.unwrap_or_default())).transpose()
    }

    fn forget_unit(&mut self, seq: u64) -> StoreResult<()> {
        let backend = &self.backend;
        backend.block_on(backend.execute(&backend.statements.outbox_delete, (seq.cast_signed(),)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_column_is_read_from_its_statement() {
        assert_eq!(added_column("ALTER TABLE ks.contacts ADD unit bigint"), Some(("contacts", "unit")));
        assert_eq!(added_column("alter table contacts add unit bigint"), Some(("contacts", "unit")));
        assert_eq!(added_column("ALTER TABLE ks.contacts DROP unit"), None);
        assert_eq!(added_column("CREATE TABLE IF NOT EXISTS ks.units (seq bigint PRIMARY KEY)"), None);
    }

    #[test]
    fn the_schema_script_splits_into_its_statements() {
        let script = MIGRATIONS[0]
            .1
            .replace("{keyspace}", "ks")
            .replace("{replication}", "{'class': 'SimpleStrategy'}")
            .replace("{keyspace_options}", "");
        let statements = statements(&script);
        assert_eq!(statements.len(), 11, "keyspace, schema version and nine tables");
        assert!(statements.iter().all(|s| s.starts_with("CREATE ")), "{statements:?}");
        assert!(statements.iter().all(|s| !s.contains("--")));
    }

    #[test]
    fn a_keyspace_turns_tablets_off_where_the_server_has_them_and_one_using_them_is_refused() {
        assert_eq!(keyspace_options("ks", Tablets::Unknown).unwrap(), "");
        for keyspace in [None, Some(false)] {
            let options = keyspace_options("ks", Tablets::Available { keyspace }).unwrap();
            assert_eq!(options, " AND tablets = {'enabled': false}");
        }
        let refused = keyspace_options("ks", Tablets::Available { keyspace: Some(true) }).unwrap_err().to_string();
        assert!(refused.contains("keyspace ks uses tablets") && refused.contains("'enabled': false"), "{refused}");
        let script = MIGRATIONS[0].1.replace("{keyspace_options}", " AND tablets = {'enabled': false}");
        assert!(script.contains("WITH replication = {replication} AND tablets = {'enabled': false};"));
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        assert!(valid_keyspace("contactd_prod1"));
        for bad in ["", "1ks", "ks; DROP", "ks.x", &"k".repeat(49)] {
            assert!(!valid_keyspace(bad), "{bad}");
        }
    }

    #[test]
    fn a_later_write_in_a_unit_gets_a_later_timestamp() {
        let t = Timestamp::from_micros;
        assert_eq!(after(t(5), None), t(5));
        assert_eq!(after(t(5), Some(t(3))), t(5));
        assert_eq!(after(t(5), Some(t(5))), t(6));
        assert_eq!(after(t(5), Some(t(9))), t(10));
    }
}

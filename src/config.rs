//! One typed configuration, layered: built-in defaults, then a TOML file, then
//! `CONTACTD__SECTION__KEY` environment variables, then command-line flags.
//! Every field's unit and default is documented here and in docs/operations.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::ids::valid_tenant_id;
use crate::model::Limits;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory holding the SQLite store, the index and dead letters. Default `./contactd-data`.
    pub data_dir: PathBuf,
    /// Where the directory is stored: `sqlite:PATH` (a file; `sqlite:` alone is
    /// `DATA_DIR/directory.sqlite3`) or `scylla://host1,host2:9042/keyspace`
    /// with the `[scylla]` options. Default `sqlite:`.
    pub store: String,
    pub ingest: IngestConfig,
    pub index: IndexConfig,
    pub sqlite: SqliteConfig,
    pub scylla: ScyllaConfig,
    pub kafka: KafkaConfig,
    pub worker: WorkerConfig,
    pub indexer: IndexerConfig,
    pub api: ApiConfig,
    pub limits: Limits,
    pub log: LogConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexerConfig {
    /// Consumer group the indexer mirrors its index's offsets to, only so lag
    /// tools can see them; give each replica its own. Default `contactd-indexer`.
    pub group_id: String,
    /// Commit (make searchable) at least this often while changes arrive, in
    /// milliseconds; bounds freshness. Default 500.
    pub commit_interval_ms: u64,
    /// ... or after this many index operations. Default 100000.
    pub commit_every_ops: usize,
    /// Address of the search API, `/metrics`, `/healthz` and `/readyz` of
    /// `indexer` and `serve`. Default `127.0.0.1:9465`.
    pub listen: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Read tokens per tenant, e.g. `acme = ["s3cret"]` under `[api.tokens]`:
    /// search, contacts and timelines of that tenant only. Default none (every
    /// request is refused).
    pub tokens: BTreeMap<String, Vec<String>>,
    /// Write tokens per tenant, under `[api.write_tokens]`: what a read token
    /// opens, and the operator endpoints (create, edit, delete, link, unlink,
    /// notes). Default none.
    pub write_tokens: BTreeMap<String, Vec<String>>,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self {
            group_id: "contactd-indexer".into(),
            commit_interval_ms: 500,
            commit_every_ops: 100_000,
            listen: "127.0.0.1:9465".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated. Default `localhost:9092`.
    pub brokers: String,
    /// Topics of inbound contact events. Default `["contact-events"]`.
    pub events_topics: Vec<String>,
    /// Where directory changes (docs/contract.md 5) are published. Default `directory-changes`.
    pub changes_topic: String,
    /// Where bad input goes unchanged, with the reason in headers. Default `contact-events-dlq`.
    pub dead_letter_topic: String,
    /// The workers' consumer group. Default `contactd-worker`.
    pub group_id: String,
    /// How long the producer keeps retrying one record before reporting a
    /// failure, in milliseconds; the worker then retries the whole publish. Default 30000.
    pub delivery_timeout_ms: u64,
    /// Extra librdkafka properties for every client, for example
    /// `"security.protocol" = "SASL_SSL"`, `"sasl.mechanisms"`, `"sasl.username"`,
    /// `"sasl.password"`, `"ssl.ca.location"`. Default none.
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Parallel processing lanes. Events are assigned to a lane by their Kafka
    /// key (`tenant_id/session_id`), so one session's events stay in order. Lanes share the SQLite write lock, so
    /// more than two mostly wait for each other (measured). Default 2.
    pub lanes: usize,
    /// Most events one lane processes in one write unit; a lane takes what is
    /// queued, so a large bound only matters under load. Default 2000.
    pub batch_size: usize,
    /// Events fetched and not finished before the worker pauses its partitions. Default 20000.
    pub max_in_flight: usize,
    /// How often finished offsets are committed, in milliseconds. Default 1000.
    pub commit_interval_ms: u64,
    /// On shutdown or revocation, how long in-flight events may take to finish,
    /// in seconds. Keep it below the pod's termination grace period. Default 20.
    pub drain_deadline_secs: u64,
    /// Longest wait between retries of a busy store or an unreachable broker, in milliseconds. Default 5000.
    pub max_backoff_ms: u64,
    /// librdkafka statistics interval, which drives the lag metrics, in milliseconds. Default 5000.
    pub statistics_interval_ms: u64,
    /// Address of `/metrics`, `/healthz` and `/readyz`. Default `127.0.0.1:9464`.
    pub listen: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Events per write transaction. Larger batches amortize commits and write each
    /// B-tree page to the log fewer times; smaller ones hold the write lock for less
    /// time when processes share a data dir. Default 20000.
    pub batch_size: usize,
    /// Attempts per batch when the store is busy before the run fails. Default 10.
    pub max_attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Memory for the index writer's in-flight segment, in MiB. Default 128.
    pub writer_memory_mb: usize,
    /// Commit (make searchable) at least this often while changes arrive, in milliseconds. Default 1000.
    pub commit_interval_ms: u64,
    /// ... or after this many index operations. Default 200000.
    pub commit_every_ops: usize,
    /// Seconds to wait for another process's index writer before leaving the
    /// changes queued for the next run. Default 60.
    pub lock_wait_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// Milliseconds a writer waits for another process's transaction. Default 30000.
    pub busy_timeout_ms: u64,
    /// Records (sessions, contacts, identifier claims) kept in memory between
    /// write units; about 300 bytes each. Default 2000000.
    pub cache_records: usize,
    /// SQLite page cache per connection, in MiB; ingest slows once the store
    /// file outgrows it. Default 256.
    pub page_cache_mb: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScyllaConfig {
    /// Username for password authentication. Default none.
    pub username: Option<String>,
    /// Its password; prefer `CONTACTD__SCYLLA__PASSWORD` to a file. Default none.
    pub password: Option<String>,
    /// Connect with TLS. Default false.
    pub tls: bool,
    /// PEM file of the certificate authorities to trust with TLS; the system's
    /// when unset. Default none.
    pub tls_ca_file: Option<String>,
    /// Client certificate and private key (PEM) for mutual TLS. Default none.
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    /// Prefer this datacenter's replicas and use LOCAL_QUORUM / LOCAL_SERIAL;
    /// unset means QUORUM / SERIAL across the cluster. Default none.
    pub local_dc: Option<String>,
    /// Replication of the keyspace `contactd migrate` creates, as CQL. Default
    /// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`.
    pub replication: String,
    /// Client-side timeout of one request, in milliseconds. Default 5000.
    pub request_timeout_ms: u64,
    /// Statements one write unit keeps in flight, per lane. Default 64.
    pub max_concurrency: usize,
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            username: None,
            password: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            local_dc: None,
            replication: "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}".into(),
            request_timeout_ms: 5000,
            max_concurrency: 64,
        }
    }
}

/// Where the directory lives, parsed from `store`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Scylla(ScyllaTarget),
}

/// The cluster and keyspace a `scylla://` store names; the `[scylla]` section
/// says how to reach them (`store::scylla::ScyllaOptions::new`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScyllaTarget {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    pub keyspace: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines. Default `text`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `contactd=debug`; `RUST_LOG` overrides it. Default `warn`.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("contactd-data"),
            store: "sqlite:".into(),
            ingest: IngestConfig::default(),
            index: IndexConfig::default(),
            sqlite: SqliteConfig::default(),
            scylla: ScyllaConfig::default(),
            kafka: KafkaConfig::default(),
            worker: WorkerConfig::default(),
            indexer: IndexerConfig::default(),
            api: ApiConfig::default(),
            limits: Limits::default(),
            log: LogConfig::default(),
        }
    }
}

impl KafkaConfig {
    /// A librdkafka client of these brokers with `settings`, then `properties`,
    /// which override them: every client the project creates is built here.
    pub fn client_config(&self, settings: &[(&str, &str)]) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in settings.iter().copied().chain(self.properties.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            config.set(key, value);
        }
        config
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            events_topics: vec!["contact-events".into()],
            changes_topic: "directory-changes".into(),
            dead_letter_topic: "contact-events-dlq".into(),
            group_id: "contactd-worker".into(),
            delivery_timeout_ms: 30_000,
            properties: BTreeMap::new(),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lanes: 2,
            batch_size: 2000,
            max_in_flight: 20_000,
            commit_interval_ms: 1000,
            drain_deadline_secs: 20,
            max_backoff_ms: 5000,
            statistics_interval_ms: 5000,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { batch_size: 20_000, max_attempts: 10 }
    }
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self { writer_memory_mb: 128, commit_interval_ms: 1000, commit_every_ops: 200_000, lock_wait_secs: 60 }
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self { busy_timeout_ms: 30_000, cache_records: 2_000_000, page_cache_mb: 256 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "warn".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The token tables, by their key under `[api]` and in the environment.
const TOKEN_TABLES: [(&str, &str); 2] = [("tokens", "API__TOKENS__"), ("write_tokens", "API__WRITE_TOKENS__")];

/// Settings whose values are text, read from the environment as written.
/// Figment reads every other variable as a TOML-like value, so a Scylla
/// password `12345` would arrive as a number (and stop the binary) and
/// `00123` as 123.
const TEXT_SETTINGS: [&str; 18] = [
    "data_dir",
    "store",
    "scylla.username",
    "scylla.password",
    "scylla.tls_ca_file",
    "scylla.tls_cert_file",
    "scylla.tls_key_file",
    "scylla.local_dc",
    "scylla.replication",
    "kafka.brokers",
    "kafka.changes_topic",
    "kafka.dead_letter_topic",
    "kafka.group_id",
    "worker.listen",
    "indexer.group_id",
    "indexer.listen",
    "log.format",
    "log.filter",
];

fn is_tenant_tokens_key(key: &str) -> bool {
    TOKEN_TABLES.iter().any(|(_, prefix)| {
        key.len() > prefix.len() && key.get(..prefix.len()).is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    })
}

/// Overrides given on the command line; `None` leaves the lower layers' value.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "KafkaFlags::is_empty")]
    pub kafka: KafkaFlags,
    #[serde(skip_serializing_if = "ListenFlags::is_empty")]
    pub worker: ListenFlags,
    #[serde(skip_serializing_if = "ListenFlags::is_empty")]
    pub indexer: ListenFlags,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KafkaFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
}

impl KafkaFlags {
    fn is_empty(&self) -> bool {
        self.brokers.is_none()
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ListenFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl ListenFlags {
    fn is_empty(&self) -> bool {
        self.listen.is_none()
    }
}

impl Config {
    /// Loads the layers. A missing file is an error only when named explicitly.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", path.display())));
            }
            Some(path) if !path.is_file() => {
                return Err(ConfigError::Invalid(format!("config file {} is not a file", path.display())));
            }
            Some(path) => figment = figment.merge(Toml::file(path)),
            None => figment = figment.merge(Toml::file("contactd.toml")),
        }
        // Tenant ids are case-sensitive, and figment lower-cases the keys it
        // reads from the environment: per-tenant token variables are read
        // apart, keeping the tenant as written.
        let settings = Env::prefixed("CONTACTD__").filter(|key| !is_tenant_tokens_key(key.as_str())).split("__");
        figment = figment.merge(settings.clone().ignore(&TEXT_SETTINGS));
        for (key, text) in settings.only(&TEXT_SETTINGS).iter() {
            figment = figment.merge(Serialized::default(key.as_str(), text));
        }
        for (table, prefix) in TOKEN_TABLES {
            let tenant_tokens = Env::prefixed(&format!("CONTACTD__{prefix}"))
                .map(move |tenant| format!("api.{table}.{tenant}").into())
                .lowercase(false);
            figment = figment.merge(tenant_tokens);
        }
        let config: Config = figment.merge(Serialized::defaults(flags)).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid("data_dir must not be empty".into()));
        }
        for (name, listen) in [("worker.listen", &self.worker.listen), ("indexer.listen", &self.indexer.listen)] {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!("{name} {listen:?} is not an IP address and port")));
            }
        }
        self.validate_tokens()?;
        if !(1024..=64 << 20).contains(&self.limits.event_bytes) {
            return Err(ConfigError::Invalid("limits.event_bytes must be within 1024..=67108864".into()));
        }
        if self.limits.identifiers_per_event == 0 || self.limits.identifiers_per_contact == 0 {
            return Err(ConfigError::Invalid(
                "limits.identifiers_per_event and limits.identifiers_per_contact must be at least 1".into(),
            ));
        }
        let positive = [
            ("ingest.batch_size", self.ingest.batch_size as u64),
            ("ingest.max_attempts", u64::from(self.ingest.max_attempts)),
            ("index.commit_every_ops", self.index.commit_every_ops as u64),
            ("sqlite.page_cache_mb", self.sqlite.page_cache_mb as u64),
            ("worker.lanes", self.worker.lanes as u64),
            ("worker.batch_size", self.worker.batch_size as u64),
            ("worker.max_in_flight", self.worker.max_in_flight as u64),
            ("worker.commit_interval_ms", self.worker.commit_interval_ms),
            ("worker.max_backoff_ms", self.worker.max_backoff_ms),
            ("indexer.commit_interval_ms", self.indexer.commit_interval_ms),
            ("indexer.commit_every_ops", self.indexer.commit_every_ops as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
        }
        // tantivy refuses writer budgets under 15 MB per thread.
        if !(15..=4096).contains(&self.index.writer_memory_mb) {
            return Err(ConfigError::Invalid("index.writer_memory_mb must be within 15..=4096".into()));
        }
        if self.kafka.events_topics.is_empty() {
            return Err(ConfigError::Invalid("kafka.events_topics must name at least one topic".into()));
        }
        if self.scylla.max_concurrency == 0 || self.scylla.request_timeout_ms == 0 {
            return Err(ConfigError::Invalid("scylla.max_concurrency and scylla.request_timeout_ms must be at least 1".into()));
        }
        self.store_location().map(drop)
    }

    /// Each token names one tenant and one scope: a token given to two
    /// tenants would let the one read the other's directory, and one listed
    /// as both a read and a write token would be whichever the server kept.
    fn validate_tokens(&self) -> Result<(), ConfigError> {
        let mut granted: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for (table, tenants) in [("tokens", &self.api.tokens), ("write_tokens", &self.api.write_tokens)] {
            for (tenant, tokens) in tenants {
                if !valid_tenant_id(tenant) {
                    return Err(ConfigError::Invalid(format!("api.{table}: {tenant:?} is not a tenant id")));
                }
                for token in tokens {
                    if token.trim().is_empty() {
                        return Err(ConfigError::Invalid(format!("api.{table}.{tenant}: a token is empty")));
                    }
                    if let Some((other_table, other)) = granted.insert(token, (table, tenant))
                        && (other_table, other) != (table, tenant.as_str())
                    {
                        return Err(ConfigError::Invalid(format!(
                            "one token is given as api.{other_table}.{other} and api.{table}.{tenant}; a token names \
                             one tenant and one scope"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn store_location(&self) -> Result<StoreLocation, ConfigError> {
        if let Some(path) = self.store.strip_prefix("sqlite:") {
            return Ok(StoreLocation::Sqlite(match path {
                "" => self.data_dir.join("directory.sqlite3"),
                path => PathBuf::from(path),
            }));
        }
        let invalid = || {
            ConfigError::Invalid(format!(
                "store {:?} is neither sqlite:PATH nor scylla://host1,host2[:port]/keyspace",
                self.store
            ))
        };
        let rest = self.store.strip_prefix("scylla://").ok_or_else(invalid)?;
        let (hosts, keyspace) = rest.split_once('/').ok_or_else(invalid)?;
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|host| match host.contains(':') {
                true => host.to_owned(),
                false => format!("{host}:9042"),
            })
            .collect();
        if nodes.is_empty() || keyspace.is_empty() {
            return Err(invalid());
        }
        Ok(StoreLocation::Scylla(ScyllaTarget { nodes, keyspace: keyspace.to_owned() }))
    }

    /// The configuration as `contactd config` prints it: passwords, API tokens
    /// and secret-looking Kafka properties replaced, so that the output can be
    /// pasted into a ticket.
    pub fn redacted(&self) -> serde_json::Value {
        const REDACTED: &str = "<redacted>";
        let mut value = serde_json::to_value(self).expect("the configuration serializes");
        if self.scylla.password.is_some() {
            value["scylla"]["password"] = REDACTED.into();
        }
        for (table, _) in TOKEN_TABLES {
            for tokens in value["api"][table].as_object_mut().into_iter().flat_map(|t| t.values_mut()) {
                *tokens = serde_json::json!([REDACTED]);
            }
        }
        for (key, property) in value["kafka"]["properties"].as_object_mut().into_iter().flatten() {
            if ["password", "secret", "key"].iter().any(|word| key.contains(word)) {
                *property = REDACTED.into();
            }
        }
        value
    }

    pub fn index_path(&self) -> PathBuf {
        self.data_dir.join("index")
    }

    pub fn dead_letter_path(&self) -> PathBuf {
        self.data_dir.join("dead-letter.jsonl")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure must return figment's own Result")]
    fn defaults_run_locally() {
        // In a jail: other tests set the environment, and the jail serializes them.
        figment::Jail::expect_with(|_| {
            let config = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(config.data_dir, PathBuf::from("contactd-data"));
            assert_eq!(config.ingest.batch_size, 20_000);
            Ok(())
        });
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure must return figment's own Result")]
    fn file_then_flags_override_defaults() {
        figment::Jail::expect_with(|_| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("c.toml");
            std::fs::write(&file, "data_dir = \"from-file\"\n[ingest]\nbatch_size = 7\n").unwrap();
            let from_file = Config::load(Some(&file), &FlagOverrides::default()).unwrap();
            assert_eq!((from_file.data_dir.to_str(), from_file.ingest.batch_size), (Some("from-file"), 7));
            let flags = FlagOverrides { data_dir: Some("from-flag".into()), ..FlagOverrides::default() };
            assert_eq!(Config::load(Some(&file), &flags).unwrap().data_dir, PathBuf::from("from-flag"));
            Ok(())
        });
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure must return figment's own Result")]
    fn text_settings_from_the_environment_are_taken_as_written() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CONTACTD__SCYLLA__PASSWORD", "00123");
            jail.set_env("CONTACTD__SCYLLA__USERNAME", "true");
            jail.set_env("CONTACTD__KAFKA__GROUP_ID", "1.50");
            jail.set_env("CONTACTD__WORKER__LANES", "3");
            let config = Config::load(None, &FlagOverrides::default()).unwrap();
            assert_eq!(config.scylla.password.as_deref(), Some("00123"));
            assert_eq!(config.scylla.username.as_deref(), Some("true"));
            assert_eq!(config.kafka.group_id, "1.50");
            assert_eq!(config.worker.lanes, 3, "other settings are still read as values");
            Ok(())
        });
    }

    /// Every text setting is in TEXT_SETTINGS: a new one left out would be
    /// read from the environment as a number or a boolean when it looks like one.
    #[test]
    fn every_text_setting_is_read_as_written() {
        fn text_leaves(value: &serde_json::Value, path: &str, found: &mut Vec<String>) {
            match value {
                serde_json::Value::String(_) => found.push(path.to_owned()),
                serde_json::Value::Object(fields) => {
                    for (key, field) in fields {
                        let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                        text_leaves(field, &path, found);
                    }
                }
                _ => {}
            }
        }
        let mut config = Config::default();
        let text = Some(String::from("x"));
        config.scylla = ScyllaConfig {
            username: text.clone(),
            password: text.clone(),
            tls_ca_file: text.clone(),
            tls_cert_file: text.clone(),
            tls_key_file: text.clone(),
            local_dc: text,
            ..ScyllaConfig::default()
        };
        let mut found = Vec::new();
        text_leaves(&serde_json::to_value(&config).unwrap(), "", &mut found);
        let mut listed: Vec<String> = TEXT_SETTINGS.iter().map(|s| (*s).to_owned()).collect();
        listed.sort();
        found.sort();
        assert_eq!(found, listed);
    }

    #[test]
    fn the_store_is_sqlite_in_the_data_dir_or_a_scylla_url() {
        let mut config = Config::default();
        assert_eq!(config.store_location().unwrap(), StoreLocation::Sqlite(PathBuf::from("contactd-data/directory.sqlite3")));
        config.store = "sqlite:/var/lib/d.sqlite3".into();
        assert_eq!(config.store_location().unwrap(), StoreLocation::Sqlite(PathBuf::from("/var/lib/d.sqlite3")));
        config.store = "scylla://a,b:19042/contactd".into();
        let StoreLocation::Scylla(target) = config.store_location().unwrap() else { panic!("not scylla") };
        assert_eq!((target.nodes, target.keyspace.as_str()), (vec!["a:9042".into(), "b:19042".into()], "contactd"));
        for bad in ["postgres://x/y", "scylla://a,b", "scylla:///ks", "scylla://a/"] {
            config.store = bad.into();
            assert!(config.store_location().is_err(), "{bad}");
        }
    }

    #[test]
    fn printing_the_configuration_hides_its_secrets() {
        let mut config = Config::default();
        config.scylla.password = Some("scylla-pw".into());
        config.api.tokens.insert("acme".into(), vec!["tok-1".into(), "tok-2".into()]);
        config.api.write_tokens.insert("acme".into(), vec!["wtok-1".into()]);
        config.kafka.properties.insert("sasl.password".into(), "kafka-pw".into());
        config.kafka.properties.insert("ssl.key.location".into(), "/keys/client.key".into());
        config.kafka.properties.insert("sasl.username".into(), "contactd".into());
        let printed = config.redacted().to_string();
        for secret in ["scylla-pw", "tok-1", "tok-2", "wtok-1", "kafka-pw", "/keys/client.key"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("\"acme\"") && printed.contains("\"contactd\""), "names stay visible: {printed}");
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure must return figment's own Result")]
    fn tokens_from_one_environment_variable_are_a_table_of_lists() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CONTACTD__API__TOKENS", r#"{acme=["t1","t2"], globex=["t3"]}"#);
            let config = Config::load(None, &FlagOverrides::default()).expect("loads");
            assert_eq!(config.api.tokens["acme"], ["t1", "t2"]);
            assert_eq!(config.api.tokens["globex"], ["t3"]);
            Ok(())
        });
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure must return figment's own Result")]
    fn a_tenant_named_in_a_token_variable_keeps_its_case() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CONTACTD__API__TOKENS__AcmeEU", r#"["t1"]"#);
            jail.set_env("CONTACTD__API__TOKENS__globex", r#"["t2"]"#);
            jail.set_env("CONTACTD__API__WRITE_TOKENS__AcmeEU", r#"["w1"]"#);
            jail.set_env("CONTACTD__DATA_DIR", "from-env");
            let config = Config::load(None, &FlagOverrides::default()).expect("loads");
            assert_eq!(config.api.tokens.keys().collect::<Vec<_>>(), ["AcmeEU", "globex"]);
            assert_eq!(config.api.write_tokens["AcmeEU"], ["w1"]);
            assert_eq!(config.data_dir, PathBuf::from("from-env"), "other settings are read as before");
            Ok(())
        });
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure must return figment's own Result")]
    fn settings_that_would_run_on_something_else_are_refused_by_name() {
        figment::Jail::expect_with(|jail| {
            let refused = |expected: &str| {
                let error = Config::load(None, &FlagOverrides::default()).expect_err(expected).to_string();
                assert!(error.contains(expected), "{error} does not name {expected}");
            };
            jail.set_env("CONTACTD__DATA_DIR", "");
            refused("data_dir must not be empty");
            jail.set_env("CONTACTD__DATA_DIR", "data");
            jail.set_env("CONTACTD__INDEXER__LISTEN", "localhost:99999");
            refused("indexer.listen");
            jail.set_env("CONTACTD__INDEXER__LISTEN", "127.0.0.1:9465");
            jail.set_env("CONTACTD__API__TOKENS", r#"{acme=["same"], globex=["same"]}"#);
            refused("one token is given as api.tokens.acme and api.tokens.globex");
            jail.set_env("CONTACTD__API__TOKENS", r#"{acme=["same"]}"#);
            jail.set_env("CONTACTD__API__WRITE_TOKENS", r#"{acme=["same"]}"#);
            refused("one token is given as api.tokens.acme and api.write_tokens.acme");
            jail.set_env("CONTACTD__API__WRITE_TOKENS", "{}");
            jail.set_env("CONTACTD__API__TOKENS", r#"{acme=[" "]}"#);
            refused("api.tokens.acme: a token is empty");
            jail.set_env("CONTACTD__API__TOKENS", r#"{"ac me"=["t"]}"#);
            refused("is not a tenant id");
            jail.set_env("CONTACTD__API__TOKENS", "{}");
            jail.set_env("CONTACTD__LIMITS__EVENT_BYTES", "10");
            refused("limits.event_bytes must be within");
            jail.set_env("CONTACTD__LIMITS__EVENT_BYTES", "2048");
            jail.set_env("CONTACTD__LIMITS__IDENTIFIERS_PER_CONTACT", "0");
            refused("limits.identifiers_per_contact must be at least 1");
            jail.set_env("CONTACTD__LIMITS__IDENTIFIERS_PER_CONTACT", "10");
            let error = Config::load(Some(jail.directory()), &FlagOverrides::default()).unwrap_err().to_string();
            assert!(error.contains("is not a file"), "{error}");
            Ok(())
        });
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure must return figment's own Result")]
    fn a_kafka_secret_from_the_environment_joins_the_files_properties() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("contactd.toml", "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n")?;
            jail.set_env("CONTACTD__KAFKA__PROPERTIES", r#"{"sasl.password"="s3cret"}"#);
            let config = Config::load(None, &FlagOverrides::default()).expect("loads");
            assert_eq!(config.kafka.properties.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
            assert_eq!(config.kafka.properties.get("sasl.password").map(String::as_str), Some("s3cret"));
            Ok(())
        });
    }

    /// Production brokers want TLS and SCRAM; librdkafka refuses those settings
    /// when it was built without OpenSSL.
    #[test]
    fn kafka_clients_accept_tls_and_sasl_scram() {
        let mut kafka = KafkaConfig::default();
        for (key, value) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "contactd"),
            ("sasl.password", "secret"),
        ] {
            kafka.properties.insert(key.into(), value.into());
        }
        let producer: Result<rdkafka::producer::BaseProducer, _> = kafka.client_config(&[]).create();
        assert!(producer.is_ok(), "{}", producer.err().map(|e| e.to_string()).unwrap_or_default());
    }

    #[test]
    #[expect(clippy::result_large_err, reason = "figment::Jail's closure must return figment's own Result")]
    fn unknown_keys_and_bad_values_are_refused() {
        figment::Jail::expect_with(|_| {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("c.toml");
            std::fs::write(&file, "[ingest]\nbatch_sise = 7\n").unwrap();
            assert!(Config::load(Some(&file), &FlagOverrides::default()).is_err());
            std::fs::write(&file, "[ingest]\nbatch_size = 0\n").unwrap();
            assert!(Config::load(Some(&file), &FlagOverrides::default()).is_err());
            assert!(Config::load(Some(&dir.path().join("missing.toml")), &FlagOverrides::default()).is_err());
            Ok(())
        });
    }
}

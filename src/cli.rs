//! Command-line interface. Flags override the config file and environment.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{FlagOverrides, KafkaFlags, ListenFlags};

#[derive(Debug, Parser)]
#[command(name = "contactd", version, about = "A living contact directory built from conversation events")]
pub struct Cli {
    /// TOML configuration file (default: ./contactd.toml when present).
    #[arg(long, global = true, env = "CONTACTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory with the store, index and dead letters (default ./contactd-data).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Where the directory is stored: sqlite:PATH or scylla://host1,host2/keyspace
    /// (default: sqlite: in the data directory).
    #[arg(long, global = true)]
    pub store: Option<String>,
    /// Kafka bootstrap servers (default localhost:9092).
    #[arg(long, global = true)]
    pub brokers: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn overrides(&self) -> FlagOverrides {
        let listen = |args: &ListenArgs| ListenFlags { listen: args.listen.clone() };
        let (worker, indexer) = match &self.command {
            Command::Worker(args) => (listen(args), ListenFlags::default()),
            Command::Indexer(args) | Command::Serve(args) => (ListenFlags::default(), listen(args)),
            _ => Default::default(),
        };
        FlagOverrides {
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            kafka: KafkaFlags { brokers: self.brokers.clone() },
            worker,
            indexer,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run JSONL events (one per line) through the pipeline into the directory.
    Ingest(IngestArgs),
    /// Write the directory snapshot: one JSON contact per line, sorted.
    Export(ExportArgs),
    /// Full-text search over one tenant's history; JSON hits, best first.
    Search(SearchArgs),
    /// Show one contact with its timeline, newest first (or, with --explain,
    /// why each identifier and conversation is its).
    Contact(ContactArgs),
    /// List one tenant's open identity conflicts, newest first: JSON, one per line.
    Conflicts(ConflictsArgs),
    /// Check the directory's invariants (one contact per session, one owner
    /// per identifier, no open conflict already settled); prints a JSON
    /// report and exits 1 when one is broken.
    Check(CheckArgs),
    /// Consume contact events from Kafka into the directory, publishing changes
    /// and dead letters, until SIGTERM or SIGINT.
    Worker(ListenArgs),
    /// Keep the search indexes current from the changes topic and serve the
    /// search API, until SIGTERM or SIGINT.
    Indexer(ListenArgs),
    /// Serve the search API over this data directory's store and indexes
    /// (the embedded default; `ingest` keeps them current).
    Serve(ListenArgs),
    /// Rebuild both search indexes from the store. Stop the indexer first.
    Reindex,
    /// Publish JSONL events to the events topic, keyed `tenant_id/session_id`.
    Produce(ProduceArgs),
    /// Write a synthetic JSONL corpus for benchmarks.
    Gen(GenArgs),
    /// Create or upgrade the Scylla keyspace and tables named by `store`;
    /// idempotent. The SQLite store migrates itself when opened.
    Migrate,
    /// Print the effective configuration after all layers.
    Config,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The JSONL file, or `-` for standard input.
    pub file: PathBuf,
    /// Do not show a progress bar even on a terminal.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ListenArgs {
    /// Address to serve HTTP on (default: worker.listen or indexer.listen).
    #[arg(long)]
    pub listen: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The JSONL file, or `-` for standard input.
    pub file: PathBuf,
    /// The topic (default: the first of kafka.events_topics).
    #[arg(long)]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[arg(long)]
    pub tenant: String,
    /// Only this contact's history.
    #[arg(long)]
    pub contact: Option<String>,
    /// Hits to print, 1 to 100.
    #[arg(long, default_value_t = 10, value_parser = page_size)]
    pub limit: usize,
    /// Words must all match; supports "exact phrases", OR, -exclusion and prefixes (refu*, "the refu"*); anything else is text.
    #[arg(value_parser = non_blank)]
    pub query: String,
}

#[derive(Debug, Args)]
pub struct ContactArgs {
    #[arg(long)]
    pub tenant: String,
    /// The contact id.
    #[arg(required_unless_present = "identifier", conflicts_with = "identifier")]
    pub id: Option<String>,
    /// Find the contact by an identifier, e.g. email:jana@example.cz or phone:+420777123456.
    #[arg(long)]
    pub identifier: Option<String>,
    /// Timeline entries per page, 1 to 100.
    #[arg(long, default_value_t = 20, value_parser = page_size)]
    pub limit: usize,
    /// Continue after this cursor (the `next_cursor` of the previous page;
    /// one for entries before 1970 starts with `-`).
    #[arg(long, allow_hyphen_values = true)]
    pub cursor: Option<String>,
    /// Instead of the timeline, show for every identifier and conversation
    /// the rule and event that attached it, and the merges that carried it.
    #[arg(long, conflicts_with_all = ["limit", "cursor"])]
    pub explain: bool,
}

#[derive(Debug, Args)]
pub struct ConflictsArgs {
    #[arg(long)]
    pub tenant: String,
    /// Conflicts per page, 1 to 100.
    #[arg(long, default_value_t = 20, value_parser = page_size)]
    pub limit: usize,
    /// Continue after this cursor (printed last, as {"next_cursor": ...}).
    #[arg(long, allow_hyphen_values = true)]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only this tenant (default: every tenant).
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    #[arg(long, default_value_t = 10)]
    pub tenants: u32,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The page sizes the API takes, so the CLI answers the same request the same way.
fn page_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=100) => Ok(n),
        _ => Err("must be a number from 1 to 100".into()),
    }
}

/// A query of nothing would match nothing in particular; the API refuses it too.
fn non_blank(text: &str) -> Result<String, String> {
    match text.trim() {
        "" => Err("must not be empty".into()),
        _ => Ok(text.to_owned()),
    }
}

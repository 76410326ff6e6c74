//! The binary's edge: one entry point per command, by family. `embedded.rs`
//! runs the one-machine commands (ingest, export, search, contact),
//! `services.rs` the long-running ones (worker, indexer, serve), each ended by
//! a shutdown future, and `admin.rs` the rest (migrate, reindex, produce, gen).
//! Errors become `anyhow` here and nowhere below.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::cli::Command;
use crate::config::{Config, StoreLocation};
use crate::store::Backend;
use crate::store::scylla::{ScyllaBackend, ScyllaOptions, ScyllaStore};
use crate::store::sqlite::{SqliteOptions, SqliteStore};

mod admin;
mod embedded;
mod services;

pub use embedded::{IngestSummary, ingest};
pub use services::{indexer, serve, termination, worker};

pub fn run(command: Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Ingest(args) => {
            let summary = ingest(&args, config)?;
            say(&summary.render(config))
        }
        Command::Export(args) => embedded::export(&args, config),
        Command::Search(args) => embedded::search(&args, config),
        Command::Contact(args) => embedded::contact(&args, config),
        Command::Conflicts(args) => embedded::conflicts(&args, config),
        Command::Check(args) => embedded::check(&args, config),
        Command::Worker(_) => worker(config, termination()),
        Command::Indexer(_) => indexer(config, termination()),
        Command::Serve(_) => serve(config, termination()),
        Command::Reindex => admin::reindex(config),
        Command::Migrate => admin::migrate(config),
        Command::Produce(args) => admin::produce(&args, config),
        Command::Gen(args) => admin::generate(&args),
        Command::Config => say(&format!("{}\n", serde_json::to_string_pretty(&config.redacted())?)),
    }
}

/// The embedded store, for the commands that only run on it.
fn open_sqlite(config: &Config) -> anyhow::Result<(SqliteStore, PathBuf)> {
    let path = match config.store_location()? {
        StoreLocation::Sqlite(path) => path,
        StoreLocation::Scylla(_) => bail!(
            "ingest feeds the embedded index from the SQLite store's outbox; with Scylla, publish the file \
             with `contactd produce` and run `contactd worker` and `contactd indexer`"
        ),
    };
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = SqliteStore::open(&path, &SqliteOptions::from(&config.sqlite))
        .with_context(|| format!("opening the store {}", path.display()))?;
    Ok((store, path))
}

/// The store `store` names, for commands that work on either.
fn open_store(config: &Config) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match config.store_location()? {
        StoreLocation::Sqlite(_) => Box::new(open_sqlite(config)?.0),
        StoreLocation::Scylla(target) => Box::new(ScyllaStore::new(connect_scylla(&ScyllaOptions::new(target, &config.scylla))?)),
    })
}

/// The store, for commands that only read it: a mistyped `--data-dir` is an
/// error, not a new empty directory that answers "no such contact".
fn open_existing_store(config: &Config) -> anyhow::Result<Box<dyn Backend>> {
    if let StoreLocation::Sqlite(path) = config.store_location()?
        && !path.is_file()
    {
        bail!("no directory at {}; run `contactd ingest` first, or check --data-dir", path.display());
    }
    open_store(config)
}

fn connect_scylla(options: &ScyllaOptions) -> anyhow::Result<Arc<ScyllaBackend>> {
    ScyllaBackend::connect(options)
        .with_context(|| format!("connecting to Scylla {} keyspace {}", options.nodes.join(","), options.keyspace))
}

/// Writes to stdout without `print!`, which panics when the reader has gone
/// away (`contactd export | head`); the error reaches [`is_broken_pipe`] instead.
fn say(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Whether a command failed only because its stdout reader closed early. The
/// binary then exits quietly with success, as a pipeline stage is expected to:
/// the reader chose to stop, and everything the command changed is already durable.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let kind = match (cause.downcast_ref::<io::Error>(), cause.downcast_ref::<serde_json::Error>()) {
            (Some(io), _) => Some(io.kind()),
            (None, Some(json)) => json.io_error_kind(),
            (None, None) => None,
        };
        kind == Some(io::ErrorKind::BrokenPipe)
    })
}

fn output(path: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        Some(path) => Box::new(BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    })
}

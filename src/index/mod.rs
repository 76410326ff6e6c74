//! Full-text indexes (tantivy) kept current from change events: the timeline of
//! every contact's history and the contact directory itself. Each commit records
//! in its payload how far into the change stream it reaches, so a restarted
//! indexer resumes exactly where its durable state ends.

pub mod contacts;
pub mod query;
pub mod timeline;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tantivy::indexer::LogMergePolicy;
use tantivy::query::{Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::model::Change;

pub use contacts::{ContactHit, ContactIndex, ContactQuery};
pub use timeline::{Hit, SortOrder, TimelineIndex, TimelineQuery};

/// Separates tenant and id inside one indexed key; it cannot occur in tenant ids.
const KEY_SEPARATOR: char = '\u{1f}';

/// Merge a timeline segment once a fifth of it is deleted documents: erasures,
/// merges and replays delete often, and deleted documents still cost search
/// time and disk.
const TIMELINE_DELETED_RATIO_BEFORE_MERGE: f32 = 0.2;

/// Every contact change replaces the contact's document, so the directory
/// index's older segments lose documents with each commit, and merging them at
/// a fifth kept re-merging the directory index (measured in `ingest` of
/// 1,000,000 events: tantivy's threads did about a third less work at half).
/// At half, a search skips at most as many deleted documents as it reads.
const CONTACTS_DELETED_RATIO_BEFORE_MERGE: f32 = 0.5;

/// The directory index's documents are small and few; a quarter of the writer
/// budget is plenty, but tantivy refuses less than 15 MB per writer thread.
const CONTACTS_MIN_MEMORY_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the search query is not valid: {0}")]
    BadQuery(String),
    #[error("another process holds the index writer")]
    WriterBusy,
    #[error("index failure: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("change event is malformed: {0}")]
    BadChange(String),
}

/// What the stream a writer follows promises about repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The change may have been applied before (Kafka redelivers, a restart
    /// replays): each document it adds replaces any with the same key.
    AtLeastOnce,
    /// The change was never applied to this index. The resolver appends an entry
    /// again only after a delete has removed it from the index (an unlinked
    /// session's entries, a merged contact's), so its documents can be added
    /// without the delete by key that a replace costs (measured: that delete was
    /// a quarter of the indexing thread's time, mostly building its query).
    FirstTime,
}

fn scoped(tenant: &str, id: &str) -> String {
    format!("{tenant}{KEY_SEPARATOR}{id}")
}

/// How far into the change stream an index's last commit reaches. Embedded runs
/// follow the store's outbox by unit sequence; the indexer process follows Kafka
/// partitions by offset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The last outbox unit whose changes the commit holds.
    #[serde(default)]
    pub applied_through: u64,
    /// Per `topic/partition`, the offset of the next change to apply.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub offsets: BTreeMap<String, i64>,
}

impl Checkpoint {
    pub fn partition_key(topic: &str, partition: i32) -> String {
        format!("{topic}/{partition}")
    }

    /// The point both checkpoints have reached. Replaying from it is safe: every
    /// index operation is an upsert or a delete by key, applied in stream order.
    fn earliest(mut self, other: &Self) -> Self {
        self.applied_through = self.applied_through.min(other.applied_through);
        let keys: Vec<String> = self.offsets.keys().chain(other.offsets.keys()).cloned().collect();
        for key in keys {
            let mine = self.offsets.get(&key).copied().unwrap_or(0);
            let theirs = other.offsets.get(&key).copied().unwrap_or(0);
            self.offsets.insert(key, mine.min(theirs));
        }
        self
    }
}

/// One tantivy index with a manually reloaded reader.
struct Store {
    index: Index,
    reader: IndexReader,
}

impl Store {
    fn open_or_create(dir: &Path, schema: Schema) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Tantivy(e.into()))?;
        let directory = tantivy::directory::MmapDirectory::open(dir).map_err(|e| IndexError::Tantivy(e.into()))?;
        let index = Index::open_or_create(directory, schema)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Self { index, reader })
    }

    fn checkpoint(&self) -> Result<Checkpoint, IndexError> {
        let metas = self.index.load_metas()?;
        Ok(metas.payload.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or_default())
    }

    fn writer(&self, memory_budget_bytes: usize, deleted_ratio_before_merge: f32) -> Result<Writing, IndexError> {
        let writer = match self.index.writer_with_num_threads(1, memory_budget_bytes) {
            Err(tantivy::TantivyError::LockFailure(..)) => return Err(IndexError::WriterBusy),
            other => other?,
        };
        let mut policy = LogMergePolicy::default();
        policy.set_del_docs_ratio_before_merge(deleted_ratio_before_merge);
        writer.set_merge_policy(Box::new(policy));
        Ok(Writing { writer, reader: self.reader.clone(), pending_ops: 0 })
    }

    fn reload(&self) -> Result<(), IndexError> {
        Ok(self.reader.reload()?)
    }

    fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// What the user typed, over `field` ([`query`]), or every document when
    /// nothing searchable was typed; the caller scopes it to a tenant.
    fn user_query(&self, field: Field, text: &str, words: query::Words) -> Result<Box<dyn Query>, IndexError> {
        let mut analyzer = self.index.tokenizer_for_field(field)?;
        query::parse(text, field, &mut analyzer, words)
    }
}

fn term_query(field: Field, value: &str) -> Box<dyn Query> {
    Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic))
}

/// An index's one writer, counting the operations since its last commit.
struct Writing {
    writer: IndexWriter,
    /// Reloaded after each commit, so searches see it at once.
    reader: IndexReader,
    pending_ops: usize,
}

impl Writing {
    /// Adds `doc` in place of any document whose `key_field` holds `key`.
    fn replace(&mut self, key_field: Field, key: &str, doc: TantivyDocument) -> Result<(), IndexError> {
        self.writer.delete_term(Term::from_field_text(key_field, key));
        self.add(doc)
    }

    /// Adds `doc`, which no document in the index shares a key with.
    fn add(&mut self, doc: TantivyDocument) -> Result<(), IndexError> {
        self.writer.add_document(doc)?;
        self.pending_ops += 1;
        Ok(())
    }

    /// Deletes every document whose `field` holds `tenant`'s `id`.
    fn delete(&mut self, field: Field, tenant: &str, id: &str) {
        self.writer.delete_term(Term::from_field_text(field, &scoped(tenant, id)));
        self.pending_ops += 1;
    }

    /// Makes the operations durable together with `checkpoint`, then shows them
    /// to searches.
    fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), IndexError> {
        let payload = serde_json::to_string(checkpoint).expect("checkpoints serialize");
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.reader.reload()?;
        self.pending_ops = 0;
        Ok(())
    }

    fn clear(&mut self) -> Result<(), IndexError> {
        self.writer.delete_all_documents()?;
        Ok(())
    }
}

/// Both indexes of a data directory: `DIR/timeline` and `DIR/contacts`.
#[derive(Debug)]
pub struct SearchIndex {
    pub timeline: TimelineIndex,
    pub contacts: ContactIndex,
}

impl SearchIndex {
    pub fn open_or_create(dir: &Path) -> Result<Self, IndexError> {
        Ok(Self {
            timeline: TimelineIndex::open_or_create(&dir.join("timeline"))?,
            contacts: ContactIndex::open_or_create(&dir.join("contacts"))?,
        })
    }

    /// Where to resume: the point both indexes' last commits have reached.
    pub fn checkpoint(&self) -> Result<Checkpoint, IndexError> {
        Ok(self.timeline.checkpoint()?.earliest(&self.contacts.checkpoint()?))
    }

    /// Takes both indexes' writer locks; `WriterBusy` when another process has one.
    pub fn writer(&self, memory_budget_bytes: usize) -> Result<IndexWriters, IndexError> {
        Ok(IndexWriters {
            timeline: self.timeline.writer(memory_budget_bytes)?,
            contacts: self.contacts.writer((memory_budget_bytes / 4).max(CONTACTS_MIN_MEMORY_BYTES))?,
        })
    }

    /// Shows another process's latest commits to searches.
    pub fn reload(&self) -> Result<(), IndexError> {
        self.timeline.reload()?;
        self.contacts.reload()
    }
}

/// The one writer of each index. Applies changes in stream order; `commit`
/// makes them durable together with the stream position.
#[derive(Debug)]
pub struct IndexWriters {
    pub timeline: timeline::TimelineWriter,
    pub contacts: contacts::ContactWriter,
}

impl IndexWriters {
    /// Index operations since the last commit.
    pub fn pending_ops(&self) -> usize {
        self.timeline.pending_ops() + self.contacts.pending_ops()
    }

    /// Applies one change. `before` gives the position just before it, which
    /// only a merge needs: it commits the timeline there to read the documents
    /// it moves.
    pub fn apply(&mut self, change: &Change, before: &dyn Fn() -> Checkpoint, delivery: Delivery) -> Result<(), IndexError> {
        self.timeline.apply(change, before, delivery)?;
        self.contacts.apply(change)
    }

    pub fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), IndexError> {
        self.timeline.commit(checkpoint)?;
        self.contacts.commit(checkpoint)
    }

    /// Removes every document, for a rebuild; nothing is visible until `commit`.
    pub fn clear(&mut self) -> Result<(), IndexError> {
        self.timeline.clear()?;
        self.contacts.clear()
    }
}

//! Full-text index of every contact's history (tantivy), kept current from change
//! events. Each commit records the last change applied in its payload, so a
//! restarted indexer resumes exactly where its durable state ends.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::model::{Change, ChangeKind, EntryKind, TimelineEntry, Timestamp};

/// Separates tenant and id inside one indexed key; it cannot occur in tenant ids.
const KEY_SEPARATOR: char = '\u{1f}';

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

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    tenant: Field,
    contact: Field,
    session: Field,
    occurred_at: Field,
    text: Field,
    entry: Field,
    contact_id: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        key: builder.add_text_field("key", STRING),
        tenant: builder.add_text_field("tenant", STRING),
        contact: builder.add_text_field("contact", STRING),
        session: builder.add_text_field("session", STRING),
        occurred_at: builder.add_i64_field("occurred_at", INDEXED | STORED),
        text: builder.add_text_field("text", TEXT),
        entry: builder.add_text_field("entry", STORED),
        contact_id: builder.add_text_field("contact_id", STORED),
    };
    (builder.build(), fields)
}

fn scoped(tenant: &str, id: &str) -> String {
    format!("{tenant}{KEY_SEPARATOR}{id}")
}

/// The text that search matches: the entry's text plus an e-mail's subject.
fn searchable_text(entry: &TimelineEntry) -> String {
    match entry.kind {
        EntryKind::Email => match entry.details.text_field("subject") {
            Some(subject) => format!("{subject}\n{}", entry.text),
            None => entry.text.clone(),
        },
        _ => entry.text.clone(),
    }
}

#[derive(Serialize, Deserialize, Default)]
struct CommitPayload {
    /// The last change (by the change log's sequence) whose effects this commit holds.
    applied_through: u64,
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub contact_id: String,
    pub entry_id: String,
    pub occurred_at: Timestamp,
    pub channel: crate::event::Channel,
    pub session_id: Option<String>,
    pub kind: EntryKind,
    /// A fragment of the entry with each match wrapped in `<b>…</b>` (HTML-escaped).
    pub snippet: String,
    pub score: f32,
}

pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

impl SearchIndex {
    pub fn open_or_create(dir: &Path) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Tantivy(e.into()))?;
        let (schema, fields) = schema();
        let directory = tantivy::directory::MmapDirectory::open(dir).map_err(|e| IndexError::Tantivy(e.into()))?;
        let index = Index::open_or_create(directory, schema)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(Self { index, reader, fields })
    }

    /// The change sequence the last commit holds; resume after it.
    pub fn applied_through(&self) -> Result<u64, IndexError> {
        let metas = self.index.load_metas()?;
        Ok(metas.payload.and_then(|p| serde_json::from_str::<CommitPayload>(&p).ok()).map_or(0, |p| p.applied_through))
    }

    /// Takes the single writer lock; `WriterBusy` when another process has it.
    pub fn writer(&self, memory_budget_bytes: usize) -> Result<TimelineWriter, IndexError> {
        let writer = match self.index.writer_with_num_threads(1, memory_budget_bytes) {
            Err(tantivy::TantivyError::LockFailure(..)) => return Err(IndexError::WriterBusy),
            other => other?,
        };
        Ok(TimelineWriter { writer, reader: self.reader.clone(), fields: self.fields, pending_ops: 0 })
    }

    pub fn reload(&self) -> Result<(), IndexError> {
        Ok(self.reader.reload()?)
    }

    /// Best matches first, always within `tenant` whatever the query says.
    pub fn search(&self, tenant: &str, contact_id: Option<&str>, query: &str, limit: usize) -> Result<Vec<Hit>, IndexError> {
        let fields = self.fields;
        let mut parser = QueryParser::for_index(&self.index, vec![fields.text]);
        parser.set_conjunction_by_default();
        let user_query = parser.parse_query(query).map_err(|e| IndexError::BadQuery(e.to_string()))?;
        let term = |field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(Term::from_field_text(field, value), IndexRecordOption::Basic))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> =
            vec![(Occur::Must, term(fields.tenant, tenant)), (Occur::Must, user_query.box_clone())];
        if let Some(contact_id) = contact_id {
            clauses.push((Occur::Must, term(fields.contact, &scoped(tenant, contact_id))));
        }
        let scoped_query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = searcher.search(&scoped_query, &TopDocs::with_limit(limit.max(1)).order_by_score())?;
        let mut snippets = SnippetGenerator::create(&searcher, &*user_query, fields.text)?;
        snippets.set_max_num_chars(200);
        top.into_iter()
            .map(|(score, address)| {
                let doc: TantivyDocument = searcher.doc(address)?;
                let (contact_id, entry) = stored_entry(&doc, fields)?;
                Ok(Hit {
                    snippet: snippets.snippet(&searchable_text(&entry)).to_html(),
                    contact_id,
                    entry_id: entry.entry_id,
                    occurred_at: entry.occurred_at,
                    channel: entry.channel,
                    session_id: entry.session_id,
                    kind: entry.kind,
                    score,
                })
            })
            .collect()
    }

    /// Number of searchable entries (all tenants), for reports.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

fn stored_entry(doc: &TantivyDocument, fields: Fields) -> Result<(String, TimelineEntry), IndexError> {
    let text = |field| doc.get_first(field).and_then(|v| v.as_str().map(str::to_owned));
    let contact_id = text(fields.contact_id).ok_or_else(|| IndexError::BadChange("document without contact".into()))?;
    let entry = text(fields.entry).ok_or_else(|| IndexError::BadChange("document without entry".into()))?;
    let entry = serde_json::from_str(&entry).map_err(|e| IndexError::BadChange(e.to_string()))?;
    Ok((contact_id, entry))
}

/// The one writer of an index. Applies changes in log order; `commit` makes them
/// durable together with the log position.
pub struct TimelineWriter {
    writer: IndexWriter,
    reader: IndexReader,
    fields: Fields,
    pending_ops: usize,
}

impl std::fmt::Debug for TimelineWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimelineWriter").field("pending_ops", &self.pending_ops).finish()
    }
}

impl TimelineWriter {
    pub fn pending_ops(&self) -> usize {
        self.pending_ops
    }

    fn add(&mut self, tenant: &str, contact_id: &str, entry: &TimelineEntry) -> Result<(), IndexError> {
        let f = self.fields;
        let key = scoped(tenant, &entry.entry_id);
        let mut doc = TantivyDocument::default();
        doc.add_text(f.key, &key);
        doc.add_text(f.tenant, tenant);
        doc.add_text(f.contact, scoped(tenant, contact_id));
        if let Some(session) = &entry.session_id {
            doc.add_text(f.session, scoped(tenant, session));
        }
        doc.add_i64(f.occurred_at, entry.occurred_at.micros());
        doc.add_text(f.text, searchable_text(entry));
        doc.add_text(f.entry, serde_json::to_string(entry).expect("entries serialize"));
        doc.add_text(f.contact_id, contact_id);
        self.writer.add_document(doc)?;
        self.pending_ops += 1;
        Ok(())
    }

    /// Applies one change event; changes that do not touch history are ignored.
    /// `replay` is set for the first unit after a restart, which a commit in the
    /// middle of it (before a merge) may have partly indexed already.
    pub fn apply(&mut self, change: &Change, position: u64, replay: bool) -> Result<(), IndexError> {
        let tenant = &change.tenant_id;
        let data = &change.data;
        match change.kind {
            ChangeKind::TimelineAppended => {
                let entry =
                    data.entry.as_ref().ok_or_else(|| IndexError::BadChange(format!("{} has no entry", change.change_id)))?;
                if replay {
                    self.writer.delete_term(Term::from_field_text(self.fields.key, &scoped(tenant, &entry.entry_id)));
                }
                self.add(tenant, &change.contact_id, entry)?;
            }
            ChangeKind::ContactDeleted => {
                self.writer.delete_term(Term::from_field_text(self.fields.contact, &scoped(tenant, &change.contact_id)));
                self.pending_ops += 1;
            }
            ChangeKind::SessionUnlinked => {
                let session = data.session_id.as_deref().unwrap_or_default();
                self.writer.delete_term(Term::from_field_text(self.fields.session, &scoped(tenant, session)));
                self.pending_ops += 1;
            }
            ChangeKind::ContactMerged => {
                let merged = data.merged_contact_id.as_deref().unwrap_or_default();
                self.move_contact(tenant, merged, &change.contact_id, position)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Re-files a merged contact's documents under the surviving contact. Reads
    /// the stored documents, so everything before the merge is committed first.
    fn move_contact(&mut self, tenant: &str, from: &str, into: &str, position: u64) -> Result<(), IndexError> {
        self.commit(position.saturating_sub(1))?;
        let searcher = self.reader.searcher();
        let from_term = Term::from_field_text(self.fields.contact, &scoped(tenant, from));
        let query = TermQuery::new(from_term.clone(), IndexRecordOption::Basic);
        let count = searcher.search(&query, &tantivy::collector::Count)?;
        if count == 0 {
            return Ok(());
        }
        let addresses = searcher.search(&query, &TopDocs::with_limit(count).order_by_score())?;
        let mut entries = Vec::with_capacity(addresses.len());
        for (_, address) in addresses {
            let doc: TantivyDocument = searcher.doc(address)?;
            entries.push(stored_entry(&doc, self.fields)?.1);
        }
        self.writer.delete_term(from_term);
        for entry in &entries {
            self.add(tenant, into, entry)?;
        }
        Ok(())
    }

    /// Makes everything applied so far durable, recording `applied_through`.
    pub fn commit(&mut self, applied_through: u64) -> Result<(), IndexError> {
        let payload = serde_json::to_string(&CommitPayload { applied_through }).expect("payload serializes");
        let mut prepared = self.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        self.reader.reload()?;
        self.pending_ops = 0;
        Ok(())
    }
}

//! The timeline index: one document per timeline entry, searchable by its text,
//! an e-mail's subject, and filtered by tenant, contact, channel and time.

use std::ops::Bound;
use std::path::Path;

use serde::Serialize;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, RangeQuery, TermQuery};
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Order, TantivyDocument, Term};

use super::{Checkpoint, Delivery, IndexError, Store, TIMELINE_DELETED_RATIO_BEFORE_MERGE, Writing, scoped, term_query};
use crate::model::Channel;
use crate::model::{Change, ChangeKind, ContactId, EntryKind, SessionId, TenantId, TimelineEntry, Timestamp};

/// Characters of context a snippet shows around its matches.
const SNIPPET_CHARS: usize = 200;

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    tenant: Field,
    contact: Field,
    session: Field,
    channel: Field,
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
        channel: builder.add_text_field("channel", STRING),
        occurred_at: builder.add_i64_field("occurred_at", INDEXED | STORED | FAST),
        text: builder.add_text_field("text", TEXT),
        entry: builder.add_text_field("entry", STORED),
        contact_id: builder.add_text_field("contact_id", STORED),
    };
    (builder.build(), fields)
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

/// One search result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub contact_id: ContactId,
    pub entry_id: String,
    pub occurred_at: Timestamp,
    pub channel: Channel,
    pub session_id: Option<SessionId>,
    pub kind: EntryKind,
    /// A fragment of the entry with each match wrapped in `<b>…</b>` (HTML-escaped).
    pub snippet: String,
    pub score: f32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Most relevant first.
    #[default]
    Best,
    /// Most recent first.
    Newest,
}

/// A timeline search, always within one tenant.
#[derive(Clone, Debug, Default)]
pub struct TimelineQuery {
    pub tenant: TenantId,
    /// What the user typed, in the search language of [`super::query`].
    pub text: String,
    pub contact_id: Option<ContactId>,
    pub channel: Option<Channel>,
    /// Entries at or after this instant.
    pub from: Option<Timestamp>,
    /// Entries before this instant.
    pub to: Option<Timestamp>,
    pub order: SortOrder,
    pub limit: usize,
    /// Hits to skip, for paging.
    pub offset: usize,
}

pub struct TimelineIndex {
    store: Store,
    fields: Fields,
}

impl std::fmt::Debug for TimelineIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimelineIndex").finish_non_exhaustive()
    }
}

impl TimelineIndex {
    pub fn open_or_create(dir: &Path) -> Result<Self, IndexError> {
        let (schema, fields) = schema();
        Ok(Self { store: Store::open_or_create(dir, schema)?, fields })
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, IndexError> {
        self.store.checkpoint()
    }

    pub fn writer(&self, memory_budget_bytes: usize) -> Result<TimelineWriter, IndexError> {
        Ok(TimelineWriter {
            writing: self.store.writer(memory_budget_bytes, TIMELINE_DELETED_RATIO_BEFORE_MERGE)?,
            fields: self.fields,
        })
    }

    pub fn reload(&self) -> Result<(), IndexError> {
        self.store.reload()
    }

    /// Matching entries, always within the query's tenant whatever its text says.
    pub fn search(&self, query: &TimelineQuery) -> Result<Vec<Hit>, IndexError> {
        let fields = self.fields;
        let user_query = self.store.user_query(fields.text, &query.text, super::query::Words::Whole)?;
        let mut clauses = vec![(Occur::Must, term_query(fields.tenant, &query.tenant)), (Occur::Must, user_query.box_clone())];
        if let Some(contact_id) = &query.contact_id {
            clauses.push((Occur::Must, term_query(fields.contact, &scoped(&query.tenant, contact_id))));
        }
        if let Some(channel) = query.channel {
            clauses.push((Occur::Must, term_query(fields.channel, channel.as_str())));
        }
        if query.from.is_some() || query.to.is_some() {
            let bound = |at: Option<Timestamp>, make: fn(Term) -> Bound<Term>| {
                at.map_or(Bound::Unbounded, |at| make(Term::from_field_i64(fields.occurred_at, at.micros())))
            };
            let range = RangeQuery::new(bound(query.from, Bound::Included), bound(query.to, Bound::Excluded));
            clauses.push((Occur::Must, Box::new(range)));
        }
        let scoped_query = BooleanQuery::new(clauses);
        let searcher = self.store.reader.searcher();
        let top = TopDocs::with_limit(query.limit.max(1)).and_offset(query.offset);
        let addresses: Vec<(f32, DocAddress)> = match query.order {
            SortOrder::Best => searcher.search(&scoped_query, &top.order_by_score())?,
            SortOrder::Newest => searcher
                .search(&scoped_query, &top.order_by_fast_field::<i64>("occurred_at", Order::Desc))?
                .into_iter()
                .map(|(_, address)| (0.0, address))
                .collect(),
        };
        let mut snippets = SnippetGenerator::create(&searcher, &*user_query, fields.text)?;
        snippets.set_max_num_chars(SNIPPET_CHARS);
        addresses
            .into_iter()
            .map(|(score, address)| {
                let (contact_id, entry) = stored_entry(&searcher.doc(address)?, fields)?;
                let text = searchable_text(&entry);
                let mut snippet = snippets.snippet(&text).to_html();
                if snippet.is_empty() {
                    snippet = html_escape(&text.chars().take(SNIPPET_CHARS).collect::<String>());
                }
                Ok(Hit {
                    snippet,
                    contact_id: contact_id.into(),
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
        self.store.num_docs()
    }

    /// Entries indexed under one contact, for checks and reports.
    pub fn contact_docs(&self, tenant: &str, contact_id: &str) -> Result<usize, IndexError> {
        let searcher = self.store.reader.searcher();
        Ok(searcher.search(&*term_query(self.fields.contact, &scoped(tenant, contact_id)), &Count)?)
    }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn stored_entry(doc: &TantivyDocument, fields: Fields) -> Result<(String, TimelineEntry), IndexError> {
    let text = |field| doc.get_first(field).and_then(|v| v.as_str().map(str::to_owned));
    let contact_id = text(fields.contact_id).ok_or_else(|| IndexError::BadChange("document without contact".into()))?;
    let entry = text(fields.entry).ok_or_else(|| IndexError::BadChange("document without entry".into()))?;
    let entry = serde_json::from_str(&entry).map_err(|e| IndexError::BadChange(e.to_string()))?;
    Ok((contact_id, entry))
}

/// The timeline index's one writer.
pub struct TimelineWriter {
    writing: Writing,
    fields: Fields,
}

impl std::fmt::Debug for TimelineWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimelineWriter").field("pending_ops", &self.writing.pending_ops).finish()
    }
}

impl TimelineWriter {
    pub fn pending_ops(&self) -> usize {
        self.writing.pending_ops
    }

    /// Adds or replaces an entry: a redelivered change, or a replay after a
    /// restart, overwrites the document instead of adding a second one.
    pub fn upsert(&mut self, tenant: &str, contact_id: &str, entry: &TimelineEntry) -> Result<(), IndexError> {
        let (key, doc) = self.document(tenant, contact_id, entry);
        self.writing.replace(self.fields.key, &key, doc)
    }

    fn document(&self, tenant: &str, contact_id: &str, entry: &TimelineEntry) -> (String, TantivyDocument) {
        let f = self.fields;
        let key = scoped(tenant, &entry.entry_id);
        let mut doc = TantivyDocument::default();
        doc.add_text(f.key, &key);
        doc.add_text(f.tenant, tenant);
        doc.add_text(f.contact, scoped(tenant, contact_id));
        if let Some(session) = &entry.session_id {
            doc.add_text(f.session, scoped(tenant, session));
        }
        doc.add_text(f.channel, entry.channel.as_str());
        doc.add_i64(f.occurred_at, entry.occurred_at.micros());
        doc.add_text(f.text, searchable_text(entry));
        doc.add_text(f.entry, serde_json::to_string(entry).expect("entries serialize"));
        doc.add_text(f.contact_id, contact_id);
        (key, doc)
    }

    /// Applies one change event; changes that do not touch history are ignored.
    pub fn apply(&mut self, change: &Change, before: &dyn Fn() -> Checkpoint, delivery: Delivery) -> Result<(), IndexError> {
        let tenant = &change.tenant_id;
        let data = &change.data;
        match change.kind {
            ChangeKind::TimelineAppended => {
                let entry =
                    data.entry.as_ref().ok_or_else(|| IndexError::BadChange(format!("{} has no entry", change.change_id)))?;
                match delivery {
                    Delivery::AtLeastOnce => self.upsert(tenant, &change.contact_id, entry)?,
                    Delivery::FirstTime => {
                        let (_, doc) = self.document(tenant, &change.contact_id, entry);
                        self.writing.add(doc)?;
                    }
                }
            }
            ChangeKind::ContactDeleted => self.writing.delete(self.fields.contact, tenant, &change.contact_id),
            ChangeKind::SessionUnlinked => {
                self.writing.delete(self.fields.session, tenant, data.session_id.as_deref().unwrap_or_default())
            }
            ChangeKind::ContactMerged => {
                let merged = data.merged_contact_id.as_deref().unwrap_or_default();
                self.move_contact(tenant, merged, &change.contact_id, &before())?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Re-files a merged contact's documents under the surviving contact. Reads
    /// the stored documents, so everything before the merge is committed first.
    fn move_contact(&mut self, tenant: &str, from: &str, into: &str, before: &Checkpoint) -> Result<(), IndexError> {
        self.commit(before)?;
        let searcher = self.writing.reader.searcher();
        let from_term = Term::from_field_text(self.fields.contact, &scoped(tenant, from));
        let query = TermQuery::new(from_term.clone(), IndexRecordOption::Basic);
        let count = searcher.search(&query, &Count)?;
        if count == 0 {
            return Ok(());
        }
        let addresses = searcher.search(&query, &TopDocs::with_limit(count).order_by_score())?;
        let mut entries = Vec::with_capacity(addresses.len());
        for (_, address) in addresses {
            entries.push(stored_entry(&searcher.doc(address)?, self.fields)?.1);
        }
        self.writing.writer.delete_term(from_term);
        for entry in &entries {
            self.upsert(tenant, into, entry)?;
        }
        Ok(())
    }

    pub fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), IndexError> {
        self.writing.commit(checkpoint)
    }

    pub fn clear(&mut self) -> Result<(), IndexError> {
        self.writing.clear()
    }
}

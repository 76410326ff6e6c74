//! The directory index: one document per live contact with its name and every
//! identifier, for finding a customer by any fragment of what they told us.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use tantivy::TantivyDocument;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur};
use tantivy::schema::{Field, STORED, STRING, Schema, TEXT, Value};

use super::{CONTACTS_DELETED_RATIO_BEFORE_MERGE, Checkpoint, IndexError, Store, Writing, scoped, term_query};
use crate::model::{Change, ChangeKind, ContactId, ContactState, TenantId};

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    tenant: Field,
    text: Field,
    has: Field,
    param: Field,
    contact_id: Field,
    state: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        key: builder.add_text_field("key", STRING),
        tenant: builder.add_text_field("tenant", STRING),
        text: builder.add_text_field("text", TEXT),
        has: builder.add_text_field("has", STRING),
        param: builder.add_text_field("param", STRING),
        contact_id: builder.add_text_field("contact_id", STORED),
        state: builder.add_text_field("state", STORED),
    };
    (builder.build(), fields)
}

/// The identifier kinds the `has` filter knows.
pub const IDENTIFIER_KINDS: [&str; 7] = ["email", "phone", "facebook", "whatsapp", "apple", "vk", "browser"];

/// The kinds of identifier a contact has, as the `has` filter names them.
fn identifier_kinds(state: &ContactState) -> Vec<&'static str> {
    let ids = &state.channel_ids;
    let present = [
        !state.emails.is_empty(),
        !state.phones.is_empty(),
        !ids.facebook.is_empty(),
        !ids.whatsapp.is_empty(),
        !ids.apple.is_empty(),
        !ids.vk.is_empty(),
        !ids.browser.is_empty(),
    ];
    IDENTIFIER_KINDS.into_iter().zip(present).filter_map(|(kind, present)| present.then_some(kind)).collect()
}

/// Everything a free-text directory search matches. Browser ids are left out:
/// they are opaque and an operator never types one.
fn searchable_text(state: &ContactState) -> String {
    let ids = &state.channel_ids;
    let mut parts: Vec<&str> = state.name.iter().map(String::as_str).collect();
    parts.extend(state.emails.iter().map(String::as_str));
    parts.extend(state.phones.iter().map(String::as_str));
    for list in [&ids.facebook, &ids.whatsapp, &ids.apple, &ids.vk] {
        parts.extend(list.iter().map(String::as_str));
    }
    parts.extend(state.params.values().map(String::as_str));
    let national: Vec<String> = state.phones.iter().filter_map(|phone| crate::identity::national_number(phone)).collect();
    parts.extend(national.iter().map(String::as_str));
    parts.join("\n")
}

/// A query that is only a phone number, in any format people write one,
/// becomes its digits: with the country code (`+420 777 123 456`, `00420…`)
/// or without it and any trunk zero (`777 123 456`, `030 123457`), which the
/// index holds for every phone. Anything else is left as typed.
fn phone_digits(text: &str) -> std::borrow::Cow<'_, str> {
    const PUNCTUATION: &str = "+-./()";
    let phone_like = text.chars().all(|c| c.is_ascii_digit() || c.is_whitespace() || PUNCTUATION.contains(c));
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    if !phone_like || digits.len() < 6 {
        return text.into();
    }
    // Both a `00` international prefix and a trunk zero go.
    digits.trim_start_matches('0').to_owned().into()
}

/// A directory search, always within one tenant.
#[derive(Clone, Debug, Default)]
pub struct ContactQuery {
    pub tenant: TenantId,
    /// Words of the name, e-mails, phones, channel ids or parameter values; all
    /// must match. Empty lists every contact that passes the filters.
    pub text: String,
    /// Only contacts with an identifier of this kind (`email`, `phone`,
    /// `facebook`, `whatsapp`, `apple`, `vk`, `browser`).
    pub has: Vec<String>,
    /// Only contacts whose custom parameter has exactly this value.
    pub params: Vec<(String, String)>,
    pub limit: usize,
    pub offset: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContactHit {
    pub contact_id: ContactId,
    #[serde(flatten)]
    pub state: ContactState,
    pub score: f32,
}

pub struct ContactIndex {
    store: Store,
    fields: Fields,
}

impl std::fmt::Debug for ContactIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactIndex").finish_non_exhaustive()
    }
}

impl ContactIndex {
    pub fn open_or_create(dir: &Path) -> Result<Self, IndexError> {
        let (schema, fields) = schema();
        Ok(Self { store: Store::open_or_create(dir, schema)?, fields })
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, IndexError> {
        self.store.checkpoint()
    }

    pub fn writer(&self, memory_budget_bytes: usize) -> Result<ContactWriter, IndexError> {
        Ok(ContactWriter {
            writing: self.store.writer(memory_budget_bytes, CONTACTS_DELETED_RATIO_BEFORE_MERGE)?,
            fields: self.fields,
            latest: HashMap::new(),
        })
    }

    pub fn reload(&self) -> Result<(), IndexError> {
        self.store.reload()
    }

    /// Matching contacts, best first, always within the query's tenant.
    pub fn search(&self, query: &ContactQuery) -> Result<Vec<ContactHit>, IndexError> {
        let fields = self.fields;
        let user_query = self.store.user_query(fields.text, &phone_digits(&query.text), super::query::Words::Prefixes)?;
        let mut clauses = vec![(Occur::Must, term_query(fields.tenant, &query.tenant)), (Occur::Must, user_query)];
        for kind in &query.has {
            clauses.push((Occur::Must, term_query(fields.has, kind)));
        }
        for (name, value) in &query.params {
            clauses.push((Occur::Must, term_query(fields.param, &param_term(name, value))));
        }
        let searcher = self.store.reader.searcher();
        let top = TopDocs::with_limit(query.limit.max(1)).and_offset(query.offset).order_by_score();
        searcher
            .search(&BooleanQuery::new(clauses), &top)?
            .into_iter()
            .map(|(score, address)| {
                let doc: TantivyDocument = searcher.doc(address)?;
                let text = |field| doc.get_first(field).and_then(|v| v.as_str().map(str::to_owned));
                let contact_id = text(fields.contact_id).ok_or_else(|| IndexError::BadChange("contact without id".into()))?;
                let state = text(fields.state).ok_or_else(|| IndexError::BadChange("contact without state".into()))?;
                let state = serde_json::from_str(&state).map_err(|e| IndexError::BadChange(e.to_string()))?;
                Ok(ContactHit { contact_id: contact_id.into(), state, score })
            })
            .collect()
    }

    /// Number of indexed contacts (all tenants), for reports.
    pub fn num_docs(&self) -> u64 {
        self.store.num_docs()
    }
}

fn param_term(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

/// The directory index's one writer.
pub struct ContactWriter {
    writing: Writing,
    fields: Fields,
    /// Each changed contact's latest state since the last commit, by tenant and
    /// contact id. A contact changes several times between two commits (events
    /// of its sessions), and only its last state is ever searchable, so its
    /// document is written once, at the commit (measured over 1,000,000 events:
    /// 228,000 contact changes wrote 84,000 documents).
    latest: HashMap<(TenantId, ContactId), ContactState>,
}

impl std::fmt::Debug for ContactWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactWriter")
            .field("pending_ops", &self.writing.pending_ops)
            .field("latest", &self.latest.len())
            .finish()
    }
}

impl ContactWriter {
    /// Index operations since the last commit, counting each contact whose
    /// document the commit will write.
    pub fn pending_ops(&self) -> usize {
        self.writing.pending_ops + self.latest.len()
    }

    /// Replaces the contact's document with its current state.
    pub fn upsert(&mut self, tenant: &str, contact_id: &str, state: &ContactState) -> Result<(), IndexError> {
        let f = self.fields;
        let key = scoped(tenant, contact_id);
        let mut doc = TantivyDocument::default();
        doc.add_text(f.key, &key);
        doc.add_text(f.tenant, tenant);
        doc.add_text(f.text, searchable_text(state));
        for kind in identifier_kinds(state) {
            doc.add_text(f.has, kind);
        }
        for (name, value) in &state.params {
            doc.add_text(f.param, param_term(name, value));
        }
        doc.add_text(f.contact_id, contact_id);
        doc.add_text(f.state, serde_json::to_string(state).expect("contact states serialize"));
        self.writing.replace(f.key, &key, doc)
    }

    /// Contact changes carry the contact's state after the change (docs/contract.md 5),
    /// so the document is replaced at the next commit by one built from the
    /// latest state; a deleted or merged-away contact's document goes, and one
    /// that goes before the commit is never written.
    pub fn apply(&mut self, change: &Change) -> Result<(), IndexError> {
        let tenant = &change.tenant_id;
        match change.kind {
            ChangeKind::ContactDeleted => {
                self.remove(tenant, &change.contact_id);
                return Ok(());
            }
            ChangeKind::ContactMerged => {
                if let Some(merged) = &change.data.merged_contact_id {
                    self.remove(tenant, merged);
                }
            }
            _ => {}
        }
        if let Some(state) = &change.data.contact {
            self.latest.insert((tenant.clone(), change.contact_id.clone()), (**state).clone());
        }
        Ok(())
    }

    fn remove(&mut self, tenant: &TenantId, contact_id: &ContactId) {
        self.latest.remove(&(tenant.clone(), contact_id.clone()));
        self.writing.delete(self.fields.key, tenant, contact_id);
    }

    pub fn commit(&mut self, checkpoint: &Checkpoint) -> Result<(), IndexError> {
        for ((tenant, contact_id), state) in std::mem::take(&mut self.latest) {
            self.upsert(&tenant, &contact_id, &state)?;
        }
        self.writing.commit(checkpoint)
    }

    pub fn clear(&mut self) -> Result<(), IndexError> {
        self.latest.clear();
        self.writing.clear()
    }
}

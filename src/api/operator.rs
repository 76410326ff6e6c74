//! The operator endpoints, `/v1/tenants/{tenant}/...` with a write token:
//! create, edit, merge and delete a contact, link a conversation to a contact
//! or disconnect it, add a note, dismiss an identity conflict. Each request
//! becomes the contract's operator event (docs/contract.md 1), is decoded like
//! any event, and is applied through the pipeline every event goes through;
//! nothing writes the store another way. With an `Idempotency-Key` header the event id is derived
//! from the key and the request, so a retried request is one event and a key
//! reused for another request is not taken for a retry; without it the
//! server makes one. The answer names the event in an `Event-Id` header.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::search::{ApiError, Scope, SearchState, Writes, authorize, counted, join_error};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use crate::event::{Event, EventBody, SCHEMA_V1, decode_within, partition_key};
use crate::model::{Change, ChangeKind, Claim, ContactId, SessionId, TenantId, Timestamp, derived_id};
use crate::pipeline;
use crate::resolve::{founded_contact_id, identifiers_looked_up};
use crate::source::{Origin, RawRecord};
use crate::store::view;
use crate::store::{Backend, StoreError, StoreResult};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// How long a write waits for the broker's acknowledgement.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const EVENT_ID: &str = "event-id";

pub fn routes() -> Router<SearchState> {
    Router::new()
        .route("/v1/tenants/{tenant}/contacts", post(create_contact))
        .route("/v1/tenants/{tenant}/contacts/{contact_id}", axum::routing::patch(edit_contact).delete(delete_contact))
        .route("/v1/tenants/{tenant}/contacts/{contact_id}/notes", post(contact_note))
        .route("/v1/tenants/{tenant}/sessions/{session_id}/contact", put(link_session).delete(unlink_session))
        .route("/v1/tenants/{tenant}/sessions/{session_id}/notes", post(session_note))
        .route("/v1/tenants/{tenant}/contacts/{contact_id}/merge", post(merge_contact))
        .route("/v1/tenants/{tenant}/conflicts/{conflict_id}/dismiss", post(dismiss_conflict))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewContact {
    contact_id: Option<String>,
    /// The contract's identity block: name, emails, phones, channel ids, params.
    identity: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactEdit {
    set_name: Option<String>,
    add: Option<Value>,
    remove: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Link {
    contact_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Merge {
    from_contact_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Note {
    text: String,
    author: String,
    note_id: Option<String>,
}

/// One operator event, as the contract writes it, and the request's key.
struct OperatorEvent {
    idempotency_key: Option<String>,
    line: Value,
    /// A note given without an id is named after its event.
    note_named_by_event: bool,
}

impl OperatorEvent {
    fn new(headers: &HeaderMap, tenant: &TenantId, kind: &str) -> Result<Self, ApiError> {
        let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
            Some(key) => match key.to_str().map(str::trim) {
                Ok(key) if (1..=128).contains(&key.chars().count()) => Some(key.to_owned()),
                _ => return Err(ApiError::bad_request("Idempotency-Key must be 1 to 128 visible ASCII characters")),
            },
            None => None,
        };
        let line = json!({
            "schema": SCHEMA_V1,
            "tenant_id": tenant,
            "type": kind,
            "occurred_at": Timestamp::now(),
            "channel": "operator",
        });
        Ok(Self { idempotency_key, line, note_named_by_event: false })
    }

    fn with(mut self, field: &str, value: impl serde::Serialize) -> Self {
        self.line[field] = json!(value);
        self
    }

    /// The event as applied: its id from the key and everything the request
    /// said (not its time), or a fresh one.
    fn finish(mut self) -> (String, Vec<u8>) {
        let event_id = match &self.idempotency_key {
            Some(key) => {
                let mut request = self.line.clone();
                if let Some(fields) = request.as_object_mut() {
                    fields.remove("occurred_at");
                }
                derived_id("api-", &[key, &request.to_string()])
            }
            None => format!("api-{:032x}", rand::random::<u128>()),
        };
        self.line["event_id"] = json!(event_id);
        if self.note_named_by_event {
            self.line["payload"]["note_id"] = json!(event_id);
        }
        (event_id, self.line.to_string().into_bytes())
    }
}

/// An event applied here, or handed to the workers.
enum Outcome {
    Applied(Applied),
    /// Published to the events topic: the answer is a 202 naming the event,
    /// and `GET .../contacts/{id}?after=EVENT_ID` waits until it is applied.
    Queued {
        event_id: String,
        contact: Option<ContactId>,
    },
}

/// What applying an event did, as the answer needs it.
struct Applied {
    event_id: String,
    /// The contact the event's changes name last: the one it created, edited
    /// or linked to (after merges).
    contact: Option<ContactId>,
    /// The identity conflicts it raised, as its `identity.conflict` changes
    /// name them.
    conflicts: Vec<Value>,
}

/// Applies `event` through the pipeline, or publishes it for the workers,
/// refusing first what the decoder would dead-letter.
async fn apply(state: &SearchState, event: OperatorEvent) -> Result<Outcome, ApiError> {
    let limits = match &state.writes {
        Writes::Applied(limits) | Writes::Published { limits, .. } => *limits,
        Writes::Refused(why) => {
            return Err(ApiError { status: StatusCode::NOT_IMPLEMENTED, error: "not_implemented", detail: (*why).into() });
        }
    };
    let (event_id, payload) = event.finish();
    let decoded = match decode_within(&payload, &limits) {
        Ok(decoded) => decoded,
        Err(error) => {
            return Err(ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                error: "invalid_event",
                detail: format!("{}: {error}", error.code()),
            });
        }
    };
    if let Writes::Published { producer, topic, .. } = &state.writes {
        let key = partition_key(&payload).unwrap_or_default();
        let record = FutureRecord::to(topic).payload(&payload).key(&key);
        producer.send(record, Timeout::After(PUBLISH_TIMEOUT)).await.map_err(|(error, _)| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "broker_unavailable",
            detail: format!("the event could not be published: {error}"),
        })?;
        // Only what the event names; a create without a contact id founds
        // the one derived from its event (docs/contract.md 3.3).
        let contact = match &decoded.body {
            EventBody::SessionLinked { contact_id, .. } => Some(contact_id.clone()),
            EventBody::ContactCreated => Some(decoded.contact_id.clone().unwrap_or_else(|| founded_contact_id(&decoded))),
            EventBody::ConflictDismissed { .. } => None,
            _ => decoded.contact_id.clone(),
        };
        return Ok(Outcome::Queued { event_id, contact });
    }
    let store = Arc::clone(&state.store);
    let record = RawRecord { payload, origin: Origin { source: "api".into(), partition: None, position: 0 } };
    let applied = tokio::task::spawn_blocking(move || {
        let mut store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let outcome = pipeline::process_batch_within(&mut **store, std::slice::from_ref(&record), &limits)?;
        let effects = effects(&**store, &outcome, &decoded)?;
        Ok::<_, StoreError>((outcome, effects))
    })
    .await
    .map_err(join_error)?;
    let (outcome, (contact, conflicts)) = applied.map_err(|error| ApiError::from(view::ViewError::Store(error)))?;
    if let Some(rejection) = outcome.rejections.first() {
        let status = match rejection.reason {
            "unknown_contact" | "unknown_conflict" => StatusCode::NOT_FOUND,
            "contact_exists" => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        return Err(ApiError { status, error: rejection.reason, detail: rejection.detail.clone() });
    }
    if let Some(reason) = outcome.report.skipped.keys().next() {
        let detail = format!("the event belongs to history an erasure removed ({reason})");
        return Err(ApiError { status: StatusCode::GONE, error: "erased", detail });
    }
    Ok(Outcome::Applied(Applied { event_id, contact, conflicts }))
}

/// What an applied event did: the contact it is about (the last one its
/// changes name; for an event that changed nothing, such as an edit that set
/// what was there, a link already made or a retried create, the contact it
/// names or founded, or the owner of the identity it carries), and the
/// conflicts it raised.
fn effects(store: &dyn Backend, outcome: &pipeline::BatchOutcome, event: &Event) -> StoreResult<(Option<ContactId>, Vec<Value>)> {
    let mut named = None;
    let mut conflicts = Vec::new();
    for seq in &outcome.units {
        for (_, json) in store.unit(*seq)?.iter().flat_map(|unit| unit.changes()) {
            let change: Change = serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if change.caused_by != event.event_id {
                continue;
            }
            if change.kind == ChangeKind::IdentityConflict {
                conflicts.push(json!({
                    "conflict_id": change.data.conflict_id,
                    "identifier": change.data.identifier,
                    "owner_contact_id": change.data.owner_contact_id,
                }));
            }
            named = Some(change.contact_id);
        }
    }
    Ok((named_contact(store, named, event)?, conflicts))
}

fn named_contact(store: &dyn Backend, named: Option<ContactId>, event: &Event) -> StoreResult<Option<ContactId>> {
    if named.is_some() || event.contact_id.is_some() {
        return Ok(named.or_else(|| event.contact_id.clone()));
    }
    if matches!(event.body, EventBody::ContactCreated) {
        // A repeated create whose first answer's changes are delivered and
        // gone: the contact it founded, under the id resolution derives for it.
        let founded = founded_contact_id(event);
        return Ok(store.contact(&event.tenant_id, &founded)?.map(|_| founded));
    }
    let config = store.tenant_config(&event.tenant_id)?.unwrap_or_default();
    for identifier in identifiers_looked_up(event, &config) {
        if let Some(Claim::Owned { contact_id }) = store.claim(&event.tenant_id, &identifier)? {
            return Ok(Some(contact_id));
        }
    }
    Ok(None)
}

/// A request body: a JSON object of the fields `T` names (serde would also
/// take a JSON array for a struct).
fn body<T: serde::de::DeserializeOwned>(body: Result<Json<Value>, JsonRejection>) -> Result<T, ApiError> {
    let invalid = |detail: String| ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, error: "invalid_body", detail };
    let Json(value) = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        error: if rejection.status() == StatusCode::UNPROCESSABLE_ENTITY { "invalid_body" } else { "bad_request" },
        detail: rejection.body_text(),
    })?;
    if !value.is_object() {
        return Err(invalid("the body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|error| invalid(error.to_string()))
}

/// The contact as `GET .../contacts/{id}` shows it, with the event's id.
async fn contact_answer(
    state: &SearchState,
    tenant: TenantId,
    applied: Applied,
    status: StatusCode,
    with_conflicts: bool,
) -> Result<Response, ApiError> {
    let Some(contact) = applied.contact else { return Ok(event_answer(applied.event_id, status, None)) };
    let mut shown = super::search::in_store(state, {
        let contact = contact.clone();
        move |store| view::contact_view(store, &tenant, &contact)
    })
    .await?;
    if with_conflicts {
        shown["conflicts"] = Value::Array(applied.conflicts);
    }
    let mut response = (status, Json(shown)).into_response();
    set_event_id(&mut response, &applied.event_id);
    Ok(response)
}

fn event_answer(event_id: String, status: StatusCode, contact: Option<ContactId>) -> Response {
    let mut response = if status == StatusCode::NO_CONTENT {
        status.into_response()
    } else {
        (status, Json(json!({ "event_id": event_id, "contact_id": contact }))).into_response()
    };
    set_event_id(&mut response, &event_id);
    response
}

fn set_event_id(response: &mut Response, event_id: &str) {
    if let Ok(value) = HeaderValue::from_str(event_id) {
        response.headers_mut().insert(EVENT_ID, value);
    }
}

async fn create_contact(
    State(state): State<SearchState>,
    Path(tenant): Path<TenantId>,
    headers: HeaderMap,
    new: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "create_contact", async {
        authorize(&state, &headers, &tenant, Scope::Write)?;
        let new: NewContact = body(new)?;
        let mut event = OperatorEvent::new(&headers, &tenant, "contact.created")?;
        if let Some(id) = new.contact_id {
            event = event.with("contact_id", id);
        }
        if let Some(identity) = new.identity {
            event = event.with("identity", identity);
        }
        let applied = match apply(&state, event).await? {
            Outcome::Applied(applied) => applied,
            Outcome::Queued { event_id, contact } => return Ok(event_answer(event_id, StatusCode::ACCEPTED, contact)),
        };
        let location = applied.contact.as_ref().map(|id| format!("/v1/tenants/{tenant}/contacts/{id}"));
        let mut response = contact_answer(&state, tenant, applied, StatusCode::CREATED, true).await?;
        if let Some(value) = location.and_then(|location| HeaderValue::from_str(&location).ok()) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Ok(response)
    })
    .await
}

async fn edit_contact(
    State(state): State<SearchState>,
    Path((tenant, contact_id)): Path<(TenantId, ContactId)>,
    headers: HeaderMap,
    edit: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "edit_contact", async {
        authorize(&state, &headers, &tenant, Scope::Write)?;
        let edit: ContactEdit = body(edit)?;
        let payload = json!({ "set_name": edit.set_name, "add": edit.add, "remove": edit.remove });
        let event =
            OperatorEvent::new(&headers, &tenant, "contact.updated")?.with("contact_id", &contact_id).with("payload", payload);
        let applied = match apply(&state, event).await? {
            Outcome::Applied(applied) => applied,
            Outcome::Queued { event_id, contact } => return Ok(event_answer(event_id, StatusCode::ACCEPTED, contact)),
        };
        contact_answer(&state, tenant, applied, StatusCode::OK, false).await
    })
    .await
}

async fn delete_contact(
    State(state): State<SearchState>,
    Path((tenant, contact_id)): Path<(TenantId, ContactId)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    counted(&state, "delete_contact", async {
        authorize(&state, &headers, &tenant, Scope::Write)?;
        let event = OperatorEvent::new(&headers, &tenant, "contact.deleted")?.with("contact_id", &contact_id);
        let applied = match apply(&state, event).await? {
            Outcome::Applied(applied) => applied,
            Outcome::Queued { event_id, contact } => return Ok(event_answer(event_id, StatusCode::ACCEPTED, contact)),
        };
        Ok(event_answer(applied.event_id, StatusCode::NO_CONTENT, None))
    })
    .await
}

async fn link_session(
    State(state): State<SearchState>,
    Path((tenant, session_id)): Path<(TenantId, SessionId)>,
    headers: HeaderMap,
    link: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "link_session", async {
        authorize(&state, &headers, &tenant, Scope::Write)?;
        let link: Link = body(link)?;
        let event = OperatorEvent::new(&headers, &tenant, "session.linked")?
            .with("session_id", &session_id)
            .with("contact_id", link.contact_id);
        let applied = match apply(&state, event).await? {
            Outcome::Applied(applied) => applied,
            Outcome::Queued { event_id, contact } => return Ok(event_answer(event_id, StatusCode::ACCEPTED, contact)),
        };
        contact_answer(&state, tenant, applied, StatusCode::OK, false).await
    })
    .await
}

async fn unlink_session(
    State(state): State<SearchState>,
    Path((tenant, session_id)): Path<(TenantId, SessionId)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    counted(&state, "unlink_session", async {
        authorize(&state, &headers, &tenant, Scope::Write)?;
        let event = OperatorEvent::new(&headers, &tenant, "session.unlinked")?.with("session_id", &session_id);
        let applied = match apply(&state, event).await? {
            Outcome::Applied(applied) => applied,
            Outcome::Queued { event_id, contact } => return Ok(event_answer(event_id, StatusCode::ACCEPTED, contact)),
        };
        Ok(event_answer(applied.event_id, StatusCode::NO_CONTENT, None))
    })
    .await
}

/// A note on a contact, or on a session's contact (waiting with the
/// session while it has none).
async fn note(
    state: &SearchState,
    headers: &HeaderMap,
    tenant: &TenantId,
    target: (&str, String),
    note: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(state, headers, tenant, Scope::Write)?;
    let note: Note = body(note)?;
    let mut event = OperatorEvent::new(headers, tenant, "note.added")?;
    event.note_named_by_event = note.note_id.is_none();
    let payload = json!({ "note_id": note.note_id.unwrap_or_default(), "author": note.author, "text": note.text });
    let event = event.with(target.0, target.1).with("payload", payload);
    let applied = match apply(state, event).await? {
        Outcome::Applied(applied) => applied,
        Outcome::Queued { event_id, contact } => return Ok(event_answer(event_id, StatusCode::ACCEPTED, contact)),
    };
    Ok(event_answer(applied.event_id, StatusCode::CREATED, applied.contact))
}

async fn contact_note(
    State(state): State<SearchState>,
    Path((tenant, contact_id)): Path<(TenantId, ContactId)>,
    headers: HeaderMap,
    new: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "contact_note", note(&state, &headers, &tenant, ("contact_id", contact_id.into_string()), new)).await
}

async fn session_note(
    State(state): State<SearchState>,
    Path((tenant, session_id)): Path<(TenantId, SessionId)>,
    headers: HeaderMap,
    new: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "session_note", note(&state, &headers, &tenant, ("session_id", session_id.into_string()), new)).await
}

/// An operator's merge (`contact.merged`): `from_contact_id` joins the
/// contact of the path, which the answer shows.
async fn merge_contact(
    State(state): State<SearchState>,
    Path((tenant, contact_id)): Path<(TenantId, ContactId)>,
    headers: HeaderMap,
    merge: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "merge_contact", async {
        authorize(&state, &headers, &tenant, Scope::Write)?;
        let merge: Merge = body(merge)?;
        let event = OperatorEvent::new(&headers, &tenant, "contact.merged")?
            .with("contact_id", &contact_id)
            .with("payload", json!({ "from_contact_id": merge.from_contact_id }));
        let applied = match apply(&state, event).await? {
            Outcome::Applied(applied) => applied,
            Outcome::Queued { event_id, contact } => return Ok(event_answer(event_id, StatusCode::ACCEPTED, contact)),
        };
        let applied = Applied { contact: Some(contact_id), ..applied };
        contact_answer(&state, tenant, applied, StatusCode::OK, false).await
    })
    .await
}

/// "Leave as is" for an open identity conflict (`conflict.dismissed`). A
/// conflict the store does not know is 404 here, before anything is
/// published.
async fn dismiss_conflict(
    State(state): State<SearchState>,
    Path((tenant, conflict_id)): Path<(TenantId, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    counted(&state, "dismiss_conflict", async {
        authorize(&state, &headers, &tenant, Scope::Write)?;
        let known = super::search::in_store(&state, {
            let (tenant, conflict_id) = (tenant.clone(), conflict_id.clone());
            move |store| Ok(store.conflict(&tenant, &conflict_id)?.is_some())
        })
        .await?;
        if !known {
            let detail = format!("tenant {tenant} has no conflict {conflict_id}");
            return Err(ApiError { status: StatusCode::NOT_FOUND, error: "unknown_conflict", detail });
        }
        let event =
            OperatorEvent::new(&headers, &tenant, "conflict.dismissed")?.with("payload", json!({ "conflict_id": conflict_id }));
        let applied = match apply(&state, event).await? {
            Outcome::Applied(applied) => applied,
            Outcome::Queued { event_id, .. } => return Ok(event_answer(event_id, StatusCode::ACCEPTED, None)),
        };
        Ok(event_answer(applied.event_id, StatusCode::NO_CONTENT, None))
    })
    .await
}

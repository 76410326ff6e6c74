//! The search API, `/v1/tenants/{tenant}/...`: timeline and directory search
//! from the indexes, contacts and timelines from the store. Every request needs
//! a bearer token of the tenant in its path, and every query is scoped to that
//! tenant below the parser, so no query text or id can reach another tenant.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::config::ApiConfig;
use crate::index::contacts::IDENTIFIER_KINDS;
use crate::index::{ContactQuery, IndexError, SearchIndex, SortOrder, TimelineQuery};
use crate::metrics::IndexerMetrics;
use crate::model::Limits;
use crate::model::{Channel, ContactId, TenantId, Timestamp};
use crate::store::view::{self, ViewError};
use crate::store::{Backend, DirectoryView, StoreError};

/// Results per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// Deepest hit a cursor may reach: offset paging costs grow with depth.
const MAX_OFFSET: usize = 10_000;

/// A store shared by request handlers, which run its blocking calls one at a time.
pub type SharedStore = Arc<Mutex<Box<dyn Backend>>>;

/// What a token may do within its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    /// Read, and the operator endpoints.
    Write,
}

#[derive(Clone)]
pub struct SearchState {
    index: Arc<SearchIndex>,
    pub(super) store: SharedStore,
    /// Token hashes to the tenant and scope they open; hashing keeps the
    /// lookup from leaking a token through timing.
    tokens: Arc<HashMap<blake3::Hash, (String, Scope)>>,
    pub(super) writes: Writes,
    metrics: IndexerMetrics,
}

/// What this server does with an operator's write, once it is an event.
#[derive(Clone)]
pub enum Writes {
    /// Embedded (`serve`): applies it to the store here, within these limits.
    Applied(Limits),
    /// At scale (`indexer`): publishes it to the events topic, keyed as the
    /// connectors key events, for the workers to apply; the answer is a 202.
    Published { producer: rdkafka::producer::FutureProducer, topic: String, limits: Limits },
    /// Refused with this explanation.
    Refused(&'static str),
}

impl SearchState {
    pub fn new(index: Arc<SearchIndex>, store: SharedStore, api: &ApiConfig, writes: Writes, metrics: IndexerMetrics) -> Self {
        let grants = |tokens: &BTreeMap<String, Vec<String>>, scope: Scope| {
            tokens
                .iter()
                .flat_map(|(tenant, list)| {
                    list.iter().map(move |token| (blake3::hash(token.trim().as_bytes()), (tenant.clone(), scope)))
                })
                .collect::<Vec<_>>()
        };
        let tokens = grants(&api.tokens, Scope::Read).into_iter().chain(grants(&api.write_tokens, Scope::Write)).collect();
        Self { index, store, tokens: Arc::new(tokens), writes, metrics }
    }
}

pub fn routes(state: SearchState) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/search", get(search_timeline))
        .route("/v1/tenants/{tenant}/contacts/search", get(search_contacts))
        .route("/v1/tenants/{tenant}/contacts/{contact_id}", get(contact))
        .route("/v1/tenants/{tenant}/contacts/{contact_id}/timeline", get(timeline))
        .route("/v1/tenants/{tenant}/contacts/{contact_id}/explain", get(explain))
        .route("/v1/tenants/{tenant}/conflicts", get(conflicts))
        .merge(super::operator::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(errors_as_json))
        .with_state(state)
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, error: "not_found", detail: format!("no route for {}", uri.path()) }
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    let detail = format!("{method} is not allowed on {}", uri.path());
    ApiError { status: StatusCode::METHOD_NOT_ALLOWED, error: "method_not_allowed", detail }
}

/// Refusals made before a handler runs (a path that is not UTF-8, a request
/// body over the framework's limit) come from the framework as plain text;
/// the API answers every refusal in its JSON error shape, keeping the headers.
async fn errors_as_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let error = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::URI_TOO_LONG | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "too_large",
        status if status.is_server_error() => "internal",
        _ => "refused",
    };
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let mut json = ApiError { status, error, detail }.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name, value.clone());
        }
    }
    json
}

/// A refused request: status plus a JSON body `{"error": ..., "detail": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) error: &'static str,
    pub(super) detail: String,
}

impl ApiError {
    pub(super) fn bad_request(detail: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, error: "bad_request", detail: detail.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.error, "detail": self.detail }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<IndexError> for ApiError {
    fn from(error: IndexError) -> Self {
        match error {
            IndexError::BadQuery(detail) => Self::bad_request(detail),
            other => Self { status: StatusCode::INTERNAL_SERVER_ERROR, error: "index_failure", detail: other.to_string() },
        }
    }
}

impl From<ViewError> for ApiError {
    fn from(error: ViewError) -> Self {
        let (status, code) = match &error {
            ViewError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ViewError::Deleted(_) => (StatusCode::GONE, "deleted"),
            ViewError::BadCursor(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ViewError::Store(StoreError::Transient(_)) => (StatusCode::SERVICE_UNAVAILABLE, "store_busy"),
            ViewError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_failure"),
        };
        Self { status, error: code, detail: error.to_string() }
    }
}

/// Admits the request when its bearer token belongs to `tenant` with at
/// least `needed`. Another tenant's token learns nothing of this one: it is
/// told there is no such tenant.
pub(super) fn authorize(state: &SearchState, headers: &HeaderMap, tenant: &str, needed: Scope) -> Result<(), ApiError> {
    let unauthorized = |detail: &str| ApiError { status: StatusCode::UNAUTHORIZED, error: "unauthorized", detail: detail.into() };
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| unauthorized("missing bearer token"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
    match state.tokens.get(&blake3::hash(token.trim().as_bytes())) {
        Some((granted, scope)) if granted == tenant && *scope >= needed => Ok(()),
        Some((granted, _)) if granted == tenant => {
            Err(ApiError { status: StatusCode::FORBIDDEN, error: "forbidden", detail: "the token may only read".into() })
        }
        Some(_) => Err(ApiError { status: StatusCode::NOT_FOUND, error: "not_found", detail: format!("no tenant {tenant}") }),
        None => Err(unauthorized("unknown token")),
    }
}

/// Runs a handler's body, counting the request by status and its latency under `route`.
pub(super) async fn counted(
    state: &SearchState,
    route: &str,
    handle: impl Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = handle.await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => error.status,
    };
    state.metrics.requests.with_label_values(&[route, status.as_str()]).inc();
    state.metrics.request_seconds.with_label_values(&[route]).observe(started.elapsed().as_secs_f64());
    result
}

/// Runs a search on a blocking thread: tantivy blocks.
async fn in_index<T: Send + 'static>(
    state: &SearchState,
    search: impl FnOnce(&SearchIndex) -> Result<T, IndexError> + Send + 'static,
) -> Result<T, ApiError> {
    let index = Arc::clone(&state.index);
    Ok(tokio::task::spawn_blocking(move || search(&index)).await.map_err(join_error)??)
}

/// Runs a store read on a blocking thread, one store call at a time.
pub(super) async fn in_store<T: Send + 'static>(
    state: &SearchState,
    read: impl FnOnce(&dyn DirectoryView) -> Result<T, ViewError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(&state.store);
    let read = move || {
        let store = store.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let view: &dyn DirectoryView = &**store;
        read(view)
    };
    Ok(tokio::task::spawn_blocking(read).await.map_err(join_error)??)
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n if n > MAX_LIMIT => Err(ApiError::bad_request(format!("limit must be at most {MAX_LIMIT}"))),
        n => Ok(n),
    }
}

/// Search cursors are the offset of the next hit; opaque to clients.
fn offset_of(cursor: Option<&str>) -> Result<usize, ApiError> {
    let Some(cursor) = cursor else { return Ok(0) };
    match cursor.parse::<usize>() {
        Ok(offset) if offset <= MAX_OFFSET => Ok(offset),
        _ => Err(ApiError::bad_request(format!("malformed or too deep cursor {cursor:?}"))),
    }
}

fn next_cursor(offset: usize, limit: usize, returned: usize) -> Option<String> {
    (returned == limit && offset + limit <= MAX_OFFSET).then(|| (offset + limit).to_string())
}

fn timestamp(name: &str, value: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    value
        .map(|v| {
            Timestamp::parse_rfc3339(v).ok_or_else(|| ApiError::bad_request(format!("{name} must be an RFC 3339 timestamp")))
        })
        .transpose()
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|rejection| ApiError::bad_request(rejection.body_text()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineSearchParams {
    q: Option<String>,
    contact_id: Option<ContactId>,
    channel: Option<Channel>,
    from: Option<String>,
    to: Option<String>,
    order: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn search_timeline(
    State(state): State<SearchState>,
    Path(tenant): Path<TenantId>,
    headers: HeaderMap,
    params: Result<Query<TimelineSearchParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "search", async {
        authorize(&state, &headers, &tenant, Scope::Read)?;
        let params = query(params)?;
        let order = match params.order.as_deref() {
            None | Some("best") => SortOrder::Best,
            Some("newest") => SortOrder::Newest,
            Some(other) => return Err(ApiError::bad_request(format!("order must be best or newest, not {other:?}"))),
        };
        let text = params.q.unwrap_or_default();
        // Without words every entry is as relevant as the next: best is newest.
        let order = if text.trim().is_empty() { SortOrder::Newest } else { order };
        let (limit, offset) = (page_limit(params.limit)?, offset_of(params.cursor.as_deref())?);
        let search = TimelineQuery {
            tenant,
            text,
            contact_id: params.contact_id,
            channel: params.channel,
            from: timestamp("from", params.from.as_deref())?,
            to: timestamp("to", params.to.as_deref())?,
            order,
            limit,
            offset,
        };
        let hits = in_index(&state, move |index| index.timeline.search(&search)).await?;
        let next = next_cursor(offset, limit, hits.len());
        Ok(Json(json!({ "hits": hits, "next_cursor": next })).into_response())
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactSearchParams {
    q: Option<String>,
    /// Comma-separated identifier kinds the contact must have.
    has: Option<String>,
    /// `name:value` of a custom parameter.
    param: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn search_contacts(
    State(state): State<SearchState>,
    Path(tenant): Path<TenantId>,
    headers: HeaderMap,
    params: Result<Query<ContactSearchParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "contacts_search", async {
        authorize(&state, &headers, &tenant, Scope::Read)?;
        let params = query(params)?;
        let has: Vec<String> =
            params.has.iter().flat_map(|h| h.split(',')).map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect();
        if let Some(unknown) = has.iter().find(|h| !IDENTIFIER_KINDS.contains(&h.as_str())) {
            return Err(ApiError::bad_request(format!("has: unknown identifier kind {unknown:?}")));
        }
        let params_filter = match params.param.as_deref() {
            None => Vec::new(),
            Some(p) => match p.split_once(':') {
                Some((name, value)) if !name.is_empty() => vec![(name.to_owned(), value.to_owned())],
                _ => return Err(ApiError::bad_request("param must be name:value")),
            },
        };
        let (limit, offset) = (page_limit(params.limit)?, offset_of(params.cursor.as_deref())?);
        let search = ContactQuery { tenant, text: params.q.unwrap_or_default(), has, params: params_filter, limit, offset };
        let contacts = in_index(&state, move |index| index.contacts.search(&search)).await?;
        let next = next_cursor(offset, limit, contacts.len());
        Ok(Json(json!({ "contacts": contacts, "next_cursor": next })).into_response())
    })
    .await
}

/// The contact view's one parameter; a misspelt one is refused, not ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContactParams {
    /// An operator event's id (an `Event-Id`): answer once it is applied.
    after: Option<String>,
}

/// How long `?after=` waits for its event, and how often it looks.
const AFTER_PATIENCE: Duration = Duration::from_secs(5);
const AFTER_POLL: Duration = Duration::from_millis(50);

async fn contact(
    State(state): State<SearchState>,
    Path((tenant, contact_id)): Path<(TenantId, ContactId)>,
    headers: HeaderMap,
    params: Result<Query<ContactParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "contact", async {
        authorize(&state, &headers, &tenant, Scope::Read)?;
        if let Some(event_id) = query(params)?.after {
            await_event(&state, &tenant, event_id).await?;
        }
        let view = in_store(&state, move |store| view::contact_view(store, &tenant, &contact_id)).await?;
        Ok(Json(view).into_response())
    })
    .await
}

/// Waits until the store has applied `event_id`: up to `AFTER_PATIENCE` where
/// workers apply the writes this server publishes (then 503, ask again);
/// not at all where writes are applied here before they are answered (an
/// event the store does not know is 404).
async fn await_event(state: &SearchState, tenant: &TenantId, event_id: String) -> Result<(), ApiError> {
    let patience = if matches!(state.writes, Writes::Published { .. }) { AFTER_PATIENCE } else { Duration::ZERO };
    let started = Instant::now();
    loop {
        let (tenant, looked_up) = (tenant.clone(), event_id.clone());
        if in_store(state, move |store| Ok(store.event_unit(&tenant, &looked_up)?)).await?.is_some() {
            return Ok(());
        }
        if patience.is_zero() {
            let detail = format!("event {event_id} was never applied here");
            return Err(ApiError { status: StatusCode::NOT_FOUND, error: "unknown_event", detail });
        }
        if started.elapsed() >= patience {
            let detail = format!("event {event_id} is not applied yet; ask again");
            return Err(ApiError { status: StatusCode::SERVICE_UNAVAILABLE, error: "pending", detail });
        }
        tokio::time::sleep(AFTER_POLL).await;
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineParams {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn timeline(
    State(state): State<SearchState>,
    Path((tenant, contact_id)): Path<(TenantId, ContactId)>,
    headers: HeaderMap,
    params: Result<Query<TimelineParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "timeline", async {
        authorize(&state, &headers, &tenant, Scope::Read)?;
        let params = query(params)?;
        let limit = page_limit(params.limit)?;
        let page =
            in_store(&state, move |store| view::timeline_page(store, &tenant, &contact_id, params.cursor.as_deref(), limit))
                .await?;
        Ok(Json(page).into_response())
    })
    .await
}

/// A route that takes no query parameters, and says so to a request with some.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

/// Why each identifier and conversation belongs to the contact.
async fn explain(
    State(state): State<SearchState>,
    Path((tenant, contact_id)): Path<(TenantId, ContactId)>,
    headers: HeaderMap,
    params: Result<Query<NoParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "explain", async {
        authorize(&state, &headers, &tenant, Scope::Read)?;
        query(params)?;
        let view = in_store(&state, move |store| view::explain_view(store, &tenant, &contact_id)).await?;
        Ok(Json(view).into_response())
    })
    .await
}

/// The open identity conflicts, newest first, a page at a time.
async fn conflicts(
    State(state): State<SearchState>,
    Path(tenant): Path<TenantId>,
    headers: HeaderMap,
    params: Result<Query<TimelineParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    counted(&state, "conflicts", async {
        authorize(&state, &headers, &tenant, Scope::Read)?;
        let params = query(params)?;
        let limit = page_limit(params.limit)?;
        let page = in_store(&state, move |store| view::conflict_page(store, &tenant, params.cursor.as_deref(), limit)).await?;
        Ok(Json(page).into_response())
    })
    .await
}

pub(super) fn join_error(error: tokio::task::JoinError) -> ApiError {
    ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, error: "internal", detail: error.to_string() }
}

//! The search API over the embedded default (`contactd serve`): what a token
//! opens, what it never opens whatever the query, and the errors clients see.

use std::path::Path;

use serde_json::{Value, json};

use crate::harness::{EXAMPLES, Service, contactd, export};

/// The examples ingested (tenants acme and globex; Jana's e-mail is known to
/// both), served with one token per tenant.
fn served() -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(contactd(&data, &["ingest", "--quiet", EXAMPLES]).status.success());
    let config = dir.path().join("contactd.toml");
    let tokens = "[api.tokens]\nacme = [\"acme-token\"]\nglobex = [\"globex-token\", \"globex-rotated\"]\n\
                  [api.write_tokens]\nacme = [\"acme-writer\"]\n";
    std::fs::write(&config, tokens).unwrap();
    let service = Service::start(&data, &config, "serve");
    (dir, service)
}

fn get(service: &Service, path: &str, token: &str) -> (u16, Value) {
    let (status, body) = service.get_with(path, Some(token)).expect("the API answers");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
}

fn contact_ids(hits: &Value, list: &str) -> Vec<String> {
    hits[list].as_array().unwrap().iter().map(|h| h["contact_id"].as_str().unwrap().to_owned()).collect()
}

fn contacts_of(data: &Path, tenant: &str) -> Vec<String> {
    export(data).iter().filter(|c| c["tenant_id"] == tenant).map(|c| c["contact_id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_token_finds_its_tenants_history_contacts_and_timelines() {
    let (dir, service) = served();
    let (status, hits) = get(&service, "/v1/tenants/acme/search?q=refund&limit=2", "acme-token");
    assert_eq!(status, 200, "{hits}");
    assert_eq!(hits["hits"].as_array().unwrap().len(), 2);
    assert!(hits["hits"][0]["snippet"].as_str().unwrap().contains("<b>"), "{hits}");
    let next = hits["next_cursor"].as_str().expect("more pages").to_owned();
    let (_, rest) = get(&service, &format!("/v1/tenants/acme/search?q=refund&limit=2&cursor={next}"), "acme-token");
    assert!(!rest["hits"].as_array().unwrap().is_empty());
    assert_ne!(rest["hits"][0]["entry_id"], hits["hits"][0]["entry_id"], "the cursor moves on");

    let (_, newest) = get(&service, "/v1/tenants/acme/search?order=newest&channel=chat&limit=50", "acme-token");
    let times: Vec<&str> = newest["hits"].as_array().unwrap().iter().map(|h| h["occurred_at"].as_str().unwrap()).collect();
    assert!(!times.is_empty() && times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");
    assert!(newest["hits"].as_array().unwrap().iter().all(|h| h["channel"] == "chat"));
    let (_, unordered) = get(&service, "/v1/tenants/acme/search?channel=chat&limit=50", "acme-token");
    assert_eq!(unordered, newest, "without words, best is newest");
    let (_, window) =
        get(&service, "/v1/tenants/acme/search?q=refund&from=2026-11-05T00:00:00Z&to=2026-11-06T00:00:00Z", "acme-token");
    assert_eq!(window["hits"].as_array().unwrap().len(), 1, "{window}");

    let (_, found) = get(&service, "/v1/tenants/acme/contacts/search?q=jana.novakova@example.cz&has=phone", "acme-token");
    let jana = contact_ids(&found, "contacts");
    assert_eq!(jana.len(), 1, "{found}");
    assert_eq!(found["contacts"][0]["name"], "Jana Nováková");
    let (status, contact) = get(&service, &format!("/v1/tenants/acme/contacts/{}", jana[0]), "acme-token");
    assert_eq!((status, contact["contact_id"].as_str()), (200, Some(jana[0].as_str())));
    let (status, page) = get(&service, &format!("/v1/tenants/acme/contacts/{}/timeline?limit=3", jana[0]), "acme-token");
    assert_eq!(status, 200);
    assert_eq!(page["entries"].as_array().unwrap().len(), 3);
    assert!(page["next_cursor"].is_string());
    assert_eq!(get(&service, "/v1/tenants/globex/search?q=warranty", "globex-rotated").0, 200, "every listed token works");
    drop(dir);
}

#[test]
fn no_query_or_id_reaches_another_tenant() {
    let (dir, service) = served();
    let globex = contacts_of(&dir.path().join("data"), "globex");
    assert_eq!(globex.len(), 1);
    let adversarial = [
        "/v1/tenants/acme/search?q=warranty".to_owned(),
        "/v1/tenants/acme/search?q=tenant:globex".to_owned(),
        "/v1/tenants/acme/search?q=warranty%20OR%20tenant:globex".to_owned(),
        "/v1/tenants/acme/search?q=*".to_owned(),
        "/v1/tenants/acme/search?order=newest&limit=100".to_owned(),
        format!("/v1/tenants/acme/search?q=warranty&contact_id={}", globex[0]),
        format!("/v1/tenants/acme/search?order=newest&contact_id={}", globex[0]),
        "/v1/tenants/acme/contacts/search?q=998877".to_owned(),
        "/v1/tenants/acme/contacts/search?has=vk".to_owned(),
        "/v1/tenants/acme/contacts/search?q=tenant:globex".to_owned(),
    ];
    for path in &adversarial {
        let (status, body) = get(&service, path, "acme-token");
        let list = if path.contains("/contacts/") { "contacts" } else { "hits" };
        if status == 200 {
            assert!(!contact_ids(&body, list).iter().any(|id| globex.contains(id)), "{path} leaked {body}");
            assert!(!body.to_string().contains("warranty"), "{path} leaked {body}");
        } else {
            assert_eq!(status, 400, "{path}: {body}");
        }
    }
    let refused = [
        ("/v1/tenants/globex/search?q=warranty", "acme-token", 404),
        (&*format!("/v1/tenants/globex/contacts/{}", globex[0]), "acme-token", 404),
        ("/v1/tenants/globex/search?q=warranty", "not-a-token", 401),
        ("/v1/tenants/acme/search?q=refund", "", 401),
    ];
    for (path, token, expected) in refused {
        assert_eq!(get(&service, path, token).0, expected, "{path} with {token:?}");
    }
    assert_eq!(service.get("/v1/tenants/acme/search?q=refund").map(|r| r.0), Some(401), "no token at all");
    let (status, _) = get(&service, &format!("/v1/tenants/acme/contacts/{}", globex[0]), "acme-token");
    assert_eq!(status, 404, "another tenant's contact id is unknown here");
    let (status, _) = get(&service, &format!("/v1/tenants/acme/contacts/{}/timeline", globex[0]), "acme-token");
    assert_eq!(status, 404);
}

#[test]
fn bad_requests_get_clear_errors() {
    let (_dir, service) = served();
    for (path, needle) in [
        (&*format!("/v1/tenants/acme/search?q={}", "%28".repeat(3_000)), "at most 1000 characters"),
        ("/v1/tenants/acme/search?q=a&limit=0", "limit"),
        ("/v1/tenants/acme/search?q=a&limit=1000", "limit"),
        ("/v1/tenants/acme/search?q=a&order=oldest", "order"),
        ("/v1/tenants/acme/search?q=a&from=yesterday", "RFC 3339"),
        ("/v1/tenants/acme/search?q=a&channel=fax", "channel"),
        ("/v1/tenants/acme/search?q=a&cursor=-1", "cursor"),
        ("/v1/tenants/acme/search?q=a&tenant=globex", "unknown field"),
        ("/v1/tenants/acme/contacts/search?has=pager", "pager"),
        ("/v1/tenants/acme/contacts/search?param=nocolon", "name:value"),
    ] {
        let (status, body) = get(&service, path, "acme-token");
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_request");
        assert!(body["detail"].as_str().unwrap().contains(needle), "{path}: {body}");
    }
}

#[test]
fn every_refusal_is_json_and_hostile_requests_leave_the_server_answering() {
    let (_dir, service) = served();
    let auth = "Authorization: Bearer acme-token\r\n";
    let nested = format!("/v1/tenants/acme/search?q={}", "%28".repeat(30_000));
    // The report's 6 KB URL that once overflowed a worker's stack: past the query bound.
    let deep = format!("/v1/tenants/acme/search?q={}", "%28".repeat(3_000));
    for (lines, status, error) in [
        (format!("GET /nowhere HTTP/1.1\r\n{auth}"), 404, "not_found"),
        (format!("POST /nowhere HTTP/1.1\r\n{auth}"), 404, "not_found"),
        (format!("POST /v1/tenants/acme/search?q=a HTTP/1.1\r\n{auth}Content-Length: 0\r\n"), 405, "method_not_allowed"),
        (format!("DELETE /v1/tenants/acme/contacts/c-1/timeline HTTP/1.1\r\n{auth}"), 405, "method_not_allowed"),
        (format!("GET /v1/tenants/%FF/search?q=a HTTP/1.1\r\n{auth}"), 400, "bad_request"),
        (format!("GET /v1/tenants/acme/contacts/%C3%28/timeline HTTP/1.1\r\n{auth}"), 400, "bad_request"),
        (format!("GET {nested} HTTP/1.1\r\n{auth}"), 414, ""),
        (format!("GET {deep} HTTP/1.1\r\n{auth}"), 400, "bad_request"),
        (format!("GET /v1/tenants/acme/search?q={}refund HTTP/1.1\r\n{auth}", "%28".repeat(900)), 200, ""),
    ] {
        let (answered, head, body) = service.request(&lines).expect("the server answers");
        assert_eq!(answered, status, "{}: {head} {body}", &lines[..lines.len().min(80)]);
        if status == 405 {
            assert!(head.to_lowercase().contains("allow: get"), "{head}");
        }
        // A URI over the HTTP parser's limit is refused before any router sees
        // it, with no body (schemas/openapi.json, `NoBody`).
        if status != 414 {
            let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {head} {body}"));
            if status == 200 {
                assert!(!body["hits"].as_array().unwrap().is_empty(), "brackets are text around the word: {body}");
            } else {
                assert_eq!(body["error"], error, "{body}");
                assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()), "{body}");
            }
        }
    }
    let huge_header = format!("GET /healthz HTTP/1.1\r\nX-Filler: {}\r\n", "a".repeat(1 << 20));
    assert_eq!(service.request(&huge_header).map(|(status, ..)| status), Some(431));
    let (status, body) = get(&service, "/v1/tenants/acme/search?q=refund", "acme-token");
    assert_eq!(status, 200, "{body}");
    assert!(!body["hits"].as_array().unwrap().is_empty());
}

/// `schemas/openapi.json` and the server agree: every documented path and
/// method answers, every documented query parameter is accepted, and the
/// server takes no other.
#[test]
fn the_openapi_description_matches_the_server() {
    let (_dir, service) = served();
    let spec: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.json")).unwrap())
            .unwrap();
    let resolve = |parameter: &Value| -> Value {
        match parameter["$ref"].as_str() {
            Some(reference) => {
                spec.pointer(reference.trim_start_matches('#')).unwrap_or_else(|| panic!("{reference} resolves")).clone()
            }
            None => parameter.clone(),
        }
    };
    let paths = spec["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 12);
    for (template, operations) in paths {
        let path = template
            .replace("{tenant}", "acme")
            .replace("{contact_id}", "c-ee65d7f55a29e57945dc1fce")
            .replace("{session_id}", "s-phone-call")
            .replace("{conflict_id}", "cf-none");
        for method in operations.as_object().unwrap().keys().filter(|method| *method != "get") {
            let (status, _, body) = send(&service, &method.to_uppercase(), &path, "acme-token", "", "{}");
            assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")), "{method} {template} is served for writers");
        }
        let Some(operation) = operations.get("get").map(|get| json!({ "get": get })) else { continue };
        let mut query = Vec::new();
        for parameter in operation["get"]["parameters"].as_array().unwrap().iter().map(resolve) {
            if parameter["in"] == "query"
                && let Some(example) =
                    parameter["example"].as_str().map(str::to_owned).or(parameter["example"].as_i64().map(|n| n.to_string()))
            {
                query.push(format!("{}={}", parameter["name"].as_str().unwrap(), example));
            }
        }
        let url = format!("{path}?{}", query.join("&"));
        let (status, body) = get(&service, &url, "acme-token");
        assert!(!body.to_string().contains("unknown field"), "{url}: {body}");
        assert!([200, 404].contains(&status), "{url}: {status} {body}");
        let (status, body) = get(&service, &format!("{path}?undocumented=1"), "acme-token");
        assert_eq!(status, 400, "{template} refuses parameters it does not document: {body}");
    }
}

/// The request and what came back, parsed; an empty body is `null`.
fn send(service: &Service, method: &str, path: &str, token: &str, headers: &str, body: &str) -> (u16, String, Value) {
    let (status, head, text) = service.send(method, path, token, headers, body).expect("the API answers");
    let json =
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")) };
    (status, head, json)
}

/// The seed's operator actions over HTTP on the embedded default: each is an
/// operator event applied through the pipeline, and shows in the directory,
/// the timeline and search.
#[test]
fn an_operator_creates_edits_links_notes_and_deletes_a_contact_over_http() {
    let (dir, service) = served();
    let created = r#"{"identity": {"name": "Petr Svoboda", "emails": ["Petr@Example.cz"]}}"#;
    let (status, _, refused) = send(&service, "POST", "/v1/tenants/acme/contacts", "acme-token", "", created);
    assert_eq!((status, refused["error"].as_str()), (403, Some("forbidden")), "a read token cannot write");
    let (status, _, _) = send(&service, "POST", "/v1/tenants/globex/contacts", "acme-writer", "", created);
    assert_eq!(status, 404, "another tenant's token finds no tenant");

    let key = "Idempotency-Key: create-petr\r\n";
    let (status, head, petr) = send(&service, "POST", "/v1/tenants/acme/contacts", "acme-writer", key, created);
    assert_eq!(status, 201, "{petr}");
    let id = petr["contact_id"].as_str().expect("the created contact").to_owned();
    assert!(head.to_ascii_lowercase().contains(&format!("location: /v1/tenants/acme/contacts/{id}")), "{head}");
    let event_id =
        |head: &str| head.lines().find_map(|line| line.to_ascii_lowercase().strip_prefix("event-id: ").map(str::to_owned));
    assert!(event_id(&head).is_some(), "{head}");
    assert_eq!((petr["name"].as_str(), petr["emails"][0].as_str()), (Some("Petr Svoboda"), Some("petr@example.cz")));
    let (status, again_head, again) = send(&service, "POST", "/v1/tenants/acme/contacts", "acme-writer", key, created);
    assert_eq!((status, again["contact_id"].as_str()), (201, Some(id.as_str())), "a retried request is one event");
    assert_eq!(event_id(&again_head), event_id(&head));
    let other = r#"{"identity": {"name": "Eva Dvořáková", "emails": ["eva@example.cz"]}}"#;
    let (status, _, eva) = send(&service, "POST", "/v1/tenants/acme/contacts", "acme-writer", key, other);
    assert_eq!(status, 201);
    assert_ne!(eva["contact_id"].as_str(), Some(id.as_str()), "a key reused for another request is no retry");
    let (status, _, again) = send(&service, "POST", "/v1/tenants/acme/contacts", "acme-writer", "", created);
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["contact_id"].as_str(), Some(id.as_str()), "+ Add client always adds a contact: {again}");
    assert_eq!(again["conflicts"][0]["owner_contact_id"].as_str(), Some(id.as_str()), "the e-mail stays Petr's: {again}");
    let petrs = export(&dir.path().join("data")).into_iter().filter(|c| c["emails"][0] == "petr@example.cz").count();
    assert_eq!(petrs, 1);

    let contact = format!("/v1/tenants/acme/contacts/{id}");
    let edit = r#"{"set_name": "Petr S.", "add": {"phones": ["+420 777 000 111"]}}"#;
    let (status, _, edited) = send(&service, "PATCH", &contact, "acme-writer", "", edit);
    assert_eq!((status, edited["name"].as_str()), (200, Some("Petr S.")), "{edited}");
    assert_eq!(edited["phones"][0], "+420777000111");
    for (body, expected) in [(r#"{"set_name": 5}"#, 422), (r#"{"nickname": "P"}"#, 422), ("{", 400)] {
        let (status, _, error) = send(&service, "PATCH", &contact, "acme-writer", "", body);
        assert_eq!(status, expected, "{body}: {error}");
        assert!(error["detail"].is_string(), "a JSON error: {error}");
    }
    let (status, _, _) = send(&service, "PATCH", "/v1/tenants/acme/contacts/c-nobody", "acme-writer", "", edit);
    assert_eq!(status, 404);
    let long_key = format!("Idempotency-Key: {}\r\n", "k".repeat(129));
    assert_eq!(send(&service, "PATCH", &contact, "acme-writer", &long_key, edit).0, 400);

    let note = r#"{"text": "called back about the invoice", "author": "operator-7"}"#;
    let (status, _, noted) = send(&service, "POST", &format!("{contact}/notes"), "acme-writer", "", note);
    assert_eq!((status, noted["contact_id"].as_str()), (201, Some(id.as_str())), "{noted}");
    let found = || {
        let (_, hits) = get(&service, "/v1/tenants/acme/search?q=invoice", "acme-token");
        contact_ids(&hits, "hits").contains(&id)
    };
    crate::harness::eventually("the note is searchable", found);

    let session = "/v1/tenants/acme/sessions/s-phone-call/contact";
    let (status, _, linked) = send(&service, "PUT", session, "acme-writer", "", &format!(r#"{{"contact_id": "{id}"}}"#));
    assert_eq!(status, 200, "{linked}");
    assert!(linked["sessions"].as_array().unwrap().iter().any(|s| s == "s-phone-call"), "{linked}");
    assert_eq!(send(&service, "DELETE", session, "acme-writer", "", "").0, 204);
    let (_, shown) = get(&service, &contact, "acme-token");
    assert!(!shown["sessions"].as_array().unwrap().iter().any(|s| s == "s-phone-call"), "{shown}");

    assert_eq!(send(&service, "DELETE", &contact, "acme-writer", "", "").0, 204);
    assert_eq!(get(&service, &contact, "acme-token").0, 410, "an erased contact is gone");
}

/// The review queue over HTTP on the embedded default: the conflicts two
/// conversations of `examples/conflicts.jsonl` raise are listed (and by the CLI), explain says why each
/// identifier and conversation is the contact's, a dismissal or a merge
/// takes it off the queue.
#[test]
fn operators_review_conflicts_merge_contacts_and_ask_why_over_http() {
    let (dir, service) = served();
    let data = dir.path().join("data");
    let conflicts = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/conflicts.jsonl");
    assert!(contactd(&data, &["ingest", "--quiet", conflicts]).status.success());

    let (status, page) = get(&service, "/v1/tenants/acme/conflicts?limit=1", "acme-token");
    assert_eq!(status, 200, "{page}");
    let conflicts = page["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{page}");
    let newest = &conflicts[0];
    assert_eq!((newest["value"].as_str(), newest["event_id"].as_str()), (Some("+420777123456"), Some("q4")), "newest first");
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, second) = get(&service, &format!("/v1/tenants/acme/conflicts?limit=1&cursor={cursor}"), "acme-token");
    assert_eq!(second["conflicts"][0]["value"], "olga@example.cz", "{second}");
    let olga_conflict = second["conflicts"][0]["conflict_id"].as_str().unwrap().to_owned();
    let olga = second["conflicts"][0]["owner_contact_id"].as_str().unwrap().to_owned();
    let claimant = second["conflicts"][0]["claimant_contact_id"].as_str().unwrap().to_owned();
    let listed = contactd(&data, &["conflicts", "--tenant", "acme"]);
    assert!(listed.status.success());
    let cli: Vec<Value> =
        String::from_utf8(listed.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(cli.len(), 2, "the CLI lists the same queue: {cli:?}");
    assert_eq!(cli[1]["conflict_id"], olga_conflict.as_str());

    let dismiss = format!("/v1/tenants/acme/conflicts/{}/dismiss", newest["conflict_id"].as_str().unwrap());
    assert_eq!(send(&service, "POST", &dismiss, "acme-token", "", "").0, 403);
    assert_eq!(send(&service, "POST", &dismiss, "acme-writer", "", "").0, 204);
    assert_eq!(send(&service, "POST", "/v1/tenants/acme/conflicts/cf-none/dismiss", "acme-writer", "", "").0, 404);
    let (_, page) = get(&service, "/v1/tenants/acme/conflicts", "acme-token");
    assert_eq!(page["conflicts"].as_array().unwrap().len(), 1, "dismissed: {page}");

    let merge = format!("/v1/tenants/acme/contacts/{olga}/merge");
    let (status, _, merged) =
        send(&service, "POST", &merge, "acme-writer", "", &format!(r#"{{"from_contact_id": "{claimant}"}}"#));
    assert_eq!(status, 200, "{merged}");
    assert_eq!(merged["contact_id"], olga.as_str());
    assert_eq!(merged["channel_ids"]["whatsapp"][0], "+420606000111", "{merged}");
    let (status, _, error) = send(&service, "POST", &merge, "acme-writer", "", r#"{"from_contact_id": "c-nobody"}"#);
    assert_eq!((status, error["error"].as_str()), (404, Some("unknown_contact")));
    assert_eq!(send(&service, "POST", &merge, "acme-writer", "", r#"{"from": "x"}"#).0, 422);
    let (_, page) = get(&service, "/v1/tenants/acme/conflicts", "acme-token");
    assert!(page["conflicts"].as_array().unwrap().is_empty(), "the merge settled the last one: {page}");

    let (status, why) = get(&service, &format!("/v1/tenants/acme/contacts/{claimant}/explain"), "acme-token");
    assert_eq!(status, 200, "{why}");
    assert_eq!(why["contact_id"], olga.as_str(), "the survivor of a merged contact");
    let whatsapp = why["identifiers"].as_array().unwrap().iter().find(|i| i["kind"] == "whatsapp").unwrap();
    assert_eq!((whatsapp["rule"].as_str(), whatsapp["event_id"].as_str()), (Some("founded_contact"), Some("q2")));
    assert_eq!(whatsapp["merged"][0]["by"], "contact.merged", "{why}");
    assert_eq!(whatsapp["merged"][0]["from_contact_id"], claimant.as_str());
    let explained = contactd(&data, &["contact", "--tenant", "acme", &olga, "--explain"]);
    let cli: Value = serde_json::from_slice(&explained.stdout).unwrap();
    assert_eq!(cli["identifiers"], why["identifiers"], "the CLI explains the same");

    // "+ Add client" with Olga's address: a new contact, and the answer lists the conflict.
    let body = r#"{"identity": {"name": "Olga Again", "emails": ["olga@example.cz"], "phones": ["+420606000999"]}}"#;
    let (status, _, created) = send(&service, "POST", "/v1/tenants/acme/contacts", "acme-writer", "", body);
    assert_eq!(status, 201, "{created}");
    assert_ne!(created["contact_id"], olga.as_str(), "always a new contact: {created}");
    assert_eq!(created["phones"][0], "+420606000999");
    let raised = created["conflicts"].as_array().expect("the conflicts it raised");
    assert_eq!(raised.len(), 1, "{created}");
    assert_eq!(
        (raised[0]["identifier"].as_str(), raised[0]["owner_contact_id"].as_str()),
        (Some("email:olga@example.cz"), Some(olga.as_str()))
    );
    let (_, page) = get(&service, "/v1/tenants/acme/conflicts", "acme-token");
    assert_eq!(page["conflicts"][0]["conflict_id"], raised[0]["conflict_id"], "{page}");
    let taken = format!(r#"{{"contact_id": "{olga}", "identity": {{"name": "Renamed"}}}}"#);
    let (status, _, error) = send(&service, "POST", "/v1/tenants/acme/contacts", "acme-writer", "", &taken);
    assert_eq!((status, error["error"].as_str()), (409, Some("contact_exists")), "{error}");
    let checked = contactd(&data, &["check"]);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let report: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(
        (report["open_conflicts"].as_u64(), report["violations"].as_array().map(Vec::len)),
        (Some(1), Some(0)),
        "{report}"
    );
}

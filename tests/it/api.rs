//! The search API over the embedded default (`contactd serve`): what a token
//! opens, what it never opens whatever the query, and the errors clients see.

use std::path::Path;

use serde_json::Value;

use crate::harness::{EXAMPLES, Service, contactd, export};

/// The examples ingested (tenants acme and globex; Jana's e-mail is known to
/// both), served with one token per tenant.
fn served() -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(contactd(&data, &["ingest", "--quiet", EXAMPLES]).status.success());
    let config = dir.path().join("contactd.toml");
    std::fs::write(&config, "[api.tokens]\nacme = [\"acme-token\"]\nglobex = [\"globex-token\", \"globex-rotated\"]\n").unwrap();
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
        ("/v1/tenants/globex/search?q=warranty", "acme-token", 403),
        (&*format!("/v1/tenants/globex/contacts/{}", globex[0]), "acme-token", 403),
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
        (format!("DELETE /v1/tenants/acme/contacts/c-1 HTTP/1.1\r\n{auth}"), 405, "method_not_allowed"),
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

/// `schemas/openapi.json` and the server agree: every documented path answers,
/// every documented query parameter is accepted, and the server takes no other.
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
    assert_eq!(paths.len(), 4);
    for (template, operation) in paths {
        let path = template.replace("{tenant}", "acme").replace("{contact_id}", "c-ee65d7f55a29e57945dc1fce");
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

//! The `contactd` binary as a newcomer uses it: ingest the examples, export,
//! search, look a contact up.

use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::harness::{EXAMPLES, contactd};

fn stdout_ok(output: Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn ingested() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let summary = stdout_ok(contactd(dir.path(), &["ingest", EXAMPLES]));
    assert!(summary.contains("lines read         19"), "{summary}");
    assert!(summary.contains("duplicates         1"), "{summary}");
    assert!(summary.contains("contacts created   3"), "{summary}");
    // What the run used, read as `time -v` would be.
    for label in ["cpu time ", "peak memory "] {
        assert!(summary.lines().any(|line| line.starts_with(label)), "no {label:?} in {summary}");
    }
    assert!(!summary.contains("steal"), "the host's CPU steal is a benchmarking figure, not the user's: {summary}");
    dir
}

#[test]
fn ingest_reports_and_dead_letters_bad_lines_with_their_reason() {
    let dir = ingested();
    let letters = json_lines(&std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap());
    let reasons: Vec<&str> = letters.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["not_json", "missing_field"]);
    assert_eq!(letters[0]["payload"], "this line is not JSON and must go to the dead-letter output");
    assert_eq!(letters[1]["position"], 19);
}

#[test]
fn an_over_long_line_is_dead_lettered_with_its_start_and_the_next_line_applies() {
    let dir = tempfile::tempdir().unwrap();
    let examples = std::fs::read_to_string(EXAMPLES).unwrap();
    let (first, rest) = examples.split_once('\n').unwrap();
    let long = format!("{{\"schema\":\"contact-event/v1\",\"padding\":\"{}\"}}", "x".repeat(3 << 20));
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, format!("{first}\n{long}\n{rest}")).unwrap();
    let summary = stdout_ok(contactd(&dir.path().join("data"), &["ingest", file.to_str().unwrap()]));
    assert!(summary.contains("lines read         20"), "{summary}");
    assert!(summary.contains("contacts created   3"), "the lines after it were applied: {summary}");
    let letters = json_lines(&std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap());
    let too_large: Vec<&Value> = letters.iter().filter(|l| l["reason"] == "too_large").collect();
    assert_eq!(too_large.len(), 1, "{letters:?}");
    assert_eq!(too_large[0]["position"], 2);
    let kept = too_large[0]["payload"].as_str().unwrap();
    assert!(kept.starts_with("{\"schema\":\"contact-event/v1\",\"padding\":\"xxx"));
    assert_eq!(kept.len(), (1 << 20) + 1, "the dead letter keeps the start, not the whole line");
}

#[test]
fn ingest_applies_the_configured_limits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let wide = json!({ "schema": "contact-event/v1", "event_id": "e1", "tenant_id": "acme", "type": "identity.provided",
        "occurred_at": "2026-11-02T09:00:00Z", "channel": "chat", "session_id": "s1",
        "identity": { "emails": ["a@example.cz", "b@example.cz", "c@example.cz"] } });
    std::fs::write(&file, format!("{wide}\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_contactd"))
        .args(["--data-dir", dir.path().join("data").to_str().unwrap(), "ingest", file.to_str().unwrap()])
        .env_remove("CONTACTD_CONFIG")
        .env("CONTACTD__LIMITS__IDENTIFIERS_PER_EVENT", "2")
        .output()
        .unwrap();
    stdout_ok(output);
    let letters = json_lines(&std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap());
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0]["reason"].as_str(), letters[0]["detail"].as_str()),
        (Some("too_large"), Some("too large: 3 identifier values, at most 2"))
    );
}

#[test]
fn export_is_sorted_by_tenant_then_contact() {
    let dir = ingested();
    let contacts = json_lines(&stdout_ok(contactd(dir.path(), &["export"])));
    let keys: Vec<(String, String)> = contacts
        .iter()
        .map(|c| (c["tenant_id"].as_str().unwrap().to_owned(), c["contact_id"].as_str().unwrap().to_owned()))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 3);
}

#[test]
fn search_finds_history_and_never_crosses_tenants() {
    let dir = ingested();
    let hits = json_lines(&stdout_ok(contactd(dir.path(), &["search", "--tenant", "acme", "refund"])));
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h["snippet"].as_str().unwrap().to_lowercase().contains("<b>refund</b>")));
    let jana = hits[0]["contact_id"].as_str().unwrap();
    assert!(hits.iter().all(|h| h["contact_id"] == jana));
    let acme_contacts: Vec<String> = json_lines(&stdout_ok(contactd(dir.path(), &["export"])))
        .iter()
        .filter(|c| c["tenant_id"] == "acme")
        .map(|c| c["contact_id"].as_str().unwrap().to_owned())
        .collect();
    for adversarial in ["refund", "tenant:acme refund", "refund OR tenant:acme", "contact:acme refund", "*", "refund OR warranty"]
    {
        let output = contactd(dir.path(), &["search", "--tenant", "globex", adversarial]);
        if output.status.success() {
            let hits = json_lines(&String::from_utf8(output.stdout).unwrap());
            assert!(
                hits.iter().all(|h| !acme_contacts.iter().any(|c| h["contact_id"] == c.as_str())),
                "{adversarial} leaked another tenant"
            );
            assert!(
                hits.iter().all(|h| !h["snippet"].as_str().unwrap().contains("refund")),
                "{adversarial} leaked another tenant"
            );
        }
    }
    let warranty = json_lines(&stdout_ok(contactd(dir.path(), &["search", "--tenant", "globex", "warranty"])));
    assert_eq!(warranty.len(), 1);
}

#[test]
fn the_documented_query_syntax_works() {
    let dir = ingested();
    let count = |query: &str| json_lines(&stdout_ok(contactd(dir.path(), &["search", "--tenant", "acme", query]))).len();
    assert_eq!(count("refund"), 5);
    assert_eq!(count("\"refund arrived\""), 1, "exact phrase");
    assert_eq!(count("refund -card"), 4, "exclusion");
    assert_eq!(count("warranty OR tyre"), 1, "warranty is globex's; tyre is acme's");
    assert_eq!(count("\"the refu\"*"), 3, "phrase prefix");
}

/// Colons, brackets, stray quotes and field-like words are text: the search
/// box takes whatever an operator types. Only an overlong query is refused.
#[test]
fn what_people_type_is_text_and_only_an_overlong_query_is_refused() {
    let dir = ingested();
    let count = |query: &str| json_lines(&stdout_ok(contactd(dir.path(), &["search", "--tenant", "acme", query]))).len();
    let refunds = count("refund");
    assert_eq!(count("refund(("), refunds);
    assert_eq!(count("\"refund"), refunds, "an unbalanced quote is text");
    assert_eq!(count("refu*"), refunds, "a word prefix");
    assert_eq!(count("text:refund"), 0, "no field names: `text` is a word like any other");
    assert_eq!(count(&format!("{}refund{}", "(".repeat(900), ")".repeat(90))), refunds, "no nesting, no recursion");
    let output = contactd(dir.path(), &["search", "--tenant", "acme", &"(".repeat(30_000)]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at most 1000 characters"));
}

#[test]
fn the_cli_refuses_what_the_api_refuses_and_never_invents_a_directory() {
    let dir = ingested();
    let refused = |args: &[&str], says: &str| {
        let output = contactd(dir.path(), args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    refused(&["search", "--tenant", "acme", "--limit", "0", "refund"], "from 1 to 100");
    refused(&["search", "--tenant", "acme", "--limit", "101", "refund"], "from 1 to 100");
    refused(&["search", "--tenant", "acme", "  "], "must not be empty");
    refused(&["contact", "--tenant", "acme", "--identifier", "email:jana.novakova@example.cz", "--limit", "0"], "from 1 to 100");
    // A cursor for entries before 1970 starts with `-`: a value, not a flag.
    let output = contactd(
        dir.path(),
        &["contact", "--tenant", "acme", "--identifier", "email:jana.novakova@example.cz", "--cursor", "-5"],
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("unexpected argument"), "{output:?}");
    let missing = dir.path().join("mistyped");
    for args in [&["export"][..], &["contact", "--tenant", "acme", "c-1"]] {
        let output = contactd(&missing, args);
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("no directory at"), "{args:?}: {output:?}");
    }
    assert!(!missing.exists(), "a read-only command created the data dir it was given");
}

#[test]
fn a_file_saved_with_a_byte_order_mark_ingests_from_its_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, [&b"\xEF\xBB\xBF"[..], &std::fs::read(EXAMPLES).unwrap()].concat()).unwrap();
    let summary = stdout_ok(contactd(&dir.path().join("data"), &["ingest", file.to_str().unwrap()]));
    assert!(summary.contains("contacts created   3"), "{summary}");
    let letters = json_lines(&std::fs::read_to_string(dir.path().join("data/dead-letter.jsonl")).unwrap());
    let reasons: Vec<&str> = letters.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["not_json", "missing_field"], "the same as without the mark");
}

#[test]
fn contact_lookup_by_identifier_pages_the_timeline_newest_first() {
    let dir = ingested();
    let first: Value = serde_json::from_str(&stdout_ok(contactd(
        dir.path(),
        &["contact", "--tenant", "acme", "--identifier", "email:JANA.Novakova@example.cz", "--limit", "4"],
    )))
    .unwrap();
    assert_eq!(first["name"], "Jana Nováková");
    let total = first["timeline_entries"].as_u64().unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut page = first;
    loop {
        let entries = page["timeline"].as_array().unwrap();
        let times: Vec<&str> = entries.iter().map(|e| e["occurred_at"].as_str().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
        seen.extend(entries.iter().map(|e| e["entry_id"].as_str().unwrap().to_owned()));
        let Some(cursor) = page["next_cursor"].as_str() else { break };
        let id = page["contact_id"].as_str().unwrap().to_owned();
        page = serde_json::from_str(&stdout_ok(contactd(
            dir.path(),
            &["contact", "--tenant", "acme", &id, "--limit", "4", "--cursor", cursor],
        )))
        .unwrap();
    }
    assert_eq!(seen.len() as u64, total);
    let other_tenant = contactd(dir.path(), &["contact", "--tenant", "globex", "--identifier", "phone:+420777123456"]);
    assert!(!other_tenant.status.success());
}

#[test]
fn deleting_a_contact_erases_its_search_documents() {
    let dir = ingested();
    let hits = json_lines(&stdout_ok(contactd(dir.path(), &["search", "--tenant", "acme", "refund"])));
    let jana = hits[0]["contact_id"].as_str().unwrap();
    let delete = format!(
        r#"{{"schema":"contact-event/v1","event_id":"del-1","tenant_id":"acme","type":"contact.deleted","occurred_at":"2026-11-20T00:00:00Z","channel":"operator","contact_id":"{jana}"}}"#
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_contactd"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["ingest", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), delete.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(json_lines(&stdout_ok(contactd(dir.path(), &["search", "--tenant", "acme", "refund"]))).is_empty());
    assert!(!contactd(dir.path(), &["contact", "--tenant", "acme", jana]).status.success());
}

/// A synthetic corpus of 3,000 events, in a directory of its own.
fn generated_corpus(seed: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let seed = seed.to_string();
    stdout_ok(contactd(dir.path(), &["gen", "--events", "3000", "--seed", &seed, "--out", corpus.to_str().unwrap()]));
    (dir, corpus)
}

/// `ingest` of `corpus` into `data_dir` in units of 50 events, so that a small
/// corpus makes many of them.
fn ingest_in_small_units(data_dir: &std::path::Path, corpus: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_contactd"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["ingest", "--quiet", corpus.to_str().unwrap()])
        .env("CONTACTD__INGEST__BATCH_SIZE", "50");
    command
}

#[test]
fn two_processes_ingesting_into_one_data_dir_build_one_directory() {
    let (_corpus_dir, corpus) = generated_corpus(11);
    let dir = tempfile::tempdir().unwrap();
    let spawn = || ingest_in_small_units(dir.path(), &corpus).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Both read the whole file: every event is offered twice, concurrently.
    let (first, second) = (spawn(), spawn());
    let applied = |summary: &str| -> u64 {
        let line = summary.lines().find(|l| l.starts_with("applied")).expect("summary has an applied line");
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    let mut applied_by_both = 0;
    for child in [first, second] {
        applied_by_both += applied(&stdout_ok(child.wait_with_output().unwrap()));
    }
    let alone = tempfile::tempdir().unwrap();
    let applied_alone = applied(&stdout_ok(contactd(alone.path(), &["ingest", "--quiet", corpus.to_str().unwrap()])));
    assert_eq!(applied_by_both, applied_alone, "every event applied exactly once across both processes");

    let shared = json_lines(&stdout_ok(contactd(dir.path(), &["export"])));
    crate::harness::assert_one_owner_per_identifier(&shared);
    assert!(!shared.is_empty());
}

#[test]
fn ingest_leaves_no_indexed_unit_in_the_outbox() {
    use contactd::publish::ChangeLog;
    use contactd::store::sqlite::{SqliteOptions, SqliteStore};
    let (_corpus_dir, corpus) = generated_corpus(5);
    let dir = tempfile::tempdir().unwrap();
    let summary =
        stdout_ok(ingest_in_small_units(dir.path(), &corpus).env("CONTACTD__INDEX__COMMIT_EVERY_OPS", "500").output().unwrap());
    assert!(summary.contains("lines read         3000"), "{summary}");
    let store = SqliteStore::open(&dir.path().join("directory.sqlite3"), &SqliteOptions::default()).unwrap();
    let left: Vec<u64> = store.read_after(0, usize::MAX).unwrap().iter().map(|unit| unit.seq).collect();
    assert_eq!(left, Vec::<u64>::new(), "units indexed and still in the outbox");
}

#[test]
fn reindex_rebuilds_both_indexes_from_the_store() {
    let dir = ingested();
    let before = stdout_ok(contactd(dir.path(), &["search", "--tenant", "acme", "--limit", "50", "refund OR parcel"]));
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let report = stdout_ok(contactd(dir.path(), &["reindex"]));
    assert!(report.contains("reindexed 3 contacts and 28 timeline entries"), "{report}");
    let after = stdout_ok(contactd(dir.path(), &["search", "--tenant", "acme", "--limit", "50", "refund OR parcel"]));
    assert_eq!(json_lines(&after), json_lines(&before));
    assert!(!json_lines(&after).is_empty());
    let again = stdout_ok(contactd(dir.path(), &["reindex"]));
    assert!(again.contains("3 contacts and 28 timeline entries"), "a second rebuild replaces, never adds: {again}");
    let index = contactd::index::SearchIndex::open_or_create(&dir.path().join("index")).unwrap();
    assert_eq!((index.timeline.num_docs(), index.contacts.num_docs()), (28, 3));
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let dir = ingested();
    for args in [
        &["config"][..],
        &["export"],
        &["search", "--tenant", "acme", "refund"],
        &["migrate"],
        &["contact", "--tenant", "acme", "--identifier", "email:jana.novakova@example.cz"],
    ] {
        // The read end is closed before the command starts, so every write to stdout
        // fails the way it does behind `| head -1` or `| grep -q` once they have seen enough.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_contactd"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?} exited with {:?}: {stderr}", output.status);
        assert!(stderr.is_empty(), "{args:?} printed to stderr: {stderr}");
    }
}

/// What a refactoring must leave byte for byte as it was: the examples' export,
/// every contact with its whole timeline, and the dead letters. After an intended
/// change of output, `CONTACTD_BLESS=1 cargo test --test it cli::the_examples` rewrites
/// `tests/golden/examples.txt`, and the diff is reviewed with the change.
#[test]
fn the_examples_give_the_outputs_recorded_in_the_golden_file() {
    let dir = ingested();
    let export = stdout_ok(contactd(dir.path(), &["export"]));
    let mut outputs = format!("# export\n{export}");
    for contact in json_lines(&export) {
        let (tenant, id) = (contact["tenant_id"].as_str().unwrap(), contact["contact_id"].as_str().unwrap());
        let shown = stdout_ok(contactd(dir.path(), &["contact", "--tenant", tenant, id, "--limit", "100"]));
        outputs.push_str(&format!("# contact {tenant} {id}\n{shown}"));
    }
    outputs.push_str("# dead letters\n");
    for mut letter in json_lines(&std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap()) {
        letter.as_object_mut().unwrap().remove("source");
        outputs.push_str(&format!("{letter}\n"));
    }
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/examples.txt");
    if std::env::var_os("CONTACTD_BLESS").is_some() {
        std::fs::write(&golden, &outputs).unwrap();
    }
    let recorded = std::fs::read_to_string(&golden).expect("tests/golden/examples.txt");
    if outputs != recorded {
        let first = outputs.lines().zip(recorded.lines()).position(|(now, then)| now != then);
        panic!("outputs differ from tests/golden/examples.txt (first differing line {first:?}); now:\n{outputs}");
    }
}

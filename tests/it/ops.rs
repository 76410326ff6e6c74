//! What operators run beside the binary: the chart's alert rules and Grafana
//! dashboard may only name metrics that the worker or the indexer registers,
//! so renaming a metric without them fails here rather than in production.

use std::collections::BTreeSet;

use contactd::metrics::{IndexerMetrics, WorkerMetrics};

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/contactd/files/alerts.yaml");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/contactd/files/dashboard.json");

/// Every metric the worker and the indexer register.
fn registered_metrics() -> Vec<String> {
    WorkerMetrics::new().names().iter().chain(IndexerMetrics::new().names()).cloned().collect()
}

/// Every series name the binaries can expose, histograms with their suffixes.
fn exported_series() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for name in registered_metrics() {
        for suffix in ["", "_bucket", "_sum", "_count"] {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

/// The `contactd_…` words of a text: metric names in PromQL.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("contactd_") {
        let word: String =
            rest[start..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[start + word.len()..];
        names.insert(word);
    }
    names
}

fn dashboard_expressions() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push(target["expr"].as_str().expect("a target has an expression").to_owned());
        }
    }
    expressions
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names("sum(rate(contactd_events_total{x=\"y\"}[5m])) / contactd_in_flight_events");
    assert_eq!(names, BTreeSet::from(["contactd_events_total".into(), "contactd_in_flight_events".into()]));
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let exported = exported_series();
    let used = metric_names(&std::fs::read_to_string(ALERTS).unwrap());
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "alerts.yaml names metrics nobody exports: {unknown:?}");
}

#[test]
fn alert_rules_watch_lag_dead_letters_store_errors_and_index_freshness() {
    let used = metric_names(&std::fs::read_to_string(ALERTS).unwrap());
    for needed in [
        "contactd_group_lag",
        "contactd_dead_letters_total",
        "contactd_store_unit_seconds_count",
        "contactd_index_freshness_seconds_bucket",
    ] {
        assert!(used.contains(needed), "no alert uses {needed}");
    }
}

/// The person on call finds each alert in docs/operations.md, with what it
/// means and what to do.
#[test]
fn every_alert_has_its_entry_in_the_on_call_guide() {
    let operations = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    let guide = operations.split_once("## On call").expect("docs/operations.md has an On call section").1;
    let alerts = std::fs::read_to_string(ALERTS).unwrap();
    let names: Vec<&str> = alerts.lines().filter_map(|line| line.trim().strip_prefix("- alert: ")).collect();
    assert!(names.len() >= 15, "{names:?}");
    let missing: Vec<&&str> = names.iter().filter(|name| !guide.contains(&format!("### {name}"))).collect();
    assert!(missing.is_empty(), "alerts without an entry in the on-call guide: {missing:?}");
}

#[test]
fn dashboard_panels_query_only_exported_metrics() {
    let exported = exported_series();
    let expressions = dashboard_expressions();
    assert!(expressions.len() >= 10, "the dashboard has its panels");
    for expression in &expressions {
        let used = metric_names(expression);
        assert!(!used.is_empty(), "a panel queries no contactd metric: {expression}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(unknown.is_empty(), "a dashboard panel names metrics nobody exports: {unknown:?} in {expression}");
    }
}

#[test]
fn the_dashboard_shows_every_metric_the_binaries_export() {
    let shown: BTreeSet<String> = dashboard_expressions().iter().flat_map(|e| metric_names(e)).collect();
    let missing: Vec<_> = registered_metrics()
        .into_iter()
        .filter(|name| !["", "_bucket", "_count"].iter().any(|suffix| shown.contains(&format!("{name}{suffix}"))))
        .collect();
    assert!(missing.is_empty(), "metrics no dashboard panel shows: {missing:?}");
}

/// Environment variables outrank the config file, so a setting baked into the
/// image would silently override the one the chart or compose file writes.
#[test]
fn the_image_sets_no_setting_the_config_file_would_lose_to() {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let baked: Vec<&str> =
        dockerfile.lines().filter(|line| !line.trim_start().starts_with('#') && line.contains("CONTACTD__")).collect();
    assert!(baked.is_empty(), "the Dockerfile sets {baked:?}");
    for config in ["deploy/compose/contactd.toml"] {
        let text = std::fs::read_to_string(format!("{}/{config}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for key in ["data_dir", "format", "filter"] {
            assert!(text.lines().any(|line| line.starts_with(&format!("{key} = "))), "{config} does not set {key}");
        }
    }

    // Started the way the chart and compose start the image: its ENV lines,
    // CONTACTD_CONFIG naming the file, and what the file says is what runs.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("contactd.toml");
    std::fs::write(&file, "data_dir = \"/srv/from-file\"\n[log]\nformat = \"text\"\nfilter = \"contactd=trace\"\n").unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_contactd"));
    for line in dockerfile.lines().filter_map(|line| line.trim().strip_prefix("ENV ")) {
        let (name, value) = line.split_once(['=', ' ']).expect("ENV NAME=VALUE");
        command.env(name, value.trim_matches('"'));
    }
    let output = command.env("CONTACTD_CONFIG", &file).arg("config").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let effective: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(effective["data_dir"], "/srv/from-file");
    assert_eq!(
        (effective["log"]["format"].as_str(), effective["log"]["filter"].as_str()),
        (Some("text"), Some("contactd=trace"))
    );
}

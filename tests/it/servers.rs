//! The real servers the tests run against, Apache Kafka and Apache Cassandra,
//! each started once per test binary by `tests/servers/run` on first use and
//! stopped when the binary exits: the script ends its server when its standard
//! input, a pipe this process holds open until it ends, closes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;

/// A server started by the script; its stdin is held, never written, so that
/// it closes only when the test binary exits.
struct Started {
    /// The words after `ready <server>` on the script's line.
    words: Vec<String>,
    _process: Child,
    _stdin: ChildStdin,
}

/// Where the servers' logs are kept, so that a failed test can point at them.
pub fn log_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("servers")
}

fn start(server: &str) -> Started {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/run");
    let mut process = Command::new(script)
        .arg(server)
        .env("SERVER_LOG_DIR", log_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {script}: {error}"));
    let stdin = process.stdin.take().expect("a piped stdin");
    let mut lines = BufReader::new(process.stdout.take().expect("a piped stdout")).lines();
    let ready = lines
        .find_map(|line| line.ok().filter(|line| line.starts_with("ready ")))
        .unwrap_or_else(|| panic!("{server} did not start: see the script's messages above and {}", log_dir().display()));
    let words = ready.split_whitespace().skip(2).map(str::to_owned).collect();
    Started { words, _process: process, _stdin: stdin }
}

/// The Kafka broker of this test binary.
#[derive(Debug)]
pub struct Kafka {
    /// `host:port` for clients.
    pub address: String,
    /// The second listener's real port, where a test's proxy forwards to.
    pub proxied_upstream: u16,
    /// The port that listener advertises, where a test's proxy listens.
    pub proxied_port: u16,
}

pub fn kafka() -> &'static Kafka {
    static KAFKA: OnceLock<(Kafka, Started)> = OnceLock::new();
    &KAFKA
        .get_or_init(|| {
            let started = start("kafka");
            let port = |word: &str| -> u16 {
                word.rsplit(':').next().and_then(|port| port.parse().ok()).unwrap_or_else(|| panic!("a port in {word}"))
            };
            let kafka = match &started.words[..] {
                [address, proxied, upstream, advertised] if proxied == "proxied" => {
                    Kafka { address: address.clone(), proxied_upstream: port(upstream), proxied_port: port(advertised) }
                }
                other => panic!("unexpected ready line from the Kafka script: {other:?}"),
            };
            (kafka, started)
        })
        .0
}

/// `host:port` of this test binary's Cassandra node.
pub fn cassandra() -> &'static str {
    static CASSANDRA: OnceLock<Started> = OnceLock::new();
    &CASSANDRA.get_or_init(|| start("cassandra")).words[0]
}

//! What the benchmarks share: the synthetic corpus as records, and a tansu
//! broker started for the run (or the brokers in KAFKA_BROKERS).

#![allow(dead_code)] // each bench uses a part

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use contactd::corpus::{GenOptions, Generator};
use contactd::source::{Origin, RawRecord};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// CONTACTD_BENCH_EVENTS, or `default`.
pub fn corpus_size(default: u64) -> u64 {
    std::env::var("CONTACTD_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The synthetic corpus of `events` lines, JSONL.
pub fn corpus(events: u64) -> Vec<u8> {
    let mut corpus = Vec::new();
    Generator::new(GenOptions { events, ..GenOptions::default() }).write(&mut corpus).expect("corpus");
    corpus
}

pub fn lines(corpus: &[u8]) -> Vec<&[u8]> {
    corpus.split(|b| *b == b'\n').filter(|line| !line.is_empty()).collect()
}

/// Lines as the pipeline receives them from a file.
pub fn records(lines: &[&[u8]]) -> Vec<RawRecord> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| RawRecord {
            payload: line.to_vec(),
            origin: Origin { source: "bench".into(), partition: None, position: i as u64 },
        })
        .collect()
}

/// A broker started for the run, stopped when dropped.
pub struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// KAFKA_BROKERS when set; otherwise a tansu with in-memory storage on a free port.
pub fn brokers() -> (Option<Tansu>, String) {
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
        return (None, brokers);
    }
    let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("address").port();
    let url = format!("tcp://127.0.0.1:{port}");
    let installed = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/tansu"));
    let program = installed.filter(|path| path.exists()).unwrap_or_else(|| "tansu".into());
    let child = Command::new(program)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu starts (cargo install tansu --locked --version 0.6.0 --features dynostore)");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start listening");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Some(Tansu(child)), format!("127.0.0.1:{port}"))
}

pub fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// Creates `topics` (name, partitions) with one replica each.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create().expect("admin client");
    let topics: Vec<NewTopic> =
        topics.iter().map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1))).collect();
    for result in futures::executor::block_on(admin.create_topics(&topics, &AdminOptions::new())).expect("topics") {
        result.expect("topic created");
    }
}

/// The value at quantile `q` (0..=1) of sorted `samples`.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[index.min(samples.len() - 1)]
}

//! What the benchmarks share: the synthetic corpus as records, and the real
//! Kafka and Cassandra that tests/servers/run starts for the run (or the
//! brokers in KAFKA_BROKERS).

#![allow(dead_code)] // each bench uses a part

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

/// The test binary's server starter, shared: each server runs until the bench exits.
#[path = "../../tests/it/servers.rs"]
pub mod servers;

/// KAFKA_BROKERS when set; otherwise an Apache Kafka started for the run.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| servers::kafka().address.clone())
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

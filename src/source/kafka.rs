//! Kafka as the event source: the consumer's settings and the translation of a
//! fetched message into a `RawRecord`. The worker (`crate::worker`) drives it.

use rdkafka::ClientConfig;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;

use super::{Origin, RawRecord};
use crate::config::{KafkaConfig, WorkerConfig};

/// Offsets are committed by the worker only, after an event's effects are
/// durable; a new group starts from the earliest offset so nothing is skipped.
pub fn consumer_config(kafka: &KafkaConfig, worker: &WorkerConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("statistics.interval.ms", worker.statistics_interval_ms.to_string());
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config
}

pub fn record_of(message: &BorrowedMessage<'_>) -> RawRecord {
    RawRecord {
        payload: message.payload().unwrap_or_default().to_vec(),
        origin: Origin {
            source: message.topic().to_owned(),
            partition: Some(message.partition()),
            position: message.offset().unsigned_abs(),
        },
    }
}

/// Lag per assigned partition from librdkafka's statistics: the high watermark
/// minus the group's committed offset, so it counts what is not yet durable.
pub fn lag(statistics: &Statistics) -> Vec<(String, i32, i64)> {
    let mut lags = Vec::new();
    for (topic, stats) in &statistics.topics {
        for (partition, p) in &stats.partitions {
            // Partition -1 is librdkafka's internal unassigned queue.
            if *partition >= 0 && p.committed_offset >= 0 && p.hi_offset >= 0 {
                lags.push((topic.clone(), *partition, (p.hi_offset - p.committed_offset).max(0)));
            }
        }
    }
    lags
}

/// Whether librdkafka holds a working connection to any broker.
pub fn any_broker_up(statistics: &Statistics) -> bool {
    statistics.brokers.values().any(|broker| broker.state == "UP")
}

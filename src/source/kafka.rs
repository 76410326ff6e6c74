//! Kafka as the event source: the consumer's settings and the translation of a
//! fetched message into a `RawRecord`. The worker module drives it.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{Origin, RawRecord};
use crate::config::{KafkaConfig, WorkerConfig};

/// A consumer in `group_id` whose offsets move only when its owner commits
/// them, after the effects are durable; a new group starts from the earliest
/// offset so nothing is skipped. `settings` add to that.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str, settings: &[(&str, &str)]) -> ClientConfig {
    let mut all = vec![
        ("group.id", group_id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
    ];
    all.extend_from_slice(settings);
    kafka.client_config(&all)
}

/// The worker's consumer: cooperative rebalancing, and statistics for lag.
pub fn worker_consumer_config(kafka: &KafkaConfig, worker: &WorkerConfig) -> ClientConfig {
    let interval = worker.statistics_interval_ms.to_string();
    let settings = [("partition.assignment.strategy", "cooperative-sticky"), ("statistics.interval.ms", interval.as_str())];
    consumer_config(kafka, &kafka.group_id, &settings)
}

/// The record of a fetched message. Of a message larger than an event may be,
/// only enough is copied for the decoder to refuse it and the dead letter to
/// show how it starts.
pub fn record_of(message: &BorrowedMessage<'_>, max_event_bytes: usize) -> RawRecord {
    let payload = message.payload().unwrap_or_default();
    RawRecord {
        payload: payload[..payload.len().min(max_event_bytes + 1)].to_vec(),
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

/// The workers' lag as the broker keeps it, for alerting that outlives the
/// workers: asks for the group's committed offsets without joining the group,
/// so it answers while no worker runs (when the workers' own lag series are
/// gone with them).
pub struct GroupLag {
    consumer: BaseConsumer,
    topics: Vec<String>,
}

impl GroupLag {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, KafkaError> {
        Ok(Self { consumer: consumer_config(kafka, &kafka.group_id, &[]).create()?, topics: kafka.events_topics.clone() })
    }

    /// Per partition of every events topic: the high watermark minus the
    /// group's committed offset, or minus the low watermark where the group
    /// has committed nothing (everything retained is still to do).
    pub fn read(&self, timeout: Duration) -> Result<Vec<(String, i32, i64)>, KafkaError> {
        let mut partitions = TopicPartitionList::new();
        for topic in &self.topics {
            let metadata = self.consumer.fetch_metadata(Some(topic), timeout)?;
            for partition in metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()) {
                partitions.add_partition(topic, partition.id());
            }
        }
        let committed = self.consumer.committed_offsets(partitions, timeout)?;
        let mut lags = Vec::with_capacity(committed.count());
        for element in committed.elements() {
            let (low, high) = self.consumer.fetch_watermarks(element.topic(), element.partition(), timeout)?;
            let done = match element.offset() {
                Offset::Offset(offset) => offset.max(low),
                _ => low,
            };
            lags.push((element.topic().to_owned(), element.partition(), (high - done).max(0)));
        }
        Ok(lags)
    }
}

/// Whether librdkafka holds a working connection to any broker.
pub fn any_broker_up(statistics: &Statistics) -> bool {
    statistics.brokers.values().any(|broker| broker.state == "UP")
}

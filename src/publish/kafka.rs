//! Change events and dead letters to Kafka, through one idempotent producer.
//! Sending returns a [`Pending`] once every record is queued; the caller commits
//! the offsets that caused them only after waiting for it.

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::{DeadLetter, EncodedUnit};
use crate::config::KafkaConfig;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the producer shut down before acknowledging a record")]
    Canceled,
}

/// A producer configured for at-least-once delivery without reordering or
/// duplicates from its own retries.
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    let timeout = kafka.delivery_timeout_ms.to_string();
    kafka
        .client_config(&[("enable.idempotence", "true"), ("acks", "all"), ("linger.ms", "5"), ("message.timeout.ms", &timeout)])
        .create()
}

/// Queues every record, waiting for room when the producer's queue is full,
/// then waits for all acknowledgements. Returns how many were delivered.
pub fn send_all<'a, I>(producer: &FutureProducer, records: I) -> Result<usize, PublishError>
where
    I: IntoIterator<Item = FutureRecord<'a, [u8], [u8]>>,
{
    enqueue_all(producer, records)?.wait()
}

/// Records handed to the producer whose acknowledgements are still to come.
#[must_use = "records are delivered only once their acknowledgements are awaited"]
pub struct Pending {
    deliveries: Vec<DeliveryFuture>,
}

impl Pending {
    /// Waits for every acknowledgement; the first failure fails them all, since the
    /// caller cannot tell which records the broker kept. Returns how many were delivered.
    pub fn wait(self) -> Result<usize, PublishError> {
        let count = self.deliveries.len();
        for outcome in futures::executor::block_on(join_all(self.deliveries)) {
            outcome.map_err(|_| PublishError::Canceled)?.map_err(|(error, _)| error)?;
        }
        Ok(count)
    }
}

/// Queues every record, waiting for room when the producer's queue is full, and
/// returns without waiting for the broker.
pub fn enqueue_all<'a, I>(producer: &FutureProducer, records: I) -> Result<Pending, PublishError>
where
    I: IntoIterator<Item = FutureRecord<'a, [u8], [u8]>>,
{
    let mut deliveries: Vec<DeliveryFuture> = Vec::new();
    for mut record in records {
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error.into()),
            }
        }
    }
    Ok(Pending { deliveries })
}

pub struct KafkaPublisher {
    producer: FutureProducer,
    changes_topic: String,
    dead_letter_topic: String,
}

impl KafkaPublisher {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, PublishError> {
        Ok(Self {
            producer: producer(kafka)?,
            changes_topic: kafka.changes_topic.clone(),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
        })
    }

    /// Publishes the changes of each unit keyed `tenant_id/contact_id`, so one
    /// contact's changes stay in order on one partition.
    pub fn publish_units(&self, units: &[EncodedUnit]) -> Result<Pending, PublishError> {
        enqueue_all(
            &self.producer,
            units
                .iter()
                .flat_map(EncodedUnit::changes)
                .map(|(key, json)| FutureRecord::to(&self.changes_topic).key(key.as_bytes()).payload(json.as_bytes())),
        )
    }

    /// Sends inputs that cannot be processed to the dead-letter topic unchanged,
    /// with why and where they came from in headers.
    pub fn dead_letters(&self, letters: &[(DeadLetter<'_>, Option<&[u8]>)]) -> Result<Pending, PublishError> {
        let records = letters.iter().map(|(letter, key)| {
            let partition = letter.origin.partition.map(|p| p.to_string()).unwrap_or_default();
            let offset = letter.origin.position.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "reason", value: Some(letter.reason) })
                .insert(Header { key: "detail", value: Some(letter.detail.as_str()) })
                .insert(Header { key: "source_topic", value: Some(letter.origin.source.as_str()) })
                .insert(Header { key: "source_partition", value: Some(partition.as_str()) })
                .insert(Header { key: "source_offset", value: Some(offset.as_str()) });
            let mut record = FutureRecord::to(&self.dead_letter_topic).payload(letter.payload).headers(headers);
            if let Some(key) = key {
                record = record.key(*key);
            }
            record
        });
        enqueue_all(&self.producer, records)
    }
}

//! Kafka clients: the consumer with manual offsets, offset commits, topic
//! creation and a producer.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::ThreadedProducer;
use rdkafka::{Offset, TopicPartitionList};

use crate::buffer::{Message, OffsetRanges};

/// The parts of a Kafka message the pipeline takes, borrowed from it.
pub fn message<M: rdkafka::Message>(m: &M) -> Message<'_> {
    Message {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key(),
        value: m.payload(),
    }
}

/// A consumer of both topics in `group`, committing offsets only when told.
/// `memory_limit` caps librdkafka's prefetch queue at a sixteenth of it (the
/// queue's per-message overhead about doubles its payload bytes).
pub fn consumer(
    brokers: &str,
    group: &str,
    instance_id: Option<&str>,
    topics: &[&str],
    memory_limit: usize,
) -> Result<StreamConsumer, KafkaError> {
    let queue_kb = (memory_limit / 16 / 1024).clamp(8 * 1024, 256 * 1024);
    let mut config = ClientConfig::new();
    if let Some(id) = instance_id {
        config.set("group.instance.id", id);
    }
    let c: StreamConsumer = config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("queued.max.messages.kbytes", queue_kb.to_string())
        // Per-partition fetch size; a larger message still arrives whole
        // (the broker returns it alone) and is rejected by the decoder.
        .set("fetch.message.max.bytes", "1048576")
        .create()?;
    c.subscribe(topics)?;
    Ok(c)
}

/// Commits "next offset to read" for every range of the epoch.
pub fn commit(consumer: &StreamConsumer, ranges: &OffsetRanges) -> Result<(), KafkaError> {
    if ranges.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), r) in ranges {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(r.last + 1))?;
    }
    consumer.commit(&tpl, CommitMode::Sync)
}

/// A producer tuned for throughput; sends are queued and flushed in the background.
pub fn producer(brokers: &str) -> Result<ThreadedProducer<DefaultProducerContext>, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .set("message.max.bytes", "16777216")
        .create()
}

/// Creates `topics` with `partitions` partitions each; existing ones are kept.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await? {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(%topic, %code, "cannot create topic");
                })
            }
        }
    }
    Ok(())
}

//! Buffers one epoch of messages as Arrow column builders, together with the
//! Kafka offset ranges they came from: the rows and their offsets travel
//! together, so offsets are only ever committed with the data.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Float64Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use serde::{Deserialize, Serialize};

use crate::decode::{decode_execution, decode_signal, DecodeError, Execution, Signal};
use crate::schema::{self, Topics};

/// One Kafka message as the pipeline sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Kafka timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

impl<'a> Message<'a> {
    /// A message with a value only (no key, no Kafka timestamp), as test
    /// fixtures write them.
    pub fn with_value(topic: &'a str, partition: i32, offset: i64, value: &'a [u8]) -> Self {
        Self {
            topic,
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            value: Some(value),
        }
    }
}

/// First and last offset of one topic-partition within an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    pub first: i64,
    pub last: i64,
}

/// Offset ranges keyed by `(topic, partition)`.
pub type OffsetRanges = BTreeMap<(String, i32), OffsetRange>;

/// What happened to one message, for the caller's counters and watermarks.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Valid; carries its event time (µs) and how many unknown fields it had.
    Accepted {
        event_time: i64,
        unknown_fields: u32,
    },
    DeadLetter(DecodeError),
    /// A topic this service does not read; skipped but its offset still advances.
    Ignored,
}

fn ts_builder() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone("UTC")
}

/// The Kafka columns every raw table ends with.
struct KafkaColumns {
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMicrosecondBuilder,
    ingested_at: TimestampMicrosecondBuilder,
}

impl KafkaColumns {
    fn new() -> Self {
        Self {
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: ts_builder(),
            ingested_at: ts_builder(),
        }
    }

    fn append(&mut self, m: &Message, ingested_at: i64) {
        self.partition.append_value(m.partition);
        self.offset.append_value(m.offset);
        self.timestamp
            .append_option(m.timestamp_ms.map(|t| t * 1000));
        self.ingested_at.append_value(ingested_at);
    }

    fn finish(&mut self, cols: &mut Vec<ArrayRef>) {
        cols.push(Arc::new(self.partition.finish()));
        cols.push(Arc::new(self.offset.finish()));
        cols.push(Arc::new(self.timestamp.finish()));
        cols.push(Arc::new(self.ingested_at.finish()));
    }
}

struct SignalColumns {
    schema_version: Int32Builder,
    signal_id: StringBuilder,
    influencer_id: StringBuilder,
    instrument: StringBuilder,
    side: StringBuilder,
    action: StringBuilder,
    price: Float64Builder,
    allocation_pct: Float64Builder,
    confidence: Float64Builder,
    emitted_at: TimestampMicrosecondBuilder,
    kafka: KafkaColumns,
    rows: usize,
}

impl SignalColumns {
    fn new() -> Self {
        Self {
            schema_version: Int32Builder::new(),
            signal_id: StringBuilder::new(),
            influencer_id: StringBuilder::new(),
            instrument: StringBuilder::new(),
            side: StringBuilder::new(),
            action: StringBuilder::new(),
            price: Float64Builder::new(),
            allocation_pct: Float64Builder::new(),
            confidence: Float64Builder::new(),
            emitted_at: ts_builder(),
            kafka: KafkaColumns::new(),
            rows: 0,
        }
    }

    fn append(&mut self, s: &Signal, m: &Message, ingested_at: i64) {
        self.schema_version.append_value(s.schema_version);
        self.signal_id.append_value(&s.signal_id);
        self.influencer_id.append_value(&s.influencer_id);
        self.instrument.append_value(&s.instrument);
        self.side.append_value(s.side);
        self.action.append_value(s.action);
        self.price.append_value(s.price);
        self.allocation_pct.append_value(s.allocation_pct);
        self.confidence.append_option(s.confidence);
        self.emitted_at.append_value(s.emitted_at);
        self.kafka.append(m, ingested_at);
        self.rows += 1;
    }

    fn finish(&mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.schema_version.finish()),
            Arc::new(self.signal_id.finish()),
            Arc::new(self.influencer_id.finish()),
            Arc::new(self.instrument.finish()),
            Arc::new(self.side.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.allocation_pct.finish()),
            Arc::new(self.confidence.finish()),
            Arc::new(self.emitted_at.finish()),
        ];
        self.kafka.finish(&mut cols);
        self.rows = 0;
        RecordBatch::try_new(schema::raw_signals_schema(), cols)
            .expect("signal builders follow the raw schema")
    }
}

struct ExecutionColumns {
    schema_version: Int32Builder,
    execution_id: StringBuilder,
    signal_id: StringBuilder,
    influencer_id: StringBuilder,
    subscriber_id: StringBuilder,
    instrument: StringBuilder,
    side: StringBuilder,
    status: StringBuilder,
    requested_qty: Float64Builder,
    filled_qty: Float64Builder,
    avg_fill_price: Float64Builder,
    fee: Float64Builder,
    realized_pnl: Float64Builder,
    error_code: StringBuilder,
    venue: StringBuilder,
    submitted_at: TimestampMicrosecondBuilder,
    executed_at: TimestampMicrosecondBuilder,
    kafka: KafkaColumns,
    rows: usize,
}

impl ExecutionColumns {
    fn new() -> Self {
        Self {
            schema_version: Int32Builder::new(),
            execution_id: StringBuilder::new(),
            signal_id: StringBuilder::new(),
            influencer_id: StringBuilder::new(),
            subscriber_id: StringBuilder::new(),
            instrument: StringBuilder::new(),
            side: StringBuilder::new(),
            status: StringBuilder::new(),
            requested_qty: Float64Builder::new(),
            filled_qty: Float64Builder::new(),
            avg_fill_price: Float64Builder::new(),
            fee: Float64Builder::new(),
            realized_pnl: Float64Builder::new(),
            error_code: StringBuilder::new(),
            venue: StringBuilder::new(),
            submitted_at: ts_builder(),
            executed_at: ts_builder(),
            kafka: KafkaColumns::new(),
            rows: 0,
        }
    }

    fn append(&mut self, e: &Execution, m: &Message, ingested_at: i64) {
        self.schema_version.append_value(e.schema_version);
        self.execution_id.append_value(&e.execution_id);
        self.signal_id.append_value(&e.signal_id);
        self.influencer_id.append_value(&e.influencer_id);
        self.subscriber_id.append_value(&e.subscriber_id);
        self.instrument.append_value(&e.instrument);
        self.side.append_value(e.side);
        self.status.append_value(e.status);
        self.requested_qty.append_value(e.requested_qty);
        self.filled_qty.append_value(e.filled_qty);
        self.avg_fill_price.append_option(e.avg_fill_price);
        self.fee.append_value(e.fee);
        self.realized_pnl.append_option(e.realized_pnl);
        self.error_code.append_option(e.error_code.as_deref());
        self.venue.append_value(&e.venue);
        self.submitted_at.append_value(e.submitted_at);
        self.executed_at.append_value(e.executed_at);
        self.kafka.append(m, ingested_at);
        self.rows += 1;
    }

    fn finish(&mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.schema_version.finish()),
            Arc::new(self.execution_id.finish()),
            Arc::new(self.signal_id.finish()),
            Arc::new(self.influencer_id.finish()),
            Arc::new(self.subscriber_id.finish()),
            Arc::new(self.instrument.finish()),
            Arc::new(self.side.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.requested_qty.finish()),
            Arc::new(self.filled_qty.finish()),
            Arc::new(self.avg_fill_price.finish()),
            Arc::new(self.fee.finish()),
            Arc::new(self.realized_pnl.finish()),
            Arc::new(self.error_code.finish()),
            Arc::new(self.venue.finish()),
            Arc::new(self.submitted_at.finish()),
            Arc::new(self.executed_at.finish()),
        ];
        self.kafka.finish(&mut cols);
        self.rows = 0;
        RecordBatch::try_new(schema::raw_executions_schema(), cols)
            .expect("execution builders follow the raw schema")
    }
}

struct DeadLetterColumns {
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMicrosecondBuilder,
    key: BinaryBuilder,
    payload: BinaryBuilder,
    kind: StringBuilder,
    reason: StringBuilder,
    ingested_at: TimestampMicrosecondBuilder,
    rows: usize,
}

impl DeadLetterColumns {
    fn new() -> Self {
        Self {
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: ts_builder(),
            key: BinaryBuilder::new(),
            payload: BinaryBuilder::new(),
            kind: StringBuilder::new(),
            reason: StringBuilder::new(),
            ingested_at: ts_builder(),
            rows: 0,
        }
    }

    fn append(&mut self, m: &Message, err: &DecodeError, ingested_at: i64) {
        self.topic.append_value(m.topic);
        self.partition.append_value(m.partition);
        self.offset.append_value(m.offset);
        self.timestamp
            .append_option(m.timestamp_ms.map(|t| t * 1000));
        self.key.append_option(m.key);
        self.payload.append_option(m.value);
        self.kind.append_value(err.kind());
        self.reason.append_value(err.to_string());
        self.ingested_at.append_value(ingested_at);
        self.rows += 1;
    }

    fn finish(&mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.ingested_at.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(schema::dead_letter_schema(), cols)
            .expect("dead-letter builders follow the schema")
    }
}

/// The finished batches of one epoch, ready for the sinks.
#[derive(Debug)]
pub struct EpochBatches {
    pub signals: RecordBatch,
    pub executions: RecordBatch,
    pub dead_letters: RecordBatch,
    pub offsets: OffsetRanges,
}

impl EpochBatches {
    /// Drops every row read from `topic`/`partition` (`signals_topic` names
    /// the topic of the `signals` batch): another instance writes them.
    pub fn without(
        &mut self,
        topic: &str,
        partition: i32,
        signals_topic: &str,
    ) -> Result<(), arrow::error::ArrowError> {
        use arrow::array::{AsArray, BooleanArray};
        use arrow::datatypes::Int32Type;
        let keep = |b: &RecordBatch, same_topic: &dyn Fn(usize) -> bool| {
            let parts = b
                .column_by_name("kafka_partition")
                .expect("every batch has kafka_partition")
                .as_primitive::<Int32Type>();
            let mask: BooleanArray = (0..b.num_rows())
                .map(|i| Some(!(parts.value(i) == partition && same_topic(i))))
                .collect();
            arrow::compute::filter_record_batch(b, &mask)
        };
        let is_signals = topic == signals_topic;
        self.signals = keep(&self.signals, &|_| is_signals)?;
        self.executions = keep(&self.executions, &|_| !is_signals)?;
        let topics = self
            .dead_letters
            .column_by_name("topic")
            .expect("dead letters have a topic")
            .as_string::<i32>()
            .clone();
        self.dead_letters = keep(&self.dead_letters, &|i| topics.value(i) == topic)?;
        self.offsets.remove(&(topic.to_owned(), partition));
        Ok(())
    }

    /// Newest event time among the epoch's valid rows.
    pub fn max_event_time(&self) -> Option<i64> {
        let max = |b: &RecordBatch, col: &str| {
            b.column_by_name(col)
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
                .and_then(arrow::compute::max)
        };
        max(&self.signals, "emitted_at").max(max(&self.executions, "executed_at"))
    }
}

/// Accumulates one epoch.
pub struct EpochBuffer {
    topics: Topics,
    signals: SignalColumns,
    executions: ExecutionColumns,
    dead: DeadLetterColumns,
    offsets: OffsetRanges,
    bytes: usize,
}

impl EpochBuffer {
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            signals: SignalColumns::new(),
            executions: ExecutionColumns::new(),
            dead: DeadLetterColumns::new(),
            offsets: OffsetRanges::new(),
            bytes: 0,
        }
    }

    /// Decodes one message into the epoch and records its offset.
    pub fn push(&mut self, m: &Message, ingested_at: i64) -> Outcome {
        self.bytes += m.value.map_or(0, <[u8]>::len);
        self.offsets
            .entry((m.topic.to_owned(), m.partition))
            .and_modify(|r| r.last = r.last.max(m.offset))
            .or_insert(OffsetRange {
                first: m.offset,
                last: m.offset,
            });
        let outcome = match m.topic {
            t if t == self.topics.signals => decode_signal(m.value).map(|s| {
                self.signals.append(&s, m, ingested_at);
                (s.emitted_at, s.unknown_fields)
            }),
            t if t == self.topics.executions => decode_execution(m.value).map(|e| {
                self.executions.append(&e, m, ingested_at);
                (e.executed_at, e.unknown_fields)
            }),
            _ => return Outcome::Ignored,
        };
        match outcome {
            Ok((event_time, unknown_fields)) => Outcome::Accepted {
                event_time,
                unknown_fields,
            },
            Err(err) => {
                self.dead.append(m, &err, ingested_at);
                Outcome::DeadLetter(err)
            }
        }
    }

    /// Whether the message at `offset` is already in this epoch: after a
    /// rebalance Kafka delivers again from the last committed offset.
    pub fn holds(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.offsets
            .get(&(topic.to_owned(), partition))
            .is_some_and(|r| (r.first..=r.last).contains(&offset))
    }

    /// Messages buffered (valid and dead).
    pub fn rows(&self) -> usize {
        self.signals.rows + self.executions.rows + self.dead.rows
    }

    /// Payload bytes buffered.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Finishes the epoch and leaves the buffer empty for the next one.
    pub fn take(&mut self) -> EpochBatches {
        self.bytes = 0;
        EpochBatches {
            signals: self.signals.finish(),
            executions: self.executions.finish(),
            dead_letters: self.dead.finish(),
            offsets: std::mem::take(&mut self.offsets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{EXECUTIONS_TOPIC, SIGNALS_TOPIC};

    fn msg<'a>(topic: &'a str, partition: i32, offset: i64, value: &'a [u8]) -> Message<'a> {
        Message {
            topic,
            partition,
            offset,
            timestamp_ms: Some(1_000),
            key: None,
            value: Some(value),
        }
    }

    #[test]
    fn rows_offsets_and_dead_letters_travel_together() {
        let sig = crate::decode::tests::SIGNAL.as_bytes();
        let exe = crate::decode::tests::EXECUTION.as_bytes();
        let mut b = EpochBuffer::new(Topics::default());
        assert!(matches!(
            b.push(&msg(SIGNALS_TOPIC, 0, 7, sig), 5),
            Outcome::Accepted { .. }
        ));
        assert!(matches!(
            b.push(&msg(EXECUTIONS_TOPIC, 1, 3, exe), 5),
            Outcome::Accepted { .. }
        ));
        assert!(matches!(
            b.push(&msg(EXECUTIONS_TOPIC, 1, 4, exe), 5),
            Outcome::Accepted { .. }
        ));
        assert!(matches!(
            b.push(&msg(EXECUTIONS_TOPIC, 1, 5, b"nope"), 5),
            Outcome::DeadLetter(_)
        ));
        assert_eq!(b.push(&msg("other", 0, 1, exe), 5), Outcome::Ignored);
        assert_eq!(b.rows(), 4);
        assert!(b.holds(EXECUTIONS_TOPIC, 1, 4));
        assert!(!b.holds(EXECUTIONS_TOPIC, 1, 6));
        assert!(!b.holds(EXECUTIONS_TOPIC, 0, 4));
        let out = b.take();
        assert_eq!(out.signals.num_rows(), 1);
        assert_eq!(out.executions.num_rows(), 2);
        assert_eq!(out.dead_letters.num_rows(), 1);
        // Signal 10:00:01.250, executions 10:00:01.500 (2026-01-01).
        assert_eq!(out.max_event_time(), Some(1_767_261_601_500_000));
        assert_eq!(
            out.offsets[&(EXECUTIONS_TOPIC.to_string(), 1)],
            OffsetRange { first: 3, last: 5 }
        );
        assert_eq!(
            out.offsets[&(SIGNALS_TOPIC.to_string(), 0)],
            OffsetRange { first: 7, last: 7 }
        );
        assert!(b.is_empty());
        assert!(!b.holds(EXECUTIONS_TOPIC, 1, 4));
        assert_eq!(b.take().executions.num_rows(), 0);

        // Dropping a partition takes its rows, dead letters and range.
        let mut out = out;
        out.without(EXECUTIONS_TOPIC, 1, SIGNALS_TOPIC).unwrap();
        assert_eq!(out.executions.num_rows(), 0);
        assert_eq!(out.dead_letters.num_rows(), 0);
        assert_eq!(out.signals.num_rows(), 1, "same partition, other topic");
        assert!(!out.offsets.contains_key(&(EXECUTIONS_TOPIC.to_string(), 1)));
        assert!(out.offsets.contains_key(&(SIGNALS_TOPIC.to_string(), 0)));
        out.without(SIGNALS_TOPIC, 0, SIGNALS_TOPIC).unwrap();
        assert_eq!(out.signals.num_rows(), 0);
        assert!(!out.offsets.contains_key(&(SIGNALS_TOPIC.to_string(), 0)));
    }
}

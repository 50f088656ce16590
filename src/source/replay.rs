//! Reading a time range from Kafka again (`reprocess --source kafka`): each
//! partition is read from the first offset stamped at or after a start time
//! up to its end as of the start of the read, decoded exactly as the daemon
//! decodes, and the valid events of the range are written as raw Parquet to
//! a scratch store that the finalizer then reads instead of `raw/`.

use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, RecordBatch, TimestampMicrosecondArray};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use crate::buffer::{EpochBatches, EpochBuffer};
use crate::config::Common;
use crate::coordination::now_ms;
use crate::metrics::engine::{plan_partitioned, write_planned, EngineError, FileNaming};
use crate::sink::store::OutputStore;

/// Broker round trips (metadata, offsets) give up after this long.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Rows decoded before they are written out, bounding memory.
const FLUSH_ROWS: usize = 200_000;
/// Producers' clocks may run this far behind event times: offsets are
/// looked up this much earlier than the first event time wanted.
pub const CLOCK_SKEW_US: i64 = 3_600_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} does not exist on the broker")]
    NoTopic(String),
    #[error(
        "{topic}/{partition}: no message for {secs} s at offset {at}, before its end {end}: \
         is the broker up?"
    )]
    Stalled {
        topic: String,
        partition: i32,
        at: i64,
        end: i64,
        secs: u64,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("filtering the range: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Event-time bounds of what is kept (µs): signals from `signals_from`
/// (the join lookback), executions from `executions_from`, both before `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub signals_from: i64,
    pub executions_from: i64,
    pub to: i64,
}

/// What a replay read and kept.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplaySummary {
    pub messages: u64,
    pub signals: u64,
    pub executions: u64,
    pub files: usize,
}

/// One partition to read: `[start, end)` offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

fn consumer(brokers: &str, group: &str) -> Result<BaseConsumer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Never committed: the group only names the reader in broker logs.
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.message.max.bytes", "1048576")
        .create()
}

/// The offsets to read of every partition of `topic`: from the first message
/// stamped at or after `since_ms` to the partition's current end.
fn partition_spans(c: &BaseConsumer, topic: &str, since_ms: i64) -> Result<Vec<Span>, ReplayError> {
    let md = c.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ReplayError::NoTopic(topic.to_owned()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Offset(since_ms))?;
    }
    let found = c.offsets_for_times(tpl, TIMEOUT)?;
    let mut out = vec![];
    for p in partitions {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT)?;
        let start = match found.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            // No message stamped that late: nothing to read.
            _ => high,
        };
        if start < high {
            out.push(Span {
                topic: topic.to_owned(),
                partition: p,
                start,
                end: high,
            });
        }
    }
    Ok(out)
}

/// What a replay of `range` reads: the partitions and their offsets.
pub fn plan(common: &Common, range: Range) -> Result<Vec<Span>, ReplayError> {
    let c = consumer(&common.brokers, &format!("{}-reprocess", common.group))?;
    spans(&c, common, range)
}

fn spans(c: &BaseConsumer, common: &Common, range: Range) -> Result<Vec<Span>, ReplayError> {
    let mut spans = partition_spans(
        c,
        &common.topics.signals,
        (range.signals_from - CLOCK_SKEW_US) / 1000,
    )?;
    spans.extend(partition_spans(
        c,
        &common.topics.executions,
        (range.executions_from - CLOCK_SKEW_US) / 1000,
    )?);
    Ok(spans)
}

/// Rows of `b` whose `column` lies in `[from, to)`.
fn within(b: &RecordBatch, column: &str, from: i64, to: i64) -> Result<RecordBatch, ReplayError> {
    let t = b
        .column_by_name(column)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .expect("raw batches carry their event time");
    let keep: BooleanArray = t
        .iter()
        .map(|v| Some(v.is_some_and(|v| v >= from && v < to)))
        .collect();
    Ok(arrow::compute::filter_record_batch(b, &keep)?)
}

/// Writes the events of `batches` inside `range` to `scratch`'s raw folders.
async fn flush(
    scratch: &OutputStore,
    batches: EpochBatches,
    range: Range,
    seq: usize,
    summary: &mut ReplaySummary,
) -> Result<(), ReplayError> {
    let signals = within(&batches.signals, "emitted_at", range.signals_from, range.to)?;
    let executions = within(
        &batches.executions,
        "executed_at",
        range.executions_from,
        range.to,
    )?;
    summary.signals += signals.num_rows() as u64;
    summary.executions += executions.num_rows() as u64;
    let stem = format!("replay-{seq:06}");
    let mut plan = plan_partitioned(
        "raw/influencer_signals",
        &[signals],
        "emitted_at",
        FileNaming::Epoch(&stem),
    )?;
    plan.extend(plan_partitioned(
        "raw/execution_results",
        &[executions],
        "executed_at",
        FileNaming::Epoch(&stem),
    )?);
    summary.files += write_planned(scratch, &plan).await?.len();
    Ok(())
}

/// Reads `range` from the topics of `common` into `scratch`, reporting
/// progress through `progress(messages read, messages to read)`.
pub async fn replay(
    common: &Common,
    scratch: &OutputStore,
    range: Range,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplaySummary, ReplayError> {
    let c = consumer(&common.brokers, &format!("{}-reprocess", common.group))?;
    let spans = spans(&c, common, range)?;
    let total: u64 = spans.iter().map(|s| (s.end - s.start) as u64).sum();
    let mut tpl = TopicPartitionList::new();
    for s in &spans {
        tpl.add_partition_offset(&s.topic, s.partition, Offset::Offset(s.start))?;
    }
    c.assign(&tpl)?;
    let mut open: Vec<Span> = spans;
    let mut buffer = EpochBuffer::new(common.topics.clone());
    let mut summary = ReplaySummary::default();
    let mut seq = 0;
    let mut last_message = Instant::now();
    let mut last_report = Instant::now();
    while !open.is_empty() {
        let Some(polled) = c.poll(Duration::from_millis(200)) else {
            if last_message.elapsed() >= TIMEOUT {
                let s = &open[0];
                let at = c
                    .position()?
                    .find_partition(&s.topic, s.partition)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(s.start);
                return Err(ReplayError::Stalled {
                    topic: s.topic.clone(),
                    partition: s.partition,
                    at,
                    end: s.end,
                    secs: TIMEOUT.as_secs(),
                });
            }
            continue;
        };
        let m = polled?;
        last_message = Instant::now();
        let Some(i) = open
            .iter()
            .position(|s| s.topic == m.topic() && s.partition == m.partition())
        else {
            continue; // a partition already read to its end
        };
        if m.offset() < open[i].end {
            buffer.push(&super::kafka::message(&m), now_ms() * 1000);
            summary.messages += 1;
        }
        if m.offset() + 1 >= open[i].end {
            let done = open.swap_remove(i);
            let mut left = TopicPartitionList::new();
            left.add_partition(&done.topic, done.partition);
            c.pause(&left)?;
        }
        if buffer.rows() >= FLUSH_ROWS {
            flush(scratch, buffer.take(), range, seq, &mut summary).await?;
            seq += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress(summary.messages, total);
        }
    }
    flush(scratch, buffer.take(), range, seq, &mut summary).await?;
    progress(summary.messages, total);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn only_rows_of_the_range_are_kept() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new(
                "emitted_at",
                arrow::datatypes::DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Microsecond,
                    Some("UTC".into()),
                ),
                true,
            ),
        ]));
        let t = TimestampMicrosecondArray::from(vec![Some(5), Some(10), None, Some(19), Some(20)])
            .with_timezone("UTC");
        let b = RecordBatch::try_new(schema, vec![Arc::new(t)]).unwrap();
        let kept = within(&b, "emitted_at", 10, 20).unwrap();
        let t = kept
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(t.values().to_vec(), vec![10, 19]);
    }
}

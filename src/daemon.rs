//! The continuous micro-batch daemon: consume -> decode -> buffer -> epoch
//! (raw Parquet, checkpoint, offset commit) -> finalize the windows the
//! watermark has passed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message as _, Offset};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::{EpochBatches, EpochBuffer, Message, Outcome};
use crate::checkpoint::{CheckpointError, Checkpoints, EpochRecord, PartitionOffset};
use crate::config::{Common, Run};
use crate::metrics::catalog::{self, CatalogError, Metric};
use crate::metrics::engine::{write_partitioned, EngineError, FileNaming, Finalizer};
use crate::schema::{Topics, EXECUTIONS_TOPIC, SIGNALS_TOPIC};
use crate::sink::store::{OutputStore, StoreError};
use crate::source::kafka;
use crate::tables;
use crate::window::{final_bound, window_start, WatermarkTracker, WINDOW_MICROS};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// Counts over the daemon's life, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    pub epochs: u64,
    pub messages: u64,
    pub signals: u64,
    pub executions: u64,
    pub dead_letters: u64,
    /// Valid events whose window was already final when they arrived.
    pub late_events: u64,
    pub unknown_fields: u64,
    /// Distinct signals / executions written by finalization.
    pub final_signals: u64,
    pub final_executions: u64,
    pub metric_rows: u64,
    pub metric_errors: u64,
    /// Messages skipped because they were already committed or buffered.
    pub already_committed: u64,
    /// Seconds from the first message to the last epoch commit.
    pub busy_seconds: f64,
    /// Peak resident memory of the process (bytes), where the OS reports it.
    pub peak_rss_bytes: Option<u64>,
}

impl RunSummary {
    /// Messages per second while there was work.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.busy_seconds.max(1e-9)
    }
}

/// What finalizing one event costs in memory, all stages together (measured
/// with the catalog metrics): the events finalized at once are budgeted
/// from it.
const FINALIZE_BYTES_PER_EVENT: usize = 3 * 1024;

/// Attempts at writing one epoch before the daemon stops with the error
/// (about 4 minutes of backoff, on top of the store client's own retries).
const STORE_ATTEMPTS: u32 = 10;

/// Progress, persisted in every commit record.
#[derive(Debug, Clone, Default)]
struct Progress {
    next_epoch: u64,
    finalized_through: Option<i64>,
    first_open: Option<i64>,
    /// Newest event time committed so far: end of input finalizes up to it
    /// even when a restarted daemon has nothing new to read.
    max_event_time: Option<i64>,
    /// Next offset to read per partition over all committed epochs: a
    /// message below it is already on the store and is skipped.
    next_offsets: BTreeMap<(String, i32), i64>,
}

impl Progress {
    fn from_commit(r: &EpochRecord) -> Self {
        Self {
            next_epoch: r.epoch + 1,
            finalized_through: r.finalized_through,
            first_open: r.first_open,
            max_event_time: r.max_event_time,
            next_offsets: r
                .next_offsets
                .iter()
                .map(|o| ((o.topic.clone(), o.partition), o.next))
                .collect(),
        }
    }

    fn observe(&mut self, event_time: i64) -> bool {
        let late = self.finalized_through.is_some_and(|f| event_time < f);
        if !late {
            let w = window_start(event_time);
            self.first_open = Some(self.first_open.map_or(w, |f| f.min(w)));
        }
        late
    }

    fn already_committed(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.next_offsets
            .get(&(topic.to_owned(), partition))
            .is_some_and(|next| offset < *next)
    }
}

/// An epoch that began before a stop but was never committed: its recorded
/// offset ranges are read again into an epoch of the same number, so its
/// files are rewritten under the same names with the same rows.
struct Replay {
    record: EpochRecord,
    buffer: EpochBuffer,
    /// Partitions whose recorded last offset has not been read yet.
    waiting: BTreeSet<(String, i32)>,
}

impl Replay {
    fn new(record: EpochRecord, topics: Topics) -> Self {
        let waiting = record
            .ranges
            .iter()
            .map(|r| (r.topic.clone(), r.partition))
            .collect();
        Self {
            record,
            buffer: EpochBuffer::new(topics),
            waiting,
        }
    }

    /// Whether `offset` of `topic`/`partition` belongs to the replayed epoch.
    fn covers(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.record.ranges.iter().any(|r| {
            r.topic == topic && r.partition == partition && (r.first..=r.last).contains(&offset)
        })
    }

    /// Notes that `offset` was read; true once every range is complete.
    fn read(&mut self, topic: &str, partition: i32, offset: i64) -> bool {
        if self
            .record
            .ranges
            .iter()
            .any(|r| r.topic == topic && r.partition == partition && r.last == offset)
        {
            self.waiting.remove(&(topic.to_owned(), partition));
        }
        self.waiting.is_empty()
    }
}

struct Daemon {
    common: Common,
    run: Run,
    store: OutputStore,
    checkpoints: Checkpoints,
    finalizer: Finalizer,
    metrics: Vec<Metric>,
    consumer: Arc<StreamConsumer>,
    buffer: EpochBuffer,
    tracker: WatermarkTracker,
    progress: Progress,
    replay: Option<Replay>,
    summary: RunSummary,
    /// When the first message arrived: the start of throughput figures.
    first_message: Option<Instant>,
    /// Events per window not final yet, read since the start: sizes the
    /// finalization chunks (windows read before a restart count as empty).
    window_events: BTreeMap<i64, u64>,
}

/// Runs the daemon until `cancel` fires (or, with `stop_when_idle`, until the
/// topics have been quiet that long). The epoch in progress is written and
/// committed before returning.
pub async fn run(
    common: Common,
    run: Run,
    cancel: CancellationToken,
) -> Result<RunSummary, DaemonError> {
    let store = OutputStore::open(&common.output, &common.s3)?;
    let metrics = catalog::load(&common.sql_dir)?;
    catalog::check(&metrics).await?;
    let checkpoints = Checkpoints::new(store.clone());
    let last = checkpoints.latest_commit().await?;
    let progress = last.as_ref().map(Progress::from_commit).unwrap_or_default();
    let pending = checkpoints.pending(last.as_ref().map(|r| r.epoch)).await?;
    let topics = common.topics.clone();
    let consumer = kafka::consumer(
        &common.brokers,
        &common.group,
        common.instance_id.as_deref(),
        &topics.both(),
        run.memory_limit,
    )?;
    let finalizer = Finalizer::new(
        store.clone(),
        run.memory_limit,
        run.lookback.as_micros() as i64,
    )?;
    info!(output = %store.root_url(), brokers = %common.brokers, group = %common.group,
          metrics = metrics.len(), epoch = progress.next_epoch, "daemon started");
    let mut d = Daemon {
        tracker: WatermarkTracker::new(run.allowed_lateness, run.idle_timeout),
        buffer: EpochBuffer::new(topics),
        common,
        run,
        store,
        checkpoints,
        finalizer,
        metrics,
        consumer: Arc::new(consumer),
        progress,
        replay: None,
        summary: RunSummary::default(),
        first_message: None,
        window_events: BTreeMap::new(),
    };
    if let Some(record) = pending {
        info!(
            epoch = record.epoch,
            ranges = record.ranges.len(),
            "an epoch was not committed before the last stop: reading its offset ranges again"
        );
        d.replay = Some(Replay::new(record, d.common.topics.clone()));
        d.finish_replay_if_complete().await?;
    }
    d.main_loop(cancel).await?;
    d.summary.peak_rss_bytes = peak_rss_bytes();
    Ok(d.summary)
}

/// The process's peak resident set size (`VmHWM` on Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

impl Daemon {
    async fn main_loop(&mut self, cancel: CancellationToken) -> Result<(), DaemonError> {
        let mut deadline = Instant::now() + self.run.interval;
        let mut last_message = Instant::now();
        // A handle of its own, so received messages do not borrow `self`.
        let consumer = self.consumer.clone();
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = cancel.cancelled() => {
                    info!("shutdown requested: writing the current epoch");
                    self.epoch(false).await?;
                    return Ok(());
                }
                r = tokio::time::timeout(wait, consumer.recv()) => match r {
                    Ok(Ok(m)) => {
                        last_message = Instant::now();
                        self.first_message.get_or_insert(last_message);
                        let msg = Message {
                            topic: m.topic(),
                            partition: m.partition(),
                            offset: m.offset(),
                            timestamp_ms: m.timestamp().to_millis(),
                            key: m.key(),
                            value: m.payload(),
                        };
                        self.handle(&msg, last_message).await?;
                    }
                    Ok(Err(e)) => warn!(error = %e, "kafka consumer error; retrying"),
                    Err(_) => {}
                }
            }
            // A replayed epoch is committed before any newer one.
            let due = self.buffer.rows() >= self.run.max_rows || Instant::now() >= deadline;
            if due && self.replay.is_none() {
                self.epoch(false).await?;
                deadline = Instant::now() + self.run.interval;
            }
            if let Some(idle) = self.run.stop_when_idle {
                // Quiet is not enough (a broker restart is quiet too): the end
                // of input is quiet *and* read up to every partition's end.
                if last_message.elapsed() >= idle && self.replay.is_none() && self.caught_up() {
                    info!(
                        idle_secs = idle.as_secs_f64(),
                        "all partitions read to their end and quiet: finalizing every window and stopping"
                    );
                    self.epoch(true).await?;
                    return Ok(());
                }
            }
        }
    }

    /// Routes one message: skipped if already on the store, into the replayed
    /// epoch if it belongs there, else into the current epoch.
    async fn handle(&mut self, m: &Message<'_>, now: Instant) -> Result<(), DaemonError> {
        let redelivered = self.buffer.holds(m.topic, m.partition, m.offset)
            || self
                .replay
                .as_ref()
                .is_some_and(|r| r.buffer.holds(m.topic, m.partition, m.offset));
        if redelivered
            || self
                .progress
                .already_committed(m.topic, m.partition, m.offset)
        {
            self.summary.already_committed += 1;
            return Ok(());
        }
        let ingested_at = chrono::Utc::now().timestamp_micros();
        match &mut self.replay {
            Some(r) if r.covers(m.topic, m.partition, m.offset) => {
                let outcome = r.buffer.push(m, ingested_at);
                let complete = r.read(m.topic, m.partition, m.offset);
                self.account(m, outcome, now);
                if complete {
                    self.finish_replay_if_complete().await?;
                }
            }
            _ => {
                let outcome = self.buffer.push(m, ingested_at);
                self.account(m, outcome, now);
            }
        }
        Ok(())
    }

    /// Commits the replayed epoch once all its ranges have been read.
    async fn finish_replay_if_complete(&mut self) -> Result<(), DaemonError> {
        if self.replay.as_ref().is_some_and(|r| r.waiting.is_empty()) {
            let mut r = self.replay.take().expect("checked");
            let batches = r.buffer.take();
            info!(
                epoch = r.record.epoch,
                "replayed epoch read in full: writing it again"
            );
            self.commit_epoch(r.record, batches).await?;
        }
        Ok(())
    }

    fn account(&mut self, m: &Message, outcome: Outcome, now: Instant) {
        self.summary.messages += 1;
        match outcome {
            Outcome::Accepted {
                event_time,
                unknown_fields,
            } => {
                if m.topic == self.common.topics.signals {
                    self.summary.signals += 1;
                } else {
                    self.summary.executions += 1;
                }
                self.summary.unknown_fields += u64::from(unknown_fields);
                self.tracker.observe(m.topic, m.partition, event_time, now);
                if self.progress.observe(event_time) {
                    self.summary.late_events += 1;
                } else {
                    *self
                        .window_events
                        .entry(window_start(event_time))
                        .or_default() += 1;
                }
            }
            Outcome::DeadLetter(e) => {
                self.summary.dead_letters += 1;
                self.tracker.touch(m.topic, m.partition, now);
                debug!(topic = m.topic, partition = m.partition, offset = m.offset, reason = %e, "dead letter");
            }
            Outcome::Ignored => {}
        }
    }

    /// Closes the current epoch: decides which windows become final, records
    /// the epoch's offset ranges, then writes it. While an uncommitted epoch
    /// is being replayed nothing newer is written (its messages are read again
    /// after a restart).
    async fn epoch(&mut self, end_of_input: bool) -> Result<(), DaemonError> {
        if self.replay.is_some() {
            return Ok(());
        }
        self.refresh_assignment();
        let bound = if end_of_input {
            self.tracker
                .max_event_time()
                .max(self.progress.max_event_time)
                .map(|t| window_start(t) + WINDOW_MICROS)
        } else {
            self.tracker.watermark(Instant::now()).map(final_bound)
        };
        let finalize = match (self.progress.first_open, bound) {
            (Some(from), Some(to)) if from < to => Some((from, to)),
            _ => None,
        };
        if self.buffer.is_empty() && finalize.is_none() {
            return Ok(());
        }
        let batches = self.buffer.take();
        let record = EpochRecord {
            epoch: self.progress.next_epoch,
            ranges: EpochRecord::ranges_of(&batches.offsets),
            finalized_through: self.progress.finalized_through,
            first_open: self.progress.first_open,
            max_event_time: self.progress.max_event_time,
            finalize,
            next_offsets: vec![],
            files: vec![],
        };
        self.commit_epoch(record, batches).await
    }

    /// Records, writes and commits an epoch, retrying with backoff while the
    /// store fails (an S3 outage, a full disk): consumption pauses meanwhile,
    /// nothing is committed, and every attempt rewrites the same files. Gives
    /// up with the error after `STORE_ATTEMPTS`.
    async fn commit_epoch(
        &mut self,
        record: EpochRecord,
        batches: EpochBatches,
    ) -> Result<(), DaemonError> {
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            let result = match self.checkpoints.begin(&record).await {
                Ok(()) => self.write_epoch(record.clone(), &batches).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Err(e) if attempt < STORE_ATTEMPTS => {
                    warn!(epoch = record.epoch, attempt, retry_in_secs = delay.as_secs(), error = %e,
                          "writing the epoch failed; consumption paused, nothing committed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    attempt += 1;
                }
                other => {
                    if attempt > 1 {
                        // Not reading while stalled must not make partitions look idle.
                        self.tracker.touch_all(Instant::now());
                    }
                    return other;
                }
            }
        }
    }

    /// Writes an epoch whose offset record is on the store: raw files, the
    /// windows it finalizes, the commit record, then the Kafka offsets. File
    /// names depend only on the epoch and the windows, so writing the same
    /// epoch again replaces its files.
    async fn write_epoch(
        &mut self,
        mut record: EpochRecord,
        batches: &EpochBatches,
    ) -> Result<(), DaemonError> {
        let t0 = Instant::now();
        record.files = self.write_raw(batches, record.epoch).await?;
        if let Some((from, to)) = record.finalize {
            let mut start = from;
            let budget = (self.run.memory_limit / 2 / FINALIZE_BYTES_PER_EVENT) as u64;
            while start < to {
                let end = finalize_chunk_end(start, to, &self.window_events, budget);
                let s = self.finalizer.finalize(&self.metrics, start, end).await?;
                self.summary.final_signals += s.signals as u64;
                self.summary.final_executions += s.executions as u64;
                self.summary.metric_rows += s.metric_rows.values().sum::<usize>() as u64;
                self.summary.metric_errors += s.metric_errors.len() as u64;
                record.files.extend(s.files);
                start = end;
            }
            self.progress.finalized_through = Some(to);
            self.window_events = self.window_events.split_off(&to);
            // Windows from `to` on hold data or will: finalization resumes there.
            self.progress.first_open = Some(to);
        }
        for r in &record.ranges {
            let next = self
                .progress
                .next_offsets
                .entry((r.topic.clone(), r.partition))
                .or_insert(r.last + 1);
            *next = (*next).max(r.last + 1);
        }
        self.progress.max_event_time = self.progress.max_event_time.max(batches.max_event_time());
        record.finalized_through = self.progress.finalized_through;
        record.first_open = self.progress.first_open;
        record.max_event_time = self.progress.max_event_time;
        record.next_offsets = self
            .progress
            .next_offsets
            .iter()
            .map(|((topic, partition), next)| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                next: *next,
            })
            .collect();
        self.checkpoints.commit(&record).await?;
        if let Err(e) = kafka::commit(&self.consumer, &batches.offsets) {
            // The files and the commit record are durable and carry the
            // offsets; a restart skips what they cover.
            warn!(epoch = record.epoch, error = %e, "offset commit failed");
        }
        self.progress.next_epoch = record.epoch + 1;
        self.summary.epochs += 1;
        // Throughput counts the time spent on messages, not idle waits.
        if let (Some(first), false) = (self.first_message, batches.offsets.is_empty()) {
            self.summary.busy_seconds = first.elapsed().as_secs_f64();
        }
        info!(
            epoch = record.epoch,
            signals = batches.signals.num_rows(),
            executions = batches.executions.num_rows(),
            dead_letters = batches.dead_letters.num_rows(),
            files = record.files.len(),
            finalized_through = ?self.progress.finalized_through.map(crate::metrics::engine::format_bound),
            epoch_ms = t0.elapsed().as_millis() as u64,
            events_per_sec = self.summary.rate() as u64,
            "epoch committed"
        );
        Ok(())
    }

    /// Whether every assigned partition has been read up to its end.
    fn caught_up(&self) -> bool {
        let timeout = Duration::from_secs(5);
        let Ok(positions) = self.consumer.position() else {
            return false;
        };
        let parts = positions.elements();
        !parts.is_empty()
            && parts.iter().all(|e| {
                match self
                    .consumer
                    .fetch_watermarks(e.topic(), e.partition(), timeout)
                {
                    Ok((low, high)) => {
                        // Nothing read since the assignment: the store's
                        // committed offset says how far it was read before.
                        let next = match e.offset() {
                            Offset::Offset(next) => next,
                            _ => self
                                .progress
                                .next_offsets
                                .get(&(e.topic().to_owned(), e.partition()))
                                .copied()
                                .unwrap_or(low),
                        };
                        next >= high
                    }
                    Err(_) => false,
                }
            })
    }

    /// Tells the watermark which partitions this instance reads now, so a
    /// partition whose backlog has not arrived yet holds it back.
    fn refresh_assignment(&mut self) {
        let Ok(tpl) = self.consumer.assignment() else {
            return;
        };
        let now = Instant::now();
        let owned: BTreeSet<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        if owned.is_empty() {
            // Mid-rebalance: keep what is known until partitions come back.
            return;
        }
        for (topic, partition) in &owned {
            self.tracker.assign(topic, *partition, now);
        }
        self.tracker
            .retain(|t, p| owned.contains(&(t.to_owned(), p)));
    }

    async fn write_raw(&self, b: &EpochBatches, epoch: u64) -> Result<Vec<String>, DaemonError> {
        let stem = format!("epoch-{epoch:010}");
        let mut files = write_partitioned(
            &self.store,
            "raw/influencer_signals",
            std::slice::from_ref(&b.signals),
            "emitted_at",
            FileNaming::Epoch(&stem),
        )
        .await?;
        files.extend(
            write_partitioned(
                &self.store,
                "raw/execution_results",
                std::slice::from_ref(&b.executions),
                "executed_at",
                FileNaming::Epoch(&stem),
            )
            .await?,
        );
        // Folders are named after the contract topic whatever the configured
        // topic names; the `topic` column keeps the real one.
        let topics = &self.common.topics;
        for (topic, folder) in [
            (&topics.signals, SIGNALS_TOPIC),
            (&topics.executions, EXECUTIONS_TOPIC),
        ] {
            let dead = rows_of_topic(&b.dead_letters, topic)?;
            files.extend(
                write_partitioned(
                    &self.store,
                    &tables::dead_letter_folder(folder),
                    &[dead],
                    "kafka_timestamp",
                    FileNaming::Epoch(&stem),
                )
                .await?,
            );
        }
        Ok(files)
    }
}

/// End of the chunk of windows finalized together from `start` (before
/// `to`): at least one window, then more while their events (`events` per
/// window start) fit in `budget`; at most ten minutes and never across an
/// hour, so a catch-up over hours of backlog holds few events in memory and
/// each file stays inside one Hive partition.
fn finalize_chunk_end(start: i64, to: i64, events: &BTreeMap<i64, u64>, budget: u64) -> i64 {
    const CHUNK: i64 = 10 * WINDOW_MICROS;
    const HOUR: i64 = 60 * WINDOW_MICROS;
    let next_hour = (start.div_euclid(HOUR) + 1) * HOUR;
    let limit = to.min(next_hour).min(window_start(start) + CHUNK);
    let mut end = window_start(start) + WINDOW_MICROS;
    let mut total = events.get(&window_start(start)).copied().unwrap_or(0);
    while end < limit {
        total += events.get(&end).copied().unwrap_or(0);
        if total > budget {
            break;
        }
        end += WINDOW_MICROS;
    }
    end.min(limit)
}

/// The dead letters of one topic.
fn rows_of_topic(
    batch: &RecordBatch,
    topic: &str,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let col = batch
        .column_by_name("topic")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("dead letters have a topic column");
    let mask: BooleanArray = col.iter().map(|t| Some(t == Some(topic))).collect();
    filter_record_batch(batch, &mask)
}

impl From<arrow::error::ArrowError> for DaemonError {
    fn from(e: arrow::error::ArrowError) -> Self {
        DaemonError::DataFusion(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalize_chunks_are_short_and_stay_inside_the_hour() {
        let h = 1_767_261_600_000_000; // 10:00
        let m = WINDOW_MICROS;
        let none = BTreeMap::new();
        let end = |start, to| finalize_chunk_end(start, to, &none, 100);
        assert_eq!(end(h, h + 120 * m), h + 10 * m);
        assert_eq!(end(h + 55 * m, h + 120 * m), h + 60 * m);
        assert_eq!(end(h + 59 * m + 1, h + 120 * m), h + 60 * m);
        assert_eq!(end(h, h + 3 * m), h + 3 * m);
    }

    #[test]
    fn finalize_chunks_hold_the_event_budget() {
        let h = 1_767_261_600_000_000;
        let m = WINDOW_MICROS;
        let events: BTreeMap<i64, u64> =
            [(h, 40), (h + m, 40), (h + 2 * m, 40), (h + 3 * m, 500)].into();
        let end = |start| finalize_chunk_end(start, h + 60 * m, &events, 100);
        assert_eq!(end(h), h + 2 * m, "two windows fit, three do not");
        assert_eq!(end(h + 2 * m), h + 3 * m);
        // A window over the budget alone is still finalized, on its own.
        assert_eq!(end(h + 3 * m), h + 4 * m);
        assert_eq!(end(h + 4 * m), h + 14 * m, "empty windows cost nothing");
    }

    #[test]
    fn peak_rss_is_reported_on_linux() {
        let rss = peak_rss_bytes().expect("/proc/self/status has VmHWM");
        assert!(rss > 1 << 20, "{rss}");
    }

    #[test]
    fn late_events_do_not_reopen_final_windows() {
        let m = WINDOW_MICROS;
        let mut p = Progress::default();
        assert!(!p.observe(5 * m + 3));
        assert!(!p.observe(2 * m + 1));
        assert_eq!(p.first_open, Some(2 * m));
        p.finalized_through = Some(4 * m);
        p.first_open = Some(4 * m);
        assert!(p.observe(3 * m), "before the final bound: late");
        assert_eq!(p.first_open, Some(4 * m));
        assert!(!p.observe(4 * m));
    }
}

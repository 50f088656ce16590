//! The continuous micro-batch daemon: consume -> decode -> buffer -> epoch
//! (raw Parquet, checkpoint, offset commit) -> finalize the windows the
//! watermark has passed.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{BooleanArray, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use rdkafka::consumer::StreamConsumer;
use rdkafka::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::{EpochBatches, EpochBuffer, Message, Outcome};
use crate::checkpoint::{CheckpointError, Checkpoints, EpochRecord};
use crate::config::{Common, Run};
use crate::metrics::catalog::{self, CatalogError, Metric};
use crate::metrics::engine::{write_partitioned, EngineError, Finalizer};
use crate::schema::{EXECUTIONS_TOPIC, SIGNALS_TOPIC};
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
    /// Seconds from the first message to the last epoch commit.
    pub busy_seconds: f64,
}

impl RunSummary {
    /// Messages per second while there was work.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.busy_seconds.max(1e-9)
    }
}

/// Window progress, persisted in every commit record.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    next_epoch: u64,
    finalized_through: Option<i64>,
    first_open: Option<i64>,
}

impl Progress {
    fn observe(&mut self, event_time: i64) -> bool {
        let late = self.finalized_through.is_some_and(|f| event_time < f);
        if !late {
            let w = window_start(event_time);
            self.first_open = Some(self.first_open.map_or(w, |f| f.min(w)));
        }
        late
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
    summary: RunSummary,
    /// When the first message arrived: the start of throughput figures.
    first_message: Option<Instant>,
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
    let progress = match checkpoints.latest_commit().await? {
        Some(r) => Progress {
            next_epoch: r.epoch + 1,
            finalized_through: r.finalized_through,
            first_open: r.first_open,
        },
        None => Progress::default(),
    };
    let topics = common.topics.clone();
    let consumer = kafka::consumer(
        &common.brokers,
        &common.group,
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
        summary: RunSummary::default(),
        first_message: None,
    };
    d.main_loop(cancel).await?;
    Ok(d.summary)
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
                        let ingested_at = chrono::Utc::now().timestamp_micros();
                        let outcome = self.buffer.push(&msg, ingested_at);
                        self.account(&msg, outcome, last_message);
                    }
                    Ok(Err(e)) => warn!(error = %e, "kafka consumer error; retrying"),
                    Err(_) => {}
                }
            }
            if self.buffer.rows() >= self.run.max_rows || Instant::now() >= deadline {
                self.epoch(false).await?;
                deadline = Instant::now() + self.run.interval;
            }
            if let Some(idle) = self.run.stop_when_idle {
                if last_message.elapsed() >= idle {
                    info!(
                        idle_secs = idle.as_secs_f64(),
                        "no message for the idle period: finalizing every window and stopping"
                    );
                    self.epoch(true).await?;
                    return Ok(());
                }
            }
        }
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

    /// Closes the current epoch: raw files, finalization of the windows the
    /// watermark passed (all of them at end of input), commit record, then
    /// the Kafka offsets.
    async fn epoch(&mut self, end_of_input: bool) -> Result<(), DaemonError> {
        let bound = if end_of_input {
            self.tracker
                .max_event_time()
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
        let t0 = Instant::now();
        let batches = self.buffer.take();
        let mut record = EpochRecord {
            epoch: self.progress.next_epoch,
            ranges: EpochRecord::ranges_of(&batches.offsets),
            finalized_through: self.progress.finalized_through,
            first_open: self.progress.first_open,
            files: vec![],
        };
        self.checkpoints.begin(&record).await?;
        record.files = self.write_raw(&batches, record.epoch).await?;

        if let Some((from, to)) = finalize {
            let mut start = from;
            while start < to {
                // One hour at a time keeps memory bounded during catch-up.
                let end = to.min((start.div_euclid(3_600_000_000) + 1) * 3_600_000_000);
                let s = self.finalizer.finalize(&self.metrics, start, end).await?;
                self.summary.final_signals += s.signals as u64;
                self.summary.final_executions += s.executions as u64;
                self.summary.metric_rows += s.metric_rows.values().sum::<usize>() as u64;
                self.summary.metric_errors += s.metric_errors.len() as u64;
                record.files.extend(s.files);
                start = end;
            }
            self.progress.finalized_through = Some(to);
            self.progress.first_open = self
                .tracker
                .max_event_time()
                .filter(|t| *t >= to)
                .map(|_| to);
            record.finalized_through = self.progress.finalized_through;
            record.first_open = self.progress.first_open;
        }
        self.checkpoints.commit(&record).await?;
        if let Err(e) = kafka::commit(&self.consumer, &batches.offsets) {
            // The files are durable; a restart re-reads these messages and the
            // duplicates are removed when windows are finalized.
            warn!(epoch = record.epoch, error = %e, "offset commit failed");
        }
        self.progress.next_epoch += 1;
        self.summary.epochs += 1;
        if let Some(first) = self.first_message {
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

    async fn write_raw(&self, b: &EpochBatches, epoch: u64) -> Result<Vec<String>, DaemonError> {
        let stem = format!("epoch-{epoch:010}");
        let mut files = write_partitioned(
            &self.store,
            "raw/influencer_signals",
            std::slice::from_ref(&b.signals),
            "emitted_at",
            &stem,
        )
        .await?;
        files.extend(
            write_partitioned(
                &self.store,
                "raw/execution_results",
                std::slice::from_ref(&b.executions),
                "executed_at",
                &stem,
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
                    &stem,
                )
                .await?,
            );
        }
        Ok(files)
    }
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

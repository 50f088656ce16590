//! The continuous micro-batch daemon: consume -> decode -> buffer -> epoch
//! (raw Parquet, checkpoint, offset commit) -> finalize the windows the
//! watermark has passed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Offset;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::{EpochBatches, EpochBuffer, Message, Outcome};
use crate::checkpoint::{CheckpointError, Checkpoints, EpochRecord, PartitionOffset};
use crate::config::{Common, Run};
use crate::coordination::{
    global_watermark, host_name, now_ms, CoordinationError, Coordinator, FinalizerProgress,
    InstanceRecord, PartitionReport,
};
use crate::metrics::catalog::{self, CatalogError, Metric};
use crate::metrics::engine::{
    finalize_budget, plan_partitioned, write_planned, EngineError, FileNaming, Finalizer,
    PlannedFile,
};
use crate::metrics::running;
use crate::schema::{EXECUTIONS_TOPIC, SIGNALS_TOPIC};
use crate::sink::store::{OutputStore, StoreError};
use crate::source::kafka;
use crate::tables;
use crate::window::{
    chunk_end, final_bound, window_start, WatermarkTracker, HOUR_MICROS, WINDOW_MICROS,
};
use crate::{completeness, late};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Coordination(#[from] CoordinationError),
    #[error("{topic}/{partition} from offset {first} is claimed by instance {instance}'s epoch {epoch}, not committed yet: waiting for it")]
    Contended {
        topic: String,
        partition: i32,
        first: i64,
        instance: String,
        epoch: u64,
    },
    #[error("epoch {0}: its offset claims kept conflicting; trying again")]
    Unsettled(u64),
    #[error("--instance-id {0:?}: use letters, digits, '-', '_' and '.' only")]
    InstanceId(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("a background step of the daemon failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Counts over the daemon's life, returned when it stops.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    pub epochs: u64,
    pub messages: u64,
    pub signals: u64,
    pub executions: u64,
    pub dead_letters: u64,
    /// Valid events whose window was already final when their epoch
    /// committed (listed in `_late/`).
    pub late_events: u64,
    pub unknown_fields: u64,
    /// Distinct signals / executions written by finalization.
    pub final_signals: u64,
    pub final_executions: u64,
    pub metric_rows: u64,
    pub metric_errors: u64,
    /// Metric files (or versions of them) that failed their check when the
    /// daemon picked them up; the last good version kept running.
    pub definition_rejections: u64,
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

/// Attempts at writing one epoch before the daemon stops with the error
/// (about 4 minutes of backoff, on top of the store client's own retries).
const STORE_ATTEMPTS: u32 = 10;

/// Progress, persisted in every commit record.
#[derive(Debug, Clone, Default)]
struct Progress {
    next_epoch: u64,
    /// Windows starting before this are final (the finalizer's progress).
    finalized_through: Option<i64>,
    /// Earliest window holding this instance's committed, not final data.
    first_open: Option<i64>,
    /// Newest event time this instance committed.
    max_event_time: Option<i64>,
    /// Next offset to read per partition over every instance's committed
    /// epochs: a message below it is already on the store and is skipped.
    next_offsets: BTreeMap<(String, i32), i64>,
}

impl Progress {
    fn from_commit(r: &EpochRecord) -> Self {
        let mut p = Self {
            next_epoch: r.epoch + 1,
            finalized_through: r.finalized_through,
            first_open: r.first_open,
            max_event_time: r.max_event_time,
            next_offsets: BTreeMap::new(),
        };
        p.merge_offsets(r);
        p
    }

    fn merge_offsets(&mut self, r: &EpochRecord) {
        for o in &r.next_offsets {
            let next = self
                .next_offsets
                .entry((o.topic.clone(), o.partition))
                .or_insert(o.next);
            *next = (*next).max(o.next);
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

    /// Takes the finalizer's progress: windows before `through` are final.
    fn finalized(&mut self, through: i64) {
        self.finalized_through = Some(self.finalized_through.map_or(through, |f| f.max(through)));
        if self.first_open.is_some_and(|f| f < through) {
            self.first_open = Some(through);
        }
    }

    fn already_committed(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.next_offsets
            .get(&(topic.to_owned(), partition))
            .is_some_and(|next| offset < *next)
    }
}

struct Daemon {
    common: Common,
    run: Run,
    instance: String,
    store: OutputStore,
    checkpoints: Checkpoints,
    coordinator: Coordinator,
    /// Shared with the finalization task that runs beside the reading.
    finalizer: Arc<Finalizer>,
    metrics: Arc<Vec<Metric>>,
    consumer: Arc<StreamConsumer>,
    buffer: EpochBuffer,
    tracker: WatermarkTracker,
    progress: Progress,
    summary: RunSummary,
    /// When the first message arrived: the start of throughput figures.
    first_message: Option<Instant>,
    /// When the last message arrived: quiet input is the end of input.
    last_message: Instant,
    /// Time spent reading during the current epoch's work (`read_while`),
    /// the rest of which the partitions' idle clocks do not count.
    reading: Duration,
    /// Events per window not final yet, committed by this instance since it
    /// started: sizes the finalization chunks (windows read before a restart
    /// count as empty).
    window_events: BTreeMap<i64, u64>,
    /// Partitions this instance reads, as last seen.
    owned: BTreeSet<(String, i32)>,
    /// Partitions sought back to this offset after their rows were dropped:
    /// messages before it arrives are leftovers of the old position.
    resync: BTreeMap<(String, i32), i64>,
    /// The finalizer lease term this instance holds.
    term: Option<u64>,
    /// The definitions recorded on the store as running (`metrics::running`);
    /// rewritten when `metrics` moves away from them.
    recorded: Vec<Metric>,
    /// Metric file versions that failed their check (`catalog::rejection_key`),
    /// reported once each.
    rejected: HashSet<String>,
    /// Why the metric folder itself is unusable, while it is (reported once).
    folder_problem: Option<String>,
    /// For metrics added or changed while running: the window bound from
    /// which their current version finalizes.
    metric_since: BTreeMap<String, i64>,
}

/// A metric file version that failed its check when the daemon picked it
/// up: logged and counted in one place.
struct DefinitionRejected<'a> {
    metric: &'a str,
    file: &'a std::path::Path,
    problems: &'a str,
    /// Whether the last good version of the metric keeps running.
    kept: bool,
}

impl DefinitionRejected<'_> {
    fn emit(&self, summary: &mut RunSummary) {
        summary.definition_rejections += 1;
        let then = if self.kept {
            "the last good version keeps running"
        } else {
            "it does not run until fixed"
        };
        warn!(metric = self.metric, file = %self.file.display(), problems = self.problems,
              "metric definition rejected: {then}");
    }
}

/// Names safe in store paths and file names.
fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
}

/// Runs the daemon until `cancel` fires (or, with `stop_when_idle`, until the
/// topics have been quiet that long). The epoch in progress is written and
/// committed before returning.
pub async fn run(
    common: Common,
    run: Run,
    cancel: CancellationToken,
) -> Result<RunSummary, DaemonError> {
    let instance = common.instance_id.clone().unwrap_or_else(|| "main".into());
    if !valid_instance_id(&instance) {
        return Err(DaemonError::InstanceId(instance));
    }
    let store = OutputStore::open(&common.output, &common.s3)?;
    // What ran here last is the baseline the folder is compared with, as at
    // every reload: a file broken while the daemon was stopped keeps its
    // last good version running.
    let recorded = running::recorded(&store).await?;
    if recorded.is_empty() {
        // Nothing ran here before: an unusable folder (a wrong --sql-dir)
        // stops the start rather than leaving the daemon without metrics.
        catalog::load(&common.sql_dir)?;
    }
    let coordinator = Coordinator::new(
        store.clone(),
        &instance,
        run.instance_timeout.as_millis() as i64,
    );
    coordinator.check_not_in_use().await?;
    let checkpoints = Checkpoints::new(store.clone(), &instance);
    let last = checkpoints.latest_commit().await?;
    let mut progress = last.as_ref().map(Progress::from_commit).unwrap_or_default();
    // An epoch that began but never committed may have left part of its
    // files: they go, and its messages (uncommitted in Kafka) are read again.
    for record in checkpoints.pending(last.as_ref().map(|r| r.epoch)).await? {
        info!(
            epoch = record.epoch,
            files = record.files.len(),
            "an epoch was not committed before the last stop: abandoning its files, its messages are read again"
        );
        checkpoints.abort(&instance, &record).await?;
    }
    if let Some(p) = coordinator.progress().await? {
        progress.finalized(p.finalized_through);
    }
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
          instance = %instance, epoch = progress.next_epoch, "daemon started");
    let mut d = Daemon {
        tracker: WatermarkTracker::new(run.allowed_lateness, run.idle_timeout),
        buffer: EpochBuffer::new(topics),
        common,
        run,
        instance,
        store,
        checkpoints,
        coordinator,
        finalizer: Arc::new(finalizer),
        metrics: Arc::new(recorded.clone()),
        recorded,
        consumer: Arc::new(consumer),
        progress,
        summary: RunSummary::default(),
        first_message: None,
        last_message: Instant::now(),
        reading: Duration::ZERO,
        window_events: BTreeMap::new(),
        owned: BTreeSet::new(),
        resync: BTreeMap::new(),
        term: None,
        rejected: HashSet::new(),
        folder_problem: None,
        metric_since: BTreeMap::new(),
    };
    d.reload_metrics(false).await;
    info!(metrics = d.metrics.len(), "metrics running");
    d.load_next_offsets().await?;
    d.main_loop(cancel).await?;
    // Others need not wait for this instance's heartbeat to expire.
    if let Err(e) = d.publish(true).await {
        warn!(error = %e, "could not record the stop; others take over after --instance-timeout");
    }
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
        self.last_message = Instant::now();
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
                r = tokio::time::timeout(wait, consumer.recv()) => {
                    // A timeout only means the epoch deadline came first.
                    if let Ok(r) = r {
                        self.receive(r).await?;
                    }
                }
            }
            if self.buffer.rows() >= self.run.max_rows || Instant::now() >= deadline {
                let started = Instant::now();
                self.reading = Duration::ZERO;
                self.epoch(false).await?;
                // A whole interval of reading follows every epoch, however
                // long the epoch's work took.
                deadline = Instant::now() + self.run.interval;
                let away = started.elapsed().saturating_sub(self.reading);
                self.tracker.pause(away, Instant::now());
            }
            if let Some(idle) = self.run.stop_when_idle {
                // Quiet is not enough (a broker restart is quiet too): the end
                // of input is quiet *and* read up to every partition's end.
                if self.last_message.elapsed() >= idle
                    && self.caught_up()
                    && self.epoch(true).await?
                {
                    info!(
                        idle_secs = idle.as_secs_f64(),
                        "every partition read to its end and quiet, every window final: stopping"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// Takes one message (or error) from the consumer.
    async fn receive(
        &mut self,
        r: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) -> Result<(), DaemonError> {
        match r {
            Ok(m) => {
                let now = Instant::now();
                self.last_message = now;
                self.first_message.get_or_insert(now);
                self.handle(&kafka::message(&m), now).await
            }
            Err(e) => {
                warn!(error = %e, "kafka consumer error; retrying");
                Ok(())
            }
        }
    }

    /// Awaits `task` while reading on: messages that arrive meanwhile go
    /// into the current epoch, up to its row limit (the memory budget holds
    /// a full epoch beside a finalization chunk), so reading and the task's
    /// work overlap on two cores instead of taking turns.
    async fn read_while<T>(
        &mut self,
        mut task: tokio::task::JoinHandle<T>,
    ) -> Result<T, DaemonError> {
        let consumer = self.consumer.clone();
        let started = Instant::now();
        while self.buffer.rows() < self.run.max_rows {
            let received = tokio::select! {
                biased;
                done = &mut task => {
                    self.reading += started.elapsed();
                    return Ok(done?);
                }
                r = consumer.recv() => self.receive(r).await,
            };
            if let Err(e) = received {
                // Never leave the task running on its own: it would race the
                // retry of its own chunk.
                let _ = task.await;
                return Err(e);
            }
        }
        // The epoch is full: from here on nothing is read.
        self.reading += started.elapsed();
        Ok(task.await?)
    }

    /// Routes one message: skipped if already on the store, else into the
    /// current epoch.
    async fn handle(&mut self, m: &Message<'_>, now: Instant) -> Result<(), DaemonError> {
        // Per message: compare in place rather than build a key (a handful
        // of partitions, and usually no resync at all).
        let same = |(t, p): &(String, i32)| t == m.topic && *p == m.partition;
        if !self.owned.iter().any(same) {
            // A partition new to this instance: what others committed of it
            // must be known before its first message is taken.
            self.refresh_assignment();
            self.owned.insert((m.topic.to_owned(), m.partition));
            self.load_next_offsets().await?;
        }
        if let Some((key, &want)) = self.resync.iter().find(|(k, _)| same(k)) {
            if m.offset != want {
                self.summary.already_committed += 1;
                return Ok(());
            }
            let key = key.clone();
            self.resync.remove(&key);
        }
        if self.buffer.holds(m.topic, m.partition, m.offset)
            || self
                .progress
                .already_committed(m.topic, m.partition, m.offset)
        {
            self.summary.already_committed += 1;
            return Ok(());
        }
        let ingested_at = chrono::Utc::now().timestamp_micros();
        let outcome = self.buffer.push(m, ingested_at);
        self.account(m, outcome, now);
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
                // Late events are counted when their epoch commits (`_late/`).
                if !self.progress.observe(event_time) {
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

    /// Closes the current epoch: writes and commits what it read, tells the
    /// other instances where this one stands, then (as the finalizer lease
    /// holder) finalizes the windows every partition's watermark has passed.
    /// At `end_of_input`, returns whether every window is final.
    async fn epoch(&mut self, end_of_input: bool) -> Result<bool, DaemonError> {
        self.refresh_assignment();
        if !self.buffer.is_empty() {
            let batches = self.buffer.take();
            self.commit_epoch(batches).await?;
        }
        self.reload_metrics(true).await;
        // Coordination is retried at the next epoch: a failure here delays
        // finalization, it loses nothing.
        match self.coordinate(end_of_input).await {
            Ok(done) => Ok(done),
            Err(e) => {
                warn!(error = %e, "finalization step failed; retrying at the next epoch");
                Ok(false)
            }
        }
    }

    /// Picks up changed, added and removed metric files. Called between
    /// finalizations, so every window is finalized with one version of
    /// each definition. `settle`: leave files saved within the last second
    /// for later (not at start, when nothing is being saved as we look).
    async fn reload_metrics(&mut self, settle: bool) {
        let dir = self.common.sql_dir.clone();
        let r = match catalog::reload(&self.metrics, &dir, &self.rejected, settle).await {
            Ok(r) => r,
            Err(e) => {
                // An unreadable or emptied folder: keep what runs, say it once.
                let e = e.to_string();
                if self.folder_problem.as_ref() != Some(&e) {
                    DefinitionRejected {
                        metric: "*",
                        file: &dir,
                        problems: &e,
                        kept: true,
                    }
                    .emit(&mut self.summary);
                    self.folder_problem = Some(e);
                }
                return;
            }
        };
        self.folder_problem = None;
        if !r.is_empty() {
            self.take_reload(r);
        }
        if !running::same(&self.recorded, &self.metrics) {
            match running::record(&self.store, &self.recorded, &self.metrics).await {
                Ok(()) => self.recorded = self.metrics.to_vec(),
                // Tried again at the next epoch; meanwhile a restart would
                // compare the folder with the versions that ran before.
                Err(e) => warn!(error = %e, "could not record the running metric definitions"),
            }
        }
    }

    /// Reports what a reload found and runs its catalog from now on.
    fn take_reload(&mut self, r: catalog::Reload) {
        for (m, problems) in &r.rejected {
            self.rejected.insert(catalog::rejection_key(m));
            let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            DefinitionRejected {
                metric: &m.name,
                file: &m.path,
                problems: &problems.join("; "),
                kept: r.catalog.iter().any(|c| c.name == m.name),
            }
            .emit(&mut self.summary);
        }
        for (names, what) in [
            (&r.added, "metric added"),
            (&r.changed, "metric changed"),
            (&r.removed, "metric removed"),
        ] {
            for name in names {
                let hash = r
                    .catalog
                    .iter()
                    .find(|m| &m.name == name)
                    .map(|m| m.definition_hash());
                info!(metric = %name, definition_sha256 = hash.as_deref().unwrap_or("-"), "{what}: \
                      windows finalized from now on follow it (reprocess applies it to earlier ones)");
            }
        }
        // Windows from the finalizer's bound on run the new versions.
        let since = self.progress.finalized_through.unwrap_or(i64::MIN);
        for name in r.added.iter().chain(&r.changed) {
            self.metric_since.insert(name.clone(), since);
        }
        self.metrics = Arc::new(r.catalog);
    }

    /// Writes and commits an epoch, retrying with backoff while the store
    /// fails (an S3 outage, a full disk) or another instance's unfinished
    /// epoch holds some of its offsets: consumption pauses meanwhile, nothing
    /// is committed, and every attempt rewrites the same files. Gives up with
    /// the error after `STORE_ATTEMPTS`.
    async fn commit_epoch(&mut self, mut batches: EpochBatches) -> Result<(), DaemonError> {
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            match self.try_epoch(&mut batches).await {
                Err(e) if attempt < STORE_ATTEMPTS => {
                    warn!(epoch = self.progress.next_epoch, attempt, retry_in_secs = delay.as_secs(), error = %e,
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

    /// One attempt at an epoch: claims its offset ranges, records them with
    /// the planned files, writes the raw files, the commit record, then the
    /// Kafka offsets. File names depend only on the instance, the epoch and
    /// the hours, so writing the same epoch again replaces its files.
    async fn try_epoch(&mut self, batches: &mut EpochBatches) -> Result<(), DaemonError> {
        let t0 = Instant::now();
        let mut settled = false;
        for _ in 0..16 {
            if self.claim(batches).await? {
                settled = true;
                break;
            }
        }
        if !settled {
            return Err(DaemonError::Unsettled(self.progress.next_epoch));
        }
        if batches.offsets.is_empty() {
            return Ok(()); // every range was somebody else's
        }
        let epoch = self.progress.next_epoch;
        let plan = self.plan_raw(batches, epoch)?;
        let mut record = EpochRecord {
            epoch,
            ranges: EpochRecord::ranges_of(&batches.offsets),
            finalized_through: self.progress.finalized_through,
            first_open: self.progress.first_open,
            max_event_time: self.progress.max_event_time,
            next_offsets: vec![],
            files: plan.iter().map(|(rel, _)| rel.clone()).collect(),
        };
        self.checkpoints.begin(&record).await?;
        write_planned(&self.store, &plan).await?;
        let mut next_offsets = self.progress.next_offsets.clone();
        for r in &record.ranges {
            let next = next_offsets
                .entry((r.topic.clone(), r.partition))
                .or_insert(r.last + 1);
            *next = (*next).max(r.last + 1);
        }
        let max_event_time = self.progress.max_event_time.max(batches.max_event_time());
        record.max_event_time = max_event_time;
        record.next_offsets = next_offsets
            .iter()
            .map(|((topic, partition), next)| PartitionOffset {
                topic: topic.clone(),
                partition: *partition,
                next: *next,
            })
            .collect();
        self.checkpoints.commit(&record).await?;
        // Committed: only now does the progress move.
        self.progress.next_offsets = next_offsets;
        self.progress.max_event_time = max_event_time;
        if let Err(e) = kafka::commit(&self.consumer, &batches.offsets) {
            // The files and the commit record are durable and carry the
            // offsets; a restart skips what they cover.
            warn!(epoch, error = %e, "offset commit failed");
        }
        self.progress.next_epoch = epoch + 1;
        self.summary.epochs += 1;
        self.count_late(&plan);
        // Throughput counts the time spent on messages, not idle waits.
        if let Some(first) = self.first_message {
            self.summary.busy_seconds = first.elapsed().as_secs_f64();
        }
        info!(
            epoch,
            signals = batches.signals.num_rows(),
            executions = batches.executions.num_rows(),
            dead_letters = batches.dead_letters.num_rows(),
            files = record.files.len(),
            epoch_ms = t0.elapsed().as_millis() as u64,
            events_per_sec = self.summary.rate() as u64,
            "epoch committed"
        );
        Ok(())
    }

    /// Claims the epoch's ranges. A range another instance already committed
    /// is dropped from the epoch (its rows are duplicates) and its partition
    /// read on from there; a claim of a gone instance's unfinished epoch is
    /// cleared by abandoning that epoch. Returns true once every remaining
    /// range is this instance's; an unfinished epoch of a live instance is an
    /// error to retry.
    async fn claim(&mut self, batches: &mut EpochBatches) -> Result<bool, DaemonError> {
        let record = EpochRecord {
            epoch: self.progress.next_epoch,
            ranges: EpochRecord::ranges_of(&batches.offsets),
            finalized_through: None,
            first_open: None,
            max_event_time: None,
            next_offsets: vec![],
            files: vec![],
        };
        let taken = self.checkpoints.claim(&record).await?;
        if taken.is_empty() {
            return Ok(true);
        }
        let records = self.coordinator.records().await?;
        for (range, claim) in taken {
            let holder = self
                .checkpoints
                .committed(&claim.instance, claim.epoch)
                .await?;
            if let Some(done) = holder {
                let same = done.ranges.iter().find(|r| {
                    r.topic == range.topic
                        && r.partition == range.partition
                        && r.first == range.first
                });
                match same {
                    Some(r) => {
                        warn!(topic = %range.topic, partition = range.partition, first = range.first,
                              by = %claim.instance, "these messages were already written by another instance: dropped from this epoch");
                        batches.without(
                            &range.topic,
                            range.partition,
                            &self.common.topics.signals,
                        )?;
                        self.load_next_offsets().await?;
                        let key = (range.topic.clone(), range.partition);
                        let next = self
                            .progress
                            .next_offsets
                            .get(&key)
                            .copied()
                            .unwrap_or(r.last + 1);
                        if self.owned.contains(&key)
                            && self
                                .consumer
                                .seek(
                                    &range.topic,
                                    range.partition,
                                    Offset::Offset(next),
                                    Duration::from_secs(5),
                                )
                                .is_ok()
                        {
                            self.resync.insert(key, next);
                        }
                    }
                    // A claim its epoch did not use (written before a crash).
                    None => self.checkpoints.release(&range, &claim).await?,
                }
                continue;
            }
            let gone = claim.instance == self.instance
                || !self.coordinator.is_alive(&records, &claim.instance);
            if !gone {
                return Err(DaemonError::Contended {
                    topic: range.topic,
                    partition: range.partition,
                    first: range.first,
                    instance: claim.instance,
                    epoch: claim.epoch,
                });
            }
            match self.checkpoints.begun(&claim.instance, claim.epoch).await? {
                Some(r) => {
                    warn!(instance = %claim.instance, epoch = claim.epoch, files = r.files.len(),
                          "abandoning the unfinished epoch of an instance that is gone");
                    self.checkpoints.abort(&claim.instance, &r).await?;
                }
                None => self.checkpoints.release(&range, &claim).await?,
            }
        }
        Ok(false)
    }

    /// What this instance committed, as the other instances need it.
    fn instance_record(&self, stopped: bool) -> InstanceRecord {
        let now = Instant::now();
        InstanceRecord {
            instance: self.instance.clone(),
            host: host_name(),
            pid: std::process::id(),
            heartbeat_ms: now_ms(),
            stopped,
            partitions: self
                .tracker
                .partitions(now)
                .into_iter()
                .map(
                    |((topic, partition), max_event_time, idle)| PartitionReport {
                        topic,
                        partition,
                        max_event_time,
                        idle,
                    },
                )
                .collect(),
            window_events: self.window_events.iter().map(|(w, n)| (*w, *n)).collect(),
            first_open: self.progress.first_open,
        }
    }

    async fn publish(&self, stopped: bool) -> Result<(), DaemonError> {
        Ok(self
            .coordinator
            .publish(&self.instance_record(stopped))
            .await?)
    }

    /// Publishes this instance's record, then, holding the finalizer lease,
    /// finalizes what every partition's watermark has passed (at the end of
    /// input: everything, once the store holds every partition to its end).
    /// Returns whether every window is final at the end of input.
    async fn coordinate(&mut self, end_of_input: bool) -> Result<bool, DaemonError> {
        self.publish(false).await?;
        if let Some(p) = self.coordinator.progress().await? {
            self.progress.finalized(p.finalized_through);
        }
        let records = self.coordinator.records().await?;
        let term = self.coordinator.lease(&records).await?;
        if term.is_some() && term != self.term {
            info!(term, "holding the finalizer lease");
        }
        self.term = term;
        let Some(term) = term else {
            return Ok(false);
        };
        let partitions = self.all_partitions()?;
        let (watermark, bound) = if end_of_input {
            self.load_next_offsets().await?;
            if !self.store_holds_everything(&partitions) {
                return Ok(false);
            }
            let newest = records
                .iter()
                .flat_map(|r| r.partitions.iter().filter_map(|p| p.max_event_time))
                .chain(self.progress.max_event_time)
                .max();
            (None, newest.map(|t| window_start(t) + WINDOW_MICROS))
        } else {
            let w = global_watermark(
                &records,
                &partitions,
                self.run.allowed_lateness.as_micros() as i64,
            );
            (w, w.map(final_bound))
        };
        let from = self.progress.finalized_through.or_else(|| {
            records
                .iter()
                .filter_map(|r| r.first_open)
                .chain(self.progress.first_open)
                .min()
        });
        let (Some(from), Some(to)) = (from, bound) else {
            return Ok(end_of_input && from.is_none());
        };
        if from < to {
            let mut events: BTreeMap<i64, u64> = BTreeMap::new();
            for (w, n) in records.iter().flat_map(|r| r.window_events.iter()) {
                *events.entry(*w).or_default() += n;
            }
            self.finalize(term, from, to, watermark, &events).await?;
        }
        Ok(true)
    }

    /// Finalizes `[from, to)` in chunks sized to the memory budget, advancing
    /// the finalizer's progress after each; stops if the lease was lost.
    /// `watermark` made the windows final (`None`: the end of input did).
    async fn finalize(
        &mut self,
        term: u64,
        from: i64,
        to: i64,
        watermark: Option<i64>,
        events: &BTreeMap<i64, u64>,
    ) -> Result<(), DaemonError> {
        let budget = finalize_budget(self.run.memory_limit);
        let mut start = from;
        while start < to {
            if !self.coordinator.holds(term).await? {
                warn!(term, "the finalizer lease moved to another instance");
                self.term = None;
                return Ok(());
            }
            let end = chunk_end(start, to, events, budget);
            let chunk = {
                let (finalizer, metrics) = (self.finalizer.clone(), self.metrics.clone());
                tokio::spawn(async move { finalizer.finalize(&metrics, start, end).await })
            };
            let s = self.read_while(chunk).await??;
            self.summary.final_signals += s.signals as u64;
            self.summary.final_executions += s.executions as u64;
            self.summary.metric_rows += s.metric_rows.values().sum::<usize>() as u64;
            self.summary.metric_errors += s.metric_errors.len() as u64;
            if end % HOUR_MICROS == 0 {
                // Chunks never cross an hour: this one completed it.
                let tables = self.final_tables(end - HOUR_MICROS);
                let marker = completeness::marker(
                    &tables,
                    end - HOUR_MICROS,
                    watermark,
                    &self.instance,
                    term,
                )?;
                write_planned(&self.store, &[marker]).await?;
            }
            self.coordinator
                .set_progress(FinalizerProgress {
                    finalized_through: end,
                    term,
                })
                .await?;
            self.progress.finalized(end);
            self.window_events = self.window_events.split_off(&end);
            start = end;
        }
        info!(finalized_through = %crate::metrics::engine::format_bound(to), "windows final");
        Ok(())
    }

    /// The tables finalization writes: the final rows and every metric.
    /// A metric counts for the hour starting at `hour` only if its current
    /// version ran for all of it: one added or changed mid-hour is left out
    /// of that hour's marker (a reprocess of the hour completes it).
    fn final_tables(&self, hour: i64) -> Vec<String> {
        [tables::SIGNALS, tables::EXECUTIONS_ENRICHED]
            .into_iter()
            .map(str::to_owned)
            .chain(
                self.metrics
                    .iter()
                    .filter(|m| self.metric_since.get(&m.name).is_none_or(|s| *s <= hour))
                    .map(|m| m.name.clone()),
            )
            .collect()
    }

    /// Merges every instance's newest commit into the skip map.
    async fn load_next_offsets(&mut self) -> Result<(), DaemonError> {
        for instance in self.checkpoints.instances().await? {
            if let Some(r) = self.checkpoints.latest_commit_of(&instance).await? {
                self.progress.merge_offsets(&r);
            }
        }
        Ok(())
    }

    /// Every partition of both topics.
    fn all_partitions(&self) -> Result<Vec<(String, i32)>, DaemonError> {
        let mut out = vec![];
        for topic in self.common.topics.both() {
            let md = self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in md.topics() {
                out.extend(t.partitions().iter().map(|p| (t.name().to_owned(), p.id())));
            }
        }
        Ok(out)
    }

    /// Whether the store holds every partition up to its end, whoever read it.
    fn store_holds_everything(&self, partitions: &[(String, i32)]) -> bool {
        partitions.iter().all(|(topic, partition)| {
            match self
                .consumer
                .fetch_watermarks(topic, *partition, Duration::from_secs(5))
            {
                Ok((low, high)) => {
                    let next = self
                        .progress
                        .next_offsets
                        .get(&(topic.clone(), *partition))
                        .copied()
                        .unwrap_or(low);
                    next >= high
                }
                Err(_) => false,
            }
        })
    }

    /// Whether every assigned partition has been read up to its end.
    fn caught_up(&self) -> bool {
        let timeout = Duration::from_secs(5);
        let Ok(positions) = self.consumer.position() else {
            return false;
        };
        let parts = positions.elements();
        parts.iter().all(|e| {
            match self
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), timeout)
            {
                Ok((low, high)) => {
                    // Nothing read since the assignment: the store says how
                    // far it was read before.
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
    /// partition whose backlog has not arrived yet holds it back; forgets
    /// the resync of partitions that came back.
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
            if !self.owned.contains(&(topic.clone(), *partition)) {
                self.resync.remove(&(topic.clone(), *partition));
            }
            self.tracker.assign(topic, *partition, now);
        }
        self.tracker
            .retain(|t, p| owned.contains(&(t.to_owned(), p)));
        self.owned.retain(|k| owned.contains(k));
    }

    /// Counts the late events of a committed epoch, by topic and lateness.
    fn count_late(&mut self, plan: &[PlannedFile]) {
        let mut buckets: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for (rel, batches) in plan.iter().filter(|(rel, _)| rel.starts_with("_late/")) {
            let topic = rel.split('/').nth(1).unwrap_or_default();
            for b in batches {
                let secs = b
                    .column_by_name("seconds_late")
                    .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned());
                for s in secs.iter().flat_map(|a| a.iter().flatten()) {
                    *buckets
                        .entry((topic, late::lateness_bucket(s)))
                        .or_default() += 1;
                }
            }
        }
        for ((topic, bucket), n) in buckets {
            self.summary.late_events += n;
            warn!(topic, lateness = bucket, events = n,
                  "late events: kept in raw/ and listed in _late/, left out of final windows until reprocessed");
        }
    }

    /// The epoch's raw files: one per table and hour, named after the
    /// instance and the epoch; and its late events.
    fn plan_raw(&self, b: &EpochBatches, epoch: u64) -> Result<Vec<PlannedFile>, DaemonError> {
        let stem = format!("{}-epoch-{epoch:010}", self.instance);
        let mut plan = plan_partitioned(
            "raw/influencer_signals",
            std::slice::from_ref(&b.signals),
            "emitted_at",
            FileNaming::Epoch(&stem),
        )?;
        plan.extend(plan_partitioned(
            "raw/execution_results",
            std::slice::from_ref(&b.executions),
            "executed_at",
            FileNaming::Epoch(&stem),
        )?);
        // Folders are named after the contract topic whatever the configured
        // topic names; the `topic` column keeps the real one.
        let topics = &self.common.topics;
        for (topic, folder) in [
            (&topics.signals, SIGNALS_TOPIC),
            (&topics.executions, EXECUTIONS_TOPIC),
        ] {
            let dead = rows_of_topic(&b.dead_letters, topic)?;
            plan.extend(plan_partitioned(
                &tables::dead_letter_folder(folder),
                &[dead],
                "kafka_timestamp",
                FileNaming::Epoch(&stem),
            )?);
        }
        // Before the bound the finalizer has reached, a window is final: its
        // events here are late (finalization only ever moves forward).
        if let Some(bound) = self.progress.finalized_through {
            for (rows, topic, folder, id, time) in [
                (
                    &b.signals,
                    &topics.signals,
                    SIGNALS_TOPIC,
                    "signal_id",
                    "emitted_at",
                ),
                (
                    &b.executions,
                    &topics.executions,
                    EXECUTIONS_TOPIC,
                    "execution_id",
                    "executed_at",
                ),
            ] {
                let late = late::late_rows(rows, topic, id, time, bound)?;
                plan.extend(plan_partitioned(
                    &tables::late_folder(folder),
                    &[late],
                    "event_time",
                    FileNaming::Epoch(&stem),
                )?);
            }
        }
        Ok(plan)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_safe_in_paths() {
        for ok in ["main", "a", "eu-west-1.node_2"] {
            assert!(valid_instance_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "..", ".hidden", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_instance_id(bad), "{bad}");
        }
    }

    #[test]
    fn progress_takes_the_furthest_offsets_and_the_finalizer_bound() {
        let offsets = |next| EpochRecord {
            epoch: 1,
            ranges: vec![],
            finalized_through: None,
            first_open: None,
            max_event_time: None,
            next_offsets: vec![PartitionOffset {
                topic: "t".into(),
                partition: 0,
                next,
            }],
            files: vec![],
        };
        let mut p = Progress::from_commit(&offsets(10));
        p.merge_offsets(&offsets(7));
        assert!(p.already_committed("t", 0, 9));
        assert!(!p.already_committed("t", 0, 10));
        p.merge_offsets(&offsets(20));
        assert!(p.already_committed("t", 0, 19));
        let m = WINDOW_MICROS;
        p.observe(3 * m);
        p.finalized(5 * m);
        assert_eq!(
            (p.finalized_through, p.first_open),
            (Some(5 * m), Some(5 * m))
        );
        p.finalized(4 * m);
        assert_eq!(p.finalized_through, Some(5 * m), "never moves back");
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

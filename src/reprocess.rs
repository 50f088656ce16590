//! `reprocess --from --to`: recomputes the final tables and metrics of a
//! range of final windows from the raw Parquet on the store, late events
//! included, and replaces what was there.
//!
//! Each window's rows live in one file per table named after the window, so
//! writing a window again replaces its file; a window file the recomputation
//! no longer produces (a key that disappeared) is deleted afterwards. A
//! reader during the swap sees, per window file, either the old or the new
//! rows, never a mix within a file. Only final windows are touched (the
//! daemon only finalizes later ones), so it is safe while the daemon runs.
//! Reprocesses of overlapping ranges exclude each other: each holds a lock
//! `_finalizer/reprocess/<from>_<to>.json`, created only if absent, and
//! gives way when another live lock overlaps its range; the lock of a
//! process that died on this host is taken over, so an interrupted
//! reprocess is simply run again.
//!
//! With `--source kafka` the events come from the topics again instead of
//! `raw/`: read into a scratch folder `_reprocess/<from>_<to>/raw/`, which
//! the same finalization then reads, and deleted at the end.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use std::io::IsTerminal;
use std::time::Instant;

use bytes::Bytes;
use chrono::DateTime;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::config::Common;
use crate::coordination::{host_name, now_ms, process_gone, CoordinationError, Coordinator};
use crate::metrics::catalog::{self, CatalogError};
use crate::metrics::engine::{finalize_budget, format_bound, EngineError, Finalizer};
use crate::metrics::running;
use crate::query::{self, QueryError};
use crate::sink::partition::HourPartition;
use crate::sink::store::{OutputStore, StoreError};
use crate::source::replay::{self, ReplayError};
use crate::tables;
use crate::window::{chunk_end, window_start, WINDOW_MICROS};

/// Options of `reprocess`.
#[derive(Debug, Clone, Args)]
pub struct ReprocessOpts {
    /// Start of the range (RFC 3339, e.g. 2026-01-01T10:00:00Z); rounded
    /// down to its window.
    #[arg(long)]
    pub from: String,
    /// End of the range, exclusive (RFC 3339); rounded up to a window end.
    #[arg(long)]
    pub to: String,
    /// Only these metrics (comma-separated names of `sql/` files); the final
    /// tables `signals` and `executions_enriched` are always recomputed.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Print the plan (hour partitions, raw rows, files) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Memory ceiling of the query engine, e.g. 2GiB [default: 1GiB].
    #[arg(long, default_value = "1GiB")]
    pub memory_limit: String,
    /// Hours a signal may precede its executions and still be joined.
    #[arg(long, default_value_t = 24.0)]
    pub lookback_hours: f64,
    /// Where the events come from: `raw` (the raw Parquet on the store) or
    /// `kafka` (the topics again, each partition from the first offset
    /// stamped at or after the range start, less the lookback and an hour
    /// of clock skew, up to its end when the reprocess starts).
    #[arg(long, value_enum, default_value_t = Source::Raw)]
    pub source: Source,
}

/// Where `reprocess` reads the events of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    Raw,
    Kafka,
}

#[derive(Debug, thiserror::Error)]
pub enum ReprocessError {
    #[error("--{option} {value:?}: {reason}")]
    Invalid {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "windows from {final_through} on are not final yet (range ends {to}): \
         only final windows are reprocessed; the daemon finalizes the others"
    )]
    NotFinal { final_through: String, to: String },
    #[error(
        "another reprocess of {from}..{to}, which overlaps this range, is running \
         ({host} pid {pid}, started {age_secs} s ago): run this one when it is done"
    )]
    Busy {
        from: String,
        to: String,
        host: String,
        pid: u32,
        age_secs: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Coordination(#[from] CoordinationError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("reading the range from Kafka: {0}")]
    Replay(#[from] ReplayError),
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// What a reprocess did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReprocessSummary {
    pub windows: usize,
    pub hours: usize,
    pub raw_events: u64,
    pub signals: u64,
    pub executions: u64,
    pub metric_rows: u64,
    pub files_written: usize,
    pub files_deleted: usize,
    pub seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Lock {
    from: String,
    to: String,
    from_us: i64,
    to_us: i64,
    host: String,
    pid: u32,
    started_ms: i64,
}

const LOCKS: &str = "_finalizer/reprocess";

/// The lock file of a reprocess of `[from, to)`.
fn lock_path(from: i64, to: i64) -> String {
    format!("{LOCKS}/{}_{}.json", format_bound(from), format_bound(to))
}

/// Scratch folder of a `--source kafka` reprocess of `[from, to)`.
fn scratch_folder(from: i64, to: i64) -> String {
    format!("_reprocess/{}_{}", format_bound(from), format_bound(to))
}

/// The window range `[from, to)` of the options: `from` rounded down, `to`
/// rounded up to window boundaries.
pub fn window_range(from: &str, to: &str) -> Result<(i64, i64), ReprocessError> {
    let parse = |option: &'static str, v: &str| {
        DateTime::parse_from_rfc3339(v)
            .map(|t| t.timestamp_micros())
            .map_err(|e| ReprocessError::Invalid {
                option,
                value: v.to_owned(),
                reason: format!("not an RFC 3339 time ({e})"),
            })
    };
    let from = window_start(parse("from", from)?);
    let to_raw = parse("to", to)?;
    let to = if to_raw == window_start(to_raw) {
        to_raw
    } else {
        window_start(to_raw) + WINDOW_MICROS
    };
    if from >= to {
        return Err(ReprocessError::Invalid {
            option: "to",
            value: to.to_string(),
            reason: "must be after --from".into(),
        });
    }
    Ok((from, to))
}

/// Window files a finalization of `[from, to)` writes in `folder`.
fn window_files(folder: &str, from: i64, to: i64) -> BTreeSet<String> {
    (from..to)
        .step_by(WINDOW_MICROS as usize)
        .map(|w| {
            format!(
                "{folder}/{}/w-{}.parquet",
                HourPartition::of(w).path(),
                format_bound(w)
            )
        })
        .collect()
}

fn busy(held: Lock) -> ReprocessError {
    ReprocessError::Busy {
        from: held.from,
        to: held.to,
        host: held.host,
        pid: held.pid,
        age_secs: (now_ms() - held.started_ms) / 1000,
    }
}

/// Takes the lock of `[from, to)` and returns its path, or says which
/// running reprocess overlaps. Two that start together over overlapping
/// ranges may both give way; neither runs with the other.
async fn lock(store: &OutputStore, from: i64, to: i64) -> Result<String, ReprocessError> {
    let mine = Lock {
        from: format_bound(from),
        to: format_bound(to),
        from_us: from,
        to_us: to,
        host: host_name(),
        pid: std::process::id(),
        started_ms: now_ms(),
    };
    let path = lock_path(from, to);
    let json = Bytes::from(serde_json::to_vec(&mine).expect("locks serialize"));
    let mut created = false;
    for _ in 0..2 {
        if store.create(&path, json.clone()).await? {
            created = true;
            break;
        }
        match store.get(&path).await? {
            Some(held) => match serde_json::from_slice::<Lock>(&held) {
                Ok(held) if !process_gone(&held.host, held.pid) => return Err(busy(held)),
                // Its process died, or the record is torn: take it over.
                _ => store.delete(&path).await?,
            },
            None => continue,
        }
    }
    if !created {
        return Err(busy(mine));
    }
    for (other, _) in store.list(LOCKS).await? {
        if other == path {
            continue;
        }
        let Some(bytes) = store.get(&other).await? else {
            continue; // released meanwhile
        };
        let Ok(held) = serde_json::from_slice::<Lock>(&bytes) else {
            continue; // not a lock of this format
        };
        if process_gone(&held.host, held.pid) {
            store.delete(&other).await?;
        } else if held.from_us < to && from < held.to_us {
            store.delete(&path).await?;
            return Err(busy(held));
        }
    }
    Ok(path)
}

/// Recomputes `[from, to)`, printing progress to stderr.
pub async fn reprocess(
    common: &Common,
    opts: &ReprocessOpts,
) -> Result<ReprocessSummary, ReprocessError> {
    let (from, to) = window_range(&opts.from, &opts.to)?;
    let memory_limit =
        crate::config::parse_bytes(&opts.memory_limit).map_err(|e| ReprocessError::Invalid {
            option: "memory-limit",
            value: opts.memory_limit.clone(),
            reason: e.to_string(),
        })?;
    let store = OutputStore::open(&common.output, &common.s3)?;
    let mut metrics = catalog::load(&common.sql_dir)?;
    if !opts.metrics.is_empty() {
        for name in &opts.metrics {
            if !metrics.iter().any(|m| &m.name == name) {
                let known: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
                return Err(ReprocessError::Invalid {
                    option: "metrics",
                    value: name.clone(),
                    reason: format!("no such metric; known: {}", known.join(", ")),
                });
            }
        }
        metrics.retain(|m| opts.metrics.contains(&m.name));
    }
    catalog::check(&metrics).await?;
    // The column rule holds here as in the daemon: against the versions
    // that wrote the files.
    let breaks = running::evolution_problems(&store, &metrics).await?;
    if !breaks.is_empty() {
        return Err(CatalogError::Invalid(breaks).into());
    }
    let coordinator = Coordinator::new(store.clone(), "reprocess", 0);
    let final_through = coordinator.progress().await?.map(|p| p.finalized_through);
    if final_through.is_none_or(|f| to > f) {
        return Err(ReprocessError::NotFinal {
            final_through: final_through.map_or("the start".into(), format_bound),
            to: format_bound(to),
        });
    }
    let folders: Vec<String> = [tables::SIGNALS, tables::EXECUTIONS_ENRICHED]
        .into_iter()
        .map(tables::folder_of)
        .chain(metrics.iter().map(|m| format!("metrics/{}", m.name)))
        .collect();
    let lookback_us = (opts.lookback_hours * 3600e6) as i64;
    let job = Job {
        from,
        to,
        folders,
        metrics,
        memory_limit,
        lookback_us,
        replay: replay::Range {
            signals_from: from - lookback_us,
            executions_from: from,
            to,
        },
    };
    let mut summary = ReprocessSummary {
        windows: ((to - from) / WINDOW_MICROS) as usize,
        hours: HourPartition::covering(from, to).len(),
        ..Default::default()
    };
    if opts.dry_run {
        dry_run(&store, common, opts.source, &job, &mut summary).await?;
        return Ok(summary);
    }
    let t0 = Instant::now();
    let lock = lock(&store, from, to).await?;
    let result = run(&store, common, opts.source, &job, &mut summary, t0).await;
    store.delete(&lock).await?;
    result?;
    summary.seconds = t0.elapsed().as_secs_f64();
    Ok(summary)
}

/// What one reprocess does.
struct Job {
    from: i64,
    to: i64,
    /// Output folders it replaces windows of.
    folders: Vec<String>,
    metrics: Vec<catalog::Metric>,
    memory_limit: usize,
    lookback_us: i64,
    /// What it reads with `--source kafka`.
    replay: replay::Range,
}

/// The plan's first line; `input` says what is read, e.g. "2971 events from raw/".
fn announce(job: &Job, summary: &ReprocessSummary, input: &str) {
    eprintln!(
        "reprocess {}..{}: {} windows in {} hour partitions, {input}, tables: {}",
        format_bound(job.from),
        format_bound(job.to),
        summary.windows,
        summary.hours,
        job.folders.join(", ")
    );
}

/// Prints the plan: what would be read and which files replaced.
async fn dry_run(
    store: &OutputStore,
    common: &Common,
    source: Source,
    job: &Job,
    summary: &mut ReprocessSummary,
) -> Result<(), ReprocessError> {
    match source {
        Source::Raw => {
            summary.raw_events = raw_events(store, job.from, job.to).await?.values().sum();
            announce(
                job,
                summary,
                &format!("{} events from raw/", summary.raw_events),
            );
        }
        Source::Kafka => {
            let spans = replay::plan(common, job.replay)?;
            let messages: i64 = spans.iter().map(|s| s.end - s.start).sum();
            announce(
                job,
                summary,
                &format!("{messages} messages to read from Kafka"),
            );
            for s in spans {
                eprintln!(
                    "  {}/{}: offsets {}..{} ({} messages to read)",
                    s.topic,
                    s.partition,
                    s.start,
                    s.end,
                    s.end - s.start
                );
            }
        }
    }
    for folder in &job.folders {
        let existing = existing_window_files(store, folder, job.from, job.to).await?;
        eprintln!(
            "  {folder}: {} window files in range now, each rewritten or deleted",
            existing.len()
        );
    }
    eprintln!("dry run: nothing written");
    Ok(())
}

/// Reads the range (from `raw/` or Kafka) and replaces its windows.
async fn run(
    store: &OutputStore,
    common: &Common,
    source: Source,
    job: &Job,
    summary: &mut ReprocessSummary,
    t0: Instant,
) -> Result<(), ReprocessError> {
    let raw = match source {
        Source::Raw => store.clone(),
        Source::Kafka => {
            let scratch = store.sub(&scratch_folder(job.from, job.to));
            // An interrupted run's scratch rows would count twice.
            scratch.delete_all("").await?;
            let read = replay::replay(common, &scratch, job.replay, |done, total| {
                progress_line(&format!(
                    "reading Kafka: {done} of {total} messages ({:.0} messages/s)",
                    done as f64 / t0.elapsed().as_secs_f64().max(1e-9)
                ))
            })
            .await?;
            end_progress();
            eprintln!(
                "read {} messages from Kafka: {} signals (with the lookback) and {} executions in range",
                read.messages, read.signals, read.executions
            );
            scratch
        }
    };
    let events = raw_events(&raw, job.from, job.to).await?;
    summary.raw_events = events.values().sum();
    let label = match source {
        Source::Raw => "raw/",
        Source::Kafka => "Kafka",
    };
    announce(
        job,
        summary,
        &format!("{} events from {label}", summary.raw_events),
    );
    let finalizer = Finalizer::new(store.clone(), job.memory_limit, job.lookback_us)?
        .reading_raw_from(raw.clone());
    let mut start = job.from;
    while start < job.to {
        // Chunks as in the daemon: within the memory budget, inside an hour.
        let end = chunk_end(start, job.to, &events, finalize_budget(job.memory_limit));
        let s = finalizer.finalize(&job.metrics, start, end).await?;
        summary.signals += s.signals as u64;
        summary.executions += s.executions as u64;
        summary.metric_rows += s.metric_rows.values().sum::<usize>() as u64;
        summary.files_written += s.files.len();
        let written: BTreeSet<&String> = s.files.iter().collect();
        for folder in &job.folders {
            for f in existing_window_files(store, folder, start, end).await? {
                if !written.contains(&f) {
                    store.delete(&f).await?;
                    summary.files_deleted += 1;
                }
            }
        }
        let done = (end - job.from) as f64 / (job.to - job.from) as f64;
        let secs = t0.elapsed().as_secs_f64();
        let rate = (summary.signals + summary.executions) as f64 / secs.max(1e-9);
        let eta = secs / done.max(1e-9) - secs;
        progress_line(&format!(
            "reprocess: {:>5.1}% through {}, {} events, {:.0} events/s, ETA {:.0} s",
            done * 100.0,
            format_bound(end),
            summary.signals + summary.executions,
            rate,
            eta
        ));
        start = end;
    }
    end_progress();
    if source == Source::Kafka {
        raw.delete_all("").await?;
    }
    Ok(())
}

/// One progress line: rewritten in place on a terminal, one per line in logs.
fn progress_line(line: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r{line}");
    } else {
        eprintln!("{line}");
    }
}

fn end_progress() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// Window files of `folder` for windows in `[from, to)` that exist now.
async fn existing_window_files(
    store: &OutputStore,
    folder: &str,
    from: i64,
    to: i64,
) -> Result<Vec<String>, ReprocessError> {
    let wanted = window_files(folder, from, to);
    let mut out = vec![];
    for hour in HourPartition::covering(from, to) {
        for (rel, _) in store.list(&format!("{folder}/{}", hour.path())).await? {
            if wanted.contains(&rel) {
                out.push(rel);
            }
        }
    }
    Ok(out)
}

/// Raw events (both topics, duplicates included) per window start in range:
/// they size the chunks, as in the daemon.
async fn raw_events(
    store: &OutputStore,
    from: i64,
    to: i64,
) -> Result<BTreeMap<i64, u64>, ReprocessError> {
    let range =
        |t: &str| format!("{t} >= to_timestamp_micros({from}) AND {t} < to_timestamp_micros({to})");
    let sql = format!(
        "SELECT CAST(date_bin(INTERVAL '1 minute', t) AS BIGINT) AS w, count(*) AS n FROM (
             SELECT emitted_at AS t FROM {s} WHERE {rs}
             UNION ALL SELECT executed_at AS t FROM {e} WHERE {re}
         ) GROUP BY 1",
        s = tables::RAW_SIGNALS,
        e = tables::RAW_EXECUTIONS,
        rs = range("emitted_at"),
        re = range("executed_at"),
    );
    let mut out = BTreeMap::new();
    for b in query::collect(store, &sql).await? {
        let w = b.column(0).as_primitive::<Int64Type>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.insert(w.value(i), n.value(i) as u64);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_round_out_to_whole_windows_and_bad_input_is_named() {
        let (f, t) = window_range("2026-01-01T10:00:30Z", "2026-01-01T10:02:00Z").unwrap();
        assert_eq!(f, 1_767_261_600_000_000);
        assert_eq!(t - f, 2 * WINDOW_MICROS);
        let (_, t) = window_range("2026-01-01T10:00:00Z", "2026-01-01T10:02:01Z").unwrap();
        assert_eq!(t - f, 3 * WINDOW_MICROS);
        let e = window_range("yesterday", "2026-01-01T10:02:00Z").unwrap_err();
        assert!(e.to_string().contains("--from \"yesterday\""), "{e}");
        assert!(window_range("2026-01-01T10:02:00Z", "2026-01-01T10:01:00Z").is_err());
    }

    #[test]
    fn window_files_name_every_window_of_the_range() {
        let f = 1_767_261_600_000_000;
        let files = window_files("signals", f, f + 2 * WINDOW_MICROS);
        assert_eq!(
            files.into_iter().collect::<Vec<_>>(),
            [
                "signals/dt=2026-01-01/hour=10/w-20260101T1000.parquet",
                "signals/dt=2026-01-01/hour=10/w-20260101T1001.parquet",
            ]
        );
    }
}

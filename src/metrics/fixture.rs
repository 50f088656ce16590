//! `sql test`: each metric run over its fixture events the way the daemon
//! runs it, and compared with the expected rows beside them.
//!
//! `fixtures/<metric>/input.jsonl` lists Kafka messages in arrival order, one
//! JSON object per line: `{"topic": T, "partition": P, "value": V}` where a
//! JSON object `V` is sent as its text and a string `V` as it is (so a
//! malformed message can be written down); `{"commit": true}` ends an epoch.
//! Blank lines and lines starting with `#` are notes.
//!
//! The events go through the daemon's own stages: decoding and validation
//! (malformed messages become dead letters), raw Parquet per epoch, the
//! watermark with the daemon's default allowed lateness, finalization of the
//! windows it passed (late events stay out of final windows), and at the end
//! of input every remaining window. `expected.csv` holds the metric's rows,
//! sorted by its key columns.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};

use super::catalog::Metric;
use super::engine::{finalize_budget, write_partitioned, FileNaming, Finalizer};
use crate::buffer::{EpochBuffer, Message, Outcome};
use crate::config::RunOpts;
use crate::schema::{Topics, EXECUTIONS_TOPIC, SIGNALS_TOPIC};
use crate::sink::store::{OutputStore, S3Options};
use crate::window::{chunk_end, final_bound, watermark_of, window_start, WINDOW_MICROS};

/// The input and expected rows of one metric's test.
pub const INPUT_FILE: &str = "input.jsonl";
pub const EXPECTED_FILE: &str = "expected.csv";

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("no metric named {0} (the names are the sql/ file names without .sql)")]
    UnknownMetric(String),
    #[error("running {metric} over its fixture: {reason}")]
    Run { metric: String, reason: String },
}

/// What the input held, by what the daemon made of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InputCounts {
    pub messages: usize,
    pub epochs: usize,
    /// Messages that failed validation (dead letters).
    pub malformed: usize,
    /// Valid events whose id was already seen.
    pub duplicates: usize,
    /// Valid events whose window was already final when their epoch committed.
    pub late: usize,
}

impl InputCounts {
    /// What a fixture must exercise: one malformed, one duplicated and one
    /// late event at least.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (self.malformed, "a malformed event"),
            (self.duplicates, "a duplicated event"),
            (self.late, "a late event"),
        ]
        .into_iter()
        .filter(|(n, _)| *n == 0)
        .map(|(_, what)| what)
        .collect()
    }
}

/// One metric's test result.
#[derive(Debug, Clone, PartialEq)]
pub struct TestOutcome {
    pub metric: String,
    pub counts: InputCounts,
    /// The metric's rows as CSV: a header, then one line per row by key.
    pub actual: Vec<String>,
    /// `expected.csv`, `None` when there is none yet.
    pub expected: Option<Vec<String>>,
}

impl TestOutcome {
    pub fn passed(&self) -> bool {
        self.counts.missing().is_empty() && self.expected.as_ref() == Some(&self.actual)
    }
}

/// One line of `input.jsonl`.
enum Step {
    Message {
        topic: String,
        partition: i32,
        value: Vec<u8>,
    },
    Commit,
}

fn parse_input(path: &Path, text: &str) -> Result<Vec<Step>, FixtureError> {
    let mut steps = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |reason: String| FixtureError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not a JSON object: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| at("not a JSON object".into()))?;
        if obj.get("commit").is_some() {
            steps.push(Step::Commit);
            continue;
        }
        let topic = obj
            .get("topic")
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                at(format!(
                    "needs \"topic\" ({SIGNALS_TOPIC} or {EXECUTIONS_TOPIC}) and \"value\", \
                     or \"commit\": true"
                ))
            })?
            .to_string();
        if topic != SIGNALS_TOPIC && topic != EXECUTIONS_TOPIC {
            return Err(at(format!(
                "topic `{topic}` is neither {SIGNALS_TOPIC} nor {EXECUTIONS_TOPIC}"
            )));
        }
        let partition = match obj.get("partition") {
            None => 0,
            Some(p) => p
                .as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .filter(|p| *p >= 0)
                .ok_or_else(|| at(format!("partition {p} is not a number >= 0")))?,
        };
        let value = match obj.get("value") {
            Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
            Some(v @ serde_json::Value::Object(_)) => v.to_string().into_bytes(),
            _ => {
                return Err(at(
                    "\"value\" must be the event (an object) or the message text (a string)".into(),
                ))
            }
        };
        steps.push(Step::Message {
            topic,
            partition,
            value,
        });
    }
    Ok(steps)
}

/// The id of a valid event, to tell duplicates.
fn event_id(topic: &str, value: &[u8]) -> Option<String> {
    let field = if topic == SIGNALS_TOPIC {
        "signal_id"
    } else {
        "execution_id"
    };
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    Some(format!("{topic}/{}", v.get(field)?.as_str()?))
}

/// Runs `metric` over the events of `input` as the daemon would and returns
/// its rows as CSV lines.
pub async fn run(
    metric: &Metric,
    keys: &[String],
    input: &Path,
) -> Result<(InputCounts, Vec<String>), FixtureError> {
    let text = std::fs::read_to_string(input).map_err(|e| FixtureError::File {
        path: input.to_path_buf(),
        reason: e.to_string(),
    })?;
    let steps = parse_input(input, &text)?;
    let failed = |reason: String| FixtureError::Run {
        metric: metric.name.clone(),
        reason,
    };
    let defaults = RunOpts::default()
        .resolve()
        .expect("the daemon's defaults are valid");
    let lateness = defaults.allowed_lateness.as_micros() as i64;
    let store = OutputStore::open("memory://fixture", &S3Options::default())
        .map_err(|e| failed(e.to_string()))?;
    let finalizer = Finalizer::new(
        store.clone(),
        defaults.memory_limit,
        defaults.lookback.as_micros() as i64,
    )
    .map_err(|e| failed(e.to_string()))?;
    let metrics = std::slice::from_ref(metric);

    let mut counts = InputCounts::default();
    let mut buffer = EpochBuffer::new(Topics::default());
    let mut next_offset: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut newest: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
    let mut seen_ids = HashSet::new();
    let mut epoch_times = Vec::new();
    let mut first_open: Option<i64> = None;
    let mut window_events: BTreeMap<i64, u64> = BTreeMap::new();
    let budget = finalize_budget(defaults.memory_limit);
    let mut finalized_through: Option<i64> = None;

    let mut steps = steps.into_iter().peekable();
    loop {
        let step = steps.next();
        match &step {
            Some(Step::Message {
                topic,
                partition,
                value,
            }) => {
                counts.messages += 1;
                let key = (topic.clone(), *partition);
                let offset = next_offset.entry(key.clone()).or_default();
                let m = Message::with_value(topic, *partition, *offset, value);
                *offset += 1;
                match buffer.push(&m, 0) {
                    Outcome::Accepted { event_time, .. } => {
                        // A partition counts for the watermark once it has
                        // delivered a valid event (the daemon's idle timeout
                        // releases one that never does).
                        let seen = newest.entry(key).or_default();
                        *seen = (*seen).max(Some(event_time));
                        *window_events.entry(window_start(event_time)).or_default() += 1;
                        epoch_times.push(event_time);
                        if event_id(topic, value).is_some_and(|id| !seen_ids.insert(id)) {
                            counts.duplicates += 1;
                        }
                    }
                    Outcome::DeadLetter(_) => counts.malformed += 1,
                    Outcome::Ignored => {}
                }
                continue;
            }
            Some(Step::Commit) | None => {}
        }
        // An epoch commits: its raw rows are written, its events before the
        // finalized bound are late, and the watermark finalizes windows.
        counts.epochs += usize::from(!buffer.is_empty());
        let batches = buffer.take();
        for (folder, rows, time) in [
            ("raw/influencer_signals", &batches.signals, "emitted_at"),
            ("raw/execution_results", &batches.executions, "executed_at"),
        ] {
            write_partitioned(
                &store,
                folder,
                std::slice::from_ref(rows),
                time,
                FileNaming::Epoch(&format!("epoch-{:04}", counts.epochs)),
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
        }
        for t in epoch_times.drain(..) {
            match finalized_through {
                Some(bound) if t < bound => counts.late += 1,
                _ => {
                    let w = window_start(t);
                    first_open = Some(first_open.map_or(w, |f| f.min(w)));
                }
            }
        }
        let to = if step.is_none() {
            newest
                .values()
                .flatten()
                .max()
                .map(|t| window_start(*t) + WINDOW_MICROS)
        } else {
            watermark_of(newest.values().map(|t| (*t, false)), lateness).map(final_bound)
        };
        let from = finalized_through.or(first_open);
        if let (Some(from), Some(to)) = (from, to) {
            // In the daemon's chunks: at most ten windows, never across an hour.
            let mut start = from;
            while start < to {
                let end = chunk_end(start, to, &window_events, budget);
                let s = finalizer
                    .finalize(metrics, start, end)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                if let Some((_, e)) = s.metric_errors.first() {
                    return Err(failed(e.clone()));
                }
                finalized_through = Some(end);
                start = end;
            }
        }
        if step.is_none() {
            break;
        }
    }
    let rows = metric_rows(&store, metric, keys).await.map_err(failed)?;
    Ok((counts, rows))
}

/// The rows the metric wrote, as CSV lines sorted by its keys (then by
/// every column, so equal keys come out in one order): a header first, from
/// the metric's output schema when it wrote nothing.
async fn metric_rows(
    store: &OutputStore,
    metric: &Metric,
    keys: &[String],
) -> Result<Vec<String>, String> {
    let header = |names: Vec<&str>| {
        names
            .into_iter()
            .map(csv_field)
            .collect::<Vec<_>>()
            .join(",")
    };
    let (ctx, unreadable) = crate::query::context(store)
        .await
        .map_err(|e| e.to_string())?;
    let name = &metric.name;
    if let Some((_, e)) = unreadable.iter().find(|(n, _)| n == name) {
        return Err(e.to_string());
    }
    if !ctx.table_exist(name.as_str()).map_err(|e| e.to_string())? {
        let schema = super::catalog::output_schema(metric)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(vec![header(
            schema.fields().iter().map(|f| f.name().as_str()).collect(),
        )]);
    }
    let written = ctx.table(name.as_str()).await.map_err(|e| e.to_string())?;
    let columns: Vec<String> = written
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n != "dt" && n != "hour")
        .collect();
    let order = keys
        .iter()
        .chain(columns.iter().filter(|c| !keys.contains(c)))
        .map(|k| format!("\"{k}\" NULLS FIRST"))
        .collect::<Vec<_>>()
        .join(", ");
    let df = ctx
        .sql(&format!(
            "SELECT * EXCLUDE (dt, hour) FROM \"{name}\" ORDER BY {order}"
        ))
        .await
        .map_err(|e| e.to_string())?;
    let header = header(
        df.schema()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect(),
    );
    let batches = df.collect().await.map_err(|e| e.to_string())?;
    let mut lines = vec![header];
    lines.extend(csv_lines(&batches).map_err(|e| e.to_string())?);
    Ok(lines)
}

/// Rows as CSV lines; nulls are empty fields.
fn csv_lines(batches: &[RecordBatch]) -> Result<Vec<String>, arrow::error::ArrowError> {
    let options = FormatOptions::default().with_display_error(true);
    let mut lines = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..b.num_rows() {
            let fields: Vec<String> = formatters
                .iter()
                .map(|f| csv_field(&f.value(row).to_string()))
                .collect();
            lines.push(fields.join(","));
        }
    }
    Ok(lines)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits one CSV line into its fields (quotes as [`csv_field`] writes them).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("one field").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

/// `rows` (a header first) cut to the columns `names`, in that order.
fn project(rows: &[String], names: &[String]) -> Vec<String> {
    let Some(header) = rows.first() else {
        return vec![];
    };
    let at: Vec<Option<usize>> = {
        let have = split_csv(header);
        names
            .iter()
            .map(|n| have.iter().position(|h| h == n))
            .collect()
    };
    let header = names.iter().map(|n| csv_field(n)).collect::<Vec<_>>();
    std::iter::once(header.join(","))
        .chain(rows.iter().skip(1).map(|r| {
            let f = split_csv(r);
            at.iter()
                .map(|i| csv_field(i.and_then(|i| f.get(i)).map_or("", String::as_str)))
                .collect::<Vec<_>>()
                .join(",")
        }))
        .collect()
}

/// A readable difference between expected and actual rows: rows are matched
/// by their key columns, so a changed value shows as `-` old, `+` new row,
/// with the differing columns named. When the columns differ, that is said
/// first, and then the rows are compared on the columns both have.
pub fn diff(expected: &[String], actual: &[String], keys: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let (eh, ah) = (expected.first(), actual.first());
    if eh != ah {
        out.push(format!("- {}", eh.map_or("(no header)", |s| s.as_str())));
        out.push(format!("+ {}", ah.map_or("(no header)", |s| s.as_str())));
        let (Some(eh), Some(ah)) = (eh, ah) else {
            return out;
        };
        let (en, an) = (split_csv(eh), split_csv(ah));
        let list = |names: Vec<&String>| match names.is_empty() {
            true => "none".to_string(),
            false => names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        out.push(format!(
            "  columns added: {}; removed: {}",
            list(an.iter().filter(|n| !en.contains(n)).collect()),
            list(en.iter().filter(|n| !an.contains(n)).collect())
        ));
        let common: Vec<String> = en.iter().filter(|n| an.contains(n)).cloned().collect();
        let rows = diff(&project(expected, &common), &project(actual, &common), keys);
        if rows.is_empty() {
            out.push("  the rows agree on the columns both have".into());
        } else {
            out.push("  the rows differ on the columns both have:".into());
            out.extend(rows);
        }
        return out;
    }
    let Some(header) = ah else { return out };
    let names = split_csv(header);
    let key_at: Vec<usize> = keys
        .iter()
        .filter_map(|k| names.iter().position(|n| n == k))
        .collect();
    let by_key = |rows: &[String]| -> BTreeMap<Vec<String>, Vec<String>> {
        let mut m: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
        for r in rows.iter().skip(1) {
            let f = split_csv(r);
            let k = key_at
                .iter()
                .map(|i| f.get(*i).cloned().unwrap_or_default());
            m.entry(k.collect()).or_default().push(r.clone());
        }
        m
    };
    let (e, a) = (by_key(expected), by_key(actual));
    let all: std::collections::BTreeSet<_> = e.keys().chain(a.keys()).collect();
    for k in all {
        let (er, ar) = (
            e.get(k).map(Vec::as_slice).unwrap_or(&[]),
            a.get(k).map(Vec::as_slice).unwrap_or(&[]),
        );
        if er == ar {
            continue;
        }
        if let ([old], [new]) = (er, ar) {
            let (of, nf) = (split_csv(old), split_csv(new));
            let changed: Vec<String> = names
                .iter()
                .enumerate()
                .filter(|(i, _)| of.get(*i) != nf.get(*i))
                .map(|(i, n)| {
                    format!(
                        "{n}: {} -> {}",
                        of.get(i).map_or("", String::as_str),
                        nf.get(i).map_or("", String::as_str)
                    )
                })
                .collect();
            let key: Vec<String> = keys
                .iter()
                .zip(k)
                .map(|(n, v)| format!("{n}={}", if v.is_empty() { "(null)" } else { v }))
                .collect();
            out.push(format!("~ {} ({})", key.join(" "), changed.join("; ")));
        }
        out.extend(er.iter().map(|r| format!("- {r}")));
        out.extend(ar.iter().map(|r| format!("+ {r}")));
    }
    out
}

/// Runs the test of `metric` in `fixtures/<metric>/`; with `bless`, writes
/// the actual rows as the expected ones first.
pub async fn test(
    metric: &Metric,
    fixtures: &Path,
    bless: bool,
) -> Result<TestOutcome, FixtureError> {
    let keys = metric
        .header()
        .map_err(|p| FixtureError::File {
            path: metric.path.clone(),
            reason: p
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; "),
        })?
        .keys;
    let dir = fixtures.join(&metric.name);
    let input = dir.join(INPUT_FILE);
    if !input.exists() {
        return Err(FixtureError::File {
            path: input,
            reason: format!(
                "no test input for metric {}: write its events there (see sql/README.md)",
                metric.name
            ),
        });
    }
    let (counts, actual) = run(metric, &keys, &input).await?;
    let expected_path = dir.join(EXPECTED_FILE);
    if bless {
        let mut text = actual.join("\n");
        text.push('\n');
        std::fs::write(&expected_path, text).map_err(|e| FixtureError::File {
            path: expected_path.clone(),
            reason: e.to_string(),
        })?;
    }
    let expected = match std::fs::read_to_string(&expected_path) {
        Ok(t) => Some(t.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(FixtureError::File {
                path: expected_path,
                reason: e.to_string(),
            })
        }
    };
    Ok(TestOutcome {
        metric: metric.name.clone(),
        counts,
        actual,
        expected,
    })
}

/// Runs the metric tests, printing one line per metric and the difference
/// of each failure; returns how many failed.
pub async fn test_catalog(
    catalog: &[Metric],
    fixtures: &std::path::Path,
    bless: bool,
    only: &[String],
    out: &mut impl std::io::Write,
) -> Result<usize, FixtureError> {
    if let Some(unknown) = only.iter().find(|n| !catalog.iter().any(|m| &m.name == *n)) {
        return Err(FixtureError::UnknownMetric(unknown.clone()));
    }
    let mut failed = 0;
    // Reporting to a closed pipe is not a test failure: ignore write errors.
    macro_rules! say {
        ($($t:tt)*) => {{ let _ = writeln!(out, $($t)*); }};
    }
    for m in catalog
        .iter()
        .filter(|m| only.is_empty() || only.contains(&m.name))
    {
        let t = match test(m, fixtures, bless).await {
            Ok(t) => t,
            Err(e) => {
                failed += 1;
                say!("FAIL   {}: {e}", m.name);
                continue;
            }
        };
        let c = &t.counts;
        let what = format!(
            "{} messages in {} epochs: {} malformed, {} duplicated, {} late; {} rows",
            c.messages,
            c.epochs,
            c.malformed,
            c.duplicates,
            c.late,
            t.actual.len().saturating_sub(1)
        );
        if t.passed() {
            let verb = if bless { "blessed" } else { "ok    " };
            say!("{verb} {}  ({what})", m.name);
            continue;
        }
        failed += 1;
        say!("FAIL   {}  ({what})", m.name);
        for gap in c.missing() {
            say!("       the input needs {gap}");
        }
        match &t.expected {
            None => say!(
                "       no {}/{}/{}: check the rows below, then run with --bless to keep them",
                fixtures.display(),
                m.name,
                EXPECTED_FILE
            ),
            Some(e) if e != &t.actual => {
                let keys = m.header().map(|h| h.keys).unwrap_or_default();
                say!("       rows differ (- expected, + actual, ~ changed columns):");
                for l in diff(e, &t.actual, &keys) {
                    say!("       {l}");
                }
            }
            Some(_) => {}
        }
        if t.expected.is_none() {
            for l in &t.actual {
                say!("       {l}");
            }
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> (Vec<Metric>, PathBuf) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let metrics = super::super::catalog::load(&root.join("sql")).unwrap();
        (metrics, root.join("fixtures"))
    }

    /// One shipped metric and the shipped fixtures folder.
    fn shipped_metric(name: &str) -> (Metric, PathBuf) {
        let (metrics, fixtures) = shipped();
        let m = metrics.into_iter().find(|m| m.name == name).unwrap();
        (m, fixtures)
    }

    #[tokio::test]
    async fn every_shipped_metric_passes_its_fixture() {
        let (metrics, fixtures) = shipped();
        let mut report = Vec::new();
        let failed = test_catalog(&metrics, &fixtures, false, &[], &mut report)
            .await
            .unwrap();
        let report = String::from_utf8(report).unwrap();
        assert_eq!(failed, 0, "{report}");
        for m in &metrics {
            let t = test(m, &fixtures, false).await.unwrap();
            assert!(t.counts.missing().is_empty(), "{}: {:?}", m.name, t.counts);
            assert!(t.actual.len() > 2, "{}: {:?}", m.name, t.actual);
        }
    }

    #[tokio::test]
    async fn a_changed_definition_fails_with_the_changed_rows() {
        let (mut m, fixtures) = shipped_metric("execution_errors_1m");
        m.sql = m.sql.replace("'rejected', 'failed'", "'rejected'");
        let t = test(&m, &fixtures, false).await.unwrap();
        assert!(!t.passed());
        let keys = m.header().unwrap().keys;
        let d = diff(t.expected.as_ref().unwrap(), &t.actual, &keys);
        // The failed executions' rows are gone, nothing else changed.
        assert!(
            !d.is_empty() && d.iter().all(|l| l.starts_with("- ")),
            "{d:?}"
        );
        assert!(d.iter().any(|l| l.contains("VENUE_TIMEOUT")), "{d:?}");

        let mut report = Vec::new();
        let failed = test_catalog(&[m], &fixtures, false, &[], &mut report)
            .await
            .unwrap();
        let report = String::from_utf8(report).unwrap();
        assert_eq!(failed, 1);
        assert!(
            report.contains("FAIL   execution_errors_1m")
                && report.contains("- 2026-01-01T10:00:00Z,kraken,VENUE_TIMEOUT,1,1"),
            "{report}"
        );
    }

    #[tokio::test]
    async fn a_metric_without_rows_has_a_header_and_can_be_blessed() {
        let (mut m, fixtures) = shipped_metric("execution_errors_1m");
        m.sql = m.sql.replace("'rejected', 'failed'", "'no such status'");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(&m.name)).unwrap();
        std::fs::copy(
            fixtures.join(&m.name).join(INPUT_FILE),
            dir.path().join(&m.name).join(INPUT_FILE),
        )
        .unwrap();
        let t = test(&m, dir.path(), true).await.unwrap();
        assert_eq!(
            t.actual,
            ["window_start,venue,error_code,errors,affected_subscribers"]
        );
        assert!(t.passed(), "{t:?}");
        assert!(test(&m, dir.path(), false).await.unwrap().passed());
    }

    #[tokio::test]
    async fn a_fixture_without_late_duplicated_and_malformed_events_fails() {
        let (m, _) = shipped_metric("system_metrics_1m");
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join(&m.name);
        std::fs::create_dir(&own).unwrap();
        let e = r#"{"schema_version":1,"execution_id":"e0000000-0000-4000-8000-000000000001","signal_id":"s","influencer_id":"i","subscriber_id":"u","instrument":"BTC-USD","side":"buy","status":"rejected","requested_qty":1,"filled_qty":0,"avg_fill_price":null,"fee":0,"realized_pnl":null,"error_code":"X","venue":"v","submitted_at":"2026-01-01T10:00:00Z","executed_at":"2026-01-01T10:00:00Z"}"#;
        std::fs::write(
            own.join(INPUT_FILE),
            format!("{{\"topic\":\"execution_results\",\"value\":{e}}}\n"),
        )
        .unwrap();
        let t = test(&m, dir.path(), true).await.unwrap();
        assert_eq!(t.counts.messages, 1);
        assert_eq!(t.counts.missing().len(), 3, "{:?}", t.counts);
        assert!(!t.passed());
        // Blessed, the rows are kept: one window, one rejection.
        let kept = std::fs::read_to_string(own.join(EXPECTED_FILE)).unwrap();
        assert_eq!(kept.lines().count(), 2, "{kept}");
        assert!(
            kept.lines()
                .nth(1)
                .unwrap()
                .starts_with("2026-01-01T10:00:00Z,0,1,0,0,1,"),
            "{kept}"
        );
        let missing = test(&m, Path::new("/nonexistent"), false)
            .await
            .unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("no test input for metric system_metrics_1m"),
            "{missing}"
        );
    }

    #[test]
    fn csv_round_trips_and_diff_names_changed_columns() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(split_csv("x,\"a,\"\"b\",,z"), ["x", "a,\"b", "", "z"]);
        let keys = vec!["k".to_string()];
        let e: Vec<String> = ["k,v,w", "1,10,a", "2,20,b"].map(String::from).into();
        let a: Vec<String> = ["k,v,w", "2,21,b", "3,30,c"].map(String::from).into();
        assert_eq!(
            diff(&e, &a, &keys),
            [
                "- 1,10,a",
                "~ k=2 (v: 20 -> 21)",
                "- 2,20,b",
                "+ 2,21,b",
                "+ 3,30,c"
            ]
        );
        assert!(diff(&e, &e, &keys).is_empty());
        let other: Vec<String> = ["k,x"].map(String::from).into();
        assert_eq!(
            diff(&e, &other, &keys),
            [
                "- k,v,w",
                "+ k,x",
                "  columns added: `x`; removed: `v`, `w`",
                "  the rows differ on the columns both have:",
                "- 1",
                "- 2"
            ]
        );
        // A column added: the rows are still compared on the others.
        let wider: Vec<String> = ["k,v,w,n", "1,10,a,5", "2,22,b,6"].map(String::from).into();
        assert_eq!(
            diff(&e, &wider, &keys),
            [
                "- k,v,w",
                "+ k,v,w,n",
                "  columns added: `n`; removed: none",
                "  the rows differ on the columns both have:",
                "~ k=2 (v: 20 -> 22)",
                "- 2,20,b",
                "+ 2,22,b"
            ]
        );
        let same: Vec<String> = ["k,v,w,n", "1,10,a,5", "2,20,b,6"].map(String::from).into();
        assert_eq!(
            diff(&e, &same, &keys)[3],
            "  the rows agree on the columns both have"
        );
    }

    #[test]
    fn input_lines_are_checked_with_their_line_number() {
        let p = Path::new("f/input.jsonl");
        let ok = "# note\n\n{\"topic\":\"execution_results\",\"partition\":2,\"value\":\"{bad\"}\n\
                  {\"commit\":true}\n{\"topic\":\"influencer_signals\",\"value\":{\"a\":1}}";
        let steps = parse_input(p, ok).unwrap();
        assert_eq!(steps.len(), 3);
        assert!(matches!(&steps[0], Step::Message { partition: 2, value, .. } if value == b"{bad"));
        assert!(
            matches!(&steps[2], Step::Message { partition: 0, value, .. } if value == b"{\"a\":1}")
        );
        for (bad, says) in [
            ("{\"topic\":\"orders\",\"value\":{}}", "neither"),
            ("{\"value\":{}}", "needs \"topic\""),
            (
                "{\"topic\":\"influencer_signals\",\"value\":3}",
                "\"value\" must be",
            ),
            (
                "{\"topic\":\"influencer_signals\",\"partition\":-1,\"value\":{}}",
                "partition -1",
            ),
            ("not json", "not a JSON object"),
        ] {
            let e = parse_input(p, &format!("# x\n{bad}"))
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.starts_with("f/input.jsonl:2: ") && e.contains(says),
                "{e}"
            );
        }
    }
}

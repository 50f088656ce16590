//! Finalizing windows: the raw rows of a time range are read back from the
//! store, deduplicated by id, executions joined to their signals, and every
//! metric query run over them on DataFusion. The daemon and a backfill call
//! the same function, so batch boundaries cannot change a result.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::error::ArrowError;
use chrono::DateTime;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use tracing::{info, warn};

use crate::metrics::catalog::{Metric, INPUT_EXECUTIONS, INPUT_SIGNALS};
use crate::metrics::dedupe::first_by_kafka_position;
use crate::schema;
use crate::sink::parquet::encode;
use crate::sink::partition::{split_by_bucket, HourPartition};
use crate::sink::store::{OutputStore, StoreError};
use crate::tables::{self, EXECUTIONS_ENRICHED, RAW_EXECUTIONS, RAW_SIGNALS, SIGNALS};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("query failed while finalizing windows {range}: {source}")]
    Query {
        range: String,
        #[source]
        source: DataFusionError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding {table} for {range}: {reason}")]
    Encode {
        table: String,
        range: String,
        reason: String,
    },
}

/// What one finalization produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FinalizeSummary {
    pub signals: usize,
    pub executions: usize,
    /// Rows written per metric.
    pub metric_rows: BTreeMap<String, usize>,
    /// Metrics whose query failed, with the error; the others still ran.
    pub metric_errors: Vec<(String, String)>,
    pub files: Vec<String>,
}

/// What finalizing one event costs in memory, all stages together (measured
/// with the catalog metrics): the events finalized at once are budgeted
/// from it.
const FINALIZE_BYTES_PER_EVENT: usize = 3 * 1024;

/// Events to finalize at once under `memory_limit`: half of it.
pub fn finalize_budget(memory_limit: usize) -> u64 {
    (memory_limit / 2 / FINALIZE_BYTES_PER_EVENT) as u64
}

/// The deduplicated inputs of one finalization, as registered in its session.
const DEDUPED_SIGNALS: &str = "deduped_signals";
const DEDUPED_EXECUTIONS: &str = "deduped_executions";

/// Runs the finalization of window ranges against one output store.
pub struct Finalizer {
    store: OutputStore,
    /// Where the raw tables are read from; the output store unless replaced.
    raw: OutputStore,
    runtime: Arc<RuntimeEnv>,
    /// How far back a signal may precede its execution and still be joined.
    lookback_us: i64,
}

/// `2026-01-01T10:05` style bound for file names and messages.
pub fn format_bound(t: i64) -> String {
    DateTime::from_timestamp_micros(t)
        .map(|d| d.format("%Y%m%dT%H%M").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn range_name(from: i64, to: i64) -> String {
    format!("{}-{}", format_bound(from), format_bound(to))
}

/// `(dt = … AND hour = …) OR …` over the partitions of `[from, to)`, so a
/// scan opens only those folders.
fn partition_filter(from: i64, to: i64) -> String {
    let parts: Vec<String> = HourPartition::covering(from, to)
        .iter()
        .map(|p| {
            let path = p.path();
            let (dt, hour) = path.split_once('/').expect("dt=…/hour=…");
            format!(
                "(dt = '{}' AND hour = '{}')",
                &dt["dt=".len()..],
                &hour["hour=".len()..]
            )
        })
        .collect();
    if parts.is_empty() {
        "FALSE".into()
    } else {
        format!("({})", parts.join(" OR "))
    }
}

fn column_list(schema: &arrow::datatypes::Schema, prefix: &str) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{prefix}{}", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `time` in `[from, to)`, as SQL. The bounds compare the column itself (no
/// cast), so Parquet row-group statistics and the row filter skip what lies
/// outside the range.
fn time_range(time: &str, from: i64, to: i64) -> String {
    format!("{time} >= to_timestamp_micros({from}) AND {time} < to_timestamp_micros({to})")
}

/// Rows of `table` with event time in `[from, to)`, one per `id` (the first
/// by Kafka position: duplicates carry the same event).
async fn read_deduplicated(
    ctx: &SessionContext,
    table: &str,
    id: &str,
    time: &str,
    columns: &str,
    (from, to): (i64, i64),
) -> Result<MemTable, DataFusionError> {
    let df = ctx
        .sql(&format!(
            "SELECT {columns} FROM {table} WHERE {} AND {}",
            partition_filter(from, to),
            time_range(time, from, to)
        ))
        .await?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let rows = first_by_kafka_position(&df.collect().await?, id)?;
    MemTable::try_new(schema, vec![rows])
}

impl Finalizer {
    /// `memory_limit` bounds DataFusion's memory pool (bytes).
    pub fn new(
        store: OutputStore,
        memory_limit: usize,
        lookback_us: i64,
    ) -> Result<Self, DataFusionError> {
        // No listing or file caches: every epoch adds raw files, an abandoned
        // epoch's are deleted and a retried one rewrites them under the same
        // names, so a cached listing or footer would hide or invent rows.
        let caches = CacheManagerConfig::default()
            .with_list_files_cache_limit(0)
            .with_file_statistics_cache_limit(0)
            .with_metadata_cache_limit(0);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(memory_limit, 1.0)
            .with_cache_manager(caches)
            .build_arc()?;
        Ok(Self {
            raw: store.clone(),
            store,
            runtime,
            lookback_us,
        })
    }

    /// Reads the raw tables from `raw` instead of the output store (events
    /// read from Kafka again into a scratch folder); writes stay where they were.
    pub fn reading_raw_from(mut self, raw: OutputStore) -> Self {
        self.raw = raw;
        self
    }

    async fn context(&self) -> Result<SessionContext, DataFusionError> {
        let mut config = SessionConfig::new().with_target_partitions(2);
        // Decode the time column first and only the matching rows of the rest:
        // a chunk of windows then costs memory for its own rows only.
        config.options_mut().execution.parquet.pushdown_filters = true;
        config.options_mut().execution.parquet.reorder_filters = true;
        let ctx = SessionContext::new_with_config_rt(config, self.runtime.clone());
        self.store.register(&ctx);
        self.raw.register(&ctx);
        for t in tables::fixed_tables() {
            if t.name == RAW_SIGNALS || t.name == RAW_EXECUTIONS {
                tables::register(&ctx, &self.raw, &t).await?;
            }
        }
        Ok(ctx)
    }

    /// Finalizes the windows in `[from, to)` with `metrics`, writing
    /// `signals`, `executions_enriched` and `metrics/*` for that range.
    pub async fn finalize(
        &self,
        metrics: &[Metric],
        from: i64,
        to: i64,
    ) -> Result<FinalizeSummary, EngineError> {
        let range = range_name(from, to);
        let q = |source| EngineError::Query {
            range: range.clone(),
            source,
        };
        let ctx = self.context().await.map_err(q)?;
        let sig_cols = column_list(&schema::signals_schema(), "");
        let exe_cols = column_list(&schema::raw_executions_schema(), "");
        let exe_contract = column_list(
            &arrow::datatypes::Schema::new(schema::execution_fields()),
            "e.",
        );

        // Signals of the lookback as well: an execution's signal usually came
        // first. Read once; the range's own signals are a part of them.
        let lookback = read_deduplicated(
            &ctx,
            RAW_SIGNALS,
            "signal_id",
            "emitted_at",
            &column_list(&schema::raw_signals_schema(), ""),
            (from - self.lookback_us, to),
        )
        .await
        .map_err(q)?;
        ctx.register_table(DEDUPED_SIGNALS, Arc::new(lookback))
            .map_err(q)?;
        let firsts = read_deduplicated(
            &ctx,
            RAW_EXECUTIONS,
            "execution_id",
            "executed_at",
            &exe_cols,
            (from, to),
        )
        .await
        .map_err(q)?;
        ctx.register_table(DEDUPED_EXECUTIONS, Arc::new(firsts))
            .map_err(q)?;

        let signals_sql = format!(
            "SELECT {sig_cols} FROM {DEDUPED_SIGNALS} WHERE {} ORDER BY emitted_at, signal_id",
            time_range("emitted_at", from, to)
        );
        let signals = ctx
            .sql(&signals_sql)
            .await
            .map_err(q)?
            .collect()
            .await
            .map_err(q)?;

        let executions_sql = format!(
            "SELECT {exe_contract},
                 s.price AS signal_price,
                 s.emitted_at AS signal_emitted_at,
                 (e.avg_fill_price - s.price) / s.price * 10000.0
                     * CASE WHEN e.side = 'sell' THEN -1.0 ELSE 1.0 END AS slippage_bps,
                 CAST(CAST(e.executed_at AS BIGINT) - CAST(s.emitted_at AS BIGINT) AS DOUBLE) / 1000.0
                     AS signal_to_fill_ms
             FROM {DEDUPED_EXECUTIONS} e LEFT JOIN {DEDUPED_SIGNALS} s ON e.signal_id = s.signal_id
             ORDER BY e.executed_at, e.execution_id"
        );
        let executions = ctx
            .sql(&executions_sql)
            .await
            .map_err(q)?
            .collect()
            .await
            .map_err(q)?;

        let mut summary = FinalizeSummary {
            signals: signals.iter().map(RecordBatch::num_rows).sum(),
            executions: executions.iter().map(RecordBatch::num_rows).sum(),
            ..Default::default()
        };
        let signals_folder = tables::folder_of(SIGNALS);
        let executions_folder = tables::folder_of(EXECUTIONS_ENRICHED);
        summary
            .files
            .extend(self.write(&signals_folder, &signals, "emitted_at").await?);
        summary.files.extend(
            self.write(&executions_folder, &executions, "executed_at")
                .await?,
        );

        // One partition: rows are aggregated in their (sorted) input order, so
        // float sums come out bit-identical however the windows were batched.
        let mctx = SessionContext::new_with_config_rt(
            SessionConfig::new().with_target_partitions(1),
            self.runtime.clone(),
        );
        crate::metrics::prepare(&mctx);
        let mem = |schema, batches: Vec<RecordBatch>| {
            MemTable::try_new(schema, vec![batches]).map(Arc::new)
        };
        mctx.register_table(
            INPUT_SIGNALS,
            mem(schema::signals_schema(), signals).map_err(q)?,
        )
        .map_err(q)?;
        mctx.register_table(
            INPUT_EXECUTIONS,
            mem(schema::executions_enriched_schema(), executions).map_err(q)?,
        )
        .map_err(q)?;
        for m in metrics {
            let rows = match mctx
                .sql_with_options(&m.sql, crate::metrics::catalog::read_only())
                .await
            {
                Ok(df) => df.collect().await,
                Err(e) => Err(e),
            };
            match rows.and_then(|r| to_output(&r, m).map_err(DataFusionError::from)) {
                Ok(rows) => {
                    summary
                        .metric_rows
                        .insert(m.name.clone(), rows.iter().map(RecordBatch::num_rows).sum());
                    let table = format!("metrics/{}", m.name);
                    summary
                        .files
                        .extend(self.write(&table, &rows, "window_start").await?);
                }
                Err(e) => {
                    warn!(metric = %m.name, file = %m.path.display(), windows = %range, error = %e,
                          "metric query failed; its rows for these windows are missing until reprocessed");
                    summary.metric_errors.push((m.name.clone(), e.to_string()));
                }
            }
        }
        info!(windows = %range, signals = summary.signals, executions = summary.executions,
              files = summary.files.len(), "windows finalized");
        Ok(summary)
    }

    /// Writes final rows of `folder`, one file per window.
    async fn write(
        &self,
        folder: &str,
        batches: &[RecordBatch],
        time_column: &str,
    ) -> Result<Vec<String>, EngineError> {
        write_partitioned(
            &self.store,
            folder,
            batches,
            time_column,
            FileNaming::PerWindow,
        )
        .await
    }
}

/// A metric column as written: timestamps in microseconds, UTC (the unit of
/// the raw tables; Athena, BigQuery and Snowflake read no nanoseconds, and
/// `date_bin` returns them); small integers and floats widened, losslessly,
/// to the types every warehouse declares.
pub fn output_field(f: &Field) -> Field {
    let to = match f.data_type() {
        DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::Float16 | DataType::Float32 => DataType::Float64,
        _ => return f.clone(),
    };
    f.clone().with_data_type(to)
}

/// The schema of a metric's files, from the schema of its query.
pub fn output_schema(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| output_field(f))
            .collect::<Vec<_>>(),
    )
}

/// Metric rows in their [`output_schema`], the schema carrying the metric's
/// name and definition hash into the files' key-value metadata.
fn to_output(batches: &[RecordBatch], metric: &Metric) -> Result<Vec<RecordBatch>, ArrowError> {
    use crate::metrics::catalog::{METADATA_DEFINITION_SHA256, METADATA_METRIC};
    let metadata: std::collections::HashMap<String, String> = [
        (METADATA_METRIC.to_string(), metric.name.clone()),
        (
            METADATA_DEFINITION_SHA256.to_string(),
            metric.definition_hash(),
        ),
    ]
    .into();
    batches
        .iter()
        .map(|b| {
            let schema = Arc::new(output_schema(&b.schema()).with_metadata(metadata.clone()));
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(schema, columns)
        })
        .collect()
}

/// How the files of one write are cut and named.
#[derive(Debug, Clone, Copy)]
pub enum FileNaming<'a> {
    /// One file per hour partition, named after the epoch (`<stem>.parquet`).
    Epoch(&'a str),
    /// One file per one-minute window (`w-YYYYMMDDTHHMM.parquet`): however
    /// finalization was chunked, a window's rows always land in the same
    /// file, so a repeated finalization replaces rather than adds.
    PerWindow,
}

/// Rows bound for one file, and the file's path relative to the root.
pub type PlannedFile = (String, Vec<RecordBatch>);

/// Cuts `batches` into files under `<folder>/dt=…/hour=…/` as `naming` says:
/// the paths are known before anything is written. Empty input plans nothing.
pub fn plan_partitioned(
    folder: &str,
    batches: &[RecordBatch],
    time_column: &str,
    naming: FileNaming<'_>,
) -> Result<Vec<PlannedFile>, EngineError> {
    let width = match naming {
        FileNaming::Epoch(_) => 3_600_000_000,
        FileNaming::PerWindow => crate::window::WINDOW_MICROS,
    };
    let mut groups: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        let parts = split_by_bucket(b, time_column, width).map_err(|e| EngineError::Encode {
            table: folder.to_string(),
            range: format!("{naming:?}"),
            reason: e.to_string(),
        })?;
        for (start, part) in parts {
            groups.entry(start).or_default().push(part);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(start, parts)| {
            let name = match naming {
                FileNaming::Epoch(stem) => stem.to_string(),
                FileNaming::PerWindow => format!("w-{}", format_bound(start)),
            };
            let rel = format!(
                "{folder}/{}/{name}.parquet",
                HourPartition::of(start).path()
            );
            (rel, parts)
        })
        .collect())
}

/// Encodes and writes planned files; returns their paths.
pub async fn write_planned(
    store: &OutputStore,
    plan: &[PlannedFile],
) -> Result<Vec<String>, EngineError> {
    let mut files = Vec::with_capacity(plan.len());
    for (rel, parts) in plan {
        let bytes = encode(parts).map_err(|e| EngineError::Encode {
            table: rel.clone(),
            range: String::new(),
            reason: e.to_string(),
        })?;
        store.put(rel, bytes).await?;
        files.push(rel.clone());
    }
    Ok(files)
}

/// Writes `batches` under `<folder>/dt=…/hour=…/` as `naming` says, one
/// Parquet file per group of rows. Empty input writes nothing.
pub async fn write_partitioned(
    store: &OutputStore,
    folder: &str,
    batches: &[RecordBatch],
    time_column: &str,
    naming: FileNaming<'_>,
) -> Result<Vec<String>, EngineError> {
    write_planned(
        store,
        &plan_partitioned(folder, batches, time_column, naming)?,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{EpochBuffer, Message};
    use crate::decode::tests::{EXECUTION, SIGNAL};
    use crate::schema::{Topics, EXECUTIONS_TOPIC, SIGNALS_TOPIC};
    use crate::sink::store::S3Options;

    /// Raw rows with duplicates (same id on two partitions) finalize to one
    /// row per id, joined to the signal, and the metrics count each once.
    #[tokio::test]
    async fn finalize_deduplicates_by_id_and_joins_signals() {
        let store = OutputStore::open("memory://lake", &S3Options::default()).unwrap();
        let mut buf = EpochBuffer::new(Topics::default());
        let second = EXECUTION.replace("000000000001\",\"signal_id", "000000000002\",\"signal_id");
        let msgs = [
            (SIGNALS_TOPIC, 0, 1, SIGNAL.to_string()),
            (SIGNALS_TOPIC, 1, 7, SIGNAL.to_string()),
            (EXECUTIONS_TOPIC, 0, 1, EXECUTION.to_string()),
            (EXECUTIONS_TOPIC, 2, 5, EXECUTION.to_string()),
            (EXECUTIONS_TOPIC, 1, 3, second),
        ];
        for (topic, partition, offset, value) in &msgs {
            let m = Message::with_value(topic, *partition, *offset, value.as_bytes());
            buf.push(&m, 0);
        }
        let b = buf.take();
        write_partitioned(
            &store,
            "raw/influencer_signals",
            &[b.signals],
            "emitted_at",
            FileNaming::Epoch("e1"),
        )
        .await
        .unwrap();
        write_partitioned(
            &store,
            "raw/execution_results",
            &[b.executions],
            "executed_at",
            FileNaming::Epoch("e1"),
        )
        .await
        .unwrap();

        let metrics = crate::metrics::catalog::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sql"
        )))
        .unwrap();
        let f = Finalizer::new(store.clone(), 64 << 20, 3_600_000_000).unwrap();
        let h = 1_767_261_600_000_000; // 2026-01-01T10:00Z, the fixture's hour
        let s = f.finalize(&metrics, h, h + 60_000_000).await.unwrap();
        assert_eq!((s.signals, s.executions), (1, 2));
        assert!(s.metric_errors.is_empty(), "{:?}", s.metric_errors);
        assert_eq!(s.metric_rows["system_metrics_1m"], 1);
        assert_eq!(s.metric_rows["subscriber_metrics_1m"], 1);

        let rows = crate::query::collect(
            &store,
            "SELECT executions, filled, signals, p50_signal_to_fill_ms FROM system_metrics_1m",
        )
        .await
        .unwrap();
        let out = arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        assert!(
            out.contains("| 2          | 2      | 1       | 250.0"),
            "{out}"
        );
        // Rows written after a first finalization are seen by the next one
        // (no stale file listing).
        let mut buf = EpochBuffer::new(Topics::default());
        let third = EXECUTION.replace("000000000001\",\"signal_id", "000000000003\",\"signal_id");
        buf.push(
            &Message::with_value(EXECUTIONS_TOPIC, 0, 9, third.as_bytes()),
            0,
        );
        write_partitioned(
            &store,
            "raw/execution_results",
            &[buf.take().executions],
            "executed_at",
            FileNaming::Epoch("e2"),
        )
        .await
        .unwrap();
        let again = f.finalize(&metrics, h, h + 60_000_000).await.unwrap();
        assert_eq!(again.executions, 3);
        // A range without data writes nothing.
        let empty = f.finalize(&metrics, h - 60_000_000, h).await.unwrap();
        assert_eq!((empty.executions, empty.files.len()), (0, 0));
    }

    #[test]
    fn partition_filter_names_every_hour() {
        let h = 1_767_261_600_000_000; // 2026-01-01T10:00Z
        assert_eq!(
            partition_filter(h, h + 60_000_000),
            "((dt = '2026-01-01' AND hour = '10'))"
        );
        assert_eq!(
            partition_filter(h - 60_000_000, h + 60_000_000),
            "((dt = '2026-01-01' AND hour = '09') OR (dt = '2026-01-01' AND hour = '10'))"
        );
        assert_eq!(partition_filter(h, h), "FALSE");
        assert_eq!(
            range_name(h, h + 300_000_000),
            "20260101T1000-20260101T1005"
        );
    }
}

//! Command line and configuration file.
//!
//! Every option can be given as a flag, as an `AP_*` environment variable or
//! in the TOML file named by `--config`; the flag wins over the variable,
//! which wins over the file, which wins over the default. The doc comments
//! below are the `--help` text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::schema::Topics;
use crate::sink::store::S3Options;

/// Kafka copy-trading events to Hive-partitioned Parquet and SQL metrics.
#[derive(Debug, Parser)]
#[command(name = "analytics-processor", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file (top-level keys: the common options; a `[run]`
    /// table for the daemon's options).
    #[arg(long, env = "AP_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "AP_LOG_JSON", global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the continuous micro-batch daemon: consume both topics, write raw
    /// Parquet every epoch, finalize windows the watermark has passed.
    Run {
        #[command(flatten)]
        common: CommonOpts,
        #[command(flatten)]
        run: RunOpts,
    },
    /// Produce realistic synthetic events into both topics (demo and load).
    Produce {
        #[command(flatten)]
        common: CommonOpts,
        #[command(flatten)]
        produce: crate::produce::ProduceOpts,
    },
    /// Recompute the final tables and metrics of a range of final windows from
    /// the raw Parquet on the store (late events included), replacing what
    /// was there. Safe while the daemon runs; one reprocess at a time.
    Reprocess {
        #[command(flatten)]
        common: CommonOpts,
        #[command(flatten)]
        reprocess: crate::reprocess::ReprocessOpts,
    },
    /// Run ad-hoc SQL over the output tables and print the result.
    Query {
        #[command(flatten)]
        common: CommonOpts,
        /// Output format: a table for people, or JSON lines for scripts.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// The SELECT statement; tables: raw_influencer_signals,
        /// raw_execution_results, signals, executions_enriched, one per
        /// metric (e.g. influencer_metrics_1m), dead_letter_<topic>,
        /// late_<topic> (events after their window was final), _completeness
        /// (hours whose windows are all final).
        sql: String,
    },
    /// Print the statements that make every output table (raw, final,
    /// metrics, dead letters, late events, completeness) queryable in a
    /// warehouse engine over the configured output location, with the `dt`
    /// and `hour` partition columns and the column types of that engine.
    Ddl {
        #[command(flatten)]
        common: CommonOpts,
        /// The engine: duckdb, clickhouse, trino, athena, bigquery, snowflake.
        #[arg(long, value_enum)]
        dialect: crate::ddl::Dialect,
        /// Schema (BigQuery: dataset) the tables are created in, for trino,
        /// athena, bigquery and snowflake.
        #[arg(long, default_value = "analytics")]
        schema: String,
        /// How the warehouse reaches an s3:// output: for bigquery the
        /// connection `region.name` (BigQuery Omni), for snowflake the
        /// storage integration of the stage. Others use their own credentials.
        #[arg(long)]
        connection: Option<String>,
    },
    /// Work with the metric SQL files.
    Sql {
        #[command(subcommand)]
        command: SqlCommand,
    },
}

/// How `query` prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum SqlCommand {
    /// Check every `sql/*.sql`: its header, that it is one SELECT, and that
    /// it plans against the input schemas and returns its key columns.
    /// Prints every problem as file:line:column and exits non-zero if any.
    Check {
        #[command(flatten)]
        common: CommonOpts,
    },
    /// Run every metric over its test events (`fixtures/<metric>/input.jsonl`)
    /// the way the daemon would: validation, epochs, watermark, late events,
    /// deduplication; compare its rows with `fixtures/<metric>/expected.csv`
    /// and show the difference. Each input must hold at least one malformed,
    /// one duplicated and one late event. Exits non-zero on any failure.
    Test {
        #[command(flatten)]
        common: CommonOpts,
        /// Folder holding one sub-folder per metric.
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// Write the rows the metrics return as the expected ones (review the
        /// change with `git diff` before committing it).
        #[arg(long)]
        bless: bool,
        /// Only these metrics (file names without `.sql`) [default: all].
        metrics: Vec<String>,
    },
}

/// Options shared by the commands. Unset options fall back to the config file,
/// then to laptop defaults.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonOpts {
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, env = "AP_BROKERS")]
    pub brokers: Option<String>,
    /// Kafka consumer group [default: analytics-processor].
    #[arg(long, env = "AP_GROUP")]
    pub group: Option<String>,
    /// Name of this instance; several instances in one group each need their
    /// own (letters, digits, `-`, `_`, `.`). It keys the instance's
    /// checkpoints and raw file names on the store, and is its static member
    /// id in the consumer group (Kafka `group.instance.id`): restarted with
    /// the same id it gets its partitions back at once [default: main,
    /// without static membership].
    #[arg(long, env = "AP_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Output root: a directory, or a URL such as s3://bucket/prefix [default: ./data].
    #[arg(long, env = "AP_OUTPUT")]
    pub output: Option<String>,
    /// Folder of the metric SQL files [default: sql].
    #[arg(long, env = "AP_SQL_DIR")]
    pub sql_dir: Option<PathBuf>,
    /// Topic of influencer signals [default: influencer_signals].
    #[arg(long, env = "AP_SIGNALS_TOPIC")]
    pub signals_topic: Option<String>,
    /// Topic of execution results [default: execution_results].
    #[arg(long, env = "AP_EXECUTIONS_TOPIC")]
    pub executions_topic: Option<String>,
    /// S3 endpoint for S3-compatible servers, e.g. http://127.0.0.1:9000
    /// (credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "AP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "AP_S3_REGION")]
    pub s3_region: Option<String>,
}

/// Options of the daemon (`[run]` in the config file).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOpts {
    /// Seconds between epochs [default: 5].
    #[arg(long, env = "AP_INTERVAL")]
    pub interval: Option<f64>,
    /// Close an epoch early once it holds this many messages [default: one
    /// per KiB of a quarter of --memory-limit, at most 500000].
    #[arg(long, env = "AP_MAX_ROWS")]
    pub max_rows: Option<usize>,
    /// Seconds an event may lag the newest one and still be in its window's
    /// metrics [default: 60].
    #[arg(long, env = "AP_ALLOWED_LATENESS")]
    pub allowed_lateness: Option<f64>,
    /// Seconds without messages after which a partition stops holding the
    /// watermark back [default: 30].
    #[arg(long, env = "AP_IDLE_TIMEOUT")]
    pub idle_timeout: Option<f64>,
    /// Seconds without a heartbeat after which another instance counts as
    /// gone: its unfinished epoch is abandoned and the finalizer lease can
    /// move [default: 30].
    #[arg(long, env = "AP_INSTANCE_TIMEOUT")]
    pub instance_timeout: Option<f64>,
    /// Hours a signal may precede its executions and still be joined [default: 24].
    #[arg(long, env = "AP_LOOKBACK_HOURS")]
    pub lookback_hours: Option<f64>,
    /// Memory ceiling for the whole process, e.g. 512MiB, 2GiB: it sizes the
    /// Kafka prefetch queue (1/16), epochs (1/4, unless --max-rows is given),
    /// the events finalized at once (1/2) and the query engine's pool
    /// [default: 1GiB].
    #[arg(long, env = "AP_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// Stop once every partition is read to its end and no message came for
    /// this many seconds, finalizing every window first (end of input: for
    /// demos, tests and one-shot catch-up).
    #[arg(long, env = "AP_STOP_WHEN_IDLE")]
    pub stop_when_idle: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("option {option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
}

/// The parsed config file.
#[derive(Debug, Default)]
pub struct FileConfig {
    pub common: CommonOpts,
    pub run: RunOpts,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let err = |reason: String| ConfigError::File {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let run = match table.remove("run") {
            Some(v) => v.try_into().map_err(|e| format!("[run]: {e}"))?,
            None => RunOpts::default(),
        };
        let common = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string())?;
        Ok(Self { common, run })
    }
}

macro_rules! merge_opts {
    ($ty:ident { $($f:ident),* }) => {
        impl $ty {
            /// Fills every unset option from `file`.
            pub fn or(self, file: $ty) -> $ty {
                $ty { $($f: self.$f.or(file.$f),)* }
            }
        }
    };
}
merge_opts!(CommonOpts {
    brokers,
    group,
    instance_id,
    output,
    sql_dir,
    signals_topic,
    executions_topic,
    s3_endpoint,
    s3_region
});
merge_opts!(RunOpts {
    interval,
    max_rows,
    allowed_lateness,
    idle_timeout,
    instance_timeout,
    lookback_hours,
    memory_limit,
    stop_when_idle
});

/// Resolved common settings.
#[derive(Debug, Clone)]
pub struct Common {
    pub brokers: String,
    pub group: String,
    pub instance_id: Option<String>,
    pub output: String,
    pub sql_dir: PathBuf,
    pub topics: Topics,
    pub s3: S3Options,
}

impl CommonOpts {
    pub fn resolve(self) -> Common {
        let defaults = Topics::default();
        Common {
            brokers: self.brokers.unwrap_or_else(|| "127.0.0.1:9092".into()),
            group: self.group.unwrap_or_else(|| "analytics-processor".into()),
            instance_id: self.instance_id,
            output: self.output.unwrap_or_else(|| "./data".into()),
            sql_dir: self.sql_dir.unwrap_or_else(|| "sql".into()),
            topics: Topics {
                signals: self.signals_topic.unwrap_or(defaults.signals),
                executions: self.executions_topic.unwrap_or(defaults.executions),
            },
            s3: S3Options {
                endpoint: self.s3_endpoint,
                region: self
                    .s3_region
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| Some("us-east-1".into())),
                access_key_id: None,
                secret_access_key: None,
            },
        }
    }
}

/// Resolved daemon settings.
#[derive(Debug, Clone)]
pub struct Run {
    pub interval: Duration,
    pub max_rows: usize,
    pub allowed_lateness: Duration,
    pub idle_timeout: Duration,
    pub instance_timeout: Duration,
    pub lookback: Duration,
    pub memory_limit: usize,
    pub stop_when_idle: Option<Duration>,
}

fn seconds(option: &'static str, v: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let s = v.unwrap_or(default);
    Duration::try_from_secs_f64(s).map_err(|_| ConfigError::Invalid {
        option,
        reason: format!("{s} is not a number of seconds >= 0"),
    })
}

impl RunOpts {
    pub fn resolve(self) -> Result<Run, ConfigError> {
        let interval = seconds("--interval", self.interval, 5.0)?;
        if interval.is_zero() {
            return Err(ConfigError::Invalid {
                option: "--interval",
                reason: "must be > 0".into(),
            });
        }
        let memory_limit = parse_bytes(self.memory_limit.as_deref().unwrap_or("1GiB"))?;
        Ok(Run {
            interval,
            max_rows: self
                .max_rows
                .unwrap_or((memory_limit / 4 / 1024).min(500_000))
                .max(1),
            allowed_lateness: seconds("--allowed-lateness", self.allowed_lateness, 60.0)?,
            idle_timeout: seconds("--idle-timeout", self.idle_timeout, 30.0)?,
            instance_timeout: seconds("--instance-timeout", self.instance_timeout, 30.0)?,
            lookback: seconds(
                "--lookback-hours",
                self.lookback_hours.map(|h| h * 3600.0),
                86_400.0,
            )?,
            memory_limit,
            stop_when_idle: self
                .stop_when_idle
                .map(|s| seconds("--stop-when-idle", Some(s), 0.0))
                .transpose()?,
        })
    }
}

/// Parses `512MiB`, `2GiB`, `1.5GB`, `1000000` into bytes.
pub fn parse_bytes(s: &str) -> Result<usize, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => f64::NAN,
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n > 0.0 && mult.is_finite() => Ok((n * mult) as usize),
        _ => Err(ConfigError::Invalid {
            option: "--memory-limit",
            reason: format!("{s:?} is not a size such as 512MiB or 2GiB"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_beats_default() {
        let file = FileConfig::parse(
            "brokers = \"file:1\"\noutput = \"s3://b/p\"\n[run]\ninterval = 7\nmax_rows = 10\n",
        )
        .unwrap();
        let flags = CommonOpts {
            brokers: Some("flag:1".into()),
            ..Default::default()
        };
        let c = flags.or(file.common).resolve();
        assert_eq!(c.brokers, "flag:1");
        assert_eq!(c.output, "s3://b/p");
        assert_eq!(c.group, "analytics-processor");
        let r = RunOpts::default().or(file.run).resolve().unwrap();
        assert_eq!(r.interval, Duration::from_secs(7));
        assert_eq!(r.max_rows, 10);
        assert_eq!(r.allowed_lateness, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = FileConfig::parse("brokerz = \"x\"").unwrap_err();
        assert!(e.contains("brokerz"), "{e}");
        let e = FileConfig::parse("[run]\nintervall = 3").unwrap_err();
        assert!(e.contains("[run]") && e.contains("intervall"), "{e}");
    }

    #[test]
    fn sizes_and_durations_are_validated() {
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("-1GiB").is_err());
        let bad = RunOpts {
            interval: Some(-1.0),
            ..Default::default()
        };
        assert!(bad
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("--interval"));
    }
}

//! analytics-processor: Kafka copy-trading events to Hive-partitioned Parquet
//! and SQL metrics on DataFusion.
//!
//! Data flows one way through modules named for their stage:
//! `source` (Kafka) -> `decode` (bytes to validated rows) -> `buffer` (one
//! epoch of Arrow columns and its offsets) -> `sink` (partitioned Parquet on
//! an object store) -> `checkpoint` (epoch records) -> `window` (watermarks)
//! -> `metrics` (the `sql/` catalog run by DataFusion). `daemon` drives them;
//! `query` reads the outputs back, `ddl` describes them to warehouses; `produce` makes synthetic input.

pub mod buffer;
pub mod checkpoint;
pub mod completeness;
pub mod config;
pub mod coordination;
pub mod daemon;
pub mod ddl;
pub mod decode;
pub mod late;
pub mod metrics;
pub mod produce;
pub mod query;
pub mod reprocess;
pub mod schema;
pub mod sink;
pub mod source;
pub mod tables;
pub mod window;

pub use daemon::{run as run_daemon, RunSummary};

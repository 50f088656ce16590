//! Arrow schemas of the inbound contracts and of every output table
//! (`contracts.md` §1 and §2). One place, so decode, sinks, SQL checks and
//! `ddl` agree on names and types.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Kafka topic of influencer signals.
pub const SIGNALS_TOPIC: &str = "influencer_signals";
/// Kafka topic of execution results.
pub const EXECUTIONS_TOPIC: &str = "execution_results";

/// The two topics read, by role. Their names are configurable so that
/// several pipelines (or tests) can share one broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub signals: String,
    pub executions: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            signals: SIGNALS_TOPIC.into(),
            executions: EXECUTIONS_TOPIC.into(),
        }
    }
}

impl Topics {
    pub fn both(&self) -> [&str; 2] {
        [&self.signals, &self.executions]
    }
}

/// Event times are kept to the microsecond, in UTC.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(name, ts_type(), nullable)
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn f64f(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Float64, nullable)
}

/// Contract fields of `influencer_signals`, in contract order.
pub fn signal_fields() -> Vec<Field> {
    vec![
        Field::new("schema_version", DataType::Int32, false),
        utf8("signal_id", false),
        utf8("influencer_id", false),
        utf8("instrument", false),
        utf8("side", false),
        utf8("action", false),
        f64f("price", false),
        f64f("allocation_pct", false),
        f64f("confidence", true),
        ts("emitted_at", false),
    ]
}

/// Contract fields of `execution_results`, in contract order.
pub fn execution_fields() -> Vec<Field> {
    vec![
        Field::new("schema_version", DataType::Int32, false),
        utf8("execution_id", false),
        utf8("signal_id", false),
        utf8("influencer_id", false),
        utf8("subscriber_id", false),
        utf8("instrument", false),
        utf8("side", false),
        utf8("status", false),
        f64f("requested_qty", false),
        f64f("filled_qty", false),
        f64f("avg_fill_price", true),
        f64f("fee", false),
        f64f("realized_pnl", true),
        utf8("error_code", true),
        utf8("venue", false),
        ts("submitted_at", false),
        ts("executed_at", false),
    ]
}

/// Columns every raw row carries besides the contract fields.
pub fn kafka_fields() -> Vec<Field> {
    vec![
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        ts("kafka_timestamp", true),
        ts("ingested_at", false),
    ]
}

fn with_kafka(mut fields: Vec<Field>) -> SchemaRef {
    fields.extend(kafka_fields());
    Arc::new(Schema::new(fields))
}

/// `raw/influencer_signals`: validated signals as received.
pub fn raw_signals_schema() -> SchemaRef {
    with_kafka(signal_fields())
}

/// `raw/execution_results`: validated executions as received.
pub fn raw_executions_schema() -> SchemaRef {
    with_kafka(execution_fields())
}

/// `signals`: one row per distinct `signal_id`.
pub fn signals_schema() -> SchemaRef {
    Arc::new(Schema::new(signal_fields()))
}

/// `executions_enriched`: one row per distinct `execution_id`, joined to its signal.
pub fn executions_enriched_schema() -> SchemaRef {
    let mut fields = execution_fields();
    fields.extend([
        f64f("signal_price", true),
        ts("signal_emitted_at", true),
        f64f("slippage_bps", true),
        f64f("signal_to_fill_ms", true),
    ]);
    Arc::new(Schema::new(fields))
}

/// `_late/<topic>`: one row per valid event whose window was already final
/// when it was committed (its row is in `raw/` too).
pub fn late_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("topic", false),
        utf8("id", false),
        ts("event_time", false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        ts("ingested_at", false),
        ts("final_through", false),
        f64f("seconds_late", false),
    ]))
}

/// `_completeness`: one row per final table and hour once every window of
/// the hour is final.
pub fn completeness_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("table_name", false),
        ts("hour_start", false),
        ts("final_at", false),
        ts("watermark", true),
        utf8("reason", false),
        utf8("instance", false),
        Field::new("lease_term", DataType::UInt64, false),
    ]))
}

/// `_dead_letter/<topic>`: one row per message that failed decoding or validation.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8("topic", false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        ts("kafka_timestamp", true),
        Field::new("key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, true),
        utf8("error_kind", false),
        utf8("reason", false),
        ts("ingested_at", false),
    ]))
}

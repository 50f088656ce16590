//! Late events: valid events whose window was already final when their epoch
//! committed. They stay in `raw/` (nothing is dropped), are left out of the
//! final tables until a reprocess of their range, and are listed in
//! `_late/<topic>` with how late they were, so nobody has to guess.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::filter_record_batch;
use arrow::error::ArrowError;

use crate::schema;

/// How late an event was, for counting: by how much its event time fell
/// behind the bound of final windows.
pub fn lateness_bucket(seconds_late: f64) -> &'static str {
    match seconds_late {
        s if s < 60.0 => "under_1m",
        s if s < 600.0 => "under_10m",
        s if s < 3600.0 => "under_1h",
        _ => "over_1h",
    }
}

/// The rows of `batch` (raw rows of `topic`, ids in `id_column`, event times
/// in `time_column`) whose event time lies before `final_through`, as
/// `_late` rows.
pub fn late_rows(
    batch: &RecordBatch,
    topic: &str,
    id_column: &str,
    time_column: &str,
    final_through: i64,
) -> Result<RecordBatch, ArrowError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError(format!("raw rows lack {name}")))
    };
    let times = column(time_column)?;
    let times = times
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| ArrowError::SchemaError(format!("{time_column} is not a timestamp")))?;
    let late: BooleanArray = times.iter().map(|t| t.map(|t| t < final_through)).collect();
    let rows = filter_record_batch(batch, &late)?;
    let n = rows.num_rows();
    let get = |name: &str| -> Result<ArrayRef, ArrowError> {
        rows.column_by_name(name)
            .cloned()
            .ok_or_else(|| ArrowError::SchemaError(format!("raw rows lack {name}")))
    };
    let event_time = get(time_column)?;
    let seconds_late: Float64Array = event_time
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("checked above")
        .iter()
        .map(|t| t.map(|t| (final_through - t) as f64 / 1e6))
        .collect();
    let final_through =
        TimestampMicrosecondArray::from(vec![final_through; n]).with_timezone("UTC");
    RecordBatch::try_new(
        schema::late_schema(),
        vec![
            Arc::new(StringArray::from(vec![topic; n])),
            get(id_column)?,
            event_time,
            get("kafka_partition")?,
            get("kafka_offset")?,
            get("ingested_at")?,
            Arc::new(final_through),
            Arc::new(seconds_late),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::{EpochBuffer, Message};
    use crate::decode::tests::EXECUTION;
    use crate::schema::{Topics, EXECUTIONS_TOPIC};

    #[test]
    fn rows_before_the_final_bound_are_listed_with_their_lateness() {
        let mut buf = EpochBuffer::new(Topics::default());
        let later = EXECUTION.replace("10:00:01.500Z\"}", "10:05:00Z\"}");
        for (offset, value) in [(1, EXECUTION.to_string()), (2, later)] {
            buf.push(
                &Message::with_value(EXECUTIONS_TOPIC, 3, offset, value.as_bytes()),
                7,
            );
        }
        let b = buf.take();
        assert_eq!(b.executions.num_rows(), 2);
        let bound = 1_767_261_660_000_000; // 10:01:00
        let late = late_rows(
            &b.executions,
            EXECUTIONS_TOPIC,
            "execution_id",
            "executed_at",
            bound,
        )
        .unwrap();
        assert_eq!(late.num_rows(), 1);
        let seconds = late
            .column_by_name("seconds_late")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0);
        assert_eq!(seconds, 58.5);
        assert_eq!(lateness_bucket(seconds), "under_1m");
        assert_eq!(lateness_bucket(7200.0), "over_1h");
        let none = late_rows(
            &b.executions,
            EXECUTIONS_TOPIC,
            "execution_id",
            "executed_at",
            0,
        )
        .unwrap();
        assert_eq!(none.num_rows(), 0);
    }
}

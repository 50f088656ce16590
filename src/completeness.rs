//! Completeness markers: when every window of an hour is final, one row per
//! final table goes to `_completeness/dt=…/hour=…/final.parquet`, saying
//! when and under which watermark, so a warehouse job can wait for an hour
//! instead of guessing. Raw tables have no marker: late events still reach
//! `raw/` after an hour is final.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array};
use arrow::error::ArrowError;

use crate::metrics::engine::PlannedFile;
use crate::schema;
use crate::sink::partition::HourPartition;
use crate::tables::COMPLETENESS_FOLDER;

/// The marker file of the hour starting at `hour_start` (µs) for `tables`;
/// `watermark` is `None` when the end of input made the hour final. Written
/// again with the same name if the hour is finalized again.
pub fn marker(
    tables: &[String],
    hour_start: i64,
    watermark: Option<i64>,
    instance: &str,
    term: u64,
) -> Result<PlannedFile, ArrowError> {
    let n = tables.len();
    let ts =
        |v: Vec<Option<i64>>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"));
    let now = chrono::Utc::now().timestamp_micros();
    let reason = if watermark.is_some() {
        "watermark"
    } else {
        "end_of_input"
    };
    let batch = RecordBatch::try_new(
        schema::completeness_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(tables)),
            ts(vec![Some(hour_start); n]),
            ts(vec![Some(now); n]),
            ts(vec![watermark; n]),
            Arc::new(StringArray::from(vec![reason; n])),
            Arc::new(StringArray::from(vec![instance; n])),
            Arc::new(UInt64Array::from(vec![term; n])),
        ],
    )?;
    let path = format!(
        "{COMPLETENESS_FOLDER}/{}/final.parquet",
        HourPartition::of(hour_start).path()
    );
    Ok((path, vec![batch]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_table_in_the_hour_partition() {
        let h = 1_767_261_600_000_000; // 2026-01-01T10:00Z
        let tables = vec!["signals".to_string(), "system_metrics_1m".to_string()];
        let (path, batches) = marker(&tables, h, Some(h + 3_700_000_000), "main", 2).unwrap();
        assert_eq!(path, "_completeness/dt=2026-01-01/hour=10/final.parquet");
        assert_eq!(batches[0].num_rows(), 2);
        let (_, b) = marker(&tables, h, None, "main", 2).unwrap();
        let reason = b[0].column_by_name("reason").unwrap();
        let reason = reason.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(reason.value(0), "end_of_input");
    }
}

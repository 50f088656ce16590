//! Hive partitioning: pure functions from event time to `dt=…/hour=…` paths,
//! and the split of a batch into one batch per partition.

use std::collections::BTreeMap;

use arrow::array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::error::ArrowError;
use chrono::{DateTime, Timelike};

/// One Hive partition: a UTC date and hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HourPartition {
    /// Start of the hour, microseconds since the epoch.
    pub hour_start: i64,
}

const HOUR_US: i64 = 3_600_000_000;

impl HourPartition {
    /// The partition holding event time `t` (µs).
    pub fn of(t: i64) -> Self {
        Self {
            hour_start: t.div_euclid(HOUR_US) * HOUR_US,
        }
    }

    /// `dt=YYYY-MM-DD/hour=HH`.
    pub fn path(&self) -> String {
        let t = DateTime::from_timestamp_micros(self.hour_start).expect("validated event time");
        format!("dt={}/hour={:02}", t.format("%Y-%m-%d"), t.hour())
    }

    /// Every partition overlapping `[from, to)`.
    pub fn covering(from: i64, to: i64) -> Vec<Self> {
        let mut out = Vec::new();
        let mut h = Self::of(from).hour_start;
        while h < to {
            out.push(Self { hour_start: h });
            h += HOUR_US;
        }
        out
    }
}

/// Splits `batch` into runs of rows whose timestamp column `column` falls in
/// the same bucket of `width_us` microseconds (an hour, a window), keeping
/// row order; returns each bucket's start with its rows.
pub fn split_by_bucket(
    batch: &RecordBatch,
    column: &str,
    width_us: i64,
) -> Result<Vec<(i64, RecordBatch)>, ArrowError> {
    let col = batch
        .column_by_name(column)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column `{column}` to partition by")))?;
    // Any timestamp unit partitions the same way; compare in microseconds.
    let col = cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None)).map_err(|e| {
        ArrowError::SchemaError(format!(
            "column `{column}` ({}) is not a timestamp: {e}",
            col.data_type()
        ))
    })?;
    let times = col
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("cast to microseconds");
    let mut groups: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (i, t) in times.iter().enumerate() {
        // Null times cannot occur in validated rows; file them under the
        // epoch rather than drop them.
        let bucket = t.unwrap_or(0).div_euclid(width_us) * width_us;
        groups.entry(bucket).or_default().push(i as u32);
    }
    if groups.len() == 1 {
        let (b, _) = groups.into_iter().next().expect("one group");
        return Ok(vec![(b, batch.clone())]);
    }
    groups
        .into_iter()
        .map(|(b, idx)| Ok((b, take_record_batch(batch, &UInt32Array::from(idx))?)))
        .collect()
}

/// Splits `batch` by the hour of its timestamp column `column`.
pub fn split_by_hour(
    batch: &RecordBatch,
    column: &str,
) -> Result<Vec<(HourPartition, RecordBatch)>, ArrowError> {
    Ok(split_by_bucket(batch, column, HOUR_US)?
        .into_iter()
        .map(|(start, b)| (HourPartition { hour_start: start }, b))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn paths_are_hive_style_and_zero_padded() {
        // 2026-01-01T09:59:59.999999Z and the next microsecond.
        let t = 1_767_261_599_999_999;
        assert_eq!(HourPartition::of(t).path(), "dt=2026-01-01/hour=09");
        assert_eq!(HourPartition::of(t + 1).path(), "dt=2026-01-01/hour=10");
        assert_eq!(
            HourPartition::of(1_767_225_600_000_000 - 1).path(),
            "dt=2025-12-31/hour=23"
        );
    }

    #[test]
    fn covering_lists_every_hour_in_the_range() {
        let h = 1_767_261_600_000_000; // 10:00
        let c = HourPartition::covering(h - 1, h + HOUR_US + 1);
        let paths: Vec<_> = c.iter().map(HourPartition::path).collect();
        assert_eq!(
            paths,
            [
                "dt=2026-01-01/hour=09",
                "dt=2026-01-01/hour=10",
                "dt=2026-01-01/hour=11"
            ]
        );
        assert_eq!(HourPartition::covering(h, h + HOUR_US).len(), 1);
        assert!(HourPartition::covering(h, h).is_empty());
    }

    #[test]
    fn split_keeps_rows_in_their_hour() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )]));
        let h = 1_767_261_600_000_000;
        let ts = TimestampMicrosecondArray::from(vec![h + 1, h - 1, h + 2, h + HOUR_US])
            .with_timezone("UTC");
        let batch = RecordBatch::try_new(schema, vec![Arc::new(ts)]).unwrap();
        let parts = split_by_hour(&batch, "ts").unwrap();
        let sizes: Vec<_> = parts
            .iter()
            .map(|(p, b)| (p.path(), b.num_rows()))
            .collect();
        assert_eq!(
            sizes,
            [
                ("dt=2026-01-01/hour=09".to_string(), 1),
                ("dt=2026-01-01/hour=10".to_string(), 2),
                ("dt=2026-01-01/hour=11".to_string(), 1)
            ]
        );
        assert!(split_by_hour(&batch, "nope").is_err());
        let minutes = split_by_bucket(&batch, "ts", 60_000_000).unwrap();
        let starts: Vec<_> = minutes
            .iter()
            .map(|(s, b)| (*s - h, b.num_rows()))
            .collect();
        assert_eq!(starts, [(-60_000_000, 1), (0, 2), (HOUR_US, 1)]);
    }
}

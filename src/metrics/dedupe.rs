//! One row per event id: among duplicates (the same event delivered twice,
//! on one partition or two) the first in Kafka order wins, lowest
//! `kafka_partition` then lowest `kafka_offset`, so the choice does not
//! depend on the order files were read in.
//!
//! A hash pass over the ids: an SQL `row_number() OVER (PARTITION BY id …)`
//! sorts every row for what is a 1% case, and was the largest single cost of
//! finalizing windows.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use arrow::error::ArrowError;

/// Where a row stands: its batch and row, and its Kafka position.
#[derive(Clone, Copy)]
struct Row {
    batch: usize,
    row: usize,
    position: (i32, i64),
}

fn ids_of<'a>(batch: &'a RecordBatch, id: &str) -> Result<Vec<&'a str>, ArrowError> {
    let col = batch
        .column_by_name(id)
        .ok_or_else(|| ArrowError::SchemaError(format!("no column `{id}` to deduplicate by")))?;
    if col.null_count() > 0 {
        return Err(ArrowError::InvalidArgumentError(format!(
            "`{id}` has nulls: every event has an id"
        )));
    }
    Ok(match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().iter().flatten().collect(),
        DataType::LargeUtf8 => col.as_string::<i64>().iter().flatten().collect(),
        DataType::Utf8View => col.as_string_view().iter().flatten().collect(),
        other => {
            return Err(ArrowError::SchemaError(format!(
                "`{id}` is {other}, not a string"
            )))
        }
    })
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, ArrowError> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| ArrowError::SchemaError(format!("no column `{name}`")))
}

/// `batches` with one row per distinct `id`, the first in Kafka order; rows
/// keep their relative order. The batches need `kafka_partition` (Int32) and
/// `kafka_offset` (Int64) columns.
pub fn first_by_kafka_position(
    batches: &[RecordBatch],
    id: &str,
) -> Result<Vec<RecordBatch>, ArrowError> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut first: HashMap<&str, Row> = HashMap::with_capacity(rows);
    for (b, batch) in batches.iter().enumerate() {
        let ids = ids_of(batch, id)?;
        let partitions = column(batch, "kafka_partition")?.as_primitive::<Int32Type>();
        let offsets = column(batch, "kafka_offset")?.as_primitive::<Int64Type>();
        for (r, key) in ids.into_iter().enumerate() {
            let here = Row {
                batch: b,
                row: r,
                position: (partitions.value(r), offsets.value(r)),
            };
            match first.entry(key) {
                Entry::Vacant(v) => {
                    v.insert(here);
                }
                Entry::Occupied(mut o) if here.position < o.get().position => {
                    o.insert(here);
                }
                Entry::Occupied(_) => {}
            }
        }
    }
    if first.len() == rows {
        return Ok(batches.to_vec()); // no duplicates: nothing to copy
    }
    let mut keep: Vec<Vec<bool>> = batches.iter().map(|b| vec![false; b.num_rows()]).collect();
    for r in first.values() {
        keep[r.batch][r.row] = true;
    }
    batches
        .iter()
        .zip(keep)
        .map(|(b, k)| filter_record_batch(b, &BooleanArray::from(k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray, StringViewArray};
    use std::sync::Arc;

    fn batch(ids: &[&str], positions: &[(i32, i64)], view: bool) -> RecordBatch {
        let id: Arc<dyn Array> = if view {
            Arc::new(StringViewArray::from(ids.to_vec()))
        } else {
            Arc::new(StringArray::from(ids.to_vec()))
        };
        RecordBatch::try_from_iter([
            ("id", id),
            (
                "kafka_partition",
                Arc::new(Int32Array::from_iter_values(positions.iter().map(|p| p.0))) as _,
            ),
            (
                "kafka_offset",
                Arc::new(Int64Array::from_iter_values(positions.iter().map(|p| p.1))) as _,
            ),
        ])
        .unwrap()
    }

    fn kept(out: &[RecordBatch]) -> Vec<(String, i32, i64)> {
        out.iter()
            .flat_map(|b| {
                let ids = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                let ids = ids.as_string::<i32>().clone();
                let p = b.column(1).as_primitive::<Int32Type>().clone();
                let o = b.column(2).as_primitive::<Int64Type>().clone();
                (0..b.num_rows())
                    .map(move |i| (ids.value(i).to_string(), p.value(i), o.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_first_in_kafka_order_wins_whatever_the_batch_order() {
        for view in [false, true] {
            let a = batch(&["x", "y", "x"], &[(2, 5), (0, 1), (1, 9)], view);
            let b = batch(&["z", "x", "y"], &[(0, 2), (1, 3), (0, 0)], view);
            let want = |mut v: Vec<(String, i32, i64)>| {
                v.sort();
                v
            };
            let expected = vec![
                ("x".to_string(), 1, 3),
                ("y".to_string(), 0, 0),
                ("z".to_string(), 0, 2),
            ];
            let ab = kept(&first_by_kafka_position(&[a.clone(), b.clone()], "id").unwrap());
            let ba = kept(&first_by_kafka_position(&[b, a], "id").unwrap());
            assert_eq!(want(ab), expected);
            assert_eq!(want(ba), expected);
        }
    }

    #[test]
    fn rows_keep_their_order_and_unique_input_is_returned_as_is() {
        let a = batch(
            &["c", "a", "b", "a"],
            &[(0, 4), (0, 5), (0, 6), (0, 7)],
            false,
        );
        let out = first_by_kafka_position(std::slice::from_ref(&a), "id").unwrap();
        let ids: Vec<_> = kept(&out).into_iter().map(|k| k.0).collect();
        assert_eq!(ids, ["c", "a", "b"]);
        let unique = batch(&["p", "q"], &[(0, 1), (0, 2)], false);
        assert_eq!(
            first_by_kafka_position(std::slice::from_ref(&unique), "id").unwrap(),
            vec![unique]
        );
        assert!(first_by_kafka_position(&[a], "nope").is_err());
    }
}

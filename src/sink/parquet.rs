//! Parquet encoding: writer settings and deterministic file names.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

/// Columns whose values are (nearly) all distinct: a dictionary only costs
/// hashing there. Timestamps and floats are left out by type.
const UNIQUE_COLUMNS: &[&str] = &["execution_id"];

fn writer_properties(schema: &Schema) -> WriterProperties {
    let mut b = WriterProperties::builder()
        // Level 1: about twice as fast as 3 on these rows, for files a few
        // percent larger.
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        // Row groups of a few minutes of events: their time statistics let a
        // finalization chunk skip the rest of an hour's files.
        .set_max_row_group_row_count(Some(32 * 1024));
    // The schema's metadata (a metric's definition hash) goes into the
    // file's key-value metadata, where any Parquet reader finds it.
    let mut kv: Vec<KeyValue> = schema
        .metadata()
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    if !kv.is_empty() {
        kv.sort_by(|a, b| a.key.cmp(&b.key));
        b = b.set_key_value_metadata(Some(kv));
    }
    for f in schema.fields() {
        let low_cardinality = matches!(f.data_type(), DataType::Utf8 | DataType::Int32)
            && !UNIQUE_COLUMNS.contains(&f.name().as_str());
        if !low_cardinality {
            b = b.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), false);
        }
    }
    b.build()
}

/// Encodes batches that share a schema into one zstd Parquet file.
pub fn encode(batches: &[RecordBatch]) -> Result<Bytes, ParquetError> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| ParquetError::General("no batch to encode".into()))?;
    let mut buf = Vec::new();
    let props = writer_properties(&schema);
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::sync::Arc;

    #[test]
    fn encodes_zstd_parquet_that_reads_back() {
        let b = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1, 2, 3])) as _)])
            .unwrap();
        let bytes = encode(&[b.clone(), b]).unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let codec = r.metadata().row_group(0).column(0).compression();
        assert!(matches!(codec, Compression::ZSTD(_)), "{codec:?}");
        let rows: usize = r.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 6);
        assert!(encode(&[]).is_err());
    }

    #[test]
    fn schema_metadata_lands_in_the_key_value_metadata() {
        let schema = arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "x",
            DataType::Int64,
            false,
        )])
        .with_metadata([("k".to_string(), "v".to_string())].into());
        let b = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int64Array::from(vec![1]))])
            .unwrap();
        let r = ParquetRecordBatchReaderBuilder::try_new(encode(&[b]).unwrap()).unwrap();
        let kv = r.metadata().file_metadata().key_value_metadata().unwrap();
        assert!(
            kv.iter()
                .any(|e| e.key == "k" && e.value.as_deref() == Some("v")),
            "{kv:?}"
        );
    }
}

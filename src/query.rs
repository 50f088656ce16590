//! Ad-hoc SQL over the output tables.

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::sink::store::{OutputStore, StoreError};
use crate::tables::{self, Table};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sql(#[from] DataFusionError),
}

/// A session with every output table of `store` registered by name: the
/// fixed tables and one per folder under `metrics/`. A metric table whose
/// files cannot be read together is left out and returned with the reason.
pub async fn context(
    store: &OutputStore,
) -> Result<(SessionContext, Vec<(String, DataFusionError)>), QueryError> {
    let ctx = SessionContext::new();
    crate::metrics::prepare(&ctx);
    store.register(&ctx);
    for t in tables::fixed_tables() {
        tables::register(&ctx, store, &t).await?;
    }
    let mut unreadable = Vec::new();
    for name in store.folders("metrics").await? {
        if let Err(e) = tables::register(&ctx, store, &Table::metric(&name)).await {
            unreadable.push((name, e));
        }
    }
    Ok((ctx, unreadable))
}

/// Runs `sql` over the outputs of `store`. A query that fails while naming
/// an unreadable metric table fails with the reason that table is missing.
pub async fn collect(store: &OutputStore, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let (ctx, unreadable) = context(store).await?;
    // Reads only: no COPY, no CREATE EXTERNAL TABLE over other files.
    let df = match ctx
        .sql_with_options(sql, crate::metrics::catalog::read_only())
        .await
    {
        Ok(df) => df,
        Err(e) => {
            let reads = tables_read(&ctx, sql);
            let why = unreadable
                .into_iter()
                .find(|(name, _)| reads.contains(name));
            return Err(why.map_or(e, |(_, why)| why).into());
        }
    };
    Ok(df.collect().await?)
}

/// The names of the tables `sql` reads (none if it does not parse).
fn tables_read(ctx: &SessionContext, sql: &str) -> Vec<String> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    state
        .sql_to_statement(sql, &dialect)
        .and_then(|s| state.resolve_table_references(&s))
        .map(|refs| refs.iter().map(|r| r.table().to_string()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    /// One Parquet file of metric `x` holding a column `v` of `array`'s type.
    fn write(dir: &std::path::Path, hour: &str, array: arrow::array::ArrayRef) {
        let folder = dir.join(format!("metrics/x/dt=2026-01-01/hour={hour}"));
        std::fs::create_dir_all(&folder).unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "v",
            array.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![array]).unwrap();
        let file = std::fs::File::create(folder.join("w.parquet")).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[tokio::test]
    async fn a_metric_whose_files_disagree_on_a_type_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "10", Arc::new(Int64Array::from(vec![1])));
        let store = OutputStore::open(
            dir.path().to_str().unwrap(),
            &crate::sink::store::S3Options::default(),
        )
        .unwrap();
        let sum = |store| async move {
            let b = collect(store, "SELECT sum(v) AS s FROM x").await?;
            Ok::<_, QueryError>(
                arrow::util::pretty::pretty_format_batches(&b)
                    .unwrap()
                    .to_string(),
            )
        };
        assert!(sum(&store).await.unwrap().contains("| 1 |"));
        write(dir.path(), "11", Arc::new(Float64Array::from(vec![2.5])));
        let e = sum(&store).await.unwrap_err().to_string();
        assert!(
            e.contains("table x: reading the columns of its files"),
            "{e}"
        );
        assert!(e.contains("Changing a metric's columns"), "{e}");
        // Only a query that reads it gets its reason.
        let e = collect(&store, "SELECT * FROM nope_x").await.unwrap_err();
        assert!(!e.to_string().contains("table x:"), "{e}");
        // Other tables stay queryable.
        let n = collect(&store, "SELECT count(*) FROM raw_execution_results").await;
        assert!(n.is_ok(), "{n:?}");
    }
}

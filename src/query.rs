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
/// fixed tables and one per folder under `metrics/`.
pub async fn context(store: &OutputStore) -> Result<SessionContext, QueryError> {
    let ctx = SessionContext::new();
    crate::metrics::prepare(&ctx);
    store.register(&ctx);
    for t in tables::fixed_tables() {
        tables::register(&ctx, store, &t).await?;
    }
    for name in store.folders("metrics").await? {
        tables::register(&ctx, store, &Table::metric(&name)).await?;
    }
    Ok(ctx)
}

/// Runs `sql` over the outputs of `store`.
pub async fn collect(store: &OutputStore, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
    let ctx = context(store).await?;
    // Reads only: no COPY, no CREATE EXTERNAL TABLE over other files.
    let df = ctx
        .sql_with_options(sql, crate::metrics::catalog::read_only())
        .await?;
    Ok(df.collect().await?)
}

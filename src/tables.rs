//! The output tables by name, where they live under the output root, and
//! their registration in DataFusion as Hive-partitioned listing tables.

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result;
use datafusion::prelude::SessionContext;

use crate::schema::{self, EXECUTIONS_TOPIC, SIGNALS_TOPIC};
use crate::sink::store::OutputStore;

/// One output table.
#[derive(Debug, Clone)]
pub struct Table {
    /// SQL name, e.g. `raw_execution_results`.
    pub name: String,
    /// Folder under the output root, e.g. `raw/execution_results`.
    pub folder: String,
    /// Known schema; `None` for metrics, whose schema comes from their files.
    pub schema: Option<SchemaRef>,
    /// What one row is (a fixed table's; a metric's is in its header).
    pub description: String,
}

impl Table {
    fn fixed(name: &str, folder: &str, schema: SchemaRef, description: &str) -> Self {
        Self {
            name: name.into(),
            folder: folder.into(),
            schema: Some(schema),
            description: description.into(),
        }
    }

    /// A metric table `metrics/<name>`.
    pub fn metric(name: &str) -> Self {
        Self {
            name: name.into(),
            folder: format!("metrics/{name}"),
            schema: None,
            description: String::new(),
        }
    }
}

pub const RAW_SIGNALS: &str = "raw_influencer_signals";
pub const RAW_EXECUTIONS: &str = "raw_execution_results";
pub const SIGNALS: &str = "signals";
pub const EXECUTIONS_ENRICHED: &str = "executions_enriched";

/// Folder of the dead letters of `topic`.
pub fn dead_letter_folder(topic: &str) -> String {
    format!("_dead_letter/{topic}")
}

/// Folder of the completeness markers.
pub const COMPLETENESS_FOLDER: &str = "_completeness";

/// Folder of the late events of `topic`.
pub fn late_folder(topic: &str) -> String {
    format!("_late/{topic}")
}

/// The tables whose schema the service fixes.
pub fn fixed_tables() -> Vec<Table> {
    let mut tables = vec![
        Table::fixed(
            RAW_SIGNALS,
            "raw/influencer_signals",
            schema::raw_signals_schema(),
            "Every valid influencer signal as received, with its Kafka position and ingestion \
             time (duplicates and late events included).",
        ),
        Table::fixed(
            RAW_EXECUTIONS,
            "raw/execution_results",
            schema::raw_executions_schema(),
            "Every valid execution result as received, with its Kafka position and ingestion \
             time (duplicates and late events included).",
        ),
        Table::fixed(
            SIGNALS,
            "signals",
            schema::signals_schema(),
            "One row per signal of a final window, deduplicated by signal_id.",
        ),
        Table::fixed(
            EXECUTIONS_ENRICHED,
            "executions_enriched",
            schema::executions_enriched_schema(),
            "One row per execution of a final window, deduplicated by execution_id and joined \
             to its signal (signal price and time, slippage_bps, signal_to_fill_ms).",
        ),
        Table::fixed(
            "_completeness",
            COMPLETENESS_FOLDER,
            schema::completeness_schema(),
            "One row per final table and hour, once every window of the hour is final.",
        ),
    ];
    for (topic, events) in [(SIGNALS_TOPIC, "Signals"), (EXECUTIONS_TOPIC, "Executions")] {
        tables.push(Table::fixed(
            &format!("dead_letter_{topic}"),
            &dead_letter_folder(topic),
            schema::dead_letter_schema(),
            &format!(
                "Messages of {topic} that failed decoding or validation: their bytes, Kafka \
                 position, error kind and reason."
            ),
        ));
        tables.push(Table::fixed(
            &format!("late_{topic}"),
            &late_folder(topic),
            schema::late_schema(),
            &format!(
                "{events} that arrived after their window was final (left out of it until a \
                 reprocess): how late, and their Kafka position."
            ),
        ));
    }
    tables
}

/// The folder of the table `name`: a fixed table's, else a metric's.
pub fn folder_of(name: &str) -> String {
    fixed_tables()
        .into_iter()
        .find(|t| t.name == name)
        .map(|t| t.folder)
        .unwrap_or_else(|| format!("metrics/{name}"))
}

/// Registers `table` in `ctx` with `dt` and `hour` partition columns.
/// Returns `false` (and registers nothing) for a metric with no files yet.
pub async fn register(ctx: &SessionContext, store: &OutputStore, table: &Table) -> Result<bool> {
    let url = ListingTableUrl::parse(store.folder_url(&table.folder))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(vec![
            ("dt".to_string(), DataType::Utf8),
            ("hour".to_string(), DataType::Utf8),
        ]);
    let config = ListingTableConfig::new(url).with_listing_options(options.clone());
    let config = match &table.schema {
        Some(s) => config.with_schema(s.clone()),
        None => {
            let state = ctx.state();
            match options.infer_schema(&state, &config.table_paths[0]).await {
                // Every column nullable: a column a metric added later is
                // missing (null) in its older files.
                Ok(s) if !s.fields().is_empty() => {
                    config.with_schema(Arc::new(arrow::datatypes::Schema::new(
                        s.fields()
                            .iter()
                            .map(|f| f.as_ref().clone().with_nullable(true))
                            .collect::<Vec<_>>(),
                    )))
                }
                Ok(_) => return Ok(false),
                // Files that disagree on a column's type, or a store that
                // cannot be listed: say so rather than hide the table.
                Err(e) => {
                    return Err(e.context(format!(
                        "table {}: reading the columns of its files under {} (a column \
                         whose type changed? see sql/README.md, Changing a metric's columns)",
                        table.name,
                        store.folder_url(&table.folder)
                    )))
                }
            }
        }
    };
    ctx.deregister_table(&table.name)?;
    ctx.register_table(&table.name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(true)
}

/// Every output table as `ddl` describes it: the fixed tables and one per
/// metric of the catalog, with the schema its files have and whether any
/// file exists yet.
pub async fn definitions(
    store: &OutputStore,
    metrics: &[crate::metrics::catalog::Metric],
) -> Result<Vec<crate::ddl::TableDef>> {
    let mut tables: Vec<(Table, arrow::datatypes::Schema)> = fixed_tables()
        .into_iter()
        .map(|t| {
            let s = t
                .schema
                .as_deref()
                .cloned()
                .expect("fixed tables have a schema");
            (t, s)
        })
        .collect();
    for m in metrics {
        let schema = crate::metrics::catalog::output_schema(m).await?;
        let table = Table {
            description: m.header().map(|h| h.description).unwrap_or_default(),
            ..Table::metric(&m.name)
        };
        tables.push((table, schema));
    }
    let mut out = Vec::with_capacity(tables.len());
    for (t, schema) in tables {
        let has_files = store
            .holds_any(&t.folder, ".parquet")
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        out.push(crate::ddl::TableDef {
            has_files,
            name: t.name,
            folder: t.folder,
            schema,
            description: t.description,
        });
    }
    Ok(out)
}

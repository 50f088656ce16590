//! The analysts' metric definitions: every `sql/*.sql` file is one metric,
//! named after the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::schema;

/// Errors loading or checking the catalog; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("SQL directory {0}: no *.sql file found")]
    Empty(PathBuf),
}

/// One metric: `sql/<name>.sql` writes `metrics/<name>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub path: PathBuf,
    pub sql: String,
}

/// Names of the inputs a metric query reads.
pub const INPUT_SIGNALS: &str = "signals";
pub const INPUT_EXECUTIONS: &str = "executions";

/// Reads every `*.sql` file of `dir`, sorted by name.
pub fn load(dir: &Path) -> Result<Vec<Metric>, CatalogError> {
    let io = |path: &Path, e: std::io::Error| CatalogError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(CatalogError::Empty(dir.to_path_buf()));
    }
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(CatalogError::File {
                    path,
                    reason: "a metric file name must be lowercase letters, digits and _".into(),
                });
            }
            let sql = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            Ok(Metric { name, path, sql })
        })
        .collect()
}

/// A session with empty `signals` and `executions` inputs, for planning.
pub fn planning_context() -> SessionContext {
    let ctx = SessionContext::new();
    crate::metrics::prepare(&ctx);
    let empty = |s: arrow::datatypes::SchemaRef| {
        Arc::new(MemTable::try_new(s, vec![vec![]]).expect("empty table of a valid schema"))
    };
    ctx.register_table(INPUT_SIGNALS, empty(schema::signals_schema()))
        .expect("fresh context");
    ctx.register_table(
        INPUT_EXECUTIONS,
        empty(schema::executions_enriched_schema()),
    )
    .expect("fresh context");
    ctx
}

/// Parses and plans every metric; returns the first error with its file.
pub async fn check(metrics: &[Metric]) -> Result<(), CatalogError> {
    let ctx = planning_context();
    for m in metrics {
        let df = ctx.sql(&m.sql).await.map_err(|e| CatalogError::File {
            path: m.path.clone(),
            reason: e.to_string(),
        })?;
        let fields = df.schema().fields();
        if !fields.iter().any(|f| f.name() == "window_start") {
            return Err(CatalogError::File {
                path: m.path.clone(),
                reason: "the query must return a `window_start` column".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shipped_catalog_plans_and_bad_files_are_named() {
        let shipped = load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))).unwrap();
        let names: Vec<_> = shipped.iter().map(|m| m.name.as_str()).collect();
        for n in [
            "execution_errors_1m",
            "influencer_metrics_1m",
            "subscriber_metrics_1m",
            "system_metrics_1m",
        ] {
            assert!(names.contains(&n), "{names:?}");
        }
        check(&shipped).await.unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.sql"),
            "SELECT\n  nope_column\nFROM executions",
        )
        .unwrap();
        let bad = load(dir.path()).unwrap();
        let e = check(&bad).await.unwrap_err().to_string();
        assert!(e.contains("bad.sql") && e.contains("nope_column"), "{e}");

        std::fs::write(dir.path().join("bad.sql"), "SELECT 1 AS x FROM executions").unwrap();
        let e = check(&load(dir.path()).unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("window_start"), "{e}");

        std::fs::write(dir.path().join("Bad-Name.sql"), "SELECT 1").unwrap();
        assert!(load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("Bad-Name.sql"));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(load(empty.path()), Err(CatalogError::Empty(_))));
    }
}

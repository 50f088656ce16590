//! The analysts' metric definitions: every `sql/*.sql` file is one metric,
//! named after the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::header;
use crate::schema;

/// Errors loading or checking the catalog; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("SQL directory {0}: no *.sql file found")]
    Empty(PathBuf),
    #[error("{}", problems_text(.0))]
    Invalid(Vec<Problem>),
}

fn problems_text(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    let files: std::collections::BTreeSet<_> = problems.iter().map(|p| &p.path).collect();
    format!(
        "{}\n{} problem(s) in {} metric file(s)",
        lines.join("\n"),
        problems.len(),
        files.len()
    )
}

/// One metric: `sql/<name>.sql` writes `metrics/<name>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub path: PathBuf,
    pub sql: String,
}

impl Metric {
    /// The file's header (description, keys, window, owner).
    pub fn header(&self) -> Result<header::Header, Vec<header::HeaderProblem>> {
        header::parse(&self.sql)
    }

    /// SHA-256 of the file's text, hex: names the definition that produced
    /// a file (stored in its Parquet key-value metadata).
    pub fn definition_hash(&self) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Parquet key-value metadata of every metric file: the metric's name and
/// the hash of the definition that produced it.
pub const METADATA_METRIC: &str = "analytics_processor.metric";
pub const METADATA_DEFINITION_SHA256: &str = "analytics_processor.definition_sha256";

/// What changed between the running catalog and the files of its folder.
#[derive(Debug, Default)]
pub struct Reload {
    /// The catalog to run from now on: every good file, and the last good
    /// version of a file that fails its check.
    pub catalog: Vec<Metric>,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Files that fail the check, with their problems; not run.
    pub rejected: Vec<(Metric, Vec<Problem>)>,
}

impl Reload {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.rejected.is_empty()
    }
}

/// Identifies one rejected version of one file (see [`reload`]).
pub fn rejection_key(m: &Metric) -> String {
    format!("{}:{}", m.name, m.definition_hash())
}

/// A file modified this recently may still be being written: it is looked
/// at again at a later reload.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

fn settling(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < SETTLE)
}

/// What a changed version breaks for readers of the files already written:
/// a column removed (or renamed) or retyped. Adding columns is fine.
pub async fn evolution_problems(old: &Metric, new: &Metric) -> Vec<Problem> {
    let (Ok(before), Ok(after)) = (output_schema(old).await, output_schema(new).await) else {
        return vec![];
    };
    let at = select_line(&new.sql);
    before
        .fields()
        .iter()
        .filter_map(|f| {
            let message = match after.field_with_name(f.name()) {
                Err(_) => format!(
                    "column `{}` is gone (removed or renamed) but files already written have \
                     it: add columns only, or see sql/README.md, Changing a metric's columns",
                    f.name()
                ),
                Ok(n) if n.data_type() != f.data_type() => format!(
                    "column `{}` changes type from {} to {}; files already written have the \
                     old type: see sql/README.md, Changing a metric's columns",
                    f.name(),
                    f.data_type(),
                    n.data_type()
                ),
                Ok(_) => return None,
            };
            Some(Problem {
                path: new.path.clone(),
                line: at,
                column: 0,
                message,
            })
        })
        .collect()
}

/// Compares `running` with the files now in `dir`: added and changed files
/// that pass the check (and, when changed, keep every column and its type)
/// take effect, a failing one keeps its last good version (or stays out, if
/// new), a deleted one stops. `skip` holds the [`rejection_key`]s of
/// versions already rejected: they are not checked and reported again. With
/// `settle`, a file written less than a second ago waits for the next reload.
pub async fn reload(
    running: &[Metric],
    dir: &Path,
    skip: &std::collections::HashSet<String>,
    settle: bool,
) -> Result<Reload, CatalogError> {
    let files = load(dir)?;
    let mut out = Reload::default();
    for m in &files {
        let current = running.iter().find(|r| r.name == m.name);
        if current.is_some_and(|c| c.sql == m.sql) {
            out.catalog.push(m.clone());
            continue;
        }
        if skip.contains(&rejection_key(m)) || (settle && settling(&m.path)) {
            out.catalog.extend(current.cloned());
            continue;
        }
        let mut problems = problems(std::slice::from_ref(m)).await;
        if let (true, Some(c)) = (problems.is_empty(), current) {
            problems = evolution_problems(c, m).await;
        }
        if problems.is_empty() {
            match current {
                Some(_) => out.changed.push(m.name.clone()),
                None => out.added.push(m.name.clone()),
            }
            out.catalog.push(m.clone());
        } else {
            out.catalog.extend(current.cloned());
            out.rejected.push((m.clone(), problems));
        }
    }
    out.removed = running
        .iter()
        .filter(|r| !files.iter().any(|m| m.name == r.name))
        .map(|r| r.name.clone())
        .collect();
    Ok(out)
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
        // Editors' lock and backup files (`.#name.sql`, `.name.sql.swp`).
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
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
/// It keeps source positions, so planning errors can name line and column.
pub fn planning_context() -> SessionContext {
    let mut config = SessionConfig::new();
    config.options_mut().sql_parser.collect_spans = true;
    let ctx = SessionContext::new_with_config(config);
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

/// What analyst SQL may do, at check time and at run time: plan a query over
/// the registered tables. DDL (CREATE EXTERNAL TABLE reads files), DML, COPY
/// (writes files) and SET are refused by the planner.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// One thing wrong with a metric file, where it is (1-based; 0 when the
/// planner could not tell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.path.display(), self.message),
            (l, 0) => write!(f, "{}:{l}: {}", self.path.display(), self.message),
            (l, c) => write!(f, "{}:{l}:{c}: {}", self.path.display(), self.message),
        }
    }
}

/// Checks every metric (header, read-only, plan against the input schemas,
/// key columns and their types) and returns every problem found.
pub async fn problems(metrics: &[Metric]) -> Vec<Problem> {
    let ctx = planning_context();
    let mut out = Vec::new();
    for m in metrics {
        let at = |line: usize, column: usize, message: String| Problem {
            path: m.path.clone(),
            line,
            column,
            message,
        };
        let (header, header_problems) = header::parse_lenient(&m.sql);
        out.extend(
            header_problems
                .into_iter()
                .map(|p| at(p.line, 1, p.message)),
        );
        if let Err((line, column, message)) = single_select(&m.sql) {
            out.push(at(line, column, message));
            continue;
        }
        let df = match ctx.sql_with_options(&m.sql, read_only()).await {
            Ok(df) => df,
            Err(e) => {
                out.extend(
                    e.iter()
                        .map(|e| planning_problem(&m.sql, e))
                        .map(|(l, c, msg)| at(l, c, msg)),
                );
                continue;
            }
        };
        let fields = df.schema().fields();
        let result = fields
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match fields.iter().find(|f| f.name() == "window_start") {
            None => out.push(at(
                select_line(&m.sql),
                1,
                format!("the query must return a `window_start` column; it returns: {result}"),
            )),
            Some(f) if !matches!(f.data_type(), DataType::Timestamp(_, _)) => out.push(at(
                select_line(&m.sql),
                1,
                format!(
                    "`window_start` must be a timestamp (date_bin(INTERVAL '1 minute', t)), \
                     not {}",
                    f.data_type()
                ),
            )),
            Some(_) => {}
        }
        out.extend(
            column_problems(&m.sql, df.schema().as_arrow()).map(|(l, c, msg)| at(l, c, msg)),
        );
        for key in &header.keys {
            if !fields.iter().any(|f| f.name() == key) {
                out.push(at(
                    header.keys_line,
                    1,
                    format!(
                        "key column `{key}` is not a column of the result; it returns: {result}"
                    ),
                ));
            }
        }
    }
    out
}

/// Result columns the output tables cannot hold: a name that is not a plain
/// lowercase identifier or is a partition column, a type no warehouse
/// declares alike. Each is placed at the column's last mention, its alias
/// in the final SELECT.
fn column_problems<'a>(
    sql: &'a str,
    result: &'a arrow::datatypes::Schema,
) -> impl Iterator<Item = (usize, usize, String)> + 'a {
    let written: Vec<_> = super::engine::output_schema(result)
        .fields()
        .iter()
        .cloned()
        .collect();
    written.into_iter().filter_map(move |f| {
        let name = f.name();
        let message = if crate::ddl::PARTITION_COLUMNS.contains(&name.as_str()) {
            format!(
                "column `{name}` has the name of a partition column (dt, hour come from the \
                 folders): rename it"
            )
        } else if !plain_name(name) {
            format!(
                "column `{name}`: a column name is lowercase letters, digits and _, starting \
                 with a letter or _ (name it with AS)"
            )
        } else if !crate::ddl::declarable(f.data_type()) {
            format!(
                "column `{name}` is of type {}, which the warehouse tables cannot declare: \
                 CAST it to BIGINT, DOUBLE, VARCHAR, BOOLEAN, DATE or TIMESTAMP",
                f.data_type()
            )
        } else {
            return None;
        };
        let (line, column) = word_positions(sql, name)
            .last()
            .unwrap_or((select_line(sql), 0));
        Some((line, column, message))
    })
}

fn plain_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The schema of the files `metric` writes (planned against empty inputs).
pub async fn output_schema(metric: &Metric) -> Result<arrow::datatypes::Schema, DataFusionError> {
    let df = planning_context()
        .sql_with_options(&metric.sql, read_only())
        .await?;
    Ok(super::engine::output_schema(df.schema().as_arrow()))
}

/// Reads `dir` and checks every file: what the daemon and the commands
/// that run metrics start from.
pub async fn load_checked(dir: &Path) -> Result<Vec<Metric>, CatalogError> {
    let metrics = load(dir)?;
    check(&metrics).await?;
    Ok(metrics)
}

/// Parses and plans every metric; fails with every problem, each naming its
/// file, line and column.
pub async fn check(metrics: &[Metric]) -> Result<(), CatalogError> {
    let problems = problems(metrics).await;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CatalogError::Invalid(problems))
    }
}

/// Exactly one statement, and a query: anything else is named and refused
/// before the planner sees it.
fn single_select(sql: &str) -> Result<(), (usize, usize, String)> {
    use datafusion::sql::parser::{DFParser, Statement};
    use datafusion::sql::sqlparser::ast::Statement as Sql;
    let statements = DFParser::parse_sql(sql).map_err(|e| {
        let msg = e.strip_backtrace();
        let (line, column) = parser_location(&msg);
        (line, column, format!("syntax error: {msg}"))
    })?;
    if statements.len() != 1 {
        return Err((
            0,
            0,
            format!(
                "a metric file holds exactly one SELECT; this one has {} statements",
                statements.len()
            ),
        ));
    }
    match &statements[0] {
        Statement::Statement(s) if matches!(**s, Sql::Query(_)) => Ok(()),
        other => {
            let text = other.to_string();
            let kind: Vec<&str> = text.split_whitespace().take(2).collect();
            Err((
                select_line(sql),
                1,
                format!(
                    "only SELECT is allowed in a metric file (metrics read the registered \
                     tables and write nothing themselves); found `{}`",
                    kind.join(" ")
                ),
            ))
        }
    }
}

/// Line and column of a planning error: the planner's span when it kept one,
/// else where the unknown name first appears; and a message that suggests
/// the closest valid column.
fn planning_problem(sql: &str, e: &DataFusionError) -> (usize, usize, String) {
    let full = e.strip_backtrace();
    let mut msg = full
        .strip_prefix("Error during planning: ")
        .unwrap_or(&full)
        .to_string();
    let span = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|s| (s.start.line as usize, s.start.column as usize));
    let unknown = msg
        .split_once("No field named ")
        .map(|(_, rest)| {
            rest.split(|c: char| c.is_whitespace() || c == ',')
                .next()
                .unwrap_or("")
                .trim_end_matches('.')
                .trim_matches('"')
                .to_string()
        })
        .filter(|n| !n.is_empty());
    if let Some(name) = &unknown {
        let bare = name.rsplit('.').next().unwrap_or(name).trim_matches('"');
        msg = match closest_column(bare) {
            Some(c) => format!("unknown column `{name}`; did you mean `{c}`?"),
            None => format!(
                "unknown column `{name}` (the columns of `signals` and `executions` are \
                 listed in sql/README.md)"
            ),
        };
    }
    let (line, column) = span
        .or_else(|| unknown.as_deref().and_then(|n| find_word(sql, n)))
        .unwrap_or((select_line(sql), 0));
    (line, column, msg)
}

/// The input column nearest to `name` by edit distance, if near enough to be
/// a typo.
fn closest_column(name: &str) -> Option<String> {
    let columns = schema::signals_schema()
        .fields()
        .iter()
        .chain(schema::executions_enriched_schema().fields().iter())
        .map(|f| f.name().clone())
        .collect::<Vec<_>>();
    let lower = name.to_ascii_lowercase();
    columns
        .into_iter()
        .map(|c| (edit_distance(&lower, &c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance over bytes (column names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// First occurrence of `word` as a whole word outside `--` comments.
fn find_word(sql: &str, word: &str) -> Option<(usize, usize)> {
    word_positions(sql, word).next()
}

/// Every `(line, column)` where `word` stands as a whole identifier outside
/// comments, in order.
fn word_positions<'a>(sql: &'a str, word: &'a str) -> impl Iterator<Item = (usize, usize)> + 'a {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    sql.lines().enumerate().flat_map(move |(i, line)| {
        let code = line.split("--").next().unwrap_or("");
        code.match_indices(word).filter_map(move |(at, _)| {
            let before = code[..at].chars().next_back().is_none_or(|c| !is_ident(c));
            let after = code[at + word.len()..]
                .chars()
                .next()
                .is_none_or(|c| !is_ident(c));
            (before && after).then_some((i + 1, at + 1))
        })
    })
}

/// `Line: L, Column: C` of a parser message.
fn parser_location(msg: &str) -> (usize, usize) {
    let num = |key: &str| {
        msg.rsplit_once(key)
            .and_then(|(_, rest)| {
                rest.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    (num("Line:"), num("Column:"))
}

/// The first line that is neither blank nor a comment: where the query starts.
fn select_line(sql: &str) -> usize {
    sql.lines()
        .position(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with("--")
        })
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "-- description: test metric\n-- keys: window_start, subscriber_id\n\
                        -- window: 1 minute\n-- owner: tests\n";

    /// The problems of one file `m.sql` holding `sql`.
    async fn problems_of(sql: &str) -> Vec<Problem> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.sql"), sql).unwrap();
        problems(&load(dir.path()).unwrap()).await
    }

    #[tokio::test]
    async fn shipped_catalog_checks_clean() {
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
        assert_eq!(problems(&shipped).await, []);
        check(&shipped).await.unwrap();
    }

    #[tokio::test]
    async fn unknown_column_is_located_with_the_closest_name() {
        let sql = format!(
            "{HEAD}SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start,\n\
             \x20      subscriber_id, sum(filed_qty) AS q\nFROM executions GROUP BY 1, 2"
        );
        let p = problems_of(&sql).await;
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].line, p[0].column), (6, 27), "{p:?}");
        assert!(p[0].message.contains("did you mean `filled_qty`"), "{p:?}");
        assert!(p[0]
            .to_string()
            .starts_with(&format!("{}:6:27: ", p[0].path.display())));
    }

    #[tokio::test]
    async fn result_columns_must_fit_the_output_tables() {
        let sql = format!(
            "{HEAD}SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start,\n\
             \x20      subscriber_id,\n\
             \x20      count(*) AS dt,\n\
             \x20      sum(fee) AS \"Fee Total\",\n\
             \x20      CAST(sum(fee) AS DECIMAL(12, 2)) AS fee_decimal,\n\
             \x20      CAST(count(*) AS SMALLINT) AS small,\n\
             \x20      CAST(min(executed_at) AS DATE) AS day\n\
             FROM executions GROUP BY 1, 2"
        );
        let p = problems_of(&sql).await;
        let got: Vec<(usize, usize, &str)> = p
            .iter()
            .map(|p| (p.line, p.column, p.message.split(':').next().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (7, 20, "column `dt` has the name of a partition column (dt, hour come from the folders)"),
                (8, 21, "column `Fee Total`"),
                (9, 44, "column `fee_decimal` is of type Decimal128(12, 2), which the warehouse tables cannot declare"),
            ],
            "{p:?}"
        );
        // SMALLINT is written widened to INT, dates as dates: both fine.
        let m = Metric {
            name: "m".into(),
            path: "m.sql".into(),
            sql: sql.clone(),
        };
        let written = output_schema(&m).await.unwrap();
        assert_eq!(
            written.field_with_name("small").unwrap().data_type(),
            &DataType::Int32
        );
        assert_eq!(
            written.field_with_name("day").unwrap().data_type(),
            &DataType::Date32
        );
    }

    #[tokio::test]
    async fn header_key_and_type_problems_are_all_reported() {
        let sql = "-- description: x\n-- keys: window_start, venue\n-- owner: o\n\
                   SELECT 'a' AS window_start FROM executions";
        let p = problems_of(sql).await;
        let msgs: Vec<_> = p.iter().map(|p| (p.line, p.message.as_str())).collect();
        assert_eq!(p.len(), 3, "{msgs:?}");
        assert!(msgs[0].1.contains("no `window`"), "{msgs:?}");
        assert!(msgs[1].1.contains("must be a timestamp"), "{msgs:?}");
        assert_eq!(msgs[2].0, 2, "{msgs:?}");
        assert!(msgs[2].1.contains("key column `venue`"), "{msgs:?}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.sql"), "SELECT 1").unwrap();
        std::fs::write(dir.path().join("b.sql"), "SELEC 1").unwrap();
        let e = check(&load(dir.path()).unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.sql:") && e.contains("b.sql:1:1: syntax error"),
            "{e}"
        );
        assert!(e.contains("in 2 metric file(s)"), "{e}");
    }

    #[tokio::test]
    async fn only_one_select_is_allowed() {
        for (sql, word) in [
            (
                "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'",
                "CREATE EXTERNAL",
            ),
            ("COPY (SELECT 1) TO '/tmp/x.parquet'", "COPY"),
            (
                "INSERT INTO executions SELECT * FROM executions",
                "INSERT INTO",
            ),
            ("DROP TABLE executions", "DROP TABLE"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
        ] {
            let p = problems_of(&format!("{HEAD}{sql}")).await;
            assert_eq!(p.len(), 1, "{sql}: {p:?}");
            assert_eq!(p[0].line, 5, "{sql}: {p:?}");
            assert!(
                p[0].message.contains("only SELECT") && p[0].message.contains(word),
                "{sql}: {p:?}"
            );
        }
        let p = problems_of(&format!("{HEAD}SELECT 1; SELECT 2")).await;
        assert!(p[0].message.contains("2 statements"), "{p:?}");
        // A table that is not registered cannot be reached, a file neither.
        let p = problems_of(&format!(
            "{HEAD}SELECT now() AS window_start, 'x' AS subscriber_id FROM '/etc/passwd'"
        ))
        .await;
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("/etc/passwd"), "{p:?}");
    }

    #[tokio::test]
    async fn run_time_options_refuse_writes_and_file_reads() {
        // What the engine and `query` plan with, should a file skip the check.
        let ctx = planning_context();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.csv");
        for sql in [
            format!("COPY (SELECT 1) TO '{}'", target.display()),
            format!(
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}'",
                dir.path().display()
            ),
            "INSERT INTO executions SELECT * FROM executions".to_string(),
        ] {
            let e = ctx.sql_with_options(&sql, read_only()).await;
            assert!(e.is_err(), "{sql} was planned");
        }
        assert!(!target.exists());
        assert!(ctx
            .sql_with_options("SELECT count(*) FROM executions", read_only())
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn reload_takes_good_changes_and_keeps_the_last_good_version() {
        let dir = tempfile::tempdir().unwrap();
        let q = |col: &str| {
            format!(
                "{HEAD}SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start,\n\
                     subscriber_id, sum({col}) AS q FROM executions GROUP BY 1, 2"
            )
        };
        // Written a while ago, as far as the settling rule can tell.
        let write = |name: &str, sql: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, sql).unwrap();
            let past = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(past)
                .unwrap();
        };
        write("a.sql", &q("fee"));
        write("b.sql", &q("fee"));
        let running = load(dir.path()).unwrap();
        let none = std::collections::HashSet::new();
        assert!(reload(&running, dir.path(), &none, true)
            .await
            .unwrap()
            .is_empty());

        write("a.sql", &q("filled_qty")); // changed, good
        write("b.sql", &q("filed_qty")); // changed, broken
        write("c.sql", &q("fee")); // added
        write("d.sql", &q("nope")); // added, broken
        let r = reload(&running, dir.path(), &none, true).await.unwrap();
        assert_eq!(
            (r.added.clone(), r.changed.clone()),
            (vec!["c".into()], vec!["a".into()])
        );
        let rejected: Vec<_> = r.rejected.iter().map(|(m, _)| m.name.as_str()).collect();
        assert_eq!(rejected, ["b", "d"]);
        assert!(r.rejected[0].1[0]
            .message
            .contains("did you mean `filled_qty`"));
        let names: Vec<_> = r.catalog.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(r.catalog[0].sql.contains("filled_qty"));
        assert_eq!(r.catalog[1], running[1], "b keeps its last good version");

        // Rejected versions are not checked or reported again; removals count.
        let skip = r.rejected.iter().map(|(m, _)| rejection_key(m)).collect();
        std::fs::remove_file(dir.path().join("a.sql")).unwrap();
        let again = reload(&r.catalog, dir.path(), &skip, true).await.unwrap();
        assert!(again.rejected.is_empty() && again.added.is_empty());
        assert_eq!(again.removed, ["a"]);
        let names: Vec<_> = again.catalog.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(running[0].definition_hash().len(), 64);

        // A file being written now waits; a removed or retyped column is refused.
        std::fs::write(dir.path().join("c.sql"), q("filled_qty")).unwrap();
        let settling = reload(&again.catalog, dir.path(), &skip, true)
            .await
            .unwrap();
        assert!(settling.is_empty(), "{settling:?}");
        let at_start = reload(&again.catalog, dir.path(), &skip, false)
            .await
            .unwrap();
        assert_eq!(at_start.changed, ["c"], "at start nothing waits");
        let q2 = |cols: &str| {
            format!(
                "{HEAD}SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start,\n\
                     subscriber_id, {cols} FROM executions GROUP BY 1, 2"
            )
        };
        write("c.sql", &q2("sum(fee) AS q, count(*) AS n")); // adds a column: fine
        let added = reload(&again.catalog, dir.path(), &skip, true)
            .await
            .unwrap();
        assert_eq!(added.changed, ["c"]);
        write("c.sql", &q2("sum(fee) AS total")); // q is gone
        let gone = reload(&added.catalog, dir.path(), &skip, true)
            .await
            .unwrap();
        assert!(
            gone.rejected[0]
                .1
                .iter()
                .any(|p| p.message.contains("column `q` is gone")),
            "{gone:?}"
        );
        assert!(
            gone.rejected[0]
                .1
                .iter()
                .any(|p| p.message.contains("column `n` is gone")),
            "{gone:?}"
        );
        write("c.sql", &q2("count(*) AS q, count(*) AS n")); // q: double -> bigint
        let retyped = reload(&added.catalog, dir.path(), &skip, true)
            .await
            .unwrap();
        let p = &retyped.rejected[0].1;
        assert!(
            p.len() == 1
                && p[0]
                    .message
                    .contains("column `q` changes type from Float64 to Int64"),
            "{p:?}"
        );
        assert_eq!(
            retyped.catalog[1], added.catalog[1],
            "the last good version stays"
        );
        assert_ne!(running[0].definition_hash(), r.catalog[0].definition_hash());
    }

    #[test]
    fn edit_distance_and_words() {
        assert_eq!(edit_distance("filed_qty", "filled_qty"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            closest_column("SUBSCRIBER_ID").as_deref(),
            Some("subscriber_id")
        );
        assert_eq!(closest_column("completely_else"), None);
        assert_eq!(find_word("-- x\nSELECT ax, x FROM t", "x"), Some((2, 12)));
        assert_eq!(
            parser_location("Expected: x at Line: 3, Column: 14"),
            (3, 14)
        );
    }

    #[tokio::test]
    async fn bad_file_names_and_empty_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Bad-Name.sql"), "SELECT 1").unwrap();
        assert!(load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("Bad-Name.sql"));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(load(empty.path()), Err(CatalogError::Empty(_))));
    }
}

//! `ddl --dialect D`: the statements that make every output table queryable
//! in a warehouse engine, over the configured output location. Pure text
//! generation from the tables' schemas; nothing here touches the store.

use arrow::datatypes::{DataType, Schema, TimeUnit};

/// The engines `ddl` writes statements for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// Views over `read_parquet` (DuckDB has no external tables).
    Duckdb,
    /// Views over the `file()` / `s3()` table functions.
    Clickhouse,
    /// Hive connector tables with `external_location`.
    Trino,
    /// Hive DDL (`CREATE EXTERNAL TABLE … PARTITIONED BY`), as Athena takes it.
    Athena,
    /// External tables with Hive partitioning.
    Bigquery,
    /// A stage and external tables partitioned by path.
    Snowflake,
}

#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    #[error("--schema {0:?}: use lowercase letters, digits and _, starting with a letter")]
    Schema(String),
    #[error("table {table}, column {column}: type {data_type} has no {dialect:?} equivalent")]
    Type {
        table: String,
        column: String,
        data_type: DataType,
        dialect: Dialect,
    },
}

/// One output table: its SQL name, its folder under the output root, its
/// columns (without the partition columns), and whether files exist yet.
#[derive(Debug, Clone)]
pub struct TableDef {
    pub name: String,
    pub folder: String,
    pub schema: Schema,
    pub has_files: bool,
    /// What one row is: the table's comment.
    pub description: String,
}

/// Where the output root is, as each engine needs to be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// `/abs/dir` for a local output, `s3://bucket/prefix` for S3.
    pub location: String,
    /// The S3 endpoint of an S3-compatible server (`http://host:port`).
    pub endpoint: Option<String>,
    /// How the warehouse reaches the bucket: BigQuery's connection
    /// (`region.name`, for s3:// through BigQuery Omni), Snowflake's storage
    /// integration. Other engines use their own credentials.
    pub connection: Option<String>,
}

impl Root {
    fn is_s3(&self) -> bool {
        self.location.starts_with("s3://")
    }

    fn folder(&self, folder: &str) -> String {
        format!("{}/{folder}", self.location.trim_end_matches('/'))
    }

    /// An HTTP URL for engines that address S3 by URL (ClickHouse).
    fn http_folder(&self, folder: &str) -> String {
        let path = self.folder(folder);
        match (path.strip_prefix("s3://"), &self.endpoint) {
            (Some(rest), Some(endpoint)) => format!("{}/{rest}", endpoint.trim_end_matches('/')),
            (Some(rest), None) => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                format!("https://{bucket}.s3.amazonaws.com/{key}")
            }
            (None, _) => path,
        }
    }
}

/// The partition columns every table has, from the `dt=…/hour=…` folders.
pub const PARTITION_COLUMNS: [&str; 2] = ["dt", "hour"];

/// Files of a table: `<folder>/dt=…/hour=…/*.parquet`.
const FILES: &str = "*/*/*.parquet";

/// The column types the tables can declare, one name per dialect each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Int32,
    Int64,
    UInt64,
    Float64,
    Boolean,
    Binary,
    Date,
    /// Microseconds, UTC: what every time column is written as.
    Timestamp,
}

/// The kind of an Arrow type as written in the Parquet files, if any
/// dialect-independent declaration reads it back.
fn kind(t: &DataType) -> Option<Kind> {
    use DataType::*;
    Some(match t {
        Dictionary(_, v) => return kind(v),
        Utf8 | LargeUtf8 | Utf8View => Kind::String,
        Int32 => Kind::Int32,
        Int64 => Kind::Int64,
        UInt64 => Kind::UInt64,
        Float64 => Kind::Float64,
        Boolean => Kind::Boolean,
        Binary | LargeBinary | BinaryView => Kind::Binary,
        Date32 => Kind::Date,
        Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => Kind::Timestamp,
        _ => return None,
    })
}

/// Whether every dialect can declare a column of type `t`.
pub fn declarable(t: &DataType) -> bool {
    kind(t).is_some()
}

/// The type names of `dialect`, in the order of [`Kind`].
fn type_names(dialect: Dialect) -> [&'static str; 9] {
    match dialect {
        Dialect::Duckdb => [
            "VARCHAR",
            "INTEGER",
            "BIGINT",
            "UBIGINT",
            "DOUBLE",
            "BOOLEAN",
            "BLOB",
            "DATE",
            "TIMESTAMPTZ",
        ],
        Dialect::Clickhouse => [
            "Nullable(String)",
            "Nullable(Int32)",
            "Nullable(Int64)",
            "Nullable(UInt64)",
            "Nullable(Float64)",
            "Nullable(Bool)",
            "Nullable(String)",
            "Nullable(Date32)",
            "Nullable(DateTime64(6, 'UTC'))",
        ],
        Dialect::Trino => [
            "varchar",
            "integer",
            "bigint",
            "bigint",
            "double",
            "boolean",
            "varbinary",
            "date",
            // What the Hive connector creates; read with microseconds by
            // setting the catalog's timestamp_precision (see the preamble).
            "timestamp(3)",
        ],
        Dialect::Athena => [
            "string",
            "int",
            "bigint",
            "bigint",
            "double",
            "boolean",
            "binary",
            "date",
            "timestamp",
        ],
        Dialect::Bigquery => [
            "STRING",
            "INT64",
            "INT64",
            "INT64",
            "FLOAT64",
            "BOOL",
            "BYTES",
            "DATE",
            "TIMESTAMP",
        ],
        Dialect::Snowflake => [
            "VARCHAR",
            "INTEGER",
            "INTEGER",
            "INTEGER",
            "FLOAT",
            "BOOLEAN",
            // Parquet bytes arrive as text (BINARY_AS_TEXT); times are UTC.
            "VARCHAR",
            "DATE",
            "TIMESTAMP_NTZ",
        ],
    }
}

/// The column type of `t` in `dialect`.
fn column_type(dialect: Dialect, t: &DataType) -> Option<&'static str> {
    kind(t).map(|k| type_names(dialect)[k as usize])
}

/// `(name, type)` of every column of `t` in `dialect`.
fn columns(dialect: Dialect, t: &TableDef) -> Result<Vec<(String, &'static str)>, DdlError> {
    t.schema
        .fields()
        .iter()
        .map(|f| {
            column_type(dialect, f.data_type())
                .map(|ty| (f.name().clone(), ty))
                .ok_or_else(|| DdlError::Type {
                    table: t.name.clone(),
                    column: f.name().clone(),
                    data_type: f.data_type().clone(),
                    dialect,
                })
        })
        .collect()
}

/// Single-quoted SQL string.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A string literal where quotes are escaped with a backslash (Hive DDL,
/// BigQuery), in `quote`s.
fn escaped(s: &str, quote: char) -> String {
    let body = s
        .replace('\\', "\\\\")
        .replace(quote, &format!("\\{quote}"));
    format!("{quote}{body}{quote}")
}

/// The statements for every table of `tables` over `root`, `schema` being
/// the warehouse schema (dataset) for the engines that keep tables in one.
pub fn statements(
    dialect: Dialect,
    root: &Root,
    schema: &str,
    tables: &[TableDef],
) -> Result<String, DdlError> {
    let plain = schema.starts_with(|c: char| c.is_ascii_lowercase())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !plain {
        return Err(DdlError::Schema(schema.to_string()));
    }
    let mut out = vec![preamble(dialect, root, schema)];
    for t in tables {
        let cols = columns(dialect, t)?;
        out.push(table(dialect, root, schema, t, &cols));
    }
    Ok(out.join("\n"))
}

fn preamble(dialect: Dialect, root: &Root, schema: &str) -> String {
    let mut lines = vec![format!(
        "-- analytics-processor output tables at {}, for {}.\n\
         -- Partition columns dt ('YYYY-MM-DD') and hour ('HH') come from the folders.\n\
         -- Columns a metric adds later read as NULL in older files.",
        root.location,
        format!("{dialect:?}").to_lowercase()
    )];
    let remote = !matches!(dialect, Dialect::Duckdb | Dialect::Clickhouse);
    if remote && !root.is_s3() {
        lines.push(
            "-- The output is a local folder: this engine reads object storage, so point \
             --output at it (e.g. s3://bucket/prefix) before running these."
                .into(),
        );
    }
    match dialect {
        Dialect::Duckdb if root.is_s3() => lines.push(format!(
            "INSTALL httpfs;\nLOAD httpfs;\nINSTALL aws;\nLOAD aws;\n\
             CREATE SECRET IF NOT EXISTS analytics_processor_output (TYPE s3, PROVIDER credential_chain{});",
            root.endpoint.as_deref().map_or(String::new(), |e| {
                let host = e.split("://").nth(1).unwrap_or(e);
                format!(
                    ", ENDPOINT {}, URL_STYLE 'path', USE_SSL {}",
                    lit(host),
                    e.starts_with("https://")
                )
            })
        )),
        Dialect::Clickhouse if root.is_s3() => lines.push(
            "-- s3() signs requests with the server's S3 credentials (or add key and secret \
             after each URL)."
                .into(),
        ),
        Dialect::Trino => lines.push(format!(
            "-- Run in a Hive connector catalog: USE <catalog>.{schema} (after the schema exists).\n\
             CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n\
             -- Times are created as timestamp(3); read them with their microseconds:\n\
             -- SET SESSION <catalog>.timestamp_precision = 'MICROSECONDS';"
        )),
        Dialect::Athena => lines.push(format!("CREATE DATABASE IF NOT EXISTS {schema};")),
        Dialect::Bigquery => {
            lines.push(format!("CREATE SCHEMA IF NOT EXISTS `{schema}`;"));
            if root.is_s3() && root.connection.is_none() {
                lines.push(
                    "-- s3:// is read through BigQuery Omni: run `ddl` again with \
                     --connection <region>.<connection>."
                        .into(),
                );
            }
        }
        Dialect::Snowflake => lines.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};\n\
             CREATE STAGE IF NOT EXISTS {schema}.analytics_processor_output\n  URL = {}\n  \
             {}FILE_FORMAT = (TYPE = PARQUET);{}",
            lit(&format!("{}/", root.location.trim_end_matches('/'))),
            root.connection.as_deref().map_or(String::new(), |c| {
                format!("STORAGE_INTEGRATION = {c}\n  ")
            }),
            if root.connection.is_none() {
                "\n-- A private bucket needs a storage integration: run `ddl` again with \
                 --connection <integration>."
            } else {
                ""
            }
        )),
        _ => {}
    }
    lines.join("\n") + "\n"
}

fn table(
    dialect: Dialect,
    root: &Root,
    schema: &str,
    t: &TableDef,
    cols: &[(String, &'static str)],
) -> String {
    let name = &t.name;
    let folder = root.folder(&t.folder);
    match dialect {
        Dialect::Duckdb => {
            let select: Vec<String> = cols
                .iter()
                .map(|(c, ty)| format!("    CAST(\"{c}\" AS {ty}) AS \"{c}\""))
                .chain(PARTITION_COLUMNS.iter().map(|p| format!("    {p}")))
                .collect();
            let text = format!(
                "CREATE OR REPLACE VIEW {name} AS\nSELECT\n{}\nFROM read_parquet({},\n    \
                 hive_partitioning = true, hive_types = {{'dt': VARCHAR, 'hour': VARCHAR}}, \
                 union_by_name = true);\nCOMMENT ON VIEW {name} IS {};\n",
                select.join(",\n"),
                lit(&format!("{folder}/{FILES}")),
                lit(&t.description)
            );
            if t.has_files {
                text
            } else {
                // DuckDB resolves a view's files when it is created.
                let commented: Vec<String> = text.lines().map(|l| format!("-- {l}")).collect();
                format!(
                    "-- {name}: no files under {folder} yet; run `ddl` again once it has some.\n{}\n",
                    commented.join("\n")
                )
            }
        }
        Dialect::Clickhouse => {
            let structure: Vec<String> = cols
                .iter()
                .map(|(c, ty)| format!("`{c}` {ty}"))
                .chain(PARTITION_COLUMNS.iter().map(|p| format!("`{p}` String")))
                .collect();
            let function = if root.is_s3() { "s3" } else { "file" };
            format!(
                "CREATE OR REPLACE VIEW {name} AS\nSELECT * FROM {function}({}, Parquet,\n    {})\n\
                 SETTINGS use_hive_partitioning = 1\nCOMMENT {};\n",
                lit(&format!("{}/{FILES}", root.http_folder(&t.folder))),
                lit(&structure.join(", ")),
                lit(&t.description)
            )
        }
        Dialect::Trino => {
            let defs: Vec<String> = cols
                .iter()
                .map(|(c, ty)| format!("    \"{c}\" {ty}"))
                .chain(
                    PARTITION_COLUMNS
                        .iter()
                        .map(|p| format!("    \"{p}\" varchar")),
                )
                .collect();
            // Dropping an external table leaves its files; recreating it
            // picks up columns a metric added.
            format!(
                "DROP TABLE IF EXISTS \"{schema}\".\"{name}\";\n\
                 CREATE TABLE \"{schema}\".\"{name}\" (\n{}\n)\nCOMMENT {}\nWITH (\n    \
                 external_location = {},\n    format = 'PARQUET',\n    \
                 partitioned_by = ARRAY['dt', 'hour']\n);\n\
                 CALL system.sync_partition_metadata({}, {}, 'FULL');\n",
                defs.join(",\n"),
                lit(&t.description),
                lit(&format!("{folder}/")),
                lit(schema),
                lit(name)
            )
        }
        Dialect::Athena => {
            let defs: Vec<String> = cols
                .iter()
                .map(|(c, ty)| format!("    `{c}` {ty}"))
                .collect();
            // Backquoted: Athena needs it for names starting with `_`.
            format!(
                "DROP TABLE IF EXISTS `{schema}`.`{name}`;\n\
                 CREATE EXTERNAL TABLE `{schema}`.`{name}` (\n{}\n)\nCOMMENT {}\n\
                 PARTITIONED BY (`dt` string, `hour` string)\nSTORED AS PARQUET\nLOCATION {};\n\
                 MSCK REPAIR TABLE `{schema}`.`{name}`;\n",
                defs.join(",\n"),
                escaped(&t.description, '\''),
                lit(&format!("{folder}/"))
            )
        }
        Dialect::Bigquery => {
            let defs: Vec<String> = cols
                .iter()
                .map(|(c, ty)| format!("    `{c}` {ty}"))
                .collect();
            format!(
                "CREATE OR REPLACE EXTERNAL TABLE `{schema}.{name}` (\n{}\n)\n{}\
                 WITH PARTITION COLUMNS (`dt` STRING, `hour` STRING)\nOPTIONS (\n    \
                 description = {},\n    \
                 format = 'PARQUET',\n    uris = [{}],\n    hive_partition_uri_prefix = {}\n);\n",
                defs.join(",\n"),
                root.connection
                    .as_deref()
                    .map_or(String::new(), |c| format!("WITH CONNECTION `{c}`\n")),
                escaped(&t.description, '"'),
                lit(&format!("{folder}/*")),
                lit(&format!("{folder}/"))
            )
        }
        Dialect::Snowflake => {
            // Names quoted in upper case: what Snowflake folds unquoted names
            // to, so queries need no quotes, and a reserved word still works.
            let part = |p: &str| {
                format!(
                    "    \"{}\" VARCHAR AS (SPLIT_PART(SPLIT_PART(METADATA$FILENAME, '{p}=', 2), '/', 1))",
                    p.to_uppercase()
                )
            };
            let defs: Vec<String> = cols
                .iter()
                .map(|(c, ty)| {
                    format!("    \"{}\" {ty} AS (VALUE:\"{c}\"::{ty})", c.to_uppercase())
                })
                .chain(PARTITION_COLUMNS.iter().map(|p| part(p)))
                .collect();
            format!(
                "CREATE OR REPLACE EXTERNAL TABLE {schema}.{name} (\n{}\n)\n\
                 PARTITION BY (\"DT\", \"HOUR\")\nLOCATION = @{schema}.analytics_processor_output/{}/\n\
                 FILE_FORMAT = (TYPE = PARQUET)\nAUTO_REFRESH = FALSE\nCOMMENT = {};\n\
                 ALTER EXTERNAL TABLE {schema}.{name} REFRESH;\n",
                defs.join(",\n"),
                t.folder,
                lit(&t.description)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn tables() -> Vec<TableDef> {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        vec![
            TableDef {
                name: "system_metrics_1m".into(),
                folder: "metrics/system_metrics_1m".into(),
                schema: Schema::new(vec![
                    Field::new("window_start", ts, false),
                    Field::new("signals", DataType::Int64, false),
                    Field::new("error_rate", DataType::Float64, true),
                    Field::new(
                        "venue",
                        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                        true,
                    ),
                ]),
                has_files: true,
                description: "One row per minute; it's \"final\".".into(),
            },
            TableDef {
                name: "late_execution_results".into(),
                folder: "_late/execution_results".into(),
                schema: Schema::new(vec![Field::new("payload", DataType::Binary, true)]),
                has_files: false,
                description: String::new(),
            },
        ]
    }

    fn local() -> Root {
        Root {
            location: "/data/out".into(),
            endpoint: None,
            connection: None,
        }
    }

    fn s3() -> Root {
        Root {
            location: "s3://lake/ap".into(),
            endpoint: Some("http://127.0.0.1:9000".into()),
            connection: None,
        }
    }

    #[test]
    fn every_dialect_names_every_table_column_and_location() {
        for d in [
            Dialect::Duckdb,
            Dialect::Clickhouse,
            Dialect::Trino,
            Dialect::Athena,
            Dialect::Bigquery,
            Dialect::Snowflake,
        ] {
            let sql = statements(d, &s3(), "analytics", &tables()).unwrap();
            let body = sql.split_once("system_metrics_1m").map_or("", |(_, b)| b);
            // Past the preamble: each table's own columns and partitions.
            for needle in [
                "error_rate",
                "venue",
                "signals",
                "late_execution_results",
                "payload",
                "dt",
                "hour",
            ] {
                assert!(body.contains(needle), "{d:?} lacks {needle}:\n{sql}");
            }
            let at = if d == Dialect::Clickhouse {
                "http://127.0.0.1:9000/lake/ap/metrics/system_metrics_1m/"
            } else if d == Dialect::Snowflake {
                "analytics_processor_output/metrics/system_metrics_1m/"
            } else {
                "s3://lake/ap/metrics/system_metrics_1m/"
            };
            assert!(sql.contains(at), "{d:?} lacks {at}:\n{sql}");
        }
    }

    #[test]
    fn types_follow_the_dialect() {
        let sql = |d| statements(d, &local(), "analytics", &tables()).unwrap();
        let duck = sql(Dialect::Duckdb);
        assert!(
            duck.contains("CAST(\"window_start\" AS TIMESTAMPTZ)"),
            "{duck}"
        );
        assert!(duck.contains("CAST(\"venue\" AS VARCHAR)"), "{duck}");
        assert!(duck.contains("read_parquet('/data/out/metrics/system_metrics_1m/*/*/*.parquet'"));
        // No files yet: DuckDB would refuse the view, so it is left commented.
        assert!(duck.contains(
            "-- late_execution_results: no files under /data/out/_late/execution_results yet"
        ));
        assert!(duck.contains("-- CREATE OR REPLACE VIEW late_execution_results"));
        let ch = sql(Dialect::Clickhouse);
        assert!(ch.contains("file('/data/out/metrics/system_metrics_1m/*/*/*.parquet', Parquet"));
        assert!(
            ch.contains("`window_start` Nullable(DateTime64(6, ''UTC''))"),
            "{ch}"
        );
        assert!(ch.contains("`payload` Nullable(String)"), "{ch}");
        assert!(sql(Dialect::Bigquery).contains("`error_rate` FLOAT64"));
        let trino = sql(Dialect::Trino);
        assert!(
            trino.contains("\"signals\" bigint") && trino.contains("\"window_start\" timestamp(3)"),
            "{trino}"
        );
        assert!(trino.contains("DROP TABLE IF EXISTS \"analytics\".\"system_metrics_1m\";\nCREATE TABLE \"analytics\".\"system_metrics_1m\" ("), "{trino}");
        assert!(
            trino.contains(
                "CALL system.sync_partition_metadata('analytics', 'system_metrics_1m', 'FULL');"
            ),
            "{trino}"
        );
        let athena = sql(Dialect::Athena);
        assert!(
            athena.contains("CREATE EXTERNAL TABLE `analytics`.`late_execution_results` ("),
            "{athena}"
        );
        assert!(
            athena.contains("MSCK REPAIR TABLE `analytics`.`system_metrics_1m`;"),
            "{athena}"
        );
        assert!(sql(Dialect::Athena).contains("`payload` binary"));
        let snow = sql(Dialect::Snowflake);
        for needle in [
            "    \"WINDOW_START\" TIMESTAMP_NTZ AS (VALUE:\"window_start\"::TIMESTAMP_NTZ)",
            "    \"PAYLOAD\" VARCHAR AS (VALUE:\"payload\"::VARCHAR)",
            "PARTITION BY (\"DT\", \"HOUR\")",
            "--connection <integration>",
            "ALTER EXTERNAL TABLE analytics.system_metrics_1m REFRESH;",
            "this engine reads object storage",
        ] {
            assert!(snow.contains(needle), "{needle}:\n{snow}");
        }
        assert!(sql(Dialect::Trino).contains("CREATE SCHEMA IF NOT EXISTS \"analytics\";"));
        for bad in ["", "a b", "x\"y", "Upper", "1st"] {
            let e = statements(Dialect::Trino, &local(), bad, &tables()).unwrap_err();
            assert!(e.to_string().starts_with("--schema"), "{bad}: {e}");
        }
        let bad = TableDef {
            schema: Schema::new(vec![Field::new("d", DataType::Decimal128(10, 2), true)]),
            ..tables().remove(0)
        };
        let e = statements(Dialect::Trino, &local(), "a", &[bad]).unwrap_err();
        assert!(
            e.to_string().contains("table system_metrics_1m, column d"),
            "{e}"
        );
        assert!(!declarable(&DataType::Decimal128(10, 2)));
        // A nanosecond timestamp is not what the writer produces: refused.
        assert_eq!(
            column_type(
                Dialect::Duckdb,
                &DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
            ),
            None
        );
    }

    #[test]
    fn descriptions_become_table_comments() {
        for (d, want) in [
            (
                Dialect::Duckdb,
                "COMMENT ON VIEW system_metrics_1m IS 'One row per minute; it''s \"final\".';",
            ),
            (
                Dialect::Clickhouse,
                "SETTINGS use_hive_partitioning = 1\nCOMMENT 'One row per minute; it''s \"final\".';",
            ),
            (
                Dialect::Trino,
                ")\nCOMMENT 'One row per minute; it''s \"final\".'\nWITH (",
            ),
            (
                Dialect::Athena,
                ")\nCOMMENT 'One row per minute; it\\'s \"final\".'\nPARTITIONED BY",
            ),
            (
                Dialect::Bigquery,
                "    description = \"One row per minute; it's \\\"final\\\".\",\n",
            ),
            (
                Dialect::Snowflake,
                "AUTO_REFRESH = FALSE\nCOMMENT = 'One row per minute; it''s \"final\".';",
            ),
        ] {
            let sql = statements(d, &s3(), "a", &tables()).unwrap();
            assert!(sql.contains(want), "{d:?} lacks {want}:\n{sql}");
        }
    }

    #[test]
    fn dates_are_declared_as_dates() {
        let t = TableDef {
            schema: Schema::new(vec![Field::new("day", DataType::Date32, true)]),
            ..tables().remove(0)
        };
        for (d, want) in [
            (Dialect::Duckdb, "CAST(\"day\" AS DATE)"),
            (Dialect::Clickhouse, "`day` Nullable(Date32)"),
            (Dialect::Trino, "\"day\" date"),
            (Dialect::Athena, "`day` date"),
            (Dialect::Bigquery, "`day` DATE"),
            (Dialect::Snowflake, "\"DAY\" DATE AS (VALUE:\"day\"::DATE)"),
        ] {
            let sql = statements(d, &s3(), "a", std::slice::from_ref(&t)).unwrap();
            assert!(sql.contains(want), "{d:?} lacks {want}:\n{sql}");
        }
    }

    #[test]
    fn a_connection_goes_where_each_engine_takes_it() {
        let root = Root {
            connection: Some("us-east-1.lake".into()),
            ..s3()
        };
        let bq = statements(Dialect::Bigquery, &root, "a", &tables()).unwrap();
        // BigQuery takes WITH CONNECTION after the columns, before the
        // partition columns.
        assert!(
            bq.contains("\n)\nWITH CONNECTION `us-east-1.lake`\nWITH PARTITION COLUMNS"),
            "{bq}"
        );
        assert!(!bq.contains("run `ddl` again"), "{bq}");
        let without = statements(Dialect::Bigquery, &s3(), "a", &tables()).unwrap();
        assert!(!without.contains("WITH CONNECTION"), "{without}");
        assert!(
            without.contains("--connection <region>.<connection>"),
            "{without}"
        );
        let snow = statements(Dialect::Snowflake, &root, "a", &tables()).unwrap();
        assert!(
            snow.contains(
                "STORAGE_INTEGRATION = us-east-1.lake\n  FILE_FORMAT = (TYPE = PARQUET);"
            ),
            "{snow}"
        );
    }
}

//! The metric definitions the daemon runs, kept on the output store under
//! `_definitions/<metric>.sql`: the last good version of every metric
//! outlives a restart, so a file broken while the daemon was stopped is
//! refused against it (and it keeps running) just as while it runs, and
//! the column rule holds against the version that wrote the latest files.

use std::path::PathBuf;

use bytes::Bytes;

use super::catalog::{self, Metric, Problem};
use crate::sink::store::{OutputStore, StoreError};

/// Folder of the running definitions on the output store.
pub const FOLDER: &str = "_definitions";

fn object(name: &str) -> String {
    format!("{FOLDER}/{name}.sql")
}

/// The definitions last recorded as running, sorted by name.
pub async fn recorded(store: &OutputStore) -> Result<Vec<Metric>, StoreError> {
    let mut out = Vec::new();
    for (rel, _) in store.list(FOLDER).await? {
        let Some(name) = rel
            .strip_prefix(&format!("{FOLDER}/"))
            .and_then(|f| f.strip_suffix(".sql"))
        else {
            continue;
        };
        let Some(bytes) = store.get(&rel).await? else {
            continue; // deleted since the listing
        };
        out.push(Metric {
            name: name.to_string(),
            path: PathBuf::from(store.describe(&store.path(&rel))),
            sql: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(out)
}

/// Whether `list` holds the definition `m` (paths aside: a recorded version
/// and its file are the same definition).
fn holds(list: &[Metric], m: &Metric) -> bool {
    list.iter().any(|n| n.name == m.name && n.sql == m.sql)
}

/// Whether `a` and `b` hold the same definitions.
pub fn same(a: &[Metric], b: &[Metric]) -> bool {
    a.len() == b.len() && a.iter().all(|m| holds(b, m))
}

/// Makes the record say `running`, given that it said `before`: writes the
/// definitions that differ, deletes those no longer running.
pub async fn record(
    store: &OutputStore,
    before: &[Metric],
    running: &[Metric],
) -> Result<(), StoreError> {
    for m in running {
        if !holds(before, m) {
            store
                .put(&object(&m.name), Bytes::from(m.sql.clone()))
                .await?;
        }
    }
    for b in before {
        if !running.iter().any(|m| m.name == b.name) {
            store.delete(&object(&b.name)).await?;
        }
    }
    Ok(())
}

/// What `metrics` would break for readers of the files the recorded
/// versions wrote: a column removed, renamed or retyped (see
/// [`catalog::evolution_problems`]). For commands that rewrite files
/// without going through the daemon, such as `reprocess`.
pub async fn evolution_problems(
    store: &OutputStore,
    metrics: &[Metric],
) -> Result<Vec<Problem>, StoreError> {
    let recorded = recorded(store).await?;
    let mut out = Vec::new();
    for m in metrics {
        if let Some(r) = recorded.iter().find(|r| r.name == m.name && r.sql != m.sql) {
            out.extend(catalog::evolution_problems(r, m).await);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::store::S3Options;

    fn metric(name: &str, sql: &str) -> Metric {
        Metric {
            name: name.into(),
            path: format!("sql/{name}.sql").into(),
            sql: sql.into(),
        }
    }

    const HEAD: &str = "-- description: d\n-- keys: window_start\n-- window: 1 minute\n\
                        -- owner: tests\n";

    #[tokio::test]
    async fn the_record_follows_what_runs() {
        let store = OutputStore::open("memory://lake", &S3Options::default()).unwrap();
        assert!(recorded(&store).await.unwrap().is_empty());
        let a = metric("a", "SELECT 1");
        let b = metric("b", "SELECT 2");
        record(&store, &[], &[a.clone(), b.clone()]).await.unwrap();
        let got = recorded(&store).await.unwrap();
        let names: Vec<(&str, &str)> = got
            .iter()
            .map(|m| (m.name.as_str(), m.sql.as_str()))
            .collect();
        assert_eq!(names, [("a", "SELECT 1"), ("b", "SELECT 2")]);
        assert!(got[0].path.ends_with("_definitions/a.sql"), "{got:?}");
        // b changes, a goes.
        let b2 = metric("b", "SELECT 3");
        record(&store, &got, std::slice::from_ref(&b2))
            .await
            .unwrap();
        let got = recorded(&store).await.unwrap();
        assert!(same(&got, std::slice::from_ref(&b2)) && !same(&got, &[a, b]));
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].name.as_str(), got[0].sql.as_str()),
            ("b", "SELECT 3")
        );
    }

    #[tokio::test]
    async fn a_column_dropped_against_the_record_is_refused() {
        let store = OutputStore::open("memory://lake", &S3Options::default()).unwrap();
        let select = "SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start";
        let two = metric(
            "m",
            &format!("{HEAD}{select}, count(*) AS n, sum(fee) AS fees FROM executions GROUP BY 1"),
        );
        record(&store, &[], std::slice::from_ref(&two))
            .await
            .unwrap();
        let more = metric(
            "m",
            &format!(
                "{HEAD}{select}, count(*) AS n, sum(fee) AS fees, max(fee) AS top \
                 FROM executions GROUP BY 1"
            ),
        );
        assert_eq!(evolution_problems(&store, &[more]).await.unwrap(), []);
        let fewer = metric(
            "m",
            &format!("{HEAD}{select}, count(*) AS n FROM executions GROUP BY 1"),
        );
        let p = evolution_problems(&store, &[fewer]).await.unwrap();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].message.contains("column `fees` is gone"), "{p:?}");
        assert_eq!(p[0].path, PathBuf::from("sql/m.sql"));
    }
}

//! The header of a metric file: the leading SQL comments that say what the
//! metric is, how its rows are keyed, its window and who owns it.
//!
//! ```sql
//! -- description: One row per minute and subscriber with at least one
//! --   execution in that minute.
//! -- keys: window_start, subscriber_id
//! -- window: 1 minute
//! -- owner: risk-analytics
//! SELECT ...
//! ```
//!
//! `-- <field>: <value>` starts a field; a comment line indented by two or
//! more spaces continues the field above it; any other comment line is a
//! free note. The header ends at the first line that is not a comment.

/// The fields of a header, all required.
pub const FIELDS: [&str; 4] = ["description", "keys", "window", "owner"];

/// The window every metric is computed over (the finalizer's windows).
pub const WINDOW: &str = "1 minute";

/// A parsed header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub description: String,
    /// Columns that identify a row of the metric; `window_start` first.
    pub keys: Vec<String>,
    /// The line of `keys` (1-based; 0 when missing), for messages about them.
    pub keys_line: usize,
    pub window: String,
    pub owner: String,
}

/// What is wrong with a header, and on which line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderProblem {
    pub line: usize,
    pub message: String,
}

/// Parses the header of `sql`. Every problem is returned, not only the first.
pub fn parse(sql: &str) -> Result<Header, Vec<HeaderProblem>> {
    let (header, problems) = parse_lenient(sql);
    if problems.is_empty() {
        Ok(header)
    } else {
        Err(problems)
    }
}

/// The fields that could be read, and what is wrong with the others.
pub fn parse_lenient(sql: &str) -> (Header, Vec<HeaderProblem>) {
    let mut values: [Option<(usize, String)>; 4] = Default::default();
    let mut problems = Vec::new();
    let mut current: Option<usize> = None;
    let mut end = 1;
    for (i, line) in sql.lines().enumerate() {
        let n = i + 1;
        end = n;
        let t = line.trim_start();
        let Some(comment) = t.strip_prefix("--") else {
            if t.is_empty() {
                current = None;
                continue;
            }
            break;
        };
        if let Some(field) = field_of(comment) {
            let value = comment.split_once(':').map_or("", |(_, v)| v).trim();
            if values[field].is_some() {
                problems.push(HeaderProblem {
                    line: n,
                    message: format!("`{}` is given twice in the header", FIELDS[field]),
                });
            }
            values[field] = Some((n, value.to_string()));
            current = Some(field);
        } else if comment.starts_with("  ") && !comment.trim().is_empty() {
            if let Some((_, v)) = current.and_then(|f| values[f].as_mut()) {
                v.push(' ');
                v.push_str(comment.trim());
            }
        } else {
            current = None;
        }
    }
    for (f, v) in values.iter().enumerate() {
        if v.as_ref().is_none_or(|(_, v)| v.is_empty()) {
            let line = v.as_ref().map_or(end, |(l, _)| *l);
            problems.push(HeaderProblem {
                line,
                message: format!(
                    "the header has no `{}`: add a comment line `-- {}: ...` before the SELECT",
                    FIELDS[f], FIELDS[f]
                ),
            });
        }
    }
    let value = |f: usize| values[f].clone().unwrap_or_default();
    let (keys_line, keys) = value(1);
    let keys: Vec<String> = keys
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if !keys.is_empty() && keys[0] != "window_start" {
        problems.push(HeaderProblem {
            line: keys_line,
            message: "`keys` must start with window_start (rows are per window)".into(),
        });
    }
    let (window_line, window) = value(2);
    if !window.is_empty() && normalize(&window) != WINDOW {
        problems.push(HeaderProblem {
            line: window_line,
            message: format!(
                "window `{window}` is not supported: metrics are computed per `{WINDOW}` window"
            ),
        });
    }
    problems.sort_by_key(|p| p.line);
    let header = Header {
        description: value(0).1,
        keys,
        keys_line,
        window: WINDOW.to_string(),
        owner: value(3).1,
    };
    (header, problems)
}

/// Index in [`FIELDS`] of a `field: value` comment.
fn field_of(comment: &str) -> Option<usize> {
    let (name, _) = comment.split_once(':')?;
    let name = name.trim().to_ascii_lowercase();
    FIELDS.iter().position(|f| *f == name)
}

/// `1 minute`, `1 MINUTE`, `1  minutes`, `1m` all mean the one window.
fn normalize(window: &str) -> String {
    let w = window.trim().to_ascii_lowercase();
    let w: Vec<&str> = w.split_whitespace().collect();
    match w.as_slice() {
        ["1", "minute" | "minutes" | "min"] | ["1m" | "1min"] => WINDOW.to_string(),
        _ => w.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "-- description: One row per minute.\n\
                        --   Continued here.\n\
                        -- A free note.\n\
                        -- keys: window_start, subscriber_id\n\
                        -- window: 1 minute\n\
                        -- owner: risk\n\
                        SELECT 1\n\
                        -- keys: not header any more\n";

    #[test]
    fn fields_continuations_and_notes() {
        let h = parse(GOOD).unwrap();
        assert_eq!(h.description, "One row per minute. Continued here.");
        assert_eq!(h.keys, ["window_start", "subscriber_id"]);
        assert_eq!(h.keys_line, 4);
        assert_eq!(h.window, "1 minute");
        assert_eq!(h.owner, "risk");
        let h = parse(&GOOD.replace("1 minute", "1m")).unwrap();
        assert_eq!(h.window, "1 minute");
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let sql = "-- description: x\n-- keys: subscriber_id\n-- window: 5 minutes\nSELECT 1";
        let p = parse(sql).unwrap_err();
        let got: Vec<(usize, bool)> = p
            .iter()
            .map(|p| (p.line, p.message.contains("owner")))
            .collect();
        assert_eq!(got, [(2, false), (3, false), (4, true)], "{p:?}");
        assert!(p[0].message.contains("window_start"), "{p:?}");
        assert!(p[1].message.contains("5 minutes"), "{p:?}");

        let twice = "-- description: a\n-- description: b\n-- keys: window_start\n\
                     -- window: 1 minute\n-- owner: o\nSELECT 1";
        let p = parse(twice).unwrap_err();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 2);
        assert!(p[0].message.contains("twice"));

        let p = parse("SELECT 1").unwrap_err();
        assert_eq!(p.len(), 4, "{p:?}");
    }
}

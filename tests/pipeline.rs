//! End to end on the real broker and the real S3 server started by
//! `scripts/services.sh`: a fixed event set with hand-computed metrics is
//! produced, consumed by the daemon, read back from Parquet and compared value
//! by value; malformed messages of every kind land in `_dead_letter/`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use analytics_processor::config::{Common, Run};
use analytics_processor::query;
use analytics_processor::reprocess::{reprocess, ReprocessOpts, Source};
use analytics_processor::schema::Topics;
use analytics_processor::sink::store::{OutputStore, S3Options};
use analytics_processor::source::kafka;
use arrow::array::{Array, Float64Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::ArrayFormatter;
use rdkafka::producer::{BaseRecord, Producer};
use tokio_util::sync::CancellationToken;

fn brokers() -> String {
    std::env::var("AP_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique(name: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{n}", std::process::id())
}

/// Topics of their own for one test.
fn fresh_topics() -> Topics {
    Topics {
        signals: unique("signals"),
        executions: unique("executions"),
    }
}

/// One message to send: topic role, key, value (`None` = tombstone).
struct Msg {
    executions: bool,
    key: String,
    value: Option<Vec<u8>>,
}

fn fixture_messages() -> Vec<Msg> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/pipeline/messages.jsonl"
    ))
    .unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Msg {
                executions: v["topic"] == "executions",
                key: v["key"].as_str().unwrap().to_string(),
                value: Some(v["value"].to_string().into_bytes()),
            }
        })
        .collect()
}

/// An execution of the fixture, changed by `f`.
fn bad_execution(f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let m = &fixture_messages()[1];
    let mut v: serde_json::Value = serde_json::from_slice(m.value.as_ref().unwrap()).unwrap();
    f(&mut v);
    v.to_string().into_bytes()
}

/// Every kind of bad input the contract names, with the reason kind expected.
fn malformed() -> Vec<(bool, Option<Vec<u8>>, &'static str)> {
    let good = fixture_messages()[1].value.clone().unwrap();
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
    // A valid execution padded with an unknown 10 MB field.
    let huge = bad_execution(|v| v["pad"] = "x".repeat(10 << 20).into());
    vec![
        (true, Some(b"not json at all".to_vec()), "invalid_json"),
        (true, Some(good[..50].to_vec()), "invalid_json"),
        (true, Some(b"{\"a\":\"\xff\xfe\"}".to_vec()), "not_utf8"),
        (true, None, "tombstone"),
        (true, Some(vec![]), "empty"),
        (true, Some(b"[1,2]".to_vec()), "not_an_object"),
        (true, Some(b"\"hello\"".to_vec()), "not_an_object"),
        (
            true,
            Some(bad_execution(|v| {
                v.as_object_mut().unwrap().remove("venue");
            })),
            "missing_field",
        ),
        (
            true,
            Some(bad_execution(|v| v["requested_qty"] = "2".into())),
            "wrong_type",
        ),
        (
            true,
            Some(bad_execution(|v| v["fee"] = (-1).into())),
            "out_of_range",
        ),
        (
            true,
            Some(bad_execution(|v| v["status"] = "done".into())),
            "unknown_enum",
        ),
        (
            true,
            Some(bad_execution(|v| v["executed_at"] = "tomorrow".into())),
            "bad_timestamp",
        ),
        (
            true,
            Some(bad_execution(|v| {
                v["executed_at"] = "9999-12-31T23:59:59Z".into()
            })),
            "bad_timestamp",
        ),
        (true, Some(deep.into_bytes()), "missing_field"),
        (true, Some(huge), "too_large"),
        (
            false,
            Some(b"{\"schema_version\":1}".to_vec()),
            "missing_field",
        ),
    ]
}

async fn produce(topics: &Topics, msgs: &[Msg]) {
    kafka::ensure_topics(&brokers(), &topics.both(), 3)
        .await
        .expect("broker reachable (make services-up)");
    let p = kafka::producer(&brokers()).unwrap();
    for m in msgs {
        let topic = if m.executions {
            &topics.executions
        } else {
            &topics.signals
        };
        let mut r = BaseRecord::to(topic).key(&m.key);
        if let Some(v) = &m.value {
            r = r.payload(v);
        }
        p.send(r).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Cells as text; floats to 6 decimals so hand-computed values compare.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = vec![];
    for b in batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &Default::default()).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .zip(&fmts)
                .map(|(c, f)| match c.data_type() {
                    _ if c.is_null(i) => "null".to_string(),
                    DataType::Float64 => {
                        format!(
                            "{:.6}",
                            c.as_any().downcast_ref::<Float64Array>().unwrap().value(i)
                        )
                    }
                    _ => f.value(i).to_string(),
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

async fn select(store: &OutputStore, sql: &str) -> Vec<String> {
    rows(
        &query::collect(store, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}")),
    )
}

fn common(topics: &Topics, group: &str, output: &str, s3: &S3Options) -> Common {
    Common {
        brokers: brokers(),
        group: group.into(),
        instance_id: None,
        output: output.to_string(),
        sql_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/sql").into(),
        topics: topics.clone(),
        s3: s3.clone(),
    }
}

/// The daemon's settings in these tests: `interval` and `max_rows` set the
/// epoch boundaries; it stops once its input is read and quiet.
fn run_settings(interval: Duration, max_rows: usize) -> Run {
    Run {
        interval,
        max_rows,
        allowed_lateness: Duration::from_secs(300),
        idle_timeout: Duration::from_secs(30),
        instance_timeout: Duration::from_secs(30),
        lookback: Duration::from_secs(86_400),
        memory_limit: 256 << 20,
        stop_when_idle: Some(Duration::from_secs(4)),
    }
}

/// Runs the daemon with `run` on `topics` until they are read and quiet.
async fn run_daemon_with(
    topics: &Topics,
    group: &str,
    output: &str,
    s3: &S3Options,
    run: Run,
) -> analytics_processor::RunSummary {
    let common = common(topics, group, output, s3);
    tokio::time::timeout(
        Duration::from_secs(180),
        analytics_processor::run_daemon(common, run, CancellationToken::new()),
    )
    .await
    .expect("daemon drains within 3 minutes")
    .unwrap()
}

/// Runs the daemon on `topics` in small epochs until they are read and quiet.
async fn run_daemon(
    topics: &Topics,
    group: &str,
    output: &str,
    s3: &S3Options,
) -> analytics_processor::RunSummary {
    run_daemon_with(
        topics,
        group,
        output,
        s3,
        run_settings(Duration::from_millis(500), 7),
    )
    .await
}

async fn run_pipeline(output: &str, s3: S3Options) -> OutputStore {
    let topics = fresh_topics();
    let mut msgs = fixture_messages();
    msgs.extend(malformed().into_iter().map(|(executions, value, _)| Msg {
        executions,
        key: "bad".into(),
        value,
    }));
    produce(&topics, &msgs).await;
    let summary = run_daemon(&topics, &unique("group"), output, &s3).await;
    assert_eq!(summary.messages, 16 + malformed().len() as u64);
    assert_eq!(summary.signals, 5);
    assert_eq!(summary.executions, 11);
    assert_eq!(summary.dead_letters, malformed().len() as u64);
    assert_eq!(summary.unknown_fields, 1);
    assert!(
        summary.epochs >= 2,
        "max_rows 7 forces several epochs: {summary:?}"
    );
    OutputStore::open(output, &s3).unwrap()
}

async fn assert_outputs(store: &OutputStore) {
    // raw keeps duplicates, one row per valid message.
    assert_eq!(
        select(store, "SELECT count(*) FROM raw_influencer_signals").await,
        ["5"]
    );
    assert_eq!(
        select(store, "SELECT count(*) FROM raw_execution_results").await,
        ["11"]
    );
    assert_eq!(
        select(
            store,
            "SELECT dt, hour, count(*) FROM raw_execution_results GROUP BY 1, 2"
        )
        .await,
        ["2026-01-01|10|11"]
    );
    // signals and executions_enriched: one row per id, joined to the signal
    // even when it arrived after the execution (e6); unknown signal -> nulls.
    assert_eq!(
        select(
            store,
            "SELECT count(*), count(DISTINCT signal_id) FROM signals"
        )
        .await,
        ["4|4"]
    );
    assert_eq!(
        select(
            store,
            "SELECT right(execution_id, 2), signal_price, signal_emitted_at, slippage_bps, signal_to_fill_ms
             FROM executions_enriched ORDER BY execution_id"
        )
        .await,
        [
            "e1|100.000000|2026-01-01T10:00:05Z|100.000000|1000.000000",
            "e2|100.000000|2026-01-01T10:00:05Z|50.000000|3000.000000",
            "e3|100.000000|2026-01-01T10:00:05Z|null|2000.000000",
            "e4|50.000000|2026-01-01T10:00:30Z|100.000000|10000.000000",
            "e5|50.000000|2026-01-01T10:00:30Z|null|20000.000000",
            "e6|200.000000|2026-01-01T10:01:10Z|100.000000|2000.000000",
            "e7|null|null|null|null",
            "e8|200.000000|2026-01-01T10:01:10Z|null|20000.000000",
            "e9|10.000000|2026-01-01T10:00:50Z|10.000000|5500.000000",
        ]
    );

    assert_eq!(
        select(store, "SELECT * EXCLUDE (dt, hour) FROM influencer_metrics_1m ORDER BY window_start, influencer_id").await,
        [
            // window|influencer|signals|instruments|executions|filled|rejected|failed|fill_rate|copied_notional|distinct_subscribers|realized_pnl|avg_slippage_bps|p50|p95
            "2026-01-01T10:00:00Z|inf-1|2|2|5|3|1|1|0.600000|797.500000|3|12.500000|83.333333|3000.000000|9300.000000",
            "2026-01-01T10:00:00Z|inf-2|1|1|1|1|0|0|1.000000|50.050000|1|0.000000|10.000000|5500.000000|5500.000000",
            "2026-01-01T10:01:00Z|inf-2|1|1|3|1|1|0|0.333333|202.000000|3|-4.000000|100.000000|2000.000000|2000.000000",
        ]
    );
    assert_eq!(
        select(store, "SELECT * EXCLUDE (dt, hour) FROM subscriber_metrics_1m ORDER BY window_start, subscriber_id").await,
        [
            // window|subscriber|executions|filled|rejected|failed|cancelled|fill_rate|filled_notional|fees|realized_pnl|avg_slippage_bps|distinct_influencers
            "2026-01-01T10:00:00Z|sub-1|3|3|0|0|0|1.000000|747.050000|0.750000|12.500000|70.000000|2",
            "2026-01-01T10:00:00Z|sub-2|2|1|0|1|0|0.500000|100.500000|0.100000|0.000000|50.000000|1",
            "2026-01-01T10:00:00Z|sub-3|1|0|1|0|0|0.000000|0.000000|0.000000|0.000000|null|1",
            "2026-01-01T10:01:00Z|sub-1|1|1|0|0|0|1.000000|202.000000|0.300000|-4.000000|100.000000|1",
            "2026-01-01T10:01:00Z|sub-2|1|0|1|0|0|0.000000|0.000000|0.000000|0.000000|null|1",
            "2026-01-01T10:01:00Z|sub-3|1|0|0|0|1|0.000000|0.000000|0.000000|0.000000|null|1",
        ]
    );
    assert_eq!(
        select(store, "SELECT * EXCLUDE (dt, hour) FROM system_metrics_1m ORDER BY window_start").await,
        [
            // window|signals|executions|filled|partially_filled|rejected|failed|cancelled|error_rate|active_influencers|active_subscribers|filled_notional|p50|p95|p99|unmatched
            "2026-01-01T10:00:00Z|3|6|4|1|1|1|0|0.333333|2|3|847.550000|4250.000000|9325.000000|9865.000000|0",
            "2026-01-01T10:01:00Z|1|3|1|0|1|0|1|0.333333|1|3|202.000000|2000.000000|2000.000000|2000.000000|1",
        ]
    );
    assert_eq!(
        select(store, "SELECT * EXCLUDE (dt, hour) FROM execution_errors_1m ORDER BY window_start, venue, error_code").await,
        [
            "2026-01-01T10:00:00Z|v1|RISK_LIMIT|1|1",
            "2026-01-01T10:00:00Z|v2|VENUE_TIMEOUT|1|1",
            "2026-01-01T10:01:00Z|v1|RISK_LIMIT|1|1",
        ]
    );
    // The metric tables hold exactly the contract's columns (plus partitions).
    let cols = select(store, "SELECT * FROM influencer_metrics_1m LIMIT 0").await;
    assert!(cols.is_empty());
}

async fn assert_dead_letters(store: &OutputStore) {
    let mut expected: Vec<String> = malformed()
        .iter()
        .filter(|(executions, _, _)| *executions)
        .map(|(_, _, kind)| kind.to_string())
        .collect();
    expected.sort();
    assert_eq!(
        select(
            store,
            "SELECT error_kind FROM dead_letter_execution_results ORDER BY error_kind"
        )
        .await,
        expected
    );
    assert_eq!(
        select(
            store,
            "SELECT error_kind, reason FROM dead_letter_influencer_signals"
        )
        .await,
        ["missing_field|missing required field `signal_id`"]
    );
    // Raw bytes are kept as received, with their Kafka coordinates.
    let bytes = select(
        store,
        "SELECT payload IS NULL, payload, kafka_offset >= 0 FROM dead_letter_execution_results
         WHERE error_kind IN ('tombstone', 'not_utf8') ORDER BY error_kind",
    )
    .await;
    assert_eq!(bytes, ["false|7b2261223a22fffe227d|true", "true|null|true"]);
    // The 10 MB message is kept whole, and the reason gives its size.
    let huge = select(
        store,
        "SELECT octet_length(CAST(payload AS VARCHAR)) > 10485760, reason FROM dead_letter_execution_results
         WHERE error_kind = 'too_large'",
    )
    .await;
    assert_eq!(huge.len(), 1, "{huge:?}");
    assert!(
        huge[0].starts_with("true|message of 1048")
            && huge[0].ends_with("1048576-byte limit for one event"),
        "{huge:?}"
    );
    let reasons = select(
        store,
        "SELECT reason FROM dead_letter_execution_results WHERE error_kind = 'unknown_enum'",
    )
    .await;
    assert!(
        reasons[0].contains("`status`") && reasons[0].contains("done"),
        "{reasons:?}"
    );
}

/// Every `batch-jobs/*.sql` runs over the outputs; the audit finds the final
/// hour complete.
async fn assert_batch_jobs_run(store: &OutputStore) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/batch-jobs");
    let mut ran = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sql") {
            let rows = select(store, &std::fs::read_to_string(&path).unwrap()).await;
            assert!(!rows.is_empty(), "{} returned nothing", path.display());
            ran += 1;
        }
    }
    assert!(ran >= 3, "{ran} batch jobs");
    let audit = include_str!("../batch-jobs/raw_vs_final_audit.sql");
    assert_eq!(select(store, audit).await, ["2026-01-01|10|11|9|9"]);
    let rollup = include_str!("../batch-jobs/hourly_system_rollup.sql");
    assert_eq!(
        select(store, rollup).await,
        ["2026-01-01T10:00:00Z|4|9|5|0.333333|1049.550000|9865.000000|1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_gets_exact_metrics_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let store = run_pipeline(out.to_str().unwrap(), S3Options::default()).await;
    assert_outputs(&store).await;
    assert_dead_letters(&store).await;
    assert_batch_jobs_run(&store).await;
    // Hive layout on disk.
    assert!(out
        .join("metrics/system_metrics_1m/dt=2026-01-01/hour=10")
        .is_dir());
    assert!(out
        .join("raw/execution_results/dt=2026-01-01/hour=10")
        .is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_server_gets_exact_metrics_and_dead_letters() {
    let endpoint = std::env::var("AP_S3_ENDPOINT")
        .expect("AP_S3_ENDPOINT must name the S3 server (make test starts one and sets it)");
    let bucket = std::env::var("AP_S3_BUCKET").unwrap_or_else(|_| "analytics".into());
    let s3 = S3Options {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    let store = run_pipeline(&format!("s3://{bucket}/{}", unique("it")), s3).await;
    assert_outputs(&store).await;
    assert_dead_letters(&store).await;
}

/// An event for a window that is already final lands in `raw/`, is listed in
/// `_late/` with how late it was, is counted, and leaves the final tables and
/// metrics as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_are_kept_listed_and_left_out_of_final_windows_and_hours_get_marked_complete() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out");
    let output = output.to_str().unwrap();
    let s3 = S3Options::default();
    let topics = fresh_topics();
    let group = unique("group");
    produce(&topics, &fixture_messages()).await;
    let first = run_daemon(&topics, &group, output, &s3).await;
    assert_eq!(first.late_events, 0);
    let store = OutputStore::open(output, &s3).unwrap();
    let metrics_before = select(
        &store,
        "SELECT * FROM system_metrics_1m ORDER BY window_start",
    )
    .await;

    // Window 10:00 is final (everything up to 10:02 is, at the end of input).
    let late_id = "0b6f1c2e-2222-4a4a-8b8b-0000000000ff";
    let late = bad_execution(|v| {
        v["execution_id"] = late_id.into();
        v["executed_at"] = "2026-01-01T10:00:30Z".into();
    });
    produce(
        &topics,
        &[Msg {
            executions: true,
            key: "late".into(),
            value: Some(late),
        }],
    )
    .await;
    let second = run_daemon(&topics, &group, output, &s3).await;
    assert_eq!(
        second.messages, 1,
        "the first run's messages are not read again: {second:?}"
    );
    assert_eq!(second.late_events, 1);

    assert_eq!(
        select(&store, "SELECT count(*) FROM raw_execution_results").await,
        ["12"]
    );
    assert_eq!(
        select(
            &store,
            "SELECT topic, right(id, 2), event_time, final_through, seconds_late, dt, hour
             FROM late_execution_results"
        )
        .await,
        [format!(
            "{}|ff|2026-01-01T10:00:30Z|2026-01-01T10:02:00Z|90.000000|2026-01-01|10",
            topics.executions
        )]
    );
    assert_eq!(
        select(&store, "SELECT count(*) FROM late_influencer_signals").await,
        ["0"]
    );
    assert_eq!(
        select(
            &store,
            &format!("SELECT count(*) FROM executions_enriched WHERE execution_id = '{late_id}'")
        )
        .await,
        ["0"]
    );
    assert_eq!(
        select(
            &store,
            "SELECT * FROM system_metrics_1m ORDER BY window_start"
        )
        .await,
        metrics_before
    );

    // Reprocess folds the late event in: a dry run writes nothing, a second
    // reprocess while one runs is refused, the real one replaces the windows.
    let opts = |dry_run| ReprocessOpts {
        from: "2026-01-01T10:00:00Z".into(),
        to: "2026-01-01T10:02:00Z".into(),
        metrics: vec![],
        dry_run,
        memory_limit: "256MiB".into(),
        lookback_hours: 24.0,
        source: Source::Raw,
    };
    let settings = common(&topics, &group, output, &s3);
    let dry = reprocess(&settings, &opts(true)).await.unwrap();
    assert_eq!((dry.windows, dry.hours, dry.raw_events), (2, 1, 17));
    assert_eq!(dry.files_written, 0);
    let system = "SELECT * FROM system_metrics_1m ORDER BY window_start";
    assert_eq!(select(&store, system).await, metrics_before);
    // Locks of other reprocesses: a live one over an overlapping range
    // refuses this one, a live one elsewhere does not, a dead one is taken over.
    let locks = dir.path().join("out/_finalizer/reprocess");
    std::fs::create_dir_all(&locks).unwrap();
    let host = analytics_processor::coordination::host_name();
    let write_lock = |name: &str, from: &str, to: &str, pid: u32| {
        let us = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .timestamp_micros()
        };
        let path = locks.join(name);
        std::fs::write(
            &path,
            format!(
                r#"{{"from":"{from}","to":"{to}","from_us":{},"to_us":{},"host":"{host}","pid":{pid},"started_ms":0}}"#,
                us(from),
                us(to)
            ),
        )
        .unwrap();
        path
    };
    let me = std::process::id();
    let overlapping = write_lock("a.json", "2026-01-01T10:01:00Z", "2026-01-01T10:05:00Z", me);
    let busy = reprocess(&settings, &opts(false)).await.unwrap_err();
    assert!(busy.to_string().contains("another reprocess"), "{busy}");
    assert!(busy.to_string().contains("overlaps"), "{busy}");
    std::fs::remove_file(&overlapping).unwrap();
    let elsewhere = write_lock("b.json", "2026-01-01T10:02:00Z", "2026-01-01T11:00:00Z", me);
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let dead = write_lock(
        "c.json",
        "2026-01-01T09:00:00Z",
        "2026-01-01T10:30:00Z",
        dead_pid,
    );
    let not_final = ReprocessOpts {
        to: "2026-01-01T10:03:00Z".into(),
        ..opts(false)
    };
    let e = reprocess(&settings, &not_final).await.unwrap_err();
    assert!(e.to_string().contains("not final yet"), "{e}");
    let done = reprocess(&settings, &opts(false)).await.unwrap();
    assert_eq!((done.executions, done.signals), (10, 4));
    assert!(!dead.exists(), "a dead reprocess's lock is taken over");
    assert!(elsewhere.exists(), "a live lock elsewhere is left alone");
    std::fs::remove_file(&elsewhere).unwrap();
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "the lock is released"
    );
    assert_eq!(
        select(
            &store,
            &format!("SELECT count(*) FROM executions_enriched WHERE execution_id = '{late_id}'")
        )
        .await,
        ["1"]
    );
    let windows = |rows: Vec<String>| -> Vec<String> {
        rows.iter()
            .map(|r| r.split('|').take(3).collect::<Vec<_>>().join("|"))
            .collect()
    };
    assert_eq!(
        windows(select(&store, system).await),
        ["2026-01-01T10:00:00Z|3|7", "2026-01-01T10:01:00Z|1|3"],
        "window 10:00 now counts the late execution"
    );
    assert_eq!(
        windows(metrics_before),
        ["2026-01-01T10:00:00Z|3|6", "2026-01-01T10:01:00Z|1|3"]
    );

    // Hour 10 is not complete until the watermark (here the end of input)
    // passes 11:00: then every final table gets its marker.
    assert_eq!(
        select(&store, "SELECT count(*) FROM _completeness").await,
        ["0"]
    );
    let next_hour = bad_execution(|v| {
        v["execution_id"] = "0b6f1c2e-2222-4a4a-8b8b-0000000000fe".into();
        v["executed_at"] = "2026-01-01T11:05:00Z".into();
    });
    produce(
        &topics,
        &[Msg {
            executions: true,
            key: "next".into(),
            value: Some(next_hour),
        }],
    )
    .await;
    let third = run_daemon(&topics, &group, output, &s3).await;
    assert_eq!(third.late_events, 0);
    assert_eq!(
        select(
            &store,
            "SELECT table_name, hour_start, reason, dt, hour FROM _completeness ORDER BY table_name"
        )
        .await,
        [
            "execution_errors_1m|2026-01-01T10:00:00Z|end_of_input|2026-01-01|10",
            "executions_enriched|2026-01-01T10:00:00Z|end_of_input|2026-01-01|10",
            "influencer_metrics_1m|2026-01-01T10:00:00Z|end_of_input|2026-01-01|10",
            "signals|2026-01-01T10:00:00Z|end_of_input|2026-01-01|10",
            "subscriber_metrics_1m|2026-01-01T10:00:00Z|end_of_input|2026-01-01|10",
            "system_metrics_1m|2026-01-01T10:00:00Z|end_of_input|2026-01-01|10",
        ]
    );

    // A window file the recomputation does not produce (here a stray copy
    // in an empty window) is a leftover: reprocess deletes it.
    let hour = dir.path().join("out/signals/dt=2026-01-01/hour=10");
    let stray = hour.join("w-20260101T1030.parquet");
    std::fs::copy(hour.join("w-20260101T1000.parquet"), &stray).unwrap();
    let count = "SELECT count(*) FROM signals";
    assert_eq!(
        select(&store, count).await,
        ["7"],
        "4 signals + the stray copy's 3"
    );
    let whole_hour = ReprocessOpts {
        to: "2026-01-01T11:00:00Z".into(),
        ..opts(false)
    };
    let done = reprocess(&settings, &whole_hour).await.unwrap();
    assert_eq!((done.windows, done.files_deleted), (60, 1));
    assert!(!stray.exists());
    assert_eq!(select(&store, count).await, ["4"]);
}

/// Every row of every final table (`signals`, `executions_enriched`, each
/// metric), cells in full precision, sorted: what must not depend on batching.
async fn final_rows(store: &OutputStore) -> Vec<String> {
    let sql_dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"));
    let mut tables = vec!["signals".to_string(), "executions_enriched".to_string()];
    tables.extend(
        analytics_processor::metrics::catalog::load(sql_dir)
            .unwrap()
            .into_iter()
            .map(|m| m.name),
    );
    let mut out = vec![];
    for t in tables {
        let batches = query::collect(store, &format!("SELECT * FROM {t}"))
            .await
            .unwrap_or_else(|e| panic!("{t}: {e}"));
        let mut rows = vec![];
        for b in &batches {
            let fmts: Vec<_> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &Default::default()).unwrap())
                .collect();
            for i in 0..b.num_rows() {
                let cells: Vec<String> = fmts.iter().map(|f| f.value(i).to_string()).collect();
                rows.push(format!("{t}|{}", cells.join("|")));
            }
        }
        assert!(!rows.is_empty(), "{t} has rows");
        rows.sort();
        out.extend(rows);
    }
    out
}

/// Files (not folders) under `dir`, recursively; 0 if it does not exist.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
            .sum()
    })
}

/// Produces `msgs` in `slices` pieces a second apart, as a live stream would.
async fn trickle(topics: &Topics, msgs: &[Msg], slices: usize) {
    for chunk in msgs.chunks(msgs.len().div_ceil(slices)) {
        produce(topics, chunk).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One generated event set (duplicates, malformed records, executions
/// before their signals, out of order within the allowed lateness, and some
/// events held back until their windows are final) gives the same final
/// rows whether the daemon cuts it into 1 s epochs of 100 messages or 30 s
/// epochs; its late events are left out of both alike. `reprocess` from
/// `raw/` and from Kafka then folds them in and both give exactly the rows
/// of a daemon that got every event in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_boundaries_do_not_change_final_rows_and_reprocess_from_raw_or_kafka_folds_late_events_in(
) {
    use analytics_processor::decode::{decode_execution, decode_signal};
    use analytics_processor::produce::{Generator, ProduceOpts, Role};

    let generated: Vec<_> = Generator::new(ProduceOpts {
        rate: None,
        count: None,
        duration: None,
        seed: 7,
        fanout: 8,
        influencers: 5,
        subscribers: 40,
        bad_rate: 0.01,
        duplicate_rate: 0.03,
        late_rate: 0.0,
        signal_after_rate: 0.1,
        start: Some("2026-01-02T00:00:00Z".into()),
        signal_gap: 2.0,
        partitions: 3,
    })
    .unwrap()
    .take(3000)
    .collect();
    let msg = |g: &analytics_processor::produce::Generated| Msg {
        executions: g.role == Role::Execution,
        key: g.key.clone(),
        value: Some(g.payload.clone()),
    };
    // Every 53rd message is held back until the rest is read: late.
    let held = |i: usize| i % 53 == 52;
    let on_time: Vec<Msg> = (0..generated.len())
        .filter(|i| !held(*i))
        .map(|i| msg(&generated[i]))
        .collect();
    let late: Vec<Msg> = (0..generated.len())
        .filter(|i| held(*i))
        .map(|i| msg(&generated[i]))
        .collect();
    let valid = |g: &analytics_processor::produce::Generated| match g.role {
        Role::Signal => decode_signal(Some(&g.payload)).is_ok(),
        Role::Execution => decode_execution(Some(&g.payload)).is_ok(),
    };
    let late_valid = (0..generated.len())
        .filter(|i| held(*i) && valid(&generated[*i]))
        .count() as u64;

    // Executions sent before their (valid, on-time) signal.
    let mut signal_at = std::collections::HashMap::new();
    for (i, g) in generated.iter().enumerate() {
        if g.role == Role::Signal && !held(i) {
            if let Ok(s) = decode_signal(Some(&g.payload)) {
                signal_at.insert(s.signal_id.to_string(), i);
            }
        }
    }
    let mut early = std::collections::BTreeSet::new();
    for (i, g) in generated.iter().enumerate() {
        if g.role == Role::Execution && !held(i) {
            if let Ok(e) = decode_execution(Some(&g.payload)) {
                if signal_at
                    .get(e.signal_id.as_ref())
                    .is_some_and(|&at| at > i)
                {
                    early.insert(e.execution_id.to_string());
                }
            }
        }
    }
    assert!(
        early.len() >= 10,
        "the set has executions before their signals"
    );

    let s3 = S3Options::default();
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (out_a, out_b, out_c) = (out("a"), out("b"), out("c"));
    let topics = fresh_topics();
    let (group_a, group_b) = (unique("group-a"), unique("group-b"));
    let fine = run_settings(Duration::from_secs(1), 100);
    let coarse = run_settings(Duration::from_secs(30), 1_000_000);

    // A and B read the same live stream side by side, in different epochs.
    produce(&topics, &on_time[..1]).await;
    let a = tokio::spawn({
        let (t, g, o, s) = (topics.clone(), group_a.clone(), out_a.clone(), s3.clone());
        let run = fine.clone();
        async move { run_daemon_with(&t, &g, &o, &s, run).await }
    });
    let b = tokio::spawn({
        let (t, g, o, s) = (topics.clone(), group_b.clone(), out_b.clone(), s3.clone());
        let run = coarse.clone();
        async move { run_daemon_with(&t, &g, &o, &s, run).await }
    });
    trickle(&topics, &on_time[1..], 8).await;
    let (a1, b1) = (a.await.unwrap(), b.await.unwrap());
    assert!(
        a1.epochs >= 3 * b1.epochs.max(1),
        "epochs differ: {} vs {}",
        a1.epochs,
        b1.epochs
    );
    assert_eq!((a1.late_events, b1.late_events), (0, 0));

    // The held-back events arrive after their windows are final.
    produce(&topics, &late).await;
    let a2 = run_daemon_with(&topics, &group_a, &out_a, &s3, fine.clone()).await;
    let b2 = run_daemon_with(&topics, &group_b, &out_b, &s3, coarse.clone()).await;
    assert_eq!(a2.late_events, late_valid);
    assert_eq!(b2.late_events, late_valid);

    let (store_a, store_b) = (
        OutputStore::open(&out_a, &s3).unwrap(),
        OutputStore::open(&out_b, &s3).unwrap(),
    );
    let daemon_a = final_rows(&store_a).await;
    assert_eq!(daemon_a, final_rows(&store_b).await, "1 s vs 30 s epochs");

    // Executions read before their signal are enriched all the same.
    let unmatched_early = select(
        &store_a,
        &format!(
            "SELECT count(*) FROM executions_enriched WHERE signal_price IS NULL AND execution_id IN ({})",
            early
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .await;
    assert_eq!(unmatched_early, ["0"]);
    assert_eq!(
        select(
            &store_a,
            &format!(
                "SELECT count(*) FROM executions_enriched WHERE execution_id IN ({})",
                early
                    .iter()
                    .map(|id| format!("'{id}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        )
        .await,
        [early.len().to_string()]
    );

    // C gets every event in time, in the original order: nothing is late.
    let topics_c = fresh_topics();
    let everything: Vec<Msg> = generated.iter().map(msg).collect();
    produce(&topics_c, &everything).await;
    let c = run_daemon_with(&topics_c, &unique("group-c"), &out_c, &s3, fine.clone()).await;
    assert_eq!(c.late_events, 0);
    let store_c = OutputStore::open(&out_c, &s3).unwrap();
    let in_time = final_rows(&store_c).await;
    assert_ne!(daemon_a, in_time, "the late events are left out of A and B");

    // Reprocess the whole range: A from raw/, B from Kafka.
    let last = select(
        &store_a,
        "SELECT CAST(max(t) AS BIGINT) FROM (
             SELECT max(emitted_at) AS t FROM raw_influencer_signals
             UNION ALL SELECT max(executed_at) AS t FROM raw_execution_results)",
    )
    .await;
    let last: i64 = last[0].parse().unwrap();
    let to = chrono::DateTime::from_timestamp_micros(last + 1)
        .unwrap()
        .to_rfc3339();
    let opts = |source| ReprocessOpts {
        from: "2026-01-02T00:00:00Z".into(),
        to: to.clone(),
        metrics: vec![],
        dry_run: false,
        memory_limit: "256MiB".into(),
        lookback_hours: 24.0,
        source,
    };
    let from_raw = reprocess(&common(&topics, &group_a, &out_a, &s3), &opts(Source::Raw))
        .await
        .unwrap();
    let dry = reprocess(
        &common(&topics, &group_b, &out_b, &s3),
        &ReprocessOpts {
            dry_run: true,
            ..opts(Source::Kafka)
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.files_written, 0);
    assert_eq!(
        final_rows(&store_b).await,
        daemon_a,
        "a dry run writes nothing"
    );
    let from_kafka = reprocess(
        &common(&topics, &group_b, &out_b, &s3),
        &opts(Source::Kafka),
    )
    .await
    .unwrap();
    assert_eq!(
        (from_raw.signals, from_raw.executions, from_raw.raw_events),
        (
            from_kafka.signals,
            from_kafka.executions,
            from_kafka.raw_events
        )
    );
    assert_eq!(
        files_under(&dir.path().join("b/_reprocess")),
        0,
        "the Kafka scratch folder is emptied"
    );
    assert_eq!(final_rows(&store_a).await, in_time, "reprocess from raw/");
    assert_eq!(final_rows(&store_b).await, in_time, "reprocess from Kafka");
}

/// The definition hash stored in a metric file's Parquet key-value metadata.
fn definition_of(file: &std::path::Path) -> String {
    use parquet::file::reader::FileReader;
    let r = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(file).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let kv = r.metadata().file_metadata().key_value_metadata().cloned();
    kv.unwrap_or_default()
        .into_iter()
        .find(|e| e.key == analytics_processor::metrics::catalog::METADATA_DEFINITION_SHA256)
        .and_then(|e| e.value)
        .unwrap_or_else(|| panic!("{} has no definition hash", file.display()))
}

/// Writes `text` to `path` at once, as an editor saving a file does.
fn save(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("sql.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls `sql` until it returns `want` (a missing table counts as not yet).
async fn wait_for(store: &OutputStore, sql: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(b) = query::collect(store, sql).await {
            if rows(&b) == want {
                return;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sql} never returned {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A running daemon picks up a changed, an added and a broken metric file at
/// an epoch boundary: windows finalized before run the old definition,
/// windows after the new one, each file carries the hash of the definition
/// that wrote it, the broken file is reported once and never runs; a
/// reprocess rewrites the earlier windows with the new definition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_files_reload_at_epoch_boundaries_and_files_name_their_definition() {
    use analytics_processor::metrics::catalog;
    let dir = tempfile::tempdir().unwrap();
    let sql = dir.path().join("sql");
    std::fs::create_dir(&sql).unwrap();
    for m in catalog::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sql"
    )))
    .unwrap()
    {
        std::fs::write(sql.join(format!("{}.sql", m.name)), &m.sql).unwrap();
    }
    let system = sql.join("system_metrics_1m.sql");
    let old = catalog::load(&sql).unwrap();
    let old_hash = old
        .iter()
        .find(|m| m.name == "system_metrics_1m")
        .unwrap()
        .definition_hash();
    let output = dir.path().join("out");
    let output = output.to_str().unwrap();
    let s3 = S3Options::default();
    let topics = fresh_topics();
    let group = unique("group");
    let mut settings = common(&topics, &group, output, &s3);
    settings.sql_dir = sql.clone();
    let run = Run {
        allowed_lateness: Duration::ZERO,
        idle_timeout: Duration::from_secs(1),
        stop_when_idle: None,
        ..run_settings(Duration::from_millis(300), 1000)
    };
    produce(&topics, &fixture_messages()).await;
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(analytics_processor::run_daemon(
        settings.clone(),
        run.clone(),
        cancel.clone(),
    ));
    let store = OutputStore::open(output, &s3).unwrap();
    let first =
        "SELECT count(*) FROM system_metrics_1m WHERE window_start = '2026-01-01T10:00:00Z'";
    wait_for(&store, first, &["1"]).await;

    // Edits while it runs: a new column, a new metric, a broken metric.
    let text = std::fs::read_to_string(&system).unwrap();
    let last = "    coalesce(e.unmatched_executions, 0) AS unmatched_executions\n";
    assert!(text.contains(last));
    save(
        &system,
        &text.replace(
            last,
            &format!(
                "{},\n    coalesce(s.signals, 0) + coalesce(e.executions, 0) AS events\n",
                last.trim_end()
            ),
        ),
    );
    save(
        &sql.join("venue_metrics_1m.sql"),
        "-- description: executions per minute and venue\n-- keys: window_start, venue\n\
         -- window: 1 minute\n-- owner: tests\n\
         SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start, venue,\n\
         \x20      count(*) AS executions\nFROM executions GROUP BY 1, 2\n",
    );
    save(
        &sql.join("broken_1m.sql"),
        "-- description: x\n-- keys: window_start\n-- window: 1 minute\n-- owner: tests\n\
         SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start, sum(filed_qty) AS q\n\
         FROM executions GROUP BY 1\n",
    );
    let new_hash = catalog::load(&sql)
        .unwrap()
        .iter()
        .find(|m| m.name == "system_metrics_1m")
        .unwrap()
        .definition_hash();
    assert_ne!(old_hash, new_hash);
    // Give the daemon time to see the edits (a file settles for a second
    // first), then events of 11:00.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at = |id: &str, t: &str| Msg {
        executions: true,
        key: "later".into(),
        value: Some(bad_execution(|v| {
            v["execution_id"] = id.into();
            v["executed_at"] = t.into();
            v["submitted_at"] = t.into();
        })),
    };
    produce(
        &topics,
        &[
            at(
                "00000000-0000-4000-8000-00000000aa01",
                "2026-01-01T11:00:10Z",
            ),
            at(
                "00000000-0000-4000-8000-00000000aa02",
                "2026-01-01T11:03:00Z",
            ),
        ],
    )
    .await;
    wait_for(
        &store,
        "SELECT events FROM system_metrics_1m WHERE window_start = '2026-01-01T11:00:00Z'",
        &["1"],
    )
    .await;
    cancel.cancel();
    let summary = daemon.await.unwrap().unwrap();
    assert_eq!(summary.definition_rejections, 1, "{summary:?}");

    // Before the edit: no `events` (NULL), the old hash; after: both new.
    assert_eq!(
        select(
            &store,
            "SELECT window_start, events FROM system_metrics_1m
             WHERE window_start IN ('2026-01-01T10:00:00Z', '2026-01-01T11:00:00Z')
             ORDER BY 1"
        )
        .await,
        ["2026-01-01T10:00:00Z|null", "2026-01-01T11:00:00Z|1"]
    );
    let file = |hour: &str, window: &str| {
        dir.path().join(format!(
            "out/metrics/system_metrics_1m/dt=2026-01-01/hour={hour}/w-20260101T{window}.parquet"
        ))
    };
    assert_eq!(definition_of(&file("10", "1000")), old_hash);
    assert_eq!(definition_of(&file("11", "1100")), new_hash);
    // The added metric runs from the windows finalized after it appeared.
    assert_eq!(
        select(
            &store,
            "SELECT count(*) FILTER (WHERE window_start = '2026-01-01T10:00:00Z'),
                    count(*) FILTER (WHERE window_start = '2026-01-01T11:00:00Z')
             FROM venue_metrics_1m"
        )
        .await,
        ["0|1"]
    );
    assert!(!dir.path().join("out/metrics/broken_1m").exists());
    // Hour 10 is complete, but not for the two metrics whose current version
    // began inside it.
    assert_eq!(
        select(
            &store,
            "SELECT table_name FROM _completeness
             WHERE hour_start = '2026-01-01T10:00:00Z' ORDER BY 1"
        )
        .await,
        [
            "execution_errors_1m",
            "executions_enriched",
            "influencer_metrics_1m",
            "signals",
            "subscriber_metrics_1m"
        ]
    );

    // Reprocess with the new definitions: the 10:00 window follows them.
    std::fs::remove_file(sql.join("broken_1m.sql")).unwrap();
    let opts = ReprocessOpts {
        from: "2026-01-01T10:00:00Z".into(),
        to: "2026-01-01T10:02:00Z".into(),
        metrics: vec![],
        dry_run: false,
        memory_limit: "256MiB".into(),
        lookback_hours: 24.0,
        source: Source::Raw,
    };
    reprocess(&settings, &opts).await.unwrap();
    assert_eq!(definition_of(&file("10", "1000")), new_hash);
    let signals_and_executions = select(
        &store,
        "SELECT signals + executions, events FROM system_metrics_1m
         WHERE window_start = '2026-01-01T10:00:00Z'",
    )
    .await;
    let cells: Vec<&str> = signals_and_executions[0].split('|').collect();
    assert_eq!(cells[0], cells[1], "{signals_and_executions:?}");
    assert_ne!(cells[1], "null");

    // While stopped: `events` removed again, venue_metrics_1m broken. The
    // versions that ran last are recorded on the store, so reprocess refuses
    // the removal and a restarted daemon reports both files and runs their
    // last good versions.
    save(&system, &text);
    save(
        &sql.join("venue_metrics_1m.sql"),
        "-- description: executions per minute and venue\n-- keys: window_start, venue\n\
         -- window: 1 minute\n-- owner: tests\n\
         SELECT date_bin(INTERVAL '1 minute', executed_at) AS window_start, venu\n\
         FROM executions GROUP BY 1, 2\n",
    );
    let e = reprocess(
        &settings,
        &ReprocessOpts {
            metrics: vec!["system_metrics_1m".into()],
            ..opts
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("column `events` is gone"), "{e}");
    produce(
        &topics,
        &[
            at(
                "00000000-0000-4000-8000-00000000aa03",
                "2026-01-01T12:00:10Z",
            ),
            at(
                "00000000-0000-4000-8000-00000000aa04",
                "2026-01-01T12:03:00Z",
            ),
        ],
    )
    .await;
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(analytics_processor::run_daemon(
        settings.clone(),
        run,
        cancel.clone(),
    ));
    wait_for(
        &store,
        "SELECT events FROM system_metrics_1m WHERE window_start = '2026-01-01T12:00:00Z'",
        &["1"],
    )
    .await;
    wait_for(
        &store,
        "SELECT venue, executions FROM venue_metrics_1m WHERE window_start = '2026-01-01T12:00:00Z'",
        &["v1|1"],
    )
    .await;
    cancel.cancel();
    let summary = daemon.await.unwrap().unwrap();
    assert_eq!(summary.definition_rejections, 2, "{summary:?}");
    assert_eq!(definition_of(&file("12", "1200")), new_hash);
}

//! The `analytics-processor` command: parse, set up logging, dispatch.

use std::io::IsTerminal;
use std::process::ExitCode;

use analytics_processor::config::{Cli, Command, CommonOpts, FileConfig, Format, SqlCommand};
use analytics_processor::{
    ddl,
    metrics::{catalog, fixture},
    produce, query, reprocess, run_daemon,
    sink::store::OutputStore,
};
use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Logs go to stderr; `sql` commands report on stdout and log warnings only.
fn init_logging(json: bool, quiet: bool) {
    let default = if quiet {
        "warn"
    } else {
        "info,datafusion=warn,rdkafka=warn"
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}

fn output_store(common: CommonOpts, file: &FileConfig) -> anyhow::Result<OutputStore> {
    let c = common.or(file.common.clone()).resolve();
    Ok(OutputStore::open(&c.output, &c.s3)?)
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run { common, run } => {
            let common = common.or(file.common).resolve();
            let run = run.or(file.run).resolve()?;
            let limit_mib = run.memory_limit >> 20;
            let token = CancellationToken::new();
            cancel_on_signals(token.clone());
            let s = run_daemon(common, run, token).await?;
            eprintln!(
                "stopped: {} epochs, {} messages ({} signals, {} executions, {} dead letters, {} late) \
                 in {:.1} s of work ({:.0} events/s), {} metric rows, {} rejected metric definitions, peak RSS {} (--memory-limit {limit_mib} MiB)",
                s.epochs,
                s.messages,
                s.signals,
                s.executions,
                s.dead_letters,
                s.late_events,
                s.busy_seconds,
                s.rate(),
                s.metric_rows,
                s.definition_rejections,
                s.peak_rss_bytes
                    .map_or("unknown".into(), |b| format!("{} MiB", b >> 20))
            );
        }
        Command::Produce {
            common,
            produce: opts,
        } => {
            let common = common.or(file.common).resolve();
            let s = produce::produce(&common, opts).await?;
            let n = s.signals + s.executions;
            eprintln!(
                "produced {n} messages ({} signals, {} executions) in {:.1} s: {:.0} messages/s",
                s.signals,
                s.executions,
                s.seconds,
                n as f64 / s.seconds.max(1e-9)
            );
        }
        Command::Reprocess {
            common,
            reprocess: opts,
        } => {
            let common = common.or(file.common).resolve();
            let s = reprocess::reprocess(&common, &opts).await?;
            if !opts.dry_run {
                eprintln!(
                    "reprocessed {} windows in {} hour partitions: {} raw events -> {} signals, \
                     {} executions, {} metric rows; {} files written, {} leftover files deleted; \
                     {:.1} s ({:.0} events/s)",
                    s.windows,
                    s.hours,
                    s.raw_events,
                    s.signals,
                    s.executions,
                    s.metric_rows,
                    s.files_written,
                    s.files_deleted,
                    s.seconds,
                    s.raw_events as f64 / s.seconds.max(1e-9)
                );
            }
        }
        Command::Query {
            common,
            format,
            sql,
        } => {
            let store = output_store(common, &file)?;
            let batches = query::collect(&store, &sql).await?;
            match format {
                Format::Table => {
                    println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?)
                }
                Format::Json => {
                    let mut w = arrow::json::LineDelimitedWriter::new(std::io::stdout().lock());
                    w.write_batches(&batches.iter().collect::<Vec<_>>())?;
                    w.finish()?;
                }
            }
        }
        Command::Ddl {
            common,
            dialect,
            schema,
            connection,
        } => {
            let c = common.or(file.common).resolve();
            let metrics = catalog::load_checked(&c.sql_dir).await?;
            let store = OutputStore::open(&c.output, &c.s3)?;
            let tables = analytics_processor::tables::definitions(&store, &metrics).await?;
            let root = ddl::Root {
                location: store.local_dir().unwrap_or_else(|| store.root_url()),
                endpoint: c.s3.endpoint.clone(),
                connection,
            };
            print!("{}", ddl::statements(dialect, &root, &schema, &tables)?);
        }
        Command::Sql {
            command: SqlCommand::Check { common },
        } => {
            let c = common.or(file.common).resolve();
            let metrics = catalog::load(&c.sql_dir)?;
            let problems = catalog::problems(&metrics).await;
            for m in &metrics {
                if let (Ok(h), false) = (m.header(), problems.iter().any(|p| p.path == m.path)) {
                    println!(
                        "ok     {}  (keys: {})\n       {}",
                        m.path.display(),
                        h.keys.join(", "),
                        h.description
                    );
                }
            }
            for p in &problems {
                println!("error  {p}");
            }
            if !problems.is_empty() {
                anyhow::bail!("{} problem(s) in the metric files", problems.len());
            }
        }
        Command::Sql {
            command:
                SqlCommand::Test {
                    common,
                    fixtures,
                    bless,
                    metrics,
                },
        } => {
            let c = common.or(file.common).resolve();
            let catalog = catalog::load_checked(&c.sql_dir).await?;
            let failed =
                fixture::test_catalog(&catalog, &fixtures, bless, &metrics, &mut std::io::stdout())
                    .await?;
            if failed > 0 {
                anyhow::bail!("{failed} metric test(s) failed");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json, matches!(cli.command, Command::Sql { .. }));
    // Few blocking threads: each keeps its own allocator cache, and local
    // file I/O gains nothing from more of them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .context("starting the async runtime");
    let result = rt.and_then(|rt| rt.block_on(dispatch(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause left out when the text
/// before it already says it (DataFusion repeats its sources in its message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn causes_are_said_once() {
        let io = std::io::Error::other("disk full");
        let e = anyhow::Error::new(io).context("writing out/x.parquet");
        assert_eq!(describe(&e), "writing out/x.parquet: disk full");
        let e = anyhow::anyhow!("planning: No field named nope")
            .context("planning: No field named nope");
        assert_eq!(describe(&e), "planning: No field named nope");
    }
}

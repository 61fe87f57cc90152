//! `sluice stream`: runs a job as a micro-batch stream and shows each batch
//! as a line (or a JSON line), its failures and its alarms; and `sluice
//! stream status`, a checkpoint's recent batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use sluice_core::client::{self, JobRunner, NoProgress};
use sluice_core::config::SluiceConfig;
use sluice_core::stream::alarm::Change;
use sluice_core::stream::files::FileSourceOptions;
use sluice_core::stream::{
    AlarmEvent, BatchInfo, StreamObserver, StreamOptions, StreamRunner, StreamStatus, Trigger,
};

use crate::args::{OutputFormat, StreamArgs};

/// Shows the stream's progress: a line per batch on stdout (or a JSON
/// line), everything else on stderr.
struct Printer {
    json: bool,
    idle: AtomicBool,
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl StreamObserver for Printer {
    fn started(&self, stream_id: &str, resuming: Option<u64>, next_batch: u64) {
        match resuming {
            Some(b) => eprintln!(
                "stream {stream_id}: batch {b} was planned and not committed before the last stop; running it again over the same input"
            ),
            None => eprintln!("stream {stream_id}: starting at batch {next_batch}"),
        }
    }

    fn batch_done(&self, info: &BatchInfo) {
        self.idle.store(false, Ordering::Relaxed);
        if self.json {
            if let Ok(line) = serde_json::to_string(info) {
                println!("{line}");
            }
            return;
        }
        let rows = info
            .input_rows
            .map_or_else(|| "?".to_string(), |r| r.to_string());
        let lag: u64 = info.lag.iter().map(|l| l.pending).sum();
        let dead = if info.rows_dead_lettered > 0 {
            format!(" ({} dead-lettered)", info.rows_dead_lettered)
        } else {
            String::new()
        };
        // Records the job failed on alone, read as bad records: each named,
        // so an operator sees what went to the error output and why.
        for r in &info.rejected {
            eprintln!(
                "batch {}: the job failed on {r}; read as a bad record",
                info.batch_id
            );
        }
        for a in info.accounts.iter().filter(|a| a.overcount().is_some()) {
            eprintln!(
                "batch {}: split {} of {}: {} rows read, {} written, {} dead-lettered: rows were written more than once",
                info.batch_id,
                a.split,
                a.source,
                a.read.unwrap_or(0),
                a.written.unwrap_or(0),
                a.dead_lettered.unwrap_or(0)
            );
        }
        println!(
            "batch {}{}: {} rows from {} splits ({} B) -> {} rows in {} files{dead} | delay: scheduling {} processing {} total {} | lag {} files, {}",
            info.batch_id,
            if info.resumed { " (re-run)" } else { "" },
            rows,
            info.input_splits,
            info.input_bytes,
            info.rows_written,
            info.files_written,
            secs(info.scheduling_delay_ms),
            secs(info.processing_delay_ms),
            secs(info.total_delay_ms),
            lag,
            secs(info.lag_age_ms()),
        );
    }

    fn idle(&self, next_due: Option<DateTime<Utc>>) {
        if !self.idle.swap(true, Ordering::Relaxed) {
            let at = next_due.map_or_else(String::new, |d| {
                format!(" (next look at {})", d.format("%H:%M:%S"))
            });
            eprintln!("no new input; waiting{at}");
        }
    }

    fn batch_failed(&self, batch_id: u64, error: &str, retry_in: Option<Duration>) {
        // Without a retry the run ends, and its `error:` line says why.
        let Some(d) = retry_in else { return };
        let prefix = if error.starts_with(&format!("batch {batch_id} ")) {
            String::new()
        } else {
            format!("batch {batch_id} failed: ")
        };
        eprintln!(
            "{prefix}{error}; retrying in {}",
            humantime::format_duration(d)
        );
    }

    fn alarm(&self, e: &AlarmEvent) {
        let state = match e.state {
            Change::Firing => "FIRING",
            Change::Cleared => "cleared",
        };
        eprintln!("alarm {state}: {} (value {:.2})", e.alarm, e.value);
    }
}

fn trigger(args: &StreamArgs) -> Trigger {
    if args.once {
        Trigger::Once
    } else if args.available_now {
        Trigger::AvailableNow
    } else {
        Trigger::Every(args.every.unwrap_or(Duration::from_secs(10)))
    }
}

/// Runs the stream on `endpoint`'s cluster until its trigger ends it or a
/// signal stops it (Ctrl-C or SIGTERM: the running batch is cancelled and
/// runs again on the next start).
pub async fn run_stream(
    args: &StreamArgs,
    endpoint: &str,
    tls: Option<&sluice_core::tls::ClusterTls>,
    coordinator: Option<String>,
    timeout: Duration,
    config: &SluiceConfig,
) -> Result<()> {
    let Some(file) = &args.file else {
        bail!("a job file is required");
    };
    let Some(checkpoint) = &args.checkpoint else {
        bail!("--checkpoint is required");
    };
    let vars = crate::parse_vars(&args.var)?;
    let source = std::fs::read_to_string(file)
        .with_context(|| format!("reading job file {}", file.display()))?;
    let ctx = client::connect(endpoint, tls, timeout).await?;
    let runner = JobRunner::new(ctx, endpoint, Arc::new(NoProgress))?
        .protect(&config.protected_outputs)?
        .with_coordinator(coordinator)
        .no_executor_timeout(Duration::from_secs(config.no_executor_timeout_secs));
    let mut options = StreamOptions::new(checkpoint, trigger(args));
    options.files = FileSourceOptions {
        max_files: args.max_files_per_batch,
        max_file_age: args.max_file_age,
    };
    options.lock_ttl = args.lock_ttl;
    options.batch_timeout = args.batch_timeout;
    options.alarms = args.alarms.clone();
    options.webhook = args.alarm_webhook.clone();
    options.alarm_command = args.alarm_command.clone();
    let json = args.output == OutputFormat::Json;
    let printer = Arc::new(Printer {
        json,
        idle: AtomicBool::new(false),
    });
    let stream = StreamRunner::new(
        runner,
        &file.display().to_string(),
        &source,
        vars,
        options,
        printer,
    );
    let interrupter = stream.interrupter();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => futures::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        eprintln!("stopping: the running batch is cancelled and runs again on the next start");
        let _ = stop_tx.send(true);
        interrupter.interrupt();
    });
    let result = stream.run(stop).await;
    signals.abort();
    let summary = result?;
    if json {
        println!("{}", serde_json::json!({ "summary": summary }));
    } else {
        eprintln!(
            "stream {}: {} batches, {} rows written in {} files ({} B){}",
            summary.stream_id,
            summary.batches,
            summary.rows_written,
            summary.files_written,
            summary.bytes_written,
            if summary.stopped { "; stopped" } else { "" }
        );
    }
    Ok(())
}

pub async fn show_status(checkpoint: &str, last: usize, output: OutputFormat) -> Result<()> {
    let status: StreamStatus = sluice_core::stream::status(checkpoint, last).await?;
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "stream {} ({})",
        status.stream_id.as_deref().unwrap_or("?"),
        status.job.as_deref().unwrap_or("?")
    );
    match &status.running {
        Some(h) => println!("running: pid {} on {} since {}", h.pid, h.host, h.since),
        None => println!("running: no"),
    }
    match status.pending_batch {
        Some(b) => println!("batch {b} planned, not committed: it runs again on the next start"),
        None => println!("next batch: {}", status.next_batch),
    }
    println!(
        "{:>6} {:>20} {:>10} {:>8} {:>10} {:>10} {:>10} {:>6}",
        "batch", "committed", "rows in", "files", "sched", "process", "total", "lag"
    );
    for b in &status.batches {
        println!(
            "{:>6} {:>20} {:>10} {:>8} {:>10} {:>10} {:>10} {:>6}",
            b.batch_id,
            b.committed_at.format("%Y-%m-%d %H:%M:%S"),
            b.input_rows
                .map_or_else(|| "?".to_string(), |r| r.to_string()),
            b.input_splits,
            secs(b.scheduling_delay_ms),
            secs(b.processing_delay_ms),
            secs(b.total_delay_ms),
            b.lag_records(),
        );
    }
    Ok(())
}

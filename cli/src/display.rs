//! What the CLI shows: a progress bar on a terminal while a job runs, then
//! query results and a summary (text), or one JSON document (`--output json`).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use datafusion::arrow::util::pretty::pretty_format_batches;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_core::client::{JobProgress, JobReport, Progress, StatementOutcome};

use crate::args::OutputFormat;

pub struct CliProgress {
    bar: Option<ProgressBar>,
    job: Mutex<Option<String>>,
}

impl CliProgress {
    /// A bar only when stderr is a terminal and the output is for people.
    pub fn new(text: bool) -> Self {
        let bar = (text && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(100);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos:>3}% {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            job: Mutex::new(None),
        }
    }

    pub fn current_job(&self) -> Option<String> {
        self.job.lock().ok().and_then(|j| j.clone())
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for CliProgress {
    fn statement_started(&self, index: usize, total: usize, line: usize, _text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(0);
            bar.set_message(format!("statement {}/{total} (line {line})", index + 1));
        }
    }

    fn job_submitted(&self, job_id: &str) {
        if let Ok(mut j) = self.job.lock() {
            *j = Some(job_id.to_string());
        }
    }

    fn job_progress(&self, p: &JobProgress) {
        if let Some(bar) = &self.bar {
            bar.set_position(p.percent.into());
            bar.set_message(format!(
                "job {}: stages {}/{}, tasks {}/{} ({})",
                p.job_id, p.stages_done, p.stages, p.tasks_done, p.tasks, p.status
            ));
        }
    }

    fn statement_finished(&self, outcome: &StatementOutcome) {
        if let (Some(bar), Some(w)) = (&self.bar, &outcome.write) {
            bar.println(format!(
                "line {}: wrote {} rows in {} files ({} bytes) to {}",
                outcome.line, w.rows, w.files, w.bytes, w.output
            ));
        }
    }
}

pub fn print_report(report: &JobReport, output: OutputFormat) {
    match output {
        OutputFormat::Json => match serde_json::to_string_pretty(report) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot render the report as JSON: {e}"),
        },
        OutputFormat::Text => {
            for s in &report.statements {
                if s.kind == "sql" && !s.batches.is_empty() && s.result_rows > 0 {
                    match pretty_format_batches(&s.batches) {
                        Ok(table) => println!("{table}"),
                        Err(e) => eprintln!("error: cannot format results: {e}"),
                    }
                }
                if let Some(d) = s.write.as_ref().and_then(|w| w.dynamodb.as_ref()) {
                    println!(
                        "line {}: wrote {} items to DynamoDB table {} ({} retried, {} dead-lettered{}), {} throttles, {} WCU ({:.0} WCU/s of a {:.0} WCU/s budget); writer time: build {} ms, call {} ms, response {} ms, limiter wait {} ms",
                        s.line,
                        d.items,
                        d.table,
                        d.retried,
                        d.dead_lettered,
                        d.dead_letter
                            .as_ref()
                            .map(|p| format!(" to {p}"))
                            .unwrap_or_default(),
                        d.throttles,
                        d.consumed_wcu,
                        d.wcu_per_sec,
                        d.budget_wcu,
                        d.build_ms,
                        d.call_ms,
                        d.response_ms,
                        d.wait_ms
                    );
                } else if let Some(w) = &s.write {
                    println!(
                        "line {}: wrote {} rows in {} files ({} bytes) to {} [write {}]",
                        s.line, w.rows, w.files, w.bytes, w.output, w.write_id
                    );
                }
            }
            println!(
                "job {} finished: {} statements, jobs [{}], rows written {}, files {}, bytes {}, {:.2}s",
                report.job_file,
                report.statements.len(),
                report.job_ids.join(", "),
                report.rows_written,
                report.files_written,
                report.bytes_written,
                report.duration_ms as f64 / 1000.0
            );
        }
    }
}

pub fn print_jobs(jobs: &serde_json::Value, output: OutputFormat) {
    if output == OutputFormat::Json {
        println!("{jobs}");
        return;
    }
    let empty = vec![];
    let list = jobs.as_array().unwrap_or(&empty);
    println!(
        "{:<12} {:<12} {:>8} {:>8}  NAME",
        "JOB", "STATUS", "STAGES", "PERCENT"
    );
    for j in list {
        println!(
            "{:<12} {:<12} {:>8} {:>7}%  {}",
            j["job_id"].as_str().unwrap_or_default(),
            j["job_status"].as_str().unwrap_or_default(),
            format!("{}/{}", j["completed_stages"], j["num_stages"]),
            j["percent_complete"],
            j["job_name"].as_str().unwrap_or_default(),
        );
    }
}

pub fn print_status(job: &serde_json::Value, p: &JobProgress, output: OutputFormat) {
    if output == OutputFormat::Json {
        let doc = serde_json::json!({ "job": job, "progress": p });
        println!("{doc}");
        return;
    }
    println!(
        "job {} ({}): {} - stages {}/{}, tasks {}/{}, {}%",
        p.job_id,
        job["job_name"].as_str().unwrap_or_default(),
        job["job_status"].as_str().unwrap_or_default(),
        p.stages_done,
        p.stages,
        p.tasks_done,
        p.tasks,
        p.percent
    );
    if let Some(s) = job["status"].as_str()
        && !s.is_empty()
    {
        // A scheduler (or executor) older than this client may keep an
        // error that quotes a signed request.
        println!("{}", sluice_core::error::redact(s));
    }
}

pub fn print_limiter(
    tables: &[sluice_core::coordinator::leases::TableStatus],
    output: OutputFormat,
) {
    if output == OutputFormat::Json {
        match serde_json::to_string_pretty(tables) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot render as JSON: {e}"),
        }
        return;
    }
    // One row per table and capacity: a backfill's read budget is apart
    // from the writes' budget on the same table.
    println!(
        "{:<32} {:>5} {:>10} {:>10} {:>8} {:>10} {:>12} {:>10}",
        "TABLE", "UNIT", "BUDGET", "RATE", "HOLDERS", "GRANTED", "CONSUMED", "THROTTLES"
    );
    for t in tables {
        println!(
            "{:<32} {:>5} {:>10.0} {:>10.0} {:>8} {:>10.0} {:>12.0} {:>10}",
            t.table,
            t.capacity.unit(),
            t.budget,
            t.rate,
            t.writers.len(),
            t.granted,
            t.consumed_wcu,
            t.throttles
        );
    }
}

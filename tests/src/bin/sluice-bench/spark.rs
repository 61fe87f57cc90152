//! The Spark side of the comparisons: pyspark `local[2]` scripts, run when
//! the given Python imports pyspark, that print their measured seconds.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{Context, Result, bail};

/// Spark 4's `REBALANCE(id)` on the same Parquet input, `maxRecordsPerFile`
/// at the target. Times reading, the shuffle and the write.
pub(crate) fn spark_rebalance(
    python: &str,
    input: &Path,
    target: u64,
    dir: &Path,
) -> Result<Option<(f64, FileRows)>> {
    let out = dir.join("spark");
    let script = format!(
        r#"
import time
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "4g").config("spark.sql.adaptive.enabled", "true")
         .config("spark.sql.files.maxRecordsPerFile", "{target}").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
spark.range(1).count()
t = time.time()
spark.read.parquet("{input}").createOrReplaceTempView("events")
spark.sql("SELECT /*+ REBALANCE(id) */ seq, ts, payload, id FROM events").write.partitionBy("id").mode("overwrite").parquet("{out}")
print(time.time() - t)
"#,
        input = input.display(),
        out = out.display()
    );
    match run_spark(python, &script)? {
        Some(secs) => Ok(Some((secs, file_rows(&out)?))),
        None => Ok(None),
    }
}

/// Runs a pyspark `script` and returns what it printed; `None` when
/// `python` cannot import pyspark. Bounded to 30 minutes.
pub(crate) fn run_spark_output(python: &str, script: &str) -> Result<Option<String>> {
    let probe = std::process::Command::new(python)
        .args(["-c", "import pyspark"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return Ok(None);
    }
    // Files, not pipes: Spark can log more than a pipe holds while we wait.
    let (stdout, stderr) = (
        tempfile::NamedTempFile::new()?,
        tempfile::NamedTempFile::new()?,
    );
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        // Python UDF workers must run the interpreter that has pyspark.
        .env("PYSPARK_PYTHON", python)
        .stdout(stdout.reopen()?)
        .stderr(stderr.reopen()?)
        .spawn()
        .context("running pyspark")?;
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the Spark run took over 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !status.success() {
        let err = std::fs::read_to_string(stderr.path()).unwrap_or_default();
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        bail!(
            "the Spark run failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(Some(std::fs::read_to_string(stdout.path())?))
}

/// Runs a pyspark `script` that prints its measured seconds last; `None`
/// when `python` cannot import pyspark. Bounded to 30 minutes.
pub(crate) fn run_spark(python: &str, script: &str) -> Result<Option<f64>> {
    let Some(out) = run_spark_output(python, script)? else {
        return Ok(None);
    };
    let secs: f64 = out
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .context("reading Spark's time")?;
    Ok(Some(secs))
}

pub(crate) fn spark_run(
    python: &str,
    rows: u64,
    partitions: u64,
    out: &Path,
) -> Result<Option<f64>> {
    let script = format!(
        r#"
import time
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").config("spark.driver.memory", "4g").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
t = time.time()
spark.sql("INSERT OVERWRITE DIRECTORY '{out}' USING PARQUET SELECT * FROM range(0, {rows}, 1, {partitions})")
print(time.time() - t)
"#,
        out = out.display()
    );
    run_spark(python, &script)
}

//! `sluice-bench stream`: the micro-batch runtime against Spark Structured
//! Streaming (pyspark, `local[2]`, file source to Parquet sink,
//! `availableNow`), on the same files in the same run:
//!
//! - per-batch overhead: one small JSON file per batch, the median batch
//!   time (sluice: start to commit record; Spark: `triggerExecution`) over
//!   `--batches` batches, on the embedded cluster and on a scheduler with two
//!   executor processes;
//! - throughput: Parquet files of the skewed generator, several per batch,
//!   written `PARTITIONED BY (id)`; rows per second of batch time;
//! - Kafka (a tansu broker, `--kafka` or a private one): the per-batch
//!   overhead of one record a batch, and the skewed events from a
//!   6-partition topic to `PARTITIONED BY (id)` Parquet with a row target:
//!   records per second of batch time and files per batch against the ideal.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sluice_cli::embedded::EmbeddedCluster;
use sluice_core::client::{self, JobRunner, NoProgress};
use sluice_core::stream::files::FileSourceOptions;
use sluice_core::stream::{BatchInfo, StreamObserver, StreamOptions, StreamRunner, Trigger};
use sluice_test_support::{Cluster, kafka};

use crate::common::median;
use crate::spark::run_spark_output;

#[derive(Default)]
struct Collect(Mutex<Vec<BatchInfo>>);

impl StreamObserver for Collect {
    fn batch_done(&self, info: &BatchInfo) {
        if let Ok(mut v) = self.0.lock() {
            v.push(info.clone());
        }
    }
}

/// Runs `job` as a stream over what is in its source, `per_batch` files a
/// batch; returns the batches' reports.
async fn sluice_stream(
    endpoint: &str,
    job: &str,
    vars: HashMap<String, String>,
    checkpoint: &Path,
    per_batch: usize,
) -> Result<Vec<BatchInfo>> {
    let ctx = client::connect(endpoint, None, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, endpoint, Arc::new(NoProgress))?;
    let mut options = StreamOptions::new(&checkpoint.display().to_string(), Trigger::AvailableNow);
    options.files = FileSourceOptions {
        max_files: per_batch,
        ..Default::default()
    };
    let seen = Arc::new(Collect::default());
    let stream = StreamRunner::new(runner, "bench.sql", job, vars, options, seen.clone());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    stream.run(stop).await?;
    let batches = seen.0.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(batches)
}

fn batch_ms(b: &[BatchInfo]) -> Vec<f64> {
    b.iter().map(|x| x.processing_delay_ms as f64).collect()
}

const SMALL_JOB: &str = "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, v VARCHAR NOT NULL) STORED AS JSON LOCATION '${input}/';\n\
     COPY (SELECT id, v FROM src) TO '${output}' STORED AS PARQUET;\n";

const SKEW_JOB: &str = "CREATE EXTERNAL TABLE src STORED AS PARQUET LOCATION '${input}/';\n\
     COPY (SELECT seq, ts, payload, id FROM src) TO '${output}' STORED AS PARQUET PARTITIONED BY (id);\n";

fn vars(input: &Path, output: &Path) -> HashMap<String, String> {
    HashMap::from([
        ("input".to_string(), input.display().to_string()),
        ("output".to_string(), output.display().to_string()),
    ])
}

/// Spark's batches over `input`: `triggerExecution` ms per batch and rows.
fn spark_stream(
    python: &str,
    input: &Path,
    format: &str,
    per_batch: usize,
    partition_by: Option<&str>,
    dir: &Path,
) -> Result<Option<Vec<(f64, u64)>>> {
    let (out, ck) = (dir.join("spark-out"), dir.join("spark-ck"));
    let schema = if format == "json" {
        "\"id LONG, v STRING\""
    } else {
        "spark.read.parquet(INPUT).schema"
    };
    let partition = partition_by.map_or(String::new(), |c| format!(".partitionBy(\"{c}\")"));
    let script = format!(
        r#"
import json
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
         .config("spark.driver.memory", "4g").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
INPUT = "{input}"
src = spark.readStream.schema({schema}).option("maxFilesPerTrigger", {per_batch}).format("{format}").load(INPUT)
q = (src.writeStream.format("parquet"){partition}.option("checkpointLocation", "{ck}")
     .trigger(availableNow=True).start("{out}"))
q.awaitTermination()
print(json.dumps([[p["durationMs"].get("triggerExecution", 0), p["numInputRows"]] for p in q.recentProgress if p["numInputRows"] > 0]))
"#,
        input = input.display(),
        ck = ck.display(),
        out = out.display(),
    );
    let Some(printed) = run_spark_output(python, &script)? else {
        return Ok(None);
    };
    let last = printed.lines().last().unwrap_or_default();
    let pairs: Vec<(f64, u64)> =
        serde_json::from_str(last).with_context(|| format!("reading Spark's progress: {last}"))?;
    Ok(Some(pairs))
}

fn small_inputs(dir: &Path, files: usize) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..files {
        let body: String = (0..10)
            .map(|j| format!("{{\"id\":{},\"v\":\"r\"}}\n", i * 10 + j))
            .collect();
        let tmp = dir.join(format!(".f{i:04}.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, dir.join(format!("f{i:04}.json")))?;
        // Distinct modification times: one file per batch, in order.
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A Kafka stream job over `topic`, at most `cap` records a batch.
fn kafka_job(broker: &str, topic: &str, cap: u64, output: &Path, partitioned: bool) -> String {
    let write = if partitioned {
        "PARTITIONED BY (id) OPTIONS ('write.target_file_rows' '1000')"
    } else {
        ""
    };
    format!(
        "CREATE EXTERNAL TABLE ev (seq BIGINT NOT NULL, id BIGINT NOT NULL, payload VARCHAR) \
         STORED AS KAFKA LOCATION 'kafka://{broker}/{topic}' \
         OPTIONS ('max_records_per_batch' '{cap}');\n\
         COPY (SELECT seq, payload, id FROM ev WHERE _error IS NULL) TO '{}' \
         STORED AS PARQUET {write};\n",
        output.display()
    )
}

/// The Kafka figures, on a broker at `broker` (or a private one).
async fn kafka_bench(
    broker: Option<String>,
    batches: usize,
    records: u64,
    embedded: &str,
    processes: &str,
    dir: &Path,
) -> Result<Value> {
    let private = match broker {
        Some(_) => None,
        None => Some(tokio::task::spawn_blocking(kafka::Broker::start).await??),
    };
    let broker = match (&private, broker) {
        (Some(b), _) => b.addr.clone(),
        (None, Some(b)) => b,
        (None, None) => bail!("no Kafka broker"),
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let one = format!("bench-one-{run_id}");
    let skewed = format!("bench-skewed-{run_id}");
    let (b, o, s) = (broker.clone(), one.clone(), skewed.clone());
    let n = batches as u64;
    let produce_secs = tokio::task::spawn_blocking(move || -> Result<f64> {
        kafka::create_topic(&b, &o, 1)?;
        kafka::produce_events(&b, &o, 1, 0, n)?;
        kafka::create_topic(&b, &s, 6)?;
        let t0 = std::time::Instant::now();
        kafka::produce_events(&b, &s, 6, 0, records)?;
        Ok(t0.elapsed().as_secs_f64())
    })
    .await??;

    // Overhead: one record a batch.
    let mut medians = vec![];
    for (name, endpoint) in [("embedded", embedded), ("processes", processes)] {
        let out = dir.join(format!("k-one-{name}"));
        let b = sluice_stream(
            endpoint,
            &kafka_job(&broker, &one, 1, &out, false),
            HashMap::new(),
            &dir.join(format!("k-ck-one-{name}")),
            1,
        )
        .await?;
        if b.len() != batches {
            bail!(
                "expected {batches} one-record Kafka batches on {name}, got {}",
                b.len()
            );
        }
        let part = |f: fn(&BatchInfo) -> u64| median(b.iter().map(|x| f(x) as f64).collect());
        medians.push((
            median(batch_ms(&b)),
            json!({
                "planning_ms": part(|x| x.planning_ms),
                "running_ms": part(|x| x.running_ms),
                "committing_ms": part(|x| x.committing_ms),
            }),
        ));
    }

    // Throughput to partitioned Parquet.
    let cap = records.div_ceil(3).max(1);
    let out = dir.join("k-skewed");
    let t = sluice_stream(
        embedded,
        &kafka_job(&broker, &skewed, cap, &out, true),
        HashMap::new(),
        &dir.join("k-ck-skewed"),
        1,
    )
    .await?;
    let written: u64 = t.iter().map(|b| b.rows_written).sum();
    if written != records {
        bail!("the Kafka stream wrote {written} rows, not {records}");
    }
    let secs: f64 = batch_ms(&t).iter().sum::<f64>() / 1000.0;
    let mut per_batch = vec![];
    for b in &t {
        let Some(w) = b.writes.first() else { continue };
        let per = sluice_test_support::files_per_id(&out, &w.write_id)?;
        let files: u64 = per.values().map(|(f, _)| f).sum();
        let ideal: u64 = per.values().map(|(_, r)| r.div_ceil(1000)).sum();
        per_batch.push(
            json!({"batch_id": b.batch_id, "rows": w.rows, "files": files, "ideal_files": ideal}),
        );
    }
    Ok(json!({
        "broker": if private.is_some() { "tansu (private, in-memory)" } else { "given" },
        "per_batch_overhead": {
            "batches": batches,
            "input": "one Kafka record per batch, appended to Parquet",
            "sluice_embedded_median_ms": medians[0].0,
            "sluice_processes_median_ms": medians[1].0,
            "embedded_parts_median": medians[0].1,
            "processes_parts_median": medians[1].1,
        },
        "throughput": {
            "records": records,
            "partitions": 6,
            "produce_seconds": produce_secs,
            "max_records_per_batch": cap,
            "target_file_rows": 1000,
            "sluice_batches": t.len(),
            "sluice_batch_seconds": secs,
            "sluice_records_per_sec": records as f64 / secs,
            "files_per_batch": per_batch,
        },
    }))
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn stream_bench(
    batches: usize,
    rows: u64,
    files: u64,
    per_batch: usize,
    kafka_records: u64,
    kafka_broker: Option<String>,
    dir: &Path,
    spark: Option<&str>,
) -> Result<Value> {
    // Per-batch overhead.
    let small = dir.join("small");
    small_inputs(&small, batches)?;
    let embedded = EmbeddedCluster::start(1, sluice_core::config::default_slots()).await?;
    let e = sluice_stream(
        &embedded.endpoint,
        SMALL_JOB,
        vars(&small, &dir.join("o-embedded")),
        &dir.join("ck-embedded"),
        1,
    )
    .await?;
    let slots = sluice_core::config::default_slots();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(2, slots)).await??;
    let p = sluice_stream(
        &cluster.endpoint,
        SMALL_JOB,
        vars(&small, &dir.join("o-processes")),
        &dir.join("ck-processes"),
        1,
    )
    .await?;
    if e.len() != batches || p.len() != batches {
        bail!(
            "expected {batches} batches, got {} embedded and {} on processes",
            e.len(),
            p.len()
        );
    }
    let spark_small = match spark {
        Some(py) => spark_stream(py, &small, "json", 1, None, &dir.join("spark-small"))?,
        None => None,
    };
    let (e_ms, p_ms) = (median(batch_ms(&e)), median(batch_ms(&p)));
    let s_ms = spark_small
        .as_ref()
        .map(|v| median(v.iter().map(|(ms, _)| *ms).collect()));

    // Throughput on the skewed generator's Parquet files.
    let stage = dir.join("stage");
    let input = dir.join("skewed");
    let made = sluice_core::client::JobRunner::new(
        client::connect(&embedded.endpoint, None, Duration::from_secs(10)).await?,
        &embedded.endpoint,
        Arc::new(NoProgress),
    )?
    .run(
        "make-input.sql",
        &format!(
            "COPY (SELECT seq, ts, payload, id FROM skewed_events({rows}, 42, {files})) TO '{}' STORED AS PARQUET;\n",
            stage.display()
        ),
        &HashMap::new(),
    )
    .await?;
    if made.rows_written != rows {
        bail!("made {} input rows, not {rows}", made.rows_written);
    }
    std::fs::create_dir_all(&input)?;
    for entry in std::fs::read_dir(&stage)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "parquet") {
            std::fs::rename(&path, input.join(path.file_name().context("file name")?))?;
        }
    }
    let t = sluice_stream(
        &embedded.endpoint,
        SKEW_JOB,
        vars(&input, &dir.join("o-skewed")),
        &dir.join("ck-skewed"),
        per_batch,
    )
    .await?;
    let written: u64 = t.iter().map(|b| b.rows_written).sum();
    if written != rows {
        bail!("the stream wrote {written} rows, not {rows}");
    }
    let secs: f64 = batch_ms(&t).iter().sum::<f64>() / 1000.0;
    let spark_rate = match spark {
        Some(py) => spark_stream(
            py,
            &input,
            "parquet",
            per_batch,
            Some("id"),
            &dir.join("spark-skewed"),
        )?
        .map(|v| {
            let rows: u64 = v.iter().map(|(_, r)| r).sum();
            let secs: f64 = v.iter().map(|(ms, _)| ms).sum::<f64>() / 1000.0;
            (rows, secs)
        }),
        None => None,
    };
    let rate = rows as f64 / secs;
    let kafka = if kafka_records == 0 {
        json!({"skipped": "--kafka-records 0"})
    } else {
        kafka_bench(
            kafka_broker,
            batches,
            kafka_records,
            &embedded.endpoint,
            &cluster.endpoint,
            dir,
        )
        .await
        .unwrap_or_else(|e| json!({"error": format!("{e:#}")}))
    };
    Ok(json!({
        "kafka": kafka,
        "per_batch_overhead": {
            "batches": batches,
            "input": "one 10-row JSON file per batch, appended to Parquet",
            "sluice_embedded_median_ms": e_ms,
            "sluice_processes_median_ms": p_ms,
            "spark_median_ms": s_ms,
            "embedded_over_spark": s_ms.map(|s| e_ms / s),
            "processes_over_spark": s_ms.map(|s| p_ms / s),
            "target": "<= 0.5",
        },
        "file_source_throughput": {
            "rows": rows,
            "files": files,
            "files_per_batch": per_batch,
            "sluice_batches": t.len(),
            "sluice_batch_seconds": secs,
            "sluice_rows_per_sec": rate,
            "spark_batch_seconds": spark_rate.map(|(_, s)| s),
            "spark_rows": spark_rate.map(|(r, _)| r),
            "spark_rows_per_sec": spark_rate.map(|(r, s)| r as f64 / s),
            "sluice_over_spark": spark_rate.map(|(r, s)| rate / (r as f64 / s)),
            "target": ">= 3",
        },
    }))
}

//! Micro-batch streams (`sluice stream`): each file under a source
//! directory is read by exactly one committed batch, across runs, restarts,
//! a SIGKILL mid-write and mid-commit, and a slow sink; two processes never
//! share a checkpoint; the scheduling-delay alarm reaches a webhook when the
//! sink slows down and clears when it recovers. Locally and on S3 (moto).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_test_support::s3::S3;
use sluice_test_support::{run_job_text, run_with_timeout, sluice};

/// A Parquet input file of ids `ids`, made visible whole (written under a
/// hidden name, then renamed), as a producer should.
fn parquet_input(dir: &Path, name: &str, ids: std::ops::Range<i64>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from_iter_values(ids.map(|i| format!("r{i}")))),
        ],
    )
    .unwrap();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut w = ArrowWriter::try_new(std::fs::File::create(&tmp).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

fn json_lines(ids: std::ops::Range<i64>) -> Vec<u8> {
    ids.map(|i| format!("{{\"id\":{i},\"v\":\"r{i}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn json_input(dir: &Path, name: &str, ids: std::ops::Range<i64>) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, json_lines(ids)).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

/// The stream job: the source directory appended to `out` as Parquet.
fn job(dir: &Path, source: &str, format: &str, out: &str) -> std::path::PathBuf {
    let path = dir.join("stream.sql");
    std::fs::write(
        &path,
        format!(
            "SET sluice.write.lock_ttl = '3s';\n\
             CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, v VARCHAR NOT NULL) STORED AS {format} LOCATION '{source}/';\n\
             COPY (SELECT id, v FROM src) TO '{out}' STORED AS PARQUET;\n"
        ),
    )
    .unwrap();
    path
}

fn stream_cmd(job: &Path, checkpoint: &str, args: &[&str]) -> Command {
    let mut cmd = sluice().unwrap();
    cmd.arg("stream")
        .arg(job)
        .args([
            "--checkpoint",
            checkpoint,
            "--lock-ttl",
            "3s",
            "--output",
            "json",
        ])
        .args(args);
    cmd
}

fn run_stream(job: &Path, checkpoint: &str, args: &[&str]) -> Output {
    run_with_timeout(
        &mut stream_cmd(job, checkpoint, args),
        Duration::from_secs(300),
    )
    .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The batch lines of a `--output json` run (the summary line left out).
fn batches(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("batch_id").is_some())
        .collect()
}

/// Every id in the visible Parquet files of `dir`, sorted.
fn local_ids(dir: &Path) -> Vec<i64> {
    let mut ids = vec![];
    for name in sluice_test_support::visible_files(dir).unwrap() {
        if !name.ends_with(".parquet") {
            continue;
        }
        let file = std::fs::File::open(dir.join(&name)).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            ids.extend(
                batch
                    .unwrap()
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values(),
            );
        }
    }
    ids.sort_unstable();
    ids
}

fn exactly(n: i64) -> Vec<i64> {
    (0..n).collect()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

fn wait_child(mut child: Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the stream `--once`: its one batch's report.
fn one_batch(job: &Path, ck: &str) -> serde_json::Value {
    let once = run_stream(job, ck, &["--once"]);
    assert!(once.status.success(), "{}", stderr(&once));
    let mut b = batches(&once.stdout);
    assert_eq!(b.len(), 1, "{b:?}");
    b.remove(0)
}

/// A stream job of `format` files over an empty source directory: (temp
/// dir, source dir, output dir, checkpoint, job file).
fn file_stream(
    format: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
    std::path::PathBuf,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&src).unwrap();
    let ck = tmp.path().join("ck").display().to_string();
    let job = job(
        tmp.path(),
        &src.display().to_string(),
        format,
        &out.display().to_string(),
    );
    (tmp, src, out, ck, job)
}

/// Files arriving between runs are each read once; a backlog is cut into
/// capped batches, oldest first; batch ids continue across runs; each batch
/// reports its input rows per file (from Parquet footers) and its delays;
/// `sluice stream status` shows the batches.
#[test]
fn each_file_is_read_by_exactly_one_batch_across_runs() {
    let (_tmp, src, out, ck, job) = file_stream("PARQUET");
    for i in 0..5 {
        parquet_input(&src, &format!("f{i}.parquet"), i * 100..(i + 1) * 100);
        // Distinct modification times: the order batches take files in.
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = run_stream(
        &job,
        &ck,
        &["--available-now", "--max-files-per-batch", "2"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let b = batches(&run.stdout);
    assert_eq!(b.len(), 3, "{}", String::from_utf8_lossy(&run.stdout));
    let ids: Vec<u64> = b.iter().map(|x| x["batch_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    let rows: Vec<u64> = b
        .iter()
        .map(|x| x["input_rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, vec![200, 200, 100]);
    let splits: Vec<&str> = b
        .iter()
        .flat_map(|x| x["splits"].as_array().unwrap())
        .map(|s| s["split"].as_str().unwrap())
        .collect();
    assert_eq!(
        splits,
        [
            "f0.parquet",
            "f1.parquet",
            "f2.parquet",
            "f3.parquet",
            "f4.parquet"
        ]
    );
    assert_eq!(b[0]["splits"][0]["rows"], 100);
    assert_eq!(b[0]["lag"][0]["pending"], 3, "{}", b[0]);
    for x in &b {
        assert_eq!(x["rows_written"], x["input_rows"], "{x}");
        assert_eq!(
            x["total_delay_ms"].as_u64().unwrap(),
            x["scheduling_delay_ms"].as_u64().unwrap() + x["processing_delay_ms"].as_u64().unwrap()
        );
        assert!(x["processing_delay_ms"].as_u64().unwrap() > 0, "{x}");
    }
    assert_eq!(local_ids(&out), exactly(500));

    // Nothing new: no batch, nothing written.
    let idle = run_stream(&job, &ck, &["--available-now"]);
    assert!(idle.status.success(), "{}", stderr(&idle));
    assert!(batches(&idle.stdout).is_empty());
    assert_eq!(local_ids(&out), exactly(500));

    // New files: the next batch id, only them.
    parquet_input(&src, "f5.parquet", 500..600);
    json_input(&src, "ignored.json", 0..3);
    let b = one_batch(&job, &ck);
    assert_eq!(
        (b["batch_id"].as_u64(), b["input_rows"].as_u64()),
        (Some(3), Some(100))
    );
    assert_eq!(local_ids(&out), exactly(600));

    let status = run_with_timeout(
        sluice()
            .unwrap()
            .args(["stream", "status", &ck, "--output", "json"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(status.status.success(), "{}", stderr(&status));
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["next_batch"], 4, "{s}");
    assert_eq!(s["batches"].as_array().unwrap().len(), 4, "{s}");
    assert!(s["running"].is_null(), "{s}");
    let text = run_with_timeout(
        sluice().unwrap().args(["stream", "status", &ck]),
        Duration::from_secs(60),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("next batch: 4"), "{text}");
}

/// A long stream's checkpoint stays small: every 10 batches it records the
/// sources' state and deletes the offsets before it (Spark's
/// `_spark_metadata` only grows), and a restart after compaction goes on
/// from that state with the next batch id, reading only new files.
#[test]
fn the_checkpoint_is_compacted_and_a_restart_goes_on_from_it() {
    let (tmp, src, out, ck, job) = file_stream("PARQUET");
    for i in 0..25 {
        parquet_input(&src, &format!("f{i:02}.parquet"), i * 10..(i + 1) * 10);
        std::thread::sleep(Duration::from_millis(5));
    }
    let ck_dir = tmp.path().join("ck");
    let run = run_stream(
        &job,
        &ck,
        &["--available-now", "--max-files-per-batch", "1"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(batches(&run.stdout).len(), 25);
    let names = |dir: &str| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(ck_dir.join(dir))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.contains('#'))
                    .collect()
            })
            .unwrap_or_default();
        n.sort();
        n
    };
    // State after batch 19; offsets only of the batches after it.
    assert_eq!(names("state"), [format!("{:020}.json", 19)]);
    assert_eq!(
        names("offsets"),
        (20..25)
            .map(|i| format!("{i:020}.json"))
            .collect::<Vec<_>>()
    );
    assert_eq!(local_ids(&out), exactly(250));
    parquet_input(&src, "f25.parquet", 250..260);
    let b = one_batch(&job, &ck);
    assert_eq!(
        (b["batch_id"].as_u64(), b["input_rows"].as_u64()),
        (Some(25), Some(10))
    );
    assert_eq!(local_ids(&out), exactly(260));
}

/// A stream with `--every 1s` picks files up as they arrive; a second
/// process on its checkpoint refuses to start, naming the holder; SIGTERM
/// stops it cleanly, and every row is there once.
#[test]
fn a_running_stream_takes_arrivals_and_owns_its_checkpoint() {
    let (tmp, src, out, ck, job) = file_stream("JSON");
    let lines = tmp.path().join("lines.jsonl");
    let child = stream_cmd(&job, &ck, &["--every", "1s"])
        .stdout(std::fs::File::create(&lines).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = || batches(&std::fs::read(&lines).unwrap_or_default());
    for i in 0..3 {
        json_input(&src, &format!("f{i}.json"), i * 50..(i + 1) * 50);
        wait_for(
            "a batch over the new file",
            Duration::from_secs(120),
            || seen().len() as i64 > i,
        );
    }
    let second = run_stream(&job, &ck, &["--once"]);
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains("is in use by write stream") && err.contains("stream.sql"),
        "{err}"
    );
    signal(&child, "-TERM");
    assert!(wait_child(child, "the stream after SIGTERM").success());
    let b = seen();
    let total: u64 = b.iter().map(|x| x["rows_written"].as_u64().unwrap()).sum();
    assert_eq!(total, 150);
    assert_eq!(local_ids(&out), exactly(150));
    let summary = std::fs::read_to_string(&lines).unwrap();
    assert!(summary.contains("\"stopped\":true"), "{summary}");
}

/// Reads `out` on S3 back with a separate `sluice run`: (rows, distinct ids).
fn s3_counts(dir: &Path, out: &str) -> (u64, u64) {
    sluice_test_support::count_distinct(dir, out, "id BIGINT NOT NULL, v VARCHAR NOT NULL", "id")
        .unwrap()
}

/// On S3 (source, output and checkpoint): the stream process is SIGKILLed
/// while its batch writes, and again after its batch's commit record while
/// it publishes (a proxy holds `CompleteMultipartUpload`). The first
/// restart re-runs the uncommitted batch over the same files; the second
/// publishes the committed one without running it again. Every row once,
/// no upload left open, batch ids continue.
#[test]
fn on_s3_a_stream_killed_mid_write_or_mid_publish_resumes_exactly_once() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("stream").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (src, out, ck) = (
        format!("s3://{bucket}/in"),
        format!("s3://{bucket}/out"),
        format!("s3://{bucket}/ck"),
    );
    let job = job(tmp.path(), &src, "JSON", &out);
    let proxy = sluice_test_support::faulty::FaultyS3::start_with(
        &s3.endpoint,
        u64::MAX,
        Duration::from_secs(4),
        None,
    )
    .unwrap();
    let mut rows = 0i64;
    let put = |rows: &mut i64, n: i64| {
        let name = format!("in/f{rows}.json");
        s3.put(&bucket, &name, json_lines(*rows..*rows + n))
            .unwrap();
        *rows += n;
    };
    let staged = |what: &str| {
        s3.list(&bucket, "out/_sluice_staging/")
            .unwrap()
            .iter()
            .any(|o| o.key.contains(what))
    };
    // Batch 1's commit record is written and its publish is under way
    // (the proxy holds every upload's completion for 4 s).
    let publishing = || {
        s3.list(&bucket, "ck/commits/")
            .unwrap()
            .iter()
            .any(|o| o.key.ends_with(&format!("{:020}.json", 1)))
    };
    for case in ["mid-write", "mid-publish"] {
        put(&mut rows, 20_000);
        put(&mut rows, 20_000);
        // Slow S3 for the killed run: every request waits, so it is caught
        // writing (parts in flight) or committing (completes held).
        proxy.set_latency(Duration::from_millis(if case == "mid-write" {
            300
        } else {
            0
        }));
        let mut cmd = stream_cmd(&job, &ck, &["--available-now"]);
        cmd.env("AWS_ENDPOINT_URL_S3", &proxy.endpoint)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap();
        wait_for(
            &format!("the batch {case}"),
            Duration::from_secs(120),
            || {
                if case == "mid-write" {
                    staged("/uploads/")
                } else {
                    publishing()
                }
            },
        );
        signal(&child, "-KILL");
        wait_child(child, "the killed stream");
        let (n, _) = s3_counts(tmp.path(), &out);
        assert!(
            (n as i64) < rows,
            "{case}: the killed batch's rows are visible"
        );
        // The restart (a healthy S3) runs the planned, uncommitted batch
        // again, or publishes the committed one without running it again.
        let again = run_stream(&job, &ck, &["--available-now"]);
        assert!(again.status.success(), "{case}: {}", stderr(&again));
        let b = batches(&again.stdout);
        if case == "mid-write" {
            assert_eq!(
                b.len(),
                1,
                "{case}: {}",
                String::from_utf8_lossy(&again.stdout)
            );
            assert_eq!(b[0]["resumed"], true, "{case}");
            assert_eq!(b[0]["batch_id"], 0, "{case}");
        } else {
            assert_eq!(
                b.len(),
                0,
                "{case}: {}",
                String::from_utf8_lossy(&again.stdout)
            );
        }
        assert_eq!(
            s3_counts(tmp.path(), &out),
            (rows as u64, rows as u64),
            "{case}"
        );
        assert_eq!(
            s3.open_uploads(&bucket, "out/").unwrap(),
            Vec::<String>::new(),
            "{case}"
        );
    }
    // And the stream goes on from there.
    put(&mut rows, 10);
    let next = run_stream(&job, &ck, &["--once"]);
    let b = batches(&next.stdout);
    assert_eq!(b[0]["batch_id"], 2, "{}", stderr(&next));
    assert_eq!(s3_counts(tmp.path(), &out), (rows as u64, rows as u64));
}

/// A loopback webhook receiver: the bodies POSTed to it.
fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alarms", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(vec![]));
    let kept = Arc::clone(&got);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                kept.lock().unwrap().push(v);
            }
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

/// The seed-4 incident: the sink slows down (every S3 request delayed) so
/// batches overrun their 1 s interval and the stream falls behind its
/// schedule; the scheduling-delay alarm fires within its batches and
/// reaches a webhook; when S3 is fast again the backlog drains, the alarm
/// clears, and every row is there once.
#[test]
fn a_slow_sink_fires_the_scheduling_delay_alarm_and_recovery_clears_it() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("slowsink").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("in");
    std::fs::create_dir_all(&src).unwrap();
    let out = format!("s3://{bucket}/out");
    let job = job(tmp.path(), &src.display().to_string(), "JSON", &out);
    let ck = tmp.path().join("ck").display().to_string();
    let proxy = sluice_test_support::faulty::FaultyS3::start(&s3.endpoint, u64::MAX).unwrap();
    let (url, got) = webhook();
    let lines = tmp.path().join("lines.jsonl");
    let child = stream_cmd(
        &job,
        &ck,
        &[
            "--every",
            "1s",
            "--alarm",
            "scheduling_share > 0.5 for 2",
            "--alarm-webhook",
            &url,
        ],
    )
    .env("AWS_ENDPOINT_URL_S3", &proxy.endpoint)
    .stdout(std::fs::File::create(&lines).unwrap())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let produced = Arc::new(Mutex::new(0i64));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (produced, stop, src) = (Arc::clone(&produced), Arc::clone(&stop), src.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut n = produced.lock().unwrap();
                json_input(&src, &format!("f{i:05}.json"), *n..*n + 10);
                *n += 10;
                drop(n);
                i += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let states = || -> Vec<String> {
        got.lock()
            .unwrap()
            .iter()
            .map(|e| e["state"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    wait_for("a first batch", Duration::from_secs(120), || {
        !batches(&std::fs::read(&lines).unwrap_or_default()).is_empty()
    });
    assert!(states().is_empty(), "an alarm fired on a healthy sink");
    proxy.set_latency(Duration::from_millis(250));
    wait_for("the alarm firing", Duration::from_secs(180), || {
        states() == ["firing"]
    });
    let fired_at = got.lock().unwrap()[0].clone();
    assert_eq!(
        fired_at["alarm"], "scheduling_share > 0.5 for 2",
        "{fired_at}"
    );
    let b = batches(&std::fs::read(&lines).unwrap());
    let fired_batch = fired_at["batch_id"].as_u64().unwrap();
    let over: Vec<bool> = b
        .iter()
        .filter(|x| x["batch_id"].as_u64().unwrap() <= fired_batch)
        .map(|x| {
            let (s, t) = (
                x["scheduling_delay_ms"].as_f64().unwrap(),
                x["total_delay_ms"].as_f64().unwrap(),
            );
            t > 0.0 && s / t > 0.5
        })
        .collect();
    // It fired at the second batch in a row over the share, not before.
    assert!(over.ends_with(&[true, true]), "{over:?}");
    assert!(
        !over[..over.len() - 2].windows(2).any(|w| w == [true, true]),
        "{over:?}"
    );
    // The sink recovers and the producer stops: the backlog drains, and
    // the alarm clears at the latest once the stream is caught up (how
    // many batches on schedule that takes depends on the machine's load).
    proxy.set_latency(Duration::ZERO);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    producer.join().unwrap();
    wait_for("the alarm clearing", Duration::from_secs(180), || {
        states() == ["firing", "cleared"]
    });
    let produced = *produced.lock().unwrap();
    wait_for("the backlog drained", Duration::from_secs(120), || {
        batches(&std::fs::read(&lines).unwrap())
            .iter()
            .map(|x| x["rows_written"].as_i64().unwrap())
            .sum::<i64>()
            == produced
    });
    signal(&child, "-TERM");
    assert!(wait_child(child, "the stream").success());
    assert_eq!(
        s3_counts(tmp.path(), &out),
        (produced as u64, produced as u64)
    );
}

/// Bad streams are refused with one clear line: a job without a directory
/// table, an alarm that does not parse.
#[test]
fn bad_streams_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("ck").display().to_string();
    let plain = tmp.path().join("plain.sql");
    std::fs::write(&plain, "SELECT 1;\n").unwrap();
    let o = run_stream(&plain, &ck, &["--once"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the job reads no streaming table"),
        "{}",
        stderr(&o)
    );
    let src = tmp.path().join("in");
    std::fs::create_dir_all(&src).unwrap();
    let job = job(
        tmp.path(),
        &src.display().to_string(),
        "JSON",
        &tmp.path().join("o").display().to_string(),
    );
    let o = run_stream(&job, &ck, &["--every", "1s", "--alarm", "latency > 3s"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("bad alarm 'latency > 3s': unknown metric latency"),
        "{err}"
    );
    let o = run_stream(
        &job,
        &ck,
        &["--once", "--alarm-webhook", "ftp://127.0.0.1/x"],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the alarm webhook must be an http:// or https:// URL"),
        "{}",
        stderr(&o)
    );
    let o = run_stream(&job, &ck, &["--once", "--max-files-per-batch", "0"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("max_files_per_batch must be at least 1"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{err}"
    );
}

/// The seed-3 shape on the file source: skewed events arrive batch by
/// batch and are written `PARTITIONED BY (id)` with a row target; in every
/// batch each id gets ceil(its rows in that batch / target) files, and
/// every row is written once.
#[test]
fn a_skewed_stream_gets_files_per_id_from_each_batch_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&src).unwrap();
    let ck = tmp.path().join("ck").display().to_string();
    let target = 5_000u64;
    let job_file = tmp.path().join("skew.sql");
    std::fs::write(
        &job_file,
        format!(
            "CREATE EXTERNAL TABLE src STORED AS PARQUET LOCATION '{}/';\n\
             COPY (SELECT seq, payload, id FROM src) TO '{}' STORED AS PARQUET \
             PARTITIONED BY (id) OPTIONS ('write.target_file_rows' '{target}');\n",
            src.display(),
            out.display()
        ),
    )
    .unwrap();
    let mut total = 0u64;
    for (i, (rows, seed)) in [(60_000u64, 7u64), (30_000, 8), (90_000, 9)]
        .into_iter()
        .enumerate()
    {
        let stage = tmp.path().join(format!("stage{i}"));
        let made = run_job_text(
            tmp.path(),
            &format!(
                "COPY (SELECT seq, ts, payload, id FROM skewed_events({rows}, {seed}, 3)) TO '{}' STORED AS PARQUET;\n",
                stage.display()
            ),
            &[],
        )
        .unwrap();
        assert!(made.status.success(), "{}", stderr(&made));
        for f in sluice_test_support::visible_files(&stage).unwrap() {
            std::fs::rename(stage.join(&f), src.join(format!("b{i}-{f}"))).unwrap();
        }
        let run = run_stream(&job_file, &ck, &["--once"]);
        assert!(run.status.success(), "{}", stderr(&run));
        let b = batches(&run.stdout);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0]["batch_id"], i as u64);
        assert_eq!(b[0]["input_rows"], rows, "{}", b[0]);
        assert_eq!(b[0]["rows_written"], rows, "{}", b[0]);
        let tag = b[0]["writes"][0]["write_id"].as_str().unwrap().to_string();
        let per = sluice_test_support::files_per_id(&out, &tag).unwrap();
        assert_eq!(per.values().map(|(_, r)| r).sum::<u64>(), rows);
        for (id, (files, id_rows)) in &per {
            assert_eq!(*files, id_rows.div_ceil(target), "batch {i} {id}: {per:?}");
        }
        // The large id is cut into several files in every batch.
        assert!(per["id=100"].0 >= 2, "{per:?}");
        total += rows;
    }
    let (n, _) = sluice_test_support::count_distinct(
        tmp.path(),
        &out.display().to_string(),
        "seq BIGINT, payload VARCHAR, id VARCHAR",
        "seq",
    )
    .unwrap();
    assert_eq!(n, total);
}

/// A cluster of `executors` processes (2 slots each) and a Parquet stream
/// job: (cluster, temp dir, source dir, output dir, checkpoint, job file).
fn on_a_cluster(
    executors: usize,
) -> (
    sluice_test_support::Cluster,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
    std::path::PathBuf,
) {
    let cluster = sluice_test_support::Cluster::start(executors, 2).unwrap();
    let (tmp, src, out, ck, job) = file_stream("PARQUET");
    (cluster, tmp, src, out, ck, job)
}

/// On a scheduler and two executor processes (`--scheduler`): the batch's
/// file list travels in the plan, so the executors read only the batch's
/// files.
#[test]
fn a_stream_runs_on_a_cluster() {
    let (cluster, _tmp, src, out, ck, job) = on_a_cluster(2);
    for (i, n) in [(0, 1_000), (1, 2_000)] {
        parquet_input(&src, &format!("f{i}.parquet"), i * 1_000..i * 1_000 + n);
    }
    let run = |args: &[&str]| {
        run_with_timeout(
            stream_cmd(&job, &ck, args)
                .args(["--scheduler", &cluster.endpoint])
                .env("SLUICE_COORDINATOR", &cluster.coordinator),
            Duration::from_secs(300),
        )
        .unwrap()
    };
    let first = run(&["--available-now", "--max-files-per-batch", "1"]);
    assert!(
        first.status.success(),
        "{}\n{}",
        stderr(&first),
        cluster.scheduler_log()
    );
    let b = batches(&first.stdout);
    assert_eq!(b.len(), 2);
    assert_eq!(b[1]["rows_written"], 2_000);
    assert!(!b[0]["job_ids"].as_array().unwrap().is_empty(), "{}", b[0]);
    parquet_input(&src, "f2.parquet", 3_000..3_500);
    let second = run(&["--once"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(batches(&second.stdout)[0]["rows_written"], 500);
    assert_eq!(local_ids(&out), exactly(3_500));
}

/// The seed-4 stall inside a batch: its only executor stops answering
/// (SIGSTOP) while the batch runs, so the batch neither fails nor commits.
/// `no_commit` fires while the batch hangs, not only between batches; past
/// `--batch-timeout` the batch is cancelled and tried again; once the
/// executor is back the batch commits every row once and the alarm clears.
#[test]
fn a_batch_that_hangs_fires_the_no_commit_alarm() {
    let (cluster, tmp, src, out, ck, job) = on_a_cluster(1);
    let (lines, err) = (tmp.path().join("lines.jsonl"), tmp.path().join("err"));
    let metrics = format!("127.0.0.1:{}", sluice_test_support::free_port().unwrap());
    let child = stream_cmd(
        &job,
        &ck,
        &[
            "--every",
            "1s",
            "--alarm",
            "no_commit > 2s",
            "--batch-timeout",
            "3s",
        ],
    )
    .args(["--scheduler", &cluster.endpoint])
    .env("SLUICE_COORDINATOR", &cluster.coordinator)
    .env("SLUICE_METRICS_ADDR", &metrics)
    .stdout(std::fs::File::create(&lines).unwrap())
    .stderr(std::fs::File::create(&err).unwrap())
    .spawn()
    .unwrap();
    let seen = || batches(&std::fs::read(&lines).unwrap_or_default());
    let stderr_text = || std::fs::read_to_string(&err).unwrap_or_default();
    parquet_input(&src, "f0.parquet", 0..1_000);
    wait_for("the first batch", Duration::from_secs(120), || {
        seen().len() == 1
    });
    // A slow first batch on a cold cluster may already have fired (and
    // cleared) it: count from here.
    let count = |what: &str| stderr_text().matches(what).count();
    let (fired, cleared) = (
        count("alarm FIRING: no_commit > 2s"),
        count("alarm cleared: no_commit > 2s"),
    );
    cluster.signal_executor(0, "-STOP").unwrap();
    parquet_input(&src, "f1.parquet", 1_000..3_000);
    wait_for(
        "no_commit while the batch hangs",
        Duration::from_secs(60),
        || count("alarm FIRING: no_commit > 2s") > fired,
    );
    assert_eq!(seen().len(), 1, "the hanging batch committed");
    // Past --batch-timeout the batch is cancelled and tried again.
    wait_for("the batch timeout", Duration::from_secs(60), || {
        stderr_text().contains("batch 1 ran longer than --batch-timeout 3s")
    });
    cluster.signal_executor(0, "-CONT").unwrap();
    wait_for(
        "the batch after the stall",
        Duration::from_secs(180),
        || seen().len() == 2,
    );
    wait_for("the alarm clearing", Duration::from_secs(60), || {
        count("alarm cleared: no_commit > 2s") > cleared
    });
    // The same, as Prometheus sees it.
    let scraped = sluice_test_support::http(None, async |c| {
        Ok(c.get(format!("http://{metrics}/metrics"))
            .send()
            .await?
            .text()
            .await?)
    })
    .unwrap();
    let value = |name: &str| -> f64 {
        scraped
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {scraped}"))
    };
    assert_eq!(value("sluice_stream_batches_total"), 2.0);
    assert_eq!(value("sluice_stream_rows_written_total"), 3_000.0);
    assert!(
        scraped.contains("sluice_stream_phase_seconds{phase=\"running\""),
        "{scraped}"
    );
    assert!(
        scraped
            .lines()
            .any(|l| l.starts_with("sluice_stream_alarms_total")
                && l.contains("state=\"firing\"")
                && l.ends_with(&format!(" {}", fired + 1))),
        "{scraped}"
    );
    signal(&child, "-TERM");
    assert!(wait_child(child, "the stream after SIGTERM").success());
    assert_eq!(local_ids(&out), exactly(3_000));
}

/// A batch whose writes committed but whose commit record was lost (the
/// process died between them) runs again and writes nothing twice, also
/// when its two writes append to one output (so `_SUCCESS` names only the
/// second). Locally this holds twice over: the first write is recognised by
/// its visible files, and a re-run would write the same file names.
#[test]
fn a_batch_whose_commit_record_was_lost_writes_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&src).unwrap();
    let ck = tmp.path().join("ck");
    let job_file = tmp.path().join("two.sql");
    std::fs::write(
        &job_file,
        format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, v VARCHAR NOT NULL) STORED AS JSON LOCATION '{}/';\n\
             COPY (SELECT id, v FROM src) TO '{o}' STORED AS PARQUET;\n\
             COPY (SELECT id + 1000000 AS id, v FROM src) TO '{o}' STORED AS PARQUET;\n",
            src.display(),
            o = out.display()
        ),
    )
    .unwrap();
    json_input(&src, "a.json", 0..100);
    let ck_text = ck.display().to_string();
    let first = run_stream(&job_file, &ck_text, &["--once"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let mut want: Vec<i64> = (0..100).chain(1_000_000..1_000_100).collect();
    want.sort_unstable();
    assert_eq!(local_ids(&out), want);
    // The process "died" after both writes committed, before its record.
    std::fs::remove_file(ck.join("commits").join(format!("{:020}.json", 0))).unwrap();
    // An edited job would name its writes by other lines: it may not
    // finish the batch.
    let original = std::fs::read_to_string(&job_file).unwrap();
    std::fs::write(&job_file, format!("-- edited\n{original}")).unwrap();
    let edited = run_stream(&job_file, &ck_text, &["--once"]);
    assert!(!edited.status.success());
    let err = stderr(&edited);
    assert!(
        err.contains("batch 0 was planned by another version of")
            && err.contains("two.sql")
            && err.contains("restore it"),
        "{err}"
    );
    assert_eq!(local_ids(&out), want, "the edited job wrote");
    std::fs::write(&job_file, original).unwrap();
    let again = run_stream(&job_file, &ck_text, &["--once"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let b = batches(&again.stdout);
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["batch_id"], 0);
    assert_eq!(b[0]["resumed"], true);
    assert_eq!(local_ids(&out), want, "a committed write ran again");
}

/// A JSON source with `max_bad_records` and a job over it: (temp dir,
/// source dir, output dir, dead-letter dir, checkpoint, job file). `body`
/// gets the source's location, the output and the dead-letter location.
fn dead_letter_stream(
    name: &str,
    body: impl Fn(&str, &str, &str) -> String,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
    std::path::PathBuf,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out, errors) = (
        tmp.path().join("in"),
        tmp.path().join("out"),
        tmp.path().join("errors"),
    );
    std::fs::create_dir_all(&src).unwrap();
    let ck = tmp.path().join("ck").display().to_string();
    let job = tmp.path().join(name);
    let text = body(
        &src.display().to_string(),
        &out.display().to_string(),
        &errors.display().to_string(),
    );
    std::fs::write(&job, text).unwrap();
    (tmp, src, out, errors, ck, job)
}

/// The NDJSON lines of the visible files in `dir`.
fn ndjson_lines(dir: &Path) -> Vec<String> {
    sluice_test_support::visible_files(dir)
        .unwrap()
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A batch's writes become visible together or not at all: when its
/// dead-letter write fails, the rows its first statement wrote stay
/// invisible (taken back), and the re-run writes both once.
#[test]
fn a_batch_whose_dead_letter_write_fails_makes_none_of_its_writes_visible() {
    let (tmp, src, out, errors, ck, job) = dead_letter_stream(
        "two_writes.sql",
        |src, out, errors| {
            format!(
                "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL) STORED AS JSON LOCATION '{src}/' \
               OPTIONS ('max_bad_records' '10');\n\
             COPY (SELECT id FROM src WHERE _error IS NULL) TO '{out}' STORED AS PARQUET;\n\
             COPY (SELECT _file, _line, _raw, _error FROM src WHERE _error IS NOT NULL) TO '{errors}' STORED AS JSON;\n"
            )
        },
    );
    std::fs::write(src.join("a.json"), b"{\"id\": 1}\n{\"id\": 2}\nnot json\n").unwrap();
    // The dead-letter location is a file, so its write fails.
    std::fs::write(&errors, b"in the way").unwrap();
    let failed = run_stream(&job, &ck, &["--once"]);
    assert!(!failed.status.success());
    let err = stderr(&failed);
    assert!(err.contains("errors"), "{err}");
    assert_eq!(
        sluice_test_support::visible_files(&out).unwrap_or_default(),
        Vec::<String>::new(),
        "the failed batch's first write is visible: {err}"
    );
    assert!(
        !out.join("_sluice_staging").exists()
            || std::fs::read_dir(out.join("_sluice_staging"))
                .unwrap()
                .next()
                .is_none(),
        "the taken-back write left staging behind"
    );
    // Once the location is fixed, the batch runs again: both writes, once.
    std::fs::remove_file(&errors).unwrap();
    let again = one_batch(&job, &ck);
    assert_eq!(again["batch_id"], 0, "{again}");
    assert_eq!(again["resumed"], true, "{again}");
    assert_eq!(again["rows_dead_lettered"], 1, "{again}");
    assert_eq!(local_ids(&out), [1, 2]);
    let dead = ndjson_lines(&errors);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].contains("not json"), "{dead:?}");

    // Two writes of one batch to the same output: the first is published
    // before the second takes the output (no wait on its own lock).
    let twice = tmp.path().join("twice");
    let job = tmp.path().join("twice.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL) STORED AS JSON LOCATION '{}/' \
               OPTIONS ('max_bad_records' '10');\n\
             COPY (SELECT id FROM src WHERE _error IS NULL) TO '{out}' STORED AS PARQUET;\n\
             COPY (SELECT id + 10 AS id FROM src WHERE _error IS NULL) TO '{out}' STORED AS PARQUET;\n",
            src.display(),
            out = twice.display(),
        ),
    )
    .unwrap();
    let ck = tmp.path().join("ck2").display().to_string();
    let b = one_batch(&job, &ck);
    assert_eq!(b["rows_written"], 4, "{b}");
    assert_eq!(local_ids(&twice), [1, 2, 11, 12]);
}

/// A JSON file source with `max_bad_records` keeps its bad lines as rows:
/// the job sends them to a dead-letter write with their file, line, text
/// and reason, and the good ones to the output, each once, in the same
/// batch. A file with more bad lines than allowed fails the batch, naming
/// the file and line, and nothing of that batch lands.
#[test]
fn bad_json_lines_go_to_dead_letters_and_too_many_fail_the_batch() {
    let (tmp, src, out, errors, ck, job) = dead_letter_stream("dlq.sql", |src, out, errors| {
        format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, v VARCHAR) STORED AS JSON LOCATION '{src}/' \
               OPTIONS ('max_bad_records' '3');\n\
             COPY (SELECT id, v FROM src WHERE _error IS NULL) TO '{out}' STORED AS PARQUET;\n\
             COPY (SELECT _file, _line, _raw, _error FROM src WHERE _error IS NOT NULL) TO '{errors}' STORED AS JSON;\n"
        )
    });
    let put = |name: &str, text: &[u8]| {
        let tmp = src.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, src.join(name)).unwrap();
    };
    put("a.json", &json_lines(0..5));
    put(
        "b.json",
        b"{\"id\": 10, \"v\": \"x\"}\nnot json\n{\"v\": \"no id\"}\n\n{\"id\": \"eleven\"}\n{\"id\": 12}",
    );
    let first = one_batch(&job, &ck);
    assert_eq!(first["rows_dead_lettered"], 3, "{first}");
    assert_eq!(local_ids(&out), [0, 1, 2, 3, 4, 10, 12]);
    let mut dead: Vec<serde_json::Value> = ndjson_lines(&errors)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    dead.sort_by_key(|r| r["_line"].as_i64());
    let lines: Vec<i64> = dead.iter().map(|r| r["_line"].as_i64().unwrap()).collect();
    assert_eq!(lines, [2, 3, 5], "{dead:?}");
    assert!(
        dead.iter()
            .all(|r| r["_file"].as_str().unwrap().ends_with("/in/b.json"))
    );
    assert_eq!(dead[0]["_raw"], "not json");
    let why: Vec<&str> = dead.iter().map(|r| r["_error"].as_str().unwrap()).collect();
    assert!(why[0].contains("not JSON"), "{why:?}");
    assert!(why[1].contains("required field id"), "{why:?}");
    assert!(
        why[2].contains("eleven") || why[2].contains("id"),
        "{why:?}"
    );
    // Outside a stream, the table lists the directory (under a hidden
    // temporary directory, subdirectories included).
    let nested = src.join("2026/11/26");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(nested.join("n.json"), json_lines(30..33)).unwrap();
    let counted = run_job_text(
        tmp.path(),
        &format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, v VARCHAR) STORED AS JSON LOCATION '{}/' \
               OPTIONS ('max_bad_records' '3');\n\
             SELECT count(*) AS all_lines, count(_error) AS bad FROM src;\n",
            src.display()
        ),
        &[],
    )
    .unwrap();
    let text = String::from_utf8_lossy(&counted.stdout);
    assert!(counted.status.success(), "{}", stderr(&counted));
    assert!(text.contains("| 13        | 3   |"), "{text}");
    // An option the line reader does not take is one clear error.
    let refused = run_job_text(
        tmp.path(),
        &format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL) STORED AS JSON LOCATION '{}/' \
               OPTIONS ('max_bad_records' '3', 'compression' 'gzip');\n",
            src.display()
        ),
        &[],
    )
    .unwrap();
    let err = stderr(&refused);
    assert!(!refused.status.success());
    assert!(
        err.contains(
            "src: a JSON table with max_bad_records takes no other option, got format.compression"
        ),
        "{err}"
    );

    // Four bad lines in one file: over the threshold.
    put("c.json", b"{\"id\": 20}\nx\ny\nz\nw\n");
    let failed = run_stream(&job, &ck, &["--once"]);
    assert!(!failed.status.success());
    let err = stderr(&failed);
    assert!(
        err.contains(
            "c.json: line 5: bad line 4 of this file, over max_bad_records 3: the line is not JSON"
        ),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );
    assert_eq!(
        local_ids(&out),
        [0, 1, 2, 3, 4, 10, 12],
        "a failed batch landed"
    );
}

/// Files a producer writes under date prefixes (`yyyy/MM/dd/`) are each
/// taken once, as they arrive; a hidden directory's are not.
/// Names that are not plain in a URL (`#`, `?`, `%`, spaces; Spark writes
/// `ts=10%3A00/` directories) are read, locally and on S3, in a stream and
/// outside one: pasted into a URL they named another file, or none, and
/// the batch took them without reading a row.
#[test]
fn files_whose_names_need_escaping_are_read() {
    let names = [
        "ts=10%3A00/a.json",
        "b c#1.json",
        "d?e.json",
        "100% [f].json",
    ];
    let (tmp, src, out, ck, local_job) = file_stream("JSON");
    for (i, name) in names.iter().enumerate() {
        let path = src.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let i = i as i64 * 10;
        std::fs::write(path, json_lines(i..i + 10)).unwrap();
    }
    let first = one_batch(&local_job, &ck);
    assert_eq!(first["rows_written"], 40, "{first}");
    assert_eq!(local_ids(&out), exactly(40));
    // Outside a stream, the line reader lists and reads them too.
    let counted = run_job_text(
        tmp.path(),
        &format!(
            "CREATE EXTERNAL TABLE src (id BIGINT NOT NULL, v VARCHAR) STORED AS JSON LOCATION '{}/' \
               OPTIONS ('max_bad_records' '0');\n\
             SELECT count(*) AS n, count(DISTINCT id) AS ids FROM src;\n",
            src.display()
        ),
        &[],
    )
    .unwrap();
    let text = String::from_utf8_lossy(&counted.stdout);
    assert!(counted.status.success(), "{}", stderr(&counted));
    assert!(text.contains("| 40 | 40  |"), "{text}");

    // On S3.
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("names").unwrap();
    for (i, name) in names.iter().enumerate() {
        let i = i as i64 * 10;
        s3.put(&bucket, &format!("in/{name}"), json_lines(i..i + 10))
            .unwrap();
    }
    let out = format!("s3://{bucket}/out");
    let job = job(tmp.path(), &format!("s3://{bucket}/in"), "JSON", &out);
    let b = one_batch(&job, &format!("s3://{bucket}/ck"));
    assert_eq!(b["rows_written"], 40, "{b}");
    assert_eq!(s3_counts(tmp.path(), &out), (40, 40));
}

#[test]
fn files_under_subdirectories_are_each_read_once() {
    let (_tmp, src, out, ck, job) = file_stream("JSON");
    let day = |d: &str| {
        let dir = src.join(d);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    json_input(&day("2026/11/26"), "a.json", 0..10);
    json_input(&day("_staging"), "x.json", 100..110);
    let first = one_batch(&job, &ck);
    assert_eq!(first["rows_written"], 10, "{first}");
    json_input(&day("2026/11/27"), "b.json", 10..30);
    let second = one_batch(&job, &ck);
    assert_eq!(second["rows_written"], 20, "{second}");
    assert_eq!(local_ids(&out), exactly(30));
    // A checkpoint under the source would be read back as input.
    let inside = src.join("ck").display().to_string();
    let refused = run_stream(&job, &inside, &["--once"]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(
        err.contains("is under the directory of file source src")
            && err.contains("the stream would read its own checkpoint back as input"),
        "{err}"
    );
}

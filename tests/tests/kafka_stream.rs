//! A Kafka topic as a stream source, against a real broker (tansu, started
//! by `scripts/test-servers.sh`) and a real client (rskafka) producing: the
//! seed-3 shape (skewed ids over 6 partitions, written `PARTITIONED BY (id)`
//! with a row target), capped batches, bad records routed to a dead-letter
//! write with their reason and offset, the threshold that fails a batch, and
//! an unreachable broker that fails clearly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use sluice_test_support::kafka;
use sluice_test_support::{run_with_timeout, sluice};

fn broker() -> String {
    kafka::shared_broker().unwrap()
}

fn create_topic(name: &str, partitions: i32) {
    kafka::create_topic(&broker(), name, partitions).unwrap();
}

fn produce(topic: &str, partition: i32, values: Vec<String>) {
    kafka::produce_all(&broker(), topic, vec![(partition, values)]).unwrap();
}

/// The skewed events `from..to` over 6 partitions: id 100 holds 30%.
fn events(topic: &str, from: u64, to: u64) {
    kafka::produce_events(&broker(), topic, 6, from, to).unwrap();
}

fn job(
    dir: &Path,
    topic: &str,
    out: &Path,
    dlq: &Path,
    bad: u64,
    broker: &str,
) -> std::path::PathBuf {
    job_with(dir, topic, out, dlq, bad, broker, "")
}

fn job_with(
    dir: &Path,
    topic: &str,
    out: &Path,
    dlq: &Path,
    bad: u64,
    broker: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(format!("kafka-{bad}.sql"));
    std::fs::write(
        &path,
        format!(
            "CREATE EXTERNAL TABLE ev (seq BIGINT NOT NULL, id BIGINT NOT NULL, payload VARCHAR) \
             STORED AS KAFKA LOCATION 'kafka://{broker}/{topic}' \
             OPTIONS ('max_records_per_batch' '3500', 'max_bad_records' '{bad}'{extra});\n\
             COPY (SELECT seq, payload, id, \"partition\" FROM ev WHERE _error IS NULL) TO '{}' STORED AS PARQUET \
             PARTITIONED BY (id) OPTIONS ('write.target_file_rows' '500');\n\
             COPY (SELECT encode(value, 'base64pad') AS raw, \"partition\", \"offset\", _error AS reason \
             FROM ev WHERE _error IS NOT NULL) TO '{}' STORED AS JSON;\n",
            out.display(),
            dlq.display()
        ),
    )
    .unwrap();
    path
}

fn stream(job: &Path, ck: &Path, args: &[&str]) -> Output {
    run_with_timeout(
        sluice()
            .unwrap()
            .arg("stream")
            .arg(job)
            .args([
                "--checkpoint",
                &ck.display().to_string(),
                "--output",
                "json",
            ])
            .args(args),
        Duration::from_secs(300),
    )
    .unwrap()
}

fn batches(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("batch_id").is_some())
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// (rows, distinct seq) of the Parquet output, read by a separate run.
fn counts(dir: &Path, out: &Path) -> (u64, u64) {
    sluice_test_support::count_distinct(
        dir,
        &out.display().to_string(),
        "seq BIGINT, payload VARCHAR",
        "seq",
    )
    .unwrap()
}

#[test]
fn a_kafka_topic_streams_exactly_once_with_bad_records_dead_lettered() {
    let topic = format!("events-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic, 6);
    events(&topic, 0, 12_000);
    produce(
        &topic,
        0,
        vec![
            "not json".into(),
            "{\"seq\":\"x\",\"id\":1}".into(),
            "{\"payload\":\"no id\",\"seq\":1}".into(),
        ],
    );
    // Bytes that are not text: the dead letter keeps them (base64).
    kafka::produce_all(
        &broker(),
        &topic,
        vec![(0, vec![b"\xff\xfe not utf-8".to_vec()])],
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (out, dlq, ck) = (
        tmp.path().join("out"),
        tmp.path().join("dlq"),
        tmp.path().join("ck"),
    );
    // Every record written or dead-lettered, checked batch by batch.
    let job = job_with(
        tmp.path(),
        &topic,
        &out,
        &dlq,
        5,
        &broker(),
        ", 'max_filtered_records' '0'",
    );
    let run = stream(&job, &ck, &["--available-now"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let b = batches(&run);
    // 12,004 records, at most 3,500 a batch.
    assert_eq!(b.len(), 4, "{}", String::from_utf8_lossy(&run.stdout));
    let input: u64 = b.iter().map(|x| x["input_rows"].as_u64().unwrap()).sum();
    assert_eq!(input, 12_004, "{}", String::from_utf8_lossy(&run.stdout));
    assert!(b.iter().all(|x| x["input_rows"].as_u64().unwrap() <= 3_500));
    // The first batch left records waiting: their count and the age of the
    // oldest (produced before the stream started); the last left none.
    let lag = &b[0]["lag"][0];
    assert_eq!(lag["pending"], 12_004 - 3_500, "{lag}");
    let age = lag["age_ms"].as_u64().unwrap();
    assert!(age > 0 && age < 600_000, "{lag}");
    assert_eq!(b[3]["lag"][0]["pending"], 0, "{}", b[3]);
    assert_eq!(b[3]["lag"][0]["age_ms"], 0, "{}", b[3]);
    // Every partition is a split of the first batch.
    assert_eq!(b[0]["splits"].as_array().unwrap().len(), 6, "{}", b[0]);
    assert_eq!(counts(tmp.path(), &out), (12_000, 12_000));
    // Each batch's files per id follow that batch's rows.
    for x in &b {
        let tag = x["writes"][0]["write_id"].as_str().unwrap();
        let per = sluice_test_support::files_per_id(&out, tag).unwrap();
        let rows: u64 = per.values().map(|(_, r)| r).sum();
        assert_eq!(rows, x["writes"][0]["rows"].as_u64().unwrap());
        for (id, (files, id_rows)) in &per {
            assert_eq!(*files, id_rows.div_ceil(500), "{id}: {per:?}");
        }
        // The large id is cut into several files in every full batch.
        if x["input_rows"] == 3_500 {
            assert!(per["id=100"].0 >= 2, "{per:?}");
        }
    }
    // The dead letters: raw record, position, reason.
    let mut letters = vec![];
    for f in std::fs::read_dir(&dlq).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|e| e == "json") {
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                letters.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
            }
        }
    }
    letters.sort_by_key(|l| l["offset"].as_i64().unwrap());
    assert_eq!(letters.len(), 4, "{letters:?}");
    assert_eq!(letters[0]["raw"], "bm90IGpzb24=", "base64 of `not json`");
    assert_eq!(letters[0]["partition"], 0);
    assert_eq!(letters[0]["offset"], 2_000);
    assert!(
        letters[0]["reason"].as_str().unwrap().contains("not JSON"),
        "{letters:?}"
    );
    assert!(
        letters[1]["reason"].as_str().unwrap().contains("seq"),
        "{letters:?}"
    );
    assert!(
        letters[2]["reason"]
            .as_str()
            .unwrap()
            .contains("required field id"),
        "{letters:?}"
    );
    assert_eq!(letters[3]["raw"], "//4gbm90IHV0Zi04", "{letters:?}");
    assert_eq!(letters[3]["offset"], 2_003);
    assert!(
        letters[3]["reason"]
            .as_str()
            .unwrap()
            .contains("not UTF-8 text"),
        "{letters:?}"
    );

    // Each batch accounts for every partition it read: records read =
    // rows written + rows dead-lettered, counted by the writers from each
    // row's `partition`; the dead letters are counted per batch.
    let mut read_per_partition = std::collections::BTreeMap::<String, u64>::new();
    for x in &b {
        let accounts = x["accounts"].as_array().unwrap();
        assert_eq!(accounts.len(), 6, "{x}");
        for a in accounts {
            let (read, written, dead) = (
                a["read"].as_u64().unwrap(),
                a["written"].as_u64().unwrap(),
                a["dead_lettered"].as_u64().unwrap(),
            );
            assert_eq!(read, written + dead, "{x}");
            assert_eq!(a["filtered"], 0, "{x}");
            *read_per_partition
                .entry(a["split"].as_str().unwrap().to_string())
                .or_default() += read;
        }
        let dead: u64 = accounts
            .iter()
            .map(|a| a["dead_lettered"].as_u64().unwrap())
            .sum();
        assert_eq!(x["rows_dead_lettered"].as_u64().unwrap(), dead, "{x}");
    }
    let dead: u64 = b
        .iter()
        .map(|x| x["rows_dead_lettered"].as_u64().unwrap())
        .sum();
    assert_eq!(dead, 4);
    assert_eq!(read_per_partition.values().sum::<u64>(), 12_004);
    assert_eq!(read_per_partition["0"], 2_004, "{read_per_partition:?}");

    // More records: the next batch takes only them.
    events(&topic, 12_000, 13_000);
    let more = stream(&job, &ck, &["--once"]);
    assert!(more.status.success(), "{}", stderr(&more));
    let m = batches(&more);
    assert_eq!(m[0]["batch_id"], 4);
    assert_eq!(m[0]["input_rows"], 1_000);
    assert_eq!(counts(tmp.path(), &out), (13_000, 13_000));

    // With no bad record allowed, the batch fails naming where.
    let strict = job_with_threshold(tmp.path(), &topic);
    let failed = stream(&strict, &tmp.path().join("ck-strict"), &["--available-now"]);
    assert!(!failed.status.success());
    let err = stderr(&failed);
    assert!(
        err.contains("partition 0 offset") && err.contains("over max_bad_records 0"),
        "{err}"
    );
    // The same records every time: under `--every` too the run ends rather
    // than retrying a batch that cannot pass.
    let failed = stream(&strict, &tmp.path().join("ck-every"), &["--every", "1s"]);
    assert!(!failed.status.success());
    let err = stderr(&failed);
    assert!(
        err.contains("holds more bad records than max_bad_records allows")
            && err.contains("over max_bad_records 0")
            && !err.contains("retrying in"),
        "{err}"
    );
}

fn job_with_threshold(dir: &Path, topic: &str) -> std::path::PathBuf {
    job(
        dir,
        topic,
        &dir.join("out-strict"),
        &dir.join("dlq-strict"),
        0,
        &broker(),
    )
}

#[test]
fn an_unreachable_broker_fails_the_batch_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let port = sluice_test_support::free_port().unwrap();
    let job = job(
        tmp.path(),
        "t",
        &tmp.path().join("o"),
        &tmp.path().join("d"),
        0,
        &format!("127.0.0.1:{port}"),
    );
    let o = stream(&job, &tmp.path().join("ck"), &["--once"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("source ev"), "{err}");
}

/// A 6-partition `topic` holding 60 events, and a stream of it from
/// `latest` (`--every 1s`, lock ttl 3 s, batch lines in `lines.jsonl`)
/// that has looked at the topic (it says it waits for input): (temp dir,
/// output dir, job file, the stream, its stderr, which must stay open while
/// it runs).
fn started_latest_stream(
    topic: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
) {
    create_topic(topic, 6);
    events(topic, 0, 60);
    let tmp = tempfile::tempdir().unwrap();
    let (out, dlq) = (tmp.path().join("out"), tmp.path().join("dlq"));
    let job = job_with(
        tmp.path(),
        topic,
        &out,
        &dlq,
        0,
        &broker(),
        ", 'starting_offsets' 'latest'",
    );
    let mut child = sluice()
        .unwrap()
        .arg("stream")
        .arg(&job)
        .args(["--checkpoint", &tmp.path().join("ck").display().to_string()])
        .args(["--output", "json", "--every", "1s", "--lock-ttl", "3s"])
        .stdout(std::fs::File::create(tmp.path().join("lines.jsonl")).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("no new input") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut err, &mut line).unwrap() == 0 {
            panic!("the stream ended: {seen}");
        }
        seen.push_str(&line);
    }
    (tmp, out, job, child, err)
}

/// `starting_offsets` `latest`: a stream started on a topic with records
/// reads only what arrives after it started, each record once.
#[test]
fn a_stream_from_latest_reads_only_what_arrives_after_it_starts() {
    let topic = format!("latest-{}", uuid::Uuid::new_v4().simple());
    let (tmp, out, _job, mut child, _stderr) = started_latest_stream(&topic);
    let lines = tmp.path().join("lines.jsonl");
    events(&topic, 60, 90);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&lines).unwrap_or_default();
        let rows: u64 = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["rows_written"].as_u64())
            .sum();
        if rows >= 30 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no batch: {text}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert_eq!(counts(tmp.path(), &out), (30, 30));
}

/// `latest` is resolved once: a stream killed before its first batch
/// recorded where it starts (`starts/` in the checkpoint), so its restart
/// reads what arrived while it was down instead of resolving `latest`
/// again and skipping it.
#[test]
fn a_latest_stream_killed_before_its_first_batch_loses_nothing() {
    let topic = format!("latest-kill-{}", uuid::Uuid::new_v4().simple());
    let (tmp, out, job, mut child, _stderr) = started_latest_stream(&topic);
    let ck = tmp.path().join("ck");
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        std::fs::read_dir(ck.join("starts")).unwrap().count() >= 1,
        "no starts recorded"
    );
    events(&topic, 60, 90);
    let again = stream(&job, &ck, &["--available-now", "--lock-ttl", "3s"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let b = batches(&again);
    assert_eq!(b[0]["batch_id"], 0, "{b:?}");
    assert_eq!(counts(tmp.path(), &out), (30, 30));
}

/// SIGKILL mid-commit with a Kafka source, output on S3 (a proxy holds each
/// `CompleteMultipartUpload` so the kill lands in the commit): the restart
/// re-runs the batch over the same offsets; every record once, no upload
/// left open, and the next batches continue from there.
#[test]
fn a_kafka_stream_killed_mid_commit_resumes_exactly_once() {
    let s3 = sluice_test_support::s3::S3::from_env().unwrap();
    let bucket = s3.new_bucket("kafkakill").unwrap();
    let topic = format!("kill-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic, 6);
    events(&topic, 0, 6_000);
    let tmp = tempfile::tempdir().unwrap();
    let out = format!("s3://{bucket}/out");
    let job = job(
        tmp.path(),
        &topic,
        Path::new(&out),
        &tmp.path().join("dlq"),
        0,
        &broker(),
    );
    let ck = tmp.path().join("ck");
    let proxy = sluice_test_support::faulty::FaultyS3::start_with(
        &s3.endpoint,
        u64::MAX,
        Duration::from_secs(4),
        None,
    )
    .unwrap();
    let child = sluice()
        .unwrap()
        .arg("stream")
        .arg(&job)
        .args([
            "--checkpoint",
            &ck.display().to_string(),
            "--lock-ttl",
            "3s",
        ])
        .arg("--available-now")
        .env("AWS_ENDPOINT_URL_S3", &proxy.endpoint)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !s3
        .list(&bucket, "out/_sluice_staging/")
        .unwrap()
        .iter()
        .any(|o| o.key.ends_with("/commit.json"))
    {
        assert!(std::time::Instant::now() < deadline, "no commit started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status();
    let mut child = child;
    let _ = child.wait();
    let again = stream(&job, &ck, &["--available-now", "--lock-ttl", "3s"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let b = batches(&again);
    assert_eq!(
        b[0]["batch_id"],
        0,
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(b[0]["resumed"], true);
    assert_eq!(counts(tmp.path(), Path::new(&out)), (6_000, 6_000));
    assert_eq!(
        s3.open_uploads(&bucket, "out/").unwrap(),
        Vec::<String>::new()
    );
}

/// Sums `rows_written` over the JSON lines a stream wrote to `lines`.
fn rows_written(lines: &Path) -> u64 {
    std::fs::read_to_string(lines)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["rows_written"].as_u64())
        .sum()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `sluice stream JOB --every INTERVAL` in the background, its JSON lines
/// to `lines` and its stderr to `err`.
fn spawn_stream(
    job: &Path,
    ck: &Path,
    lines: &Path,
    err: &Path,
    args: &[&str],
) -> std::process::Child {
    sluice()
        .unwrap()
        .arg("stream")
        .arg(job)
        .args(["--checkpoint", &ck.display().to_string()])
        .args(["--output", "json"])
        .args(args)
        .stdout(std::fs::File::create(lines).unwrap())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .unwrap()
}

fn terminate(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "the stream exited {status} on SIGTERM");
}

/// The seed-3 workload as it runs: a producer writes skewed events into 6
/// partitions while a stream runs 2 s batches `PARTITIONED BY (month, day,
/// hour, id)` (event time) with 100 rows per file. Every record lands
/// once, in the hour its event time says, and in every batch each
/// partition directory holds ceil(its rows in that batch / 100) files.
#[test]
fn a_stream_beside_a_live_producer_writes_month_day_hour_id_exactly_once() {
    let topic = format!("live-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic, 6);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let job = tmp.path().join("live.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE ev (seq BIGINT NOT NULL, id BIGINT NOT NULL, \
             ts TIMESTAMP NOT NULL, payload VARCHAR) \
             STORED AS KAFKA LOCATION 'kafka://{}/{topic}' \
             OPTIONS ('max_records_per_batch' '1500');\n\
             COPY (SELECT seq, payload, date_part('month', ts) AS month, \
             date_part('day', ts) AS day, date_part('hour', ts) AS hour, id \
             FROM ev WHERE _error IS NULL) TO '{}' STORED AS PARQUET \
             PARTITIONED BY (month, day, hour, id) OPTIONS ('write.target_file_rows' '100');\n",
            broker(),
            out.display()
        ),
    )
    .unwrap();
    let (lines, err) = (tmp.path().join("lines"), tmp.path().join("err"));
    let child = spawn_stream(
        &job,
        &tmp.path().join("ck"),
        &lines,
        &err,
        &["--every", "2s"],
    );
    // Five bursts a second apart: the stream takes them as they come.
    const TOTAL: u64 = 6_000;
    for burst in 0..5 {
        events(&topic, burst * TOTAL / 5, (burst + 1) * TOTAL / 5);
        std::thread::sleep(Duration::from_secs(1));
    }
    wait_for("every record written", Duration::from_secs(180), || {
        rows_written(&lines) >= TOTAL
    });
    terminate(child);
    assert_eq!(rows_written(&lines), TOTAL);
    assert_eq!(counts(tmp.path(), &out), (TOTAL, TOTAL));
    let text = std::fs::read_to_string(&lines).unwrap();
    let b: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("batch_id").is_some())
        .collect();
    assert!(b.len() >= 2, "one batch took everything: {text}");
    let mut hours = std::collections::BTreeSet::new();
    for x in &b {
        let tag = x["writes"][0]["write_id"].as_str().unwrap();
        let per = sluice_test_support::files_per_id(&out, tag).unwrap();
        let rows: u64 = per.values().map(|(_, r)| r).sum();
        assert_eq!(rows, x["writes"][0]["rows"].as_u64().unwrap(), "{x}");
        for (dir, (files, dir_rows)) in &per {
            assert_eq!(*files, dir_rows.div_ceil(100), "{dir}: {per:?}");
            hours.insert(dir.rsplit_once('/').unwrap().0.to_string());
        }
    }
    // 6,000 events two seconds apart from 2026-11-25T22:00Z: 22h and 23h
    // on the 25th, 0h and 1h on the 26th.
    assert_eq!(
        hours.into_iter().collect::<Vec<_>>(),
        [
            "month=11/day=25/hour=22",
            "month=11/day=25/hour=23",
            "month=11/day=26/hour=0",
            "month=11/day=26/hour=1"
        ]
    );
}

/// A broker that stops answering (SIGSTOP) under a running stream: each
/// attempt fails within `request_timeout_ms` naming the broker, the loop
/// retries with backoff instead of hanging, and the `no_commit` alarm
/// fires (it stayed quiet while the stream was merely caught up). With the
/// broker back the stream goes on, the alarm clears, every record once.
#[test]
fn a_stopped_broker_fails_clearly_and_the_stream_retries_until_it_is_back() {
    let b = kafka::Broker::start().unwrap();
    let topic = "paused";
    kafka::create_topic(&b.addr, topic, 2).unwrap();
    kafka::produce_events(&b.addr, topic, 2, 0, 100).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let job = tmp.path().join("paused.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE ev (seq BIGINT NOT NULL, payload VARCHAR) \
             STORED AS KAFKA LOCATION 'kafka://{}/{topic}' \
             OPTIONS ('request_timeout_ms' '1500');\n\
             COPY (SELECT seq, payload FROM ev) TO '{}' STORED AS PARQUET;\n",
            b.addr,
            out.display()
        ),
    )
    .unwrap();
    let (lines, err) = (tmp.path().join("lines"), tmp.path().join("err"));
    let child = spawn_stream(
        &job,
        &tmp.path().join("ck"),
        &lines,
        &err,
        &["--every", "1s", "--alarm", "no_commit > 4s"],
    );
    wait_for("the first records", Duration::from_secs(120), || {
        rows_written(&lines) == 100
    });
    // Caught up on a quiet topic for longer than the alarm's 4 s: quiet.
    std::thread::sleep(Duration::from_secs(6));
    let stderr_text = || std::fs::read_to_string(&err).unwrap_or_default();
    assert!(!stderr_text().contains("alarm FIRING"), "{}", stderr_text());

    b.pause().unwrap();
    wait_for("the no_commit alarm", Duration::from_secs(60), || {
        stderr_text().contains("alarm FIRING: no_commit > 4s")
    });
    let text = stderr_text();
    assert!(
        text.contains("failed:") && text.contains("retrying in"),
        "{text}"
    );
    assert!(text.contains(&b.addr), "{text}");
    assert!(text.contains("1.5s"), "{text}");
    b.resume().unwrap();
    kafka::produce_events(&b.addr, topic, 2, 100, 150).unwrap();
    wait_for(
        "the records after the pause",
        Duration::from_secs(120),
        || rows_written(&lines) == 150,
    );
    wait_for("the alarm clearing", Duration::from_secs(30), || {
        stderr_text().contains("alarm cleared: no_commit > 4s")
    });
    terminate(child);
    assert_eq!(counts(tmp.path(), &out), (150, 150));
}

/// On a scheduler and two executor processes the executors fetch the
/// batch's offset ranges from the broker themselves (the client only plans):
/// every record once, in capped batches.
#[test]
fn a_kafka_stream_runs_on_a_cluster() {
    let cluster = sluice_test_support::Cluster::start(2, 2).unwrap();
    let topic = format!("cluster-{}", uuid::Uuid::new_v4().simple());
    create_topic(&topic, 6);
    events(&topic, 0, 900);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let job = tmp.path().join("cluster.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE ev (seq BIGINT NOT NULL, payload VARCHAR) \
             STORED AS KAFKA LOCATION 'kafka://{}/{topic}' OPTIONS ('max_records_per_batch' '400');\n\
             COPY (SELECT seq, payload FROM ev WHERE _error IS NULL) TO '{}' STORED AS PARQUET;\n",
            broker(),
            out.display()
        ),
    )
    .unwrap();
    let run = run_with_timeout(
        sluice()
            .unwrap()
            .arg("stream")
            .arg(&job)
            .args([
                "--checkpoint",
                &tmp.path().join("ck").display().to_string(),
                "--available-now",
                "--output",
                "json",
                "--scheduler",
                &cluster.endpoint,
            ])
            .env("SLUICE_COORDINATOR", &cluster.coordinator),
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(
        run.status.success(),
        "{}\n{}",
        stderr(&run),
        cluster.scheduler_log()
    );
    let b = batches(&run);
    assert!(b.len() >= 3, "{}", String::from_utf8_lossy(&run.stdout));
    assert!(b.iter().all(|x| x["input_rows"].as_u64().unwrap() <= 400));
    assert!(
        b.iter()
            .all(|x| !x["job_ids"].as_array().unwrap().is_empty())
    );
    assert_eq!(counts(tmp.path(), &out), (900, 900));
}

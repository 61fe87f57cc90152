//! DynamoDB Streams and Kinesis as stream sources, against DynamoDB Local
//! (streams on) and kinesalite, both started by `scripts/test-servers.sh`:
//! the chat pipeline of workload 5 (`jobs/chat_changes.sql`) with a loader
//! writing 25-item batches for 10 LivestreamIDs while the stream runs and a
//! SIGKILL mid-batch, read back by DuckDB's JSON reader, and the same job on
//! a scheduler and two executors writing to moto's S3; Kinesis shard splits
//! and merges mid-stream; and the bad inputs that must fail clearly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::StreamViewType;
use sluice_test_support::changes::{self, livestream_of};
use sluice_test_support::{run_with_timeout, sluice, workspace_root};

fn spawn(args: &[String], stdout: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stdout)
        .unwrap();
    sluice()
        .unwrap()
        .args(args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} failed");
}

fn stop(mut child: Child) -> String {
    signal(&child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the stream did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    err
}

fn batches(stdout: &Path) -> Vec<serde_json::Value> {
    batch_lines(&std::fs::read_to_string(stdout).unwrap_or_default())
}

/// The batch reports (`--output json` lines) in `text`.
fn batch_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("batch_id").is_some())
        .collect()
}

/// The records in a local checkpoint folder: not object_store's staging
/// files (`NAME#N`), which exist while a record is being written and are
/// gone if the writer is killed then (seen in CI: a kill on the staging file
/// left no `offsets/` record, and the restart rightly planned afresh).
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.contains('#'))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `lines` rows are visible under `dir` (counted by Python).
fn wait_rows(dir: &Path, field: &str, lines: u64, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let counts = changes::ndjson_counts(dir, field).unwrap();
        let seen: u64 = counts
            .iter()
            .filter(|(k, _)| *k != "__duplicates__")
            .map(|(_, v)| v)
            .sum();
        if seen >= lines {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("{what}: the stream exited ({status}) at {seen} of {lines} rows: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {seen} of {lines} rows after 180 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// SIGKILLs `child` while a batch is recorded in the checkpoint's
/// offsets/ but not in commits/ (after an earlier batch committed); returns
/// that batch's record name.
fn kill_mid_batch(mut child: Child, ck: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed_at = loop {
        let planned = entries(&ck.join("offsets"));
        let committed = entries(&ck.join("commits"));
        if let Some(open) = planned.difference(&committed).next()
            && !committed.is_empty()
        {
            signal(&child, "-KILL");
            break open.clone();
        }
        assert!(Instant::now() < deadline, "no batch in flight to kill");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.wait().unwrap();
    killed_at
}

/// Files staged under `out` by batch `id`'s writes (write ids
/// `<12 characters of the stream's id>b<id>l<line>`, or with `r<marks>`
/// before the `l`).
fn staged_by(out: &Path, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![out.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if e.file_name() != "_sluice_staging" {
                dirs.push(p);
                continue;
            }
            for w in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                let name = w.file_name().to_string_lossy().into_owned();
                let ours = name
                    .get(12..)
                    .and_then(|rest| rest.strip_prefix(&format!("b{id}")))
                    .is_some_and(|rest| rest.starts_with('l') || rest.starts_with('r'));
                if ours {
                    found.extend(files_under(&w.path()));
                }
            }
        }
    }
    found
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// [`kill_mid_batch`], once the batch in flight has staged files under
/// `out` (its writes begun, not published): returns the batch's record
/// name and those files.
fn kill_mid_write(mut child: Child, ck: &Path, out: &Path) -> (String, Vec<PathBuf>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let killed = loop {
        let planned = entries(&ck.join("offsets"));
        let committed = entries(&ck.join("commits"));
        if !committed.is_empty()
            && let Some(open) = planned.difference(&committed).next()
        {
            let id: u64 = open.trim_end_matches(".json").parse().unwrap();
            let staged = staged_by(out, &id.to_string());
            if !staged.is_empty() {
                signal(&child, "-KILL");
                break (open.clone(), staged);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the stream exited ({status}) before a batch in flight staged a file");
        }
        assert!(
            Instant::now() < deadline,
            "no batch in flight with staged files to kill"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    child.wait().unwrap();
    killed
}

fn chat_args(table: &str, out: &Path, ck: &Path, batch: u64) -> Vec<String> {
    let job = workspace_root().join("jobs/chat_changes.sql");
    vec![
        "stream".into(),
        job.display().to_string(),
        "--var".into(),
        format!("table={table}"),
        "--var".into(),
        format!("output={}", out.display()),
        "--var".into(),
        format!("batch={batch}"),
        "--checkpoint".into(),
        ck.display().to_string(),
        "--every".into(),
        "1s".into(),
        "--output".into(),
        "json".into(),
    ]
}

/// The seed's test, scaled: 3,000 chat items over 10 LivestreamIDs written
/// 25 to a request while the stream runs, then 100 MODIFYs, 50 REMOVEs and
/// one item whose `sent_at` is not a number. The stream is SIGKILLed while
/// a batch is planned but not committed and restarted with the same
/// command. Afterwards both layouts hold every change once, per id, and the
/// bad item is in errors/ with its reason.
#[test]
fn chat_changes_reach_both_layouts_exactly_once_across_a_sigkill() {
    let table = changes::create_chat_table("chat", Some(StreamViewType::NewAndOldImages)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (out, ck, log) = (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("batches.jsonl"),
    );
    let args = chat_args(&table, &out, &ck, 400);
    let loader = {
        let table = table.clone();
        std::thread::spawn(move || changes::load_chat(&table, 0, 3_000, 500))
    };
    let (killed_at, staged) = kill_mid_write(spawn(&args, &log), &ck, &out);
    let committed_before = entries(&ck.join("commits"));
    assert!(
        !committed_before.contains(&killed_at),
        "the kill landed after the commit of {killed_at}"
    );
    assert!(!staged.is_empty());
    let mut second = spawn(&args, &log);
    loader.join().unwrap().unwrap();
    changes::modify_chat(&table, 0..100).unwrap();
    changes::remove_chat(&table, 100..150).unwrap();
    put_bad_item(&table);
    wait_rows(
        &out.join("by_stream"),
        "LivestreamID",
        3_150,
        &mut second,
        "by_stream",
    );
    wait_rows(
        &out.join("by_hour"),
        "LivestreamID",
        3_150,
        &mut second,
        "by_hour",
    );
    wait_rows(&out.join("errors"), "errorCode", 1, &mut second, "errors");
    // Rows are visible before their batch's commit record: wait for the
    // records of every change.
    let deadline = Instant::now() + Duration::from_secs(60);
    while batches(&log)
        .iter()
        .map(|x| x["input_rows"].as_u64().unwrap_or(0))
        .sum::<u64>()
        < 3_151
    {
        assert!(
            Instant::now() < deadline,
            "batches never recorded every change"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = stop(second);

    // The restarted process re-ran the batch the kill interrupted.
    let b = batches(&log);
    let killed_id: u64 = killed_at.trim_end_matches(".json").parse().unwrap();
    let rerun = b
        .iter()
        .find(|x| x["batch_id"].as_u64() == Some(killed_id))
        .unwrap_or_else(|| panic!("batch {killed_id} never committed: {err}"));
    assert_eq!(rerun["resumed"], true, "{rerun}");
    // What the killed attempt had staged was settled by the re-run.
    let left = staged_by(&out, &killed_id.to_string());
    assert!(
        left.is_empty(),
        "the killed attempt's staging is left: {left:?}"
    );

    let mut expected = std::collections::BTreeMap::new();
    for uid in 0..3_000u64 {
        *expected.entry(livestream_of(uid)).or_insert(0u64) += 1;
    }
    for uid in 0..150u64 {
        *expected.entry(livestream_of(uid)).or_insert(0u64) += 1;
    }
    for layout in ["by_stream", "by_hour"] {
        let mut counts = changes::ndjson_counts(&out.join(layout), "LivestreamID").unwrap();
        assert_eq!(
            counts.remove("__duplicates__"),
            Some(0),
            "{layout}: duplicates"
        );
        assert_eq!(counts, expected, "{layout}: changes per LivestreamID");
        let mut events = changes::ndjson_counts(&out.join(layout), "event_name").unwrap();
        events.remove("__duplicates__");
        assert_eq!(
            events.into_iter().collect::<Vec<_>>(),
            [
                ("INSERT".to_string(), 3_000),
                ("MODIFY".to_string(), 100),
                ("REMOVE".to_string(), 50)
            ],
            "{layout}: changes per event"
        );
    }
    // The hour layout is Firehose's yyyy/MM/dd/HH/, not k=v directories.
    let hour_dirs: Vec<PathBuf> = walk(&out.join("by_hour"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!hour_dirs.is_empty());
    for p in &hour_dirs {
        let rel = p
            .strip_prefix(out.join("by_hour"))
            .unwrap()
            .display()
            .to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 5, "{rel}");
        assert!(
            parts[..4]
                .iter()
                .all(|x| x.chars().all(|c| c.is_ascii_digit())),
            "{rel}"
        );
        // Each row sits in the hour of its own event time (UTC).
        let hour = format!("{}-{}-{}T{}", parts[0], parts[1], parts[2], parts[3]);
        for line in std::fs::read_to_string(p).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(row["event_hour"], hour.as_str(), "{rel}: {line}");
            // event_time is UTC, as Hive's timestamps (a space, no zone).
            assert!(
                row["event_time"]
                    .as_str()
                    .unwrap()
                    .starts_with(&hour.replace('T', " ")),
                "{rel}: {line}"
            );
        }
    }
    let errors = changes::ndjson_counts(&out.join("errors"), "errorMessage").unwrap();
    assert!(
        errors.keys().any(|k| k.contains("sent_at")),
        "the bad item's reason names its field: {errors:?}"
    );
    // Every batch accounts for its input: records read = written + dead-lettered.
    for x in &b {
        let input = x["input_rows"].as_u64().unwrap();
        let writes = x["writes"].as_array().unwrap();
        let rows = |name: &str| {
            writes
                .iter()
                .find(|w| w["output"].as_str().unwrap_or("").ends_with(name))
                .map_or(0, |w| w["rows"].as_u64().unwrap())
        };
        assert_eq!(rows("/by_stream/") + rows("/errors/"), input, "{x}");
        assert_eq!(rows("/by_hour/") + rows("/errors/"), input, "{x}");
    }
    // And shard by shard: each batch's manifest has, per shard, the records
    // read (planned, and checked by the executors as they read them) = rows
    // written + rows dead-lettered (counted by the writers from each row's
    // `shard_id`), nothing filtered. Summed over the batches, a shard's
    // records read equal its rows in by_stream/ and errors/ as read back.
    let mut read_per_shard = std::collections::BTreeMap::<String, u64>::new();
    for x in &b {
        let accounts = x["accounts"].as_array().unwrap();
        assert!(!accounts.is_empty(), "{x}");
        for a in accounts {
            let read = a["read"].as_u64().unwrap();
            *read_per_shard
                .entry(a["split"].as_str().unwrap().to_string())
                .or_default() += read;
            // A write an earlier process committed under a later append's
            // `_SUCCESS` reports no rows per shard.
            if x["resumed"] == true && a["written"].is_null() {
                continue;
            }
            let (written, dead) = (
                a["written"].as_u64().unwrap(),
                a["dead_lettered"].as_u64().unwrap(),
            );
            assert_eq!(read, written + dead, "{x}");
            assert_eq!(a["filtered"], 0, "{x}");
            // Each layout balances on its own, not only the larger.
            let by_output = a["written_by_output"].as_object().unwrap();
            assert_eq!(by_output.len(), 2, "{x}");
            for n in by_output.values() {
                assert_eq!(read, n.as_u64().unwrap() + dead, "{x}");
            }
        }
    }
    let mut on_disk = changes::ndjson_counts(&out.join("by_stream"), "shard_id").unwrap();
    on_disk.remove("__duplicates__");
    let mut dead_on_disk = changes::ndjson_counts(&out.join("errors"), "shard_id").unwrap();
    dead_on_disk.remove("__duplicates__");
    for (shard, read) in &read_per_shard {
        let landed = on_disk.get(shard).copied().unwrap_or(0)
            + dead_on_disk.get(shard).copied().unwrap_or(0);
        assert_eq!(landed, *read, "shard {shard}: {on_disk:?} {dead_on_disk:?}");
    }
    assert_eq!(read_per_shard.values().sum::<u64>(), 3_151);
}

/// The same job on a scheduler and two executor processes, writing to
/// moto's S3 with its checkpoint there too, hours in a zone 5:30 ahead of
/// UTC: 600 inserts, 40 MODIFYs, 20 REMOVEs and one bad item drained in
/// batches of 250 (`--available-now`), read back from S3 by DuckDB: every
/// change once per id in both layouts, each row under the hour of its
/// event time in that zone, the bad item in errors/, every batch's
/// accounts balanced shard by shard, and a lag alarm fired and cleared.
#[test]
fn chat_changes_reach_s3_from_a_cluster_with_hours_in_a_zone() {
    use sluice_test_support::s3::S3;
    let cluster = sluice_test_support::Cluster::start(2, 2).unwrap();
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("chat").unwrap();
    let table =
        changes::create_chat_table("chats3", Some(StreamViewType::NewAndOldImages)).unwrap();
    changes::load_chat(&table, 0, 600, 100_000).unwrap();
    changes::modify_chat(&table, 0..40).unwrap();
    changes::remove_chat(&table, 40..60).unwrap();
    put_bad_item(&table);
    let job = workspace_root().join("jobs/chat_changes.sql");
    let mut cmd = sluice().unwrap();
    cmd.arg("stream")
        .arg(&job)
        .args(["--var", &format!("table={table}")])
        .args(["--var", &format!("output=s3://{bucket}/chat")])
        .args(["--var", "batch=250", "--var", "zone=Asia/Kolkata"])
        .args(["--checkpoint", &format!("s3://{bucket}/ck")])
        .args(["--available-now", "--output", "json"])
        .args(["--alarm", "lag_records > 0"])
        .args(["--scheduler", &cluster.endpoint])
        .env("SLUICE_COORDINATOR", &cluster.coordinator);
    let o = run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}\n{}", cluster.scheduler_log());
    // The first batches leave records behind their cap, the last none: the
    // lag alarm fires, then clears.
    let fired = text.find("alarm FIRING: lag_records > 0");
    let cleared = text.find("alarm cleared: lag_records > 0");
    assert!(
        fired.is_some() && cleared.is_some() && fired < cleared,
        "{text}"
    );
    let b = batch_lines(&String::from_utf8_lossy(&o.stdout));
    // 661 records in batches of at most 250 (per shard, over the stream).
    assert!(b.len() >= 3, "{text}");
    assert!(
        b.iter()
            .all(|x| !x["job_ids"].as_array().unwrap().is_empty()),
        "{text}"
    );
    assert_eq!(
        b.iter()
            .map(|x| x["input_rows"].as_u64().unwrap())
            .sum::<u64>(),
        661,
        "{text}"
    );
    for x in &b {
        for a in x["accounts"].as_array().unwrap() {
            let (read, dead) = (
                a["read"].as_u64().unwrap(),
                a["dead_lettered"].as_u64().unwrap(),
            );
            assert_eq!(read, a["written"].as_u64().unwrap() + dead, "{x}");
            assert_eq!(a["filtered"], 0, "{x}");
            let by_output = a["written_by_output"].as_object().unwrap();
            assert_eq!(by_output.len(), 2, "{x}");
            for n in by_output.values() {
                assert_eq!(read, n.as_u64().unwrap() + dead, "{x}");
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("chat");
    assert!(s3.download(&bucket, "chat/", &out).unwrap() > 0);
    let mut expected = std::collections::BTreeMap::new();
    for uid in (0..600u64).chain(0..60) {
        *expected.entry(livestream_of(uid)).or_insert(0u64) += 1;
    }
    for layout in ["by_stream", "by_hour"] {
        let mut counts = changes::ndjson_counts(&out.join(layout), "LivestreamID").unwrap();
        assert_eq!(counts.remove("__duplicates__"), Some(0), "{layout}");
        assert_eq!(counts, expected, "{layout}: changes per LivestreamID");
    }
    let errors = changes::ndjson_counts(&out.join("errors"), "errorCode").unwrap();
    assert_eq!(errors.get("Record.DecodeFailed"), Some(&1), "{errors:?}");
    // Firehose's arrivalTimestamp: epoch milliseconds.
    let arrived = changes::ndjson_counts(&out.join("errors"), "arrivalTimestamp").unwrap();
    assert!(
        arrived.keys().any(|k| k
            .parse::<i64>()
            .is_ok_and(|ms| (1_700_000_000_000..10_000_000_000_000).contains(&ms))),
        "{arrived:?}"
    );
    // Each row sits under its event time's hour in Asia/Kolkata (+05:30),
    // which is not the UTC hour.
    let mut files = 0;
    for p in walk(&out.join("by_hour")) {
        if p.extension().is_none_or(|e| e != "json") {
            continue;
        }
        files += 1;
        let rel = p
            .strip_prefix(out.join("by_hour"))
            .unwrap()
            .display()
            .to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 5, "{rel}");
        let hour = format!("{}-{}-{}T{}", parts[0], parts[1], parts[2], parts[3]);
        for line in std::fs::read_to_string(&p).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let utc = chrono::NaiveDateTime::parse_from_str(
                row["event_time"].as_str().unwrap(),
                "%Y-%m-%d %H:%M:%S%.3f",
            )
            .unwrap();
            let local = utc + chrono::Duration::minutes(5 * 60 + 30);
            assert_eq!(
                local.format("%Y-%m-%dT%H").to_string(),
                hour,
                "{rel}: {line}"
            );
            assert_ne!(utc.format("%Y-%m-%dT%H").to_string(), hour, "{rel}: {line}");
            assert_eq!(row["event_hour"], hour.as_str(), "{rel}: {line}");
        }
    }
    assert!(files > 0);
    // Nothing left staged or half-uploaded.
    assert_eq!(
        s3.open_uploads(&bucket, "chat/").unwrap(),
        Vec::<String>::new()
    );
}

fn put_bad_item(table: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use aws_sdk_dynamodb::types::AttributeValue;
        changes::dynamodb()
            .await
            .put_item()
            .table_name(table)
            .item("LivestreamID", AttributeValue::S("live-bad".into()))
            .item("UID", AttributeValue::N("999999".into()))
            .item("sent_at", AttributeValue::S("yesterday".into()))
            .send()
            .await
            .unwrap();
    });
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') || name.starts_with('.') {
            continue;
        }
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn kinesis_job(dir: &Path, stream: &str, out: &Path) -> PathBuf {
    let path = dir.join("kinesis.sql");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(
        f,
        "CREATE EXTERNAL TABLE k (n BIGINT NOT NULL) STORED AS KINESIS LOCATION 'kinesis://{stream}' \
         OPTIONS ('max_records_per_batch' '60');\n\
         COPY (SELECT n, shard_id, sequence_number, partition_key, data_text FROM k WHERE _error IS NULL) TO '{}' STORED AS JSON;",
        out.display()
    )
    .unwrap();
    path
}

/// A new stream of `shards` shards and [`kinesis_job`] over it, writing
/// to `out/` of the temporary directory.
fn kinesis_setup(hint: &str, shards: i32) -> (String, tempfile::TempDir, PathBuf) {
    let stream = changes::create_stream(hint, shards).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let job = kinesis_job(tmp.path(), &stream, &tmp.path().join("out"));
    (stream, tmp, job)
}

/// The output, checkpoint and batch log under [`kinesis_setup`]'s directory.
fn kinesis_paths(tmp: &tempfile::TempDir) -> (PathBuf, PathBuf, PathBuf) {
    (
        tmp.path().join("out"),
        tmp.path().join("ck"),
        tmp.path().join("batches.jsonl"),
    )
}

/// `sluice stream` of a Kinesis job with 1 s batches; a restart after a
/// kill waits 3 s for the killed process's claim to lapse.
fn kinesis_args(job: &Path, ck: &Path) -> Vec<String> {
    [
        "stream",
        &job.display().to_string(),
        "--checkpoint",
        &ck.display().to_string(),
        "--every",
        "1s",
        "--output",
        "json",
        "--lock-ttl",
        "3s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn numbered(from: u64, to: u64) -> Vec<(String, Vec<u8>)> {
    (from..to)
        .map(|n| (format!("key-{n}"), format!("{{\"n\": {n}}}").into_bytes()))
        .collect()
}

/// Every `n` in `expected` is in `out` exactly once, and no other.
fn assert_each_once(out: &Path, expected: std::ops::Range<u64>) {
    let mut counts = changes::ndjson_counts(out, "n").unwrap();
    assert_eq!(counts.remove("__duplicates__"), Some(0));
    let seen: BTreeSet<u64> = counts.keys().map(|k| k.parse().unwrap()).collect();
    assert_eq!(seen, expected.collect::<BTreeSet<u64>>());
    assert!(
        counts.values().all(|c| *c == 1),
        "a record twice: {counts:?}"
    );
    // The record's data as text too, as the producer wrote it.
    let mut texts = changes::ndjson_counts(out, "data_text").unwrap();
    texts.remove("__duplicates__");
    let want: BTreeSet<String> = expected_texts(&seen);
    assert_eq!(texts.keys().cloned().collect::<BTreeSet<_>>(), want);
}

fn expected_texts(ns: &BTreeSet<u64>) -> BTreeSet<String> {
    ns.iter().map(|n| format!("{{\"n\": {n}}}")).collect()
}

/// No batch reads a record of a child shard before (or in) the last batch
/// that reads one of its `parents`, and some batch reads a child.
fn assert_children_after_parents(batches: &[serde_json::Value], parents: &[String]) {
    let read = |x: &serde_json::Value| -> Vec<String> {
        x["splits"]
            .as_array()
            .unwrap()
            .iter()
            // Ranges with records (marks read nothing).
            .filter(|s| s["end"].as_i64() > s["start"].as_i64())
            .map(|s| s["split"].as_str().unwrap().to_string())
            .collect()
    };
    let last_parent = batches
        .iter()
        .filter(|x| read(x).iter().any(|s| parents.contains(s)))
        .map(|x| x["batch_id"].as_u64().unwrap())
        .max()
        .unwrap();
    let children: Vec<u64> = batches
        .iter()
        .filter(|x| read(x).iter().any(|s| !parents.contains(s)))
        .map(|x| x["batch_id"].as_u64().unwrap())
        .collect();
    assert!(!children.is_empty(), "no child shard was read: {batches:?}");
    assert!(
        children.iter().all(|c| *c > last_parent),
        "a child was read before its parents' end (their last batch {last_parent}, children in {children:?})"
    );
}

/// A Kinesis shard split while the stream runs: the parent is read to its
/// end before either child starts, and every record arrives once.
#[test]
fn a_kinesis_shard_split_mid_stream_loses_and_repeats_nothing() {
    let (stream, tmp, job) = kinesis_setup("split", 1);
    let (out, ck, log) = kinesis_paths(&tmp);
    changes::put_records(&stream, &numbered(0, 150)).unwrap();
    let args = kinesis_args(&job, &ck);
    let mut child = spawn(&args, &log);
    wait_rows(&out, "n", 60, &mut child, "before the split");
    let parent = changes::split_first_shard(&stream).unwrap();
    changes::put_records(&stream, &numbered(150, 300)).unwrap();
    wait_rows(&out, "n", 300, &mut child, "after the split");
    stop(child);

    assert_each_once(&out, 0..300);

    assert_children_after_parents(&batches(&log), &[parent]);
}

/// Two Kinesis shards merged while the stream is down after a SIGKILL
/// mid-batch: the restart re-runs the killed batch, reads both parents to
/// their ends before the merged child, and every record arrives once.
#[test]
fn a_kinesis_merge_after_a_sigkill_loses_and_repeats_nothing() {
    let (stream, tmp, job) = kinesis_setup("merge", 2);
    let (out, ck, log) = kinesis_paths(&tmp);
    changes::put_records(&stream, &numbered(0, 200)).unwrap();
    let args = kinesis_args(&job, &ck);
    let (killed_at, staged) = kill_mid_write(spawn(&args, &log), &ck, &out);
    assert!(
        !entries(&ck.join("commits")).contains(&killed_at),
        "the kill landed after the commit of {killed_at}"
    );
    assert!(!staged.is_empty());
    let (a, b) = changes::merge_open_shards(&stream).unwrap();
    changes::put_records(&stream, &numbered(200, 300)).unwrap();
    let mut second = spawn(&args, &log);
    wait_rows(&out, "n", 300, &mut second, "after the merge");
    stop(second);

    assert_each_once(&out, 0..300);
    let batches = batches(&log);
    let killed_id: u64 = killed_at.trim_end_matches(".json").parse().unwrap();
    let rerun = batches
        .iter()
        .find(|x| x["batch_id"].as_u64() == Some(killed_id))
        .unwrap_or_else(|| panic!("batch {killed_id} never committed"));
    assert_eq!(rerun["resumed"], true, "{rerun}");
    assert_children_after_parents(&batches, &[a, b]);
    // And the accounts: per shard, records read = rows written (a write
    // found committed by the re-run, without `_SUCCESS` naming it, has no
    // counts).
    for x in &batches {
        for acc in x["accounts"].as_array().unwrap() {
            if x["resumed"] == true && acc["written"].is_null() {
                continue;
            }
            assert_eq!(acc["read"], acc["written"], "{x}");
        }
    }
}

/// A Kinesis stream from `latest` SIGKILLed after its first look at the
/// shard and before any record arrived: the restart goes on from when the
/// first process started (`AT_TIMESTAMP`), so what arrived while it was
/// down is read, and nothing from before it started.
#[test]
fn a_latest_kinesis_stream_killed_before_its_first_record_loses_nothing() {
    let stream = changes::create_stream("latestkill", 1).unwrap();
    latest_killed_before_its_first_record(
        &format!("STORED AS KINESIS LOCATION 'kinesis://{stream}'"),
        "n",
        false,
        |from, to| changes::put_records(&stream, &numbered(from, to)).unwrap(),
    );
}

/// DynamoDB Streams has no iterator by time: the restart reads from the
/// trim horizon and skips what was created before the recorded start.
#[test]
fn a_latest_dynamodb_stream_killed_before_its_first_record_loses_nothing() {
    let table =
        changes::create_chat_table("latestkill", Some(StreamViewType::NewAndOldImages)).unwrap();
    latest_killed_before_its_first_record(
        &format!("STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://{table}'"),
        "\"UID\"",
        true,
        |from, to| changes::load_chat(&table, from, to, 2_000).unwrap(),
    );
}

/// Records 0..20 are there before a `latest` stream starts; it is SIGKILLed
/// once its start is recorded and before anything was read; 20..50 arrive
/// while it is down. The restart reads exactly those 30, once. `column` is
/// the source's number column, written out as `n`. With `rounded` (DynamoDB
/// Streams, which skips by creation time rounded down to the minute), the
/// records before the start may be read too, once.
fn latest_killed_before_its_first_record(
    source: &str,
    column: &str,
    rounded: bool,
    put: impl Fn(u64, u64),
) {
    put(0, 20);
    let tmp = tempfile::tempdir().unwrap();
    let (out, ck) = (tmp.path().join("out"), tmp.path().join("ck"));
    let job = tmp.path().join("latest.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE k ({column} BIGINT NOT NULL) {source} \
             OPTIONS ('starting_position' 'latest');\n\
             COPY (SELECT {column} AS n, shard_id, sequence_number FROM k WHERE _error IS NULL) TO '{}' STORED AS JSON;",
            out.display()
        ),
    )
    .unwrap();
    let mut first = spawn(&kinesis_args(&job, &ck), &tmp.path().join("first.jsonl"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while entries(&ck.join("starts")).is_empty() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the stream exited before it started"
        );
        assert!(Instant::now() < deadline, "no start recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&first, "-KILL");
    first.wait().unwrap();
    assert!(entries(&ck.join("commits")).is_empty());
    put(20, 50);
    let (ok, text) = stream_with(&job, &ck, "--available-now", &[]);
    assert!(ok, "{text}");
    let mut counts = changes::ndjson_counts(&out, "n").unwrap();
    assert_eq!(counts.remove("__duplicates__"), Some(0));
    let seen: BTreeSet<u64> = counts.keys().map(|k| k.parse().unwrap()).collect();
    assert!(
        counts.values().all(|c| *c == 1),
        "a record twice: {counts:?}"
    );
    // What arrived while it was down is all there. Before the start, only
    // what shares its creation time's rounding may be (DynamoDB).
    let expected: BTreeSet<u64> = (20..50).collect();
    assert!(
        seen.is_superset(&expected),
        "lost: {:?}",
        expected.difference(&seen)
    );
    assert!(seen.iter().all(|n| *n < 50), "{seen:?}");
    if !rounded {
        assert_eq!(seen, expected);
    }
}

fn stream_once(job: &Path, ck: &Path, env: &[(&str, &str)]) -> (bool, String) {
    stream_with(job, ck, "--once", env)
}

fn stream_with(job: &Path, ck: &Path, trigger: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = sluice().unwrap();
    cmd.arg("stream")
        .arg(job)
        .arg("--checkpoint")
        .arg(ck)
        .args(trigger.split(' '))
        .args(["--output", "json"]);
    for (k, v) in env {
        // An empty value removes the variable.
        match v {
            &"" => cmd.env_remove(k),
            v => cmd.env(k, v),
        };
    }
    let o = run_with_timeout(&mut cmd, Duration::from_secs(120)).unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A table without a stream, a missing table, a missing Kinesis stream, a
/// stream of keys only under image columns and an unreachable DynamoDB or
/// Kinesis endpoint each fail the run with one line naming it.
#[test]
fn bad_change_sources_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = changes::create_chat_table("nostream", None).unwrap();
    let keys_only = changes::create_chat_table("keysonly", Some(StreamViewType::KeysOnly)).unwrap();
    let streamed =
        changes::create_chat_table("collide", Some(StreamViewType::NewAndOldImages)).unwrap();
    changes::load_chat(&streamed, 0, 3, 100).unwrap();
    let job = |name: &str, table: &str| {
        let path = tmp.path().join(format!("{name}.sql"));
        std::fs::write(
            &path,
            format!(
                "CREATE EXTERNAL TABLE c {table} OPTIONS ('request_timeout_ms' '1000');\n\
                 COPY (SELECT * FROM c) TO '{}' STORED AS JSON;",
                tmp.path().join(name).display()
            ),
        )
        .unwrap();
        path
    };
    let cases = [
        (
            job(
                "nostream",
                &format!("STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://{plain}'"),
            ),
            vec![],
            vec![plain.as_str(), "has no stream enabled"],
        ),
        (
            job(
                "missing",
                "STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://no-such-table'",
            ),
            vec![],
            vec!["no-such-table", "ResourceNotFoundException"],
        ),
        (
            job(
                "nokinesis",
                "STORED AS KINESIS LOCATION 'kinesis://no-such-stream'",
            ),
            vec![],
            vec!["no-such-stream", "ResourceNotFoundException"],
        ),
        (
            job(
                "unreachable",
                "STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://chat'",
            ),
            vec![("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")],
            vec!["dynamodb://chat", "DescribeTable", "gave up after"],
        ),
        (
            job(
                "unreachablekinesis",
                "STORED AS KINESIS LOCATION 'kinesis://chat'",
            ),
            vec![("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:9")],
            vec!["kinesis://chat", "ListShards", "gave up after"],
        ),
        // No credentials: the call is not retried, and `--once` fails.
        (
            job(
                "nocredentials",
                "STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://chat'",
            ),
            vec![("AWS_ACCESS_KEY_ID", ""), ("AWS_SECRET_ACCESS_KEY", "")],
            vec![
                "dynamodb://chat",
                "DescribeTable",
                "no providers in chain provided credentials",
            ],
        ),
        // A declared column that is one of the table's own.
        (
            job(
                "collide",
                &format!(
                    "(event_name VARCHAR) STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://{streamed}'"
                ),
            ),
            vec![],
            vec!["column event_name is one of the DynamoDB stream table's own columns"],
        ),
        // A stream of keys only under columns the images would give: every
        // row's would be null.
        (
            job(
                "keysonly",
                &format!(
                    "(\"LivestreamID\" VARCHAR NOT NULL, \"UID\" BIGINT NOT NULL, message VARCHAR) STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://{keys_only}'"
                ),
            ),
            vec![],
            vec![
                keys_only.as_str(),
                "StreamViewType KEYS_ONLY",
                "column(s) message would be null",
            ],
        ),
    ];
    let failed_saying = |job: &Path, (ok, text): (bool, String), want: &[&str]| {
        assert!(!ok, "{job:?} succeeded: {text}");
        for w in want {
            assert!(text.contains(w), "{job:?}: no '{w}' in: {text}");
        }
        assert!(!text.contains("panicked"), "{text}");
        text
    };
    for (i, (job, env, want)) in cases.iter().enumerate() {
        failed_saying(
            job,
            stream_once(job, &tmp.path().join(format!("ck{i}")), env),
            want,
        );
    }
    // No retry gives a table a stream or a missing stream shards: a stream
    // running `--every` ends on them too (at once, not after retries).
    for i in [0, 1, 2, 7] {
        let (job, env, want) = &cases[i];
        let ck = tmp.path().join(format!("every{i}"));
        let text = failed_saying(job, stream_with(job, &ck, "--every 1s", env), want);
        assert!(!text.contains("retrying"), "{job:?} was retried: {text}");
    }
    // An unreachable endpoint and missing credentials may come back: those
    // a stream running `--every` retries until it is stopped.
    for i in [3, 4, 5] {
        let (job, env, want) = &cases[i];
        let err_path = tmp.path().join(format!("retried{i}.err"));
        let mut cmd = sluice().unwrap();
        cmd.arg("stream")
            .arg(job)
            .arg("--checkpoint")
            .arg(tmp.path().join(format!("retried{i}")))
            .args(["--every", "1s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap());
        for (k, v) in env {
            match v {
                &"" => cmd.env_remove(k),
                v => cmd.env(k, v),
            };
        }
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        let err = loop {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            if err.contains("retrying in") || Instant::now() > deadline {
                break err;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        signal(&child, "-TERM");
        let mut child = child;
        let status = child.wait().unwrap();
        assert!(
            err.contains("retrying in"),
            "{job:?} was not retried: {err}"
        );
        assert!(want.iter().all(|w| err.contains(w)), "{job:?}: {err}");
        assert!(
            status.success(),
            "{job:?} did not stop cleanly: {status}: {err}"
        );
    }
}

/// `max_filtered_records`: a batch whose records are not all written or
/// dead-lettered ends the run before anything of it is committed, naming
/// the shard and the counts; a job whose writes cannot count by shard is
/// refused; the fixed job takes the batch up and writes every record once.
#[test]
fn a_batch_that_does_not_account_for_its_records_commits_nothing() {
    let stream = changes::create_stream("accounted", 1).unwrap();
    let records: Vec<(String, Vec<u8>)> = (0..10)
        .map(|n| (format!("k{n}"), format!(r#"{{"n":{n}}}"#).into_bytes()))
        .collect();
    changes::put_records(&stream, &records).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let job = tmp.path().join("job.sql");
    let write_job = |filter: &str, columns: &str| {
        std::fs::write(
            &job,
            format!(
                "CREATE EXTERNAL TABLE k (n BIGINT) STORED AS KINESIS LOCATION 'kinesis://{stream}' \
                 OPTIONS ('max_filtered_records' '0');\n\
                 COPY (SELECT {columns} FROM k WHERE _error IS NULL {filter}) TO '{}' STORED AS JSON;",
                out.display()
            ),
        )
        .unwrap();
    };
    let ck = tmp.path().join("ck");
    // Two of the ten dropped by the WHERE.
    write_job("AND n % 5 <> 0", "n, shard_id");
    let (ok, text) = stream_with(&job, &ck, "--every 1s", &[]);
    assert!(!ok, "{text}");
    for want in [
        "source k",
        "2 of its records were neither written nor dead-lettered, more than max_filtered_records (0)",
        "10 records read, 8 written, 0 dead-lettered",
        "no file of the batch was committed",
    ] {
        assert!(text.contains(want), "no '{want}' in: {text}");
    }
    assert!(!text.contains("retrying in"), "{text}");
    assert!(walk(&out).is_empty(), "{:?}", walk(&out));
    // Rows that do not name their shard cannot be accounted for.
    write_job("", "n");
    let (ok, text) = stream_once(&job, &ck, &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("does not: select shard_id into it"), "{text}");
    assert!(walk(&out).is_empty(), "{:?}", walk(&out));
    // Fixed: the changed job takes the batch up; every record once.
    write_job("", "n, shard_id");
    let (ok, text) = stream_once(&job, &ck, &[]);
    assert!(ok, "{text}");
    let mut got: Vec<i64> = walk(&out)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                        .as_i64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    got.sort();
    assert_eq!(got, (0..10).collect::<Vec<i64>>());
}

/// DynamoDB's Kinesis streaming destination: records of that JSON shape,
/// read with `format 'dynamodb'`, give the same columns as the Streams
/// source, typed columns from the new (or, for a REMOVE, old) image, and a
/// record that is not a change goes to `_error`.
#[test]
fn kinesis_records_from_dynamodb_decode_to_the_change_columns() {
    let stream = changes::create_stream("ddbdest", 1).unwrap();
    let change = |name: &str, uid: u64, image: &str| {
        format!(
            r#"{{"awsRegion":"us-east-1","eventID":"e{uid}","eventName":"{name}","tableName":"chat","recordFormat":"application/json","dynamodb":{{"ApproximateCreationDateTime":1764100000000,"Keys":{{"LivestreamID":{{"S":"live-1"}},"UID":{{"N":"{uid}"}}}},{image},"SizeBytes":40}},"eventSource":"aws:dynamodb"}}"#
        )
        .into_bytes()
    };
    let records = vec![
        (
            "a".to_string(),
            change(
                "INSERT",
                1,
                r#""NewImage":{"LivestreamID":{"S":"live-1"},"UID":{"N":"1"},"message":{"S":"hi"},"avatar":{"B":"abcd"}}"#,
            ),
        ),
        (
            "d".to_string(),
            change(
                "INSERT",
                3,
                r#""NewImage":{"LivestreamID":{"S":"live-1"},"UID":{"N":"3"},"avatar":{"B":"not base64!"}}"#,
            ),
        ),
        (
            "b".to_string(),
            change(
                "REMOVE",
                2,
                r#""OldImage":{"LivestreamID":{"S":"live-1"},"UID":{"N":"2"},"message":{"S":"bye"}}"#,
            ),
        ),
        ("c".to_string(), b"not a change".to_vec()),
    ];
    changes::put_records(&stream, &records).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (out, bad) = (tmp.path().join("out"), tmp.path().join("bad"));
    let job = tmp.path().join("dest.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE c (\"LivestreamID\" VARCHAR NOT NULL, \"UID\" BIGINT NOT NULL, message VARCHAR, avatar BYTEA) \
             STORED AS KINESIS LOCATION 'kinesis://{stream}' OPTIONS ('format' 'dynamodb', 'max_bad_records' '5');\n\
             COPY (SELECT event_name, \"UID\", message, keys, approximate_creation_time, encode(avatar, 'hex') AS avatar_hex FROM c WHERE _error IS NULL) TO '{}' STORED AS JSON;\n\
             COPY (SELECT sequence_number, _error, data_text, approximate_creation_time FROM c WHERE _error IS NOT NULL) TO '{}' STORED AS JSON;",
            out.display(),
            bad.display()
        ),
    )
    .unwrap();
    let (ok, text) = stream_once(&job, &tmp.path().join("ck"), &[]);
    assert!(ok, "{text}");
    let rows: Vec<serde_json::Value> = walk(&out)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let insert = rows.iter().find(|r| r["event_name"] == "INSERT").unwrap();
    assert_eq!(insert["UID"], 1);
    assert_eq!(insert["message"], "hi");
    assert_eq!(insert["keys"], r#"{"LivestreamID":"live-1","UID":1}"#);
    assert_eq!(insert["approximate_creation_time"], "2025-11-25T19:46:40Z");
    // The image's base64 "abcd" is the bytes 69 b7 1d (Arrow alone would
    // have read the hex digits ab cd).
    assert_eq!(insert["avatar_hex"], "69b71d");
    let remove = rows.iter().find(|r| r["event_name"] == "REMOVE").unwrap();
    assert_eq!(remove["message"], "bye");
    let bad_rows: Vec<String> = walk(&bad)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(bad_rows.len(), 2, "{bad_rows:?}");
    // The record that is not a change keeps its data and arrival time for
    // the error output; one that decoded but does not fit has no data_text.
    let not_change: serde_json::Value = bad_rows
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
        .find(|r| {
            r["_error"]
                .as_str()
                .unwrap()
                .contains("the data is not JSON")
        })
        .unwrap_or_else(|| panic!("{bad_rows:?}"));
    assert_eq!(not_change["data_text"], "not a change", "{not_change}");
    assert!(
        not_change["approximate_creation_time"]
            .as_str()
            .is_some_and(|t| t.starts_with("20")),
        "{not_change}"
    );
    assert!(
        bad_rows
            .iter()
            .any(|r| r.contains("field avatar: the binary value is not base64")),
        "{bad_rows:?}"
    );
    // Two bad records over a limit of one: the batch fails saying so, and
    // nothing of it is visible.
    let strict = tmp.path().join("strict.sql");
    let strict_out = tmp.path().join("strict-out");
    std::fs::write(
        &strict,
        std::fs::read_to_string(&job)
            .unwrap()
            .replace("'max_bad_records' '5'", "'max_bad_records' '1'")
            .replace(
                &out.display().to_string(),
                &strict_out.display().to_string(),
            )
            .replace(
                &bad.display().to_string(),
                &tmp.path().join("strict-bad").display().to_string(),
            ),
    )
    .unwrap();
    let (ok, text) = stream_once(&strict, &tmp.path().join("ck-strict"), &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("2 bad records in this batch's range, over max_bad_records 1"),
        "{text}"
    );
    assert!(ndjson_rows(&strict_out).is_empty());
    // The same records every time: under `--every` too the run ends,
    // instead of retrying a batch that cannot pass.
    let (ok, text) = stream_with(&strict, &tmp.path().join("ck-every"), "--every 1s", &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("holds more bad records than max_bad_records allows; no retry mends this")
            && text.contains("2 bad records in this batch's range, over max_bad_records 1"),
        "{text}"
    );
    assert!(!text.contains("retrying in"), "{text}");
    assert!(ndjson_rows(&strict_out).is_empty());
}

/// The sink's item mapping read the other way from a stream's images:
/// items `sluice run` wrote through a typed `STORED AS DYNAMODB` table
/// (decimals, timestamps, lists, a number set, booleans, doubles) come out
/// of the table's change stream into the same declared columns.
#[test]
fn stream_images_read_into_the_sinks_typed_columns() {
    let table = changes::create_chat_table("typed", Some(StreamViewType::NewAndOldImages)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let columns = "\"LivestreamID\" VARCHAR NOT NULL, \"UID\" BIGINT NOT NULL, score DOUBLE, ok BOOLEAN, \
                   price DECIMAL(10, 2), at TIMESTAMP, tags VARCHAR[], nums BIGINT[]";
    let write = tmp.path().join("write.sql");
    std::fs::write(
        &write,
        format!(
            "CREATE EXTERNAL TABLE t ({columns}) STORED AS DYNAMODB LOCATION 'dynamodb://{table}' \
               OPTIONS ('write.percent' '100', 'write.set_columns' 'nums');\n\
             INSERT INTO t SELECT 'live-1', id, CAST(id AS DOUBLE) / 4, id % 2 = 0, \
               CAST(id AS DECIMAL(10, 2)) / 100, CAST(1700000000 + id AS TIMESTAMP), \
               make_array('a', CAST(id AS VARCHAR)), make_array(id, 1) FROM range(0, 10);"
        ),
    )
    .unwrap();
    let o = run_with_timeout(
        sluice().unwrap().arg("run").arg(&write),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let job = tmp.path().join("read.sql");
    let out = tmp.path().join("out");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE c ({columns}) STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://{table}';\n\
             COPY (SELECT \"UID\", score, ok, CAST(price AS VARCHAR) AS price, CAST(at AS VARCHAR) AS at, \
                   array_to_string(tags, ',') AS tags, array_to_string(array_sort(nums), ',') AS nums \
                   FROM c WHERE _error IS NULL) TO '{}' STORED AS JSON;",
            out.display()
        ),
    )
    .unwrap();
    let (ok, text) = stream_once(&job, &tmp.path().join("ck"), &[]);
    assert!(ok, "{text}");
    let rows = ndjson_rows(&out);
    assert_eq!(rows.len(), 10, "{rows:?}");
    let row = rows.iter().find(|r| r["UID"] == 7).unwrap();
    assert_eq!(row["score"], 1.75, "{row}");
    assert_eq!(row["ok"], false, "{row}");
    assert_eq!(row["price"], "0.07", "{row}");
    assert_eq!(row["at"], "2023-11-14T22:13:27", "{row}");
    assert_eq!(row["tags"], "a,7", "{row}");
    assert_eq!(row["nums"], "1,7", "{row}");
}

/// `--available-now` on a change stream: what is there at the start, in
/// capped batches, then exit 0; a second run takes only what came since.
#[test]
fn available_now_drains_a_kinesis_stream_in_capped_batches_and_exits() {
    let stream = changes::create_stream("drain", 2).unwrap();
    changes::put_records(&stream, &numbered(0, 150)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (out, ck) = (tmp.path().join("out"), tmp.path().join("ck"));
    let job = kinesis_job(tmp.path(), &stream, &out);
    let (ok, text) = stream_with(&job, &ck, "--available-now", &[]);
    assert!(ok, "{text}");
    let batches = batch_lines(&text);
    // 150 records, at most 60 a batch.
    assert!(batches.len() >= 3, "{text}");
    assert!(
        batches
            .iter()
            .all(|b| b["input_rows"].as_u64().unwrap() <= 60),
        "{text}"
    );
    let mut counts = changes::ndjson_counts(&out, "n").unwrap();
    assert_eq!(counts.remove("__duplicates__"), Some(0));
    assert_eq!(counts.len(), 150);
    changes::put_records(&stream, &numbered(150, 170)).unwrap();
    let (ok, text) = stream_with(&job, &ck, "--available-now", &[]);
    assert!(ok, "{text}");
    let mut counts = changes::ndjson_counts(&out, "n").unwrap();
    assert_eq!(counts.remove("__duplicates__"), Some(0));
    assert_eq!(counts.len(), 170);
    assert!(counts.values().all(|c| *c == 1));
}

/// A Kinesis stream of 40 records `{"n": n, "amount": "<10 n>"}`, but for
/// n 7 and 31, whose amounts do not cast to a number.
fn poison_stream(hint: &str) -> String {
    let stream = changes::create_stream(hint, 2).unwrap();
    let amount = |n: u64| match n {
        7 => "abc".to_string(),
        31 => "12x".to_string(),
        n => (n * 10).to_string(),
    };
    let records: Vec<(String, Vec<u8>)> = (0..40)
        .map(|n| {
            let data = format!("{{\"n\": {n}, \"amount\": \"{}\"}}", amount(n));
            (format!("key-{n}"), data.into_bytes())
        })
        .collect();
    changes::put_records(&stream, &records).unwrap();
    stream
}

/// A job casting each amount into `out`, records with `_error` into `bad`.
fn poison_job(job: &Path, stream: &str, out: &Path, bad: &Path, limit: u64, batch: u64) {
    std::fs::write(
        job,
        format!(
            "CREATE EXTERNAL TABLE k (n BIGINT NOT NULL, amount VARCHAR) STORED AS KINESIS \
             LOCATION 'kinesis://{stream}' OPTIONS ('max_records_per_batch' '{batch}', 'max_failing_records' '{limit}');\n\
             COPY (SELECT n, CAST(amount AS BIGINT) AS amount, shard_id FROM k WHERE _error IS NULL) \
             TO '{}' STORED AS JSON;\n\
             COPY (SELECT shard_id, sequence_number, data_text, _error FROM k WHERE _error IS NOT NULL) \
             TO '{}' STORED AS JSON;",
            out.display(),
            bad.display()
        ),
    )
    .unwrap();
}

/// SIGKILL while batches of records the job fails on are searched and run
/// again (small batches: some searched, some in flight), then a restart:
/// every record once, in the output or the error output, never both.
#[test]
fn a_sigkill_while_failing_records_are_handled_loses_and_repeats_nothing() {
    let stream = poison_stream("poisonkill");
    let tmp = tempfile::tempdir().unwrap();
    let (out, bad, ck) = (
        tmp.path().join("out"),
        tmp.path().join("bad"),
        tmp.path().join("ck"),
    );
    let job = tmp.path().join("poison.sql");
    poison_job(&job, &stream, &out, &bad, 5, 6);
    let mut args = kinesis_args(&job, &ck);
    args.extend(["--batch-timeout".to_string(), "60s".to_string()]);
    let log = tmp.path().join("batches.jsonl");
    let child = spawn(&args, &log);
    kill_mid_batch(child, &ck);
    // The killed process's claim lapses (`--lock-ttl 3s`).
    std::thread::sleep(Duration::from_secs(4));
    let (ok, text) = stream_with(&job, &ck, "--available-now --lock-ttl 3s", &[]);
    assert!(ok, "{text}");
    let ns: Vec<u64> = ndjson_rows(&out)
        .iter()
        .map(|r| r["n"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = (0..40).filter(|n| ![7, 31].contains(n)).collect();
    let mut sorted = ns.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want, "{text}");
    assert_eq!(poison_texts(&bad), POISON, "{text}");
}

/// A record the job's SQL cannot take (a cast of `amount`) would fail its
/// batch on every retry. The stream finds it by running the job's queries
/// over halves of the batch, and runs the batch again with it read as a
/// bad record: the job's error output takes it (with why, and its
/// sequence number in the batch report), everything else is written once,
/// on a cluster. With `max_failing_records` 0 the run ends instead, naming
/// the record, even under `--every`; started again with a raised limit,
/// the changed job takes the batch up.
#[test]
fn records_the_job_fails_on_go_to_its_error_output_or_end_the_run() {
    let stream = poison_stream("poison");
    let tmp = tempfile::tempdir().unwrap();
    let (out, bad) = (tmp.path().join("out"), tmp.path().join("bad"));
    let job = tmp.path().join("poison.sql");
    let write_job = |limit: u64| poison_job(&job, &stream, &out, &bad, limit, 60);
    write_job(5);
    // On a scheduler and two executors: the windows and the rejected
    // records travel in the plan to the executors that read the shards.
    let cluster = sluice_test_support::Cluster::start(2, 2).unwrap();
    let (ok, text) = stream_with(
        &job,
        &tmp.path().join("ck"),
        &format!("--available-now --scheduler {}", cluster.endpoint),
        &[("SLUICE_COORDINATOR", &cluster.coordinator)],
    );
    assert!(ok, "{text}\n{}", cluster.scheduler_log());
    drop(cluster);
    // Every other record once, its amount cast.
    let rows = ndjson_rows(&out);
    let got: BTreeSet<(u64, u64)> = rows
        .iter()
        .map(|r| (r["n"].as_u64().unwrap(), r["amount"].as_u64().unwrap()))
        .collect();
    let want: BTreeSet<(u64, u64)> = (0..40)
        .filter(|n| ![7, 31].contains(n))
        .map(|n| (n, n * 10))
        .collect();
    assert_eq!((rows.len(), got), (38, want), "{text}");
    // The two in the error output, saying why.
    let bad_rows = ndjson_rows(&bad);
    assert_eq!(bad_rows.len(), 2, "{bad_rows:?}");
    assert_eq!(poison_texts(&bad), POISON);
    for r in &bad_rows {
        let why = r["_error"].as_str().unwrap();
        assert!(
            why.contains("the job failed on this record alone: ")
                && why.contains("poison.sql:2: statement failed: Cannot cast string")
                && !why.contains("Job "),
            "{why}"
        );
    }
    // The batch reports them by sequence number, and its accounts balance.
    let batches = batch_lines(&text);
    let rejected: Vec<serde_json::Value> = batches
        .iter()
        .flat_map(|b| b["rejected"].as_array().cloned().unwrap_or_default())
        .collect();
    let named: BTreeSet<String> = rejected
        .iter()
        .map(|r| r["record"].as_str().unwrap().to_string())
        .collect();
    let sequences: BTreeSet<String> = bad_rows
        .iter()
        .map(|r| format!("sequence number {}", r["sequence_number"].as_str().unwrap()))
        .collect();
    assert_eq!(named, sequences, "{text}");
    for b in &batches {
        for a in b["accounts"].as_array().unwrap() {
            let n = |k: &str| a[k].as_u64().unwrap_or(0);
            assert_eq!(n("read"), n("written") + n("dead_lettered"), "{a}");
        }
    }
    // No bad record allowed: the run ends naming the first, under `--every`
    // too, and writes nothing.
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&bad).unwrap();
    write_job(0);
    let (ok, text) = stream_with(&job, &tmp.path().join("ck-strict"), "--every 1s", &[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("failed on 1 of its records alone")
            && text.contains("k split shardId-")
            && text.contains("sequence number ")
            && text.contains("Cannot cast string '")
            && text.contains("more than max_failing_records (0) of table k"),
        "{text}"
    );
    assert!(!text.contains("retrying in"), "{text}");
    assert!(ndjson_rows(&out).is_empty(), "{text}");
    // The remedy it names: the changed job (a raised limit) takes the batch
    // up on the next start, though the batch was planned under the old one.
    write_job(5);
    let (ok, text) = stream_with(&job, &tmp.path().join("ck-strict"), "--available-now", &[]);
    assert!(ok, "{text}");
    assert_eq!(ndjson_rows(&out).len(), 38, "{text}");
    assert_eq!(ndjson_rows(&bad).len(), 2, "{text}");
}

/// A table whose stream was turned off and on again has a new stream: a
/// checkpoint of the old one fails naming both, instead of reading the new
/// one from positions that do not belong to it.
#[test]
fn a_replaced_table_stream_fails_naming_both_streams() {
    use aws_sdk_dynamodb::types::StreamSpecification;
    let table =
        changes::create_chat_table("replaced", Some(StreamViewType::NewAndOldImages)).unwrap();
    changes::load_chat(&table, 0, 30, 1_000).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE c STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://{table}';\n\
             COPY (SELECT sequence_number FROM c) TO '{}' STORED AS JSON;",
            tmp.path().join("out").display()
        ),
    )
    .unwrap();
    let ck = tmp.path().join("ck");
    let (ok, text) = stream_once(&job, &ck, &[]);
    assert!(ok, "{text}");
    // A stream running meanwhile notices too (it asks the table again every
    // 10 plans), instead of idling on the old stream as caught up.
    let (live_out, live_err) = (tmp.path().join("live.out"), tmp.path().join("live.err"));
    let mut live = sluice()
        .unwrap()
        .arg("stream")
        .arg(&job)
        .arg("--checkpoint")
        .arg(tmp.path().join("ck-live"))
        .args(["--every", "1s", "--output", "json"])
        .stdout(std::fs::File::create(&live_out).unwrap())
        .stderr(std::fs::File::create(&live_err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while batches(&live_out).is_empty() {
        assert!(Instant::now() < deadline, "the live stream never committed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = changes::dynamodb().await;
        for on in [false, true] {
            let mut spec = StreamSpecification::builder().stream_enabled(on);
            if on {
                spec = spec.stream_view_type(StreamViewType::NewAndOldImages);
            }
            client
                .update_table()
                .table_name(&table)
                .stream_specification(spec.build().unwrap())
                .send()
                .await
                .unwrap();
        }
    });
    let (ok, text) = stream_once(&job, &ck, &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("the table's stream changed"), "{text}");
    // ...and ends: what was written between the streams is lost, and no
    // retry brings it back.
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = live.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = live.kill();
            let _ = live.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let noticed = std::fs::read_to_string(&live_err).unwrap_or_default();
    assert!(
        noticed.contains("the table's stream changed"),
        "the running stream did not notice: {noticed}"
    );
    assert!(
        status.is_some_and(|s| !s.success()),
        "the running stream did not end with a failure ({status:?}): {noticed}"
    );
}

/// Every NDJSON row under `dir`.
/// The two records of the poison stream the job fails on, as they came.
const POISON: [&str; 2] = [
    r#"{"n": 31, "amount": "12x"}"#,
    r#"{"n": 7, "amount": "abc"}"#,
];

/// The error output's records (`data_text`), sorted.
fn poison_texts(bad: &Path) -> Vec<String> {
    let mut texts: Vec<String> = ndjson_rows(bad)
        .iter()
        .map(|r| r["data_text"].as_str().unwrap().to_string())
        .collect();
    texts.sort();
    texts
}

fn ndjson_rows(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if p.is_dir() {
            out.extend(ndjson_rows(&p));
        } else if name.ends_with(".json") && !name.starts_with('_') {
            let text = std::fs::read_to_string(&p).unwrap();
            out.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
        }
    }
    out
}

/// Snapshot then stream: the first batch scans the table (every item once,
/// `SNAPSHOT`), the stream's records from before the scan are skipped (by
/// sequence number: DynamoDB Local rounds creation times to the minute),
/// and what changes after it arrives as changes: no gap, and no item both
/// as a snapshot row and as its own old INSERT. A second run goes on from
/// the checkpoint without scanning again.
#[test]
fn a_snapshot_then_the_stream_leaves_no_gap_at_the_switch() {
    let (table, tmp, job, out) = snapshot_job("snapshot");
    let ck = tmp.path().join("ck");
    let (ok, text) = stream_with(&job, &ck, "--available-now", &[]);
    assert!(ok, "{text}");
    let rows = ndjson_rows(&out);
    assert_eq!(
        uids_of("SNAPSHOT", &rows),
        (0..300).collect::<Vec<_>>(),
        "{text}"
    );
    assert!(
        rows.iter()
            .filter(|r| r["event_name"] == "SNAPSHOT")
            .all(|r| r["shard_id"] == "snapshot" && r["message"].as_str().is_some())
    );
    assert_eq!(
        uids_of("INSERT", &rows),
        Vec::<u64>::new(),
        "old records skipped"
    );

    changes::load_chat(&table, 300, 400, 2_000).unwrap();
    changes::modify_chat(&table, 0..20).unwrap();
    let (ok, text) = stream_with(&job, &ck, "--available-now", &[]);
    assert!(ok, "{text}");
    let rows = ndjson_rows(&out);
    assert_eq!(uids_of("SNAPSHOT", &rows).len(), 300, "scanned again");
    assert_eq!(uids_of("INSERT", &rows), (300..400).collect::<Vec<_>>());
    assert_eq!(uids_of("MODIFY", &rows), (0..20).collect::<Vec<_>>());
}

/// Snapshot then stream while a loader writes: items are inserted and
/// modified from before the stream starts until after its first run ends,
/// so writes land before the cut, during the scan and after it. A consumer
/// that keeps the newest row per key (the snapshot first, then changes by
/// sequence number) ends with exactly the table: no item or change lost,
/// no item scanned twice, no change delivered twice.
#[test]
fn writes_during_a_snapshot_are_neither_lost_nor_delivered_twice() {
    let (table, tmp, job, out) = snapshot_job("snapwrite");
    changes::load_chat(&table, 300, 325, 2_000).unwrap();
    let ck = tmp.path().join("ck");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (table, stop) = (table.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && k < 300 {
                let from = 325 + 25 * k;
                changes::load_chat(&table, from, from + 25, 100).unwrap();
                // An old item and one just inserted, each changed once.
                changes::modify_chat(&table, [k * 7 % 325, from]).unwrap();
                k += 1;
            }
            k
        })
    };
    let (ok, first) = stream_with(&job, &ck, "--available-now", &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let chunks = writer.join().unwrap();
    assert!(ok, "{first}");
    let (ok, second) = stream_with(&job, &ck, "--available-now", &[]);
    assert!(ok, "{second}");

    let rows = ndjson_rows(&out);
    let snapshot = uids_of("SNAPSHOT", &rows);
    let inserts = uids_of("INSERT", &rows);
    let modifies = uids_of("MODIFY", &rows);
    let distinct = |v: &[u64]| v.iter().collect::<BTreeSet<_>>().len();
    assert_eq!(distinct(&snapshot), snapshot.len(), "an item scanned twice");
    assert_eq!(
        distinct(&inserts),
        inserts.len(),
        "an INSERT delivered twice"
    );
    assert_eq!(
        distinct(&modifies),
        modifies.len(),
        "a MODIFY delivered twice"
    );
    // The loader ran before, during and after the first run.
    assert!(snapshot.len() >= 325, "{} scanned", snapshot.len());
    assert!(!inserts.is_empty(), "no write after the snapshot's cut");
    // What the stream held before it started is in the scan, not repeated.
    assert!(inserts.iter().all(|u| *u >= 325), "an old INSERT delivered");
    eprintln!(
        "{chunks} chunks written; {} scanned, {} inserts, {} modifies",
        snapshot.len(),
        inserts.len(),
        modifies.len()
    );

    // The newest row per key: the snapshot first, then changes in order.
    let mut newest: std::collections::BTreeMap<u64, (u128, String)> = Default::default();
    for r in &rows {
        let uid = r["UID"].as_u64().unwrap();
        let seq = match r["event_name"].as_str() {
            Some("SNAPSHOT") => 0,
            _ => {
                r["sequence_number"]
                    .as_str()
                    .unwrap()
                    .parse::<u128>()
                    .unwrap()
                    + 1
            }
        };
        let message = r["message"].as_str().unwrap_or_default().to_string();
        let slot = newest.entry(uid).or_insert((seq, message.clone()));
        if seq >= slot.0 {
            *slot = (seq, message);
        }
    }
    let table_now = changes::chat_messages(&table).unwrap();
    assert_eq!(table_now.len() as u64, 325 + 25 * chunks);
    let kept: std::collections::BTreeMap<u64, String> =
        newest.into_iter().map(|(uid, (_, m))| (uid, m)).collect();
    let differ: Vec<_> = table_now
        .iter()
        .filter(|(uid, m)| kept.get(uid) != Some(m))
        .map(|(uid, m)| format!("{uid}: table {m:?}, stream {:?}", kept.get(uid)))
        .take(10)
        .collect();
    assert!(differ.is_empty(), "{differ:?}\n{first}");
    assert_eq!(kept.len(), table_now.len());
}

/// A chat table `name` of 300 items with a stream, and a snapshot job over
/// it writing `event_name`, `UID`, `message`, `shard_id` and
/// `sequence_number` as NDJSON: the
/// table, the job's directory, the job file and the output directory.
fn snapshot_job(name: &str) -> (String, tempfile::TempDir, PathBuf, PathBuf) {
    let table = changes::create_chat_table(name, Some(StreamViewType::NewAndOldImages)).unwrap();
    changes::load_chat(&table, 0, 300, 2_000).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let job = tmp.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE EXTERNAL TABLE c (\"UID\" BIGINT NOT NULL, message VARCHAR)
               STORED AS DYNAMODB_STREAM LOCATION 'dynamodb://{table}'
               OPTIONS ('snapshot' 'true', 'snapshot_segments' '3');
             COPY (SELECT event_name, \"UID\", message, shard_id, sequence_number FROM c)
               TO '{}/' STORED AS JSON;",
            out.display()
        ),
    )
    .unwrap();
    (table, tmp, job, out)
}

/// The sorted `UID`s of the rows whose `event_name` is `event` (a `UID`
/// twice appears twice).
fn uids_of(event: &str, rows: &[serde_json::Value]) -> Vec<u64> {
    let mut uids: Vec<u64> = rows
        .iter()
        .filter(|r| r["event_name"] == event)
        .map(|r| r["UID"].as_u64().unwrap())
        .collect();
    uids.sort_unstable();
    uids
}

/// A stream SIGKILLed while its snapshot batch is recorded in `offsets/`
/// but not committed: the restart re-runs that batch (`resumed`), scans
/// the table again and skips the same records: every item once, nothing
/// of the killed attempt visible.
#[test]
fn a_snapshot_killed_mid_batch_is_scanned_again_exactly_once() {
    let (_table, tmp, job, out) = snapshot_job("snapkill");
    let (ck, log) = (tmp.path().join("ck"), tmp.path().join("batches.jsonl"));
    let args: Vec<String> = [
        "stream",
        &job.display().to_string(),
        "--checkpoint",
        &ck.display().to_string(),
        "--every",
        "1s",
        "--output",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut first = spawn(&args, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while entries(&ck.join("offsets")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the snapshot batch was never planned"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(&first, "-KILL");
    first.wait().unwrap();
    assert!(
        entries(&ck.join("commits")).is_empty(),
        "the kill landed after the snapshot's commit"
    );
    let (ok, text) = stream_with(&job, &ck, "--available-now", &[]);
    assert!(ok, "{text}");
    let rerun = batch_lines(&text)
        .into_iter()
        .find(|b| b["batch_id"] == 0)
        .unwrap_or_else(|| panic!("batch 0 never committed: {text}"));
    assert_eq!(rerun["resumed"], true, "{rerun}");
    let rows = ndjson_rows(&out);
    assert_eq!(uids_of("SNAPSHOT", &rows), (0..300).collect::<Vec<_>>());
    assert_eq!(uids_of("INSERT", &rows), Vec::<u64>::new());
}

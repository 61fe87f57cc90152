//! Writes around one another: the output lock serialises writes to one
//! location (a second one fails naming the holder, or waits with
//! `write.lock_wait`), an append never loses a committed file to an
//! overwrite, a failed overwrite leaves the earlier output readable, `sluice
//! clean` leaves a live write alone, and roots and protected outputs are
//! never overwritten. Locally and on S3 (moto).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use sluice_test_support::s3::S3;
use sluice_test_support::{Cluster, run_job_text, run_with_timeout, sluice, visible_files};

/// An overwrite of `output` with `range(0, rows)` in `partitions` files.
fn overwrite_job(output: &str, rows: u64, partitions: u64, settings: &str) -> String {
    format!(
        "{settings}\nINSERT OVERWRITE DIRECTORY '{output}' USING PARQUET \
         SELECT * FROM range(0, {rows}, 1, {partitions});\n"
    )
}

/// Submits `sql` (written to `dir/name`) in the background.
fn spawn(cluster: &Cluster, dir: &Path, name: &str, sql: &str) -> Child {
    let file = dir.join(name);
    std::fs::write(&file, sql).unwrap();
    cluster.spawn_submit(&file, &["--output", "json"]).unwrap()
}

fn wait(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits until `ready` holds while `child` runs (it holds the lock and writes).
fn wait_until(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} never happened");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first job ended before {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn staging_started(dir: &Path) -> bool {
    let staging = dir.join("_sluice_staging");
    staging.exists() && sluice_test_support::all_entries(&staging).unwrap().len() > 1
}

/// A second overwrite while one runs fails at once naming the holder (job
/// file and line, host); with `write.lock_wait` it waits and then replaces
/// the first one's output, whose `_SUCCESS` lists exactly what is there.
#[test]
fn overwrites_of_one_output_run_one_at_a_time() {
    let cluster = Cluster::start(1, 2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let target = out.display().to_string();
    let big: u64 = 12_000_000;

    // A big overwrite, and a small one started once the first is writing.
    let race = |second_settings: &str| {
        let mut first = spawn(
            &cluster,
            tmp.path(),
            "first.sql",
            &overwrite_job(&target, big, 8, ""),
        );
        wait_until(&mut first, "staging", || staging_started(&out));
        let second = spawn(
            &cluster,
            tmp.path(),
            "second.sql",
            &overwrite_job(&target, 1_000, 2, second_settings),
        );
        let first = wait(first, "the first overwrite");
        assert!(first.status.success(), "{}", stderr(&first));
        wait(second, "the second overwrite")
    };
    let second = race("");
    assert!(!second.status.success(), "two overwrites ran together");
    let err = stderr(&second);
    assert!(
        err.contains(&format!("output file://{target}/ is locked by write")),
        "{err}"
    );
    assert!(err.contains("first.sql:2 on host"), "{err}");
    assert!(err.contains("write.lock_wait"), "{err}");
    assert_eq!(common::check_range_output(&out, big).unwrap(), 8);
    common::check_manifest(&out, big).unwrap();

    // Now the second one waits for the first and replaces its output.
    let second = race("SET sluice.write.lock_wait = '200s';");
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(common::check_range_output(&out, 1_000).unwrap(), 2);
    common::check_manifest(&out, 1_000).unwrap();
    assert_eq!(visible_files(&out).unwrap().len(), 2);
}

/// An append (`COPY`) started while an overwrite runs waits for it and then
/// adds its files: both writes' rows are there, none lost.
#[test]
fn an_append_racing_an_overwrite_loses_nothing_committed() {
    let cluster = Cluster::start(1, 2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let target = out.display().to_string();
    let mut overwrite = spawn(
        &cluster,
        tmp.path(),
        "overwrite.sql",
        &overwrite_job(&target, 8_000_000, 4, ""),
    );
    wait_until(&mut overwrite, "staging", || staging_started(&out));
    let append = spawn(
        &cluster,
        tmp.path(),
        "append.sql",
        &format!(
            "SET sluice.write.lock_wait = '200s';\nCOPY (SELECT * FROM range(8000000, 8001000, 1, 2)) \
             TO '{target}' STORED AS PARQUET;\n"
        ),
    );
    let overwrite = wait(overwrite, "the overwrite");
    assert!(overwrite.status.success(), "{}", stderr(&overwrite));
    let append = wait(append, "the append");
    assert!(append.status.success(), "{}", stderr(&append));
    // Every id of both writes, each once.
    assert_eq!(common::check_range_output(&out, 8_001_000).unwrap(), 6);
}

/// Overwrites refuse a bucket root, a filesystem root and what the
/// operator protects, before anything runs.
#[test]
fn roots_and_protected_outputs_are_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    for (output, env, expected) in [
        (
            "s3://some-bucket/",
            None,
            "refusing to overwrite a bucket or filesystem root",
        ),
        (
            "/",
            None,
            "refusing to overwrite a bucket or filesystem root",
        ),
        (
            "/var/lib/x",
            Some("[\"/var/\"]"),
            "it is under file:///var/, which the configuration protects",
        ),
    ] {
        let job = tmp.path().join("job.sql");
        std::fs::write(&job, overwrite_job(output, 10, 1, "")).unwrap();
        let mut cmd = sluice().unwrap();
        cmd.arg("run").arg(&job);
        if let Some(list) = env {
            cmd.env("SLUICE_PROTECTED_OUTPUTS", list);
        }
        let o = run_with_timeout(&mut cmd, Duration::from_secs(120)).unwrap();
        assert!(!o.status.success(), "{output}: the overwrite ran");
        let err = stderr(&o);
        assert!(err.contains(expected), "{output}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Appends to a protected prefix are fine: they delete nothing.
    let kept = tmp.path().join("kept");
    let o = run_job_text(
        tmp.path(),
        &format!(
            "COPY (SELECT * FROM range(0, 10, 1, 1)) TO '{}' STORED AS PARQUET;",
            kept.display()
        ),
        &[],
    )
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// S3: a second overwrite is refused while the first uploads; `sluice clean
/// --older-than-mins 0` next to the running write leaves it alone; the first
/// write completes with exactly its rows.
#[test]
fn on_s3_a_live_write_holds_its_output_against_writes_and_clean() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("lock").unwrap();
    let cluster = Cluster::start(1, 2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = format!("s3://{bucket}/out");
    let rows: u64 = 12_000_000;
    let mut first = spawn(
        &cluster,
        tmp.path(),
        "first.sql",
        &overwrite_job(&target, rows, 8, ""),
    );
    wait_until(&mut first, "an upload", || {
        !s3.open_uploads(&bucket, "out/").unwrap().is_empty()
    });
    let second = wait(
        spawn(
            &cluster,
            tmp.path(),
            "second.sql",
            &overwrite_job(&target, 10, 1, ""),
        ),
        "the refused overwrite",
    );
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("is locked by write"),
        "{}",
        stderr(&second)
    );

    let clean = run_with_timeout(
        sluice()
            .unwrap()
            .args(["clean", &target, "--older-than-mins", "0"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(clean.status.success(), "{}", stderr(&clean));
    assert!(
        String::from_utf8_lossy(&clean.stdout).contains("cleaned 0 abandoned writes"),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    let first = wait(first, "the first overwrite");
    assert!(first.status.success(), "{}", stderr(&first));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["rows_written"], rows, "{report}");
    let mut keys = s3.data_keys(&bucket, "out/").unwrap();
    keys.sort();
    assert_eq!(keys.len(), 8, "{keys:?}");
    assert_eq!(s3.manifest_files(&bucket, "out/").unwrap(), (keys, rows));
    assert!(s3.open_uploads(&bucket, "out/").unwrap().is_empty());
}

/// S3: an overwrite cancelled mid-upload leaves the earlier output as it
/// was (its files, its `_SUCCESS`), no upload open and no staging; the
/// lock is free again at once.
#[test]
fn on_s3_a_failed_overwrite_leaves_the_earlier_output_readable() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("keep").unwrap();
    let cluster = Cluster::start(1, 2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = format!("s3://{bucket}/out");
    cluster
        .submit_ok(
            &{
                let f = tmp.path().join("v1.sql");
                std::fs::write(&f, overwrite_job(&target, 1_000, 2, "")).unwrap();
                f
            },
            &[],
        )
        .unwrap();
    let before_keys = s3.data_keys(&bucket, "out/").unwrap();
    let before_manifest = s3.get(&bucket, "out/_SUCCESS").unwrap();
    assert_eq!(before_keys.len(), 2);

    let mut v2 = spawn(
        &cluster,
        tmp.path(),
        "v2.sql",
        &overwrite_job(&target, 40_000_000, 20, ""),
    );
    wait_until(&mut v2, "an upload", || {
        !s3.open_uploads(&bucket, "out/").unwrap().is_empty()
    });
    cluster.cancel_running_job().unwrap();
    let v2 = wait(v2, "the cancelled overwrite");
    assert!(
        !v2.status.success(),
        "a cancelled overwrite reported success"
    );
    assert_eq!(s3.data_keys(&bucket, "out/").unwrap(), before_keys);
    assert_eq!(s3.get(&bucket, "out/_SUCCESS").unwrap(), before_manifest);
    assert!(s3.open_uploads(&bucket, "out/").unwrap().is_empty());
    assert!(
        s3.list(&bucket, "out/_sluice_staging").unwrap().is_empty(),
        "staging left"
    );
    // The lock was released: the next write runs at once.
    let f = tmp.path().join("v3.sql");
    std::fs::write(&f, overwrite_job(&target, 500, 1, "")).unwrap();
    cluster.submit_ok(&f, &[]).unwrap();
    assert_eq!(s3.data_keys(&bucket, "out/").unwrap().len(), 1);
}

/// S3: an executor cut off mid-write (SIGSTOP) is declared lost and its
/// tasks run again on the other one; the job completes with exactly the
/// rows. When the stopped executor runs again (SIGCONT) its stale tasks,
/// which roll to new files and so start new uploads, find the write ended
/// (its lock released) and abort them: nothing visible changes and no
/// upload is left.
#[test]
fn on_s3_a_cut_off_executors_stale_tasks_leave_nothing() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("stop").unwrap();
    let cluster = Cluster::start(2, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = format!("s3://{bucket}/out");
    let rows: u64 = 16_000_000;
    let mut job = spawn(
        &cluster,
        tmp.path(),
        "job.sql",
        &overwrite_job(
            &target,
            rows,
            8,
            "SET sluice.write.target_file_rows = 250000;",
        ),
    );
    // Both executors are uploading.
    wait_until(&mut job, "uploads from both executors", || {
        s3.open_uploads(&bucket, "out/").unwrap().len() >= 2
    });
    cluster.signal_executor(0, "-STOP").unwrap();
    let out = wait(job, "the job with a stopped executor");
    cluster.signal_executor(0, "-CONT").unwrap();
    assert!(
        out.status.success(),
        "the job failed although an executor was left: {}\n{}",
        stderr(&out),
        cluster.scheduler_log()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows_written"], rows, "{report}");
    let (listed, manifest_rows) = s3.manifest_files(&bucket, "out/").unwrap();
    assert_eq!(manifest_rows, rows);
    // The stale tasks run on for a while; give them time to try.
    std::thread::sleep(Duration::from_secs(10));
    let mut after = s3.data_keys(&bucket, "out/").unwrap();
    after.sort();
    assert_eq!(after, listed, "visible files changed after the commit");
    assert_eq!(
        s3.open_uploads(&bucket, "out/").unwrap(),
        Vec::<String>::new()
    );
    let staging: Vec<String> = s3
        .list(&bucket, "out/_sluice_staging")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(staging.is_empty(), "staging left: {staging:?}");
}

/// The highest stage an executor's log says it received a task of.
fn last_stage(log: &str) -> Option<u32> {
    log.lines()
        .filter_map(|l| l.split("Received task: [TID ").nth(1))
        .filter_map(|t| t.split('/').nth(1)?.split('.').next()?.parse().ok())
        .max()
}

/// S3: the executor running the commit is SIGKILLed mid-commit (a proxy
/// holds each `CompleteMultipartUpload` for 3 s, so the commit is caught in
/// the act). Ballista runs the commit again on the other executor, which
/// finishes the commit the first attempt recorded: the job completes with
/// every row exactly once, `_SUCCESS` lists exactly the files, no upload
/// stays open.
#[test]
fn on_s3_a_commit_whose_executor_is_killed_is_finished_by_a_second_attempt() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("recommit").unwrap();
    let proxy = sluice_test_support::faulty::FaultyS3::start_with(
        &s3.endpoint,
        u64::MAX,
        Duration::from_secs(3),
        None,
    )
    .unwrap();
    let mut cluster =
        Cluster::start_with_env(2, 1, &[("AWS_ENDPOINT_URL_S3", proxy.endpoint.as_str())]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = format!("s3://{bucket}/out");
    let rows: u64 = 4_000_000;
    let mut job = spawn(
        &cluster,
        tmp.path(),
        "job.sql",
        &overwrite_job(&target, rows, 8, ""),
    );
    wait_until(&mut job, "the commit", || {
        s3.list(&bucket, "out/_sluice_staging/")
            .unwrap()
            .iter()
            .any(|o| o.key.ends_with("/commit.json"))
    });
    let stages: Vec<Option<u32>> = (0..2)
        .map(|i| last_stage(&cluster.executor_log(i)))
        .collect();
    let committing = if stages[0] >= stages[1] { 0 } else { 1 };
    cluster.kill_executor(committing).unwrap();
    let out = wait(job, "the job after the kill");
    assert!(
        out.status.success(),
        "the job failed although an executor survived: {}\n{}",
        stderr(&out),
        cluster.scheduler_log()
    );
    let survivor = cluster.executor_log(1 - committing);
    assert!(
        survivor.contains("finishing the commit an earlier attempt started"),
        "the commit was not run again: {survivor}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows_written"], rows, "{report}");
    let mut keys = s3.data_keys(&bucket, "out/").unwrap();
    keys.sort();
    assert_eq!(s3.manifest_files(&bucket, "out/").unwrap(), (keys, rows));
    // Every id once, read back from what is visible.
    let o = run_job_text(
        tmp.path(),
        &format!(
            "CREATE EXTERNAL TABLE o STORED AS PARQUET LOCATION '{target}/';\n\
             SELECT count(*) AS n, count(DISTINCT id) AS d, min(id) AS lo, max(id) AS hi FROM o;\n"
        ),
        &["--output", "json"],
    )
    .unwrap();
    let read: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &read["statements"][1]["rows"][0];
    assert_eq!(row["n"], rows, "{read}");
    assert_eq!(row["d"], rows, "{read}");
    assert_eq!(
        s3.open_uploads(&bucket, "out/").unwrap(),
        Vec::<String>::new()
    );
}

/// S3: an overwrite whose commit cannot delete the earlier files (the
/// executors' S3 refuses `DeleteObjects` of data files) fails saying so and
/// takes its own files back: the earlier output is left whole, with its
/// `_SUCCESS`, and no upload is left; the overwrite then succeeds on a
/// healthy S3.
#[test]
fn on_s3_an_overwrite_that_cannot_delete_the_earlier_files_fails_clearly() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("nodelete").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = format!("s3://{bucket}/out");
    let write = |cluster: &Cluster, rows: u64| {
        let f = tmp.path().join("job.sql");
        std::fs::write(&f, overwrite_job(&target, rows, 2, "")).unwrap();
        run_with_timeout(
            sluice()
                .unwrap()
                .arg("submit")
                .arg(&f)
                .args(["--scheduler", &cluster.endpoint]),
            Duration::from_secs(300),
        )
        .unwrap()
    };
    let healthy = Cluster::start(1, 2).unwrap();
    assert!(write(&healthy, 1_000).status.success());
    let before = s3.data_keys(&bucket, "out/").unwrap();
    drop(healthy);

    let proxy = sluice_test_support::faulty::FaultyS3::start_with(
        &s3.endpoint,
        u64::MAX,
        Duration::ZERO,
        Some(("delete_objects", ".parquet")),
    )
    .unwrap();
    let refusing =
        Cluster::start_with_env(1, 2, &[("AWS_ENDPOINT_URL_S3", proxy.endpoint.as_str())]).unwrap();
    let o = write(&refusing, 2_000);
    assert!(!o.status.success(), "the overwrite reported success");
    let err = stderr(&o);
    assert!(
        err.contains("2 earlier files could not be removed, so the write was taken back and the earlier output is left as it was"),
        "{err}"
    );
    assert!(err.contains("AccessDenied"), "{err}");
    // The earlier output, whole: its files and its manifest.
    let mut now = s3.data_keys(&bucket, "out/").unwrap();
    now.sort();
    assert_eq!(now.len(), before.len());
    assert_eq!(s3.manifest_files(&bucket, "out/").unwrap(), (now, 1_000));
    assert!(s3.open_uploads(&bucket, "out/").unwrap().is_empty());
    drop(refusing);

    let healthy = Cluster::start(1, 2).unwrap();
    assert!(write(&healthy, 3_000).status.success());
    let mut keys = s3.data_keys(&bucket, "out/").unwrap();
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(s3.manifest_files(&bucket, "out/").unwrap(), (keys, 3_000));
}

/// Ctrl-C while waiting for another write's lock ends the wait at once,
/// running nothing.
#[test]
fn ctrl_c_ends_a_wait_for_the_lock() {
    let cluster = Cluster::start(1, 2).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let target = out.display().to_string();
    let mut first = spawn(
        &cluster,
        tmp.path(),
        "first.sql",
        &overwrite_job(&target, 40_000_000, 8, ""),
    );
    wait_until(&mut first, "staging", || staging_started(&out));
    let mut second = spawn(
        &cluster,
        tmp.path(),
        "second.sql",
        &overwrite_job(&target, 10, 1, "SET sluice.write.lock_wait = '10m';"),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        second.try_wait().unwrap().is_none(),
        "the second did not wait"
    );
    let ok = std::process::Command::new("kill")
        .args(["-INT", &second.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let second = wait(second, "the interrupted wait");
    // It ended although its wait (10 min) outlasts `wait`'s hang guard.
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("interrupted"),
        "{}",
        stderr(&second)
    );
    let first = wait(first, "the first overwrite");
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(common::check_range_output(&out, 40_000_000).unwrap(), 8);
}

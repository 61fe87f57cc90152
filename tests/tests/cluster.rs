//! Multi-process: a real scheduler and executor processes, the CLI submitting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use sluice_test_support::{Cluster, run_with_timeout, sluice, visible_files, workspace_root};

#[test]
fn submit_runs_the_range_job_on_two_executor_processes() {
    let cluster = Cluster::start(2, 2).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("range");
    let output = format!("output={}", dir.display());
    let o = cluster
        .submit_ok(
            &workspace_root().join("jobs/range_to_parquet.sql"),
            &[
                "--var",
                "rows=500000",
                "--var",
                "partitions=10",
                "--var",
                &output,
                "--output",
                "json",
            ],
        )
        .unwrap();
    assert_eq!(common::check_range_output(&dir, 500_000).unwrap(), 10);
    common::check_manifest(&dir, 500_000).unwrap();
    // The executors' Prometheus metrics count what was written and committed.
    assert_eq!(
        cluster.executor_metric("sluice_write_rows_total").unwrap(),
        500_000.0
    );
    assert_eq!(
        cluster.executor_metric("sluice_write_files_total").unwrap(),
        10.0
    );
    assert_eq!(
        cluster
            .executor_metric("sluice_committed_rows_total")
            .unwrap(),
        500_000.0
    );
    assert_eq!(
        cluster.executor_metric("sluice_commits_total").unwrap(),
        1.0
    );

    // The job is visible through `sluice jobs` and `sluice status`.
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let job_id = report["job_ids"][0].as_str().unwrap().to_string();
    let jobs = run_with_timeout(
        sluice()
            .unwrap()
            .args(["jobs", "--scheduler", &cluster.endpoint]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(jobs.status.success());
    assert!(String::from_utf8_lossy(&jobs.stdout).contains(&job_id));
    let status = run_with_timeout(
        sluice()
            .unwrap()
            .args(["status", &job_id, "--scheduler", &cluster.endpoint]),
        Duration::from_secs(30),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        text.contains("Successful") || text.contains("Completed"),
        "{text}"
    );

    // A job that fails on the executors: `sluice status` says so and exits 1.
    let job = out.path().join("fails.sql");
    std::fs::write(
        &job,
        "SELECT CAST(CAST(id AS VARCHAR) || 'x' AS INT) AS n FROM range(0, 10, 1, 2);\n",
    )
    .unwrap();
    let failed = cluster.submit(&job, &[], &[]).unwrap();
    assert!(!failed.status.success());
    let failed_id = cluster
        .jobs()
        .unwrap()
        .into_iter()
        .find(|j| j["job_status"].to_string().contains("Failed"))
        .and_then(|j| j["job_id"].as_str().map(str::to_string))
        .expect("the failed job in the scheduler's list");
    let status = run_with_timeout(
        sluice()
            .unwrap()
            .args(["status", &failed_id, "--scheduler", &cluster.endpoint]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains(&format!("job {failed_id} failed")),
        "{stderr}"
    );
}

/// `/readyz` answers 200 while an executor is alive and 503 once the
/// scheduler has found its only executor lost; `/healthz` stays 200.
#[test]
fn readyz_follows_the_alive_executors() {
    let mut cluster = Cluster::start(1, 1).unwrap();
    assert_eq!(
        cluster.rest_get("/readyz").unwrap(),
        (200, "ready: at least 1 executors alive\n".to_string())
    );
    cluster.kill_executor(0).unwrap();
    // The test scheduler expires an executor 6 s after its last heartbeat.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = cluster.rest_get("/readyz").unwrap();
    while answer.0 == 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        answer = cluster.rest_get("/readyz").unwrap();
    }
    assert_eq!(
        answer,
        (503, "not ready: fewer than 1 executors alive\n".to_string())
    );
    assert_eq!(
        cluster.rest_get("/healthz").unwrap(),
        (200, "ok".to_string())
    );
    // A job submitted now would wait forever in Ballista's queue: the
    // client cancels it once no executor was alive for its bound.
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("queued.sql");
    std::fs::write(&job, "SELECT count(*) FROM range(0, 10, 1, 2);\n").unwrap();
    let o = cluster
        .submit(&job, &[], &[("SLUICE_NO_EXECUTOR_TIMEOUT_SECS", "3")])
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("with no executor alive to run it, and was cancelled"),
        "{err}"
    );
    let waiting = || {
        cluster
            .jobs()
            .unwrap()
            .iter()
            .filter(|j| {
                j["job_status"]
                    .as_str()
                    .is_some_and(|s| s.contains("Running") || s.contains("Queued"))
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while waiting() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(waiting(), 0, "the queued job was not cancelled");
}

/// SIGKILL one executor while the write stage runs. Ballista notices the lost
/// executor (heartbeat timeout, 6 s here), re-runs its tasks and any shuffle
/// output it held on the surviving executor. Each attempt stages under its own
/// task-attempt name, and the commit takes only the files that successful
/// attempts reported (one per writer partition); the lost attempt's partial
/// file is deleted with the staging directory. So the job completes with
/// exactly the rows.
#[test]
fn killing_an_executor_mid_job_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(2, 1).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("range");
    let rows: u64 = 24_000_000;
    let (rows_var, output_var) = (format!("rows={rows}"), format!("output={}", dir.display()));
    let mut child = cluster
        .spawn_submit(
            &workspace_root().join("jobs/range_to_parquet.sql"),
            &[
                "--var",
                &rows_var,
                "--var",
                "partitions=12",
                "--var",
                &output_var,
                "--output",
                "json",
            ],
        )
        .unwrap();

    // Wait until the job runs and a staged file appears, then kill.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let staging = dir.join("_sluice_staging");
        let staged =
            staging.exists() && sluice_test_support::all_entries(&staging).unwrap().len() > 1;
        if staged {
            break;
        }
        assert!(Instant::now() < deadline, "the job never started writing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing is visible while tasks write.
    assert!(visible_files(&dir).unwrap().is_empty());
    cluster.kill_executor(0).unwrap();

    let o = wait_after_kill(child);
    assert_completed(&cluster, &o);
    assert_eq!(common::check_range_output(&dir, rows).unwrap(), 12);
    common::check_manifest(&dir, rows).unwrap();
}

/// A skew-aware partitioned write on executor processes: the map tasks
/// place rows through the scheduler's coordinator over HTTP. With the
/// coordinator unreachable the write still succeeds, each id in one writer
/// (as `hash`), and the executors say why.
#[test]
fn skew_aware_writes_place_rows_through_the_scheduler_or_fall_back_to_hash() {
    let (rows, seed, target) = (200_000u64, 9u64, 20_000u64);
    let job = |dir: &std::path::Path| {
        common::skewed_copy(
            rows,
            seed,
            4,
            dir,
            &format!("'write.target_file_rows' '{target}'"),
        )
    };
    let submit = |cluster: &Cluster, out: &std::path::Path, dir: &std::path::Path| {
        let file = out.join("job.sql");
        std::fs::write(&file, job(dir)).unwrap();
        cluster.submit_ok(&file, &[]).unwrap();
    };
    let out = tempfile::tempdir().unwrap();

    let cluster = Cluster::start(2, 2).unwrap();
    let placed = out.path().join("placed");
    submit(&cluster, out.path(), &placed);
    let writers = common::check_skewed_output(&placed, rows, target, |r| {
        sluice_udfs::skewed::id_of(seed, r)
    })
    .unwrap();
    assert!(writers[&100] >= 2, "{writers:?}");
    // Hostile placement requests get a 400 naming the bound and change
    // nothing the coordinator holds.
    let chunks = format!("{}/v1/chunks", cluster.coordinator);
    let held = || {
        let listed = sluice_test_support::get_json(&chunks).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["write_id"].to_string(),
                    w["values"].as_u64(),
                    w["rows"].as_u64(),
                    w["chunks"].as_u64(),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = held();
    assert_eq!(before.len(), 1, "{before:?}");
    for (body, says) in [
        (
            r#"{"write_id":"x","target_rows":1,"counts":[["id=1",18446744073709551615]]}"#,
            "would cut",
        ),
        (
            r#"{"write_id":"x","target_rows":0,"counts":[["id=1",1]]}"#,
            "target_rows",
        ),
    ] {
        let (status, text) = sluice_test_support::post_json(&chunks, body).unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
    }
    let (status, _) = sluice_test_support::post_json(&chunks, "{not json").unwrap();
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(held(), before);
    // So do hostile lease requests: nothing is registered.
    let lease = format!("{}/v1/dynamodb/lease", cluster.coordinator);
    for (body, says) in [
        (
            r#"{"table":"t","writer":"w","share":{"percent":0.5,"max_units":null},"budget_hint":100,"consumed_wcu":-5,"throttles":0}"#,
            "consumed_wcu",
        ),
        (
            r#"{"table":"t","writer":"w","share":{"percent":50,"max_units":null},"budget_hint":100,"consumed_wcu":0,"throttles":0}"#,
            "write.percent",
        ),
    ] {
        let (status, text) = sluice_test_support::post_json(&lease, body).unwrap();
        assert_eq!(status, 400, "{text}");
        assert!(text.contains(says), "{text}");
    }
    // Well-formed requests for a write the scheduler never planned: refused.
    let (status, text) = sluice_test_support::post_json(
        &chunks,
        r#"{"write_id":"invented","target_rows":10,"counts":[["id=1",5]]}"#,
    )
    .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("write invented was not planned by this cluster's scheduler"),
        "{text}"
    );
    let (status, text) = sluice_test_support::post_json(
        &lease,
        r#"{"table":"t","writer":"w","write_id":"invented","share":{"percent":0.5,"max_units":null},"budget_hint":100,"consumed_wcu":0,"throttles":1000}"#,
    )
    .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("was not planned"), "{text}");
    // Ending writes: malformed or oversized bodies are refused.
    let end = format!("{}/v1/writes/end", cluster.coordinator);
    let (status, _) = sluice_test_support::post_json(&end, "{not json").unwrap();
    assert!((400..500).contains(&status), "{status}");
    let long = format!(r#"{{"write_id":"{}"}}"#, "x".repeat(5000));
    let (status, text) = sluice_test_support::post_json(&end, &long).unwrap();
    assert_eq!(status, 400, "{text}");
    assert_eq!(held(), before);
    assert_eq!(cluster.coordinator_tables().unwrap(), serde_json::json!([]));
    drop(cluster);

    let cluster =
        Cluster::start_with_env(2, 2, &[("SLUICE_COORDINATOR_URL", "http://127.0.0.1:9")]).unwrap();
    let fallback = out.path().join("fallback");
    submit(&cluster, out.path(), &fallback);
    let writers = common::check_skewed_output(&fallback, rows, target, |r| {
        sluice_udfs::skewed::id_of(seed, r)
    })
    .unwrap();
    assert!(writers.values().all(|&w| w == 1), "{writers:?}");
    let logs: String = (0..2).map(|i| cluster.executor_log(i)).collect();
    assert!(
        logs.contains("skew-aware placement unavailable"),
        "executor logs:\n{logs}"
    );
}

/// SIGKILL of an executor while a skew-aware write's map tasks are placing
/// rows: re-run map tasks place their rows again. The job completes with
/// every row exactly once (an id may get extra, shorter files).
#[test]
fn killing_an_executor_mid_skew_write_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(2, 1).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("events");
    let (rows, seed, target) = (3_000_000u64, 5u64, 200_000u64);
    let job = out.path().join("job.sql");
    common::write_skewed_job(&job, rows, seed, 8, &dir, target).unwrap();
    let mut child = cluster.spawn_submit(&job, &[]).unwrap();

    // Kill once the coordinator has placed rows (the map side is running).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let placed: u64 =
            sluice_test_support::get_json(&format!("{}/v1/chunks", cluster.coordinator))
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|w| w["rows"].as_u64())
                .sum();
        if placed > 0 {
            println!("killing with {placed} of {rows} rows placed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never started placing rows"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill_executor(0).unwrap();

    let o = wait_after_kill(child);
    assert_completed(&cluster, &o);
    let writers = common::check_skewed_output_files(
        &dir,
        rows,
        target,
        |r| sluice_udfs::skewed::id_of(seed, r),
        false,
    )
    .unwrap();
    let files = common::manifest(&dir).unwrap()["files"]
        .as_array()
        .map_or(0, Vec::len);
    println!("completed after the kill; {files} files; writers per id {writers:?}");
}

/// The submitting CLI's output once it exits (a hang guard of four minutes).
fn wait_after_kill(mut child: std::process::Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the job hung after the executor was killed");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.wait_with_output().unwrap()
}

/// With a surviving executor the scheduler re-runs what the killed one
/// held, so the job must complete.
fn assert_completed(cluster: &Cluster, o: &std::process::Output) {
    assert!(
        o.status.success(),
        "the job failed although an executor survived: {}\nscheduler log:\n{}",
        String::from_utf8_lossy(&o.stderr),
        cluster.scheduler_log()
    );
}

/// On a cluster, SQL reaches only the local directories its servers allow
/// (`--allow-local-paths`): reading `/etc/` and writing outside the allowed
/// directory fail naming the rule; inside it, a write works.
#[test]
fn sql_on_a_cluster_reaches_only_the_allowed_local_directories() {
    let out = tempfile::tempdir().unwrap();
    let allowed = out.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let cluster = Cluster::start_with_env(
        1,
        2,
        &[("SLUICE_ALLOW_LOCAL_PATHS", &allowed.display().to_string())],
    )
    .unwrap();
    let run = |name: &str, sql: String| {
        let file = out.path().join(name);
        std::fs::write(&file, sql).unwrap();
        run_with_timeout(
            sluice()
                .unwrap()
                .arg("submit")
                .arg(&file)
                .args(["--scheduler", &cluster.endpoint]),
            Duration::from_secs(120),
        )
        .unwrap()
    };
    let read = run(
        "read.sql",
        "CREATE EXTERNAL TABLE p (line VARCHAR) STORED AS CSV LOCATION '/etc/';\nSELECT count(*) FROM p;\n"
            .into(),
    );
    assert!(!read.status.success(), "read /etc/ on the cluster");
    let err = String::from_utf8_lossy(&read.stderr);
    assert!(
        err.contains("local files on this cluster are limited to"),
        "{err}"
    );
    let outside = out.path().join("outside");
    let write = |dir: &std::path::Path| {
        run(
            "write.sql",
            format!(
                "INSERT OVERWRITE DIRECTORY '{}' USING PARQUET SELECT * FROM range(0, 100, 1, 2);\n",
                dir.display()
            ),
        )
    };
    let o = write(&outside);
    assert!(!o.status.success(), "wrote outside the allowed directory");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("local files on this cluster are limited to"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        visible_files(&outside)
            .map(|f| f.is_empty())
            .unwrap_or(true)
    );
    let o = write(&allowed.join("range"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        common::check_range_output(&allowed.join("range"), 100).unwrap(),
        2
    );
}

/// A session setting that sizes the scheduler's plans or an executor's
/// buffers is bounded: sluice's client refuses the `SET` at its line, and the
/// scheduler refuses a client that sends it anyway (a raw Ballista session),
/// and goes on serving.
#[test]
fn session_settings_over_their_ceilings_are_refused() {
    let out = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(1, 2).unwrap();
    let job = out.path().join("huge.sql");
    std::fs::write(
        &job,
        "SELECT 1;\nSET datafusion.execution.target_partitions = 1000000000;\nSELECT count(*) FROM range(0, 10, 1, 2);\n",
    )
    .unwrap();
    let o = cluster.submit(&job, &[], &[]).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("huge.sql:2")
            && err.contains(
                "datafusion.execution.target_partitions = 1000000000 is over sluice's ceiling of 10000"
            ),
        "{err}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let raw = runtime.block_on(async {
        let ctx = sluice_core::client::connect(&cluster.endpoint, None, Duration::from_secs(30))
            .await
            .unwrap();
        ctx.sql("SET ballista.shuffle.sort_based.memory_limit_per_task_bytes = 1099511627776")
            .await
            .unwrap();
        let df = ctx
            .sql("SELECT count(*) FROM range(0, 10, 1, 2)")
            .await
            .unwrap();
        df.collect()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    });
    assert!(
        raw.contains(
            "ballista.shuffle.sort_based.memory_limit_per_task_bytes = 1099511627776 is over sluice's ceiling"
        ),
        "{raw}"
    );
    let fine = out.path().join("fine.sql");
    std::fs::write(
        &fine,
        "SET datafusion.execution.target_partitions = 10000;\nSELECT 41 + 1 AS answer;\n",
    )
    .unwrap();
    let o = cluster.submit_ok(&fine, &[]).unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("42"));
}

/// Starts `job` (an append of `rows` range rows to `out` on S3) on the
/// cluster and waits until its tasks have staged something.
fn submit_until_staged(
    cluster: &Cluster,
    s3: &sluice_test_support::s3::S3,
    bucket: &str,
    job: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(extra);
    let mut child = cluster.spawn_submit(job, &args).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let staged = !s3.list(bucket, "out/_sluice_staging/").unwrap().is_empty()
            || !s3.open_uploads(bucket, "out/").unwrap().is_empty();
        if staged {
            return child;
        }
        assert!(Instant::now() < deadline, "the job never started writing");
        if child.try_wait().unwrap().is_some() {
            let o = child.wait_with_output().unwrap();
            panic!(
                "the job ended before the scheduler was killed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job file writing `rows` ids in 12 partitions to `s3://bucket/out`.
fn range_to_s3_job(dir: &std::path::Path, bucket: &str, rows: u64) -> std::path::PathBuf {
    let job = dir.join(format!("{bucket}.sql"));
    std::fs::write(
        &job,
        format!(
            "COPY (SELECT id FROM range(0, {rows}, 1, 12)) TO 's3://{bucket}/out' STORED AS PARQUET;\n"
        ),
    )
    .unwrap();
    job
}

/// The objects a reader of `s3://bucket/out/` sees (not staging or locks).
fn visible_output(s3: &sluice_test_support::s3::S3, bucket: &str) -> Vec<String> {
    s3.list(bucket, "out/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !k.contains("/_"))
        .collect()
}

/// One `error:` line, and no debug dump in it.
fn assert_one_clear_error(err: &str) {
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    assert!(!err.contains("Status {"), "a debug dump: {err}");
}

/// The scheduler stops answering mid-job (SIGSTOP: its sockets stay open,
/// so no call is refused, each one just hangs). `sluice submit` gives up
/// within its deadlines naming the silence, aborts the write's uploads
/// and leaves nothing visible. Once the scheduler runs again (SIGCONT) and
/// the job's tasks go on, they find the write's lock released: nothing of
/// the write becomes visible and no upload is left open.
#[test]
fn a_silent_scheduler_fails_the_job_within_its_deadline_and_nothing_lands() {
    let s3 = sluice_test_support::s3::S3::from_env().unwrap();
    let cluster = Cluster::start(2, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = s3.new_bucket("silent").unwrap();
    let job = range_to_s3_job(tmp.path(), &bucket, 12_000_000);
    let child = submit_until_staged(&cluster, &s3, &bucket, &job, &[]);
    cluster.signal_scheduler("-STOP").unwrap();
    let stopped = Instant::now();
    let o = wait_after_kill(child);
    let took = stopped.elapsed();
    cluster.signal_scheduler("-CONT").unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{err}");
    assert!(
        took < Duration::from_secs(120),
        "the client took {took:?} to give up"
    );
    // Whichever of the client's calls notices first (the job's own stream
    // or its 1 s status check) names the silence.
    assert!(
        err.contains(&format!("the scheduler at {} lost job", cluster.endpoint))
            && (err.contains("it does not answer") || err.contains("no answer for 30s")),
        "{err}"
    );
    assert!(err.contains("its uploads are aborted"), "{err}");
    assert_one_clear_error(&err);
    // The resumed job's tasks and commit run against a released lock.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert_eq!(visible_output(&s3, &bucket), Vec::<String>::new());
        let open = s3.open_uploads(&bucket, "out/").unwrap();
        if open.is_empty() && Instant::now() > stopped + took + Duration::from_secs(15) {
            break;
        }
        assert!(Instant::now() < deadline, "uploads left open: {open:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The scheduler dies mid-job (SIGKILL). Ballista's client would wait
/// forever for a job a restarted scheduler no longer knows; `sluice submit`
/// fails within a bound naming the lost job, aborts the write's uploads and
/// leaves nothing visible. With `--resubmit-on-scheduler-loss`, the same
/// kill followed by a fresh scheduler on the same port: the statement runs
/// again once the scheduler answers, and the append holds every row once.
#[test]
fn a_lost_scheduler_fails_the_job_clearly_or_it_is_resubmitted_once_back() {
    let s3 = sluice_test_support::s3::S3::from_env().unwrap();
    let mut cluster = Cluster::start(2, 1).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let rows: u64 = 12_000_000;
    let job_for = |bucket: &str| range_to_s3_job(tmp.path(), bucket, rows);

    // Without resubmission: a clear failure, nothing left behind.
    let bucket = s3.new_bucket("lostsched").unwrap();
    let child = submit_until_staged(&cluster, &s3, &bucket, &job_for(&bucket), &[]);
    cluster.kill_scheduler().unwrap();
    let killed = Instant::now();
    let o = wait_after_kill(child);
    let took = killed.elapsed();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{err}");
    assert!(
        took < Duration::from_secs(90),
        "the client took {took:?} to notice"
    );
    assert!(
        err.contains(&format!("the scheduler at {} lost job", cluster.endpoint)),
        "{err}"
    );
    assert!(err.contains("--resubmit-on-scheduler-loss"), "{err}");
    assert_one_clear_error(&err);
    assert!(err.contains("its uploads are aborted"), "{err}");
    assert_eq!(
        s3.open_uploads(&bucket, "out/").unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(visible_output(&s3, &bucket), Vec::<String>::new());

    // With resubmission: the scheduler comes back on its port.
    cluster.restart_scheduler().unwrap();
    let bucket = s3.new_bucket("resubmit").unwrap();
    let child = submit_until_staged(
        &cluster,
        &s3,
        &bucket,
        &job_for(&bucket),
        &["--resubmit-on-scheduler-loss"],
    );
    cluster.kill_scheduler().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    cluster.restart_scheduler().unwrap();
    let o = wait_after_kill(child);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resubmitting"), "{err}");
    assert_eq!(
        sluice_test_support::count_distinct(
            tmp.path(),
            &format!("s3://{bucket}/out"),
            "id BIGINT",
            "id"
        )
        .unwrap(),
        (rows, rows)
    );
    assert_eq!(
        s3.open_uploads(&bucket, "out/").unwrap(),
        Vec::<String>::new()
    );
}

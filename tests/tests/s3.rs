//! Writes to S3 (the moto server from `scripts/test-servers.sh`) through the
//! multipart committer: exact output, nothing visible before the commit, and
//! no partial output or open upload after any failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::check_s3_range_output;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use sluice_test_support::s3::S3;
use sluice_test_support::{
    Cluster, free_port, run_job_text, run_with_timeout, sluice, workspace_root,
};

const JOB: &str = "jobs/range_to_parquet.sql";

/// `_SUCCESS` lists exactly the data objects, with the total rows; written
/// by the multipart committer.
fn check_s3_manifest(
    s3: &S3,
    bucket: &str,
    prefix: &str,
    keys: &[String],
    rows: u64,
) -> Result<serde_json::Value> {
    check_s3_manifest_of(s3, bucket, prefix, keys, rows, "sluice-multipart")
}

fn check_s3_manifest_of(
    s3: &S3,
    bucket: &str,
    prefix: &str,
    keys: &[String],
    rows: u64,
    committer: &str,
) -> Result<serde_json::Value> {
    let m: serde_json::Value =
        serde_json::from_slice(&s3.get(bucket, &format!("{prefix}_SUCCESS"))?)?;
    let (listed, listed_rows) = s3.manifest_files(bucket, prefix)?;
    ensure!(
        listed == keys,
        "manifest lists {listed:?}, bucket has {keys:?}"
    );
    ensure!(listed_rows == rows, "manifest rows {}", m["rows"]);
    ensure!(
        m["committer"] == committer,
        "committer {}, expected {committer}",
        m["committer"]
    );
    Ok(m)
}

/// Each file is named by its stage-wide partition (`part-p00003-<write>.parquet`),
/// the same for every attempt, and the partitions are exactly `0..n`.
fn assert_partition_keys(keys: &[String], n: usize) {
    let mut partitions: Vec<usize> = keys
        .iter()
        .map(|k| {
            let name = k.rsplit('/').next().unwrap();
            let rest = name
                .strip_prefix("part-p")
                .unwrap_or_else(|| panic!("{k} is not named by its partition"));
            rest[..5].parse().unwrap()
        })
        .collect();
    partitions.sort_unstable();
    assert_eq!(partitions, (0..n).collect::<Vec<_>>(), "{keys:?}");
}

fn assert_nothing_left(s3: &S3, bucket: &str, prefix: &str) {
    assert_eq!(
        s3.open_uploads(bucket, prefix).unwrap(),
        Vec::<String>::new(),
        "open uploads"
    );
    let staging: Vec<_> = s3
        .list(bucket, prefix)
        .unwrap()
        .into_iter()
        .filter(|o| o.key.contains("_sluice_staging"))
        .collect();
    assert!(staging.is_empty(), "staging objects left: {staging:?}");
}

/// Starts `range_to_parquet` writing `rows` in `partitions` to
/// `s3://bucket/out`: `sluice submit` to `cluster`, or `sluice run` embedded.
fn spawn_range_write(
    cluster: Option<&Cluster>,
    bucket: &str,
    rows: u64,
    partitions: u64,
    vars: &[&str],
) -> Child {
    let mut cmd = sluice().unwrap();
    match cluster {
        Some(c) => cmd
            .arg("submit")
            .arg(workspace_root().join(JOB))
            .args(["--scheduler", &c.endpoint]),
        None => cmd.arg("run").arg(workspace_root().join(JOB)),
    };
    cmd.args([
        "--var",
        &format!("rows={rows}"),
        "--var",
        &format!("partitions={partitions}"),
    ])
    .args(["--var", &format!("output=s3://{bucket}/out")])
    .args(vars.iter().flat_map(|v| ["--var", v]))
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Waits until at least `n` uploads are open under `out/` (the job is
/// mid-write), failing if the job ends first.
fn wait_for_uploads(s3: &S3, bucket: &str, child: &mut Child, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while s3.open_uploads(bucket, "out/").unwrap().len() < n {
        assert!(Instant::now() < deadline, "uploads never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended mid-test"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the CLI to exit; a hang is a failure naming `after`.
fn wait_for_exit(mut child: Child, after: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the job hung after {after}");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn submit_to_s3_on_two_executors_commits_exactly_the_rows() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("happy").unwrap();
    let cluster = Cluster::start(2, 2).unwrap();
    let rows = 3_000_000;
    let o = run_with_timeout(
        sluice()
            .unwrap()
            .arg("submit")
            .arg(workspace_root().join(JOB))
            .args(["--scheduler", &cluster.endpoint])
            .args(["--var", &format!("rows={rows}"), "--var", "partitions=8"])
            .args(["--var", &format!("output=s3://{bucket}/out")])
            .args(["--output", "json"]),
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let keys = check_s3_range_output(&s3, &bucket, "out/", rows).unwrap();
    assert_eq!(keys.len(), 8);
    assert_partition_keys(&keys, 8);
    check_s3_manifest(&s3, &bucket, "out/", &keys, rows).unwrap();
    assert_nothing_left(&s3, &bucket, "out/");
    assert!(cluster.executor_metric("sluice_s3_parts_total").unwrap() >= 8.0);
    assert_eq!(
        cluster
            .executor_metric("sluice_uploads_aborted_total")
            .unwrap(),
        0.0
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["rows_written"], rows);
    assert_eq!(report["files_written"], 8);
}

/// A poller lists the prefix while the job runs. Until every writer has
/// started (fewer upload markers than partitions) the commit cannot have
/// begun, and no data object may be listed; after the commit, `_SUCCESS` is.
#[test]
fn nothing_is_listed_before_the_commit() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("poll").unwrap();
    let cluster = Cluster::start(2, 1).unwrap();
    let partitions = 12;
    let mut child = spawn_range_write(Some(&cluster), &bucket, 12_000_000, partitions as u64, &[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut while_writing = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "job hung");
        let listed = s3.list(&bucket, "out/").unwrap();
        let markers = listed
            .iter()
            .filter(|o| o.key.contains("/uploads/"))
            .count();
        let success = listed.iter().any(|o| o.key == "out/_SUCCESS");
        let data = s3.data_keys(&bucket, "out/").unwrap();
        if markers > 0 && markers < partitions {
            while_writing += 1;
        }
        assert!(
            data.is_empty() || markers >= partitions || success,
            "data listed while only {markers} of {partitions} writers had started: {data:?}"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(while_writing > 0, "the poller never saw the write stage");
    let keys = check_s3_range_output(&s3, &bucket, "out/", 12_000_000).unwrap();
    check_s3_manifest(&s3, &bucket, "out/", &keys, 12_000_000).unwrap();
    assert_nothing_left(&s3, &bucket, "out/");
}

/// The first attempt of one task fails mid-file (a retryable I/O error from
/// the test UDF): Ballista re-runs it, the commit completes the retry's upload
/// and aborts the failed attempt's.
#[test]
fn a_failed_first_attempt_is_retried_and_its_upload_aborted() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("retry").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("failed-once");
    let sql = format!(
        "INSERT OVERWRITE DIRECTORY 's3://{bucket}/out' USING PARQUET \
         SELECT id, sluice_fail_if(id = 1500000, 'injected failure', '{}') AS f \
         FROM range(0, 2000000, 1, 4);",
        marker.display()
    );
    let o = run_job_text(dir.path(), &sql, &[]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(marker.exists(), "the injected failure never fired");
    let keys = check_s3_range_output(&s3, &bucket, "out/", 2_000_000).unwrap();
    assert_eq!(keys.len(), 4);
    // The retry wrote the key the failed attempt had started.
    assert_partition_keys(&keys, 4);
    let m = check_s3_manifest(&s3, &bucket, "out/", &keys, 2_000_000).unwrap();
    // The failed task's uploads: one per partition it ran (Ballista 55 may
    // group the failing partition with another in one task).
    let aborted: u64 = m["diagnostics"]["aborted_uploads"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(aborted >= 1, "{m}");
    assert_nothing_left(&s3, &bucket, "out/");
}

/// SIGKILL an executor while its uploads are open: the other executor
/// re-runs its tasks, the job completes with exactly the rows, and no
/// upload stays open.
#[test]
fn killing_an_executor_mid_upload_leaves_no_partial_output() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("kill").unwrap();
    let mut cluster = Cluster::start(2, 1).unwrap();
    let rows: u64 = 16_000_000;
    let mut child = spawn_range_write(Some(&cluster), &bucket, rows, 8, &[]);
    wait_for_uploads(&s3, &bucket, &mut child, 2);
    assert!(s3.data_keys(&bucket, "out/").unwrap().is_empty());
    let open_at_kill = s3.open_uploads(&bucket, "out/").unwrap();
    cluster.kill_executor(0).unwrap();
    let out = wait_for_exit(child, "the kill");
    assert!(
        out.status.success(),
        "the job failed although an executor survived: {}\nscheduler log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.scheduler_log()
    );
    let keys = check_s3_range_output(&s3, &bucket, "out/", rows).unwrap();
    assert_eq!(keys.len(), 8);
    assert_partition_keys(&keys, 8);
    // Re-run attempts wrote the keys the killed ones had started.
    for key in &open_at_kill {
        assert!(
            keys.contains(key),
            "{key} (open at the kill) not in {keys:?}"
        );
    }
    check_s3_manifest(&s3, &bucket, "out/", &keys, rows).unwrap();
    assert_nothing_left(&s3, &bucket, "out/");
}

/// `sluice cancel` while tasks upload: the job fails, nothing is visible and
/// every upload it started is aborted.
#[test]
fn a_job_cancelled_mid_write_leaves_nothing() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("cancel").unwrap();
    let cluster = Cluster::start(2, 1).unwrap();
    let mut child = spawn_range_write(Some(&cluster), &bucket, 40_000_000, 20, &[]);
    wait_for_uploads(&s3, &bucket, &mut child, 1);
    cluster.cancel_running_job().unwrap();
    let out = wait_for_exit(child, "the cancel");
    assert!(!out.status.success(), "a cancelled job reported success");
    assert!(s3.data_keys(&bucket, "out/").unwrap().is_empty());
    assert!(s3.list(&bucket, "out/_SUCCESS").unwrap().is_empty());
    assert_nothing_left(&s3, &bucket, "out/");
}

fn run_to(output: &str, env: &[(&str, &str)], remove: &[&str]) -> (bool, String, Duration) {
    let mut cmd = sluice().unwrap();
    cmd.arg("run").arg(workspace_root().join(JOB)).args([
        "--var",
        "rows=1000",
        "--var",
        &format!("output={output}"),
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in remove {
        cmd.env_remove(k);
    }
    let started = Instant::now();
    let o = run_with_timeout(&mut cmd, Duration::from_secs(180)).unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).to_string(),
        started.elapsed(),
    )
}

#[test]
fn a_missing_bucket_is_named() {
    let (ok, stderr, _) = run_to("s3://sluice-no-such-bucket/out", &[], &[]);
    assert!(!ok);
    assert!(
        stderr.contains("s3://sluice-no-such-bucket/out/"),
        "{stderr}"
    );
    assert!(stderr.contains("NoSuchBucket"), "{stderr}");
}

#[test]
fn an_unreachable_endpoint_fails_cleanly() {
    let port = free_port().unwrap();
    let dead = format!("http://127.0.0.1:{port}");
    let (ok, stderr, _) = run_to(
        "s3://any-bucket/out",
        &[("AWS_ENDPOINT_URL_S3", &dead)],
        &[],
    );
    assert!(!ok);
    // One error line naming the output, the endpoint and the cause.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    let error = errors[0];
    assert!(error.contains("s3://any-bucket/out/"), "{stderr}");
    assert!(error.contains("not writable"), "{stderr}");
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        error.to_ascii_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert_eq!(error.matches("s3://any-bucket/out/").count(), 1, "{stderr}");
}

#[test]
fn missing_credentials_fail_cleanly() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("nocreds").unwrap();
    // Point the instance-metadata lookup at a closed loopback port, and
    // hide any profile files (~/.aws) the machine has.
    let imds = format!("http://127.0.0.1:{}", free_port().unwrap());
    let home = tempfile::tempdir().unwrap();
    let none = home.path().join("none");
    let (ok, stderr, _) = run_to(
        &format!("s3://{bucket}/out"),
        &[
            ("AWS_METADATA_ENDPOINT", &imds),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("HOME", &home.path().display().to_string()),
            ("AWS_CONFIG_FILE", &none.display().to_string()),
            ("AWS_SHARED_CREDENTIALS_FILE", &none.display().to_string()),
        ],
        &[
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ],
    );
    assert!(!ok, "wrote without credentials");
    // One sentence saying what to set, not the SDK's warnings.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("s3://{bucket}/out/")), "{stderr}");
    assert!(stderr.contains("no AWS credentials"), "{stderr}");
    assert!(stderr.contains("AWS_ACCESS_KEY_ID"), "{stderr}");
    assert!(s3.list(&bucket, "").unwrap().is_empty());
}

/// A third of the part uploads fail with 500: the S3 client retries them, the
/// job completes with exactly its rows and leaves no upload open.
#[test]
fn part_uploads_failing_with_500_are_retried() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("flaky").unwrap();
    let proxy = sluice_test_support::faulty::FaultyS3::start(&s3.endpoint, 3).unwrap();
    let rows: u64 = 24_000_000;
    let mut cmd = sluice().unwrap();
    cmd.arg("run")
        .arg(workspace_root().join(JOB))
        .args(["--var", &format!("rows={rows}"), "--var", "partitions=4"])
        .args(["--var", &format!("output=s3://{bucket}/out")])
        .env("AWS_ENDPOINT_URL_S3", &proxy.endpoint);
    let o = run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let injected = proxy.injected.load(std::sync::atomic::Ordering::SeqCst);
    assert!(injected >= 2, "only {injected} failures injected");
    let keys = check_s3_range_output(&s3, &bucket, "out/", rows).unwrap();
    assert_eq!(keys.len(), 4);
    check_s3_manifest(&s3, &bucket, "out/", &keys, rows).unwrap();
    assert_nothing_left(&s3, &bucket, "out/");
}

/// Environment for a run with no keys: no AWS files of the machine either.
fn without_keys(home: &std::path::Path) -> Vec<(String, String)> {
    vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            home.join("none-credentials").display().to_string(),
        ),
        (
            "AWS_CONFIG_FILE".into(),
            home.join("none-config").display().to_string(),
        ),
    ]
}

const KEY_VARS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
];

/// No keys anywhere, but an instance role (the metadata service's stand-in
/// on loopback): the write signs with the role's credentials, fetched once
/// per process and reused.
#[test]
fn an_instance_role_is_enough() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("imds").unwrap();
    let imds = sluice_test_support::imds::InstanceMetadata::start().unwrap();
    // Every request signed with the role's key, seen by a proxy.
    let proxy = sluice_test_support::faulty::FaultyS3::start(&s3.endpoint, u64::MAX).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut env = without_keys(home.path());
    env.push((
        "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
        imds.endpoint.clone(),
    ));
    env.push(("AWS_ENDPOINT_URL_S3".into(), proxy.endpoint.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut remove = KEY_VARS.to_vec();
    remove.push("AWS_EC2_METADATA_DISABLED");
    let (ok, stderr, _) = run_to(&format!("s3://{bucket}/out"), &env, &remove);
    assert!(ok, "{stderr}");
    let keys = check_s3_range_output(&s3, &bucket, "out/", 1000).unwrap();
    check_s3_manifest(&s3, &bucket, "out/", &keys, 1000).unwrap();
    // Hundreds of signed requests (100 files), a handful of fetches.
    let fetches = imds.credential_fetches();
    assert!(
        (1..=3).contains(&fetches),
        "credentials fetched {fetches} times"
    );
    assert!(imds.tokens() >= 1);
    assert_signed_only_by(&proxy, sluice_test_support::imds::ACCESS_KEY_ID);
}

/// Every request through `proxy` was signed with `key` (and there were some).
fn assert_signed_only_by(proxy: &sluice_test_support::faulty::FaultyS3, key: &str) {
    let signers = proxy.signing_keys();
    assert_eq!(
        signers.keys().collect::<Vec<_>>(),
        vec![key],
        "signing keys: {signers:?}"
    );
    assert!(signers[key] >= 10, "signing keys: {signers:?}");
}

/// No keys in the environment, a named profile in a credentials file: the
/// S3 stores read it as the DynamoDB client does.
#[test]
fn a_profile_is_enough() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("profile").unwrap();
    let proxy = sluice_test_support::faulty::FaultyS3::start(&s3.endpoint, u64::MAX).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut env = without_keys(home.path());
    env.push(("AWS_ENDPOINT_URL_S3".into(), proxy.endpoint.clone()));
    let credentials = home.path().join("credentials");
    std::fs::write(
        &credentials,
        "[sluice-test]\naws_access_key_id = profilekey\naws_secret_access_key = profilesecret\n",
    )
    .unwrap();
    env[0].1 = credentials.display().to_string();
    env.push(("AWS_PROFILE".into(), "sluice-test".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (ok, stderr, _) = run_to(&format!("s3://{bucket}/out"), &env, &KEY_VARS[..3]);
    assert!(ok, "{stderr}");
    let keys = check_s3_range_output(&s3, &bucket, "out/", 1000).unwrap();
    check_s3_manifest(&s3, &bucket, "out/", &keys, 1000).unwrap();
    assert_signed_only_by(&proxy, "profilekey");
}

/// The rename-based shapes kept for `sluice-bench s3-commit` write the same
/// rows as the multipart committer, each once, and leave no staging behind:
/// the benchmark's comparison is between writes of the same output.
#[test]
fn the_rename_committers_of_the_benchmark_write_every_row_once() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("rename").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for committer in ["rename-v1", "rename-v2"] {
        let sql = format!(
            "INSERT OVERWRITE DIRECTORY 's3://{bucket}/{committer}' USING PARQUET \
             OPTIONS ('sluice.committer' '{committer}') \
             SELECT * FROM range(0, 30000, 1, 3);\n"
        );
        let o = run_job_text(dir.path(), &sql, &[]).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let prefix = format!("{committer}/");
        let keys = check_s3_range_output(&s3, &bucket, &prefix, 30_000).unwrap();
        assert_eq!(keys.len(), 3, "{keys:?}");
        check_s3_manifest_of(&s3, &bucket, &prefix, &keys, 30_000, committer).unwrap();
        assert_nothing_left(&s3, &bucket, &prefix);
    }
}

/// CSV and NDJSON to S3 (the multipart committer) and NDJSON to a local
/// directory; all read back through SQL with their `_SUCCESS` in place.
#[test]
fn csv_and_ndjson_go_through_the_same_committers() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("formats").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json_dir = dir.path().join("json");
    let sql = format!(
        "INSERT OVERWRITE DIRECTORY 's3://{bucket}/csv' USING CSV \
               SELECT id, id * 2 AS twice FROM range(0, 100000, 1, 3);\n\
             COPY (SELECT id, 'x' || id AS s FROM range(0, 50000, 1, 2)) TO '{json}' STORED AS JSON;\n\
             COPY (SELECT id, 'y' || id AS s FROM range(0, 40000, 1, 4)) TO 's3://{bucket}/json' STORED AS JSON;\n\
             CREATE EXTERNAL TABLE sj STORED AS JSON LOCATION 's3://{bucket}/json/';\n\
             SELECT count(*) AS n, count(DISTINCT s) AS d, sum(id) AS t FROM sj;\n\
             CREATE EXTERNAL TABLE c STORED AS CSV LOCATION 's3://{bucket}/csv/' OPTIONS ('format.has_header' 'true');\n\
             CREATE EXTERNAL TABLE j STORED AS JSON LOCATION '{json}/';\n\
             SELECT count(*) AS n, sum(twice) AS t, count(DISTINCT id) AS d FROM c;\n\
             SELECT count(*) AS n, count(DISTINCT s) AS d FROM j;\n",
        json = json_dir.display()
    );
    let o = run_job_text(dir.path(), &sql, &[]).unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("| 100000 | 9999900000 | 100000 |"),
        "{stdout}"
    );
    assert!(stdout.contains("| 50000 | 50000 |"), "{stdout}");
    assert!(stdout.contains("| 40000 | 40000 | 799980000 |"), "{stdout}");
    let ndjson = s3.data_keys(&bucket, "json/").unwrap();
    assert_eq!(ndjson.len(), 4);
    assert!(ndjson.iter().all(|k| k.ends_with(".json")), "{ndjson:?}");
    assert_nothing_left(&s3, &bucket, "json/");
    let m: serde_json::Value =
        serde_json::from_slice(&s3.get(&bucket, "json/_SUCCESS").unwrap()).unwrap();
    assert_eq!(m["committer"], "sluice-multipart");
    assert_eq!(m["rows"], 40000);
    let csv = s3.data_keys(&bucket, "csv/").unwrap();
    assert_eq!(csv.len(), 3);
    assert!(csv.iter().all(|k| k.ends_with(".csv")), "{csv:?}");
    assert_nothing_left(&s3, &bucket, "csv/");
    let json = sluice_test_support::visible_files(&json_dir).unwrap();
    assert_eq!(json.len(), 2);
    assert!(json.iter().all(|k| k.ends_with(".json")), "{json:?}");
}

/// `INSERT INTO` and `INSERT OVERWRITE` an external table on S3 go through the
/// committer: appends add files, the overwrite replaces them.
#[test]
fn inserts_into_an_external_table_are_committed() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("insert").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "CREATE EXTERNAL TABLE t (id BIGINT, name VARCHAR) STORED AS PARQUET LOCATION 's3://{bucket}/tbl/';\n\
             INSERT INTO t SELECT id, 'n' || id FROM range(0, 1000, 1, 4);\n\
             INSERT INTO t SELECT id + 1000, 'm' FROM range(0, 500, 1, 2);\n\
             SELECT count(*) AS n, count(DISTINCT id) AS d FROM t;\n\
             INSERT OVERWRITE t SELECT id, 'o' FROM range(0, 10, 1, 1);\n\
             SELECT count(*) AS after_overwrite FROM t;\n"
    );
    let o = run_job_text(dir.path(), &sql, &["--output", "json"]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["rows_written"], 1510);
    assert_eq!(report["files_written"], 7);
    let text = report.to_string();
    assert!(
        text.contains(r#""n":1500"#) && text.contains(r#""d":1500"#),
        "{text}"
    );
    assert!(text.contains(r#""after_overwrite":10"#), "{text}");
    let keys = s3.data_keys(&bucket, "tbl/").unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_nothing_left(&s3, &bucket, "tbl/");
}

/// `PARTITIONED BY` writes Hive directories through the committer; with the
/// open-file cap forced low, writers finish files early instead of holding
/// one per value, and every row still lands once, in its value's directory.
#[test]
fn partitioned_writes_respect_the_open_file_cap() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("parted").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql = format!(
        "COPY (SELECT id, id % 10 AS k FROM range(0, 100000, 1, 4)) TO 's3://{bucket}/p' \
           STORED AS PARQUET PARTITIONED BY (k) \
           OPTIONS ('write.max_open_files' '3', 'write.distribution' 'none');\n\
         CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION 's3://{bucket}/p/';\n\
         SELECT count(*) AS n, count(DISTINCT id) AS d, \
           sum(CASE WHEN CAST(k AS BIGINT) = id % 10 THEN 1 ELSE 0 END) AS placed, \
           count(DISTINCT k) AS dirs FROM p;\n"
    );
    let o = run_job_text(dir.path(), &sql, &[]).unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("| 100000 | 100000 | 100000 | 10   |"),
        "{stdout}"
    );
    let keys = s3.data_keys(&bucket, "p/").unwrap();
    let dirs: std::collections::BTreeSet<_> =
        keys.iter().filter_map(|k| k.split('/').nth(1)).collect();
    assert_eq!(dirs.len(), 10, "{dirs:?}");
    assert!(dirs.iter().all(|d| d.starts_with("k=")), "{dirs:?}");
    // Three open files per writer for ten values forces early finishes.
    assert!(keys.len() > 40, "only {} files", keys.len());
    assert!(keys.iter().all(|k| !k.contains("id=")));
    assert_nothing_left(&s3, &bucket, "p/");
}

/// A client killed with SIGKILL cannot abort its uploads (the embedded
/// cluster dies with it); `sluice clean` finds them through their markers.
#[test]
fn clean_aborts_the_uploads_of_a_killed_client() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("crash").unwrap();
    let mut child = spawn_range_write(None, &bucket, 40_000_000, 8, &["sluice.write.lock_ttl=2s"]);
    wait_for_uploads(&s3, &bucket, &mut child, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!s3.open_uploads(&bucket, "out/").unwrap().is_empty());
    let clean = || {
        run_with_timeout(
            sluice().unwrap().args([
                "clean",
                &format!("s3://{bucket}/out"),
                "--older-than-mins",
                "0",
            ]),
            Duration::from_secs(60),
        )
        .unwrap()
    };
    // Until its lock expires the dead client's write counts as live.
    let o = clean();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cleaned 0 abandoned writes"));
    std::thread::sleep(Duration::from_secs(3));
    let o = clean();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cleaned 1 abandoned writes"));
    assert!(s3.data_keys(&bucket, "out/").unwrap().is_empty());
    assert_nothing_left(&s3, &bucket, "out/");
}

/// Ctrl-C on `sluice run`: the CLI cancels the job, aborts every upload and
/// exits non-zero, leaving nothing under the output.
#[test]
fn interrupting_the_cli_cancels_and_cleans_up() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("sigint").unwrap();
    let mut child = spawn_range_write(None, &bucket, 60_000_000, 12, &[]);
    wait_for_uploads(&s3, &bucket, &mut child, 1);
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = wait_for_exit(child, "Ctrl-C");
    assert!(!out.status.success(), "an interrupted job reported success");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(s3.data_keys(&bucket, "out/").unwrap().is_empty());
    assert_nothing_left(&s3, &bucket, "out/");
}

/// Partitioned overwrites of one S3 table with each distribution in turn
/// (skew, hash, none): each leaves exactly its own rows, every row in its
/// value's directory, `_SUCCESS` listing exactly the files there, and
/// nothing of the earlier write.
#[test]
fn partitioned_overwrites_on_s3_with_each_distribution() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("pover").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (round, distribution) in ["skew", "hash", "none"].into_iter().enumerate() {
        let rows = 60_000 + 10_000 * round as u64;
        let sql = format!(
            "SET sluice.write.distribution = '{distribution}';\n\
             SET sluice.write.target_file_rows = 5000;\n\
             CREATE EXTERNAL TABLE t (seq BIGINT, payload VARCHAR, id BIGINT) STORED AS PARQUET \
               PARTITIONED BY (id) LOCATION 's3://{bucket}/t/';\n\
             INSERT OVERWRITE t SELECT seq, payload, id FROM skewed_events({rows}, {round}, 4);\n\
             SELECT count(*) AS n, count(DISTINCT seq) AS d, count(DISTINCT id) AS ids FROM t;\n"
        );
        let o = run_job_text(dir.path(), &sql, &["--output", "json"]).unwrap();
        assert!(
            o.status.success(),
            "{distribution}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["rows_written"], rows, "{distribution}: {report}");
        let text = report.to_string();
        assert!(
            text.contains(&format!(r#""n":{rows}"#)) && text.contains(&format!(r#""d":{rows}"#)),
            "{distribution}: {text}"
        );
        let mut keys = s3.data_keys(&bucket, "t/").unwrap();
        keys.sort();
        assert!(
            keys.iter()
                .all(|k| k.split('/').nth(1).is_some_and(|d| d.starts_with("id="))),
            "{distribution}: {keys:?}"
        );
        let (listed, manifest_rows) = s3.manifest_files(&bucket, "t/").unwrap();
        assert_eq!(listed, keys, "{distribution}");
        assert_eq!(manifest_rows, rows);
        // With a 5,000-row target, the hot ids are cut into several files.
        assert!(
            keys.len() as u64 >= rows / 5_000,
            "{distribution}: {} files",
            keys.len()
        );
        assert_nothing_left(&s3, &bucket, "t/");
    }
}

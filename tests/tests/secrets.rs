//! Secrets stay out of everything a run leaves behind. A job writes to S3
//! and DynamoDB on a cluster whose processes (and client) hold credentials
//! with unique values, at debug log level, and fails a statement against a
//! missing bucket; then every log line (client, scheduler, executor), every
//! REST answer about its jobs, the manifest and the summary are searched for
//! those values. Statements carrying credentials are refused without
//! echoing them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use sluice_test_support::s3::S3;
use sluice_test_support::{Cluster, run_with_timeout, sluice};

#[test]
fn no_secret_reaches_logs_rest_answers_manifests_or_summaries() {
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("secrets").unwrap();
    let table = sluice_test_support::dynamo::create_table("secrets", 1000).unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (secret, token) = (format!("SeCrEt{id}"), format!("ToKeN{id}"));
    let env = [
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ("AWS_SESSION_TOKEN", token.as_str()),
        ("RUST_LOG", "debug"),
    ];
    let cluster = Cluster::start_with_env(1, 2, &env).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, sql: &str| {
        let job = tmp.path().join(name);
        std::fs::write(&job, sql).unwrap();
        run_with_timeout(
            sluice()
                .unwrap()
                .arg("submit")
                .arg(&job)
                .args(["--scheduler", &cluster.endpoint, "--output", "json"])
                .args(["--log", "debug"])
                .env("SLUICE_COORDINATOR", &cluster.coordinator)
                .envs(env),
            Duration::from_secs(300),
        )
        .unwrap()
    };
    let ok = run(
        "ok.sql",
        &format!(
            "COPY (SELECT * FROM range(0, 10000, 1, 2)) TO 's3://{bucket}/out/' STORED AS PARQUET;\n\
             CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB \
               LOCATION 'dynamodb://{table}' OPTIONS ('write.percent' '1');\n\
             INSERT INTO t SELECT 'k' AS pk, id AS sk FROM range(0, 100, 1, 2);\n"
        ),
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let failed = run(
        "missing.sql",
        &format!("COPY (SELECT 1 AS x) TO 's3://no-such-bucket-{id}/out/' STORED AS PARQUET;\n"),
    );
    assert!(!failed.status.success());
    let refused = run(
        "refused.sql",
        &format!(
            "CREATE EXTERNAL TABLE s STORED AS PARQUET LOCATION 's3://{bucket}/out/' \
             OPTIONS ('aws.secret_access_key' '{secret}');\n"
        ),
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("statements do not take credentials"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let mut seen: Vec<(String, String)> = vec![];
    for (what, o) in [("ok", &ok), ("missing", &failed), ("refused", &refused)] {
        seen.push((
            format!("{what} stdout"),
            String::from_utf8_lossy(&o.stdout).into(),
        ));
        seen.push((
            format!("{what} stderr"),
            String::from_utf8_lossy(&o.stderr).into(),
        ));
    }
    seen.push(("scheduler log".into(), cluster.scheduler_log()));
    seen.push(("executor log".into(), cluster.executor_log(0)));
    let jobs = cluster.jobs().unwrap();
    assert!(jobs.len() >= 2, "{jobs:?}");
    seen.push(("/api/jobs".into(), cluster.rest_text("/api/jobs").unwrap()));
    for job in &jobs {
        let job_id = job["job_id"].as_str().unwrap();
        for path in ["", "/config", "/stages", "/dot"] {
            let path = format!("/api/job/{job_id}{path}");
            seen.push((path.clone(), cluster.rest_text(&path).unwrap()));
        }
    }
    seen.push((
        "_SUCCESS".into(),
        String::from_utf8_lossy(&s3.get(&bucket, "out/_SUCCESS").unwrap()).into(),
    ));
    seen.push((
        "coordinator".into(),
        cluster.coordinator_tables().unwrap().to_string(),
    ));
    let searched: usize = seen.iter().map(|(_, text)| text.len()).sum();
    assert!(searched > 100_000, "only {searched} bytes searched");
    for (what, text) in &seen {
        for value in [&secret, &token] {
            assert!(
                !text.contains(value.as_str()),
                "{what} contains a secret value"
            );
        }
    }
}

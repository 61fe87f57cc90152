//! A fleet as on EC2, on this machine: the scheduler and two executors in
//! their own network namespaces with their own addresses, mutual TLS on,
//! S3 (moto) and DynamoDB Local reached over the fleet's network. A job
//! writes to both while one executor drops off the network (link down);
//! it completes with exactly its rows, and nobody without the cluster's
//! certificate gets an answer from any port. Needs root (`ip netns`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_test_support::fleet::{Fleet, Forward};
use sluice_test_support::s3::S3;
use sluice_test_support::tls::{Peer, TestCerts, plain_http};
use sluice_test_support::{binary, get_json_tls, log_dir, run_with_timeout, sluice};

/// Kills the fleet's processes before the fleet's namespaces go.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn endpoint(var: &str) -> String {
    std::env::var(var)
        .expect("run the tests through scripts/test.sh")
        .trim_start_matches("http://")
        .to_string()
}

fn with_env(mut cmd: Command, env: &[(String, String)], log: &Path) -> Command {
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("SLUICE_METRICS_ADDR")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    cmd
}

#[test]
fn a_tls_fleet_in_namespaces_finishes_a_job_to_s3_and_dynamodb_with_an_executor_cut_off() {
    let fleet = Fleet::create(&["scheduler", "executor-0", "executor-1"]).unwrap();
    let sched = fleet.addr("scheduler").unwrap();
    let ex = [
        fleet.addr("executor-0").unwrap(),
        fleet.addr("executor-1").unwrap(),
    ];
    let certs = TestCerts::for_hosts(&[&sched, &ex[0], &ex[1]]).unwrap();
    let client = certs.client().unwrap();
    let host = fleet.host_ip();
    let s3_forward =
        Forward::start(&format!("{host}:0"), &endpoint("AWS_ENDPOINT_URL_S3")).unwrap();
    let ddb_forward =
        Forward::start(&format!("{host}:0"), &endpoint("AWS_ENDPOINT_URL_DYNAMODB")).unwrap();
    let mut env = certs.node_env();
    env.push((
        "AWS_ENDPOINT_URL_S3".into(),
        format!("http://{}", s3_forward.addr),
    ));
    env.push((
        "AWS_ENDPOINT_URL_DYNAMODB".into(),
        format!("http://{}", ddb_forward.addr),
    ));
    let work = tempfile::tempdir().unwrap();
    let logs = log_dir(work.path()).unwrap();

    let mut procs = Processes(vec![]);
    let scheduler = fleet
        .command("scheduler", &binary("sluice-scheduler").unwrap())
        .unwrap();
    procs.0.push(
        with_env(scheduler, &env, &logs.join("scheduler.log"))
            .args(["--bind-host", &sched, "--external-host", &sched])
            .args(["--bind-port", "50050"])
            .args(["--coordinator-addr", &format!("{sched}:50090")])
            .args(["--executor-timeout-seconds", "6"])
            .args(["--expire-dead-executor-interval-seconds", "2"])
            .spawn()
            .unwrap(),
    );
    let api = |path: &str| get_json_tls(&format!("https://{sched}:50050{path}"), Some(&client));
    let deadline = Instant::now() + Duration::from_secs(30);
    while api("/api/version").is_err() {
        assert!(Instant::now() < deadline, "the scheduler did not answer");
        std::thread::sleep(Duration::from_millis(200));
    }
    for (i, addr) in ex.iter().enumerate() {
        let node = format!("executor-{i}");
        let dir = work.path().join(&node);
        std::fs::create_dir_all(&dir).unwrap();
        let cmd = fleet
            .command(&node, &binary("sluice-executor").unwrap())
            .unwrap();
        procs.0.push(
            with_env(cmd, &env, &logs.join(format!("{node}.log")))
                .args(["--bind-host", addr, "--external-host", addr])
                .args(["--scheduler-host", &sched, "--scheduler-port", "50050"])
                .args([
                    "--vcores",
                    "2",
                    "--executor-heartbeat-interval-seconds",
                    "1",
                ])
                .arg("--work-dir")
                .arg(&dir)
                .spawn()
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while api("/api/executors")
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
        < 2
    {
        assert!(Instant::now() < deadline, "executors did not register");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Every port, from outside the fleet: only the cluster's certificate
    // gets an answer.
    let ports: Vec<SocketAddr> = [
        format!("{sched}:50050"),
        format!("{sched}:50090"),
        format!("{}:50051", ex[0]),
        format!("{}:50051", ex[1]),
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    for port in &ports {
        assert!(certs.probe(*port, Peer::Client).unwrap().is_ok(), "{port}");
        for peer in [Peer::NoCertificate, Peer::Rogue] {
            assert!(
                certs.probe(*port, peer).unwrap().is_err(),
                "{port} {peer:?}"
            );
        }
        assert!(!plain_http(*port).unwrap().starts_with("HTTP/"), "{port}");
    }

    // One job, two writes: Parquet to S3, items to DynamoDB.
    let s3 = S3::from_env().unwrap();
    let bucket = s3.new_bucket("fleet").unwrap();
    let table = sluice_test_support::dynamo::create_table("fleet", 10_000).unwrap();
    let (rows, items) = (3_000_000u64, 20_000u64);
    let job = work.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "INSERT OVERWRITE DIRECTORY 's3://{bucket}/range/' USING PARQUET \
             SELECT * FROM range(0, {rows}, 1, 24);\n\
             CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB \
             LOCATION 'dynamodb://{table}';\n\
             INSERT INTO t SELECT concat('k-', CAST(id % 97 AS VARCHAR)) AS pk, id AS sk \
             FROM range(0, {items}, 1, 8);\n"
        ),
    )
    .unwrap();
    let mut submit = sluice().unwrap();
    submit
        .arg("submit")
        .arg(&job)
        .args(["--scheduler", &format!("{sched}:50050"), "--output", "json"])
        .envs(certs.client_env())
        .env("AWS_ENDPOINT_URL_S3", format!("http://{}", s3_forward.addr))
        .env(
            "AWS_ENDPOINT_URL_DYNAMODB",
            format!("http://{}", ddb_forward.addr),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = std::thread::spawn(move || run_with_timeout(&mut submit, Duration::from_secs(280)));

    // Executor 1 drops off the network once the write runs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = api("/api/jobs").ok().is_some_and(|jobs| {
            jobs.as_array().into_iter().flatten().any(|j| {
                j["job_status"]
                    .as_str()
                    .is_some_and(|s| s.contains("Running"))
            })
        });
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    fleet.set_link("executor-1", false).unwrap();

    let o = run.join().unwrap().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "{err}\nscheduler log:\n{}",
        std::fs::read_to_string(logs.join("scheduler.log")).unwrap_or_default()
    );
    let keys = common::check_s3_range_output(&s3, &bucket, "range/", rows).unwrap();
    let (listed, listed_rows) = s3.manifest_files(&bucket, "range/").unwrap();
    assert_eq!(listed, keys);
    assert_eq!(listed_rows, rows);
    assert!(s3.open_uploads(&bucket, "range/").unwrap().is_empty());
    assert_eq!(common::dynamo_count(&table).unwrap(), items);
    // The writers paced themselves through the coordinator, over TLS: their
    // leases made it list the table (a writer that cannot reach it falls
    // back to a local rate, and the write would succeed all the same).
    let tables = get_json_tls(
        &format!("https://{sched}:50090/v1/dynamodb/tables"),
        Some(&client),
    )
    .unwrap();
    assert!(
        tables
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["table"] == table.as_str()),
        "{tables}"
    );
    // The scheduler saw executor 1 go.
    let deadline = Instant::now() + Duration::from_secs(30);
    while api("/api/executors")
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        != Some(1)
    {
        assert!(Instant::now() < deadline, "executor 1 still listed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

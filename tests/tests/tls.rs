//! Closed by default: every cluster port requires a certificate the cluster
//! CA signed (mutual TLS), and a process without TLS refuses to serve a
//! non-loopback address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use sluice_test_support::tls::{Peer, TestCerts, plain_http};
use sluice_test_support::{Cluster, binary, run_with_timeout, sluice};

/// A job runs on a TLS cluster (shuffle between two executors' Flight
/// ports, placement through the coordinator, all over mutual TLS), and at
/// every port a client without the cluster's certificate gets nothing: not
/// in plain text, not over TLS without a certificate, not with another
/// CA's certificate. A CLI without the files fails clearly and runs nothing.
#[test]
fn a_tls_cluster_runs_jobs_and_refuses_every_port_to_clients_without_its_certificate() {
    let certs = TestCerts::new().unwrap();
    let cluster = Cluster::start_tls(2, 2, &certs, &[]).unwrap();
    let out = tempfile::tempdir().unwrap();

    let (rows, seed, target) = (100_000u64, 5u64, 10_000u64);
    let dir = out.path().join("placed");
    let job = out.path().join("job.sql");
    common::write_skewed_job(&job, rows, seed, 4, &dir, target).unwrap();
    cluster.submit_ok(&job, &[]).unwrap();
    let writers =
        common::check_skewed_output(&dir, rows, target, |r| sluice_udfs::skewed::id_of(seed, r))
            .unwrap();
    // Placement went through the coordinator (over TLS): the hot id spread.
    assert!(writers[&100] >= 2, "{writers:?}");
    assert_eq!(
        cluster.executor_metric("sluice_write_rows_total").unwrap(),
        rows as f64
    );

    // The probes are on the TLS port, for clients with a certificate.
    assert_eq!(cluster.rest_get("/readyz").unwrap().0, 200);
    assert_eq!(cluster.rest_get("/healthz").unwrap().0, 200);

    let addr = |s: &str| -> SocketAddr { s.trim_start_matches("https://").parse().unwrap() };
    let mut ports = vec![
        ("scheduler", addr(&cluster.endpoint)),
        ("coordinator", addr(&cluster.coordinator)),
    ];
    for (i, (flight, metrics)) in cluster.flight.iter().zip(&cluster.metrics).enumerate() {
        ports.push((if i == 0 { "flight 0" } else { "flight 1" }, addr(flight)));
        ports.push((
            if i == 0 { "metrics 0" } else { "metrics 1" },
            addr(metrics),
        ));
    }
    for (what, port) in &ports {
        let ok = certs.probe(*port, Peer::Client).unwrap();
        assert!(
            ok.is_ok(),
            "{what} {port} refused the cluster's client: {ok:?}"
        );
        for peer in [Peer::NoCertificate, Peer::Rogue] {
            let refused = certs.probe(*port, peer).unwrap();
            assert!(refused.is_err(), "{what} {port} answered {peer:?}");
        }
        let plain = plain_http(*port).unwrap();
        assert!(
            !plain.starts_with("HTTP/"),
            "{what} {port} answered plain HTTP: {plain}"
        );
    }

    // The CLI's other commands with the cluster's files: jobs, status and
    // the coordinator's limiter table, over TLS.
    let cli = |args: &[&str]| {
        run_with_timeout(
            sluice()
                .unwrap()
                .args(args)
                .args(["--scheduler", &cluster.endpoint])
                .envs(cluster.cli_env.iter().map(|(k, v)| (k, v))),
            Duration::from_secs(60),
        )
        .unwrap()
    };
    let o = cli(&["jobs", "--output", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let job_id = listed
        .as_array()
        .and_then(|jobs| jobs.iter().find_map(|j| j["job_id"].as_str()))
        .unwrap_or_else(|| panic!("no job listed: {listed}"))
        .to_string();
    let o = cli(&["status", &job_id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&job_id),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = cli(&[
        "limiter",
        "--coordinator",
        &cluster.coordinator,
        "--output",
        "json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok());

    // The CLI without the cluster's files: one clear line, no job.
    let before = cluster.jobs().unwrap().len();
    for args in [
        vec!["jobs"],
        vec!["limiter", "--coordinator", &cluster.coordinator],
    ] {
        let o = run_with_timeout(
            sluice()
                .unwrap()
                .args(&args)
                .args(["--scheduler", &cluster.endpoint]),
            Duration::from_secs(60),
        )
        .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} without certificates: {err}");
        assert!(
            err.contains("give --tls-ca, --tls-cert and --tls-key"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let o = run_with_timeout(
        sluice().unwrap().arg("submit").arg(&job).args([
            "--scheduler",
            &cluster.endpoint,
            "--connect-timeout",
            "3",
        ]),
        Duration::from_secs(60),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("scheduler at {} is unreachable", cluster.endpoint))
            && err.contains("the port speaks TLS: give --tls-ca, --tls-cert and --tls-key"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // With another CA's certificate: refused as well.
    let rogue = certs.rogue_client().unwrap();
    let answer = sluice_test_support::http(Some(&rogue), async |client| {
        Ok(client
            .get(format!("https://{}/api/jobs", cluster.endpoint))
            .send()
            .await
            .map(|r| r.status().as_u16()))
    })
    .unwrap();
    assert!(answer.is_err(), "{answer:?}");
    assert_eq!(cluster.jobs().unwrap().len(), before);
}

fn refused(bin: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let o = run_with_timeout(
        std::process::Command::new(binary(bin).unwrap())
            .env_remove("SLUICE_TLS_CA")
            .env_remove("SLUICE_METRICS_ADDR")
            .args(args)
            .envs(env.iter().copied()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!o.status.success(), "{bin} {args:?} started");
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Every listener's default address is the network's (0.0.0.0); without
/// TLS none of them opens, each named, and half a TLS setting is refused.
#[test]
fn without_tls_no_cluster_port_opens_on_a_network_address() {
    let err = refused("sluice-scheduler", &[], &[]);
    assert!(
        err.contains(
            "refusing to serve the scheduler (gRPC and REST) on 0.0.0.0:50050 without TLS"
        ),
        "{err}"
    );
    let err = refused("sluice-scheduler", &["--bind-host", "127.0.0.1"], &[]);
    assert!(
        err.contains("refusing to serve the coordinator (--coordinator-addr) on 0.0.0.0:50090"),
        "{err}"
    );
    let err = refused(
        "sluice-scheduler",
        &[
            "--bind-host",
            "127.0.0.1",
            "--coordinator-addr",
            "127.0.0.1:0",
        ],
        &[("SLUICE_METRICS_ADDR", "0.0.0.0:0")],
    );
    assert!(
        err.contains("refusing to serve metrics (SLUICE_METRICS_ADDR) on 0.0.0.0:0"),
        "{err}"
    );
    let err = refused("sluice-executor", &[], &[]);
    assert!(
        err.contains(
            "refusing to serve the executor's Flight service (shuffle data) on 0.0.0.0:50051"
        ),
        "{err}"
    );
    let err = refused("sluice-scheduler", &["--tls-ca", "/nonexistent.pem"], &[]);
    assert!(err.contains("all three or none"), "{err}");
    let certs = TestCerts::new().unwrap();
    let env = certs.node_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let err = refused(
        "sluice-executor",
        &[
            "--bind-host",
            "127.0.0.1",
            "--task-scheduling-policy",
            "push-staged",
        ],
        &env,
    );
    assert!(
        err.contains("push-staged serves an executor gRPC port"),
        "{err}"
    );
    // A missing file is named.
    let err = refused(
        "sluice-executor",
        &["--bind-host", "127.0.0.1"],
        &[
            ("SLUICE_TLS_CA", "/nonexistent/ca.pem"),
            ("SLUICE_TLS_CERT", env[1].1),
            ("SLUICE_TLS_KEY", env[2].1),
        ],
    );
    assert!(err.contains("reading TLS CA /nonexistent/ca.pem"), "{err}");
    // The scheduler refuses push scheduling with TLS as the executor does.
    let err = refused(
        "sluice-scheduler",
        &[
            "--bind-host",
            "127.0.0.1",
            "--coordinator-addr",
            "127.0.0.1:0",
            "--scheduler-policy",
            "push-staged",
        ],
        &env,
    );
    assert!(
        err.contains("push-staged needs an executor gRPC port"),
        "{err}"
    );
    // `sluice run` serves metrics on loopback only, and says so.
    let job = tempfile::tempdir().unwrap();
    let file = job.path().join("job.sql");
    std::fs::write(&file, "SELECT 1;").unwrap();
    let o = run_with_timeout(
        sluice()
            .unwrap()
            .arg("run")
            .arg(&file)
            .env("SLUICE_METRICS_ADDR", "0.0.0.0:0"),
        Duration::from_secs(60),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("SLUICE_METRICS_ADDR=0.0.0.0:0: `sluice` serves metrics on loopback only"),
        "{err}"
    );
}

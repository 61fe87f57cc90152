//! `s3-commit`: `range_to_parquet` to S3 through the multipart committer and
//! the rename-based v1 and v2 commits kept for comparison, with what the
//! server charges to complete, copy and put.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sluice_cli::embedded::EmbeddedCluster;
use sluice_core::client::{self, JobRunner, NoProgress};
use sluice_core::sink::files::COMMITTER_OPTION;

/// One write per committer into a fresh prefix, on one embedded cluster.
pub(crate) async fn s3_commit_bench(
    rows: u64,
    partitions: u64,
    rounds: usize,
    bucket: &str,
    server: &str,
) -> Result<Value> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let cluster = EmbeddedCluster::start(2, sluice_core::config::default_slots()).await?;
    let ctx = client::connect(&cluster.endpoint, None, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, &cluster.endpoint, Arc::new(NoProgress))?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    // Warm the cluster and the store's connections so the first committer
    // measured does not pay for them.
    let warm = format!(
        "INSERT OVERWRITE DIRECTORY 's3://{bucket}/bench-{run_id}/warmup' USING PARQUET \
         SELECT * FROM range(0, 1000, 1, {partitions});"
    );
    let warm_report = runner
        .run("s3-commit-warmup.sql", &warm, &HashMap::new())
        .await?;
    // The warm-up's 100 near-empty files: what this server charges per file
    // to commit, whatever its size.
    let floor_ms = warm_report
        .statements
        .iter()
        .find_map(|s| s.write.as_ref())
        .map_or(0, |w| w.commit_ms);
    let profile = server_profile(bucket, &format!("bench-{run_id}/profile")).await?;
    let mut runs = vec![];
    let mut seconds = HashMap::new();
    let mut commit_seconds = HashMap::new();
    let mut rest_seconds = HashMap::new();
    const COMMITTERS: [&str; 3] = ["auto", "rename-v1", "rename-v2"];
    let mut measured: HashMap<&str, Vec<S3Run>> = HashMap::new();
    for round in 0..rounds {
        // Rotate the order so no committer always runs first (or last).
        for i in 0..COMMITTERS.len() {
            let committer = COMMITTERS[(i + round) % COMMITTERS.len()];
            let prefix = format!("bench-{run_id}/{committer}-{round}");
            let run = s3_commit_run(&runner, bucket, &prefix, committer, rows, partitions).await?;
            measured.entry(committer).or_default().push(run);
        }
    }
    for committer in COMMITTERS {
        let mut all = measured.remove(committer).unwrap_or_default();
        all.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        let rounds: Vec<f64> = all.iter().map(|r| round3(r.secs)).collect();
        let Some(m) = all.get(all.len() / 2) else {
            bail!("{committer}: no run");
        };
        let name = if committer == "auto" {
            "sluice_multipart"
        } else {
            committer
        };
        let mut f = figures(name, rows, m.secs, m.files);
        f["rounds_seconds"] = json!(rounds);
        f["bytes"] = json!(m.bytes);
        f["mb_per_sec"] = json!((m.bytes as f64 / 1e6 / m.secs * 10.0).round() / 10.0);
        f["commit_seconds"] = json!(m.commit_secs);
        f["commit_publish_seconds"] = json!(m.publish_secs);
        f["commit_rest_seconds"] = json!(round3(m.commit_secs - m.publish_secs).max(0.0));
        f["commit_share_of_job"] = json!(((m.commit_secs / m.secs) * 10000.0).round() / 10000.0);
        runs.push(f);
        seconds.insert(committer, m.secs);
        commit_seconds.insert(committer, m.commit_secs);
        rest_seconds.insert(committer, (m.commit_secs - m.publish_secs).max(0.0));
    }
    let ledgers = ledger_pass(rows, partitions, bucket, &format!("bench-{run_id}/ledger")).await?;
    for f in &mut runs {
        let committer = match f["name"].as_str() {
            Some("sluice_multipart") => "auto",
            Some(other) => other,
            None => continue,
        };
        if let Some(l) = ledgers.get(committer) {
            f["ledger"] = l.clone();
        }
    }
    let copied = |c: &str| {
        ledgers
            .get(c)
            .and_then(|l| l["copied_bytes_per_written_byte"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let r = |a: f64, b: f64| ((a / b) * 1000.0).round() / 1000.0;
    Ok(json!({
        "bench": "range_to_parquet to S3: commit protocols",
        "s3_server": server,
        "endpoint": std::env::var("AWS_ENDPOINT_URL_S3").unwrap_or_default(),
        "rows": rows,
        "partitions": partitions,
        "rounds": rounds,
        "cores": cores,
        "runs": runs,
        "ratios": {
            "v1_time_over_sluice": r(seconds["rename-v1"], seconds["auto"]),
            "v2_time_over_sluice": r(seconds["rename-v2"], seconds["auto"]),
            "sluice_commit_share_of_job": r(commit_seconds["auto"], seconds["auto"]),
            "sluice_commit_without_completions_share_of_job": r(rest_seconds["auto"], seconds["auto"]),
            "v1_commit_over_sluice_commit": r(commit_seconds["rename-v1"], commit_seconds["auto"]),
        },
        "server_copies": {
            "sluice_copied_bytes_per_written_byte": copied("auto"),
            "v1_copied_bytes_per_written_byte": copied("rename-v1"),
            "v2_copied_bytes_per_written_byte": copied("rename-v2"),
            "target": "0 bytes copied by sluice's commit",
            "target_met": copied("auto") == 0.0,
        },
        "commit_floor": {
            "files": partitions,
            "rows": 1000,
            "commit_seconds": floor_ms as f64 / 1000.0,
        },
        "server_profile": profile,
        "note": "rename = copy + delete on S3; v1 renames in the task and again, one file at a time, in the job commit (as Hadoop's FileOutputCommitter); v2 renames inside the tasks, so its job commit only writes _SUCCESS. sluice completes every upload in the job commit: its commit time is the server's CompleteMultipartUpload cost (server_profile), which AWS S3 pays without moving data",
    }))
}

/// One committer's write in the S3 commit bench.
pub(crate) struct S3Run {
    secs: f64,
    commit_secs: f64,
    /// The commit's first phase, which makes the files visible (completions
    /// or renames: the server's work); the rest is sluice's own bookkeeping.
    publish_secs: f64,
    files: usize,
    bytes: u64,
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub(crate) async fn s3_commit_run(
    runner: &JobRunner,
    bucket: &str,
    prefix: &str,
    committer: &str,
    rows: u64,
    partitions: u64,
) -> Result<S3Run> {
    let sql = format!(
        "INSERT OVERWRITE DIRECTORY 's3://{bucket}/{prefix}' USING PARQUET \
         OPTIONS ('{COMMITTER_OPTION}' '{committer}') \
         SELECT * FROM range(0, {rows}, 1, {partitions});"
    );
    let (report, secs) = timed_write(
        runner,
        &format!("s3-commit-{committer}.sql"),
        &sql,
        &HashMap::new(),
        rows,
    )
    .await?;
    let manifest = read_manifest(bucket, prefix).await?;
    if manifest["rows"].as_u64() != Some(rows) {
        bail!("{committer}: _SUCCESS says {} rows", manifest["rows"]);
    }
    let commit_ms = report
        .statements
        .iter()
        .find_map(|s| s.write.as_ref())
        .map(|w| w.commit_ms as f64)
        .context("the write's commit time")?;
    let publish_ms = manifest["diagnostics"]["publish_ms"]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .context("publish_ms in the _SUCCESS diagnostics")?;
    Ok(S3Run {
        secs,
        commit_secs: commit_ms / 1000.0,
        publish_secs: publish_ms / 1000.0,
        files: report.files_written as usize,
        bytes: report.bytes_written,
    })
}

/// What the server charges for the calls the commit protocols rest on, on
/// one object of `PARTS` x 8 MiB, median of three: sluice's commit is
/// CompleteMultipartUpload, a rename is CopyObject (+ DeleteObject). AWS S3
/// completes an upload without moving its data and copies at its own pace;
/// a local server's costs can be the other way round, and the committers'
/// ratios follow from these figures.
pub(crate) async fn server_profile(bucket: &str, prefix: &str) -> Result<Value> {
    use object_store::multipart::MultipartStore;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStoreExt, PutPayload};
    const PART: usize = 8 * 1024 * 1024;
    const PARTS: usize = 4;
    let url = url::Url::parse(&format!("s3://{bucket}/"))?;
    let store = sluice_core::storage::s3::s3_store(&url)?;
    // Not constant, so a server that compresses or dedups pays in full.
    let part: bytes::Bytes = (0..PART)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    let (mut put, mut copy, mut complete, mut tiny) = (vec![], vec![], vec![], vec![]);
    for round in 0..3 {
        let src = ObjectPath::from(format!("{prefix}/put-{round}"));
        let dst = ObjectPath::from(format!("{prefix}/copy-{round}"));
        let mp = ObjectPath::from(format!("{prefix}/multipart-{round}"));
        let small = ObjectPath::from(format!("{prefix}/tiny-{round}"));
        let t = Instant::now();
        store
            .put(&src, PutPayload::from_iter(vec![part.clone(); PARTS]))
            .await?;
        put.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        store.copy(&src, &dst).await?;
        copy.push(t.elapsed().as_secs_f64());
        let id = store.create_multipart(&mp).await?;
        let mut parts = vec![];
        for idx in 0..PARTS {
            parts.push(store.put_part(&mp, &id, idx, part.clone().into()).await?);
        }
        let t = Instant::now();
        store.complete_multipart(&mp, &id, parts).await?;
        complete.push(t.elapsed().as_secs_f64());
        let id = store.create_multipart(&small).await?;
        let one = store
            .put_part(&small, &id, 0, bytes::Bytes::from_static(b"x").into())
            .await?;
        let t = Instant::now();
        store.complete_multipart(&small, &id, vec![one]).await?;
        tiny.push(t.elapsed().as_secs_f64());
        for p in [&src, &dst, &mp, &small] {
            store.delete(p).await?;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mb = (PART * PARTS) as f64 / 1e6;
    let rate = |secs: f64| (mb / secs * 10.0).round() / 10.0;
    let (put, copy, complete, tiny) = (
        median(&mut put),
        median(&mut copy),
        median(&mut complete),
        median(&mut tiny),
    );
    Ok(json!({
        "object_bytes": PART * PARTS,
        "parts": PARTS,
        "put_mb_per_sec": rate(put),
        "copy_mb_per_sec": rate(copy),
        "complete_multipart_mb_per_sec": rate(complete),
        "complete_one_byte_upload_ms": (tiny * 1e5).round() / 100.0,
        "complete_seconds_over_copy_seconds": ((complete / copy) * 1000.0).round() / 1000.0,
    }))
}

pub(crate) async fn read_manifest(bucket: &str, prefix: &str) -> Result<Value> {
    use object_store::ObjectStoreExt;
    let url = url::Url::parse(&format!("s3://{bucket}/"))?;
    let store = sluice_core::storage::s3::s3_store(&url)?;
    let path = object_store::path::Path::from(format!("{prefix}/_SUCCESS"));
    let body = store.get(&path).await?.bytes().await?;
    Ok(serde_json::from_slice(&body)?)
}

/// The ledger pass: one write per committer, each in a child process whose
/// S3 traffic goes through a counting proxy, so the figures are what any
/// S3-compatible server would be asked to do, whatever its speed: requests
/// per committed file by kind, and bytes copied server-side (`CopyObject`,
/// a rename on S3) per byte written. Kept out of the timed rounds, which
/// the proxy would slow.
async fn ledger_pass(
    rows: u64,
    partitions: u64,
    bucket: &str,
    prefix: &str,
) -> Result<HashMap<&'static str, Value>> {
    let upstream = std::env::var("AWS_ENDPOINT_URL_S3")
        .context("AWS_ENDPOINT_URL_S3: the ledger pass proxies the bench's S3 server")?;
    let proxy = tokio::task::spawn_blocking(move || {
        sluice_test_support::faulty::FaultyS3::start(&upstream, u64::MAX)
    })
    .await??;
    let exe = std::env::current_exe()?;
    let mut out = HashMap::new();
    for committer in ["auto", "rename-v1", "rename-v2"] {
        proxy.reset_ledger();
        let child = tokio::process::Command::new(&exe)
            .arg("s3-commit-ledger")
            .args(["--rows", &rows.to_string()])
            .args(["--partitions", &partitions.to_string()])
            .args(["--bucket", bucket])
            .args(["--prefix", &format!("{prefix}/{committer}")])
            .args(["--committer", committer])
            .env("AWS_ENDPOINT_URL_S3", &proxy.endpoint)
            .kill_on_drop(true)
            .output();
        // A hung write fails the bench rather than stalling it.
        let child = tokio::time::timeout(Duration::from_secs(1800), child)
            .await
            .map_err(|_| anyhow::anyhow!("ledger pass, {committer}: no answer within 30 min"))??;
        if !child.status.success() {
            bail!(
                "ledger pass, {committer}: {}",
                String::from_utf8_lossy(&child.stderr)
            );
        }
        let written: Value = serde_json::from_slice(&child.stdout)?;
        let ledger = proxy.ledger();
        let files = written["files"].as_u64().unwrap_or(0).max(1) as f64;
        let bytes = written["bytes"].as_u64().unwrap_or(0).max(1) as f64;
        let per_file: serde_json::Map<String, Value> = ledger
            .requests
            .iter()
            .map(|(k, n)| {
                (
                    k.to_string(),
                    json!(((*n as f64 / files) * 100.0).round() / 100.0),
                )
            })
            .collect();
        let total: u64 = ledger.requests.values().sum();
        out.insert(
            committer,
            json!({
                "files": written["files"],
                "bytes_written": written["bytes"],
                "requests": total,
                "requests_per_file": ((total as f64 / files) * 100.0).round() / 100.0,
                "requests_per_file_by_kind": per_file,
                "copied_bytes": ledger.copied_bytes,
                "copied_bytes_per_written_byte": ((ledger.copied_bytes as f64 / bytes) * 1000.0).round() / 1000.0,
            }),
        );
    }
    tokio::task::spawn_blocking(move || drop(proxy)).await?;
    Ok(out)
}

/// One write of the ledger pass (`sluice-bench s3-commit-ledger`): its
/// files and bytes, as JSON.
pub(crate) async fn ledger_write(
    rows: u64,
    partitions: u64,
    bucket: &str,
    prefix: &str,
    committer: &str,
) -> Result<Value> {
    let cluster = EmbeddedCluster::start(2, sluice_core::config::default_slots()).await?;
    let ctx = client::connect(&cluster.endpoint, None, Duration::from_secs(10)).await?;
    let runner = JobRunner::new(ctx, &cluster.endpoint, Arc::new(NoProgress))?;
    let run = s3_commit_run(&runner, bucket, prefix, committer, rows, partitions).await?;
    Ok(json!({ "files": run.files, "bytes": run.bytes }))
}

//! The DynamoDB sink against DynamoDB Local (started by
//! `scripts/test-servers.sh`), through the capacity-enforcing proxy where
//! the limiter matters, with real scheduler and executor processes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use sluice_test_support::dynamo::ThrottlingDynamo;
use sluice_test_support::{Cluster, run_with_timeout, sluice, workspace_root};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ddb_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .expect("AWS_ENDPOINT_URL_DYNAMODB: run the tests through scripts/test.sh")
}

/// A fresh table (`pk` S, `sk` N) with `wcu` provisioned write capacity.
fn create_table(hint: &str, wcu: i64) -> String {
    sluice_test_support::dynamo::create_table(hint, wcu).unwrap()
}

/// Every item of `table`, keyed by (pk, sk).
fn scan(table: &str) -> HashMap<(String, String), HashMap<String, AttributeValue>> {
    sluice_test_support::dynamo::scan_items(table)
        .unwrap()
        .into_iter()
        .map(|item| {
            let key = (
                item["pk"].as_s().unwrap().clone(),
                item["sk"].as_n().unwrap().clone(),
            );
            (key, item)
        })
        .collect()
}

fn run_job(dir: &Path, sql: &str, env: &[(&str, &str)], cluster: Option<&Cluster>) -> Output {
    let job = dir.join("job.sql");
    std::fs::write(&job, sql).unwrap();
    let mut cmd = sluice().unwrap();
    match cluster {
        Some(c) => cmd
            .arg("submit")
            .arg(&job)
            .args(["--scheduler", &c.endpoint]),
        None => cmd.arg("run").arg(&job),
    };
    cmd.args(["--output", "json"]).envs(env.iter().copied());
    run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap()
}

fn report(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "job failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn dynamo_summary(report: &serde_json::Value) -> serde_json::Value {
    report["statements"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|s| s["write"]["dynamodb"].as_object().cloned())
        .map(serde_json::Value::Object)
        .expect("a DynamoDB write in the report")
}

const TYPED_TABLE: &str = "CREATE EXTERNAL TABLE t (
    pk VARCHAR, sk BIGINT, name VARCHAR, score DOUBLE, ok BOOLEAN, raw BYTEA,
    price DECIMAL(10, 2), at TIMESTAMP, tags VARCHAR[], nums BIGINT[], labels VARCHAR[]
) STORED AS DYNAMODB LOCATION 'dynamodb://{TBL}'
OPTIONS ('write.percent' '100', 'write.set_columns' 'nums,labels');";

#[test]
fn every_item_arrives_as_typed_through_two_executors() {
    let proxy = ThrottlingDynamo::start(&ddb_endpoint()).unwrap();
    let table = create_table("typed", 1000);
    proxy.set_capacity(&table, 1000.0);
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint.as_str())];
    let cluster = Cluster::start_with_env(2, 2, &env).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 1,200 rows, two per key in a row (raw ids 2k and 2k+1 are item k):
    // a BatchWriteItem may not name a key twice, and the later row wins.
    let sql = format!(
        "{}\nINSERT INTO t SELECT
            concat('k', CAST(id % 100 AS VARCHAR)) AS pk,
            id / 100 AS sk,
            CASE WHEN id % 5 = 0 THEN NULL ELSE concat('name-', CAST(raw AS VARCHAR)) END AS name,
            CAST(id AS DOUBLE) / 4 AS score,
            id % 2 = 0 AS ok,
            CAST(concat('b', CAST(id AS VARCHAR)) AS BYTEA) AS raw,
            CAST(id AS DECIMAL(10, 2)) / 100 AS price,
            CAST(1700000000 + id AS TIMESTAMP) AS at,
            make_array('a', CAST(id AS VARCHAR)) AS tags,
            make_array(id, id, 1) AS nums,
            CASE WHEN id % 3 = 0 THEN make_array() ELSE make_array('x', 'y') END AS labels
          FROM (SELECT id AS raw, id / 2 AS id FROM range(0, 1200, 1, 6));",
        TYPED_TABLE.replace("{TBL}", &table)
    );
    let r = report(&run_job(dir.path(), &sql, &[], Some(&cluster)));
    let d = dynamo_summary(&r);
    assert_eq!(d["items"], 600, "{d}");
    assert_eq!(d["dead_lettered"], 0, "{d}");
    assert_eq!(
        cluster
            .executor_metric("sluice_dynamodb_items_total")
            .unwrap(),
        600.0
    );
    let items = scan(&table);
    assert_eq!(items.len(), 600);
    for id in [0i64, 1, 3, 7, 599] {
        let key = (format!("k{}", id % 100), (id / 100).to_string());
        let item = &items[&key];
        let name = if id % 5 == 0 {
            AttributeValue::Null(true)
        } else {
            AttributeValue::S(format!("name-{}", 2 * id + 1))
        };
        assert_eq!(item["name"], name, "id {id}: {item:?}");
        assert_eq!(
            item["score"],
            AttributeValue::N(format!("{}", id as f64 / 4.0))
        );
        assert_eq!(item["ok"], AttributeValue::Bool(id % 2 == 0));
        assert_eq!(
            item["raw"].as_b().unwrap().as_ref(),
            format!("b{id}").as_bytes()
        );
        assert_eq!(
            item["tags"],
            AttributeValue::L(vec![
                AttributeValue::S("a".into()),
                AttributeValue::S(id.to_string())
            ])
        );
        let mut nums: Vec<String> = item["nums"].as_ns().unwrap().clone();
        nums.sort();
        let mut want = vec![id.to_string(), "1".to_string()];
        want.sort();
        want.dedup();
        assert_eq!(nums, want, "id {id}");
        // An empty set cannot be stored: the attribute is left out.
        assert_eq!(item.contains_key("labels"), id % 3 != 0, "id {id}");
        assert!(
            item["at"].as_s().unwrap().starts_with("2023-11-14T22:"),
            "{:?}",
            item["at"]
        );
        assert!(item["price"].as_n().is_ok());
    }
}

#[test]
fn key_schema_and_type_mismatches_fail_before_writing() {
    let table = create_table("keys", 100);
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "CREATE EXTERNAL TABLE t (pk BIGINT, sk BIGINT) STORED AS DYNAMODB LOCATION 'dynamodb://{TBL}';
             INSERT INTO t SELECT id AS pk, id AS sk FROM range(0, 10, 1, 1);",
            "key attribute 'pk' of table '{TBL}' is S, but column 'pk' is Int64",
        ),
        (
            "CREATE EXTERNAL TABLE t (pk VARCHAR, other BIGINT) STORED AS DYNAMODB LOCATION 'dynamodb://{TBL}';
             INSERT INTO t SELECT 'a' AS pk, id AS other FROM range(0, 10, 1, 1);",
            "has key attribute 'sk' (N) but the statement has no column 'sk'",
        ),
        (
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT, span INTERVAL) STORED AS DYNAMODB LOCATION 'dynamodb://{TBL}';
             INSERT INTO t SELECT 'a' AS pk, id AS sk, INTERVAL '1 day' AS span FROM range(0, 10, 1, 1);",
            "column 'span'",
        ),
        (
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB LOCATION 'dynamodb://no-such-table';
             INSERT INTO t SELECT 'a' AS pk, id AS sk FROM range(0, 10, 1, 1);",
            "DescribeTable no-such-table: ResourceNotFoundException",
        ),
        (
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB LOCATION 'dynamodb://{TBL}'
             OPTIONS ('write.precent' '50');
             INSERT INTO t SELECT 'a' AS pk, id AS sk FROM range(0, 10, 1, 1);",
            "unknown option 'write.precent'",
        ),
        (
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB LOCATION 'dynamodb://{TBL}'
             OPTIONS ('write.percent' '0');
             INSERT INTO t SELECT 'a' AS pk, id AS sk FROM range(0, 10, 1, 1);",
            "option 'write.percent' = '0': must be in (0, 1] or (0, 100]",
        ),
        (
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB LOCATION 'dynamodb://{TBL}'
             OPTIONS ('write.dead_letter' 'relative/dir');
             INSERT INTO t SELECT 'a' AS pk, id AS sk FROM range(0, 10, 1, 1);",
            "dead-letter location 'relative/dir' must be an absolute path or a URL",
        ),
        (
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB LOCATION 's3://bucket/x';
             INSERT INTO t SELECT 'a' AS pk, id AS sk FROM range(0, 10, 1, 1);",
            "location 's3://bucket/x' must be dynamodb://<table>",
        ),
    ];
    for (sql, expected) in cases {
        let o = run_job(dir.path(), &sql.replace("{TBL}", &table), &[], None);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{sql} succeeded");
        assert!(
            stderr.contains(&expected.replace("{TBL}", &table)),
            "expected '{expected}' in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(scan(&table).is_empty(), "nothing may be written");
}

/// A hang would be caught by `run_job`'s deadline; the check here is that
/// the error names the call and the table.
#[test]
fn an_unreachable_endpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let port = sluice_test_support::free_port().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let o = run_job(
        dir.path(),
        "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB LOCATION 'dynamodb://anything';
         INSERT INTO t SELECT 'a' AS pk, id AS sk FROM range(0, 10, 1, 1);",
        &[("AWS_ENDPOINT_URL_DYNAMODB", endpoint.as_str())],
        None,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("DescribeTable anything"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn oversized_items_go_to_the_dead_letter_location() {
    let table = create_table("big", 1000);
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead");
    let sql = |options: &str| {
        format!(
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT, body VARCHAR) STORED AS DYNAMODB
             LOCATION 'dynamodb://{table}' OPTIONS ('write.percent' '100'{options});
             INSERT INTO t SELECT 'k' AS pk, id AS sk,
               CASE WHEN id = 7 THEN repeat('x', 500000) ELSE 'small' END AS body
             FROM range(0, 50, 1, 2);"
        )
    };
    // Without a dead-letter location the job fails and says why.
    let o = run_job(dir.path(), &sql(""), &[], None);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("1 items could not be written to DynamoDB table")
            && stderr.contains("over DynamoDB's 409600 byte limit"),
        "{stderr}"
    );
    let with_dlq = format!(", 'write.dead_letter' '{}'", dead.display());
    let r = report(&run_job(dir.path(), &sql(&with_dlq), &[], None));
    let d = dynamo_summary(&r);
    assert_eq!(d["items"], 49, "{d}");
    assert_eq!(d["dead_lettered"], 1, "{d}");
    let items = scan(&table);
    assert_eq!(items.len(), 49);
    assert!(!items.contains_key(&("k".to_string(), "7".to_string())));
    let mut records = vec![];
    for entry in walk(&dead) {
        for line in std::fs::read_to_string(entry).unwrap().lines() {
            records.push(serde_json::from_str::<serde_json::Value>(line).unwrap());
        }
    }
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(
        records[0]["reason"]
            .as_str()
            .unwrap()
            .contains("over DynamoDB's")
    );
    assert_eq!(records[0]["item"]["sk"]["N"], "7");
    assert_eq!(
        records[0]["item"]["body"]["S"].as_str().unwrap().len(),
        500000
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The coordinator's writers for `table`, its rate and the sum of grants;
/// fails if the grants add up past the table's budget.
fn writers(cluster: &Cluster, table: &str) -> (Vec<String>, f64, f64) {
    let tables = cluster.coordinator_tables().unwrap_or_default();
    tables
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["table"] == table)
        .map(|t| {
            let w = t["writers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_str().unwrap().to_string())
                .collect();
            let (rate, granted) = (t["rate"].as_f64().unwrap(), t["granted"].as_f64().unwrap());
            let budget = t["budget"].as_f64().unwrap();
            assert!(
                granted <= budget + 1e-6,
                "grants {granted} over the budget {budget} (writers {w:?})"
            );
            (w, rate, granted)
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_executors_share_goes_to_the_others() {
    let proxy = ThrottlingDynamo::start(&ddb_endpoint()).unwrap();
    let table = create_table("kill", 400);
    proxy.set_capacity(&table, 400.0);
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint.as_str())];
    let mut cluster = Cluster::start_with_env(2, 2, &env).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // ~1 KB items, 6,000 WCU at 400 WCU/s: about 15 s of writing.
    let sql =
        std::fs::read_to_string(workspace_root().join("jobs/events_to_dynamodb.sql")).unwrap();
    let job = dir.path().join("job.sql");
    std::fs::write(&job, sql).unwrap();
    let child = sluice()
        .unwrap()
        .arg("submit")
        .arg(&job)
        .args(["--scheduler", &cluster.endpoint])
        .args(["--var", &format!("table={table}"), "--var", "rows=6000"])
        .args(["--var", "partitions=4", "--var", "percent=100"])
        .args(["--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let victim = format!("pid{}/", cluster.executors[1].id());
    let survivor = format!("pid{}/", cluster.executors[0].id());
    // Both executors are writing.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (w, _, _) = writers(&cluster, &table);
        if w.iter().any(|x| x.contains(&victim)) && w.iter().any(|x| x.contains(&survivor)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writers never ran on both executors: {w:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The CLI shows the same view of the limiter.
    let shown = run_with_timeout(
        sluice()
            .unwrap()
            .args(["limiter", "--coordinator", &cluster.coordinator])
            .args(["--output", "json"]),
        Duration::from_secs(30),
    )
    .unwrap();
    let tables: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let shown = tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table.as_str())
        .expect("the table in `sluice limiter`");
    assert_eq!(shown["budget"], 388.0, "97% of 400 WCU: {shown}");
    assert!(!shown["writers"].as_array().unwrap().is_empty(), "{shown}");
    cluster.kill_executor(1).unwrap();
    let killed = Instant::now();
    // Its leases lapse within seconds, and the table's rate is shared by
    // the writers left.
    loop {
        let (w, rate, granted) = writers(&cluster, &table);
        // Gone, and the survivors hold the whole rate again (they pick up
        // the freed share at their next renewal, 250 ms).
        if !w.iter().any(|x| x.contains(&victim)) && !w.is_empty() && granted >= 0.9 * rate {
            assert!(w.iter().all(|x| x.contains(&survivor)), "{w:?}");
            break;
        }
        // A hang guard, not a speed check: leases lapse 3 s after the last
        // renewal by design.
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the killed executor's share was not handed on: {w:?}, rate {rate}, granted {granted}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Grants stay within the budget to the end (checked by `writers`).
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        writers(&cluster, &table);
        assert!(Instant::now() < deadline, "the job hung after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let r = report(&out);
    let d = dynamo_summary(&r);
    // At least once: the killed tasks ran again on the survivor.
    assert!(d["items"].as_u64().unwrap() >= 6000, "{d}");
    assert_eq!(scan(&table).len(), 6000);
    // The limiter's promise while writers joined and one executor's left:
    // the table was not over-driven (throttled requests under 10%).
    let (throttled, requests) = proxy.stats(|s| (s.throttled_requests, s.batch_requests));
    assert!(requests > 0);
    assert!(
        throttled * 10 <= requests,
        "{throttled} of {requests} requests throttled"
    );
}

#[test]
fn writers_continue_at_a_safe_share_without_the_coordinator() {
    let table = create_table("nocoord", 1000);
    let dir = tempfile::tempdir().unwrap();
    let dead = format!(
        "http://127.0.0.1:{}",
        sluice_test_support::free_port().unwrap()
    );
    // An executor whose --coordinator-url (here its variable) is dead.
    let cluster =
        Cluster::start_with_env(1, 2, &[("SLUICE_COORDINATOR_URL", dead.as_str())]).unwrap();
    let o = run_job(
        dir.path(),
        &format!(
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB
             LOCATION 'dynamodb://{table}' OPTIONS ('write.percent' '100');
             INSERT INTO t SELECT 'k' AS pk, id AS sk FROM range(0, 200, 1, 2);"
        ),
        &[],
        Some(&cluster),
    );
    let d = dynamo_summary(&report(&o));
    assert_eq!(d["items"], 200, "{d}");
    // 97% of the capacity: see `MAX_SHARE`.
    assert_eq!(d["budget_wcu"], 970.0, "{d}");
    let log = cluster.executor_log(0);
    assert!(
        log.contains("DynamoDB coordinator unreachable: writing at a safe local share"),
        "{log}"
    );
    assert_eq!(scan(&table).len(), 200);
}

#[test]
fn the_proxy_enforces_capacity_like_the_service() {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let proxy = ThrottlingDynamo::start(&ddb_endpoint()).unwrap();
    let table = create_table("proxy", 100);
    proxy.set_capacity(&table, 100.0);
    std::thread::sleep(Duration::from_millis(1100));
    let started = Instant::now();
    let outcomes = rt().block_on(async {
        let direct = sluice_core::storage::dynamodb::client().await;
        let client = aws_sdk_dynamodb::Client::from_conf(
            direct
                .config()
                .to_builder()
                .endpoint_url(&proxy.endpoint)
                .build(),
        );
        let mut outcomes = vec![];
        for batch in 0..10 {
            let requests: Vec<WriteRequest> = (0..25)
                .map(|i| {
                    let item = HashMap::from([
                        ("pk".to_string(), AttributeValue::S("p".into())),
                        (
                            "sk".to_string(),
                            AttributeValue::N((batch * 25 + i).to_string()),
                        ),
                    ]);
                    WriteRequest::builder()
                        .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                        .build()
                })
                .collect();
            let out = client
                .batch_write_item()
                .request_items(&table, requests)
                .send()
                .await;
            outcomes.push(match out {
                Ok(o) => o
                    .unprocessed_items()
                    .and_then(|u| u.get(&table))
                    .map_or(0, Vec::len),
                Err(e) => {
                    let code = aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e)
                        .unwrap_or_default()
                        .to_string();
                    assert_eq!(code, "ProvisionedThroughputExceededException", "{e:?}");
                    25
                }
            });
        }
        outcomes
    });
    // A full bucket holds one second (100 WCU): four batches fit, then the
    // bucket only refills at 100 WCU/s, so later batches are cut short
    // (unprocessed items) or refused (HTTP 400).
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(&outcomes[..4], &[0, 0, 0, 0], "{outcomes:?}");
    let written = 250 - outcomes.iter().sum::<usize>();
    assert!(
        (written as f64) <= 100.0 + 100.0 * elapsed + 1.0,
        "{written} items in {elapsed:.2}s: {outcomes:?}"
    );
    assert_eq!(scan(&table).len(), written);
    assert!(proxy.stats(|s| s.throttled_requests) >= 1);
}

#[test]
fn items_dynamodb_refuses_are_dead_lettered_with_its_reason() {
    let table = create_table("invalid", 1000);
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead");
    // An empty string is not a valid key value: DynamoDB refuses the whole
    // batch, the writer finds the item by sending the batch item by item.
    let o = run_job(
        dir.path(),
        &format!(
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT) STORED AS DYNAMODB
             LOCATION 'dynamodb://{table}'
             OPTIONS ('write.percent' '100', 'write.dead_letter' '{}');
             INSERT INTO t SELECT CASE WHEN id = 3 THEN '' ELSE 'k' END AS pk, id AS sk
             FROM range(0, 20, 1, 1);",
            dead.display()
        ),
        &[],
        None,
    );
    let d = dynamo_summary(&report(&o));
    assert_eq!(d["items"], 19, "{d}");
    assert_eq!(d["dead_lettered"], 1, "{d}");
    assert_eq!(scan(&table).len(), 19);
    let files = walk(&dead);
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let record: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .contains("ValidationException"),
        "{record}"
    );
    assert_eq!(record["item"]["sk"]["N"], "3");
}

#[test]
fn dead_letters_can_go_to_s3() {
    let s3 = sluice_test_support::s3::S3::from_env().unwrap();
    let bucket = s3.new_bucket("dead").unwrap();
    let table = create_table("s3dead", 1000);
    let dir = tempfile::tempdir().unwrap();
    let r = report(&run_job(
        dir.path(),
        &format!(
            "CREATE EXTERNAL TABLE t (pk VARCHAR, sk BIGINT, body VARCHAR) STORED AS DYNAMODB
             LOCATION 'dynamodb://{table}'
             OPTIONS ('write.percent' '100', 'write.dead_letter' 's3://{bucket}/dead/');
             INSERT INTO t SELECT 'k' AS pk, id AS sk,
               CASE WHEN id % 10 = 0 THEN repeat('x', 420000) ELSE 'small' END AS body
             FROM range(0, 30, 1, 2);"
        ),
        &[],
        None,
    ));
    let d = dynamo_summary(&r);
    assert_eq!(d["items"], 27, "{d}");
    assert_eq!(d["dead_lettered"], 3, "{d}");
    assert!(
        d["dead_letter"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket}/dead"))
    );
    let mut sks = vec![];
    for object in s3.list(&bucket, "dead/").unwrap() {
        let body = s3.get(&bucket, &object.key).unwrap();
        for line in String::from_utf8(body).unwrap().lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            sks.push(record["item"]["sk"]["N"].as_str().unwrap().to_string());
        }
    }
    sks.sort();
    assert_eq!(sks, ["0", "10", "20"]);
    assert_eq!(scan(&table).len(), 27);
}

/// An executor cut off mid-write (SIGSTOP), its job cancelled meanwhile:
/// when it runs again (SIGCONT) its writers stop within a renewal or two
/// (the client told the coordinator the write ended, and a writer that
/// could not renew its lease for `CUT_OFF` stops anyway) instead of putting
/// the rest of their items.
#[test]
fn a_cut_off_executors_writers_stop_once_their_write_ended() {
    let table = create_table("pause", 100);
    let cluster = Cluster::start(1, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sql =
        std::fs::read_to_string(workspace_root().join("jobs/events_to_dynamodb.sql")).unwrap();
    let job = dir.path().join("job.sql");
    std::fs::write(&job, sql).unwrap();
    // ~1 KB items at 97 WCU/s: a minute of writing.
    let mut child = sluice()
        .unwrap()
        .arg("submit")
        .arg(&job)
        .args(["--scheduler", &cluster.endpoint])
        .args(["--var", &format!("table={table}"), "--var", "rows=6000"])
        .args(["--var", "partitions=2", "--var", "percent=100"])
        .args([
            "--var",
            &format!("dead_letter={}", dir.path().join("dl").display()),
        ])
        .env("SLUICE_COORDINATOR", &cluster.coordinator)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while scan(&table).len() < 100 {
        assert!(Instant::now() < deadline, "the writers never started");
        assert!(child.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.signal_executor(0, "-STOP").unwrap();
    cluster.cancel_running_job().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the cancelled job never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a cancelled job reported success");
    let at_resume = scan(&table).len();
    cluster.signal_executor(0, "-CONT").unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let after = scan(&table).len();
    // At most the batch each writer had in flight when it was stopped (25
    // items); writing on would have put ~8 s x 97 WCU/s.
    assert!(
        after - at_resume <= 50,
        "{} items were put after the write ended ({at_resume} -> {after})\nclient: {}",
        after - at_resume,
        String::from_utf8_lossy(&out.stderr)
    );
    let log = cluster.executor_log(0);
    assert!(log.contains("DynamoDB writer stops"), "{log}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(scan(&table).len(), after, "writers went on putting items");
}

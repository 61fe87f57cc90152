//! Reading `STORED AS DYNAMODB` tables: the rate-limited parallel scan and
//! the partition-key Query, against DynamoDB Local behind the proxy that
//! meters read capacity like the service, with real scheduler and executor
//! processes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use sluice_test_support::dynamo::{
    ThrottlingDynamo, create_on_demand_table, create_table_with, load_items,
};
use sluice_test_support::{Cluster, run_with_timeout, sluice};

fn ddb_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .expect("AWS_ENDPOINT_URL_DYNAMODB: run the tests through scripts/test.sh")
}

fn run(dir: &Path, sql: &str, env: &[(&str, &str)], cluster: Option<&Cluster>) -> Output {
    let job = dir.join(format!("job-{}.sql", uuid::Uuid::new_v4().simple()));
    std::fs::write(&job, sql).unwrap();
    let mut cmd = sluice().unwrap();
    match cluster {
        Some(c) => cmd
            .arg("submit")
            .arg(&job)
            .args(["--scheduler", &c.endpoint]),
        None => cmd.arg("run").arg(&job),
    };
    cmd.envs(env.iter().copied());
    run_with_timeout(&mut cmd, Duration::from_secs(300)).unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "job failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "job should fail");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out
}

/// The backfill scaled to this machine: 12,000 items of about
/// 830 bytes (about 1,230 RCU eventually consistent) on a 160 RCU table
/// read at `read.percent` 0.5 by 8 segments over two executors: every item
/// once, read no faster than the 80 RCU/s budget (5% slack) by the proxy's
/// own count, without a throttling storm.
/// The coordinator's read budget (RCU/s) for `table`.
fn read_budget(cluster: &Cluster, table: &str) -> serde_json::Value {
    let tables = cluster.coordinator_tables().unwrap();
    tables
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table && t["capacity"] == "read")
        .unwrap_or_else(|| panic!("no read budget for {table}: {tables}"))["budget"]
        .clone()
}

/// What the proxy metered (RCU consumed, Scan calls, throttled reads),
/// checked: the RCU read in `rcu`, and the rate from the first answered
/// read to the last at most 5% over `budget` RCU/s.
fn within_budget(
    proxy: &ThrottlingDynamo,
    rcu: std::ops::Range<f64>,
    budget: f64,
) -> (f64, u64, u64) {
    let (consumed, calls, throttles, secs) = proxy.stats(|s| {
        let first = s.read_timeline.first().map_or(0.0, |t| t.0);
        let last = s.read_timeline.last().map_or(0.0, |t| t.0);
        (
            s.accepted_rcu,
            s.scan_requests,
            s.read_throttles,
            last - first,
        )
    });
    assert!(rcu.contains(&consumed), "{consumed} RCU");
    let rate = consumed / secs;
    eprintln!(
        "{consumed:.0} RCU in {secs:.1} s = {rate:.1} RCU/s (budget {budget}), {calls} scans, {throttles} throttled"
    );
    assert!(
        rate <= budget * 1.05,
        "{rate:.1} RCU/s over the {budget} RCU/s budget"
    );
    (consumed, calls, throttles)
}

#[test]
fn a_backfill_reads_every_item_once_within_its_read_budget() {
    let proxy = ThrottlingDynamo::start(&ddb_endpoint()).unwrap();
    let table = create_table_with("backfill", 160, 1000).unwrap();
    const ITEMS: u64 = 12_000;
    load_items(&table, ITEMS, 40, 800).unwrap();
    proxy.set_read_capacity(&table, 160.0);
    proxy.reset_stats();
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint.as_str())];
    let cluster = Cluster::start_with_env(2, 2, &env).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sql = format!(
        "CREATE EXTERNAL TABLE src (pk VARCHAR NOT NULL, sk BIGINT NOT NULL, n DOUBLE, body VARCHAR)
           STORED AS DYNAMODB LOCATION 'dynamodb://{table}'
           OPTIONS ('read.percent' '0.5', 'read.segments' '8');
         CREATE EXTERNAL TABLE out (pk VARCHAR, sk BIGINT, n DOUBLE, body_len INT)
           STORED AS PARQUET LOCATION '{}/';
         INSERT INTO out SELECT pk, sk, n, length(body) AS body_len FROM src;",
        out.display()
    );
    ok(&run(dir.path(), &sql, &[], Some(&cluster)));

    let mut seen = BTreeSet::new();
    let mut rows = 0u64;
    for file in parquet_files(&out) {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let pk = batch
                .column_by_name("pk")
                .unwrap()
                .as_string::<i32>()
                .clone();
            let sk = batch
                .column_by_name("sk")
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone();
            let n = batch
                .column_by_name("n")
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone();
            let len = batch
                .column_by_name("body_len")
                .unwrap()
                .as_primitive::<Int32Type>()
                .clone();
            for i in 0..batch.num_rows() {
                let id = sk.value(i);
                assert_eq!(pk.value(i), format!("k{}", id % 40));
                assert_eq!(n.value(i), id as f64);
                assert_eq!(len.value(i), 800);
                assert!(!len.is_null(i));
                seen.insert(id);
                rows += 1;
            }
        }
    }
    assert_eq!(rows, ITEMS, "every item once");
    assert_eq!(seen.len() as u64, ITEMS);

    // 12,000 items of ~830 bytes: ~2,430 4 KB units, halved.
    let (consumed, reads, throttles) = within_budget(&proxy, 1_150.0..1_400.0, 80.0);
    assert!(
        throttles * 20 <= reads,
        "{throttles} of {reads} reads throttled"
    );
    // The executors charged what the service (here the proxy) says.
    let charged = cluster
        .executor_metric("sluice_dynamodb_consumed_rcu_total")
        .unwrap();
    assert!((charged - consumed).abs() <= 8.0, "{charged} vs {consumed}");
    // The read budget was the coordinator's, from the table's RCU.
    assert_eq!(read_budget(&cluster, &table), 80.0);
}

/// An on-demand table has no read capacity to take a share of:
/// `read.max_units` is its budget, which the coordinator holds and the
/// read keeps to, every item once.
#[test]
fn an_on_demand_backfill_keeps_to_read_max_units() {
    let proxy = ThrottlingDynamo::start(&ddb_endpoint()).unwrap();
    let table = create_on_demand_table("ondemand").unwrap();
    const ITEMS: u64 = 6_000;
    load_items(&table, ITEMS, 40, 800).unwrap();
    proxy.reset_stats();
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint.as_str())];
    let cluster = Cluster::start_with_env(2, 2, &env).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sql = format!(
        "CREATE EXTERNAL TABLE src (pk VARCHAR NOT NULL, sk BIGINT NOT NULL)
           STORED AS DYNAMODB LOCATION 'dynamodb://{table}'
           OPTIONS ('read.max_units' '40', 'read.segments' '4');
         CREATE EXTERNAL TABLE out (pk VARCHAR, sk BIGINT) STORED AS PARQUET LOCATION '{}/';
         INSERT INTO out SELECT pk, sk FROM src;",
        out.display()
    );
    ok(&run(dir.path(), &sql, &[], Some(&cluster)));
    let mut seen = BTreeSet::new();
    for file in parquet_files(&out) {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let sk = batch
                .column_by_name("sk")
                .unwrap()
                .as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                assert!(seen.insert(sk.value(i)), "item {} twice", sk.value(i));
            }
        }
    }
    assert_eq!(seen.len() as u64, ITEMS, "every item once");
    assert_eq!(read_budget(&cluster, &table), 40.0);
    // 6,000 items of ~830 bytes: ~1,216 4 KB units, halved.
    within_budget(&proxy, 570.0..680.0, 40.0);
}

const TYPED: &str = "CREATE EXTERNAL TABLE t (
    pk VARCHAR NOT NULL, sk BIGINT NOT NULL, name VARCHAR, score DOUBLE, ok BOOLEAN, raw BYTEA,
    price DECIMAL(10, 2), at TIMESTAMP, tags VARCHAR[], nums BIGINT[]
) STORED AS DYNAMODB LOCATION 'dynamodb://{TBL}'
OPTIONS ('write.percent' '100', 'write.set_columns' 'nums');\n";

/// Items the sink wrote read back into the same typed columns, and a
/// filter on the partition key is answered by Queries, not a Scan.
#[test]
fn written_items_read_back_typed_and_key_filters_become_queries() {
    let proxy = ThrottlingDynamo::start(&ddb_endpoint()).unwrap();
    let table = create_table_with("typed-read", 1000, 1000).unwrap();
    let env = [("AWS_ENDPOINT_URL_DYNAMODB", proxy.endpoint.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let ddl = TYPED.replace("{TBL}", &table);
    let write = format!(
        "{ddl}INSERT INTO t SELECT
            concat('k', CAST(id % 3 AS VARCHAR)) AS pk, id AS sk,
            CASE WHEN id % 5 = 0 THEN NULL ELSE concat('name-', CAST(id AS VARCHAR)) END AS name,
            CAST(id AS DOUBLE) / 4 AS score, id % 2 = 0 AS ok,
            CAST(concat('b', CAST(id AS VARCHAR)) AS BYTEA) AS raw,
            CAST(id AS DECIMAL(10, 2)) / 100 AS price,
            CAST(1700000000 + id AS TIMESTAMP) AS at,
            make_array('a', CAST(id AS VARCHAR)) AS tags,
            make_array(id, 1) AS nums
          FROM range(0, 60);"
    );
    ok(&run(dir.path(), &write, &env, None));

    proxy.reset_stats();
    let all = ok(&run(
        dir.path(),
        &format!(
            "{ddl}SELECT count(*) AS c, sum(sk) AS s, count(name) AS named, sum(score) AS total,
                sum(CASE WHEN ok THEN 1 ELSE 0 END) AS oks, sum(price) AS prices FROM t;"
        ),
        &env,
        None,
    ));
    assert!(
        all.contains("| 60 | 1770 | 48    | 442.5 | 30  | 17.70  |"),
        "{all}"
    );
    assert!(proxy.stats(|s| s.scan_requests) > 0);

    proxy.reset_stats();
    let keyed = ok(&run(
        dir.path(),
        &format!(
            "{ddl}SELECT sk, name, raw, price, at, tags, cardinality(nums) AS n FROM t WHERE pk = 'k1' AND sk = 7;
             SELECT count(*) AS c FROM t WHERE pk IN ('k1', 'k2', 'nobody');"
        ),
        &env,
        None,
    ));
    assert!(
        keyed.contains("| 7  | name-7 | 6237 | 0.07  | 2023-11-14T22:13:27 | [a, 7] | 2 |"),
        "{keyed}"
    );
    assert!(keyed.contains("| 40 |"), "{keyed}");
    let (scans, queries) = proxy.stats(|s| (s.scan_requests, s.query_requests));
    assert_eq!(scans, 0, "a key filter scanned the table");
    assert!(queries >= 4, "{queries} queries");
}

/// Bad input names what and where, and nothing panics.
#[test]
fn bad_reads_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let table = create_table_with("bad-read", 100, 100).unwrap();
    load_items(&table, 30, 3, 10).unwrap();
    let read = |columns: &str, location: &str, options: &str, env: &[(&str, &str)]| {
        failed(&run(
            dir.path(),
            &format!(
                "CREATE EXTERNAL TABLE t ({columns}) STORED AS DYNAMODB LOCATION 'dynamodb://{location}' {options};
                 SELECT * FROM t;"
            ),
            env,
            None,
        ))
    };
    let columns = "pk VARCHAR, sk BIGINT, body VARCHAR";
    let err = read(columns, "no-such-table-4", "", &[]);
    assert!(err.contains("no-such-table-4"), "{err}");
    assert!(err.contains("ResourceNotFoundException"), "{err}");

    let err = read("pk VARCHAR, sk BIGINT, body BIGINT", &table, "", &[]);
    assert!(
        err.contains(&format!("reading DynamoDB table {table}")),
        "{err}"
    );
    assert!(err.contains("item pk=\"k"), "{err}");
    assert!(err.contains("body Int64"), "{err}");
    assert!(
        err.contains("failed to parse \"xxxxxxxxxx\" as Int64"),
        "{err}"
    );

    let err = read(columns, &table, "OPTIONS ('read.percent' 'lots')", &[]);
    assert!(
        err.contains("option 'read.percent' = 'lots': not a number"),
        "{err}"
    );
    let err = read(columns, &table, "OPTIONS ('read.speed' '1')", &[]);
    assert!(err.contains("unknown read option 'read.speed'"), "{err}");

    let err = read(
        columns,
        &table,
        "",
        &[("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")],
    );
    assert!(err.contains(&table), "{err}");
    assert!(err.contains("DescribeTable"), "{err}");
}

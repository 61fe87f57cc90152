//! `sluice run` on the embedded cluster: the README's first command, read back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use sluice_test_support::{
    all_entries, run_job_text, run_with_timeout, sluice, visible_files, workspace_root,
};

#[test]
fn range_job_writes_exactly_the_rows_in_the_asked_number_of_files() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("range");
    let job = workspace_root().join("jobs/range_to_parquet.sql");
    let output = run_with_timeout(
        sluice()
            .unwrap()
            .arg("run")
            .arg(&job)
            .args(["--var", "rows=1000003", "--var", "partitions=100"])
            .arg("--var")
            .arg(format!("output={}", dir.display()))
            .args(["--output", "json"]),
        Duration::from_secs(300),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "sluice run failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["rows_written"], 1_000_003);
    assert_eq!(report["files_written"], 100);

    let files = common::check_range_output(&dir, 1_000_003).unwrap();
    assert_eq!(files, 100);
    // Spark's codec by default.
    let first = visible_files(&dir).unwrap().into_iter().next().unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(
        std::fs::File::open(dir.join(first)).unwrap(),
    )
    .unwrap();
    use parquet::file::reader::FileReader;
    let codec = reader.metadata().row_group(0).column(0).compression();
    assert_eq!(codec, parquet::basic::Compression::SNAPPY);
    common::check_manifest(&dir, 1_000_003).unwrap();
    // Nothing but the data files and the manifest: no staging left behind.
    let leftovers: Vec<_> = all_entries(&dir)
        .unwrap()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            !(name.ends_with(".parquet") || name == "_SUCCESS")
        })
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn overwrite_replaces_earlier_output_and_copy_adds_to_it() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("o");
    let job = out.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "SET out={};\n\
             INSERT OVERWRITE DIRECTORY '${{out}}' USING PARQUET SELECT * FROM range(0, 50, 1, 5);\n\
             INSERT OVERWRITE DIRECTORY '${{out}}' USING PARQUET SELECT * FROM range(0, 30, 1, 3);\n",
            dir.display()
        ),
    )
    .unwrap();
    let o = run_with_timeout(
        sluice().unwrap().arg("run").arg(&job),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(visible_files(&dir).unwrap().len(), 3);
    assert_eq!(common::ids(&dir).unwrap(), (0..30).collect());
    common::check_manifest(&dir, 30).unwrap();

    let copy = out.path().join("copy.sql");
    std::fs::write(
        &copy,
        format!(
            "COPY (SELECT id + 1000 AS id FROM range(0, 20, 1, 2)) TO '{}' STORED AS PARQUET;",
            dir.display()
        ),
    )
    .unwrap();
    let o = run_with_timeout(
        sluice().unwrap().arg("run").arg(&copy),
        Duration::from_secs(120),
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ids = common::ids(&dir).unwrap();
    assert_eq!(ids.len(), 50);
    assert!(ids.contains(&1019) && ids.contains(&29));
}

#[test]
fn queries_print_results_and_variables_substitute() {
    let out = tempfile::tempdir().unwrap();
    let job = out.path().join("q.sql");
    std::fs::write(
        &job,
        "SET n=1000;\nSELECT count(*) AS c, sum(id) AS s FROM range(0, ${n}, 1, 4);\n",
    )
    .unwrap();
    let o = run_with_timeout(
        sluice()
            .unwrap()
            .arg("run")
            .arg(&job)
            .args(["--var", "n=10"]),
        Duration::from_secs(120),
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // --var wins over the file's SET: 10 rows, sum 45.
    assert!(stdout.contains("| 10 | 45 |"), "{stdout}");
}

/// Ballista runs several partitions in one task; a source it cannot narrow to
/// the task's partitions would be read once per task. Multi-stage queries
/// (partial/final aggregate, sort, join) over many partitions must still see
/// every row once, and a written directory must read back through SQL with
/// its `_SUCCESS` manifest in place.
#[test]
fn multi_stage_queries_see_every_row_once_and_output_reads_back() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("t");
    let sql = format!(
        "INSERT OVERWRITE DIRECTORY '{dir}' USING PARQUET SELECT * FROM range(0, 100003, 1, 13);\n\
             CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{dir}';\n\
             SELECT count(*) AS c, sum(id) AS s, count(DISTINCT id) AS d FROM range(0, 100003, 1, 13);\n\
             SELECT count(*) AS c, sum(id) AS s, count(DISTINCT id) AS d FROM t;\n\
             SELECT count(*) AS j FROM t JOIN range(0, 100003, 2, 7) r ON t.id = r.id;\n\
             SELECT id FROM range(0, 100003, 1, 13) ORDER BY id DESC LIMIT 2;\n",
        dir = dir.display()
    );
    let o = run_job_text(out.path(), &sql, &["--executors", "2", "--slots", "3"]).unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let totals = "| 100003 | 5000250003 | 100003 |";
    assert_eq!(stdout.matches(totals).count(), 2, "{stdout}");
    assert!(stdout.contains("| 50002 |"), "{stdout}");
    assert!(
        stdout.contains("| 100002 |") && stdout.contains("| 100001 |"),
        "{stdout}"
    );
    assert_eq!(visible_files(&dir).unwrap().len(), 13);
}

/// A skewed partitioned write with a row target: in the default `skew`
/// distribution and in `hash` every value gets exactly ceil(rows / target)
/// files, none over the target; `none` writes where the rows are, with every
/// row still once.
#[test]
fn partitioned_files_follow_each_values_rows() {
    let out = tempfile::tempdir().unwrap();
    let skewed = "SELECT id, CASE WHEN id % 100 < 50 THEN 100 WHEN id % 100 < 80 THEN 101 \
                  WHEN id % 100 < 99 THEN 102 ELSE 200 END AS k FROM range(0, 100000, 1, 7)";
    let sql = format!(
        "COPY ({skewed}) TO '{skew}' STORED AS PARQUET PARTITIONED BY (k) \
           OPTIONS ('write.target_file_rows' '5000');\n\
         COPY ({skewed}) TO '{hash}' STORED AS PARQUET PARTITIONED BY (k) \
           OPTIONS ('write.target_file_rows' '5000', 'write.distribution' 'hash');\n\
         COPY ({skewed}) TO '{none}' STORED AS PARQUET PARTITIONED BY (k) \
           OPTIONS ('write.target_file_rows' '5000', 'write.distribution' 'none');\n",
        skew = out.path().join("skew").display(),
        hash = out.path().join("hash").display(),
        none = out.path().join("none").display(),
    );
    let o = run_job_text(out.path(), &sql, &[]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = [
        ("k=100", 50_000u64),
        ("k=101", 30_000),
        ("k=102", 19_000),
        ("k=200", 1_000),
    ];
    for mode in ["skew", "hash", "none"] {
        let mut total = 0;
        for (dir, rows) in expected {
            let path = out.path().join(mode).join(dir);
            let files = visible_files(&path).unwrap();
            let counts = common::row_counts(&path).unwrap();
            assert_eq!(counts.iter().sum::<u64>(), rows, "{mode}/{dir}");
            assert!(
                counts.iter().all(|&n| n <= 5_000),
                "{mode}/{dir}: {counts:?}"
            );
            if mode != "none" {
                assert_eq!(
                    files.len() as u64,
                    rows.div_ceil(5_000),
                    "{mode}/{dir}: {counts:?}"
                );
            }
            total += rows;
        }
        assert_eq!(total, 100_000);
    }
}

//! Skew-aware partitioned writes (`write.distribution` `skew`, the default
//! with a row target) on the embedded cluster: every id gets exactly
//! ceil(rows / target) files, a large id's files come from several writers,
//! and the plan follows each run's data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use sluice_test_support::run_job_text;
use sluice_udfs::skewed::id_of;

#[test]
fn large_ids_are_split_over_writers_and_small_ids_stay_in_one_file() {
    let out = tempfile::tempdir().unwrap();
    let (rows, seed, target) = (300_000u64, 42u64, 20_000u64);
    let target_option = format!("'write.target_file_rows' '{target}'");
    let sql = common::skewed_copy(rows, seed, 6, &out.path().join("skew"), &target_option)
        + &common::skewed_copy(
            rows,
            seed,
            6,
            &out.path().join("hash"),
            &format!("{target_option}, 'write.distribution' 'hash'"),
        );
    let o = run_job_text(out.path(), &sql, &["--output", "json"]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let skew =
        common::check_skewed_output(&out.path().join("skew"), rows, target, |r| id_of(seed, r))
            .unwrap();
    let hash =
        common::check_skewed_output(&out.path().join("hash"), rows, target, |r| id_of(seed, r))
            .unwrap();
    // id 100 holds 28% of rows: five files. Skew-aware spreads them over
    // writers; hash gives the whole id to one.
    assert!(skew[&100] >= 2, "skew writers per id: {skew:?}");
    assert_eq!(hash[&100], 1, "hash writers per id: {hash:?}");
    // The chunk tag is not written.
    let first = common::manifest_files_by_dir(&out.path().join("skew")).unwrap();
    assert!(first.contains_key("id=209"), "{first:?}");
    let dir = out.path().join("skew/id=100");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file).unwrap(),
    )
    .unwrap();
    let names: Vec<String> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["seq", "ts", "payload"]);
}

/// The same job file on two inputs: in the second, id 205 (0.005% of rows
/// in the first) holds about 30%. Its files follow its rows with no change
/// to the job; the target comes from a session setting.
#[test]
fn an_id_whose_share_jumps_gets_the_new_plan_without_changing_the_job() {
    let out = tempfile::tempdir().unwrap();
    let (rows, seed, target) = (200_000u64, 7u64, 20_000u64);
    let grown = |r: u64| if r % 10 < 3 { 205 } else { id_of(seed, r) };
    let prepare = format!(
        "COPY (SELECT seq, ts, payload, id FROM skewed_events({rows}, {seed}, 4)) TO '{a}' \
           STORED AS PARQUET;\n\
         COPY (SELECT seq, ts, payload, CASE WHEN seq % 10 < 3 THEN 205 ELSE id END AS id \
           FROM skewed_events({rows}, {seed}, 4)) TO '{b}' STORED AS PARQUET;\n",
        a = out.path().join("a").display(),
        b = out.path().join("b").display(),
    );
    let o = run_job_text(out.path(), &prepare, &[]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let job = out.path().join("events_by_id.sql");
    std::fs::write(
        &job,
        "SET sluice.write.target_file_rows = 20000;\n\
         CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '${input}';\n\
         COPY (SELECT seq, ts, payload, id FROM events) TO '${output}' \
           STORED AS PARQUET PARTITIONED BY (id);\n",
    )
    .unwrap();
    let mut writers = vec![];
    for input in ["a", "b"] {
        let output = out.path().join(format!("out-{input}"));
        let o = sluice_test_support::run_with_timeout(
            sluice_test_support::sluice()
                .unwrap()
                .arg("run")
                .arg(&job)
                .arg("--var")
                .arg(format!("input={}/", out.path().join(input).display()))
                .arg("--var")
                .arg(format!("output={}", output.display())),
            std::time::Duration::from_secs(300),
        )
        .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let check = if input == "a" {
            common::check_skewed_output(&output, rows, target, |r| id_of(seed, r))
        } else {
            common::check_skewed_output(&output, rows, target, grown)
        };
        writers.push(check.unwrap());
    }
    // 205: ~10 rows (one file) in the first run, ~60,000 (three files from
    // more than one writer) in the second.
    assert_eq!(writers[0][&205], 1, "{:?}", writers[0]);
    assert!(writers[1][&205] >= 2, "{:?}", writers[1]);
}

/// `write.target_file_bytes` rolls files at about that many encoded bytes.
#[test]
fn files_roll_at_the_byte_target() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("bytes");
    let target = 1_000_000u64;
    let sql = format!(
        "COPY (SELECT seq, payload FROM skewed_events(60000, 3, 1)) TO '{}' STORED AS PARQUET \
           OPTIONS ('write.target_file_bytes' '{target}');\n",
        dir.display()
    );
    let o = run_job_text(out.path(), &sql, &[]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = common::manifest(&dir).unwrap();
    let files = m["files"].as_array().unwrap();
    let mut sizes: Vec<u64> = files.iter().map(|f| f["bytes"].as_u64().unwrap()).collect();
    let rows: u64 = files.iter().map(|f| f["rows"].as_u64().unwrap()).sum();
    assert_eq!(rows, 60_000);
    sizes.sort_unstable();
    assert!(sizes.len() >= 2, "{sizes:?}");
    // Every file but the last reached the target before it rolled.
    assert!(sizes[1..].iter().all(|&s| s >= target / 2), "{sizes:?}");
    assert_eq!(common::ids(&dir).unwrap().len(), 60_000);
}

/// A writer over its memory cap writes out row groups instead of finishing
/// files, so a skew-aware write with a tiny cap still gives every id its
/// ideal file count, in files of several row groups.
#[test]
fn the_memory_cap_flushes_row_groups_without_adding_files() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("capped");
    let (rows, seed, target) = (200_000u64, 11u64, 50_000u64);
    let sql = common::skewed_copy(
        rows,
        seed,
        4,
        &dir,
        &format!("'write.target_file_rows' '{target}', 'write.max_buffered_bytes' '2000000'"),
    );
    let o = run_job_text(out.path(), &sql, &[]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    common::check_skewed_output(&dir, rows, target, |r| id_of(seed, r)).unwrap();
    let most_row_groups = std::fs::read_dir(dir.join("id=100"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(p).unwrap(),
            )
            .unwrap()
            .metadata()
            .num_row_groups()
        })
        .max()
        .unwrap();
    assert!(most_row_groups > 1, "{most_row_groups} row groups");
}

/// From a Parquet input (its row count known from the footers) a skew write
/// plans one reduce task per target's worth of rows, more than the
/// session's 16, so no reduce task holds more than about one file's rows.
#[test]
fn a_parquet_input_gets_one_reduce_task_per_target_rows() {
    let out = tempfile::tempdir().unwrap();
    let (input, dir) = (out.path().join("in"), out.path().join("out"));
    let sql = format!(
        "COPY (SELECT id, id % 2 AS k FROM range(0, 40000, 1, 4)) TO '{}' STORED AS PARQUET;\n\
         CREATE EXTERNAL TABLE src STORED AS PARQUET LOCATION '{}/';\n\
         COPY (SELECT id, k FROM src) TO '{}' STORED AS PARQUET PARTITIONED BY (k) \
           OPTIONS ('write.target_file_rows' '1000');\n",
        input.display(),
        input.display(),
        dir.display()
    );
    let o = run_job_text(out.path(), &sql, &[]).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = common::manifest(&dir).unwrap();
    let files = m["files"].as_array().unwrap();
    let rows: Vec<u64> = files.iter().map(|f| f["rows"].as_u64().unwrap()).collect();
    assert_eq!(rows.iter().sum::<u64>(), 40_000);
    assert_eq!(files.len(), 40, "{rows:?}");
    // 40 reduce partitions, chunk n in partition n mod 40: every file has a
    // writer partition of its own (with 16, the 40 chunks would share 16).
    let mut writers: Vec<&str> = files
        .iter()
        .map(|f| f["writer"].as_str().unwrap())
        .collect();
    writers.sort_unstable();
    writers.dedup();
    assert_eq!(writers.len(), 40, "{files:?}");
}

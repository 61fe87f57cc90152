//! Bad input: a clear error naming what and where, a non-zero exit, no hang.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use sluice_test_support::{free_port, run_job_text, run_with_timeout, sluice};

fn run_job(dir: &Path, sql: &str, extra: &[&str]) -> Output {
    run_job_text(dir, sql, extra).unwrap()
}

fn assert_fails_with(o: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

/// The one error line of a failed run: no other output (no dependency
/// warnings, no debug dumps), and no part of it repeated.
fn the_error_line(o: &Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "more than the error: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for noise in [
        "DataFusionError",
        "Shared(",
        "External(",
        "Error during planning:",
    ] {
        assert!(!lines[0].contains(noise), "{noise} in {stderr}");
    }
    lines[0].to_string()
}

#[test]
fn each_error_is_printed_once() {
    let d = tempfile::tempdir().unwrap();
    let o = run_job(d.path(), "SELECT * FROM nosuch;\n", &[]);
    let line = the_error_line(&o);
    assert!(line.contains("job.sql:1"), "{line}");
    assert_eq!(line.matches("nosuch").count(), 1, "{line}");

    let o = run_job(d.path(), "SELECT * FRM range(0, 10);\n", &[]);
    let line = the_error_line(&o);
    assert_eq!(line.matches("Expected").count(), 1, "{line}");

    // A credential as a write option is refused on the client, before
    // planning, and its value is never printed.
    let out = d.path().join("o");
    let copy_with = |option: &str| {
        let sql = format!(
            "COPY (SELECT id FROM range(0, 10, 1, 2)) TO '{}' STORED AS PARQUET \
             OPTIONS ({option});\n",
            out.display()
        );
        let line = the_error_line(&run_job(d.path(), &sql, &[]));
        assert!(!out.exists(), "{option}: the write ran");
        line
    };
    let line = copy_with("'aws.secret_access_key' 'hunter2-secret'");
    assert!(line.contains("'aws.secret_access_key'"), "{line}");
    assert!(line.contains("credential"), "{line}");
    assert!(!line.contains("hunter2-secret"), "{line}");

    // An unknown Parquet option fails at planning, naming the valid ones.
    let line = copy_with("'format.no_such_knob' '1'");
    assert!(line.contains("'format.no_such_knob'"), "{line}");
    assert!(line.contains("compression"), "valid options listed: {line}");
}

#[test]
fn malformed_sql_names_file_line_and_position() {
    let d = tempfile::tempdir().unwrap();
    let o = run_job(d.path(), "SELECT 1;\n\nSELECT * FRM range(0, 10);\n", &[]);
    assert_fails_with(&o, &["job.sql:3", "Line: 1, Column"]);
}

#[test]
fn unknown_variable_is_named() {
    let d = tempfile::tempdir().unwrap();
    let o = run_job(d.path(), "SET a=1;\nSELECT ${a}, ${missing_one};\n", &[]);
    assert_fails_with(&o, &["job.sql:2", "unknown variable ${missing_one}"]);
}

#[test]
fn missing_input_path_is_named() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("no-such-dir");
    let o = run_job(
        d.path(),
        &format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}/';\nSELECT count(*) FROM t;\n",
            missing.display()
        ),
        &[],
    );
    assert_fails_with(&o, &["job.sql:1", "no-such-dir"]);
}

#[test]
fn unwritable_output_fails_before_running() {
    let d = tempfile::tempdir().unwrap();
    let blocker = d.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let o = run_job(
        d.path(),
        &format!(
            "INSERT OVERWRITE DIRECTORY '{}/out' USING PARQUET SELECT * FROM range(0, 10, 1, 2);",
            blocker.display()
        ),
        &[],
    );
    assert_fails_with(&o, &["not writable", "a-file/out"]);
}

#[test]
fn unsupported_format_is_named() {
    let d = tempfile::tempdir().unwrap();
    let o = run_job(
        d.path(),
        &format!(
            "INSERT OVERWRITE DIRECTORY '{}/o' USING ORC SELECT 1;",
            d.path().display()
        ),
        &[],
    );
    assert_fails_with(&o, &["unsupported output format 'orc'"]);
}

#[test]
fn unreachable_scheduler_fails_within_the_connect_timeout() {
    let d = tempfile::tempdir().unwrap();
    let job = d.path().join("job.sql");
    std::fs::write(&job, "SELECT 1;").unwrap();
    let port = free_port().unwrap();
    let started = Instant::now();
    let o = run_with_timeout(
        sluice().unwrap().arg("submit").arg(&job).args([
            "--scheduler",
            &format!("127.0.0.1:{port}"),
            "--connect-timeout",
            "2",
        ]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_fails_with(
        &o,
        &["unreachable", &format!("127.0.0.1:{port}"), "within 2s"],
    );
    // Bounded: the 2 s budget plus process start, far below the 60 s guard.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn bad_var_flag_and_missing_job_file() {
    let d = tempfile::tempdir().unwrap();
    let o = run_job(d.path(), "SELECT 1;", &["--var", "novalue"]);
    assert_fails_with(&o, &["--var novalue: expected key=value"]);
    let o = run_with_timeout(
        sluice().unwrap().args(["run", "/nonexistent/job.sql"]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_fails_with(&o, &["reading job file /nonexistent/job.sql"]);
}

/// Write options that cannot be honoured fail before any row is written,
/// naming the option, the value and the output (or the missing column).
#[test]
fn bad_write_options_are_named() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o");
    let cases: [(&str, &[&str]); 7] = [
        (
            "OPTIONS ('sluice.committer' 'rename-v3')",
            &["unknown sluice.committer 'rename-v3'", "/o'"],
        ),
        (
            "OPTIONS ('write.partition_style' 'flat')",
            &[
                "unknown write.partition_style 'flat'",
                "expected hive or values",
            ],
        ),
        (
            "OPTIONS ('write.distribution' 'range')",
            &[
                "unknown write.distribution 'range'",
                "expected skew, hash or none",
            ],
        ),
        (
            "OPTIONS ('write.target_file_bytes' '1GB')",
            &[
                "write.target_file_bytes must be a whole number, got '1GB'",
                "/o'",
            ],
        ),
        (
            "OPTIONS ('write.max_open_files' 'many')",
            &[
                "write.max_open_files must be a whole number, got 'many'",
                "/o'",
            ],
        ),
        ("OPTIONS ('no_such_option' 'x')", &["no_such_option"]),
        ("PARTITIONED BY (nope)", &["partition column 'nope'", "id"]),
    ];
    for (clause, needles) in cases {
        let sql = format!(
            "COPY (SELECT id FROM range(0, 10, 1, 2)) TO '{}' STORED AS PARQUET {clause};",
            out.display()
        );
        let o = run_job(d.path(), &sql, &[]);
        assert_fails_with(&o, needles);
        assert!(
            sluice_test_support::visible_files(&out)
                .unwrap_or_default()
                .is_empty(),
            "{clause}: output visible"
        );
    }
}

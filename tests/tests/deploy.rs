//! The deployment files under `deploy/`: the install script puts binaries,
//! units and configs into a root; the systemd units pass `systemd-analyze
//! verify` against the installed binaries; the config files use only real
//! flags; the units run as an unprivileged user with a restart policy; the
//! dashboard's queries name only metrics sluice exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use sluice_test_support::{binary, workspace_root};

const UNITS: [&str; 2] = ["sluice-scheduler.service", "sluice-executor.service"];

/// Installs into a temporary root with the test build's binaries.
fn install() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    install_into(root.path());
    root
}

fn install_into(root: &std::path::Path) {
    let bin_dir = binary("sluice").unwrap().parent().unwrap().to_path_buf();
    // The workspace's binaries are test builds: refused by default.
    let fresh = !root.join("usr/local/bin/sluice").exists();
    let refused = Command::new(workspace_root().join("deploy/install.sh"))
        .arg("--root")
        .arg(root)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("is a test build") && err.contains("test-functions"),
        "{err}"
    );
    if fresh {
        assert!(!root.join("usr/local/bin/sluice").exists());
    }
    let o = Command::new(workspace_root().join("deploy/install.sh"))
        .arg("--root")
        .arg(root)
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--allow-test-build")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_install_script_fills_a_root_and_keeps_existing_configs() {
    let root = install();
    for path in [
        "usr/local/bin/sluice",
        "usr/local/bin/sluice-scheduler",
        "usr/local/bin/sluice-executor",
        "etc/systemd/system/sluice-scheduler.service",
        "etc/systemd/system/sluice-executor.service",
        "etc/sluice/scheduler.toml",
        "etc/sluice/executor.toml",
    ] {
        assert!(root.path().join(path).exists(), "{path} not installed");
    }
    // An operator's edited config survives a reinstall.
    let conf = root.path().join("etc/sluice/executor.toml");
    std::fs::write(&conf, "scheduler-host = \"edited\"\n").unwrap();
    install_into(root.path());
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "scheduler-host = \"edited\"\n"
    );
}

#[test]
fn the_units_verify_and_run_unprivileged_with_restarts() {
    let root = install();
    let installed = root.path().join("etc/systemd/system");
    // `systemd-analyze verify` checks ExecStart's binary exists: point the
    // units at the temporary root's.
    let check = tempfile::tempdir().unwrap();
    let mut paths = vec![];
    for unit in UNITS {
        let text = std::fs::read_to_string(installed.join(unit)).unwrap();
        for line in ["User=sluice", "Group=sluice", "NoNewPrivileges=yes"] {
            assert!(text.lines().any(|l| l == line), "{unit}: no {line}");
        }
        assert!(text.lines().any(|l| l.starts_with("Restart=")), "{unit}");
        assert!(
            text.lines().any(|l| l.starts_with("LimitNOFILE=")),
            "{unit}"
        );
        assert!(text.lines().any(|l| l.starts_with("MemoryMax=")), "{unit}");
        let local = text.replace(
            "/usr/local/bin/",
            &format!("{}/usr/local/bin/", root.path().display()),
        );
        let path = check.path().join(unit);
        std::fs::write(&path, local).unwrap();
        paths.push(path);
    }
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze");
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_config_files_use_real_flags() {
    for (bin, conf) in [
        ("sluice-scheduler", "deploy/config/scheduler.toml"),
        ("sluice-executor", "deploy/config/executor.toml"),
    ] {
        let o = Command::new(binary(bin).unwrap())
            .arg("--config")
            .arg(workspace_root().join(conf))
            .arg("--help")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{conf}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// A server with a bad setting says so in one line, whatever RUST_BACKTRACE.
#[test]
fn servers_name_a_bad_setting_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.toml");
    std::fs::write(&conf, "bogus-flag = 1\n").unwrap();
    for bin in ["sluice-scheduler", "sluice-executor"] {
        let o = Command::new(binary(bin).unwrap())
            .arg("--config")
            .arg(&conf)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{bin} accepted a bad setting");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.trim(),
            "error: configuration: unknown setting 'bogus-flag' in config file (settings are the long flag names)",
            "{bin}"
        );
    }
}

#[test]
fn the_dashboard_and_iam_policy_are_sound() {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("deploy/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut sources = String::new();
    for dir in ["core/src"] {
        for entry in walk(&workspace_root().join(dir)) {
            sources.push_str(&std::fs::read_to_string(entry).unwrap());
        }
    }
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for metric in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("sluice_"))
            {
                assert!(
                    sources.contains(&format!("\"{metric}\"")),
                    "the dashboard queries {metric}, which sluice does not export"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} metrics checked");
    let policy: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("deploy/iam-policy.json")).unwrap(),
    )
    .unwrap();
    let text = policy.to_string();
    for action in [
        "s3:ListBucketMultipartUploads",
        "s3:AbortMultipartUpload",
        "s3:PutObject",
        "dynamodb:BatchWriteItem",
        "dynamodb:DescribeTable",
    ] {
        assert!(text.contains(action), "the policy lacks {action}");
    }
    assert!(
        !text.contains("\"*\""),
        "the policy grants a wildcard: {text}"
    );
    // S3 gives `s3:prefix` only to ListBucket and ListBucketVersions: any
    // other action under that condition would never be allowed.
    for statement in policy["Statement"].as_array().unwrap() {
        if statement["Condition"].to_string().contains("s3:prefix") {
            for action in statement["Action"].as_array().unwrap() {
                assert!(
                    ["s3:ListBucket", "s3:ListBucketVersions"].contains(&action.as_str().unwrap()),
                    "{action} under an s3:prefix condition is never allowed: {statement}"
                );
            }
        }
    }
    // Every AWS call the sources make is granted.
    for action in [
        "dynamodb:Scan",
        "dynamodb:Query",
        "dynamodb:DescribeStream",
        "dynamodb:GetShardIterator",
        "dynamodb:GetRecords",
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
    ] {
        assert!(text.contains(action), "the policy lacks {action}");
    }
}

/// The executor's user data is valid shell and installs the TLS files the
/// executor's config reads, under the names it reads them by.
#[test]
fn the_user_data_installs_the_tls_files_the_executor_reads() {
    let script = workspace_root().join("deploy/ec2-user-data.sh");
    let o = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&script).unwrap();
    let config =
        std::fs::read_to_string(workspace_root().join("deploy/config/executor.toml")).unwrap();
    for key in ["tls-ca", "tls-cert", "tls-key"] {
        let path = config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("executor.toml sets no {key}"))
            .trim_matches('"');
        assert!(
            text.lines()
                .any(|l| l.starts_with("aws s3 cp") && l.contains(&format!(" {path} "))),
            "the user data does not install {path}"
        );
    }
    assert!(text.contains("chmod 0600 /etc/sluice/tls/node.key"));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

//! The docker-compose file is valid, and its service commands use flags the
//! binaries really have. No Docker engine runs here, so this is as far as a
//! test can go; `scripts/test.sh` installs `docker-compose`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use sluice_test_support::{binary, run_with_timeout, workspace_root};

#[test]
fn compose_file_is_valid() {
    let o = run_with_timeout(
        Command::new("docker-compose")
            .arg("-f")
            .arg(workspace_root().join("docker-compose.yml"))
            .args(["config", "-q"]),
        Duration::from_secs(60),
    )
    .expect("docker-compose must be installed (scripts/test.sh installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn compose_commands_use_real_flags() {
    let text = std::fs::read_to_string(workspace_root().join("docker-compose.yml")).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("command: ") else {
            continue;
        };
        let Ok(args) = serde_json::from_str::<Vec<String>>(rest) else {
            continue;
        };
        let bin = &args[0];
        if !bin.starts_with("sluice") {
            continue;
        }
        let help = Command::new(binary(bin).unwrap())
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(help.contains(flag.as_str()), "{bin} has no flag {flag}");
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} flags found to check");
}

/// The image runs its processes as an unprivileged user, and builds only the
/// product crates (so no test-only function or benchmark committer ships).
#[test]
fn the_image_runs_as_a_non_root_user() {
    let text = std::fs::read_to_string(workspace_root().join("Dockerfile")).unwrap();
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "runs as {user}"
    );
    let build = text
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build line");
    assert!(
        build.contains("-p sluice-cli") && !build.contains("sluice-test-support"),
        "{build}"
    );
    // The default command is closed (TLS files, which the scheduler
    // requires off loopback) and uses flags the scheduler has.
    let cmd = text
        .split_once("\nCMD ")
        .expect("a CMD")
        .1
        .replace("\\\n", " ");
    let args: Vec<String> = serde_json::from_str(cmd.trim()).unwrap();
    assert_eq!(args[0], "sluice-scheduler");
    assert!(args.iter().any(|a| a == "--tls-ca"), "{args:?}");
    let help = Command::new(binary("sluice-scheduler").unwrap())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "sluice-scheduler has no flag {flag}"
        );
    }
}

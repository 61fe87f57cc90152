#!/usr/bin/env bash
# Installs sluice's binaries, systemd units and config files.
#
#   deploy/install.sh [--root DIR] [--bin-dir DIR] [--no-user] [--allow-test-build]
#
# --bin-dir: where the release binaries are (default: target/release, or
#   $CARGO_TARGET_DIR/release). --root: install under DIR instead of / (for
#   images and for the tests, which install into a temporary root); implies
#   --no-user unless DIR is /. Existing config files are kept. Then, on the
#   machine: `systemctl daemon-reload && systemctl enable --now
#   sluice-scheduler` (or sluice-executor). Binaries built with the workspace
#   (whose test-support crate compiles in test-only SQL functions) say
#   "test build" in --version and are refused unless --allow-test-build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root=/
bin_dir="${CARGO_TARGET_DIR:-$here/../target}/release"
make_user=yes
allow_test=no
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --no-user) make_user=no; shift ;;
    --allow-test-build) allow_test=yes; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ "$root" = / ] || make_user=no
for bin in sluice sluice-scheduler sluice-executor; do
  if [ ! -x "$bin_dir/$bin" ]; then
    echo "install.sh: $bin_dir/$bin not found (build with: cargo build --release -p sluice-cli -p sluice-scheduler -p sluice-executor)" >&2
    exit 1
  fi
  version="$("$bin_dir/$bin" --version 2>/dev/null || true)"
  if [ "$allow_test" = no ] && [[ "$version" == *"test build"* ]]; then
    echo "install.sh: $bin_dir/$bin is a test build ($version); build releases with: cargo build --release -p sluice-cli -p sluice-scheduler -p sluice-executor" >&2
    exit 1
  fi
done
install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/sluice"
for bin in sluice sluice-scheduler sluice-executor; do
  install -m 0755 "$bin_dir/$bin" "$root/usr/local/bin/$bin"
done
for unit in sluice-scheduler.service sluice-executor.service; do
  install -m 0644 "$here/systemd/$unit" "$root/etc/systemd/system/$unit"
done
for conf in scheduler.toml executor.toml; do
  if [ -e "$root/etc/sluice/$conf" ]; then
    echo "keeping $root/etc/sluice/$conf"
  else
    install -m 0644 "$here/config/$conf" "$root/etc/sluice/$conf"
  fi
done
if [ "$make_user" = yes ]; then
  if ! id sluice >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice
  fi
  install -d -m 0750 -o sluice -g sluice /var/lib/sluice
  systemctl daemon-reload 2>/dev/null || true
fi
echo "installed sluice into $root"

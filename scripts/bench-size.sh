#!/bin/sh
# Runs of any size (issue 15, BENCHMARKS.md "Runs of any size"): builds this tree and the
# revision before chunked runs (OLD_REV, default 5b34dc2) in release, then runs
# examples/bench_size.rs: the initial sync of 1M users x 5 traits and of 10M users x 1 audience
# (against the old binary's `sync --no-deliver` on a copy of the same database), then the daily
# runs. Usage: scripts/bench-size.sh [initial-1m] [initial-10m] [daily]   (default: all three)
# BENCH_DIR (default /tmp/bench-size), BENCH_RUNS, DAILY_USERS (default 1000000), DAILY_DAYS (30).
set -eu
cd "$(dirname "$0")/.."
OLD_REV=${OLD_REV:-5b34dc2}
OLD_DIR=${OLD_DIR:-/tmp/old}
OLD_TARGET=${OLD_TARGET:-/tmp/old-target}
export BENCH_DIR=${BENCH_DIR:-/tmp/bench-size}
mkdir -p "$BENCH_DIR"
cargo build --release
cargo build --release --example bench_size
[ -d "$OLD_DIR" ] || git worktree add "$OLD_DIR" "$OLD_REV"
(cd "$OLD_DIR" && CARGO_TARGET_DIR="$OLD_TARGET" cargo build --release)
export BENCH_OLD_BIN="$OLD_TARGET/release/audience-sync"
what=${*:-initial-1m initial-10m daily}
for w in $what; do
  case $w in
    initial-1m) target/release/examples/bench_size initial 5 1000000 trait ;;
    initial-10m) BENCH_NO_DELIVER_RUNS=${BENCH_NO_DELIVER_RUNS:-1} \
                   target/release/examples/bench_size initial 1 10000000 audience ;;
    daily) target/release/examples/bench_size daily "${DAILY_USERS:-1000000}" "${DAILY_DAYS:-30}" ;;
    *) echo "unknown: $w (initial-1m, initial-10m, daily)" >&2; exit 2 ;;
  esac
done

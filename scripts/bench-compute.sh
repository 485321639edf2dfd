#!/bin/sh
# Computations defined in SQL (issue 17, BENCHMARKS.md "Computations defined in SQL"): builds
# this tree in release, then runs examples/bench_compute.rs: a 1,000,000-user trait computed by
# `audience-sync compute` from a 10,000,000-row events table, against the query alone in the
# `sqlite3` CLI on the same file (time, CPU and peak RSS of each; medians of BENCH_RUNS runs).
# Usage: scripts/bench-compute.sh [USERS [EVENTS]]   (default 1000000 10000000)
# BENCH_DIR (default /tmp/bench-compute), BENCH_RUNS (default 3), BENCH_REUSE=1 (copy the
# database an earlier run generated), BENCH_SQLITE3 (default sqlite3).
set -eu
cd "$(dirname "$0")/.."
export BENCH_DIR=${BENCH_DIR:-/tmp/bench-compute}
mkdir -p "$BENCH_DIR"
cargo build --release
cargo build --release --example bench_compute
target/release/examples/bench_compute "${1:-1000000}" "${2:-10000000}"

#!/usr/bin/env bash
# Load benchmark: generates N NDJSON trait rows and loads them with the release binary, reporting
# wall time, rows per second and peak RSS (GNU time). Usage: scripts/bench-load.sh [ROWS...]
# Default: 1000000 and 5000000 rows (the second shows memory does not grow with the file).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="$PWD/target/release/audience-sync"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ $# -gt 0 ] || set -- 1000000 5000000
printf '| rows | file size | wall time | rows/s | peak RSS |\n|---:|---:|---:|---:|---:|\n'
for rows in "$@"; do
    file="$work/rows-$rows.ndjson"
    awk -v n="$rows" 'BEGIN { for (i = 0; i < n; i++) printf "{\"user_id\": \"user-%d\", \"email\": \"user%d@example.com\", \"value\": %d.5}\n", i, i, i % 1000 }' > "$file"
    size=$(du -h "$file" | cut -f1)
    rm -f "$work/bench.db"*
    start=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$work/rss" env AUDIENCE_SYNC__DATABASE__PATH="$work/bench.db" \
        "$bin" load --computation lifetime_value --kind trait --scope user "$file" >/dev/null
    end=$(date +%s.%N)
    rss_kb=$(tail -n1 "$work/rss")
    awk -v r="$rows" -v s="$start" -v e="$end" -v m="$rss_kb" -v z="$size" \
        'BEGIN { t = e - s; printf "| %d | %s | %.2f s | %.0f | %.1f MB |\n", r, z, t, r / t, m / 1024 }'
    rm -f "$file"
done

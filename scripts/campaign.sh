#!/bin/sh
# Run the fault and crash campaigns (tests/all/campaign/) and print their counts.
#   scripts/campaign.sh            # long mode (minutes)
#   scripts/campaign.sh short      # what CI runs
#   scripts/campaign.sh 100        # 100 runs of each campaign
# Replay one failing run: AUDIENCE_SYNC_CAMPAIGN_SEED=0x… cargo test --test all campaign::NAME
set -eu
cd "$(dirname "$0")/.."
mode="${1:-long}"
log="${TMPDIR:-/tmp}/audience-sync-campaign.log"
status=0
AUDIENCE_SYNC_CAMPAIGN="$mode" cargo test --test all campaign:: -- --nocapture --test-threads 2 \
    >"$log" 2>&1 || status=$?
grep -E '^[a-z_]+_campaign: |^seed 0x|^test result' "$log" || true
echo "full log: $log"
exit "$status"

#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md on this machine: builds the release
# binaries, then runs each scenario against a fresh voucherd (embedded store),
# with the stress harness beside it. Results (JSON + HTML) go to $OUT.
#
#   scripts/bench.sh                 # every scenario (about 15 minutes)
#   scripts/bench.sh flash hot       # some of them: flash half hot users40m
#
# Sizes can be reduced for a quick look, e.g. FLASH_REQUESTS=1000000 USERS_40M=4000000.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench-results}
FLASH_REQUESTS=${FLASH_REQUESTS:-10000000}
USERS_40M=${USERS_40M:-40000000}
HOT_SECONDS=${HOT_SECONDS:-20}
HALF_SECONDS=${HALF_SECONDS:-30}
CONNECTIONS=${CONNECTIONS:-64}
mkdir -p "$OUT"

cargo build --release -p voucherd -p stress
VOUCHERD=target/release/voucherd
STRESS=target/release/stress

server_pid=""
server_url=""
start_server() {
    local store
    store=$(mktemp -d)
    "$VOUCHERD" serve --listen 127.0.0.1:0 --store "$store" >"$OUT/server.out" 2>"$OUT/server.err" &
    server_pid=$!
    for _ in $(seq 1 100); do
        if grep -q "listening on" "$OUT/server.out" 2>/dev/null; then break; fi
        sleep 0.1
    done
    server_url=$(sed -n 's/^voucherd listening on //p' "$OUT/server.out")
    [ -n "$server_url" ] || { echo "voucherd did not start" >&2; exit 1; }
}
stop_server() {
    grep -E '^VmHWM' "/proc/$server_pid/status" | tee "$OUT/$1.vmhwm"
    kill -TERM "$server_pid"
    wait "$server_pid"
}
run_stress() {
    local name=$1
    shift
    "$STRESS" flash --url "$server_url" --server-pid "$server_pid" --quiet \
        --out "$OUT/$name.json" --html "$OUT/$name.html" "$@" | tee "$OUT/$name.txt"
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(flash half hot users40m)

for scenario in "${scenarios[@]}"; do
    echo "=== $scenario"
    start_server
    case "$scenario" in
    flash)
        # One voucher, limit 1,000; 10M requests from a 40M user space, 10% repeats,
        # closed loop at full speed, after a GET /healthz baseline of 20 s.
        run_stress flash --max --concurrency "$CONNECTIONS" --requests "$FLASH_REQUESTS" --duration 3600s \
            --users 40000000 --repeat-share 0.1 --limit 1000 --baseline --baseline-secs 20
        ;;
    half)
        # The same crowd, open loop at half the rate the flash scenario achieved.
        rate=$(python3 -c "import json;print(int(json.load(open('$OUT/flash.json'))['phase']['achieved_rate']/2))")
        run_stress half --rate "$rate" --duration "${HALF_SECONDS}s" --users 40000000 \
            --repeat-share 0.1 --limit 1000 --baseline --baseline-secs 10
        ;;
    hot)
        # Hot wins: one voucher with limit 1,000,000 and all-distinct users.
        run_stress hot --max --concurrency "$CONNECTIONS" --duration "${HOT_SECONDS}s" \
            --users 40000000 --repeat-share 0 --limit 1000000 --baseline --baseline-secs 10
        ;;
    users40m)
        # 40M distinct users, one each, against a limit-1,000 voucher; peak RSS of voucherd.
        run_stress users40m --max --concurrency "$CONNECTIONS" --requests "$USERS_40M" --duration 3600s \
            --users 40000000 --repeat-share 0 --limit 1000
        ;;
    *)
        echo "unknown scenario $scenario" >&2
        exit 2
        ;;
    esac
    stop_server "$scenario"
done

python3 scripts/bench_summary.py "$OUT"

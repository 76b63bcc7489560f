#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md on this machine: builds the release
# binaries, then runs each scenario against a fresh voucherd (embedded store),
# with the stress harness beside it. Results (JSON + HTML) go to $OUT.
#
#   scripts/bench.sh                 # every scenario (about 15 minutes)
#   scripts/bench.sh flash hot       # some of them: flash half hot users40m
#                                    # pg-hot cluster-flash cluster-hot split-flash split-hot
#                                    # cql-hot cql3-hot cql-split-hot cql3-split-hot
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
VOUCHERD=${VOUCHERD:-target/release/voucherd}
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

# ---- SQL ledger and cluster scenarios (issue: many instances) ----
# PostgreSQL at $BENCH_POSTGRES (a fresh database is created per scenario) and Redis
# at $BENCH_REDIS. pg-hot: one instance on PostgreSQL; cluster-flash / cluster-hot:
# three instances sharing PostgreSQL and Redis, driven round-robin.
BENCH_POSTGRES=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
BENCH_REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379}
cluster_pids=()
cluster_urls=()
start_sql_instances() {
    local count=$1 redis=$2 database
    database="voucherd_bench_$(date +%s)_$$"
    psql "$BENCH_POSTGRES/postgres" -qc "CREATE DATABASE $database" >/dev/null
    local store="$BENCH_POSTGRES/$database"
    "$VOUCHERD" migrate --store "$store" 2>/dev/null
    cluster_pids=()
    cluster_urls=()
    for i in $(seq 1 "$count"); do
        local extra=()
        [ "$redis" = yes ] && extra=(--redis "$BENCH_REDIS")
        "$VOUCHERD" serve --listen 127.0.0.1:0 --store "$store" "${extra[@]}" \
            >"$OUT/instance-$i.out" 2>"$OUT/instance-$i.err" &
        cluster_pids+=($!)
    done
    for i in $(seq 1 "$count"); do
        for _ in $(seq 1 100); do
            grep -q "listening on" "$OUT/instance-$i.out" 2>/dev/null && break
            sleep 0.1
        done
        cluster_urls+=(--url "$(sed -n 's/^voucherd listening on //p' "$OUT/instance-$i.out")")
    done
}
stop_sql_instances() {
    for pid in "${cluster_pids[@]}"; do kill -TERM "$pid"; done
    for pid in "${cluster_pids[@]}"; do wait "$pid"; done
}
run_cluster_stress() {
    local name=$1
    shift
    local pids=()
    for pid in "${cluster_pids[@]}"; do pids+=(--server-pid "$pid"); done
    "$STRESS" flash "${cluster_urls[@]}" "${pids[@]}" --quiet \
        --out "$OUT/$name.json" --html "$OUT/$name.html" "$@" | tee "$OUT/$name.txt"
}

# ---- split mode (issue: two services) ----
# split-flash / split-hot: a wallet service and a voucher service, each on its own
# fresh PostgreSQL database (or SPLIT_STORE=embedded: each on its own directory),
# the harness on the voucher service, verification reading wallets from the wallet service.
SPLIT_STORE=${SPLIT_STORE:-postgres}
split_pids=()
split_store() {
    if [ "$SPLIT_STORE" = embedded ]; then
        mktemp -d
        return
    fi
    local database
    database="voucherd_bench_$1_$(date +%s)_$$"
    psql "$BENCH_POSTGRES/postgres" -qc "CREATE DATABASE $database" >/dev/null
    echo "$BENCH_POSTGRES/$database"
}
start_split() {
    # A previous scenario's lines must not be read as this one's.
    rm -f "$OUT/wallet.out" "$OUT/voucher.out"
    "$VOUCHERD" serve --role wallet --listen 127.0.0.1:0 --store "$(split_store wallets)" \
        >"$OUT/wallet.out" 2>"$OUT/wallet.err" &
    split_pids=($!)
    wallet_url=$(wait_listening "$OUT/wallet.out")
    "$VOUCHERD" serve --role voucher --listen 127.0.0.1:0 --store "$(split_store vouchers)" \
        --wallet-url "$wallet_url" >"$OUT/voucher.out" 2>"$OUT/voucher.err" &
    split_pids+=($!)
    voucher_url=$(wait_listening "$OUT/voucher.out")
}
wait_listening() {
    for _ in $(seq 1 100); do
        grep -q "listening on" "$1" 2>/dev/null && break
        sleep 0.1
    done
    sed -n 's/^voucherd listening on //p' "$1"
}
stop_split() {
    for pid in "${split_pids[@]}"; do kill -TERM "$pid"; done
    for pid in "${split_pids[@]}"; do wait "$pid"; done
}
run_split_stress() {
    local name=$1
    shift
    "$STRESS" flash --url "$voucher_url" --wallet-url "$wallet_url" \
        --server-pid "${split_pids[1]}" --quiet \
        --out "$OUT/$name.json" --html "$OUT/$name.html" "$@" | tee "$OUT/$name.txt"
}

# ---- the CQL ledger on Apache Cassandra (issue: real servers) ----
# cql-hot / cql3-hot: role `all` on one Cassandra node / on three (RF 3);
# cql-split-hot / cql3-split-hot: a wallet and a voucher service, each on its own
# keyspace. Clusters from scripts/cassandra.sh (started here if not running). After
# each run the services' LWT metrics give the Paxos rounds per win.
BENCH_CQL=${BENCH_CQL:-127.0.0.1:9042}
BENCH_CQL3=${BENCH_CQL3:-127.0.0.11:9042,127.0.0.12:9042,127.0.0.13:9042}
CQL_CONNECTIONS=${CQL_CONNECTIONS:-256}
cql_store() {
    local hosts=$1 role=$2 rf keyspace store
    rf=$(tr ',' '\n' <<<"$hosts" | wc -l)
    [ "$rf" -le 3 ] || rf=3
    keyspace="voucherd_bench_${role}_$(date +%s)_$$"
    store="scylla://$hosts/$keyspace?replication_factor=$rf"
    "$VOUCHERD" migrate --store "$store" 2>/dev/null
    echo "$store"
}
start_cql_cluster() {
    case "$1" in
    "$BENCH_CQL") scripts/cassandra.sh start 1 >/dev/null ;;
    "$BENCH_CQL3") scripts/cassandra.sh start 3 --first 127.0.0.11 >/dev/null ;;
    esac
}
# Paxos rounds per win from the services' /metrics: conditional writes of every
# outcome plus serial reads, over the redemptions answered 200 or 202.
lwt_rounds() {
    local name=$1
    shift
    python3 - "$@" <<'PY' | tee "$OUT/$name.lwt"
import re, sys, urllib.request
totals = {"lwt": 0.0, "serial": 0.0, "unknown": 0.0, "not_applied": 0.0, "wins": 0.0}
for url in sys.argv[1:]:
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    for line in text.splitlines():
        m = re.match(r'voucherd_lwt_outcomes_total\{result="(\w+)"\} (\S+)', line)
        if m:
            totals["lwt"] += float(m.group(2))
            if m.group(1) in ("unknown", "not_applied"):
                totals[m.group(1)] += float(m.group(2))
        m = re.match(r'voucherd_lwt_serial_reads_total (\S+)', line)
        if m:
            totals["serial"] += float(m.group(1))
        m = re.match(r'voucherd_redemptions_total\{outcome="(redeemed|pending)"\} (\S+)', line)
        if m:
            totals["wins"] += float(m.group(2))
wins = max(totals["wins"], 1.0)
print(f"lwt: {totals['lwt']:.0f} conditional writes ({totals['not_applied']:.0f} not applied, "
      f"{totals['unknown']:.0f} unknown), {totals['serial']:.0f} serial reads, "
      f"{totals['wins']:.0f} wins: {(totals['lwt'] + totals['serial']) / wins:.2f} rounds per win")
PY
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(flash half hot users40m pg-hot cluster-flash cluster-hot)

for scenario in "${scenarios[@]}"; do
    echo "=== $scenario"
    case "$scenario" in
    cql-hot | cql3-hot)
        hosts=$BENCH_CQL
        [ "$scenario" = cql3-hot ] && hosts=$BENCH_CQL3
        start_cql_cluster "$hosts"
        store=$(cql_store "$hosts" all)
        rm -f "$OUT/server.out"
        "$VOUCHERD" serve --listen 127.0.0.1:0 --store "$store" >"$OUT/server.out" 2>"$OUT/server.err" &
        server_pid=$!
        server_url=$(wait_listening "$OUT/server.out")
        run_stress "$scenario" --max --concurrency "$CQL_CONNECTIONS" --connections "$CQL_CONNECTIONS" \
            --duration "${HOT_SECONDS}s" --users 40000000 --repeat-share 0 --limit 1000000 \
            --baseline --baseline-secs 10
        lwt_rounds "$scenario" "$server_url"
        stop_server "$scenario"
        continue
        ;;
    cql-split-hot | cql3-split-hot)
        hosts=$BENCH_CQL
        [ "$scenario" = cql3-split-hot ] && hosts=$BENCH_CQL3
        start_cql_cluster "$hosts"
        rm -f "$OUT/wallet.out" "$OUT/voucher.out"
        "$VOUCHERD" serve --role wallet --listen 127.0.0.1:0 --store "$(cql_store "$hosts" wallets)" \
            >"$OUT/wallet.out" 2>"$OUT/wallet.err" &
        split_pids=($!)
        wallet_url=$(wait_listening "$OUT/wallet.out")
        "$VOUCHERD" serve --role voucher --listen 127.0.0.1:0 --store "$(cql_store "$hosts" vouchers)" \
            --wallet-url "$wallet_url" >"$OUT/voucher.out" 2>"$OUT/voucher.err" &
        split_pids+=($!)
        voucher_url=$(wait_listening "$OUT/voucher.out")
        run_split_stress "$scenario" --max --concurrency "$CQL_CONNECTIONS" --connections "$CQL_CONNECTIONS" \
            --duration "${HOT_SECONDS}s" --users 40000000 --repeat-share 0 --limit 1000000 \
            --baseline --baseline-secs 10
        lwt_rounds "$scenario" "$voucher_url" "$wallet_url"
        stop_split
        continue
        ;;
    pg-hot)
        # Hot wins with the ledger on PostgreSQL: one instance, no Redis.
        start_sql_instances 1 no
        run_cluster_stress pg-hot --max --concurrency "$CONNECTIONS" --duration "${HOT_SECONDS}s" \
            --users 40000000 --repeat-share 0 --limit 1000000 --baseline --baseline-secs 10
        stop_sql_instances
        continue
        ;;
    cluster-flash)
        # Three instances sharing PostgreSQL and Redis: the flash crowd over all three.
        start_sql_instances 3 yes
        run_cluster_stress cluster-flash --max --concurrency 96 --connections 96 --duration 20s \
            --users 40000000 --repeat-share 0.1 --limit 1000 --baseline --baseline-secs 10
        stop_sql_instances
        continue
        ;;
    split-flash)
        # Split mode: the flash crowd on the voucher service (rejections never reach the wallet).
        start_split
        run_split_stress split-flash --max --concurrency "$CONNECTIONS" --requests "$FLASH_REQUESTS" \
            --duration 3600s --users 40000000 --repeat-share 0.1 --limit 1000 --baseline --baseline-secs 10
        stop_split
        continue
        ;;
    split-hot)
        # Split mode: hot wins, each credited in the wallet service (batched calls).
        start_split
        run_split_stress split-hot --max --concurrency "$CONNECTIONS" --duration "${HOT_SECONDS}s" \
            --users 40000000 --repeat-share 0 --limit 1000000 --baseline --baseline-secs 10
        stop_split
        continue
        ;;
    cluster-hot)
        # Three instances sharing PostgreSQL and Redis: hot wins over all three.
        start_sql_instances 3 yes
        run_cluster_stress cluster-hot --max --concurrency 96 --connections 96 --duration "${HOT_SECONDS}s" \
            --users 40000000 --repeat-share 0 --limit 1000000 --baseline --baseline-secs 10
        stop_sql_instances
        continue
        ;;
    esac
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

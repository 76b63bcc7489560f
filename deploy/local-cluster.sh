#!/usr/bin/env bash
# Starts a whole voucherd cluster on this machine, without containers:
#   - Redis master (6380) + one replica (6381) + three Sentinels (26380-26382),
#     master name "voucherd";
#   - three voucherd instances (8001-8003) sharing that Redis (through Sentinel)
#     and one PostgreSQL (or CockroachDB) database.
#
#   deploy/local-cluster.sh start [--postgres patroni] [postgres://postgres@127.0.0.1:5432/voucherd]
#   deploy/local-cluster.sh start-split [--postgres patroni] [VOUCHER_DB_URL WALLET_DB_URL]
#   deploy/local-cluster.sh start-full [--postgres patroni] [VOUCHER_DB_URL WALLET_DB_URL]
#   deploy/local-cluster.sh stop
#
# --postgres patroni (or LOCAL_CLUSTER_POSTGRES=patroni) runs the ledger on a PostgreSQL
# that survives losing its primary instead of the single server on 127.0.0.1:5432:
# scripts/patroni.sh start --dir $CLUSTER_DIR/patroni (etcd on 23790, a primary and its
# synchronous standby on 5441/5442; that script's header says more, its VOUCHERD_PATRONI_*
# variables move the ports), and every instance gets its multi-host URL
# (postgres://postgres@127.0.0.1:5441,127.0.0.1:5442/DB?target_session_attrs=read-write)
# with DB voucherd (start) or voucherd_vouchers and voucherd_wallets (start-split,
# start-full), created on it. `scripts/patroni.sh kill-primary --dir $CLUSTER_DIR/patroni`
# then loses the primary under load (the instances follow the new primary by themselves,
# writes answered 503 meanwhile); `scripts/patroni.sh start --dir $CLUSTER_DIR/patroni`
# brings the lost node back as the synchronous standby. A URL given on the command line
# is refused with it. `stop` also stops the Patroni cluster; its data stays in
# $CLUSTER_DIR/patroni (`scripts/patroni.sh stop --wipe --dir $CLUSTER_DIR/patroni`
# deletes it).
#
# start-split runs the two-service topology instead: two wallet services
# (8101-8102, role wallet) sharing the wallet database, and three voucher
# services (8001-8003, role voucher) sharing the voucher database and Redis,
# each crediting through both wallet services (--wallet-url), with one service
# token between them (in $CLUSTER_DIR/service-token) and an admin token for the
# operator's routes (in $CLUSTER_DIR/admin-token). Databases default to
# voucherd_vouchers and voucherd_wallets on 127.0.0.1:5432 (created if psql can).
#
# start-full is start-split plus what runs around it in production: haproxy on
# 127.0.0.1:8080 in front of all five services (deploy/haproxy/local-cluster.cfg: wallet
# routes to the wallet services, the rest to the voucher services; stats and its
# metrics on 127.0.0.1:8404) and Prometheus on 127.0.0.1:9090 scraping every instance
# with the admin token, haproxy and itself, with deploy/prometheus/alerts.yml loaded
# (deploy/prometheus/local-cluster.yml). Needs haproxy and prometheus (Debian packages).
#
# The binary is ${CARGO_TARGET_DIR:-target}/release/voucherd, built by the script;
# VOUCHERD_BIN=path uses that binary instead and builds nothing.
#
# Put any HTTP load balancer in front of 127.0.0.1:8001-8003, or drive the three
# directly: target/release/stress flash --url http://127.0.0.1:8001 \
#   --url http://127.0.0.1:8002 --url http://127.0.0.1:8003 ...
# State and logs live in $CLUSTER_DIR (default /tmp/voucherd-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/voucherd-cluster}
PATRONI_DIR="$CLUSTER_DIR/patroni"

usage() {
    echo "usage: $0 start [--postgres single|patroni] [postgres://...] |" \
        "start-split [--postgres single|patroni] [VOUCHER_DB_URL WALLET_DB_URL] |" \
        "start-full [--postgres single|patroni] [VOUCHER_DB_URL WALLET_DB_URL] | stop" >&2
    exit 2
}

# The command, then --postgres anywhere among the database URLs.
command=${1:-}
[ "$#" -gt 0 ] && shift
POSTGRES=${LOCAL_CLUSTER_POSTGRES:-single}
urls=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    --postgres)
        [ "$#" -ge 2 ] || usage
        POSTGRES=$2
        shift 2
        ;;
    --postgres=*)
        POSTGRES=${1#--postgres=}
        shift
        ;;
    *)
        urls+=("$1")
        shift
        ;;
    esac
done
case "$POSTGRES" in
single | patroni) ;;
*)
    echo "--postgres (LOCAL_CLUSTER_POSTGRES) is single or patroni, not '$POSTGRES'" >&2
    exit 2
    ;;
esac
if [ "$POSTGRES" = patroni ] && [ "${#urls[@]}" -gt 0 ]; then
    echo "--postgres patroni names the databases itself; give no URL with it" >&2
    exit 2
fi
STORE=${urls[0]:-${VOUCHERD_STORE:-postgres://postgres@127.0.0.1:5432/voucherd}}
REDIS_PORTS=(6380 6381)
SENTINEL_PORTS=(26380 26381 26382)
HTTP_PORTS=(8001 8002 8003)

WALLET_PORTS=(8101 8102)
HAPROXY_URL=http://127.0.0.1:8080
PROMETHEUS_URL=http://127.0.0.1:9090
voucherd=${VOUCHERD_BIN:-${CARGO_TARGET_DIR:-target}/release/voucherd}

start_redis() {

    redis-server --port "${REDIS_PORTS[0]}" --bind 127.0.0.1 --daemonize yes \
        --dir "$CLUSTER_DIR" --pidfile "$CLUSTER_DIR/redis-0.pid" --logfile "$CLUSTER_DIR/redis-0.log" \
        --save "" --appendonly yes
    redis-server --port "${REDIS_PORTS[1]}" --bind 127.0.0.1 --daemonize yes \
        --dir "$CLUSTER_DIR" --pidfile "$CLUSTER_DIR/redis-1.pid" --logfile "$CLUSTER_DIR/redis-1.log" \
        --save "" --appendonly no --replicaof 127.0.0.1 "${REDIS_PORTS[0]}"
    local i=0
    for port in "${SENTINEL_PORTS[@]}"; do
        cat >"$CLUSTER_DIR/sentinel-$i.conf" <<CONF
port $port
bind 127.0.0.1
daemonize yes
pidfile $CLUSTER_DIR/sentinel-$i.pid
logfile $CLUSTER_DIR/sentinel-$i.log
sentinel resolve-hostnames no
sentinel monitor voucherd 127.0.0.1 ${REDIS_PORTS[0]} 2
sentinel down-after-milliseconds voucherd 2000
sentinel failover-timeout voucherd 10000
CONF
        redis-server "$CLUSTER_DIR/sentinel-$i.conf" --sentinel
        i=$((i + 1))
    done
}

prepare() {
    command -v redis-server >/dev/null || { echo "needs redis-server (Debian: redis-server, redis-sentinel)" >&2; exit 1; }
    mkdir -p "$CLUSTER_DIR"
    if [ -z "${VOUCHERD_BIN:-}" ]; then
        cargo build --release -p voucherd
    fi
    [ -x "$voucherd" ] || { echo "no voucherd binary at $voucherd" >&2; exit 1; }
    start_redis
}

sentinel_url() {
    local sentinels
    sentinels=$(printf '127.0.0.1:%s,' "${SENTINEL_PORTS[@]}")
    echo "redis+sentinel://${sentinels%,}/voucherd"
}

# spawn NAME PORT [ENV=VALUE ...]: one voucherd serve in the background.
spawn() {
    local name=$1 port=$2
    shift 2
    env VOUCHERD_LISTEN="127.0.0.1:$port" "$@" \
        nohup "$voucherd" serve >"$CLUSTER_DIR/$name.out" 2>"$CLUSTER_DIR/$name.log" &
    echo $! >"$CLUSTER_DIR/$name.pid"
}

wait_ready() {
    for port in "$@"; do
        for _ in $(seq 1 100); do
            curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
            sleep 0.1
        done
        curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "instance on $port did not start; see $CLUSTER_DIR" >&2; exit 1; }
    done
}

start() {
    if [ "$POSTGRES" = patroni ]; then
        STORE="$(patroni_store voucherd)"
    fi
    prepare
    # The schema once, before the instances (each would also apply it on start).
    "$voucherd" migrate --store "$STORE"
    local i=0
    for port in "${HTTP_PORTS[@]}"; do
        spawn "voucherd-$i" "$port" VOUCHERD_STORE="$STORE" VOUCHERD_REDIS="$(sentinel_url)"
        i=$((i + 1))
    done
    wait_ready "${HTTP_PORTS[@]}"
    echo "voucherd cluster up: http://127.0.0.1:{8001,8002,8003} on $STORE; logs in $CLUSTER_DIR"
}

# `url` (postgres://…/DB[?query]) naming the database `name` instead, query kept.
with_database() {
    local url=$1 name=$2 query=""
    case "$url" in *\?*) query="?${url#*\?}" url=${url%%\?*} ;; esac
    echo "${url%/*}/$name$query"
}

# Creates the database a postgres:// URL names, if psql can reach its server.
create_database() {
    local url=$1 name=${1%%\?*}
    name=${name##*/}
    command -v psql >/dev/null || return 0
    local admin
    admin="$(with_database "$url" postgres)"
    psql "$admin" -Atc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1 ||
        psql "$admin" -c "CREATE DATABASE \"$name\"" >/dev/null
}

# --postgres patroni: starts (or resumes) the Patroni cluster and prints its URL with
# the database `name`, which it creates.
patroni_store() {
    local url
    url="$(scripts/patroni.sh start --dir "$PATRONI_DIR")" ||
        { echo "scripts/patroni.sh start failed (logs in $PATRONI_DIR)" >&2; exit 1; }
    url="$(with_database "$url" "$1")"
    create_database "$url"
    echo "$url"
}

start_split() {
    local vouchers=${1:-postgres://postgres@127.0.0.1:5432/voucherd_vouchers}
    local wallets=${2:-postgres://postgres@127.0.0.1:5432/voucherd_wallets}
    if [ "$POSTGRES" = patroni ]; then
        vouchers="$(patroni_store voucherd_vouchers)"
        wallets="$(patroni_store voucherd_wallets)"
    fi
    prepare
    create_database "$vouchers"
    create_database "$wallets"
    "$voucherd" migrate --store "$vouchers"
    "$voucherd" migrate --store "$wallets"
    # The service token between the services, and the admin token for the
    # operator's routes (create vouchers, reports, wallets) on every instance.
    local token="$CLUSTER_DIR/service-token" admin="$CLUSTER_DIR/admin-token"
    [ -f "$token" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$token"
    [ -f "$admin" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$admin"
    local i=0 wallet_urls=""
    for port in "${WALLET_PORTS[@]}"; do
        spawn "wallet-$i" "$port" VOUCHERD_ROLE=wallet VOUCHERD_STORE="$wallets" \
            VOUCHERD_SERVICE_TOKEN_FILE="$token" VOUCHERD_ADMIN_TOKEN_FILE="$admin"
        wallet_urls="${wallet_urls}http://127.0.0.1:$port,"
        i=$((i + 1))
    done
    wait_ready "${WALLET_PORTS[@]}"
    i=0
    for port in "${HTTP_PORTS[@]}"; do
        spawn "voucher-$i" "$port" VOUCHERD_ROLE=voucher VOUCHERD_STORE="$vouchers" \
            VOUCHERD_REDIS="$(sentinel_url)" VOUCHERD_WALLET_URL="${wallet_urls%,}" \
            VOUCHERD_SERVICE_TOKEN_FILE="$token" VOUCHERD_ADMIN_TOKEN_FILE="$admin"
        i=$((i + 1))
    done
    wait_ready "${HTTP_PORTS[@]}"
    echo "voucherd split topology up: vouchers http://127.0.0.1:{8001,8002,8003}," \
        "wallets http://127.0.0.1:{8101,8102}; logs in $CLUSTER_DIR"
    echo "admin routes: -H \"Authorization: Bearer \$(cat $admin)\""
}

# Waits until URL answers 2xx (bounded), or fails naming WHAT.
wait_http() {
    local url=$1 what=$2
    for _ in $(seq 1 100); do
        curl -fsS "$url" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$what did not answer $url; see $CLUSTER_DIR" >&2
    exit 1
}

start_full() {
    command -v haproxy >/dev/null || { echo "needs haproxy (Debian: haproxy)" >&2; exit 1; }
    command -v prometheus >/dev/null || { echo "needs prometheus (Debian: prometheus)" >&2; exit 1; }
    start_split "$@"
    haproxy -D -p "$CLUSTER_DIR/haproxy.pid" -f deploy/haproxy/local-cluster.cfg \
        >"$CLUSTER_DIR/haproxy.log" 2>&1 ||
        { cat "$CLUSTER_DIR/haproxy.log" >&2; echo "haproxy did not start" >&2; exit 1; }
    # Prometheus reads its configuration, the rules and (relative to them) the admin
    # token from $CLUSTER_DIR: a copy, so that the repository is never written to.
    local dir="$CLUSTER_DIR/prometheus"
    mkdir -p "$dir/data"
    cp deploy/prometheus/local-cluster.yml "$dir/prometheus.yml"
    cp deploy/prometheus/alerts.yml "$dir/alerts.yml"
    nohup prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
        --web.listen-address=127.0.0.1:9090 >"$CLUSTER_DIR/prometheus.log" 2>&1 &
    echo $! >"$CLUSTER_DIR/prometheus.pid"
    wait_http "$HAPROXY_URL/readyz" haproxy
    wait_http "$PROMETHEUS_URL/-/ready" prometheus
    # Every target: five voucherd services, haproxy and Prometheus itself.
    local targets=$((${#HTTP_PORTS[@]} + ${#WALLET_PORTS[@]} + 2)) up=0
    for _ in $(seq 1 100); do
        up=$(curl -fsS "$PROMETHEUS_URL/api/v1/query" --data-urlencode 'query=count(up == 1)' |
            sed -n 's/.*"value":\[[^,]*,"\([0-9]*\)"\].*/\1/p')
        [ "${up:-0}" -eq "$targets" ] && break
        sleep 0.2
    done
    [ "${up:-0}" -eq "$targets" ] || { echo "Prometheus sees ${up:-0} of $targets targets up; see $PROMETHEUS_URL/targets" >&2; exit 1; }
    echo "voucherd full topology up: API $HAPROXY_URL (haproxy; stats http://127.0.0.1:8404/stats)," \
        "Prometheus $PROMETHEUS_URL ($targets targets up, alerts.yml loaded); logs in $CLUSTER_DIR"
}

stop() {
    for pidfile in "$CLUSTER_DIR"/prometheus.pid "$CLUSTER_DIR"/haproxy.pid; do
        [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    for pidfile in "$CLUSTER_DIR"/voucherd-*.pid "$CLUSTER_DIR"/voucher-*.pid "$CLUSTER_DIR"/wallet-*.pid; do
        [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 1
    for pidfile in "$CLUSTER_DIR"/sentinel-*.pid "$CLUSTER_DIR"/redis-*.pid; do
        [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -f "$CLUSTER_DIR"/*.pid
    # The Patroni cluster of --postgres patroni, whichever way it was started.
    if [ -d "$PATRONI_DIR" ]; then
        scripts/patroni.sh stop --dir "$PATRONI_DIR"
    fi
    echo "voucherd cluster stopped"
}

case "$command" in
start) start ;;
start-split) start_split "${urls[0]:-}" "${urls[1]:-}" ;;
start-full) start_full "${urls[0]:-}" "${urls[1]:-}" ;;
stop) stop ;;
*) usage ;;
esac

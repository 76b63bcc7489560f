#!/usr/bin/env bash
# Starts a whole voucherd cluster on this machine, without containers:
#   - Redis master (6380) + one replica (6381) + three Sentinels (26380-26382),
#     master name "voucherd";
#   - three voucherd instances (8001-8003) sharing that Redis (through Sentinel)
#     and one PostgreSQL (or CockroachDB) database.
#
#   deploy/local-cluster.sh start [postgres://postgres@127.0.0.1:5432/voucherd]
#   deploy/local-cluster.sh stop
#
# Put any HTTP load balancer in front of 127.0.0.1:8001-8003, or drive the three
# directly: target/release/stress flash --url http://127.0.0.1:8001 \
#   --url http://127.0.0.1:8002 --url http://127.0.0.1:8003 ...
# State and logs live in $CLUSTER_DIR (default /tmp/voucherd-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/voucherd-cluster}
STORE=${2:-${VOUCHERD_STORE:-postgres://postgres@127.0.0.1:5432/voucherd}}
REDIS_PORTS=(6380 6381)
SENTINEL_PORTS=(26380 26381 26382)
HTTP_PORTS=(8001 8002 8003)

start() {
    command -v redis-server >/dev/null || { echo "needs redis-server (Debian: redis-server, redis-sentinel)" >&2; exit 1; }
    mkdir -p "$CLUSTER_DIR"
    cargo build --release -p voucherd
    local voucherd=target/release/voucherd

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

    # The schema once, before the instances (each would also apply it on start).
    "$voucherd" migrate --store "$STORE"
    local sentinels
    sentinels=$(printf '127.0.0.1:%s,' "${SENTINEL_PORTS[@]}")
    i=0
    for port in "${HTTP_PORTS[@]}"; do
        VOUCHERD_LISTEN="127.0.0.1:$port" VOUCHERD_STORE="$STORE" \
            VOUCHERD_REDIS="redis+sentinel://${sentinels%,}/voucherd" \
            nohup "$voucherd" serve >"$CLUSTER_DIR/voucherd-$i.out" 2>"$CLUSTER_DIR/voucherd-$i.log" &
        echo $! >"$CLUSTER_DIR/voucherd-$i.pid"
        i=$((i + 1))
    done
    for port in "${HTTP_PORTS[@]}"; do
        for _ in $(seq 1 100); do
            curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
            sleep 0.1
        done
        curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { echo "instance on $port did not start; see $CLUSTER_DIR" >&2; exit 1; }
    done
    echo "voucherd cluster up: http://127.0.0.1:{8001,8002,8003}; logs in $CLUSTER_DIR"
}

stop() {
    for pidfile in "$CLUSTER_DIR"/voucherd-*.pid; do
        [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 1
    for pidfile in "$CLUSTER_DIR"/sentinel-*.pid "$CLUSTER_DIR"/redis-*.pid; do
        [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
    done
    rm -f "$CLUSTER_DIR"/*.pid
    echo "voucherd cluster stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start [postgres://...] | stop" >&2
    exit 2
    ;;
esac

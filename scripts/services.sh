#!/usr/bin/env bash
# The servers and binaries the test suite needs, on a Debian machine that may have none.
#
#   scripts/services.sh up      install what is missing, start PostgreSQL and Redis, wait
#                               until both answer
#   scripts/services.sh status  what answers, what this script started, which binaries exist
#   scripts/services.sh down    stop what `up` started (and nothing else)
#
# up:
#   - installs the Debian packages the tests and scripts/test.sh use when their binaries
#     are missing (apt-get, --no-install-recommends; sudo when not root; daemons that a
#     package would start at install are kept from starting): postgresql (psql, and the
#     initdb/postgres that voucherd_test_support::cluster runs privately), redis-server, redis-tools,
#     redis-sentinel, haproxy, prometheus (with promtool), docker-compose, nodejs and npm,
#     python3-venv and python3-pip, and patroni, etcd-server and curl (tests/pg_failover.rs
#     runs a Patroni cluster with scripts/patroni.sh; installed here so that the test
#     run installs nothing). When everything is there it runs no apt-get at all.
#   - PostgreSQL on 127.0.0.1:5432, user `postgres`, trust authentication, so
#     `psql -h 127.0.0.1 -U postgres` works without a password: a private cluster of this
#     script (initdb into the state directory, run as the `postgres` user when we are root).
#   - Redis on 127.0.0.1:6379, without persistence.
#   A server already answering on its port is left alone (and not stopped by `down`); `up`
#   only checks that it is usable. Running `up` again is harmless.
#
# State (what `up` started, data, logs): $VOUCHERD_SERVICES_DIR, default
# ${XDG_RUNTIME_DIR:-/tmp}/voucherd-services.
set -euo pipefail

cd "$(dirname "$0")/.."

HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379
PG_URL="postgres://postgres@$HOST:$PG_PORT/postgres"
STATE_DIR="${VOUCHERD_SERVICES_DIR:-${XDG_RUNTIME_DIR:-/tmp}/voucherd-services}"
# How long a server may take to answer once started.
START_TIMEOUT_SECS=60

say() { echo "services.sh: $*"; }
die() {
    echo "services.sh: error: $*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# ---- binaries and packages --------------------------------------------------------------

# The newest directory holding initdb, postgres and pg_ctl: PATH first, else Debian's
# /usr/lib/postgresql/<version>/bin (the same search as crates/test-support/src/cluster/pg.rs).
pg_bin_dir() {
    local initdb dir
    if initdb="$(command -v initdb 2>/dev/null)"; then
        dir="$(dirname "$initdb")"
        if [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

have() { command -v "$1" >/dev/null 2>&1; }

# Prints the Debian packages whose binaries are missing, one a line.
missing_packages() {
    pg_bin_dir >/dev/null || echo postgresql
    { have psql && have pg_isready; } || echo postgresql-client
    have redis-server || echo redis-server
    have redis-cli || echo redis-tools
    have redis-sentinel || echo redis-sentinel
    have haproxy || echo haproxy
    { have prometheus && have promtool; } || echo prometheus
    # deploy/check.sh (run by scripts/test.sh) validates deploy/compose.yaml with it.
    have docker-compose || echo docker-compose
    have node || echo nodejs
    have npm || echo npm
    # scripts/patroni.sh (tests/pg_failover.rs, deploy/local-cluster.sh --postgres patroni):
    # the same checks as its own, so that it never installs anything itself.
    { have patroni && have patronictl; } || echo patroni
    have etcd || echo etcd-server
    have curl || echo curl
    if ! have python3; then
        echo python3
        echo python3-venv
        echo python3-pip
    else
        # scripts/schemathesis.sh makes a venv; scripts/test.sh pip-installs deploy tools.
        # One interpreter start when both are there (a pyenv shim costs a second or so).
        if ! python3 -c 'import ensurepip, venv, pip' >/dev/null 2>&1; then
            python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv
            python3 -m pip --version >/dev/null 2>&1 || echo python3-pip
        fi
    fi
}

# Installs `packages` with apt-get. Debian starts a daemon when its package is installed
# (PostgreSQL's main cluster, redis-server, redis-sentinel, haproxy, prometheus, etcd) unless
# policy-rc.d forbids it: a machine without one gets a forbidding one for the install,
# so that only what this script starts runs, on the ports and settings it chose.
install_packages() {
    local policy=/usr/sbin/policy-rc.d placed=""
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\n# scripts/services.sh: no daemon starts during its install\nexit 101\n' > $policy && chmod 755 $policy"
        placed=yes
        # Also when interrupted.
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local status=0
    say "installing $* (apt-get)"
    as_root apt-get update -q -o DPkg::Lock::Timeout=300 || status=$?
    if [ "$status" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends -o DPkg::Lock::Timeout=300 "$@" || status=$?
    fi
    if [ -n "$placed" ]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
    [ "$status" -eq 0 ] || die "apt-get could not install $*"
}

ensure_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    [ "${#missing[@]}" -eq 0 ] && return 0
    install_packages "${missing[@]}"
    mapfile -t missing < <(missing_packages)
    [ "${#missing[@]}" -eq 0 ] || die "still missing after apt-get install: ${missing[*]}"
}

# ---- state ------------------------------------------------------------------------------

mkdir -p "$STATE_DIR"
chmod 755 "$STATE_DIR" 2>/dev/null || true
# One services.sh at a time (two test runs starting together).
exec 9>"$STATE_DIR/lock"
flock 9

PG_STATE="$STATE_DIR/postgres.started"
REDIS_STATE="$STATE_DIR/redis.started"
REDIS_DIR="$STATE_DIR/redis"

# The private cluster's directory. When we are root the server runs as `postgres`, which
# must reach it: a state directory under a private XDG_RUNTIME_DIR is out of its reach.
pg_dir() {
    local dir="$STATE_DIR/postgres"
    if is_root && ! runuser -u postgres -- test -x "$STATE_DIR" 2>/dev/null; then
        dir="/tmp/voucherd-services-postgres"
    fi
    echo "$dir"
}

# Runs a PostgreSQL binary as the user the server runs as (it refuses to run as root).
as_pg_user() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# ---- PostgreSQL -------------------------------------------------------------------------

# 0 accepting connections, 1 rejecting (starting up or shutting down), 2 no answer.
pg_ready_code() {
    local code=0
    pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1 || code=$?
    echo "$code"
}

pg_login() {
    PGCONNECT_TIMEOUT=3 psql -X -q -w -h "$HOST" -p "$PG_PORT" -U postgres -d postgres \
        -Atc 'select 1' >/dev/null
}

pg_login_ok() { pg_login 2>/dev/null; }

# psql's complaint when it cannot log in (empty when it can).
pg_login_error() { pg_login 2>&1 | head -n 3 || true; }

# The pid of the cluster services.sh started, when it still runs.
pg_ours() {
    [ -f "$PG_STATE" ] && pg_pid "$(sed -n 's/^data=//p' "$PG_STATE")"
}

wait_for_pg() {
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    while [ "$(pg_ready_code)" -ne 0 ]; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
    return 0
}

# The pid of a postmaster running on `data` (its postmaster.pid names a live process).
pg_pid() {
    local data=$1 pid
    pid="$(head -n 1 "$data/postmaster.pid" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

pg_up() {
    local code
    code="$(pg_ready_code)"
    if [ "$code" -ne 2 ]; then
        wait_for_pg || die "a PostgreSQL server on $HOST:$PG_PORT does not accept connections within ${START_TIMEOUT_SECS}s"
        if pg_login_ok; then
            if pg_ours >/dev/null; then
                say "PostgreSQL already running on $HOST:$PG_PORT (started by services.sh)"
            else
                say "PostgreSQL already answering on $HOST:$PG_PORT (not ours: left alone)"
            fi
            return 0
        fi
        local cluster="" debian=""
        if have pg_lsclusters; then
            # "15 main 5432 online postgres ..." for Debian's own clusters.
            cluster="$(pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" \
                '$3 == port && $4 ~ /online/ { print $1 " " $2; exit }')"
        fi
        if [ -n "$cluster" ]; then
            debian="
It is Debian's cluster $cluster: \`pg_ctlcluster $cluster stop\` stops it."
        fi
        die "a PostgreSQL server answers on $HOST:$PG_PORT, but \`psql -h $HOST -U postgres\` without a password fails:
  $(pg_login_error)
The tests connect as $PG_URL. Either stop that server (services.sh then starts its own,
with trust authentication on loopback), or allow trusted loopback connections in its
pg_hba.conf (first line: host all all 127.0.0.1/32 trust) and reload it, or point the
tests at another server with VOUCHERD_TEST_POSTGRES.$debian"
    fi

    local bin dir data version
    bin="$(pg_bin_dir)" || die "no PostgreSQL server binaries (initdb, postgres, pg_ctl)"
    dir="$(pg_dir)"
    data="$dir/data"
    # "postgres (PostgreSQL) 15.18 (Debian ...)": the major version is the first number.
    version="$("$bin/postgres" -V | grep -oE '[0-9]+' | head -n 1)"
    if [ -s "$data/PG_VERSION" ] && [ "$(cat "$data/PG_VERSION")" != "$version" ]; then
        say "the private cluster in $data is of PostgreSQL $(cat "$data/PG_VERSION"), the server is $version: starting afresh"
        rm -rf "$data"
    fi
    if [ ! -s "$data/PG_VERSION" ]; then
        say "creating a PostgreSQL $version cluster in $data"
        rm -rf "$data"
        mkdir -p "$dir"
        is_root && chown postgres: "$dir"
        chmod 700 "$dir"
        as_pg_user "$bin/initdb" -D "$data" -A trust -U postgres -E UTF8 --locale=C -N \
            >"$dir/initdb.log" 2>&1 9>&- || {
            tail -n 30 "$dir/initdb.log" >&2
            die "initdb failed (log: $dir/initdb.log)"
        }
        # Trust on every connection (initdb -A trust); only loopback is listened on.
        as_pg_user sh -c "cat >> '$data/postgresql.conf'" <<EOF

# scripts/services.sh: the test server
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$dir'
EOF
    fi
    say "starting PostgreSQL $version on $HOST:$PG_PORT (data $data)"
    # 9>&-: the server must not inherit (and so hold) services.sh's lock.
    if ! as_pg_user "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t "$START_TIMEOUT_SECS" \
        start >"$dir/pg_ctl.log" 2>&1 9>&-; then
        cat "$dir/pg_ctl.log" >&2
        tail -n 30 "$dir/postgres.log" >&2
        die "PostgreSQL did not start (log: $dir/postgres.log)"
    fi
    printf 'bin=%s\ndata=%s\n' "$bin" "$data" >"$PG_STATE"
    wait_for_pg || die "PostgreSQL started but does not accept connections (log: $dir/postgres.log)"
    pg_login_ok || die "PostgreSQL started, but psql cannot log in: $(pg_login_error)"
    say "PostgreSQL answers at $PG_URL"
}

pg_down() {
    if [ ! -f "$PG_STATE" ]; then
        say "PostgreSQL: not started by services.sh, nothing to stop"
        return 0
    fi
    local bin data
    bin="$(sed -n 's/^bin=//p' "$PG_STATE")"
    data="$(sed -n 's/^data=//p' "$PG_STATE")"
    if pg_pid "$data" >/dev/null; then
        say "stopping PostgreSQL (data $data)"
        as_pg_user "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null ||
            die "pg_ctl stop failed for $data"
    else
        say "PostgreSQL (data $data) was not running"
    fi
    rm -f "$PG_STATE"
}

pg_status() {
    local code
    code="$(pg_ready_code)"
    local owner="not started by services.sh"
    if [ -f "$PG_STATE" ]; then
        local data pid
        data="$(sed -n 's/^data=//p' "$PG_STATE")"
        if pid="$(pg_pid "$data")"; then
            owner="started by services.sh (pid $pid, data $data)"
        else
            owner="started by services.sh but no longer running (data $data)"
        fi
    fi
    if [ "$code" -eq 0 ] && pg_login_ok; then
        echo "PostgreSQL $HOST:$PG_PORT: up, psql -U postgres logs in; $owner"
        return 0
    elif [ "$code" -ne 2 ]; then
        echo "PostgreSQL $HOST:$PG_PORT: answers but psql -U postgres cannot log in ($(pg_login_error | head -n 1)); $owner"
    else
        echo "PostgreSQL $HOST:$PG_PORT: down; $owner"
    fi
    return 1
}

# ---- Redis ------------------------------------------------------------------------------

redis_ping() {
    [ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

# Something (Redis or not) accepts connections on the Redis port.
redis_port_taken() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$REDIS_PORT" 2>/dev/null
}

# The pid of the redis-server services.sh started, when it still runs.
redis_pid() {
    local pid
    pid="$(cat "$REDIS_DIR/redis.pid" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        grep -q '^redis-server' "/proc/$pid/comm" 2>/dev/null && echo "$pid"
}

redis_up() {
    if redis_ping; then
        if [ -f "$REDIS_STATE" ] && redis_pid >/dev/null; then
            say "Redis already running on $HOST:$REDIS_PORT (started by services.sh)"
        else
            say "Redis already answering on $HOST:$REDIS_PORT (not ours: left alone)"
        fi
        return 0
    fi
    redis_port_taken && die "something other than Redis listens on $HOST:$REDIS_PORT (it does not answer PING)"
    mkdir -p "$REDIS_DIR"
    rm -f "$REDIS_DIR/redis.pid"
    say "starting Redis on $HOST:$REDIS_PORT (no persistence; log $REDIS_DIR/redis.log)"
    redis-server --daemonize yes --bind "$HOST" --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$REDIS_DIR" \
        --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" 9>&- ||
        die "redis-server did not start (log: $REDIS_DIR/redis.log)"
    : >"$REDIS_STATE"
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until redis_ping; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 30 "$REDIS_DIR/redis.log" >&2 || true
            die "Redis does not answer PING on $HOST:$REDIS_PORT within ${START_TIMEOUT_SECS}s"
        fi
        sleep 0.1
    done
    say "Redis answers at redis://$HOST:$REDIS_PORT"
}

redis_down() {
    if [ ! -f "$REDIS_STATE" ]; then
        say "Redis: not started by services.sh, nothing to stop"
        return 0
    fi
    local pid
    if pid="$(redis_pid)"; then
        say "stopping Redis (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "Redis (pid $pid) did not stop within 10s: SIGKILL"
            kill -KILL "$pid" || true
        fi
    else
        say "Redis (started by services.sh) was not running"
    fi
    rm -f "$REDIS_STATE" "$REDIS_DIR/redis.pid"
}

redis_status() {
    local owner="not started by services.sh"
    if [ -f "$REDIS_STATE" ]; then
        local pid
        if pid="$(redis_pid)"; then
            owner="started by services.sh (pid $pid)"
        else
            owner="started by services.sh but no longer running"
        fi
    fi
    if redis_ping; then
        echo "Redis $HOST:$REDIS_PORT: up (PONG); $owner"
        return 0
    fi
    echo "Redis $HOST:$REDIS_PORT: down; $owner"
    return 1
}

# ---- commands ---------------------------------------------------------------------------

binaries_status() {
    local name path
    local pg_bin
    pg_bin="$(pg_bin_dir 2>/dev/null)" || pg_bin=""
    if [ -n "$pg_bin" ]; then
        echo "  initdb, postgres: $pg_bin"
    else
        echo "  initdb, postgres: MISSING (Debian package postgresql)"
    fi
    for name in psql pg_isready redis-server redis-cli redis-sentinel haproxy prometheus promtool \
        docker-compose node npm python3 patroni patronictl etcd curl; do
        if path="$(command -v "$name" 2>/dev/null)"; then
            echo "  $name: $path"
        else
            echo "  $name: MISSING"
        fi
    done
}

usage() {
    echo "usage: scripts/services.sh up|down|status" >&2
    exit 2
}

[ "$#" -eq 1 ] || usage
case "$1" in
    up)
        ensure_packages
        pg_up
        redis_up
        ;;
    down)
        pg_down
        redis_down
        ;;
    status)
        rc=0
        have pg_isready && have psql || { echo "PostgreSQL: no client (psql, pg_isready)"; rc=1; }
        if [ "$rc" -eq 0 ]; then pg_status || rc=1; fi
        if have redis-cli; then redis_status || rc=1; else
            echo "Redis: no redis-cli"
            rc=1
        fi
        echo "binaries:"
        binaries_status
        echo "state: $STATE_DIR"
        exit "$rc"
        ;;
    *) usage ;;
esac

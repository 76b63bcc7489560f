#!/usr/bin/env bash
# A PostgreSQL that survives losing its primary, on this machine: one etcd member and two
# Patroni nodes, each running a private PostgreSQL, one the primary and the other its
# synchronous standby.
#
#   scripts/patroni.sh start [--dir DIR]          install what is missing, start etcd and both
#                                                 nodes, wait for a leader and a sync standby,
#                                                 then print the URL (its only line on stdout)
#   scripts/patroni.sh status [--dir DIR]         who leads, who is sync standby, what runs
#   scripts/patroni.sh url                        the multi-host URL voucherd connects with
#   scripts/patroni.sh primary-pid [--dir DIR]    the pid of the leader's postmaster
#   scripts/patroni.sh kill-primary [--postgres-only] [--dir DIR]
#                                                 SIGKILL the leader's Patroni and postmaster
#   scripts/patroni.sh stop [--wipe] [--dir DIR]  stop everything this script started
#                                                 (--wipe: and delete its data and logs)
#
# The URL: postgres://postgres@127.0.0.1:5441,127.0.0.1:5442/postgres?target_session_attrs=read-write
# A client (libpq, tokio-postgres) tries the hosts in order and keeps the first that accepts
# writes, so after a failover a new connection finds the new primary by itself. User
# `postgres`, trust authentication on loopback: `psql -h 127.0.0.1 -p 5441 -U postgres`.
#
# start:
#   - installs the Debian packages whose binaries are missing (patroni, etcd-server,
#     postgresql, postgresql-client, curl) with apt-get, the way scripts/services.sh does:
#     --no-install-recommends, sudo when not root, and a policy-rc.d that keeps the
#     packages' own daemons (etcd on 2379, Debian's PostgreSQL cluster) from starting.
#     When everything is there it runs no apt-get at all.
#   - etcd on 127.0.0.1:23790 (peer port 23800), one member: the DCS holding the leader
#     lock. Patroni node1 (PostgreSQL 127.0.0.1:5441, REST API 8441) and node2 (5442,
#     8442); the first to take the lock bootstraps the cluster (initdb with data checksums),
#     the other clones it with pg_basebackup. When we are root, Patroni and PostgreSQL run
#     as the `postgres` user (PostgreSQL refuses root).
#   - is idempotent: what runs is left alone, what is missing is started, so `start`
#     also brings back a node that kill-primary killed; it rejoins as a standby (pg_rewind
#     when its WAL went past the new primary's).
#   - returns once a leader accepts writes and the other node is its synchronous standby
#     (in Patroni's /sync key and `sync` in the leader's pg_stat_replication).
#
# Failover timing (Patroni's dynamic configuration, written at bootstrap): ttl 10,
# loop_wait 1, retry_timeout 4 (Patroni needs ttl > loop_wait + 2 * retry_timeout). The
# leader renews its lock every loop_wait; once it is gone the lock expires after at most
# ttl seconds and the standby promotes itself, so writes come back some 10 s after the
# primary is lost (`kill-primary`, then time a write through the URL).
#
# Synchronous mode: `synchronous_mode: true`, `synchronous_mode_strict: false`.
#   - With synchronous_mode Patroni promotes only a standby named in its /sync key, which it
#     writes only once that standby confirms every commit (synchronous_commit = on): every
#     commit a client saw acknowledged is on the standby it promotes. Losing the primary
#     therefore loses no acknowledged write, strict or not.
#   - Strict would make the primary refuse to acknowledge any commit while no synchronous
#     standby is connected. With two nodes that means: after a failover the new primary has
#     no standby (the old one is dead), and every write hangs until the lost node is back.
#     "Writes come back within seconds" after losing a node needs non-strict.
#   - The price of non-strict: while the cluster runs on one node (after a failover, or
#     while the standby is down) commits are acknowledged from that node alone, and losing
#     it too loses them (Patroni then promotes nobody: the lagging node is not in /sync).
#     `start` brings the lost node back as the new sync standby. Three nodes with strict
#     mode would keep both properties; this script is for a test machine.
#
# kill-primary: SIGKILLs the leader's Patroni first and then its postmaster, which is what
#   losing the primary's machine does: nobody renews the leader lock, it expires, the
#   standby is promoted (a failover, new timeline). Its stdout is the killed node's
#   address (127.0.0.1:5441).
#   --postgres-only SIGKILLs the postmaster alone: Patroni, still holding the lock, sees
#   PostgreSQL down at its next loop (1 s) and starts it again on the same node after crash
#   recovery, with no failover (the same primary is back in a second or two). It tests a
#   crash, not the loss of the primary.
# primary-pid: prints the pid of the leader's postmaster (a test may SIGKILL it itself).
# stop: stops the standby's Patroni, then the leader's (each stops its PostgreSQL), then
#   etcd; a postmaster left without its Patroni is stopped with pg_ctl.
#
# Ports: VOUCHERD_PATRONI_PG_PORT (5441; node2 uses the next), VOUCHERD_PATRONI_REST_PORT
# (8441), VOUCHERD_PATRONI_ETCD_PORT (23790; the peer port is 10 above). State (data, logs,
# configurations, pids): --dir DIR, else $VOUCHERD_PATRONI_DIR, default
# ${XDG_RUNTIME_DIR:-/tmp}/voucherd-patroni. Logs: DIR/etcd/etcd.log,
# DIR/node*/patroni.log, DIR/node*/log/postgresql.log.
set -euo pipefail

cd "$(dirname "$0")/.."

HOST=127.0.0.1
PG_PORT="${VOUCHERD_PATRONI_PG_PORT:-5441}"
REST_PORT="${VOUCHERD_PATRONI_REST_PORT:-8441}"
ETCD_PORT="${VOUCHERD_PATRONI_ETCD_PORT:-23790}"
ETCD_PEER_PORT=$((ETCD_PORT + 10))
NODES=(node1 node2)
SCOPE=voucherd
NAMESPACE=/voucherd-patroni/
# Patroni's dynamic configuration (seconds); see the header.
TTL=10
LOOP_WAIT=1
RETRY_TIMEOUT=4
# How long a start may take (initdb, pg_basebackup, a rewind) before it gives up.
START_TIMEOUT_SECS=120

say() { echo "patroni.sh: $*" >&2; }
die() {
    echo "patroni.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '6,15p' "$0" >&2
    exit 2
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

have() { command -v "$1" >/dev/null 2>&1; }

# Patroni's interpreter: JSON from the REST API is read with it (a pyenv shim on PATH
# costs a second a start).
python() {
    if [ -x /usr/bin/python3 ]; then /usr/bin/python3 "$@"; else python3 "$@"; fi
}

url() {
    local port2=$((PG_PORT + 1))
    echo "postgres://postgres@$HOST:$PG_PORT,$HOST:$port2/postgres?target_session_attrs=read-write"
}

# node1 → 0, node2 → 1.
node_index() {
    local i
    for i in "${!NODES[@]}"; do
        if [ "${NODES[$i]}" = "$1" ]; then
            echo "$i"
            return 0
        fi
    done
    return 1
}
node_pg_port() { echo $((PG_PORT + $(node_index "$1"))); }
node_rest_port() { echo $((REST_PORT + $(node_index "$1"))); }

# ---- binaries and packages --------------------------------------------------------------

# The newest directory holding initdb, postgres and pg_ctl (scripts/services.sh's search).
pg_bin_dir() {
    local initdb dir
    if initdb="$(command -v initdb 2>/dev/null)"; then
        dir="$(dirname "$initdb")"
        if [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/pg_rewind" ]; then
            echo "$dir"
            return 0
        fi
    fi
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

missing_packages() {
    pg_bin_dir >/dev/null || echo postgresql
    { have psql && have pg_isready; } || echo postgresql-client
    { have patroni && have patronictl; } || echo patroni
    have etcd || echo etcd-server
    have curl || echo curl
}

# Installs `packages` with apt-get, with a policy-rc.d forbidding daemons to start during
# the install when the machine has none (etcd-server would start etcd on 2379, postgresql
# Debian's main cluster on 5432).
install_packages() {
    local policy=/usr/sbin/policy-rc.d placed=""
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\n# scripts/patroni.sh: no daemon starts during its install\nexit 101\n' > $policy && chmod 755 $policy"
        placed=yes
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local status=0
    say "installing $* (apt-get)"
    as_root apt-get update -q -o DPkg::Lock::Timeout=300 >&2 || status=$?
    if [ "$status" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends -o DPkg::Lock::Timeout=300 "$@" >&2 || status=$?
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

# The command prefix that runs a command as the user PostgreSQL runs as, with a clean
# environment. Each part execs the next (no fork), so the pid of `( exec ... ) &` is the
# command's own.
if is_root; then
    PG_USER=(env -i PATH=/usr/bin:/bin HOME=/var/lib/postgresql LANG=C.UTF-8
        setpriv --reuid=postgres --regid=postgres --init-groups)
else
    PG_USER=(env -i PATH=/usr/bin:/bin HOME="$HOME" LANG=C.UTF-8)
fi

as_pg_user() { "${PG_USER[@]}" "$@"; }

# The state directory must be reachable by the `postgres` user when we are root.
pg_user_reaches() {
    ! is_root || setpriv --reuid=postgres --regid=postgres --init-groups test -x "$1" 2>/dev/null
}

command="${1:-}"
[ -n "$command" ] || usage
shift
wipe=0
postgres_only=0
dir_option=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --dir)
            [ "$#" -ge 2 ] || usage
            dir_option="$2"
            shift 2
            ;;
        --wipe) wipe=1; shift ;;
        --postgres-only) postgres_only=1; shift ;;
        *) usage ;;
    esac
done
[ "$wipe" -eq 0 ] || [ "$command" = stop ] || usage
[ "$postgres_only" -eq 0 ] || [ "$command" = kill-primary ] || usage

if [ "$command" = url ]; then
    url
    exit 0
fi

if [ -n "$dir_option" ]; then
    STATE_DIR="$dir_option"
else
    STATE_DIR="${VOUCHERD_PATRONI_DIR:-${XDG_RUNTIME_DIR:-/tmp}/voucherd-patroni}"
fi
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
chmod 755 "$STATE_DIR" 2>/dev/null || true
if ! pg_user_reaches "$STATE_DIR"; then
    if [ -z "$dir_option" ] && [ -z "${VOUCHERD_PATRONI_DIR:-}" ]; then
        # A private XDG_RUNTIME_DIR is out of the postgres user's reach.
        STATE_DIR=/tmp/voucherd-patroni
        mkdir -p "$STATE_DIR"
        chmod 755 "$STATE_DIR"
    else
        die "the postgres user cannot reach $STATE_DIR (PostgreSQL runs as postgres): give a --dir it can reach"
    fi
fi
# One patroni.sh at a time; the daemons never inherit the lock (9>&-).
exec 9>"$STATE_DIR/lock"
flock 9

ETCD_DIR="$STATE_DIR/etcd"
node_dir() { echo "$STATE_DIR/$1"; }

# The pid recorded in `file` when that process still runs and its command line holds
# `marker` (a recycled pid is not ours).
live_pid() {
    local file=$1 marker=$2 pid
    pid="$(cat "$file" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker" || return 1
    echo "$pid"
}

# ---- etcd -------------------------------------------------------------------------------

etcd_pid() { live_pid "$ETCD_DIR/etcd.pid" "$ETCD_DIR/data"; }

etcd_healthy() {
    curl -fsS --max-time 2 "http://$HOST:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

port_taken() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

etcd_up() {
    if etcd_pid >/dev/null; then
        :
    else
        port_taken "$ETCD_PORT" && die "something other than our etcd listens on $HOST:$ETCD_PORT (set VOUCHERD_PATRONI_ETCD_PORT)"
        port_taken "$ETCD_PEER_PORT" && die "something listens on etcd's peer port $HOST:$ETCD_PEER_PORT"
        mkdir -p "$ETCD_DIR"
        say "starting etcd on $HOST:$ETCD_PORT (log $ETCD_DIR/etcd.log)"
        local peer="http://$HOST:$ETCD_PEER_PORT" client="http://$HOST:$ETCD_PORT"
        # The flags about the initial cluster only matter while data/ is empty.
        setsid etcd --name voucherd-patroni --data-dir "$ETCD_DIR/data" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "voucherd-patroni=$peer" --initial-cluster-state new \
            --initial-cluster-token voucherd-patroni \
            >>"$ETCD_DIR/etcd.log" 2>&1 </dev/null 9>&- &
        echo $! >"$ETCD_DIR/etcd.pid"
    fi
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until etcd_healthy; do
        if ! etcd_pid >/dev/null; then
            tail -n 20 "$ETCD_DIR/etcd.log" >&2 || true
            die "etcd stopped (log: $ETCD_DIR/etcd.log)"
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "etcd is not healthy after ${START_TIMEOUT_SECS}s (log: $ETCD_DIR/etcd.log)"
        sleep 0.2
    done
}

etcd_down() {
    local pid
    if pid="$(etcd_pid)"; then
        say "stopping etcd (pid $pid)"
        stop_pid "$pid" 10
    fi
    rm -f "$ETCD_DIR/etcd.pid"
}

# SIGTERM, up to `secs` seconds, then SIGKILL.
stop_pid() {
    local pid=$1 secs=$2 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    say "pid $pid did not stop within ${secs}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# ---- Patroni nodes ----------------------------------------------------------------------

patroni_pid() {
    local dir
    dir="$(node_dir "$1")"
    live_pid "$dir/patroni.pid" "$dir/patroni.yml"
}

# The pid of the postmaster running on the node's data directory.
postmaster_pid() {
    local data pid
    data="$(node_dir "$1")/data"
    pid="$(head -n 1 "$data/postmaster.pid" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
    echo "$pid"
}

write_patroni_config() {
    local node=$1 dir bin pg_port rest_port
    dir="$(node_dir "$node")"
    bin="$(pg_bin_dir)" || die "no PostgreSQL server binaries (initdb, postgres, pg_ctl)"
    pg_port="$(node_pg_port "$node")"
    rest_port="$(node_rest_port "$node")"
    cat >"$dir/patroni.yml" <<EOF
# Written by scripts/patroni.sh for a test cluster; not a production configuration.
scope: $SCOPE
namespace: $NAMESPACE
name: $node
restapi:
  listen: $HOST:$rest_port
  connect_address: $HOST:$rest_port
etcd3:
  hosts: $HOST:$ETCD_PORT
watchdog:
  mode: "off"
bootstrap:
  # Written to etcd by the node that bootstraps; patronictl edit-config changes it later.
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    synchronous_mode_strict: false
    synchronous_node_count: 1
    postgresql:
      use_pg_rewind: true
      use_slots: true
      remove_data_directory_on_rewind_failure: true
      remove_data_directory_on_diverged_timelines: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        synchronous_commit: "on"
        max_connections: 100
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 128MB
        shared_buffers: 32MB
  initdb:
    - encoding: UTF8
    - locale: C
    - data-checksums
postgresql:
  listen: $HOST:$pg_port
  connect_address: $HOST:$pg_port
  data_dir: $dir/data
  bin_dir: $bin
  pgpass: $dir/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
    rewind:
      username: postgres
  pg_hba:
    - local all all trust
    - host all all $HOST/32 trust
    - host replication all $HOST/32 trust
  parameters:
    unix_socket_directories: $dir
    logging_collector: "on"
    log_directory: $dir/log
    log_filename: postgresql.log
EOF
}

node_up() {
    local node=$1 dir pg_port rest_port
    dir="$(node_dir "$node")"
    patroni_pid "$node" >/dev/null && return 0
    pg_port="$(node_pg_port "$node")"
    rest_port="$(node_rest_port "$node")"
    if postmaster_pid "$node" >/dev/null; then
        # Its Patroni died (SIGKILL) but the server lives on: the new Patroni adopts it.
        say "$node: PostgreSQL runs without its Patroni; Patroni takes it over"
    else
        port_taken "$pg_port" && die "something listens on $HOST:$pg_port (set VOUCHERD_PATRONI_PG_PORT)"
    fi
    port_taken "$rest_port" && die "something listens on $HOST:$rest_port (set VOUCHERD_PATRONI_REST_PORT)"
    mkdir -p "$dir/log"
    write_patroni_config "$node"
    if is_root; then chown -R postgres: "$dir"; fi
    chmod 700 "$dir"
    say "starting Patroni $node: PostgreSQL $HOST:$pg_port, REST $HOST:$rest_port (log $dir/patroni.log)"
    # setsid: Patroni outlives this script and the shell that ran it.
    (exec "${PG_USER[@]}" setsid /usr/bin/patroni "$dir/patroni.yml") \
        >>"$dir/patroni.log" 2>&1 </dev/null 9>&- &
    echo $! >"$dir/patroni.pid"
}

# The cluster as Patroni's REST API sees it (any node that answers): one line a member,
# "name role state", e.g. "node1 leader running", "node2 sync_standby streaming".
members() {
    local node json=""
    for node in "${NODES[@]}"; do
        if json="$(curl -fsS --max-time 2 "http://$HOST:$(node_rest_port "$node")/cluster" 2>/dev/null)"; then
            python -c '
import json, sys
for m in json.load(sys.stdin).get("members", []):
    print(m.get("name", "?"), m.get("role", "?"), m.get("state", "?") or "?")
' <<<"$json"
            return 0
        fi
    done
    return 1
}

leader_node() { members | awk '$2 == "leader" { print $1; exit }'; }
sync_node() { members | awk '$2 == "sync_standby" { print $1; exit }'; }

psql_at() {
    local port=$1
    shift
    PGCONNECT_TIMEOUT=3 psql -X -q -w -h "$HOST" -p "$port" -U postgres -d postgres -Atc "$@"
}

# A leader that accepts writes and a sync standby it confirms.
cluster_ready() {
    local leader sync port
    leader="$(leader_node)" && [ -n "$leader" ] || return 1
    sync="$(sync_node)" && [ -n "$sync" ] || return 1
    patroni_pid "$leader" >/dev/null || return 1
    port="$(node_pg_port "$leader")"
    [ "$(psql_at "$port" 'select pg_is_in_recovery()' 2>/dev/null)" = f ] || return 1
    [ "$(psql_at "$port" "select count(*) from pg_stat_replication where sync_state = 'sync'" 2>/dev/null)" -ge 1 ] 2>/dev/null
}

cmd_start() {
    ensure_packages
    etcd_up
    local node
    for node in "${NODES[@]}"; do node_up "$node"; done
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until cluster_ready; do
        for node in "${NODES[@]}"; do
            if ! patroni_pid "$node" >/dev/null; then
                tail -n 30 "$(node_dir "$node")/patroni.log" >&2 || true
                die "Patroni $node stopped (log: $(node_dir "$node")/patroni.log)"
            fi
        done
        if [ "$SECONDS" -ge "$deadline" ]; then
            members >&2 || true
            die "no leader with a synchronous standby after ${START_TIMEOUT_SECS}s (logs: $STATE_DIR/node*/patroni.log, $STATE_DIR/node*/log/postgresql.log; to start afresh: scripts/patroni.sh stop --wipe)"
        fi
        sleep 0.5
    done
    say "leader $(leader_node), synchronous standby $(sync_node)"
    url
}

cmd_status() {
    local rc=0 node
    if [ -f "$(node_dir node1)/patroni.yml" ] && have patronictl; then
        patronictl -c "$(node_dir node1)/patroni.yml" list 2>&1 || rc=1
    fi
    if etcd_healthy; then
        echo "etcd $HOST:$ETCD_PORT: healthy (pid $(etcd_pid || echo 'not ours'))"
    else
        echo "etcd $HOST:$ETCD_PORT: down"
        rc=1
    fi
    for node in "${NODES[@]}"; do
        echo "$node: PostgreSQL $HOST:$(node_pg_port "$node"), patroni pid $(patroni_pid "$node" || echo -), postmaster pid $(postmaster_pid "$node" || echo -)"
    done
    local ours=0
    for node in "${NODES[@]}"; do
        if patroni_pid "$node" >/dev/null; then ours=$((ours + 1)); fi
    done
    if [ "$ours" -lt "${#NODES[@]}" ]; then
        echo "Patroni nodes started from $STATE_DIR and running: $ours of ${#NODES[@]}"
        rc=1
    fi
    local leader sync
    leader="$(leader_node 2>/dev/null || true)"
    sync="$(sync_node 2>/dev/null || true)"
    echo "leader: ${leader:-none}"
    echo "synchronous standby: ${sync:-none}"
    [ -n "$leader" ] && [ -n "$sync" ] || rc=1
    echo "url: $(url)"
    echo "state: $STATE_DIR"
    return "$rc"
}

# The leader whose postmaster runs (the DCS still names a dead leader until its lock
# expires).
live_leader() {
    local leader
    leader="$(leader_node)" || die "no Patroni REST API answers (scripts/patroni.sh status)"
    [ -n "$leader" ] || die "no leader (scripts/patroni.sh status)"
    postmaster_pid "$leader" >/dev/null || die "the leader $leader has no running postmaster (lost, its lock not yet expired?)"
    echo "$leader"
}

cmd_primary_pid() {
    local leader
    leader="$(live_leader)"
    postmaster_pid "$leader"
}

cmd_kill_primary() {
    local leader postmaster patroni=""
    leader="$(live_leader)"
    postmaster="$(postmaster_pid "$leader")"
    if [ "$postgres_only" -eq 1 ]; then
        say "SIGKILL $leader's postmaster (pid $postmaster); its Patroni restarts it"
        kill -KILL "$postmaster"
    else
        patroni="$(patroni_pid "$leader")" || die "the leader $leader's Patroni is not ours or not running"
        say "SIGKILL $leader: Patroni (pid $patroni), then its postmaster (pid $postmaster); the standby takes over once the leader lock expires (ttl ${TTL}s)"
        kill -KILL "$patroni" "$postmaster"
    fi
    echo "$HOST:$(node_pg_port "$leader")"
}

node_down() {
    local node=$1 pid bin
    if pid="$(patroni_pid "$node")"; then
        say "stopping Patroni $node (pid $pid)"
        # Patroni stops its PostgreSQL (fast shutdown) before it exits.
        stop_pid "$pid" 60
    fi
    if pid="$(postmaster_pid "$node")"; then
        say "stopping $node's PostgreSQL (pid $pid), which runs without its Patroni"
        bin="$(pg_bin_dir)"
        as_pg_user "$bin/pg_ctl" -D "$(node_dir "$node")/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$(node_dir "$node")/patroni.pid"
}

cmd_stop() {
    local leader node
    leader="$(leader_node 2>/dev/null || true)"
    # Standbys first, so that stopping the leader hands its lock to nobody.
    for node in "${NODES[@]}"; do
        [ "$node" = "$leader" ] || node_down "$node"
    done
    [ -z "$leader" ] || node_down "$leader"
    etcd_down
    if [ "$wipe" -eq 1 ]; then
        say "deleting $STATE_DIR"
        rm -rf "$STATE_DIR"
    fi
}

case "$command" in
    start) cmd_start ;;
    status) cmd_status ;;
    primary-pid) cmd_primary_pid ;;
    kill-primary) cmd_kill_primary ;;
    stop) cmd_stop ;;
    *) usage ;;
esac

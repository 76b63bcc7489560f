#!/usr/bin/env bash
# Apache Cassandra 5.0 test clusters on loopback, run from the jars Maven resolves
# into ~/.m2 (scripts/cassandra/pom.xml), with a configuration written here.
#
#   scripts/cassandra.sh start N [--first ADDRESS]   N nodes on ADDRESS, ADDRESS+1, …
#                                                    (default 127.0.0.1), CQL on 9042
#   scripts/cassandra.sh stop [--first ADDRESS|all]  stops that cluster (or every one)
#   scripts/cassandra.sh status [--first ADDRESS]    nodetool status of that cluster
#   scripts/cassandra.sh pids [--first ADDRESS]      "address pid" per running node
#
# `start` is idempotent: nodes already running are left alone, missing ones are
# started (so it also brings back a node a test killed). It returns once every node
# is UP in every node's view and answers CQL, then prints the contact points as its
# last line: 127.0.0.1:9042,127.0.0.2:9042,…
#
# Each cluster lives in $VOUCHERD_CASSANDRA_HOME/<first address> (default
# /tmp/voucherd-cassandra): per node its yaml, data, logs (node*/system.log) and pid.
# Nodes are sized for a 2-core machine: a 1 GiB heap (VOUCHERD_CASSANDRA_HEAP),
# one token each (evenly spaced, so nodes start together without bootstrapping),
# small thread pools. The timeouts are Cassandra's defaults (write 2 s, CAS
# contention 1 s), which the ledger's client timeout must exceed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
home="${VOUCHERD_CASSANDRA_HOME:-/tmp/voucherd-cassandra}"
heap="${VOUCHERD_CASSANDRA_HEAP:-1G}"
start_timeout_s="${VOUCHERD_CASSANDRA_START_TIMEOUT_S:-300}"
java="${JAVA_HOME:+$JAVA_HOME/bin/}java"

die() {
    echo "cassandra.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,10p' "$0" >&2
    exit 2
}

# The address `first` + i (i from 0), within 127.0.0.0/8.
address_at() {
    local first="$1" i="$2"
    local a b c d
    IFS=. read -r a b c d <<<"$first"
    [ "$a" = 127 ] || die "addresses must be on loopback (127.x.y.z), not $first"
    d=$((d + i))
    [ "$d" -le 254 ] || die "too many nodes after $first"
    echo "$a.$b.$c.$d"
}

# A JMX port per address (nodetool needs one; the nodes share 127.0.0.1's ports).
jmx_port() {
    local d="${1##*.}"
    echo $((7100 + d))
}

classpath() {
    local cp_file="$home/classpath.txt"
    local pom="$here/cassandra/pom.xml"
    if [ ! -s "$cp_file" ] || [ "$pom" -nt "$cp_file" ]; then
        command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to fetch Cassandra's jars"
        command -v "$java" >/dev/null 2>&1 || die "a Java 17 runtime is needed ($java not found)"
        mkdir -p "$home"
        echo "cassandra.sh: resolving Cassandra's jars with Maven (cached in ~/.m2)" >&2
        mvn -q -B -f "$pom" dependency:build-classpath -Dmdep.outputFile="$cp_file.tmp" >&2 ||
            die "Maven could not resolve org.apache.cassandra:cassandra-all (see above)"
        mv "$cp_file.tmp" "$cp_file"
    fi
    cat "$cp_file"
}

# Evenly spaced Murmur3 tokens: node i of n gets i * 2^64 / n - 2^63.
token_of() {
    local i="$1" n="$2"
    python3 -c "print($i * (2**64 // $n) - 2**63)"
}

write_config() {
    local dir="$1" address="$2" seed="$3" token="$4"
    mkdir -p "$dir"/{data,commitlog,saved_caches,hints,cdc_raw,logs}
    cat >"$dir/cassandra.yaml" <<EOF
# Written by scripts/cassandra.sh for a test node; not a production configuration.
cluster_name: voucherd-test-$seed
num_tokens: 1
initial_token: $token
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$seed:7000"
listen_address: $address
rpc_address: $address
storage_port: 7000
native_transport_port: 9042
start_native_transport: true
data_file_directories: [$dir/data]
commitlog_directory: $dir/commitlog
saved_caches_directory: $dir/saved_caches
hints_directory: $dir/hints
cdc_raw_directory: $dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
# A node whose disk fails (a full disk) exits rather than lingering without
# its native transport, so that a start sees it down and starts it again.
disk_failure_policy: die
commit_failure_policy: die
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 4
concurrent_compactors: 1
native_transport_max_threads: 32
memtable_flush_writers: 1
key_cache_size: 16MiB
disk_access_mode: mmap_index_only
# Tests make a keyspace of six tables each; slab-allocated memtables would hold
# a 1 MiB region per table on the heap.
memtable_allocation_type: unslabbed_heap_buffers
hinted_handoff_enabled: true
max_hint_window: 1h
write_request_timeout: 2000ms
read_request_timeout: 5000ms
cas_contention_timeout: 1000ms
EOF
    cat >"$dir/logback.xml" <<EOF
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$dir/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %logger{0}: %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
EOF
}

# The JDK internals Cassandra 5.0 reaches into on Java 17 (the daemon and nodetool
# refuse to start without them).
jdk_access_options() {
    local opens=(
        java.base/java.io java.base/java.lang java.base/java.lang.module java.base/java.lang.ref
        java.base/java.lang.reflect java.base/java.math java.base/java.net java.base/java.nio
        java.base/java.util java.base/java.util.concurrent java.base/java.util.concurrent.atomic
        java.base/jdk.internal.loader java.base/jdk.internal.math java.base/jdk.internal.module
        java.base/jdk.internal.ref java.base/jdk.internal.reflect java.base/jdk.internal.util.jar
        java.base/sun.nio.ch jdk.management/com.sun.management.internal
    )
    local exports=(
        java.base/jdk.internal.misc java.base/jdk.internal.ref java.base/sun.nio.ch
        java.management.rmi/com.sun.jmx.remote.internal.rmi java.rmi/sun.rmi.registry
        java.rmi/sun.rmi.server java.sql/java.sql java.base/java.lang.ref jdk.unsupported/sun.misc
    )
    local module
    for module in "${opens[@]}"; do printf -- '--add-opens=%s=ALL-UNNAMED\n' "$module"; done
    for module in "${exports[@]}"; do printf -- '--add-exports=%s=ALL-UNNAMED\n' "$module"; done
}

# A node's JVM options: the JDK access above, a small heap, our configuration.
jvm_options() {
    local dir="$1" address="$2" jamm="$3"
    jdk_access_options
    cat <<EOF
-Xms$heap
-Xmx$heap
-Xss512k
-XX:+UseG1GC
-XX:ParallelGCThreads=1
-XX:ConcGCThreads=1
-XX:CICompilerCount=2
-XX:+ExitOnOutOfMemoryError
-Djava.net.preferIPv4Stack=true
-javaagent:$jamm
-Dcassandra.config=file://$dir/cassandra.yaml
-Dlogback.configurationFile=file://$dir/logback.xml
-Dcassandra.logdir=$dir/logs
-Dcassandra.storagedir=$dir
-Dcassandra.jmx.local.port=$(jmx_port "$address")
-Dcassandra.skip_wait_for_gossip_to_settle=0
-Dcassandra.ring_delay_ms=2000
-Dcassandra.superuser_setup_delay_ms=0
-Dcassandra.consistent.rangemovement=false
-Dcassandra-foreground=yes
EOF
}

node_pid() {
    local dir="$1"
    [ -f "$dir/pid" ] || return 1
    local pid
    pid="$(cat "$dir/pid")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

start_node() {
    local dir="$1" address="$2" cp="$3"
    local jamm
    jamm="$(tr ':' '\n' <<<"$cp" | grep '/jamm-' | head -n 1)"
    [ -n "$jamm" ] || die "no jamm jar on Cassandra's classpath"
    jvm_options "$dir" "$address" "$jamm" >"$dir/jvm.options"
    # setsid: the node outlives this script and the shell that ran it.
    setsid "$java" @"$dir/jvm.options" -cp "$cp" org.apache.cassandra.service.CassandraDaemon \
        >"$dir/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
}

nodetool() {
    local address="$1"
    shift
    local options
    mapfile -t options < <(jdk_access_options)
    mkdir -p "$home"
    [ -f "$home/tools-logback.xml" ] || cat >"$home/tools-logback.xml" <<EOF
<configuration>
  <appender name="ERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %logger{0}: %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="ERR"/></root>
</configuration>
EOF
    "$java" -Xmx128m -XX:TieredStopAtLevel=1 "${options[@]}" -Dcassandra.logdir="$home" \
        -Dlogback.configurationFile="file://$home/tools-logback.xml" \
        -Duser.home="$home" -cp "$(classpath)" org.apache.cassandra.tools.NodeTool \
        -h 127.0.0.1 -p "$(jmx_port "$address")" "$@"
}

# True when every node of the cluster answers CQL and sees all n nodes UP/NORMAL.
cluster_ready() {
    local first="$1" n="$2" i address
    for ((i = 0; i < n; i++)); do
        address="$(address_at "$first" "$i")"
        # The native transport is up once the node prints it.
        grep -q "Starting listening for CQL clients" "$home/$first/node$((i + 1))/system.log" \
            2>/dev/null || return 1
        local up
        up="$(nodetool "$address" status 2>/dev/null | grep -c '^UN ' || true)"
        [ "$up" -eq "$n" ] || return 1
    done
}

cmd_start() {
    local n="$1" first="$2"
    [[ "$n" =~ ^[1-9][0-9]?$ ]] || die "start needs a node count, not '$n'"
    local cluster="$home/$first"
    mkdir -p "$cluster"
    if [ -f "$cluster/size" ] && [ "$(cat "$cluster/size")" != "$n" ]; then
        die "the cluster at $first was made with $(cat "$cluster/size") nodes; stop it with --wipe first"
    fi
    echo "$n" >"$cluster/size"
    local cp
    cp="$(classpath)"
    local i address dir started=0
    for ((i = 0; i < n; i++)); do
        address="$(address_at "$first" "$i")"
        dir="$cluster/node$((i + 1))"
        if node_pid "$dir" >/dev/null; then
            continue
        fi
        [ -f "$dir/cassandra.yaml" ] ||
            write_config "$dir" "$address" "$first" "$(token_of "$i" "$n")"
        echo "cassandra.sh: starting node $((i + 1)) of $n on $address" >&2
        : >"$dir/system.log"
        start_node "$dir" "$address" "$cp"
        started=$((started + 1))
        # The seed first: the others gossip with it from their start.
        if [ "$i" -eq 0 ] && [ "$n" -gt 1 ]; then
            wait_for_log "$dir" "Starting listening for CQL clients" || die_with_log "$dir"
        fi
    done
    local deadline=$((SECONDS + start_timeout_s))
    until cluster_ready "$first" "$n"; do
        for ((i = 0; i < n; i++)); do
            dir="$cluster/node$((i + 1))"
            node_pid "$dir" >/dev/null || die_with_log "$dir"
        done
        [ "$SECONDS" -lt "$deadline" ] ||
            die "the cluster at $first is not up after ${start_timeout_s}s (its logs: $cluster/node*/system.log; to start it afresh: scripts/cassandra.sh stop --first $first --wipe)"
        sleep 2
    done
    local points=()
    for ((i = 0; i < n; i++)); do points+=("$(address_at "$first" "$i"):9042"); done
    [ "$started" -eq 0 ] || echo "cassandra.sh: $n node(s) up at $first" >&2
    (
        IFS=,
        echo "${points[*]}"
    )
}

wait_for_log() {
    local dir="$1" line="$2"
    local deadline=$((SECONDS + start_timeout_s))
    until grep -q "$line" "$dir/system.log" 2>/dev/null; do
        node_pid "$dir" >/dev/null || return 1
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}

die_with_log() {
    local dir="$1"
    echo "cassandra.sh: the node in $dir stopped or did not start; its last lines:" >&2
    tail -n 30 "$dir/stdout.log" "$dir/system.log" >&2 2>/dev/null || true
    exit 1
}

cmd_stop() {
    local first="$1"
    local clusters=()
    if [ "$first" = all ]; then
        for cluster in "$home"/127.*; do [ -d "$cluster" ] && clusters+=("$cluster"); done
    else
        clusters=("$home/$first")
    fi
    local cluster dir pid
    for cluster in "${clusters[@]}"; do
        for dir in "$cluster"/node*; do
            [ -d "$dir" ] || continue
            if pid="$(node_pid "$dir")"; then
                kill -CONT "$pid" 2>/dev/null || true
                kill "$pid" 2>/dev/null || true
                for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
                kill -9 "$pid" 2>/dev/null || true
            fi
            rm -f "$dir/pid"
        done
        if [ "${wipe:-0}" = 1 ]; then rm -rf "$cluster"; fi
    done
}

cmd_pids() {
    local first="$1" dir i=0
    for dir in "$home/$first"/node*; do
        [ -d "$dir" ] || continue
        local pid
        pid="$(node_pid "$dir" || echo -)"
        echo "$(address_at "$first" "$i") $pid"
        i=$((i + 1))
    done
}

[ "$#" -ge 1 ] || usage
command="$1"
shift
count=""
if [ "$command" = start ]; then
    [ "$#" -ge 1 ] || usage
    count="$1"
    shift
fi
first=127.0.0.1
wipe=0
while [ "$#" -gt 0 ]; do
    case "$1" in
    --first) first="$2"; shift 2 ;;
    --wipe) wipe=1; shift ;;
    all) first=all; shift ;;
    *) usage ;;
    esac
done

case "$command" in
start) cmd_start "$count" "$first" ;;
stop) cmd_stop "$first" ;;
status) nodetool "$first" status ;;
pids) cmd_pids "$first" ;;
*) usage ;;
esac

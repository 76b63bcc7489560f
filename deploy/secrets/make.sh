#!/usr/bin/env bash
# Creates the secrets deploy/compose.yaml reads, beside this script, unless they
# exist: the admin token, the service token (voucher -> wallet credits) and
# Grafana's admin password. Random, 43 characters each. The files are made
# readable by the containers' users (voucherd 10001, Prometheus 65534, Grafana
# 472), i.e. mode 0644 (compose bind-mounts them as they are); keep this directory
# itself private (0700) on a shared host: the containers do not need it.
# They are never committed (.gitignore).
set -euo pipefail
cd "$(dirname "$0")"
for name in admin-token service-token grafana-admin-password; do
    if [ ! -s "$name" ]; then
        head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$name"
        echo "created deploy/secrets/$name"
    fi
    chmod 0644 "$name"
done

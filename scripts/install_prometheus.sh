#!/usr/bin/env bash
# Install the Prometheus server and promtool (Debian package ``prometheus``) for the tests that run them:
# tests/service/test_service_prometheus.py, tests/deploy/test_dashboard.py, tests/deploy/test_prometheus_rules.py.
#
# Idempotent: does nothing when a ``prometheus`` binary is already on PATH. Called from the CI
# script; run it by hand with:  bash scripts/install_prometheus.sh
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
    echo "prometheus already installed: $(command -v prometheus)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_prometheus.sh: need root or sudo to apt-get install prometheus" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# --no-install-recommends: only the server binary is needed, not the exporters or the web console assets.
$SUDO apt-get install -y --no-install-recommends prometheus

# The package's post-install may start a system service on :9090; the tests run their own instance on
# a free loopback port, so that service is neither needed nor in the way, but stop it where systemd runs.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl stop prometheus >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null 2>&1 || { echo "prometheus binary not found after install" >&2; exit 1; }
echo "installed: $(prometheus --version 2>&1 | head -n 1)"

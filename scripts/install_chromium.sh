#!/usr/bin/env bash
# Install a headless browser for the comparison page's test (tests/service/test_comparison_page.py): the
# Debian packages ``chromium`` and ``chromium-driver`` (chromedriver, which Selenium drives it through).
#
# Idempotent: does nothing when both ``chromium`` and ``chromedriver`` are already on PATH. Called from
# `make test`; run it by hand with:  bash scripts/install_chromium.sh
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium), $(command -v chromedriver)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_chromium.sh: need root or sudo to apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# --no-install-recommends: the browser and its driver only (no fonts or extras the headless test does not use)
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver

for binary in chromium chromedriver; do
    command -v "$binary" >/dev/null 2>&1 || { echo "$binary not found after install" >&2; exit 1; }
done
echo "installed: $(chromium --version 2>/dev/null | head -n 1), $(chromedriver --version | head -n 1)"

#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for decodebench-report's browser test (the test
# loads report.html in it and checks every chart image decodes and no script error is logged).
# Idempotent: does nothing but print the version when /usr/bin/chromium is already there.
# CI runs this before `cargo test` (with CI set, the browser test fails when Chromium is missing).
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium
fi

# (Debian's /etc/chromium.d/dev-shm check may warn on stderr where /dev/shm is large; the
# version is on stdout.)
/usr/bin/chromium --version 2>/dev/null || /usr/bin/chromium --version

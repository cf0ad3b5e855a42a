#!/usr/bin/env bash
# Install Debian's chromium for the dashboard's headless browser test (Playwright drives it through
# executable_path; `playwright install` cannot download browsers offline). Idempotent: does nothing when
# /usr/bin/chromium already exists. Needs root (or sudo) the first time.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [[ -x "$CHROMIUM" ]]; then
    echo "install_browser: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser: $CHROMIUM missing and not root (no sudo): the browser test will be skipped" >&2
        exit 1
    fi
fi

echo "install_browser: $CHROMIUM missing: installing Debian package chromium with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

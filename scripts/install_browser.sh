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

# shellcheck source=scripts/apt_install.sh
source "$(dirname "$0")/apt_install.sh"
echo "install_browser: $CHROMIUM missing"
apt_install install_browser chromium || {
    echo "install_browser: the browser test will be skipped" >&2
    exit 1
}
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

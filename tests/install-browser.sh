#!/usr/bin/env bash
# The browser the console's tests drive: Debian's chromium (Playwright's own download is not
# reachable from every machine). Installs it when missing; a no-op when it is there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -x "${FED_CHROMIUM:-/nonexistent}" ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
echo "installing Debian's chromium for the console's browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q chromium >/dev/null
command -v chromium >/dev/null

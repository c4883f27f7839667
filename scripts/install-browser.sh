#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for tests/e2e/test_status_page_browser.py.
# Idempotent: silent and quick when it is already installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing chromium (Debian package) for the status page browser test" >&2
export DEBIAN_FRONTEND=noninteractive
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! { $SUDO apt-get update -qq && \
       $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } \
     >"$out" 2>&1; then
  cat "$out" >&2
  echo "chromium could not be installed" >&2
  exit 1
fi
command -v chromium >/dev/null

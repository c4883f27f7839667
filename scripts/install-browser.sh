#!/usr/bin/env bash
# Headless Chromium from Debian's packages, for tests/e2e/test_status_page_browser.py.
# Idempotent: silent and quick when it is already installed.
set -euo pipefail
exec bash "$(dirname "$0")/apt-install.sh" chromium "the status page browser test" \
  chromium fonts-dejavu-core

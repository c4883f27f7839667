#!/usr/bin/env bash
# wrk, the HTTP load generator of bench/ (ingest parts), from Debian's packages.
# Idempotent: silent and quick when it is already installed.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing wrk (Debian package) for the benchmarks" >&2
export DEBIAN_FRONTEND=noninteractive
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends wrk; } \
     >"$out" 2>&1; then
  cat "$out" >&2
  echo "wrk could not be installed" >&2
  exit 1
fi
command -v wrk >/dev/null

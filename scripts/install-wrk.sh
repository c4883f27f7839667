#!/usr/bin/env bash
# wrk, the HTTP load generator of bench/ (ingest parts), from Debian's packages.
# Idempotent: silent and quick when it is already installed.
set -euo pipefail
exec bash "$(dirname "$0")/apt-install.sh" wrk "the benchmarks" wrk

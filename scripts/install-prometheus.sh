#!/usr/bin/env bash
# Prometheus and promtool from Debian's `prometheus` package, for the checks of the alert
# rules (promtool check/test rules) and the test in which a real Prometheus scrapes a relay
# and evaluates the alerts and the dashboard's queries (tests/deploy/test_prometheus.py).
# Idempotent: silent and quick when both are installed. The package's service is never
# started: the tests run their own Prometheus on a loopback port.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -- "$0" "$@"
  fi
  echo "install-prometheus.sh: run as root to install the prometheus package" >&2
  exit 1
fi
# Without a policy, the package's postinst would start its daemon on every interface (:9090).
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  added_policy=1
fi
out=$(mktemp)
cleanup() { rm -f "$out"; if [ -n "$added_policy" ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
echo "install-prometheus.sh: installing prometheus (Debian package)" >&2
export DEBIAN_FRONTEND=noninteractive
started=$SECONDS
# apt's output is shown only when something fails
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } \
  >"$out" 2>&1; then
  cat "$out" >&2
  echo "install-prometheus.sh: apt-get failed" >&2
  exit 1
fi
echo "install-prometheus.sh: done in $((SECONDS - started)) s ($(prometheus --version 2>&1 | head -1))" >&2

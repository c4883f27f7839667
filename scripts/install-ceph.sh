#!/usr/bin/env bash
# Install the Debian packages of a one-node Ceph (16.2 "pacific" on bookworm) that the
# end-to-end tests run as a real S3 server and bucket-notification sender
# (tests/support/ceph.py starts it). Idempotent: when everything is installed it does nothing
# and prints nothing. Needs root (or sudo) and the Debian package registry.
set -euo pipefail

PACKAGES=(ceph-mon ceph-osd radosgw ceph-common uuid-runtime)

missing=()
for package in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -- "$0" "$@"
  fi
  echo "install-ceph.sh: run as root to install: ${missing[*]}" >&2
  exit 1
fi

echo "install-ceph.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
started=$SECONDS
output=$(mktemp)
trap 'rm -f "$output"' EXIT
# apt's output is shown only when something fails
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } \
  >"$output" 2>&1; then
  cat "$output" >&2
  echo "install-ceph.sh: apt-get failed" >&2
  exit 1
fi
echo "install-ceph.sh: done in $((SECONDS - started)) s ($(ceph --version))" >&2

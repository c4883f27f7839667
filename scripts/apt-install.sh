#!/usr/bin/env bash
# apt-install.sh COMMAND WHAT PACKAGE...: install Debian PACKAGEs unless COMMAND is on PATH
# already (then silent and quick). WHAT says in the message what they are for.
set -euo pipefail
command_name=$1 what=$2
shift 2
if command -v "$command_name" >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing $* (Debian packages) for $what" >&2
export DEBIAN_FRONTEND=noninteractive
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "$@"; } \
     >"$out" 2>&1; then
  cat "$out" >&2
  echo "$* could not be installed" >&2
  exit 1
fi
command -v "$command_name" >/dev/null

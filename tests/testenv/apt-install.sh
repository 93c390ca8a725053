#!/usr/bin/env bash
# Shared by the install-*.sh scripts: installs Debian packages quietly when running as root, or says which
# apt command to run. Usage: apt-install.sh WHO "WHAT IS MISSING" PACKAGE...
set -euo pipefail
who=$1 missing=$2
shift 2
if [ "$(id -u)" -ne 0 ]; then
  echo "$who: missing $missing." >&2
  echo "$who: run as root, or: sudo apt-get install -y $*" >&2
  exit 1
fi

echo "$who: installing $* (missing: $missing)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "$@" >/dev/null

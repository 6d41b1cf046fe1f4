#!/usr/bin/env bash
# Installs the Debian packages the project needs (build, tests, benchmarks), once.
# Idempotent: does nothing when everything is installed already.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
pkgs=$(cat scripts/packages.txt ./*/ci-packages.txt | sed 's/#.*//' | tr -s ' \n' '\n' | sort -u | grep -v '^$' || true)
missing=()
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing packages (run as root to install): ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

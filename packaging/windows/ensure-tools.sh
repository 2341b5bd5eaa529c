#!/usr/bin/env bash
# The Windows lane's Debian packages: Wine (64-bit) and binutils-mingw-w64 (assembles the test prefix's
# bcryptprimitives shim). Installed when missing (CI is a fresh Debian 12 machine, as root).
set -euo pipefail
need=()
command -v wine >/dev/null 2>&1 || need+=(wine wine64)
command -v wineserver >/dev/null 2>&1 || need+=(wine64)
command -v x86_64-w64-mingw32-ld >/dev/null 2>&1 || need+=(binutils-mingw-w64-x86-64)
if [ "${#need[@]}" -gt 0 ]; then
  echo "windows lane: installing Debian packages: ${need[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "windows lane: run as root, or: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

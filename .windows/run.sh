#!/usr/bin/env bash
# Run `vitals-agent ARGS...` in the Windows lane's Wine prefix (.windows/prefix, made by
# `make test-windows`), e.g.  .windows/run.sh service status   or   .windows/run.sh ports
# Windows CPython under Wine needs pipes for stdout/stderr, hence the `| cat`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export WINEPREFIX="${VITALS_WINE_PREFIX:-$here/prefix}"
export WINEDEBUG="${WINEDEBUG:--all}" WINEDLLOVERRIDES="mscoree,mshtml="
if [ ! -e "$WINEPREFIX/drive_c/Program Files/vitals-agent/python.exe" ]; then
  echo "no installed agent in $WINEPREFIX: run make test-windows (or make windows-prefix) first" >&2
  exit 1
fi
wine 'C:\Program Files\vitals-agent\python.exe' -m vitals_agent "$@" 2>&1 </dev/null | cat

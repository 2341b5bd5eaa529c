#!/usr/bin/env bash
# Install vitals-agent as a systemd service on Debian 12 or 13. Run as root from a clone:
#
#   sudo deploy/install.sh                       install, or upgrade in place (keeps config and data)
#   sudo deploy/install.sh --uninstall           remove program and unit; keep config, data and user
#   sudo deploy/install.sh --uninstall --purge   also remove /etc/vitals-agent, /var/lib/vitals-agent, user
#
# What it sets up (a second run changes nothing):
#   /opt/vitals-agent               a self-contained venv (nothing goes into the system Python)
#   /usr/local/bin/vitals-agent     link to the venv's command
#   vitals-agent                    system user in the groups serial and Bluetooth need (dialout, bluetooth)
#   /etc/vitals-agent/agent.toml    from deploy/agent.example.toml when absent (never overwritten)
#   /var/lib/vitals-agent           the agent's data (0700, owned by the service user)
#   /etc/systemd/system/vitals-agent.service (+ .d/50-config-paths.conf from the configuration), enabled;
#                                   started (or restarted after an upgrade) when systemd is running
#
# Options:
#   --root DIR    install into DIR instead of / (a throwaway root, for tests): users go to DIR/etc/passwd,
#                 the unit is enabled with `systemctl --root`, nothing is started and apt is never used
#   --no-start    do not start or restart the service
#   --python PY   the Python to build the venv from (default /usr/bin/python3, Debian's)
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=""
MODE=install
PURGE=0
START=1
PYTHON=/usr/bin/python3

PREFIX=/opt/vitals-agent
LINK=/usr/local/bin/vitals-agent
CONF_DIR=/etc/vitals-agent
CONF=$CONF_DIR/agent.toml
DATA=/var/lib/vitals-agent
UNIT_DIR=/etc/systemd/system
UNIT=vitals-agent.service
SERVICE=vitals-agent
USER_NAME=vitals-agent
EXTRA_GROUPS=(dialout bluetooth)

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$(cd "$2" && pwd) || die "no folder $2"; shift ;;
    --root=*) ROOT=$(cd "${1#--root=}" && pwd) || die "no folder ${1#--root=}" ;;
    --uninstall) MODE=uninstall ;;
    --purge) PURGE=1 ;;
    --no-start) START=0 ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[ "$ROOT" = "/" ] && ROOT=""
[ "$PURGE" = 1 ] && [ "$MODE" != uninstall ] && die "--purge goes with --uninstall"
[ "$(id -u)" = 0 ] || die "run as root: sudo $0 $*"

r() { printf '%s%s' "$ROOT" "$1"; }   # a path inside the target root
CHANGED=()
changed() { CHANGED+=("$1"); say "  $1"; }

systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }
have_systemctl() { command -v systemctl >/dev/null 2>&1; }
prefix_opt() { if [ -n "$ROOT" ]; then printf -- '--prefix\n%s\n' "$ROOT"; fi; }

# --- users and groups (in DIR/etc with --root, through NSS otherwise) -----------------------------------
passwd_field() { # NAME FIELD
  if [ -n "$ROOT" ]; then
    awk -F: -v n="$1" -v f="$2" '$1 == n { print $f; exit }' "$ROOT/etc/passwd" 2>/dev/null || true
  else
    getent passwd "$1" | cut -d: -f"$2" || true
  fi
}
group_line() {
  if [ -n "$ROOT" ]; then
    awk -F: -v n="$1" '$1 == n { print; exit }' "$ROOT/etc/group" 2>/dev/null || true
  else
    getent group "$1" || true
  fi
}
in_group() { # USER GROUP: listed as a member (supplementary)
  group_line "$2" | cut -d: -f4 | tr ',' '\n' | grep -qx "$1"
}

ensure_groups() {
  local g
  for g in "${EXTRA_GROUPS[@]}"; do
    if [ -z "$(group_line "$g")" ]; then
      mapfile -t p < <(prefix_opt)
      groupadd "${p[@]}" --system "$g"
      changed "created group $g"
    fi
  done
}

ensure_user() {
  local g p
  mapfile -t p < <(prefix_opt)
  if [ -z "$(passwd_field "$USER_NAME" 1)" ]; then
    useradd "${p[@]}" --system --user-group --home-dir "$DATA" --no-create-home \
      --shell /usr/sbin/nologin --comment "vitals-agent service" "$USER_NAME"
    changed "created system user $USER_NAME"
  fi
  for g in "${EXTRA_GROUPS[@]}"; do
    if ! in_group "$USER_NAME" "$g"; then
      usermod "${p[@]}" --append --groups "$g" "$USER_NAME"
      changed "added $USER_NAME to group $g"
    fi
  done
}

# --- files ----------------------------------------------------------------------------------------------
# install_file SRC DEST MODE OWNER GROUP: copy when the content differs; fix mode and owner when they differ
install_file() {
  local src=$1 dest=$2 mode=$3 owner=$4 group=$5
  if [ ! -f "$dest" ] || ! cmp -s "$src" "$dest"; then
    install -m "$mode" -o "$owner" -g "$group" "$src" "$dest"
    changed "wrote ${dest#"$ROOT"}"
  else
    ensure_meta "$dest" "$mode" "$owner" "$group"
  fi
}
# ensure_meta PATH MODE OWNER GROUP (numeric ids)
ensure_meta() {
  local path=$1 mode=$2 owner=$3 group=$4
  if [ "$(stat -c '%a %u %g' "$path")" != "$(printf '%o' $((8#$mode))) $owner $group" ]; then
    chown "$owner:$group" "$path"
    chmod "$mode" "$path"
    changed "set ${path#"$ROOT"} to $mode $owner:$group"
  fi
}
ensure_dir() { # PATH MODE OWNER GROUP
  if [ ! -d "$1" ]; then
    install -d -m "$2" -o "$3" -g "$4" "$1"
    changed "created ${1#"$ROOT"}"
  else
    ensure_meta "$1" "$2" "$3" "$4"
  fi
}

# A digest of what would be installed: an upgrade is a different digest.
source_digest() {
  (cd "$SRC" && find pyproject.toml README.md src -type f \
      ! -path '*/__pycache__/*' ! -path '*.egg-info/*' ! -name '*.pyc' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

ensure_python() {
  if "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    return
  fi
  if [ -n "$ROOT" ] || ! command -v apt-get >/dev/null 2>&1; then
    die "$PYTHON with the venv module is needed (Debian: apt install python3 python3-venv)"
  fi
  say "installing python3 and python3-venv (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  changed "installed python3-venv"
}

UPGRADED=0
WAS_INSTALLED=0
BUILD_DIR=""
trap 'if [ -n "$BUILD_DIR" ]; then rm -rf "$BUILD_DIR"; fi' EXIT
ensure_venv() {
  local prefix digest old
  prefix=$(r "$PREFIX")
  digest=$(source_digest)
  old=$(cat "$prefix/.source-digest" 2>/dev/null || true)
  if [ ! -x "$prefix/bin/python" ] || ! "$prefix/bin/python" -c 'import sys' >/dev/null 2>&1; then
    ensure_python
    "$PYTHON" -m venv --clear "$prefix"
    changed "created the venv ${PREFIX}"
    old=""
  fi
  if [ "$digest" != "$old" ]; then
    # Build from a copy: pip builds in the source tree, and the clone should stay as it was.
    BUILD_DIR=$(mktemp -d)
    cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/src" "$BUILD_DIR/"
    rm -rf "$BUILD_DIR"/src/*.egg-info
    find "$BUILD_DIR" -name __pycache__ -prune -exec rm -rf {} +
    say "installing vitals-agent into $PREFIX (pip) ..."
    "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$BUILD_DIR"
    rm -rf "$BUILD_DIR"
    BUILD_DIR=""
    printf '%s\n' "$digest" > "$prefix/.source-digest"
    [ -n "$old" ] && UPGRADED=1
    changed "$([ -n "$old" ] && echo upgraded || echo installed) vitals-agent $("$prefix/bin/python" -c 'import vitals_agent; print(vitals_agent.__version__)') in $PREFIX"
  fi
  install_file "$SRC/README.md" "$prefix/README.md" 0644 0 0
}

ensure_link() {
  local link target
  link=$(r "$LINK")
  target=../../..$PREFIX/bin/vitals-agent   # relative: right inside a --root too
  mkdir -p "$(dirname "$link")"
  if [ "$(readlink "$link" 2>/dev/null || true)" != "$target" ]; then
    ln -sfn "$target" "$link"
    changed "linked $LINK -> $PREFIX/bin/vitals-agent"
  fi
}

ensure_unit() {
  local unit dropin before after
  unit=$(r "$UNIT_DIR")/$UNIT
  mkdir -p "$(r "$UNIT_DIR")"
  install_file "$SRC/deploy/vitals-agent.service" "$unit" 0644 0 0
  dropin=$(r "$UNIT_DIR")/$UNIT.d/50-config-paths.conf
  before=$(cat "$dropin" 2>/dev/null || true)
  if ! "$(r "$PREFIX")/bin/vitals-agent" service sync-unit --config "$(r "$CONF")" \
       --unit-dir "$(r "$UNIT_DIR")" --no-reload >/dev/null; then
    say "  the configuration has problems (above): fix $CONF, then run: vitals-agent service sync-unit"
  fi
  after=$(cat "$dropin" 2>/dev/null || true)
  [ "$before" != "$after" ] && changed "wrote ${UNIT_DIR}/$UNIT.d/50-config-paths.conf"
  if ! have_systemctl; then
    say "  systemctl not found: enable $UNIT with your init system"
  elif [ -n "$ROOT" ]; then
    if [ "$(systemctl --root="$ROOT" is-enabled "$UNIT" 2>/dev/null || true)" != enabled ]; then
      systemctl --root="$ROOT" --quiet enable "$UNIT" 2>/dev/null
      changed "enabled $UNIT"
    fi
  elif [ "$(systemctl is-enabled "$UNIT" 2>/dev/null || true)" != enabled ]; then
    systemctl --quiet enable "$UNIT"
    changed "enabled $UNIT"
  fi
}

start_service() {
  local how=start
  if [ "$WAS_INSTALLED" = 1 ] && [ "${#CHANGED[@]}" -gt 0 ]; then how=restart; fi
  if [ "$START" = 0 ]; then
    say "not started (--no-start): systemctl $how $SERVICE"
  elif systemd_running; then
    systemctl daemon-reload
    if systemctl --quiet is-active "$SERVICE"; then
      if [ "$how" = restart ]; then systemctl restart "$SERVICE"; say "restarted $SERVICE"; fi
    else
      systemctl start "$SERVICE" || say "$SERVICE did not start: journalctl -u $SERVICE -n 20"
      say "started $SERVICE (status: systemctl status $SERVICE)"
    fi
  else
    say "systemd is not running here; once it is: systemctl $how $SERVICE"
    say "or run the agent in the foreground: sudo -u $USER_NAME vitals-agent run --config $CONF"
  fi
}

check_config_as_service_user() {
  [ -n "$ROOT" ] && return 0
  command -v runuser >/dev/null 2>&1 || return 0
  say "checking the configuration as $USER_NAME:"
  runuser -u "$USER_NAME" -- "$PREFIX/bin/vitals-agent" check-config --config "$CONF" | sed 's/^/  /' || true
}

do_install() {
  say "vitals-agent: installing into ${ROOT:-/}"
  [ -e "$(r "$UNIT_DIR")/$UNIT" ] && WAS_INSTALLED=1
  ensure_groups
  ensure_user
  local uid gid
  uid=$(passwd_field "$USER_NAME" 3)
  gid=$(passwd_field "$USER_NAME" 4)
  [ -n "$uid" ] && [ -n "$gid" ] || die "cannot find the user $USER_NAME after creating it"
  ensure_venv
  ensure_link
  ensure_dir "$(r "$CONF_DIR")" 0750 0 "$gid"
  if [ ! -e "$(r "$CONF")" ]; then
    install -m 0640 -o 0 -g "$gid" "$SRC/deploy/agent.example.toml" "$(r "$CONF")"
    changed "wrote $CONF from the example: edit it (facility, location, EHR, devices)"
  fi
  ensure_dir "$(r "$DATA")" 0700 "$uid" "$gid"
  # Files left by a run as another user (e.g. root) stop the service: give them back to it.
  if [ -n "$(find "$(r "$DATA")" \( ! -user "$uid" -o ! -group "$gid" \) -print -quit)" ]; then
    chown -R "$uid:$gid" "$(r "$DATA")"
    changed "gave $DATA back to $USER_NAME (files there belonged to another user)"
  fi
  ensure_unit
  [ "$UPGRADED" = 1 ] && say "upgrade done: $CONF and $DATA were kept as they were"
  if [ "${#CHANGED[@]}" -eq 0 ]; then
    say "nothing to change: vitals-agent is installed and up to date"
  fi
  start_service
  check_config_as_service_user
}

do_uninstall() {
  say "vitals-agent: uninstalling from ${ROOT:-/}"
  if systemd_running; then
    if systemctl --quiet is-active "$SERVICE" || systemctl --quiet is-enabled "$UNIT" 2>/dev/null; then
      systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
      changed "stopped and disabled $UNIT"
    fi
  elif have_systemctl && [ -e "$(r "$UNIT_DIR")/$UNIT" ]; then
    if [ -n "$ROOT" ]; then
      systemctl --root="$ROOT" --quiet disable "$UNIT" 2>/dev/null || true
    else
      systemctl --quiet disable "$UNIT" 2>/dev/null || true
    fi
    changed "disabled $UNIT"
  fi
  local path
  for path in "$UNIT_DIR/$UNIT" "$UNIT_DIR/$UNIT.d" "$LINK" "$PREFIX"; do
    if [ -e "$(r "$path")" ] || [ -L "$(r "$path")" ]; then
      rm -rf "$(r "$path")"
      changed "removed $path"
    fi
  done
  systemd_running && systemctl daemon-reload
  if [ "$PURGE" = 1 ]; then
    for path in "$CONF_DIR" "$DATA"; do
      if [ -e "$(r "$path")" ]; then rm -rf "$(r "$path")"; changed "removed $path"; fi
    done
    if [ -n "$(passwd_field "$USER_NAME" 1)" ]; then
      mapfile -t p < <(prefix_opt)
      userdel "${p[@]}" "$USER_NAME"
      changed "removed user $USER_NAME"
    fi
  else
    say "kept $CONF_DIR (configuration), $DATA (outbox, audit log) and the user $USER_NAME;"
    say "remove them too with: $0 --uninstall --purge"
  fi
  [ "${#CHANGED[@]}" -eq 0 ] && say "nothing to remove"
  return 0
}

if [ "$MODE" = uninstall ]; then do_uninstall; else do_install; fi

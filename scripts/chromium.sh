#!/usr/bin/env bash
# Makes sure a headless-capable Chromium is installed (Debian's `chromium`,
# through apt-get, non-interactively) and prints its path. Idempotent and
# quiet when it is already there; CHROMIUM=PATH skips the install. Exits 3
# when it cannot be installed here (no apt-get, not root), 1 on other failures.
set -euo pipefail
find_chromium() {
  if [[ -n "${CHROMIUM:-}" && -x "${CHROMIUM}" ]]; then echo "$CHROMIUM"; return 0; fi
  command -v chromium || command -v chromium-browser || return 1
}
if path="$(find_chromium)"; then echo "$path"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed and no apt-get to install it with" >&2
  exit 3
fi
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); else
    echo "chromium: not installed, and installing it needs root (apt-get install chromium)" >&2
    exit 3
  fi
fi
export DEBIAN_FRONTEND=noninteractive
echo "chromium: installing Debian's chromium (apt-get)" >&2
APT=("${SUDO[@]}" apt-get -q -y -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=600)
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
# Fonts for legible screenshots; a headless page renders without them too.
if ! { "${APT[@]}" update && "${APT[@]}" install --no-install-recommends chromium fonts-dejavu-core; } \
  >"$LOG" 2>&1 </dev/null; then
  tail -n 20 "$LOG" >&2
  echo "chromium: apt-get install chromium failed (log above)" >&2
  exit 1
fi
path="$(find_chromium)" || { echo "chromium: apt-get finished but no chromium on PATH" >&2; exit 1; }
echo "$path"

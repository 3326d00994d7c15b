#!/usr/bin/env bash
# orchestrator/tests/openapi/install-schemathesis.sh VENV VERSION: makes sure VENV is a Python
# virtual environment with schemathesis==VERSION from PyPI, and prints the path of its `st`.
# `orchestrator/tests/schemathesis.rs` runs it with a VENV under the cargo target dir, so
# nothing is installed outside the build's own directories but the Debian packages python3
# and python3-venv when they are missing (through cross/apt.sh, as cross/build.sh does).
#
# A file `VENV/installed` is written once pip is done: an environment without it (an install
# that was cut short) is made again, never half used. (A venv cannot be renamed into place:
# its scripts name its path.)
set -euo pipefail

VENV="${1:?usage: install-schemathesis.sh VENV VERSION}"
VERSION="${2:?usage: install-schemathesis.sh VENV VERSION}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"

say() {
  echo "install-schemathesis.sh: $*" >&2
}

die() {
  say "$*"
  exit 2
}

# shellcheck source=cross/apt.sh
source "$ROOT/cross/apt.sh"

# An environment that no longer runs (copied or moved from elsewhere: its scripts name the
# path it was made at) is made again.
if [ -f "$VENV/installed" ] && ! "$VENV/bin/st" --version >/dev/null 2>&1; then
  say "$VENV does not run; making it again"
  rm -f "$VENV/installed"
fi
if [ ! -f "$VENV/installed" ]; then
  say "installing schemathesis $VERSION from PyPI into $VENV"
  command -v python3 >/dev/null 2>&1 || apt_install python3 ||
    die "python3 is missing and could not be installed"
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv || die "python3's venv module is missing and could not be installed"
  fi
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV" || die "python3 could not make a virtual environment in $VENV"
  "$VENV/bin/python3" -m pip install -q --disable-pip-version-check \
    "schemathesis==$VERSION" >&2 ||
    die "pip could not install schemathesis $VERSION from PyPI (no network to PyPI?)"
  echo "schemathesis==$VERSION" >"$VENV/installed"
fi
installed="$("$VENV/bin/st" --version 2>/dev/null || true)"
case "$installed" in
  *" $VERSION") ;;
  *) die "$VENV/bin/st is '$installed', not schemathesis $VERSION" ;;
esac
echo "$VENV/bin/st"

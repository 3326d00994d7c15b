#!/usr/bin/env bash
# cross/promtool.sh: prints the path of a `promtool`, installing Debian's `prometheus`
# package, which ships it, when the machine has none. The metrics test checks both binaries'
# /metrics with `promtool check metrics`; it fails, naming what is missing, when this cannot.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=cross/apt.sh
source cross/apt.sh

if ! command -v promtool >/dev/null 2>&1; then
  apt_install prometheus
fi
if ! command -v promtool; then
  echo "promtool.sh: the Debian package prometheus is installed but has no promtool on PATH" >&2
  exit 1
fi

#!/usr/bin/env bash
# workloads.sh: the workload supervisor's figures. For now one: the node daemon's memory per
# supervised workload, against a naive tokio::process supervisor (`supervisor-memory`).
#
# Usage: benches/workloads.sh                 (builds first)
#        SKIP_BUILD=1 benches/workloads.sh --rounds 7 --counts 10,50,100,200
# Arguments go to `supervisor-memory`. It prints figures and never fails on one; it fails only
# if something does not run at all. Copy the figures into benches/RESULTS.md by hand: spine.sh
# rewrites that file above its notes marker and keeps what is below it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p edge-benches --bin supervisor-memory
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)"
echo "command: target/release/supervisor-memory $*"
target/release/supervisor-memory "$@"
# The tool stops and checks every child itself; this is a second look from outside.
echo "processes running '/bin/sleep 3600' after the run (anyone's): $(pgrep -cfx '/bin/sleep 3600' || true)"

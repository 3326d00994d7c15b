#!/usr/bin/env bash
# workloads.sh: the workload supervisor's figures: the node daemon's memory per supervised
# workload, against a naive tokio::process supervisor (`supervisor-memory`), and how long after
# the daemon comes back its workloads run again, after a clean stop and after SIGKILL, against
# spawning the same processes directly (`daemon-restart`).
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
  cargo build --release -p edge-benches --bin supervisor-memory --bin daemon-restart
  cargo build --release -p node-daemon --bin edge-node
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)"
echo "command: target/release/supervisor-memory $*"
target/release/supervisor-memory "$@"
echo "command: target/release/daemon-restart --workloads 10 --rounds 7"
target/release/daemon-restart --workloads 10 --rounds 7
# The tool stops and checks every child itself; this is a second look from outside.
echo "processes running '/bin/sleep 3600' after the run (anyone's): $(pgrep -cfx '/bin/sleep 3600' || true)"

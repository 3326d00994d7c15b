#!/usr/bin/env bash
# deploy.sh: the deploy path's figures, each next to its anchor in the same command:
# - `deploy-latency`: POST /v1/workloads to the workload's process running, artifact cached on
#   the node and not, against spawning the same script directly;
# - `api-placements`: placements per second through the API with every answer persisted, 1,000
#   simulated nodes, against the scheduler core placing the same specs.
#
# Usage: benches/deploy.sh                      (builds first)
#        SKIP_BUILD=1 benches/deploy.sh
#        LATENCY_ARGS="--iterations 100" PLACEMENT_ARGS="--workloads 10000 --clients 32" benches/deploy.sh
# The tools print figures and never fail on one; this fails only if something does not run at
# all. Copy the figures into benches/RESULTS.md by hand: spine.sh rewrites that file above its
# notes marker and keeps what is below it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
read -r -a LATENCY <<<"${LATENCY_ARGS:-}"
read -r -a PLACEMENT <<<"${PLACEMENT_ARGS:-}"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p edge-benches --bin deploy-latency --bin api-placements
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)"
echo "command: target/release/deploy-latency ${LATENCY[*]}"
target/release/deploy-latency "${LATENCY[@]}"
echo
# Every simulated node holds a UDP socket of its own.
ulimit -n "$(ulimit -Hn)"
echo "command: target/release/api-placements ${PLACEMENT[*]}"
target/release/api-placements "${PLACEMENT[@]}"
echo
# The tools stop and check what they started; this is a second look from outside.
echo "processes running 'sleep 600' after the run (anyone's): $(pgrep -cfx 'sleep 600' || true)"
echo "temp dirs left: $(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'edge-deploy-latency-*' -o -maxdepth 1 -name 'edge-api-placements-*' | wc -l)"

#!/usr/bin/env bash
# deploy.sh: the deploy path's figures, each next to its anchor in the same command:
# - `deploy-latency`: POST /v1/workloads to the workload's process running, artifact cached on
#   the node and not, against spawning the same script directly;
# - `api-placements`: placements per second through the API with every answer persisted, 1,000
#   simulated nodes, against the scheduler core placing the same specs.
# - with DURABILITY_BASE=REV (a git revision whose store answered after sled's flush alone,
#   e.g. the parent of the commit that made the store fdatasync): `api-placements` of REV
#   and of this tree, alternating DURABILITY_ROUNDS times (default 2) with the same
#   arguments, for the cost of the fdatasync per committer batch. REV is built from
#   `git archive` in a temp dir into a target dir of its own ($TARGET/durability-base);
#   DURABILITY_BASE_BIN=PATH uses an `api-placements` built already instead.
#
# Usage: benches/deploy.sh                      (builds first)
#        SKIP_BUILD=1 benches/deploy.sh
#        LATENCY_ARGS="--iterations 100" PLACEMENT_ARGS="--workloads 10000 --clients 32" benches/deploy.sh
#        DURABILITY_BASE=76d394a~1 SKIP_LATENCY=1 benches/deploy.sh
# The tools print figures and never fail on one; this fails only if something does not run at
# all. Copy the figures into benches/RESULTS.md by hand: spine.sh rewrites that file above its
# notes marker and keeps what is below it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
read -r -a LATENCY <<<"${LATENCY_ARGS:-}"
read -r -a PLACEMENT <<<"${PLACEMENT_ARGS:-}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p edge-benches --bin deploy-latency --bin api-placements
fi
BASE_BIN="${DURABILITY_BASE_BIN:-}"
if [ -n "${DURABILITY_BASE:-}" ] && [ -z "$BASE_BIN" ]; then
  src="$(mktemp -d "${TMPDIR:-/tmp}/edge-durability-base-XXXXXX")"
  git archive "$DURABILITY_BASE" | tar -x -C "$src"
  (cd "$src" && cargo build --release -p edge-benches --bin api-placements \
    --target-dir "$TARGET/durability-base")
  rm -rf "$src"
  BASE_BIN="$TARGET/durability-base/release/api-placements"
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)"
if [ "${SKIP_LATENCY:-0}" != 1 ]; then
  echo "command: $TARGET/release/deploy-latency ${LATENCY[*]}"
  "$TARGET/release/deploy-latency" "${LATENCY[@]}"
  echo
fi
# Every simulated node holds a UDP socket of its own.
ulimit -n "$(ulimit -Hn)"
if [ -n "$BASE_BIN" ]; then
  # The same arguments, alternating, so that a noisy neighbour weighs on both alike.
  for round in $(seq "${DURABILITY_ROUNDS:-2}"); do
    for side in base synced; do
      bin="$TARGET/release/api-placements"
      [ "$side" = base ] && bin="$BASE_BIN"
      echo "== durability round $round, $side: $bin ${PLACEMENT[*]}"
      "$bin" "${PLACEMENT[@]}" | tee "${TMPDIR:-/tmp}/edge-durability-$side-$round.txt" |
        grep -E 'placements/s|^metric placements.api_per_s|deploy-commit|fdatasync|sync_file_range' || true
    done
  done
  echo
else
  echo "command: $TARGET/release/api-placements ${PLACEMENT[*]}"
  "$TARGET/release/api-placements" "${PLACEMENT[@]}"
  echo
fi
# The tools stop and check what they started; this is a second look from outside.
echo "processes running 'sleep 600' after the run (anyone's): $(pgrep -cfx 'sleep 600' || true)"
echo "temp dirs left: $(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'edge-deploy-latency-*' -o -maxdepth 1 -name 'edge-api-placements-*' | wc -l)"

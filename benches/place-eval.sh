#!/usr/bin/env bash
# Learned placement against least-allocated (the scheduler's default, which spreads load)
# and random, in the simulator: every strategy on every evaluation scenario
# (benches/scenarios/place/*.toml, none used in training) with held-out seeds (training
# uses 1..19), side by side with common random numbers. Prints, per scenario, the time from
# placing to running (p50, p99, mean), restarts soon after starting, refused admissions
# per instance, the share of instances that fetched their artifact, the distance to
# `near`, and every figure of the model over least-allocated's.
#
#   benches/place-eval.sh [--seeds A..B] [--model FILE.onnx] [--json FILE]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
seeds="100..110"
model="edge-ai/models/place.onnx"
json="$repo/target/place-eval.json"
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        *) echo "usage: $0 [--seeds A..B] [--model FILE.onnx] [--json FILE]" >&2; exit 2 ;;
    esac
done

cargo build --release -p edge-sim >&2
mkdir -p "$(dirname "$json")"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# edge-sim place eval --seeds $seeds --model $model"
echo
start=$(date +%s)
"$target/release/edge-sim" place eval \
    --scenario benches/scenarios/place/*.toml \
    --seeds "$seeds" \
    --strategies least-allocated,random,model \
    --model "$model" \
    --json "$json"
echo "# $(( $(date +%s) - start )) s; figures in $json"
echo
echo "model / least-allocated (below 1 is better):"
python3 - "$json" <<'PY'
import json, sys
print(f"  {'scenario':<16} {'p50':>6} {'p99':>6} {'mean':>6} {'restarts':>9} {'refusals':>9} {'near km':>8}  p99 lower in")
for s in json.load(open(sys.argv[1])):
    v = s.get("model_vs_least_allocated")
    if not v:
        continue
    near = "-" if v["near_km_ratio"] is None else f"{v['near_km_ratio']:.3f}"
    print(f"  {s['scenario']:<16} {v['p50_ratio']:>6.3f} {v['p99_ratio']:>6.3f} {v['mean_ratio']:>6.3f}"
          f" {v['restart_ratio']:>9.3f} {v['refusal_ratio']:>9.3f} {near:>8}  {v['p99_wins']} of {len(s['seeds'])} seeds")
PY

#!/usr/bin/env bash
# Learned routing against the fixed rules, in the simulator: every strategy on every
# evaluation scenario (benches/scenarios/route/*.toml, none used in training) with held-out
# seeds (training uses 1..10), side by side with common random numbers. Prints, per
# scenario, p50/p99/p99.9 latency, the error rate and each backend's share of the attempts,
# and the model's p99 against peak-EWMA P2C's.
#
# Goal (/work/shared/BENCHMARKS.md): p99 >= 25% lower than peak-ewma on the heterogeneous
# scenarios, at most 5% worse on the homogeneous one.
#
#   benches/route-eval.sh [--seeds A..B] [--model FILE.onnx] [--json FILE]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
seeds="100..110"
model="edge-ai/models/route.onnx"
json="$repo/target/route-eval.json"
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
echo "# edge-sim route eval --seeds $seeds --model $model"
echo
start=$(date +%s)
"$target/release/edge-sim" route eval \
    --scenario benches/scenarios/route/*.toml \
    --seeds "$seeds" \
    --strategies round-robin,least-requests,peak-ewma,model \
    --model "$model" \
    --json "$json"
echo "# $(( $(date +%s) - start )) s; figures in $json"
echo
echo "model p99 / peak-ewma p99 (goal: <= 0.75 heterogeneous, <= 1.05 homogeneous):"
python3 - "$json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1])):
    ratio = s.get("model_p99_ratio")
    goal = 1.05 if s["scenario"].startswith("homogeneous") else 0.75
    mark = "met" if ratio is not None and ratio <= goal else "NOT met"
    print(f"  {s['scenario']:<14} {ratio:.3f}  (goal <= {goal}: {mark}; lower in {s.get('model_wins')} of {len(s['seeds'])} seeds)")
PY

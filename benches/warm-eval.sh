#!/usr/bin/env bash
# Pre-warming workloads that scale to zero, in the simulator: today's rule (never early,
# asleep after idle_secs), longer fixed keep-alives, and the model at several thresholds, on
# every evaluation scenario (benches/scenarios/warm/*.toml, none used in training) with
# held-out seeds (training uses 1..9), side by side: every strategy meets the same requests.
# Prints, per scenario, cold starts per 1000 requests, the p99 and mean wait for a start,
# memory held up (MiB-hours per day), pre-warms per day and each strategy's cold starts and
# memory against today's rule; then the same over all scenarios together.
#
#   benches/warm-eval.sh [--seeds A..B] [--model FILE.onnx] [--strategies LIST] [--json FILE]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
seeds="100..110"
model="edge-ai/models/warm.onnx"
strategies="never,keep-alive:300,keep-alive:900,model:0.5,model:0.25,model:0.1"
json="$repo/target/warm-eval.json"
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --strategies) strategies="$2"; shift 2 ;;
        --json) json="$2"; shift 2 ;;
        *) echo "usage: $0 [--seeds A..B] [--model FILE.onnx] [--strategies LIST] [--json FILE]" >&2; exit 2 ;;
    esac
done

cargo build --release -p edge-sim >&2
mkdir -p "$(dirname "$json")"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# edge-sim warm eval --scenario benches/scenarios/warm/*.toml --seeds $seeds --strategies $strategies --model $model"
echo
start=$(date +%s)
"$target/release/edge-sim" warm eval \
    --scenario benches/scenarios/warm/*.toml \
    --seeds "$seeds" \
    --strategies "$strategies" \
    --model "$model" \
    --json "$json"
echo "# $(( $(date +%s) - start )) s; figures in $json"
echo
echo "all scenarios together, against never (cold starts: per request; memory: MiB-hours):"
python3 - "$json" <<'PY'
import json, sys
scenarios = json.load(open(sys.argv[1]))
names = [s["strategy"] for s in scenarios[0]["strategies"]]
total = {}
for name in names:
    req = cold = mem = wait = 0.0
    for sc in scenarios:
        s = next(x for x in sc["strategies"] if x["strategy"] == name)
        req += s["requests"]
        cold += s["cold_per_1000"] * s["requests"] / 1000
        wait += s["mean_wait_s"] * s["requests"]
        mem += s["mib_hours_per_day"]
    total[name] = (cold / req * 1000, wait / req, mem)
base = total[names[0]]
print(f"  {'strategy':<16} {'cold/1k':>8} {'mean wait s':>12} {'MiB-h/day':>10} {'cold x':>7} {'mem x':>7}")
for name in names:
    c, w, m = total[name]
    print(f"  {name:<16} {c:>8.1f} {w:>12.3f} {m:>10.1f} {c / base[0]:>7.2f} {m / base[2]:>7.2f}")
PY

#!/usr/bin/env bash
# Trains the routing model and writes edge-ai/models/route.onnx (and route.golden.json
# beside it). See README.md. Same inputs, same seeds: the same bytes.
#
#   edge-ai/train/train.sh                      # from the simulator's training scenarios
#   edge-ai/train/train.sh --data FILE.csv ...  # from a fleet's attempts
#                                               # (`edgectl telemetry export -o FILE.csv`)
#   edge-ai/train/train.sh --data F.csv --out DIR/route.onnx
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$repo/target/route-train"
venv="$repo/target/train-venv"
# Training seeds; the evaluation (benches/route-eval.sh) uses others, on other scenarios.
seeds="${TRAIN_SEEDS:-1..10}"
out="edge-ai/models/route.onnx"
data=()
while [ $# -gt 0 ]; do
    case "$1" in
        --data) data+=("$2"); shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "train.sh: unknown argument $1 (use --data FILE.csv, --out FILE.onnx)" >&2; exit 2 ;;
    esac
done

echo "== python environment in $venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r edge-ai/train/requirements.txt

mkdir -p "$work"
if [ ${#data[@]} -eq 0 ]; then
    echo "== building edge-sim (release)"
    cargo build --release -p edge-sim
    sim="$target/release/edge-sim"
    echo "== recording attempts from edge-ai/train/scenarios, seeds $seeds"
    "$sim" route record --scenario edge-ai/train/scenarios/*.toml --seeds "$seeds" \
        --out "$work/attempts.csv"
else
    echo "== attempts from ${data[*]}"
    # One header (each file's must be the same: route.py checks it names the schema), then
    # every file's rows.
    header="$(head -n 1 "${data[0]}")"
    for f in "${data[@]}"; do
        if [ "$(head -n 1 "$f")" != "$header" ]; then
            echo "train.sh: $f: its header differs from ${data[0]}'s" >&2
            exit 1
        fi
    done
    { echo "$header"; for f in "${data[@]}"; do tail -n +2 "$f"; done; } > "$work/attempts.csv"
fi

echo "== training"
# One thread: floating-point sums in one order, so the same data gives the same weights.
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$venv/bin/python" edge-ai/train/route.py "$work/attempts.csv" "$out"

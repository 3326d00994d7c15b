#!/usr/bin/env bash
# Trains the routing model from the simulator and writes edge-ai/models/route.onnx (and
# route.golden.json beside it). See README.md. Same inputs, same seeds: the same bytes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$repo/target/route-train"
venv="$repo/target/train-venv"
# Training seeds; the evaluation (benches/route-eval.sh) uses others, on other scenarios.
seeds="${TRAIN_SEEDS:-1..10}"

echo "== building edge-sim (release)"
cargo build --release -p edge-sim
sim="$target/release/edge-sim"

echo "== python environment in $venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r edge-ai/train/requirements.txt

echo "== recording attempts from edge-ai/train/scenarios, seeds $seeds"
mkdir -p "$work"
"$sim" route record --scenario edge-ai/train/scenarios/*.toml --seeds "$seeds" \
    --out "$work/attempts.csv"

echo "== training"
# One thread: floating-point sums in one order, so the same data gives the same weights.
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$venv/bin/python" edge-ai/train/route.py "$work/attempts.csv" edge-ai/models/route.onnx

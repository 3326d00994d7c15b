#!/usr/bin/env bash
# Trains the placement model from the simulator and writes edge-ai/models/place.onnx (and
# place.golden.json beside it). See README.md. Same inputs, same seeds: the same bytes.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$repo/target/place-train"
venv="$repo/target/train-venv"
# Training seeds; the evaluation (benches/place-eval.sh) uses others, on other scenarios.
seeds="${TRAIN_SEEDS:-1..9}"

echo "== building edge-sim (release)"
cargo build --release -p edge-sim
sim="$target/release/edge-sim"

echo "== python environment in $venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r edge-ai/train/requirements.txt

echo "== recording placements from edge-ai/train/place-scenarios, seeds $seeds"
mkdir -p "$work"
"$sim" place record --scenario edge-ai/train/place-scenarios/*.toml --seeds "$seeds" \
    --out "$work/placements.csv"

echo "== training"
# One thread: floating-point sums in one order, so the same data gives the same weights.
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$venv/bin/python" edge-ai/train/place.py "$work/placements.csv" edge-ai/models/place.onnx

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
model_seeds="${TRAIN_MODEL_SEEDS:-10..19}"

echo "== building edge-sim (release)"
cargo build --release -p edge-sim
sim="$target/release/edge-sim"

echo "== python environment in $venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r edge-ai/train/requirements.txt

python=("env" "OPENBLAS_NUM_THREADS=1" "OMP_NUM_THREADS=1" "MKL_NUM_THREADS=1" "$venv/bin/python")
mkdir -p "$work"

echo "== round 1: recording least-allocated with random placements, seeds $seeds"
"$sim" place record --scenario edge-ai/train/place-scenarios/*.toml --seeds "$seeds" \
    --out "$work/explore.csv"
# One thread: floating-point sums in one order, so the same data gives the same weights.
"${python[@]}" edge-ai/train/place.py "$work/explore.csv" "$work/round1.onnx"

echo "== round 2: recording the round-1 model with 30% random placements, seeds $model_seeds"
# The model packs instances where the fixed rule spreads them: these rows show where its
# own placements lead (busier nodes, longer caches), which the first round rarely saw.
"$sim" place record --scenario edge-ai/train/place-scenarios/*.toml --seeds "$model_seeds" \
    --model "$work/round1.onnx" --epsilon 0.3 --out "$work/model.csv"

echo "== training on both rounds"
{ cat "$work/explore.csv"; tail -n +2 "$work/model.csv"; } > "$work/placements.csv"
"${python[@]}" edge-ai/train/place.py "$work/placements.csv" edge-ai/models/place.onnx

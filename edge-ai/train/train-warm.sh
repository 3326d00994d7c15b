#!/usr/bin/env bash
# Trains the pre-warming model and writes edge-ai/models/warm.onnx (and warm.golden.json
# beside it), from the simulator's training scenarios (edge-ai/train/scenarios/warm). Same
# inputs, same seeds: the same bytes.
#
#   edge-ai/train/train-warm.sh
#   edge-ai/train/train-warm.sh --out DIR/warm.onnx
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
work="$repo/target/warm-train"
venv="$repo/target/train-venv"
# Training seeds; the evaluation (benches/warm-eval.sh) uses others, on other scenarios.
seeds="${TRAIN_SEEDS:-1..9}"
every="${TRAIN_EVERY:-6}"
out="edge-ai/models/warm.onnx"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        *) echo "train-warm.sh: unknown argument $1 (use --out FILE.onnx)" >&2; exit 2 ;;
    esac
done

echo "== python environment in $venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r edge-ai/train/requirements.txt

mkdir -p "$work"
echo "== building edge-sim (release)"
cargo build --release -p edge-sim
sim="$target/release/edge-sim"
echo "== recording decision points from edge-ai/train/scenarios/warm, seeds $seeds"
"$sim" warm record --scenario edge-ai/train/scenarios/warm/*.toml --seeds "$seeds" \
    --every "$every" --out "$work/decisions.csv"

echo "== training"
# One thread: floating-point sums in one order, so the same data gives the same weights.
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$venv/bin/python" edge-ai/train/warm.py "$work/decisions.csv" "$out"

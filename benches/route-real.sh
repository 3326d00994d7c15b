#!/usr/bin/env bash
# Learned routing against the fixed rules through the real proxy to real backend servers:
# every strategy on every evaluation scenario (benches/scenarios/route/*.toml, none used in
# training), each scenario backend a hyper server on 127.0.0.1:0 behaving as the simulator's
# (see benches/src/bin/route-real.rs), edge-proxy's Proxy in front, an open-loop load at
# the scenario's rate. Strategies alternate within each round on the round's seed. Prints,
# per scenario, p50/p99/p99.9 latency, the error rate, each round's p99 and each backend's
# share of the attempts, and the model's p99 against peak-EWMA P2C's.
#
# Goal (/work/shared/BENCHMARKS.md): p99 >= 25% lower than peak-ewma on the heterogeneous
# scenarios, at most 5% worse on the homogeneous one. The simulator's figures for the same
# scenarios: benches/route-eval.sh.
#
# 6 scenarios x 4 strategies x 2 rounds x 12 s: about 10 minutes (582 s on 2 cores).
#
#   benches/route-real.sh [--duration-secs S] [--warmup-secs S] [--rounds N]
#                         [--rate-scale X] [--seed N] [--model FILE.onnx] [--json FILE]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
json="$repo/target/route-real.json"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --duration-secs|--warmup-secs|--rounds|--rate-scale|--seed|--model)
            args+=("$1" "$2"); shift 2 ;;
        --json) json="$2"; shift 2 ;;
        *) echo "usage: $0 [--duration-secs S] [--warmup-secs S] [--rounds N] [--rate-scale X] [--seed N] [--model FILE.onnx] [--json FILE]" >&2
           exit 2 ;;
    esac
done

cargo build --release -p edge-benches --bin route-real >&2
mkdir -p "$(dirname "$json")"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# route-real --scenario benches/scenarios/route/*.toml ${args[*]:-} --json $json"
echo
start=$(date +%s)
"$target/release/route-real" \
    --scenario benches/scenarios/route/*.toml \
    "${args[@]}" \
    --json "$json"
echo "# $(( $(date +%s) - start )) s; figures in $json"

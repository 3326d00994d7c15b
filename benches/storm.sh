#!/usr/bin/env bash
# storm.sh: reconnect storms, side by side with admission pacing off and on, and with TLS
# session resumption off and on. For each fleet size, pacing and resumption: a fresh
# `edge-orchestrator serve` (with `--admit-per-sec 0`, then with the default pacing),
# fleet-sim connects the fleet, holds it HOLD_SECS, drops every session at the same instant
# and reports each node's time back to a Welcome, the bytes each reconnect took and the
# orchestrator's CPU. Without resumption (`fleet-sim --no-resumption`) every reconnect is a
# full handshake; with it, each node resumes with the ticket of its previous session.
#
# Usage: benches/storm.sh                       (release binaries in target/release)
#        BIN=/path/to/release NODES="1000 10000" HOLD_SECS=5 RESUME="no yes" benches/storm.sh
#
# A benchmark, not a test: it prints figures and never fails on one. Every process it starts
# is stopped on exit; it uses loopback only.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/target/release}"
NODES="${NODES:-1000 10000}"
HOLD_SECS="${HOLD_SECS:-5}"
RESUME="${RESUME:-no yes}"
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
work_dir storm

for b in edge-orchestrator edgectl fleet-sim; do
  [ -x "$BIN/$b" ] || { log "missing $BIN/$b: cargo build --release first"; exit 1; }
done

serve() { # serve DIR ADMIT_PER_SEC: sets ORCH_PID QUIC API ADMIN
  local dir="$1" line
  mkdir -p "$dir"
  EDGE_LOG=warn "$BIN/edge-orchestrator" serve --data-dir "$dir/data" \
    --quic-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --admit-per-sec "$2" \
    2>"$dir/orchestrator.log" &
  ORCH_PID=$!
  PIDS+=("$ORCH_PID")
  for _ in $(seq 200); do
    line="$(grep -m1 'nodes dial' "$dir/orchestrator.log" || true)"
    [ -n "$line" ] && break
    sleep 0.05
  done
  [ -n "$line" ] || { log "orchestrator did not start"; cat "$dir/orchestrator.log" >&2; exit 1; }
  QUIC="$(sed -n 's/.*nodes dial \([^,]*\), operators use \(http:[^ ]*\).*/\1/p' <<<"$line")"
  # shellcheck disable=SC2034
  API="$(sed -n 's/.*nodes dial \([^,]*\), operators use \(http:[^ ]*\).*/\2/p' <<<"$line")"
  # API and ADMIN are read by create_token (lib.sh).
  # shellcheck disable=SC2034
  ADMIN="$(cat "$dir/data/admin.token")"
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), commit $(git -C "$ROOT" rev-parse --short HEAD)"
for n in $NODES; do
  for admit in 0 500; do
    for resume in $RESUME; do
      flag=""
      [ "$resume" = yes ] || flag="--no-resumption"
      serve "$WORK/storm-$n-$admit-$resume" "$admit"
      create_token "$n" storm
      echo
      echo "## $n nodes, serve --admit-per-sec $admit, TLS resumption $resume"
      echo "fleet-sim --orchestrator ADDR --token T --ca-hash H --nodes $n --per-address 200 --hold-secs $HOLD_SECS --storm --orchestrator-pid PID $flag"
      (
        ulimit -n "$(ulimit -Hn)"
        # shellcheck disable=SC2086 # $flag is empty or one word
        "$BIN/fleet-sim" --orchestrator "$QUIC" --token "$TOKEN" --ca-hash "$CA_HASH" \
          --nodes "$n" --per-address 200 --hold-secs "$HOLD_SECS" --storm \
          --orchestrator-pid "$ORCH_PID" $flag
      ) | grep -v '^metric fleet\.'
      kill -TERM "$ORCH_PID" 2>/dev/null || true
      wait "$ORCH_PID" 2>/dev/null || true
    done
  done
done

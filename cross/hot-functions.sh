#!/usr/bin/env bash
# cross/hot-functions.sh: writes cross/hot-functions.txt, the functions a node executes, which
# cross/link-gcc.sh lays out together. It builds an x86_64 musl node with its symbols, runs it under
# valgrind's callgrind against a local orchestrator through a first boot (join file,
# enrollment) and a restart with its stored identity, and lists every function of the node
# that ran: first those that run while it idles online (status reports, the QUIC connection,
# timers), then those that only run to start, enroll or stop.
# Its node has a `[proxy]` table, as a board's packaged config does (benches/footprint.sh gives
# its nodes one): without it the proxy's start path (listener, cache stores, routes) would
# not be in the list, and those pages would stay spread over the binary.
#
# Usage: cross/hot-functions.sh                 (builds the node and the orchestrator first)
#        SKIP_BUILD=1 NODE=PATH cross/hot-functions.sh   (a node binary that has its symbols)
# Run it again when the node's start or idle path changes: a stale list still links, it only
# lays out less (benches/footprint.sh shows the resident size).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
IDLE_WAIT_SECS="${IDLE_WAIT_SECS:-12}"
OUT="$ROOT/cross/hot-functions.txt"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
work_dir hot-functions

# shellcheck source=cross/apt.sh
source "$ROOT/cross/apt.sh"
command -v valgrind >/dev/null 2>&1 || apt_install valgrind
command -v jq >/dev/null 2>&1 || apt_install jq

NODE="${NODE:-$TARGET_DIR/hot/x86_64-unknown-linux-musl/release/edge-node}"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p orchestrator --bin edge-orchestrator --bin edgectl
  # Its own target directory: the same build as a board's, but keeping its symbols.
  CARGO_TARGET_DIR="$TARGET_DIR/hot" CARGO_PROFILE_RELEASE_STRIP=false \
    bash cross/build.sh x86_64-unknown-linux-musl --release -p node-daemon --bin edge-node
fi
[ -x "$NODE" ] || { log "no node binary at $NODE"; exit 1; }
BIN="$TARGET_DIR/release"

start_orchestrator "$WORK/orch"
create_token 1 hot-functions

node="$WORK/node"
mkdir -p "$node/boot"
cat >"$node/node.toml" <<EOF
version = 1
data_dir = "$node/data"
join_file = ["$node/boot/edge-join.toml"]
status_listen = "127.0.0.1:0"
status_interval_secs = 10

# The proxy's start and idle path: listening, and both cache stores opened (a memory and a
# disk store, as at the defaults; small, since only the code that runs matters here).
[proxy]
listen = "127.0.0.1:0"

[proxy.cache]
memory_bytes = 1048576
disk_bytes = 1048576
max_object_bytes = 1048576
EOF
write_join "$node/boot/edge-join.toml" hot

# run_node PHASE: runs the node under callgrind until it is online, dumps what ran so far,
# lets it idle, then stops it. Leaves WORK/PHASE.start and WORK/PHASE.idle.
run_node() {
  local pid
  # The bare environment of a service (see benches/footprint.sh on RUST_BACKTRACE).
  env -i PATH="$PATH" EDGE_LOG=warn valgrind --tool=callgrind --demangle=no \
    --show-below-main=yes --callgrind-out-file="$WORK/$1.%p" \
    "$NODE" run --config "$node/node.toml" 2>>"$node/log" &
  pid=$!
  PIDS+=("$pid")
  expect_node hot online "$node/log"
  callgrind_control --dump "$pid" >/dev/null
  sleep "$IDLE_WAIT_SECS"
  kill -TERM "$pid"
  wait "$pid" || true
  expect_node hot offline "$node/log"
  mv "$WORK/$1.$pid.1" "$WORK/$1.start"
  mv "$WORK/$1.$pid" "$WORK/$1.idle"
}
log "first boot"
run_node first
log "restart with the stored identity"
run_node restart

# functions FILE...: the node's functions that ran, one key per line (see cross/link-gcc.sh).
functions() {
  # callgrind names each object and function once per file, as "(ID) NAME", then by "(ID)"
  # alone; objects and functions are numbered apart.
  awk '
    FNR == 1 { split("", objects); split("", names); node = 0 }
    function id_of(line) { sub(/^[a-z]+=\(/, "", line); sub(/\).*/, "", line); return line }
    function name_of(line) { return sub(/^[a-z]+=\([0-9]+\) /, "", line) ? line : "" }
    /^c?ob=/ { if ((n = name_of($0)) != "") objects[id_of($0)] = n }
    /^c?fn=/ { if ((n = name_of($0)) != "") names[id_of($0)] = n }
    /^ob=/ { node = index(objects[id_of($0)], "/edge-node") > 0 }
    /^fn=/ { if (node) print names[id_of($0)] }
  ' "$@" | sort -u >"$WORK/ran"
  # Functions without a symbol size (musl's assembly: memcpy, clone...) reach callgrind as bare
  # addresses; the symbol table names them.
  {
    grep -v '^0x' "$WORK/ran" || true
    grep '^0x' "$WORK/ran" | xargs -r addr2line -f -e "$NODE" | awk 'NR % 2 == 1'
  } | c++filt -i | sort -u
}
functions "$WORK/restart.idle" >"$WORK/idle.txt"
functions "$WORK"/*.start "$WORK/first.idle" | comm -23 - "$WORK/idle.txt" >"$WORK/start.txt"
{
  echo "# The functions a node executes, for cross/link-gcc.sh. Written by cross/hot-functions.sh."
  echo "# Those that run while the node idles online, then those that run to start or stop it."
  cat "$WORK/idle.txt" "$WORK/start.txt"
} >"$OUT"
log "wrote $OUT: $(wc -l <"$WORK/idle.txt") functions at idle, $(wc -l <"$WORK/start.txt") more at start"

#!/usr/bin/env bash
# footprint.sh: the node's idle memory per board profile, on x86_64, against its budget in
# targets/PROFILE.toml. Each node is provisioned the way a board is: the profile's packaged
# config, with its `[proxy]` table (the profile's cache sizes; a table at the defaults, 8 MiB
# in memory and 256 MiB on disk, for a profile without one) listening on a free loopback port
# instead of port 80, plus a join file, then enrolled; RSS is read 10 s after it is online,
# and again after a restart with its stored identity (the figure the goal is about). Two
# anchors run beside it: the same binary with the `[proxy]` tables left out (what the proxy
# costs), and the same daemon built without the model runtime (`ai` off), with the proxy.
# It also prints the stripped size of every profile's binary that has been built.
#
# Usage: benches/footprint.sh              (builds first: x86_64 musl with and without `ai`)
#        SKIP_BUILD=1 IDLE_WAIT_SECS=10 benches/footprint.sh
#        SKIP_BUILD=1 NODE_AI=PATH NODE_NO_AI=PATH benches/footprint.sh   (binaries built elsewhere)
#        PROFILES="targets/pi-zero-2w.toml" benches/footprint.sh         (some profiles only)
#        PLAIN=1 benches/footprint.sh     (also the node from a plain `cargo build --release`)
# PLAIN=1 adds the same code built the way cargo builds it without cross/build.sh (the host's
# glibc, dynamically linked, the default link layout), run with the x86_64-gateway profile's
# config: what a node built by hand idles at. NODE_PLAIN=PATH names such a binary instead.
# A benchmark, not a test: it prints figures and never fails on one.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
IDLE_WAIT_SECS="${IDLE_WAIT_SECS:-10}"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
work_dir footprint
key() { sed -n "s/^$2 *= *\"\{0,1\}\([^\"#]*\)\"\{0,1\}.*/\1/p" "$1" | head -1 | sed 's/ *$//'; }
budget() { awk -v k="$2" '/^\[/ { t = $0 } t == "[budget]" && $1 == k { print $3 }' "$1"; }
mib() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1048576 }'; }

MUSL="$TARGET_DIR/x86_64-unknown-linux-musl/release/edge-node"
mkdir -p "$WORK/bin"
PLAIN="${PLAIN:-0}"
[ -z "${NODE_PLAIN:-}" ] || PLAIN=1
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  plain_args=()
  [ "$PLAIN" != 1 ] || [ -n "${NODE_PLAIN:-}" ] || plain_args=(-p node-daemon --bin edge-node)
  cargo build --release -p orchestrator --bin edge-orchestrator --bin edgectl ${plain_args[@]+"${plain_args[@]}"}
  bash cross/build.sh x86_64-unknown-linux-musl --release -p node-daemon --bin edge-node \
    --no-default-features
  cp "$MUSL" "$WORK/bin/edge-node-no-ai"
  bash cross/build.sh x86_64-gateway
fi
# The anchor: a binary named by NODE_NO_AI, else the one just built, else whatever was built last.
if [ -n "${NODE_NO_AI:-}" ]; then
  cp "$NODE_NO_AI" "$WORK/bin/edge-node-no-ai"
elif [ ! -e "$WORK/bin/edge-node-no-ai" ]; then
  cp "$MUSL" "$WORK/bin/edge-node-no-ai"
fi
cp "${NODE_AI:-$MUSL}" "$WORK/bin/edge-node-ai"
echo "nodes: $(file -b "$WORK/bin/edge-node-ai" | cut -d, -f1-2) (ai), $(stat -c %s "$WORK/bin/edge-node-ai") B; without ai $(stat -c %s "$WORK/bin/edge-node-no-ai") B"
BIN="$TARGET_DIR/release"

echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)"
settings="IDLE_WAIT_SECS=$IDLE_WAIT_SECS"
[ -z "${PROFILES:-}" ] || settings+=" PROFILES=\"$PROFILES\""
[ "$PLAIN" != 1 ] || settings+=" PLAIN=1"
echo "command: benches/footprint.sh ($settings)"

# --- the orchestrator -------------------------------------------------------------------------
start_orchestrator "$WORK/orch"

# packaged_config PROFILE DIR PROXY: the profile's [config] as the package installs it, with
# the paths moved under DIR and the status endpoint and the proxy on port 0. With PROXY=proxy,
# the profile's [proxy] tables, or a [proxy] table that sets only where it listens when the
# profile has none; otherwise no [proxy] table at all.
packaged_config() {
  {
    awk -v proxy="$3" '/^\[/ { inside = ($0 == "[config]" || $0 ~ /^\[config\./) ; if (inside) { sub(/^\[config\.?/, "["); if ($0 == "[]") next }
                               skip = (proxy != "proxy" && $0 ~ /^\[proxy[].]/) }
         inside && !skip' "$1"
    if [ "$3" = proxy ] && ! grep -q '^\[config\.proxy\]' "$1"; then
      printf '\n[proxy]\nlisten = "127.0.0.1:0"\n'
    fi
  } | sed -e "s|^data_dir = .*|data_dir = \"$2/data\"|" \
    -e "s|^join_file = .*|join_file = [\"$2/boot/edge-join.toml\"]|" \
    -e "s|^status_listen = .*|status_listen = \"127.0.0.1:0\"|" \
    -e "s|^listen = .*|listen = \"127.0.0.1:0\"|"
}

# listening PID: the loopback TCP ports PID listens on (the status endpoint, and the proxy when
# the config has one), read from /proc so that nothing is asked of the node.
listening() {
  local inodes
  inodes="$(for fd in /proc/"$1"/fd/*; do readlink "$fd"; done 2>/dev/null |
    sed -n 's/^socket:\[\([0-9]*\)\]$/\1/p')"
  awk 'FNR > 1 && $4 == "0A" { split($2, a, ":"); print $10, a[2] }' "/proc/$1/net/tcp" |
    while read -r inode port; do
      # An `if`, not `&&`: a last socket that is not the node's must not fail the pipeline.
      if grep -qx "$inode" <<<"$inodes"; then printf '%d ' "0x$port"; fi
    done
}

# start_node DIR BINARY: starts a node on DIR/node.toml, sets NODE_PID. With the bare
# environment systemd gives a service: a RUST_BACKTRACE inherited from a developer's shell
# makes every error the model optimiser raises and handles walk the stack, which pages in
# the unwind tables (~0.7 MiB).
#
# The binary's pages are dropped from the page cache first (written back, then dropped), so that
# the node reads its code in by faulting on it, as a board does after boot. Pages that are in
# the cache because the file was just copied or built make the same binary idle ~0.6 MiB
# higher (benches/RESULTS.md, the proxy's part 4).
start_node() {
  sync "$2"
  dd if="$2" iflag=nocache count=0 status=none
  env -i PATH="$PATH" EDGE_LOG=warn "$2" run --config "$1/node.toml" 2>>"$1/node.log" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
}

# idle NAME PROFILE BINARY PROXY [MODELS]: provisions a node (with a [proxy] table when
# PROXY=proxy), lets it enroll and idle, then restarts it with its stored identity and lets it
# idle again; with MODELS=models, the trained routing model is installed in its data dir (as
# `edgectl model push` leaves it) before the restart, so that the node loads it at start.
# Prints "RSS HWM RSS_FIRST_BOOT PORTS" (KiB, and how many TCP ports it listens on), the
# first two for the restarted node: the state a node spends its life in.
idle() {
  local name="$1" profile="$2" binary="$3" dir="$WORK/$1" first ports
  mkdir -p "$dir/boot"
  packaged_config "$profile" "$dir" "$4" >"$dir/node.toml"
  create_token 1 footprint
  write_join "$dir/boot/edge-join.toml" "$name"
  start_node "$dir" "$binary"
  # A node that never enrolled idles in far less memory: its figure would be meaningless.
  expect_node "$name" online "$dir/node.log"
  sleep "$IDLE_WAIT_SECS"
  first="$(kib_of "$NODE_PID" VmRSS)"
  kill -TERM "$NODE_PID"
  wait "$NODE_PID" 2>/dev/null || true
  expect_node "$name" offline "$dir/node.log"
  if [ "${5:-}" = models ]; then
    install -d -m 0700 "$dir/data/models"
    install -m 0600 edge-ai/models/route.onnx "$dir/data/models/route.onnx"
  fi

  start_node "$dir" "$binary"
  expect_node "$name" online "$dir/node.log"
  sleep "$IDLE_WAIT_SECS"
  ports="$(listening "$NODE_PID" | wc -w)"
  echo "$(kib_of "$NODE_PID" VmRSS) $(kib_of "$NODE_PID" VmHWM) $first $ports"
  kill -TERM "$NODE_PID"
  wait "$NODE_PID" 2>/dev/null || true
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "| profile (x86_64 musl build, its packaged config with its \`[proxy]\`, a join file) | idle VmRSS, restarted enrolled | VmHWM | idle VmRSS on first boot | listening ports | budget (rss_bytes) | with the routing model installed | anchor: same binary, no \`[proxy]\` | ratio | anchor: without \`ai\`, with \`[proxy]\` | ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for profile in ${PROFILES:-targets/*.toml}; do
  name="$(basename "$profile" .toml)"
  name="${name//_/-}" # node names take no underscores
  read -r rss hwm first ports < <(idle "$name" "$profile" "$WORK/bin/edge-node-ai" proxy)
  read -r rssm _ _ _ < <(idle "$name-models" "$profile" "$WORK/bin/edge-node-ai" proxy models)
  read -r rssp _ _ portsp < <(idle "$name-no-proxy" "$profile" "$WORK/bin/edge-node-ai" none)
  read -r rss0 _ _ _ < <(idle "$name-no-ai" "$profile" "$WORK/bin/edge-node-no-ai" proxy)
  # idle runs in a subshell: a failure there leaves the figures empty.
  [ -n "${rss:-}" ] && [ -n "${rssm:-}" ] && [ -n "${rssp:-}" ] && [ -n "${rss0:-}" ] || exit 1
  want="$(budget "$profile" rss_bytes)"
  [ "$name" != x86-64-gateway ] || gateway_rss="$rss"
  echo "| $name | $(mib $((rss * 1024))) MiB | $(mib $((hwm * 1024))) MiB | $(mib $((first * 1024))) MiB | $ports (without \`[proxy]\`: $portsp) | $(mib "$want") MiB | $(mib $((rssm * 1024))) MiB | $(mib $((rssp * 1024))) MiB | $(ratio "$rss" "$rssp") | $(mib $((rss0 * 1024))) MiB | $(ratio "$rss" "$rss0") |"
done

if [ "$PLAIN" = 1 ]; then
  cp "${NODE_PLAIN:-$TARGET_DIR/release/edge-node}" "$WORK/bin/edge-node-plain"
  # The cross build's figure from the table above, or measured now if its profile was left out.
  [ -n "${gateway_rss:-}" ] ||
    read -r gateway_rss _ _ _ < <(idle cross-build targets/x86_64-gateway.toml "$WORK/bin/edge-node-ai" proxy)
  read -r rss hwm first _ < <(idle plain-build targets/x86_64-gateway.toml "$WORK/bin/edge-node-plain" proxy)
  [ -n "${rss:-}" ] && [ -n "${gateway_rss:-}" ] || exit 1
  linking() { file -b "$1" | grep -o 'statically linked\|dynamically linked\|static-pie linked' | head -1; }
  echo
  echo "| build of the same code, x86_64-gateway's config | idle VmRSS, restarted enrolled | VmHWM | idle VmRSS on first boot |"
  echo "|---|---|---|---|"
  echo "| \`cross/build.sh x86_64-gateway\`: musl, $(linking "$WORK/bin/edge-node-ai"), laid out | $(mib $((gateway_rss * 1024))) MiB | (table above) | |"
  echo "| plain \`cargo build --release\`: host libc, $(linking "$WORK/bin/edge-node-plain"), default layout | $(mib $((rss * 1024))) MiB | $(mib $((hwm * 1024))) MiB | $(mib $((first * 1024))) MiB |"
fi

echo
echo "| profile | triple | stripped edge-node | budget (binary_bytes) |"
echo "|---|---|---|---|"
for profile in targets/*.toml; do
  triple="$(key "$profile" triple)"
  bin="$TARGET_DIR/${triple%.2.*}/release/edge-node"
  size="not built"
  [ -f "$bin" ] && size="$(stat -c %s "$bin") B ($(mib "$(stat -c %s "$bin")") MiB)"
  echo "| $(basename "$profile" .toml) | $triple | $size | $(budget "$profile" binary_bytes) B |"
done

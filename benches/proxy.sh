#!/usr/bin/env bash
# proxy.sh: edge-node's caching reverse proxy, each figure next to its anchor in the same run:
# 1. cache hits, 1 KiB and 16 KiB bodies: requests/s and p99 latency against nginx as a caching
#    reverse proxy (proxy_cache), in front of the same origin;
# 2. the miss path (a route with caching off, and an answer marked no-store): p50 latency added
#    to going to the origin directly, with nginx's added latency beside it;
# 3. memory with 1,000 idle client connections (silent, and keep-alive after one request),
#    against none, and nginx's (master + worker) with the same connections;
# 4. the node's idle memory with the proxy listening (benches/footprint.sh) and the stripped
#    aarch64 binary (cross/build.sh pi-zero-2w);
# 5. the cold start of a scale-to-zero workload: the sample `edge-hello` deployed through a
#    real orchestrator with `scale_to_zero` and an `[[expose]]` route, then, each round, one
#    request through the proxy once it is dormant (the node starts it, waits for its port,
#    forwards) and one right after (warm), against the direct-spawn floor in the same rounds:
#    the same binary started by hand and its port polled every millisecond until `GET /` is
#    answered (benches/proxy/spawn.py). Also the node's own `cold_start_ms` log values;
# 6. instructions per 1 KiB cache hit under valgrind's callgrind, the node's against nginx's:
#    a figure the machine's load does not move (valgrind is installed if missing).
#
# Placement: the node and the nginx cache each run pinned to core 0 (`taskset -c 0`), one at a
# time answering, and wrk to core 1. The origin (nginx, one worker) is pinned to core 0 too:
# on a cache hit it does nothing, and on the miss path every compared route has it on the same
# core, so it takes nothing from wrk's core. The node runs on its current-thread tokio runtime
# (one thread) and nginx with one worker process. The node's address for its orchestrator is
# a closed loopback port: it keeps redialling, and the proxy serves meanwhile. Access logs are
# off on both (nginx `access_log off`, the node at EDGE_LOG=warn); ACCESS_LOG=1 turns both on
# (nginx to a file, the node at EDGE_LOG=warn,edge_proxy::access=info to its log file).
#
# Usage: benches/proxy.sh                       (builds first: a plain `cargo build --release`
#                                                node for 1-3 and 5, cross/build.sh for 4, and
#                                                for 5 the orchestrator, edgectl, edge-hello)
#        SKIP_BUILD=1 benches/proxy.sh           (binaries built before)
#        SKIP_BUILD=1 NODE=PATH PARTS="1 2" ROUNDS=3 SECS=5 benches/proxy.sh
# PARTS picks the parts (default "1 2 3 4 5 6"); ROUNDS (5) and SECS (10) are the wrk rounds per
# figure and their length; CONNS (50) wrk's connections for the hit rounds; IDLE_CONNS (1000)
# the idle connections of part 3, MEM_ROUNDS (3) its rounds; FOOTPRINT_PROFILES the profiles
# part 4 runs (default targets/pi-zero-2w.toml); COLD_ROUNDS (9) the rounds of part 5 and
# COLD_IDLE_SECS (1, the least a spec allows) its workload's `scale_to_zero.idle_secs`; part 5
# takes its orchestrator and edgectl from BIN (default $CARGO_TARGET_DIR/release) and the
# workload from HELLO (default $CARGO_TARGET_DIR/release/edge-hello).
# A benchmark, not a test: it prints figures (Markdown tables to paste into benches/RESULTS.md)
# and never fails on one; it fails only if something does not run at all.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PARTS="${PARTS:-1 2 3 4 5 6}"
ROUNDS="${ROUNDS:-5}"
SECS="${SECS:-10}"
CONNS="${CONNS:-50}"
IDLE_CONNS="${IDLE_CONNS:-1000}"
MEM_ROUNDS="${MEM_ROUNDS:-3}"
COLD_ROUNDS="${COLD_ROUNDS:-9}"
COLD_IDLE_SECS="${COLD_IDLE_SECS:-1}"
ACCESS_LOG="${ACCESS_LOG:-0}"
HERE="$ROOT/benches/proxy"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
# shellcheck source=cross/apt.sh
source "$ROOT/cross/apt.sh"
apt_install nginx wrk python3 curl jq
part() { [[ " $PARTS " == *" $1 "* ]]; }

if [ "$(nproc)" -lt 2 ]; then
  echo "proxy.sh: needs 2 cores (the proxies on core 0, wrk on core 1); this machine has $(nproc)" >&2
  exit 1
fi

NODE="${NODE:-$TARGET_DIR/release/edge-node}"
BIN="${BIN:-$TARGET_DIR/release}"
HELLO="${HELLO:-$TARGET_DIR/release/edge-hello}"
if [ "${SKIP_BUILD:-0}" != 1 ] && { part 1 || part 2 || part 3 || part 5 || part 6; }; then
  cargo build --release -p node-daemon --bin edge-node
fi
if [ "${SKIP_BUILD:-0}" != 1 ] && part 5; then
  # Apart from the node: built together, cargo would unify features across the three.
  cargo build --release -p orchestrator --bin edge-orchestrator --bin edgectl
  cargo build --release -p edge-hello --bin edge-hello
fi
work_dir proxy
# 1,000 held connections on each side of the loopback, and nginx's worker_rlimit_nofile.
ulimit -n "$(ulimit -Hn)"

echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr)"
echo "command: benches/proxy.sh (PARTS=\"$PARTS\" ROUNDS=$ROUNDS SECS=$SECS CONNS=$CONNS IDLE_CONNS=$IDLE_CONNS MEM_ROUNDS=$MEM_ROUNDS COLD_ROUNDS=$COLD_ROUNDS COLD_IDLE_SECS=$COLD_IDLE_SECS ACCESS_LOG=$ACCESS_LOG)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
if part 1 || part 2 || part 3 || part 6; then
  echo "node: $NODE ($(file -b "$NODE" | cut -d, -f1-2)), $(nginx -v 2>&1), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
fi

# free_port: a TCP port on 127.0.0.1 that nothing listens on now (nginx cannot bind port 0 and
# tell us which it got).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL: within 10 s, URL answers.
wait_http() {
  for _ in $(seq 200); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.05
  done
  log "$1 did not answer within 10 s"
  return 1
}

# rss_kib PID...: the VmRSS of the processes, summed.
rss_kib() {
  local pid sum=0
  for pid in "$@"; do sum=$((sum + $(kib_of "$pid" VmRSS))); done
  echo "$sum"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.2f", k / 1024 }'; }

# --- the origin and the files it serves -----------------------------------------------------
# nginx's workers run as another user (nobody) when it is started as root: they read the files
# and write the cache under WORK, which mktemp made for its owner alone.
chmod 755 "$WORK"
mkdir -p "$WORK/www/c" "$WORK/www/n" "$WORK/www/p" "$WORK/origin-tmp" "$WORK/nginx-tmp"
head -c 1024 /dev/urandom >"$WORK/www/c/1k.bin"
head -c 16384 /dev/urandom >"$WORK/www/c/16k.bin"
cp "$WORK/www/c/1k.bin" "$WORK/www/n/1k.bin"
cp "$WORK/www/c/1k.bin" "$WORK/www/p/1k.bin"
: >"$WORK/origin-c.log"

ORIGIN_PORT="$(free_port)"
PROXY_PORT="$(free_port)"
NGINX_PORT="$(free_port)"
ORCH_PORT="$(free_port)" # nothing listens there: the node keeps redialling
nginx_log="off"
[ "$ACCESS_LOG" != 1 ] || nginx_log="$WORK/nginx-cache.access.log"
for conf in origin nginx-cache; do
  sed -e "s|@WORK@|$WORK|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@PORT@|$NGINX_PORT|g" \
    -e "s|@ACCESS_LOG@|$nginx_log|g" "$HERE/$conf.conf" >"$WORK/$conf.conf"
done

# start_nginx NAME: nginx on WORK/NAME.conf, pinned to core 0, in the foreground (daemon off)
# so that its master is our child. Sets NGINX_PID.
start_nginx() {
  taskset -c 0 nginx -p "$WORK" -e "$WORK/$1.error.log" -c "$WORK/$1.conf" &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
}
# stop PID: TERM and wait. forget PID: the exit trap must not signal it (nor whoever reuses it).
stop() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}
forget() {
  local pid keep=()
  for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
  PIDS=(${keep[@]+"${keep[@]}"})
}

ORIGIN="http://127.0.0.1:$ORIGIN_PORT"
if part 1 || part 2 || part 3 || part 6; then
  start_nginx origin
  ORIGIN_PID="$NGINX_PID"
  wait_http "$ORIGIN/c/1k.bin"
fi

# --- the node -------------------------------------------------------------------------------
mkdir -p "$WORK/node"
cat >"$WORK/node/node.toml" <<EOF
version = 1
name = "bench-proxy"
data_dir = "$WORK/node/data"

[orchestrator]
address = "127.0.0.1:$ORCH_PORT"

[join]
token = "abcdef.0123456789abcdef0123456789abcdef"
ca_hash = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

[proxy]
listen = "127.0.0.1:$PROXY_PORT"
max_connections = 2048
header_timeout_secs = 60

[proxy.cache]
memory_bytes = 67108864
disk_bytes = 0
max_object_bytes = 1048576

[[proxy.upstream]]
origin = "$ORIGIN"
path_prefix = "/c"

[[proxy.upstream]]
origin = "$ORIGIN"
path_prefix = "/n"

[[proxy.upstream]]
origin = "$ORIGIN"
path_prefix = "/p"
cache = false
EOF
node_log="warn"
[ "$ACCESS_LOG" != 1 ] || node_log="warn,edge_proxy::access=info"

# start_node: the node pinned to core 0 with the bare environment a service gets. Sets NODE_PID.
start_node() {
  env -i PATH="$PATH" EDGE_LOG="$node_log" taskset -c 0 "$NODE" run \
    --config "$WORK/node/node.toml" 2>>"$WORK/node/node.log" &
  NODE_PID=$!
  PIDS+=("$NODE_PID")
}
OURS="http://127.0.0.1:$PROXY_PORT"
NGINX="http://127.0.0.1:$NGINX_PORT"

# cache_status URL: the Cache-Status header of a second GET of URL (the first fills the cache).
cache_status() {
  curl -sf -o /dev/null "$1"
  curl -sf -o /dev/null -D - "$1" | tr -d '\r' | sed -n 's/^[Cc]ache-[Ss]tatus: *//p'
}

# wrk_run KEY URL CONNECTIONS: one wrk run from core 1; appends "KEY rps=.. p50_us=.." to
# WORK/results and warns about any error it counted.
wrk_run() {
  local out line
  out="$(taskset -c 1 wrk -t1 -c"$3" -d"${SECS}s" --latency -s "$HERE/report.lua" "$2")"
  line="$(grep '^RESULT ' <<<"$out" | sed 's/^RESULT //')"
  [ -n "$line" ] || { log "wrk printed no result for $2:"; echo "$out" >&2; exit 1; }
  echo "$1 $line" >>"$WORK/results"
  grep -q 'connect=0 read=0 write=0 status=0 timeout=0' <<<"$line" ||
    log "$1: wrk counted errors: $line"
}

# median KEY FIELD: the median of FIELD over KEY's runs.
median() {
  awk -v k="$1" -v f="$2" '$1 == k { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) print kv[2] } }' \
    "$WORK/results" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# runs KEY FIELD: every run's FIELD, in order.
runs() {
  awk -v k="$1" -v f="$2" '$1 == k { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) { printf "%s%s", sep, kv[2]; sep = " " } } } END { print "" }' \
    "$WORK/results"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }
alive() {
  kill -0 "$1" 2>/dev/null && return 0
  log "$2 is gone; the end of its log:"
  tail -5 "$3" >&2
  exit 1
}

if part 1 || part 2; then
  "$NODE" check-config --config "$WORK/node/node.toml" >/dev/null
  start_node
  start_nginx nginx-cache
  NGINXC_PID="$NGINX_PID"
  wait_http "$OURS/c/1k.bin"
  wait_http "$NGINX/c/1k.bin"
  echo "node $NODE_PID on core $(taskset -cp "$NODE_PID" | sed 's/.*: //'), nginx cache $NGINXC_PID (1 worker), origin $ORIGIN_PID (1 worker); wrk on core 1"
fi

# --- 1. cache hits --------------------------------------------------------------------------
if part 1; then
  echo
  echo "## 1. Cache hits: $ROUNDS rounds x ${SECS} s per figure, wrk -t1 -c$CONNS, alternating"
  for size in 1k 16k; do
    echo "Cache-Status of a second GET /c/$size.bin: node \"$(cache_status "$OURS/c/$size.bin")\", nginx \"$(cache_status "$NGINX/c/$size.bin")\""
  done
  # Warm both past their first-request paths (connection setup, allocator growth).
  for url in "$OURS" "$NGINX"; do
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s "$url/c/1k.bin" >/dev/null
  done
  before="$(wc -l <"$WORK/origin-c.log")"
  for round in $(seq "$ROUNDS"); do
    order=(ours nginx)
    [ $((round % 2)) = 1 ] || order=(nginx ours)
    for size in 1k 16k; do
      for who in "${order[@]}"; do
        url="$OURS"
        [ "$who" = ours ] || url="$NGINX"
        wrk_run "hit-$size-$who" "$url/c/$size.bin" "$CONNS"
      done
    done
    alive "$NODE_PID" node "$WORK/node/node.log"
    log "hit round $round of $ROUNDS done"
  done
  echo "requests that reached the origin for /c/ during the hit rounds (both proxies): $(($(wc -l <"$WORK/origin-c.log") - before))"
  echo
  echo "| body | edge-node req/s | nginx req/s | ratio (goal >= 1.0) | edge-node p99 | nginx p99 | ratio (goal <= 1.0) | edge-node p50 | nginx p50 |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for size in 1k 16k; do
    r1="$(median "hit-$size-ours" rps)" r2="$(median "hit-$size-nginx" rps)"
    p1="$(median "hit-$size-ours" p99_us)" p2="$(median "hit-$size-nginx" p99_us)"
    echo "| ${size/k/ KiB} | $r1 | $r2 | $(ratio "$r1" "$r2") | $(ms "$p1") ms | $(ms "$p2") ms | $(ratio "$p1" "$p2") | $(ms "$(median "hit-$size-ours" p50_us)") ms | $(ms "$(median "hit-$size-nginx" p50_us)") ms |"
  done
  echo
  echo "Per round (req/s; p99 us):"
  for size in 1k 16k; do
    for who in ours nginx; do
      echo "- $size $who: $(runs "hit-$size-$who" rps); $(runs "hit-$size-$who" p99_us)"
    done
  done
fi

# --- 2. the miss path -----------------------------------------------------------------------
if part 2; then
  echo
  echo "## 2. Miss path: $ROUNDS rounds x ${SECS} s per figure, wrk -t1 -c1, order rotated each round"
  echo "Cache-Status: node /p/ (route with cache = false) \"$(cache_status "$OURS/p/1k.bin")\", /n/ (no-store) \"$(cache_status "$OURS/n/1k.bin")\""
  keys=(p-origin p-ours p-nginx n-origin n-ours)
  declare -A url_of=(
    [p-origin]="$ORIGIN/p/1k.bin" [p-ours]="$OURS/p/1k.bin" [p-nginx]="$NGINX/p/1k.bin"
    [n-origin]="$ORIGIN/n/1k.bin" [n-ours]="$OURS/n/1k.bin"
  )
  for round in $(seq "$ROUNDS"); do
    n=${#keys[@]}
    for i in $(seq 0 $((n - 1))); do
      key="${keys[$(((i + round) % n))]}"
      wrk_run "miss-$key" "${url_of[$key]}" 1
    done
    alive "$NODE_PID" node "$WORK/node/node.log"
    log "miss round $round of $ROUNDS done"
  done
  echo
  echo "| 1 KiB answer, one connection | p50 | p99 | req/s | p50 added to the origin's (goal <= +100 us) |"
  echo "|---|---|---|---|---|"
  row() { # row LABEL KEY ANCHOR_KEY
    local p50 p50a added="-"
    p50="$(median "miss-$2" p50_us)"
    if [ -n "$3" ]; then
      p50a="$(median "miss-$3" p50_us)"
      added="$(awk -v a="$p50" -v b="$p50a" 'BEGIN { printf "%+d us", a - b }')"
    fi
    echo "| $1 | $p50 us | $(median "miss-$2" p99_us) us | $(median "miss-$2" rps) | $added |"
  }
  row "origin directly, /p/ (max-age=3600)" p-origin ""
  row "edge-node, route with \`cache = false\`" p-ours p-origin
  row "nginx, \`location /p/\` without proxy_cache" p-nginx p-origin
  row "origin directly, /n/ (no-store)" n-origin ""
  row "edge-node, cached route, the answer is no-store" n-ours n-origin
  echo
  echo "Per round (p50 us):"
  for key in "${keys[@]}"; do echo "- $key: $(runs "miss-$key" p50_us)"; done
fi

if part 1 || part 2; then
  echo
  echo "node CPU time over parts 1-2: $(awk '{ printf "%.1f s", ($14 + $15) / 100 }' "/proc/$NODE_PID/stat"); VmRSS $(mib "$(kib_of "$NODE_PID" VmRSS)") MiB, VmHWM $(mib "$(kib_of "$NODE_PID" VmHWM)") MiB"
  stop "$NODE_PID"
  stop "$NGINXC_PID"
fi

# --- 3. memory with idle connections ---------------------------------------------------------
# hold PORT MODE: opens IDLE_CONNS connections from core 1 and sets HOLD_MADE and HOLD_OK; the
# connections stay until release.
hold() {
  local line
  coproc HOLDER { taskset -c 1 python3 "$HERE/hold.py" 127.0.0.1 "$1" "$IDLE_CONNS" "$2" /c/1k.bin; }
  PIDS+=("$HOLDER_PID")
  read -r -t 120 -u "${HOLDER[0]}" line || { log "the connection holder did not get ready"; exit 1; }
  read -r _ HOLD_MADE HOLD_OK <<<"$line"
}
# still_open: how many of the held connections the server has not closed.
still_open() {
  local line
  echo check >&"${HOLDER[1]}"
  read -r -t 30 -u "${HOLDER[0]}" line
  echo "${line#open }"
}
release() {
  local pid="$HOLDER_PID"
  # End of its input: it closes every connection and exits.
  eval "exec ${HOLDER[1]}>&-"
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

# measure WHO PORT PIDS...: one round for a running server: "none bare bare_open keepalive
# keepalive_open after" (KiB and counts) appended to WORK/mem-WHO.
measure() {
  local who="$1" port="$2" none bare bare_open ka ka_open after
  shift 2
  curl -sf -o /dev/null "http://127.0.0.1:$port/c/1k.bin"
  curl -sf -o /dev/null "http://127.0.0.1:$port/c/1k.bin"
  sleep 2
  none="$(rss_kib "$@")"
  hold "$port" bare
  sleep 2
  bare="$(rss_kib "$@")"
  bare_open="$(still_open)"
  release
  sleep 1
  hold "$port" keepalive
  [ "$HOLD_OK" = "$HOLD_MADE" ] || log "$who: $((HOLD_MADE - HOLD_OK)) of $HOLD_MADE requests got no whole answer"
  sleep 2
  ka="$(rss_kib "$@")"
  ka_open="$(still_open)"
  release
  sleep 2
  after="$(rss_kib "$@")"
  echo "$none $bare $bare_open $ka $ka_open $after" >>"$WORK/mem-$who"
}

if part 3; then
  echo
  echo "## 3. Memory with $IDLE_CONNS idle client connections: $MEM_ROUNDS rounds, fresh processes each, alternating"
  for round in $(seq "$MEM_ROUNDS"); do
    order=(ours nginx)
    [ $((round % 2)) = 1 ] || order=(nginx ours)
    for who in "${order[@]}"; do
      if [ "$who" = ours ]; then
        start_node
        wait_http "$OURS/c/1k.bin"
        measure ours "$PROXY_PORT" "$NODE_PID"
        stop "$NODE_PID"
      else
        start_nginx nginx-cache
        wait_http "$NGINX/c/1k.bin"
        worker="$(pgrep -P "$NGINX_PID" | head -1)"
        measure nginx "$NGINX_PORT" "$NGINX_PID" "$worker"
        rss_kib "$NGINX_PID" >>"$WORK/mem-nginx-master"
        stop "$NGINX_PID"
      fi
    done
    log "memory round $round of $MEM_ROUNDS done"
  done
  # col WHO N: the median of column N over the rounds.
  col() { awk -v n="$2" '{ print $n }' "$WORK/mem-$1" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  echo
  echo "| VmRSS (median of $MEM_ROUNDS) | no client | $IDLE_CONNS connected, silent | per connection | $IDLE_CONNS keep-alive, idle after one hit | per connection | after they close |"
  echo "|---|---|---|---|---|---|---|"
  for who in ours nginx; do
    label="edge-node"
    [ "$who" = ours ] || label="nginx, master + 1 worker"
    none="$(col "$who" 1)" bare="$(col "$who" 2)" ka="$(col "$who" 4)"
    per() { awk -v a="$1" -v b="$none" -v n="$IDLE_CONNS" 'BEGIN { printf "%.1f KiB", (a - b) / n }'; }
    echo "| $label | $(mib "$none") MiB | $(mib "$bare") MiB ($(col "$who" 3) still open) | $(per "$bare") | $(mib "$ka") MiB ($(col "$who" 5) still open) | $(per "$ka") | $(mib "$(col "$who" 6)") MiB |"
  done
  echo
  echo "nginx master alone: $(mib "$(sort -g "$WORK/mem-nginx-master" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')") MiB. Per round (KiB: none bare open keepalive open after):"
  for who in ours nginx; do
    echo "- $who: $(paste -sd';' "$WORK/mem-$who")"
  done
fi

# --- 4. idle memory with the proxy listening, and the binary -----------------------------------
if part 4; then
  echo
  echo "## 4. Idle memory with the proxy listening, and the aarch64 binary"
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    bash cross/build.sh pi-zero-2w >&2
  fi
  SKIP_BUILD="${SKIP_BUILD:-0}" PROFILES="${FOOTPRINT_PROFILES:-targets/pi-zero-2w.toml}" \
    bash benches/footprint.sh
  aarch64="$TARGET_DIR/aarch64-unknown-linux-musl/release/edge-node"
  echo
  if [ -f "$aarch64" ]; then
    size="$(stat -c %s "$aarch64")"
    # The last figure before the proxy (benches/RESULTS.md, "After the cores became crates").
    before=7410040
    echo "stripped aarch64 edge-node (cross/build.sh pi-zero-2w): $size B ($(mib $((size / 1024))) MiB); before the proxy $before B ($(mib $((before / 1024))) MiB); change $(awk -v a="$size" -v b="$before" 'BEGIN { printf "%+d B (%+.1f%%)", a - b, (a - b) * 100 / b }'); goal <= 8 MiB"
  else
    echo "no aarch64 build at $aarch64 (run without SKIP_BUILD=1, or cross/build.sh pi-zero-2w)"
  fi
fi

# --- 5. cold start of a scale-to-zero workload --------------------------------------------------
# The node, the workload it starts and the directly spawned anchor all run on core 0; curl, the
# orchestrator and the polling of its API on core 1. The workload is ready by its port (no
# health check in its spec), so the node's `cold_start_ms` is from the wake to the port
# accepting; the floor polls its port every millisecond and then asks `GET /`, the same
# request that goes through the proxy.
if part 5; then
  echo
  echo "## 5. Cold start of a scale-to-zero workload: $COLD_ROUNDS rounds, idle_secs = $COLD_IDLE_SECS"
  for b in "$NODE" "$BIN/edge-orchestrator" "$BIN/edgectl" "$HELLO"; do
    [ -x "$b" ] || { log "no binary at $b (build it, or run without SKIP_BUILD=1)"; exit 1; }
  done
  echo "node: $NODE, orchestrator and edgectl from $BIN, workload $HELLO ($(stat -c %s "$HELLO") B, $(file -b "$HELLO" | cut -d, -f1-2))"
  cold="$WORK/cold"
  mkdir -p "$cold/node"
  start_orchestrator "$cold/orch"
  taskset -acp 1 "$ORCH_PID" >/dev/null
  create_token 1 cold-start
  write_join "$cold/node/edge-join.toml" cold-node
  COLD_PORT="$(free_port)"
  cat >"$cold/node/node.toml" <<EOF
version = 1
data_dir = "$cold/node/data"
join_file = ["$cold/node/edge-join.toml"]
status_listen = "127.0.0.1:0"

[proxy]
listen = "127.0.0.1:$COLD_PORT"

[proxy.cache]
disk_bytes = 0
EOF
  "$NODE" check-config --config "$cold/node/node.toml" >/dev/null
  # The supervisor's info lines carry cold_start_ms.
  env -i PATH="$PATH" EDGE_LOG="warn,node_daemon::supervisor=info" taskset -c 0 "$NODE" run \
    --config "$cold/node/node.toml" 2>>"$cold/node/node.log" &
  COLD_NODE_PID=$!
  PIDS+=("$COLD_NODE_PID")
  expect_node cold-node online "$cold/node/node.log"

  ctl() { taskset -c 1 "$BIN/edgectl" --api "$API" --token "$ADMIN" --json "$@"; }
  digest="$(ctl artifact push "$HELLO" | jq -r .digest)"
  WPORT="$(free_port)"
  cat >"$cold/cold.toml" <<EOF
name = "cold"
version = "1.0.0"
artifact = "$digest"
args = ["--port", "$WPORT", "--bind", "127.0.0.1"]
env = { GREETING = "hi" }
replicas = 1
scale_to_zero = { idle_secs = $COLD_IDLE_SECS }

[resources]
cpu_millis = 100
memory_bytes = 33554432

[[expose]]
port = $WPORT
path_prefix = "/"
cache = false
EOF
  ctl deploy -f "$cold/cold.toml" >/dev/null

  # wait_dormant: within 60 s the API shows the instance stopped by scale to zero, no process.
  wait_dormant() {
    local deadline=$((SECONDS + 60)) now
    while :; do
      now="$(taskset -c 1 curl -sf -H "Authorization: Bearer $ADMIN" "$API/v1/workloads/cold" |
        jq -c '.instances[]? | select(.node == "cold-node") | {state, message, pid}' || true)"
      [ "$now" = '{"state":"stopped","message":"scaled to zero","pid":null}' ] && return 0
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "the workload did not become dormant within 60 s; its instance: $now; the node's log:"
        tail -5 "$cold/node/node.log" >&2
        exit 1
      fi
      sleep 0.05
    done
  }
  # get KEY: one GET / through the proxy from core 1; appends "KEY ms=.." to WORK/results.
  get() {
    local out code secs
    out="$(taskset -c 1 curl -s -o "$cold/answer" -w '%{http_code} %{time_total}' "http://127.0.0.1:$COLD_PORT/")"
    read -r code secs <<<"$out"
    if [ "$code" != 200 ] || [ "$(cat "$cold/answer")" != "hi from cold-node" ]; then
      log "$1: got $code \"$(head -c 200 "$cold/answer")\" through the proxy; the node's log:"
      tail -5 "$cold/node/node.log" >&2
      exit 1
    fi
    echo "$1 ms=$(awk -v s="$secs" 'BEGIN { printf "%.3f", s * 1000 }')" >>"$WORK/results"
  }
  # direct: the floor, the same binary started by hand on core 0 on a port of its own.
  direct() {
    local out
    out="$(env -i PATH="$PATH" GREETING=hi EDGE_NODE_NAME=cold-node taskset -c 0 \
      python3 "$HERE/spawn.py" "$DPORT" "$HELLO" --port "$DPORT" --bind 127.0.0.1)"
    echo "direct $out" >>"$WORK/results"
  }
  for round in $(seq "$COLD_ROUNDS"); do
    DPORT="$(free_port)"
    if [ $((round % 2)) = 1 ]; then direct; fi
    wait_dormant
    get cold
    get warm
    if [ $((round % 2)) = 0 ]; then direct; fi
    alive "$COLD_NODE_PID" node "$cold/node/node.log"
    log "cold-start round $round of $COLD_ROUNDS done"
  done
  sed -n 's/.*woken from zero: ready.*cold_start_ms=\([0-9]*\).*/node ms=\1/p;
          s/.*cold_start_ms=\([0-9]*\).*woken from zero: ready.*/node ms=\1/p' \
    "$cold/node/node.log" >>"$WORK/results"
  ready_by="$(sed -n 's/.*ready_by=\([a-z_"]*\).*/\1/p' "$cold/node/node.log" | sort | uniq -c | tr -s ' ' | paste -sd, -)"
  cold_ms="$(median cold ms)" direct_ms="$(median direct answer_ms)"
  echo
  echo "| GET / of edge-hello (median of $COLD_ROUNDS rounds) | ms |"
  echo "|---|---|"
  echo "| cold: through the proxy, the workload dormant (curl time_total) | $cold_ms |"
  echo "| warm: through the proxy, right after | $(median warm ms) |"
  echo "| floor: spawned directly, port polled every 1 ms, then GET / answered | $direct_ms |"
  echo "| floor to the port accepting only | $(median direct listen_ms) |"
  echo "| ratio cold / floor | $(ratio "$cold_ms" "$direct_ms") |"
  echo "| the node's \`cold_start_ms\` (wake to ready, ready_by: $ready_by) | $(median node ms) |"
  echo
  echo "Per round (ms): cold $(runs cold ms); warm $(runs warm ms); floor $(runs direct answer_ms); floor to listening $(runs direct listen_ms); node cold_start_ms $(runs node ms)"
  echo "load average after part 5: $(cut -d' ' -f1-3 /proc/loadavg)"
  stop "$COLD_NODE_PID"
  stop "$ORCH_PID"
fi

# --- 6. instructions per cache hit ----------------------------------------------------------
# Requests/s on a shared 2-core machine move with whatever else runs; the instructions each
# proxy executes per hit do not. Each runs alone under callgrind (nginx as one process, master
# off), with counting off until its cache is filled and warmed up, then SECS s of wrk -c10;
# what the process executed in user space in that window, divided by the requests wrk counted.
if part 6; then
  command -v valgrind >/dev/null 2>&1 || apt_install valgrind
  echo
  echo "## 6. Instructions per cache hit, 1 KiB, under callgrind (wrk -t1 -c10 for ${SECS} s, counting only then)"
  # The proxies of parts 1-2 hand their ports to the ones under valgrind.
  if part 1 || part 2; then
    stop "$NODE_PID"
    stop "$NGINXC_PID"
  fi
  sed -e 's/^master_process on;/master_process off;/' "$WORK/nginx-cache.conf" >"$WORK/nginx-cache-cg.conf"
  # per_hit NAME URL COMMAND...: COMMAND under callgrind; prints "requests instructions".
  per_hit() {
    local name="$1" url="$2" pid out requests
    shift 2
    # The bare environment of a service, outside valgrind: it would not follow `env`'s exec.
    env -i PATH="$PATH" EDGE_LOG=warn taskset -c 0 valgrind --tool=callgrind --instr-atstart=no \
      --callgrind-out-file="$WORK/cg-$name.%p" "$@" 2>>"$WORK/cg-$name.log" &
    pid=$!
    PIDS+=("$pid")
    # Everything runs some 50 times slower under valgrind: up to a minute to listen.
    for _ in $(seq 600); do
      curl -sf -o /dev/null "$url" && break
      kill -0 "$pid" 2>/dev/null || { log "$name under valgrind is gone:"; tail -5 "$WORK/cg-$name.log" >&2; exit 1; }
      sleep 0.1
    done
    curl -sf -o /dev/null "$url"
    taskset -c 1 wrk -t1 -c10 -d2s "$url" >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    out="$(taskset -c 1 wrk -t1 -c10 -d"${SECS}s" "$url")"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    # Written now: what ran in the window. The process need not exit cleanly after it.
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
    requests="$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")"
    echo "$requests $(cat "$WORK/cg-$name".* | awk '/^totals:/ { s += $2 } END { print s + 0 }')"
  }
  read -r n_req n_ir < <(per_hit node "$OURS/c/1k.bin" "$NODE" run --config "$WORK/node/node.toml")
  read -r g_req g_ir < <(per_hit nginx "$NGINX/c/1k.bin" nginx -p "$WORK" \
    -e "$WORK/nginx-cache-cg.error.log" -c "$WORK/nginx-cache-cg.conf")
  n_per=$((n_ir / n_req)) g_per=$((g_ir / g_req))
  echo
  echo "| 1 KiB hit | requests counted | instructions | per request |"
  echo "|---|---|---|---|"
  echo "| edge-node | $n_req | $n_ir | $n_per |"
  echo "| nginx | $g_req | $g_ir | $g_per |"
  echo "| ratio edge-node / nginx | | | $(ratio "$n_per" "$g_per") |"
fi

# shellcheck shell=bash
# lib.sh: what the benchmark scripts share. The orchestrator functions need BIN (the directory
# with edge-orchestrator and edgectl), PIDS (an array the caller's exit trap stops) and log();
# scripts without their own can take them from work_dir.

# work_dir NAME: a temp dir WORK, removed on exit after the processes in PIDS are stopped, and
# log(), which prefixes its lines with NAME and the time.
work_dir() {
  WORK="$(mktemp -d "/tmp/edge-$1.XXXXXX")"
  PIDS=()
  LOG_NAME="$1"
  trap work_dir_cleanup EXIT
  trap 'exit 130' INT TERM
}
work_dir_cleanup() {
  local pid
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
log() { printf '[%s %s] %s\n' "$LOG_NAME" "$(date -u +%H:%M:%S)" "$*" >&2; }

kib_of() { # kib_of PID FIELD -> the field of /proc/PID/status in KiB
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

ORCH_PID="" QUIC="" API="" ADMIN="" TOKEN="" CA_HASH=""

start_orchestrator() { # start_orchestrator DIR [tuned]: sets ORCH_PID QUIC API ADMIN
  local dir="$1" line serve=("$BIN/edge-orchestrator" serve)
  [ "${2:-}" = tuned ] && serve=("$BIN/orchestrator-tuned")
  mkdir -p "$dir"
  "${serve[@]}" --data-dir "$dir/data" \
    --quic-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 2>"$dir/orchestrator.log" &
  ORCH_PID=$!
  PIDS+=("$ORCH_PID")
  for _ in $(seq 200); do
    line="$(grep -m1 'nodes dial' "$dir/orchestrator.log" || true)"
    [ -n "$line" ] && break
    kill -0 "$ORCH_PID" 2>/dev/null || { cat "$dir/orchestrator.log" >&2; exit 1; }
    sleep 0.05
  done
  [ -n "$line" ] || { log "orchestrator did not start"; cat "$dir/orchestrator.log" >&2; exit 1; }
  QUIC="$(sed -n 's/.*nodes dial \([^,]*\), operators use \(http:[^ ]*\).*/\1/p' <<<"$line")"
  API="$(sed -n 's/.*nodes dial \([^,]*\), operators use \(http:[^ ]*\).*/\2/p' <<<"$line")"
  ADMIN="$(cat "$dir/data/admin.token")"
  log "orchestrator $ORCH_PID: QUIC $QUIC, API $API"
}

create_token() { # create_token USES DESCRIPTION: sets TOKEN CA_HASH
  local out
  out="$("$BIN/edgectl" --api "$API" --token "$ADMIN" --json token create --uses "$1" --ttl 1h \
    --description "$2")"
  TOKEN="$(jq -r .token <<<"$out")"
  CA_HASH="$(jq -r .ca_hash <<<"$out")"
}

write_join() { # write_join FILE NAME: a join file for node NAME with the token create_token made
  printf 'orchestrator = "%s"\ntoken = "%s"\nca_hash = "%s"\nname = "%s"\n' \
    "$QUIC" "$TOKEN" "$CA_HASH" "$2" >"$1"
}

wait_node() { # wait_node NAME STATUS: within 2 minutes the orchestrator reports NAME with STATUS
  for _ in $(seq 1200); do
    "$BIN/edgectl" --api "$API" --token "$ADMIN" --json nodes 2>/dev/null |
      jq -e --arg n "$1" --arg s "$2" '.[] | select(.name == $n and .status == $s)' \
        >/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# expect_node NAME STATUS LOG: wait_node, or show the end of the node's LOG, stop the processes
# in PIDS and exit. Also from a subshell, whose PIDS the caller's exit trap does not see.
expect_node() {
  wait_node "$1" "$2" && return 0
  log "$1 did not become $2; its log:"
  tail -5 "$3" >&2
  work_dir_cleanup
  exit 1
}

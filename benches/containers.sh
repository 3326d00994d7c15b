#!/usr/bin/env bash
# containers.sh: what a container (`driver = "oci"`, run by runc) costs next to the same
# binary as an exec workload, each figure beside its anchor in the same run
# (`container-deploy`):
# 1. deploy -> running and -> first HTTP 200, busybox httpd as a container vs as an exec
#    workload, image / artifact cached on the node and not, alternating;
# 2. memory per running instance: the node daemon's growth, runc's resident monitor, the
#    container's processes beside the exec workload's;
# 3. bytes a node fetches for a second image on the same base, beside the image's full size;
# 4. edge_oci::unpack of a generated gzipped layer vs `tar -xzf` of the same file, MiB/s.
#
# Needs root (cgroups, runc) and installs runc and busybox-static when missing (cross/apt.sh).
# Usage: benches/containers.sh                  (builds first)
#        SKIP_BUILD=1 benches/containers.sh --samples 30 --instances 20 --skip unpack
# Arguments go to `container-deploy` (`--help` lists them). It prints figures and never fails
# on one; it fails only if something does not run at all. Copy the figures into
# benches/RESULTS.md by hand: spine.sh rewrites that file above its notes marker and keeps
# what is below it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=../cross/apt.sh
. "$ROOT/cross/apt.sh"
apt_install runc busybox-static
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release -p edge-benches --bin container-deploy
fi
RUNC="$(command -v runc || echo /usr/sbin/runc)"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(uname -sr); $("$RUNC" --version | head -1); busybox $(busybox 2>&1 | head -1 | awk '{print $2}')"
echo "command: $TARGET/release/container-deploy --runtime $RUNC $*"
"$TARGET/release/container-deploy" --runtime "$RUNC" "$@"
# The tool deletes what it deployed and stops its node; this is a second look from outside.
echo "processes running 'busybox httpd' after the run (anyone's): $(pgrep -cf 'busybox httpd' || true)"
echo "temp dirs left: $(find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'edge-container-deploy-*' | wc -l)"

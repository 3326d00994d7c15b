#!/usr/bin/env bash
# cross/build.sh: builds the node daemon (and the sample workload) for a target without
# Docker, installing what it lacks: the Rust target, the Debian cross linker, musl tools.
#
# Usage: cross/build.sh TARGET [cargo build arguments...]
#   cross/build.sh aarch64-unknown-linux-musl            # static: any aarch64 Linux
#   cross/build.sh x86_64-unknown-linux-musl             # static: any x86_64 Linux
#   cross/build.sh aarch64-unknown-linux-gnu             # glibc of this machine's Debian (2.36)
#   cross/build.sh armv7-unknown-linux-gnueabihf         # idem
# Default cargo arguments: --release -p node-daemon -p edge-hello --bin edge-node --bin edge-hello.
# Binaries land in target/TARGET/release/. With Docker, `cross` can use cross/Cross.toml
# instead (CROSS_CONFIG=cross/Cross.toml cross build --target TARGET ...).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TARGET="${1:?usage: cross/build.sh TARGET [cargo build arguments...]}"
shift
if [ $# -eq 0 ]; then
  set -- --release -p node-daemon -p edge-hello --bin edge-node --bin edge-hello
fi

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "cross/build.sh: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# The variable names cargo and the cc crate read for this target.
upper="$(echo "$TARGET" | tr 'a-z-' 'A-Z_')"
lower="$(echo "$TARGET" | tr '-' '_')"
case "$TARGET" in
  x86_64-unknown-linux-gnu)
    ;;
  x86_64-unknown-linux-musl)
    apt_install musl-tools
    export "CC_${lower}=musl-gcc"
    ;;
  aarch64-unknown-linux-gnu)
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    export "CARGO_TARGET_${upper}_LINKER=aarch64-linux-gnu-gcc" "CC_${lower}=aarch64-linux-gnu-gcc"
    ;;
  aarch64-unknown-linux-musl)
    # Rust's musl targets bring their own libc and start files: the gnu cross gcc only
    # compiles ring's C and drives the link.
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    export "CARGO_TARGET_${upper}_LINKER=aarch64-linux-gnu-gcc" "CC_${lower}=aarch64-linux-gnu-gcc"
    ;;
  armv7-unknown-linux-gnueabihf)
    apt_install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
    export "CARGO_TARGET_${upper}_LINKER=arm-linux-gnueabihf-gcc" "CC_${lower}=arm-linux-gnueabihf-gcc"
    ;;
  *)
    echo "cross/build.sh: unknown target $TARGET" >&2
    exit 2
    ;;
esac

rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
start=$(date +%s)
cargo build --target "$TARGET" "$@"
echo "cross/build.sh: $TARGET built in $(( $(date +%s) - start )) s" >&2

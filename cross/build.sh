#!/usr/bin/env bash
# cross/build.sh: builds the node daemon (and the sample workload) for a target without
# Docker, installing what it lacks: the Rust target, the Debian cross linker, musl tools,
# cargo-zigbuild.
#
# Usage: cross/build.sh TARGET|PROFILE [cargo build arguments...]
#   cross/build.sh pi-zero-2w                            # a board profile: targets/pi-zero-2w.toml
#   cross/build.sh aarch64-unknown-linux-musl            # static: any aarch64 Linux
#   cross/build.sh x86_64-unknown-linux-musl             # static: any x86_64 Linux
#   cross/build.sh armv7-unknown-linux-gnueabihf.2.31    # linked against glibc 2.31 (Bullseye)
#   cross/build.sh aarch64-unknown-linux-gnu             # glibc of this machine's Debian (2.36)
#   cross/build.sh armv7-unknown-linux-gnueabihf         # idem
# A PROFILE names targets/PROFILE.toml: its `triple` is the target and its `features` are
# added to node-daemon's (those node-daemon does not declare are skipped with a warning).
# A TARGET ending in .2.NN (any gnu triple) is linked against that glibc with cargo-zigbuild,
# which is installed with pip when missing.
#
# Default: edge-node (--release -p node-daemon --bin edge-node, with the profile's features),
# then edge-hello (--release -p edge-hello --bin edge-hello), which on gnu targets is linked
# statically so that it runs on any board, and under qemu without a loader. Two cargo runs,
# so the node is never rebuilt for the sample's flags. Given cargo arguments instead, one
# `cargo build` runs with exactly those (no profile features added).
#
# Links go through cross/link-gcc.sh: Rust's lld, with the functions a running node executes
# laid out together (cross/hot-functions.txt). TRIPLE.2.NN builds are linked by zig and keep
# the default layout.
#
# EDGE_CARGO_PROFILE picks the cargo profile of the default builds (default `release`, what
# boards get; the ARM smoke test uses `smoke`, the same code compiled for speed).
#
# Binaries land in $CARGO_TARGET_DIR/TRIPLE/release/ (default target/; TRIPLE without any
# .2.NN suffix); the script prints where, their sizes and how long it took. Check a gnu build
# with cross/check-abi.sh. With Docker, `cross` can use cross/Cross.toml instead
# (CROSS_CONFIG=cross/Cross.toml cross build --target TRIPLE ...).
set -euo pipefail

usage="usage: cross/build.sh TARGET|PROFILE [cargo build arguments...]"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# cargo reads a relative CARGO_TARGET_DIR from where it runs, which is about to change.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  case "$CARGO_TARGET_DIR" in
    /*) ;;
    *) CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR" ;;
  esac
  export CARGO_TARGET_DIR
fi
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ARG="${1:?$usage}"
shift

say() {
  echo "cross/build.sh: $*" >&2
}

die() {
  say "$*"
  exit 2
}

# shellcheck source=cross/apt.sh
source "$ROOT/cross/apt.sh"

# The value of a top-level `KEY = ...` line of a profile, comment stripped: the keys the
# scripts read are kept on one line each (targets/README.md), and tables come after them.
profile_value() {
  sed -n -e '/^[[:space:]]*\[/q' -e "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$2" |
    head -n1 | sed -e 's/[[:space:]]*#.*$//' -e 's/[[:space:]]*$//'
}

# The features node-daemon declares: the keys of its [features] table.
declared_features() {
  sed -n '/^\[features\]/,/^\[/{/^[[:space:]]*[A-Za-z0-9_-]*[[:space:]]*=/{s/[[:space:]]*=.*//;s/^[[:space:]]*//;p}}' \
    node-daemon/Cargo.toml
}

PROFILE=""
FEATURES=()
if [ -f "targets/$ARG.toml" ] || [[ "$ARG" == *.toml && -f "$ARG" ]]; then
  file="targets/$ARG.toml"
  [ -f "$file" ] || file="$ARG"
  PROFILE="$(basename "$file" .toml)"
  TARGET="$(profile_value triple "$file" | sed 's/^"\(.*\)"$/\1/')"
  [ -n "$TARGET" ] || die "$file has no 'triple = \"...\"' line"
  raw="$(profile_value features "$file")"
  if [ -n "$raw" ]; then
    [[ "$raw" == \[*\] ]] || die "$file: features must be a one-line list, like [\"ai\"]"
    declared=" $(declared_features | tr '\n' ' ') "
    for feature in $(tr -d '[]" ' <<<"$raw" | tr ',' ' '); do
      if [[ "$declared" == *" $feature "* ]]; then
        FEATURES+=("$feature")
      else
        say "warning: node-daemon has no feature '$feature' (profile $PROFILE); building without it"
      fi
    done
  fi
  say "profile $PROFILE: $TARGET${FEATURES[*]:+, features ${FEATURES[*]}}"
else
  [[ "$ARG" == */* || "$ARG" == *.toml ]] && die "no profile $ARG"
  TARGET="$ARG"
fi
[[ "$TARGET" =~ ^[a-z0-9_]+(-[a-z0-9_]+)+(\.[0-9]+\.[0-9]+)?$ ]] ||
  die "'$TARGET' is neither a target triple nor a profile in targets/"

# TRIPLE.2.NN: the glibc to link against. Only zig ships a glibc stub for every version, so
# such targets go through cargo-zigbuild; rustc itself knows only the plain triple.
GLIBC=""
RUST_TARGET="$TARGET"
if [[ "$TARGET" =~ ^(.+-gnu[a-z]*)\.([0-9]+\.[0-9]+)$ ]]; then
  RUST_TARGET="${BASH_REMATCH[1]}"
  GLIBC="${BASH_REMATCH[2]}"
elif [[ "$TARGET" == *.* ]]; then
  die "$TARGET: a .N.NN glibc suffix only makes sense on a gnu target"
fi

# The variable names cargo and the cc crate read for this target. Kept in an array rather than
# exported: cargo-zigbuild brings its own linker and C compiler for the node.
upper="$(echo "$RUST_TARGET" | tr 'a-z-' 'A-Z_')"
lower="$(echo "$RUST_TARGET" | tr '-' '_')"
GCC_ENV=()
LOADER_PREFIX=""
# v0 symbol names spell out which instance of a generic function a symbol is, so that the
# layout list (cross/link-gcc.sh) names the instances a node runs rather than every instance
# of the generic. The binaries are stripped: names cost nothing at run time.
RUSTFLAGS_TARGET=(-C symbol-mangling-version=v0)
# The C compiler that drives the link: rustc calls cross/link-gcc.sh, which runs it with Rust's
# lld and lays out together the functions a running node executes.
LINK_CC=cc
case "$RUST_TARGET" in
  x86_64-unknown-linux-gnu)
    # libc.a, for the static sample.
    apt_install libc6-dev
    ;;
  x86_64-unknown-linux-musl)
    apt_install musl-tools
    GCC_ENV=("CC_${lower}=musl-gcc")
    # Rust links x86_64 musl binaries as static PIE: they relocate themselves at start. Packed
    # relative relocations (DT_RELR, musl >= 1.2.4, lld or binutils >= 2.38) shrink that table from
    # ~430 KB to ~4 KB, which also stops every start from reading it into memory. (aarch64 musl
    # binaries are linked at a fixed address and carry no such table.)
    RUSTFLAGS_TARGET+=(-C "link-arg=-Wl,-z,pack-relative-relocs")
    ;;
  aarch64-unknown-linux-gnu)
    # libc6-arm64-cross: the loader and libc that qemu runs a dynamic binary with (-L).
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross libc6-arm64-cross
    LINK_CC=aarch64-linux-gnu-gcc
    GCC_ENV=("CC_${lower}=aarch64-linux-gnu-gcc")
    LOADER_PREFIX=/usr/aarch64-linux-gnu
    ;;
  aarch64-unknown-linux-musl)
    # Rust's musl targets bring their own libc and start files: the gnu cross gcc only
    # compiles ring's C and drives the link.
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    LINK_CC=aarch64-linux-gnu-gcc
    GCC_ENV=("CC_${lower}=aarch64-linux-gnu-gcc")
    ;;
  armv7-unknown-linux-gnueabihf)
    apt_install gcc-arm-linux-gnueabihf libc6-dev-armhf-cross libc6-armhf-cross
    LINK_CC=arm-linux-gnueabihf-gcc
    GCC_ENV=("CC_${lower}=arm-linux-gnueabihf-gcc")
    LOADER_PREFIX=/usr/arm-linux-gnueabihf
    ;;
  *)
    die "unknown target $TARGET"
    ;;
esac

# The cargo profile a build uses: EDGE_CARGO_PROFILE for the default builds, else what the
# cargo arguments ask (dev unless --release or --profile).
cargo_profile() {
  [ $# -gt 0 ] || {
    echo "${EDGE_CARGO_PROFILE:-release}"
    return
  }
  local profile=dev prev=""
  for a in "$@"; do
    case "$a" in
      --release | -r) profile=release ;;
      --profile=*) profile="${a#--profile=}" ;;
    esac
    [ "$prev" = --profile ] && profile="$a"
    prev="$a"
  done
  echo "$profile"
}

# The panic strategy of a cargo profile: CARGO_PROFILE_NAME_PANIC, else its own `panic` in
# Cargo.toml, else that of the profile it inherits, else cargo's default, unwind.
panic_strategy() {
  local profile="$1" value parent
  local var
  var="CARGO_PROFILE_$(echo "$profile" | tr 'a-z-' 'A-Z_')_PANIC"
  [ -z "${!var:-}" ] || {
    echo "${!var}"
    return
  }
  for _ in 1 2 3 4 5; do
    value="$(sed -n "/^\[profile\.$profile\]/,/^\[/s/^[[:space:]]*panic[[:space:]]*=[[:space:]]*\"\([a-z]*\)\".*/\1/p" Cargo.toml | head -n1)"
    [ -z "$value" ] || {
      echo "$value"
      return
    }
    parent="$(sed -n "/^\[profile\.$profile\]/,/^\[/s/^[[:space:]]*inherits[[:space:]]*=[[:space:]]*\"\([A-Za-z0-9_-]*\)\".*/\1/p" Cargo.toml | head -n1)"
    case "$profile" in
      bench) parent="${parent:-release}" ;;
      test) parent="${parent:-dev}" ;;
    esac
    [ -n "$parent" ] || break
    profile="$parent"
  done
  echo unwind
}

# With panic = "abort" nothing unwinds, yet on Linux rustc still gives every function unwind
# tables exact at each instruction. Without them the aarch64 node is ~230 KB smaller
# (benches/RESULTS.md). A panic still prints its message and location; a backtrace still
# walks every frame of an LTO build (release) and stops at our first frame without LTO
# (smoke); the shipped binaries are stripped, so it shows addresses only either way.
# A profile with panic = "unwind" keeps its tables.
if [ "$(panic_strategy "$(cargo_profile "$@")")" = abort ]; then
  RUSTFLAGS_TARGET+=(-C force-unwind-tables=no)
fi
GCC_ENV+=("CARGO_TARGET_${upper}_LINKER=$ROOT/cross/link-gcc.sh" "EDGE_LINK_CC=$LINK_CC"
  "CARGO_TARGET_${upper}_RUSTFLAGS=${RUSTFLAGS_TARGET[*]}")

ensure_zigbuild() {
  if command -v cargo-zigbuild >/dev/null 2>&1; then
    return
  fi
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/edge-cross/zigbuild"
  if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
    say "installing cargo-zigbuild (with zig) from PyPI"
    command -v python3 >/dev/null 2>&1 || apt_install python3
    # Debian's own python refuses installs outside a virtual environment (PEP 668).
    local managed='import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'
    if ! python3 -c "$managed" && python3 -m pip --version >/dev/null 2>&1 &&
      python3 -m pip install -q cargo-zigbuild; then
      hash -r
      command -v cargo-zigbuild >/dev/null 2>&1 && return
      # pip fell back to a --user install, whose bin dir may not be on PATH.
      PATH="$(python3 -m site --user-base)/bin:$PATH"
      command -v cargo-zigbuild >/dev/null 2>&1 && return
    fi
    say "installing cargo-zigbuild into $venv"
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      apt_install python3-venv
    fi
    python3 -m venv "$venv" || die "python3 could not make a virtual environment in $venv"
    "$venv/bin/python3" -m pip install -q cargo-zigbuild ||
      die "pip could not install cargo-zigbuild from PyPI into $venv (no network to PyPI?)"
  fi
  # cargo-zigbuild finds zig through `python3 -m ziglang`: the venv's python must come first.
  PATH="$venv/bin:$PATH"
  command -v cargo-zigbuild >/dev/null 2>&1 || die "cargo-zigbuild did not install"
}

# The target's standard library, wherever the toolchain came from; only rustup can add one.
if [ ! -d "$(rustc --print sysroot)/lib/rustlib/$RUST_TARGET/lib" ]; then
  command -v rustup >/dev/null 2>&1 ||
    die "needs the Rust standard library for $RUST_TARGET, which only rustup can add: install Rust with rustup (README.md, Prerequisites)"
  say "adding the Rust target $RUST_TARGET"
  rustup target add "$RUST_TARGET" >&2 ||
    die "rustup could not add the target $RUST_TARGET (no network to the Rust distribution server?)"
fi
[ -z "$GLIBC" ] || ensure_zigbuild

# Runs cargo for the node: zigbuild when a glibc version is asked for, else plain cargo with
# the cross gcc.
cargo_node() {
  if [ -n "$GLIBC" ]; then
    # zig links; the target's flags (RUSTFLAGS_TARGET) still apply to what rustc compiles.
    env "CARGO_TARGET_${upper}_RUSTFLAGS=${RUSTFLAGS_TARGET[*]}" cargo zigbuild --target "$TARGET" "$@"
  else
    # cargo does not know that the link reads cross/hot-functions.txt: when the list changed
    # since the last build into OUT, the node is built again.
    local stamp="$OUT/.hot-functions" layout profile
    layout="$(cksum <"$ROOT/cross/hot-functions.txt")"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$layout" ]; then
      profile="$(basename "$OUT")"
      [ "$profile" = debug ] && profile=dev
      cargo clean -q -p node-daemon --target "$RUST_TARGET" --profile "$profile"
    fi
    env ${GCC_ENV[@]+"${GCC_ENV[@]}"} cargo build --target "$RUST_TARGET" "$@"
    mkdir -p "$OUT"
    echo "$layout" >"$stamp"
  fi
}

# `dev` builds land in debug/, every other profile in a directory of its name.
profile_dir() {
  local dir=debug prev=""
  for a in "$@"; do
    case "$a" in
      --release | -r) dir=release ;;
      --profile=*) dir="${a#--profile=}" ;;
    esac
    [ "$prev" = --profile ] && dir="$a"
    prev="$a"
  done
  [ "$dir" = dev ] && dir=debug
  echo "$dir"
}

start=$(date +%s)
if [ $# -gt 0 ]; then
  OUT="$TARGET_DIR/$RUST_TARGET/$(profile_dir "$@")"
  cargo_node "$@"
else
  CARGO_PROFILE="${EDGE_CARGO_PROFILE:-release}"
  OUT="$TARGET_DIR/$RUST_TARGET/$(profile_dir --profile "$CARGO_PROFILE")"
  feature_args=()
  for feature in ${FEATURES[@]+"${FEATURES[@]}"}; do
    feature_args+=(--features "node-daemon/$feature")
  done
  cargo_node --profile "$CARGO_PROFILE" -p node-daemon --bin edge-node ${feature_args[@]+"${feature_args[@]}"}
  node_done=$(date +%s)
  say "edge-node built in $((node_done - start)) s"
  hello_env=()
  case "$RUST_TARGET" in
    # A glibc binary linked statically needs no loader and no particular glibc on the board.
    # The Debian cross gcc links it even for TRIPLE.2.NN: a static binary carries its libc,
    # and zig cannot link glibc statically.
    *-gnu*) hello_env=("RUSTFLAGS=${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static") ;;
  esac
  env ${GCC_ENV[@]+"${GCC_ENV[@]}"} ${hello_env[@]+"${hello_env[@]}"} \
    cargo build --target "$RUST_TARGET" --profile "$CARGO_PROFILE" -p edge-hello --bin edge-hello
  say "edge-hello built in $(($(date +%s) - node_done)) s"
fi
say "$TARGET built in $(($(date +%s) - start)) s"

say "binaries in $OUT:"
for bin in edge-node edge-hello; do
  [ -f "$OUT/$bin" ] && ls -l "$OUT/$bin"
done
if [ -n "$LOADER_PREFIX" ]; then
  say "a dynamically linked binary runs under qemu with -L $LOADER_PREFIX"
fi

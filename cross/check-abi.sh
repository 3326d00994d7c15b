#!/usr/bin/env bash
# cross/check-abi.sh: checks that a built binary will load on a board's C library.
#
# Usage: cross/check-abi.sh BINARY [MAX_GLIBC]
#   cross/check-abi.sh target/armv7-unknown-linux-gnueabihf/release/edge-node        # <= 2.31
#   cross/check-abi.sh target/aarch64-unknown-linux-gnu/release/edge-node 2.36
# Passes when BINARY is statically linked (nothing to load), or when every GLIBC_x.y symbol
# version it needs is at most MAX_GLIBC (default 2.31: Raspberry Pi OS Bullseye). A binary
# needing a newer version is refused by the loader on the board ("version `GLIBC_2.34' not
# found"), which is what this catches before anything is shipped.
# Prints the verdict and the highest version found; exits 1 when the binary does not fit,
# 2 on a usage error. Needs only readelf (binutils), which reads ELF of any architecture.
set -euo pipefail

usage="usage: cross/check-abi.sh BINARY [MAX_GLIBC]"
BINARY="${1:?$usage}"
MAX="${2:-2.31}"
if [ $# -gt 2 ]; then
  echo "$usage" >&2
  exit 2
fi
if ! [[ "$MAX" =~ ^[0-9]+\.[0-9]+$ ]]; then
  echo "cross/check-abi.sh: MAX_GLIBC must look like 2.31, not '$MAX'" >&2
  exit 2
fi
if [ ! -f "$BINARY" ]; then
  echo "cross/check-abi.sh: $BINARY: no such file" >&2
  exit 2
fi
if ! command -v readelf >/dev/null 2>&1; then
  echo "cross/check-abi.sh: readelf not found; install binutils" >&2
  exit 2
fi
if ! header="$(LC_ALL=C readelf -hW "$BINARY" 2>/dev/null)"; then
  echo "cross/check-abi.sh: $BINARY is not an ELF file" >&2
  exit 2
fi
machine="$(sed -n 's/^ *Machine: *//p' <<<"$header")"

# sort -V orders versions numerically (2.9 < 2.17 < 2.31).
version_le() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ]
}

needed="$(LC_ALL=C readelf -dW "$BINARY" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | paste -sd' ' -)"
interp="$(LC_ALL=C readelf -lW "$BINARY" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')"
if [ -z "$needed" ] && [ -z "$interp" ]; then
  # Also true of static-pie, which has a dynamic section but neither of these.
  echo "ok: $BINARY ($machine) is statically linked: no C library to match"
  exit 0
fi

# The version needs (.gnu.version_r), not the per-symbol table: one line per version the loader
# must find. A WEAK reference does not stop the binary from loading, so it does not count.
versions="$(LC_ALL=C readelf -VW "$BINARY" |
  sed -n '/^Version needs section/,/^Version [a-z]* section/p' |
  grep -v 'Flags: WEAK' |
  grep -o 'Name: GLIBC_[0-9A-Z_.]*' | sed 's/^Name: GLIBC_//' | sort -uV || true)"
numbered="$(grep -E '^[0-9]+(\.[0-9]+)+$' <<<"$versions" || true)"
highest="$(tail -n1 <<<"$numbered")"

echo "$BINARY ($machine): dynamically linked${interp:+, loader $interp}, needs ${needed:-nothing}"
if grep -qx PRIVATE <<<"$versions"; then
  echo "FAIL: needs GLIBC_PRIVATE, which ties it to one exact glibc build" >&2
  exit 1
fi
if [ -z "$highest" ]; then
  echo "ok: needs no GLIBC symbol versions (highest: none; max $MAX)"
  exit 0
fi
if version_le "$highest" "$MAX"; then
  echo "ok: highest GLIBC version needed is $highest <= $MAX"
  exit 0
fi

echo "FAIL: highest GLIBC version needed is $highest > $MAX: it will not start on a system with glibc $MAX" >&2
echo "  symbols that need more than $MAX:" >&2
too_new="$(while read -r v; do version_le "$v" "$MAX" || echo "$v"; done <<<"$numbered")"
while read -r v; do
  LC_ALL=C readelf --dyn-syms -W "$BINARY" |
    awk -v ver="@GLIBC_$v" 'index($8, ver) { sub(/ \([0-9]+\)$/, "", $8); print "    " $8 }'
done <<<"$too_new" | sort -u >&2
echo "  link against an older glibc (cross/build.sh TRIPLE.2.31 uses cargo-zigbuild) or build for musl" >&2
exit 1

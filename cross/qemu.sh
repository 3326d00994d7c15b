#!/usr/bin/env bash
# cross/qemu.sh: lets this x86_64 machine run the ARM builds, for tests and benchmarks.
#
# Usage: cross/qemu.sh setup
#   Installs qemu-user-static (apt) and registers qemu-aarch64 and qemu-arm with the kernel's
#   binfmt_misc, unless they are registered already. Idempotent.
#
# Running `qemu-aarch64-static -cpu cortex-a53 edge-node ...` needs no registration. What needs
# it is everything that ARM program then executes itself: a node started under qemu spawns its
# ARM workloads with a plain execve, which the kernel refuses (exit 126) unless binfmt_misc
# knows which emulator runs that kind of ELF. The entries use Debian's own definitions
# (/usr/lib/binfmt.d/qemu-*.conf), whose F flag makes the kernel open the emulator once, at
# registration, so it works from any mount namespace or container afterwards.
#
# Registering needs root, and binfmt_misc is one table for the whole kernel: in a container
# that cannot mount it, register on the host instead (or run the container privileged).
set -euo pipefail

usage="usage: cross/qemu.sh setup"
if [ $# -ne 1 ] || [ "$1" != setup ]; then
  echo "$usage" >&2
  exit 2
fi

BINFMT=/proc/sys/fs/binfmt_misc
ARCHES=(aarch64 arm)

die() {
  echo "cross/qemu.sh: $*" >&2
  exit 1
}

# shellcheck source=cross/apt.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"

# An entry counts when it is enabled and its emulator still exists (a leftover from a removed
# qemu points at nothing, and every ARM exec would fail).
registered() {
  local entry="$BINFMT/qemu-$1"
  [ -f "$entry" ] || return 1
  grep -qx enabled "$entry" || return 1
  local interpreter
  interpreter="$(sed -n 's/^interpreter //p' "$entry")"
  [ -n "$interpreter" ] && [ -e "$interpreter" ]
}

command -v dpkg >/dev/null 2>&1 || die "needs a Debian-based system (dpkg, apt-get)"
apt_install qemu-user-static
for arch in "${ARCHES[@]}"; do
  command -v "qemu-$arch-static" >/dev/null 2>&1 ||
    die "qemu-$arch-static is missing although qemu-user-static is installed"
done

todo=()
for arch in "${ARCHES[@]}"; do
  if registered "$arch"; then
    echo "cross/qemu.sh: qemu-$arch already registered with binfmt_misc"
  else
    todo+=("$arch")
  fi
done
[ ${#todo[@]} -gt 0 ] || exit 0

[ "$(id -u)" -eq 0 ] ||
  die "registering ${todo[*]} with binfmt_misc needs root: run 'sudo bash cross/qemu.sh setup'"
if [ ! -w "$BINFMT/register" ]; then
  # Not mounted yet (plain Debian without systemd's automount), or mounted read-only.
  mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null || true
  [ -w "$BINFMT/register" ] ||
    die "binfmt_misc is not available at $BINFMT and cannot be mounted here (a container without the privilege?). Register qemu on the host, e.g. 'sudo bash cross/qemu.sh setup' there, or run the container with --privileged."
fi

for arch in "${todo[@]}"; do
  conf="/usr/lib/binfmt.d/qemu-$arch.conf"
  [ -f "$conf" ] || die "$conf is missing; it comes with Debian's qemu-user-static"
  line="$(grep -v '^[[:space:]]*\(#\|$\)' "$conf" | head -n1)"
  [ -n "$line" ] || die "$conf has no entry"
  entry="$BINFMT/qemu-$arch"
  if [ -f "$entry" ]; then
    # Disabled, or pointing at an emulator that is gone: replace it with Debian's.
    echo -1 >"$entry" || die "cannot remove the stale entry $entry"
  fi
  printf '%s\n' "$line" >"$BINFMT/register" ||
    die "the kernel refused the qemu-$arch entry from $conf"
  registered "$arch" || die "qemu-$arch was written to $BINFMT/register but is not active"
  echo "cross/qemu.sh: registered qemu-$arch ($(sed -n 's/^interpreter //p' "$entry"))"
done

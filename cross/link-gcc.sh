#!/usr/bin/env bash
# cross/link-gcc.sh: the linker cross/build.sh gives rustc. It links with the C compiler driver in
# EDGE_LINK_CC (default cc) and the lld that ships with Rust, and lays out the functions a
# running node executes (cross/hot-functions.txt) side by side at the start of .text. Its
# name ends in -gcc so that rustc passes it what it passes a gcc.
#
# Why: the kernel maps a binary's code in 64 KiB windows around each page it faults on. The
# functions a node runs at start and at idle are about a quarter of its code, but the default
# link spreads them over all of it, so nearly all of it ended up resident. Packed together,
# they need a few windows (benches/RESULTS.md, "What cut the idle memory").
#
# The list names functions by their demangled names without what changes from one build to
# the next: the hash that ends a legacy Rust symbol and the crate disambiguators of a v0 one
# (`c++filt -i`). At link time the function symbols of the objects being linked are matched
# against it, and lld gets their exact names (--symbol-ordering-file). A name that matches
# nothing costs nothing: a stale list only lays out less.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cc="${EDGE_LINK_CC:-cc}"
list="${EDGE_HOT_FUNCTIONS:-$here/hot-functions.txt}"
sysroot="$(rustc --print sysroot)"
gcc_ld="$sysroot/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
[ -x "$gcc_ld/ld.lld" ] || {
  echo "cross/link-gcc.sh: no ld.lld under $sysroot/lib/rustlib (rustup toolchains ship it)" >&2
  exit 2
}

# rustc passes its arguments in a file (@FILE) when they are too many for a command line.
args=()
for arg in "$@"; do
  if [[ "$arg" == @* && -f "${arg#@}" ]]; then
    mapfile -t -O "${#args[@]}" args <"${arg#@}"
  else
    args+=("$arg")
  fi
done

# The cross gcc's own nm reads its target's objects: aarch64-linux-gnu-gcc -> aarch64-linux-gnu-nm.
nm="${cc%gcc}nm"
[ "$nm" != "${cc}nm" ] || nm="nm"
work="$(mktemp -d "${TMPDIR:-/tmp}/edge-link.XXXXXX")"
trap 'rm -rf "$work"' EXIT
touch "$work/order"
if [ -f "$list" ]; then
  objects=()
  for arg in "${args[@]}"; do
    case "$arg" in
      *.o | *.rlib | *.a) [ -f "$arg" ] && objects+=("$arg") ;;
    esac
  done
  { [ ${#objects[@]} -eq 0 ] || "$nm" --defined-only "${objects[@]}" 2>/dev/null || true; } |
    awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$work/symbols"
  c++filt -i <"$work/symbols" >"$work/keys"
  paste "$work/keys" "$work/symbols" >"$work/keyed"
  # In the list's order: every symbol whose key it names, and the names of C functions as they
  # are (those of libraries given as -lNAME, which are not scanned here).
  awk -F '\t' 'NR == FNR {
      if ($0 ~ /^#/ || $0 == "") next
      rank[$0] = ++n
      if ($0 ~ /^[A-Za-z_][A-Za-z0-9_]*$/) print n "\t" $0
      next
    }
    ($1 in rank) && $1 != $2 { print rank[$1] "\t" $2 }' "$list" "$work/keyed" |
    sort -s -n -k1,1 | cut -f2 >"$work/order"
fi

# EDGE_LINK_MAPS=DIR: for each binary NAME linked, DIR/NAME.map says where every function
# landed (lld's map) and DIR/NAME.order what was asked.
map=()
if [ -n "${EDGE_LINK_MAPS:-}" ]; then
  output=a.out
  for ((i = 0; i < ${#args[@]} - 1; i++)); do
    [ "${args[i]}" = -o ] && output="$(basename "${args[i + 1]}")"
  done
  map=("-Wl,-Map=$EDGE_LINK_MAPS/$output.map")
  cp "$work/order" "$EDGE_LINK_MAPS/$output.order"
fi
"$cc" "${args[@]}" -fuse-ld=lld -B "$gcc_ld" ${map[@]+"${map[@]}"} \
  -Wl,--symbol-ordering-file="$work/order" -Wl,--no-warn-symbol-ordering

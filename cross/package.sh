#!/usr/bin/env bash
# cross/package.sh: makes the node daemon's Debian package for a board profile.
#
# Usage: cross/package.sh PROFILE [--binary PATH] [--out DIR] [--lint]
#   PROFILE        a board profile, targets/PROFILE.toml (pi-zero-2w, pi-4, armv7-gateway,
#                  x86_64-gateway)
#   --binary PATH  the edge-node to package; default target/TRIPLE/release/edge-node, where
#                  cross/build.sh puts it (TRIPLE without a glibc suffix such as .2.31)
#   --out DIR      where edge-node_VERSION-1_ARCH.deb goes; default target/debian
#   --lint         then check it: lintian on the package, and systemd-analyze verify on
#                  its unit, alone and with the containers drop-in (each installed if
#                  missing); fails on a lintian error or a unit warning
# Prints the path of the .deb on stdout.
#
# The package is put together by hand and built with dpkg-deb: cargo-deb would have to be
# compiled first, which takes longer than everything else here on a small build machine.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ME="cross/package.sh"
MAINTAINER="Edge Fleet Maintainers <maintainers@edge-fleet.example>"
UNIT=edge-node.service
# The drop-in that lets the unit run OCI containers: shipped, not active (see the README,
# "Container images"), so that a node without containers keeps the tighter sandbox.
CONTAINERS_DROPIN=edge-node-containers.conf

die() {
  echo "$ME: $*" >&2
  exit 1
}

usage() {
  sed -n '4,13s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

# shellcheck source=cross/apt.sh
source "$ROOT/cross/apt.sh"

profile="" binary="" out="" lint=no
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) [ $# -ge 2 ] || usage; binary="$2"; shift 2 ;;
    --binary=*) binary="${1#--binary=}"; shift ;;
    --out) [ $# -ge 2 ] || usage; out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --lint) lint=yes; shift ;;
    -h | --help) usage ;;
    -*) echo "$ME: unknown option $1" >&2; usage ;;
    *) [ -z "$profile" ] || usage; profile="$1"; shift ;;
  esac
done
[ -n "$profile" ] || usage

profile_file="$ROOT/targets/$profile.toml"
if [[ "$profile" == */* || ! -f "$profile_file" ]]; then
  known=()
  for file in "$ROOT"/targets/*.toml; do
    [ ! -f "$file" ] || known+=("$(basename "$file" .toml)")
  done
  die "unknown profile '$profile': no targets/$profile.toml (known: ${known[*]})"
fi

# A top-level `KEY = "VALUE"` of the profile (targets/README.md: one line each, before the
# first table).
top_key() {
  awk -v key="$1" '
    /^[[:space:]]*\[/ { exit }
    $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
      sub(/^[^=]*=[[:space:]]*"/, "")
      sub(/".*$/, "")
      print
      exit
    }' "$profile_file"
}

triple="$(top_key triple)"
deb_arch="$(top_key deb_arch)"
[ -n "$triple" ] || die "targets/$profile.toml has no triple = \"...\""
[ -n "$deb_arch" ] || die "targets/$profile.toml has no deb_arch = \"...\""

# armv7-unknown-linux-gnueabihf.2.31: the Rust target, and the glibc it was linked against.
rust_target="$triple" glibc=""
if [[ "$triple" =~ ^(.+)\.([0-9]+\.[0-9]+)$ ]]; then
  rust_target="${BASH_REMATCH[1]}"
  glibc="${BASH_REMATCH[2]}"
fi

version="$(awk '
  /^[[:space:]]*\[/ { section = $0; sub(/[[:space:]]*(#.*)?$/, "", section); next }
  section == "[workspace.package]" && /^[[:space:]]*version[[:space:]]*=/ {
    sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
  }' "$ROOT/Cargo.toml")"
[ -n "$version" ] || die "no version in [workspace.package] of Cargo.toml"
deb_version="$version-1"

binary="${binary:-$ROOT/target/$rust_target/release/edge-node}"
[ -f "$binary" ] || die "no binary at $binary: build it with cross/build.sh $rust_target, or pass --binary PATH"
out="${out:-$ROOT/target/debian}"

# --- The binary: an ELF executable for deb_arch. Read from the header with od, so that
# neither `file` nor a binutils for the target is needed.

# The unsigned little-endian integer of SIZE bytes at OFFSET in FILE (empty past the end).
elf_uint() {
  od -An -v -j "$2" -N "$3" -t "u$3" --endian=little -- "$1" | tr -d ' \n'
}

[ "$(od -An -v -N4 -tx1 -- "$binary" | tr -d ' \n')" = 7f454c46 ] \
  || die "$binary is not an ELF executable"
elf_class="$(elf_uint "$binary" 4 1)" # 1: 32-bit, 2: 64-bit
elf_data="$(elf_uint "$binary" 5 1)"  # 1: little-endian
elf_machine="$(elf_uint "$binary" 18 2)"
case "$elf_data:$elf_class:$elf_machine" in
  1:2:62) bin_arch=amd64 bin_machine=x86-64 ;;
  1:2:183) bin_arch=arm64 bin_machine=aarch64 ;;
  1:1:40) bin_arch=armhf bin_machine=ARM ;;
  *) bin_arch="" bin_machine="ELF machine $elf_machine, class $elf_class, data $elf_data" ;;
esac
case "$deb_arch" in
  amd64) want_machine=x86-64 ;;
  arm64) want_machine=aarch64 ;;
  armhf) want_machine=ARM ;;
  *) die "targets/$profile.toml: deb_arch \"$deb_arch\" is not one this script packages (amd64, arm64, armhf)" ;;
esac
[ "$bin_arch" = "$deb_arch" ] \
  || die "$binary is built for $bin_machine, but profile $profile packages $deb_arch ($want_machine)"
if [ "$deb_arch" = armhf ]; then
  # EF_ARM_ABI_FLOAT_HARD: a soft-float (gnueabi) binary crashes on armhf in its first call
  # that passes a float.
  (($(elf_uint "$binary" 36 4) & 0x400)) || die "$binary is a soft-float ARM binary; armhf needs hard float (gnueabihf)"
fi

# Dynamically linked if it has a PT_INTERP program header: then it needs the C library at
# run time. Static musl builds need nothing.
if [ "$elf_class" = 2 ]; then
  phoff="$(elf_uint "$binary" 32 8)" phentsize="$(elf_uint "$binary" 54 2)" phnum="$(elf_uint "$binary" 56 2)"
else
  phoff="$(elf_uint "$binary" 28 4)" phentsize="$(elf_uint "$binary" 42 2)" phnum="$(elf_uint "$binary" 44 2)"
fi
dynamic=no
for ((i = 0; i < phnum; i++)); do
  if [ "$(elf_uint "$binary" $((phoff + i * phentsize)) 4)" = 3 ]; then
    dynamic=yes
    break
  fi
done
depends=""
if [ "$dynamic" = yes ]; then
  if [ -z "$glibc" ]; then
    # No glibc named by the triple: the newest symbol version the binary asks for, which is
    # what dpkg-shlibdeps would arrive at through libc6's symbols file.
    glibc="$(LC_ALL=C grep -aoE 'GLIBC_[0-9]+(\.[0-9]+)+' -- "$binary" | sed 's/^GLIBC_//' | sort -uV | tail -n1 || true)"
  fi
  depends="libc6${glibc:+ (>= $glibc)}"
  # Rust's gnu targets may link the unwinder from libgcc_s.
  if LC_ALL=C grep -qaF 'libgcc_s.so.1' -- "$binary"; then
    depends="$depends, libgcc-s1"
  fi
fi

# --- The tree.
work="$(mktemp -d)"
trap 'rm -rf -- "$work"' EXIT
pkg="$work/pkg"
umask 022
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc/edge-node" "$pkg/lib/systemd/system" \
  "$pkg/usr/share/doc/edge-node" "$pkg/usr/share/edge-node"

# Reproducible: every date in the package is that of the commit built, unless the caller
# sets one.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)"
fi
export SOURCE_DATE_EPOCH

# The binary, stripped (Debian ships no debug info in the main package; lintian insists).
install -m 0755 -- "$binary" "$pkg/usr/bin/edge-node"
case "$deb_arch" in
  amd64) strip_tools=(x86_64-linux-gnu-strip) ;;
  arm64) strip_tools=(aarch64-linux-gnu-strip) ;;
  armhf) strip_tools=(arm-linux-gnueabihf-strip) ;;
esac
# The host's own strip only understands the host's architecture.
[ "$(dpkg --print-architecture 2>/dev/null || true)" != "$deb_arch" ] || strip_tools+=(strip)
stripped=no
for tool in "${strip_tools[@]}"; do
  if command -v "$tool" >/dev/null; then
    # As dh_strip does for executables.
    "$tool" --remove-section=.comment --remove-section=.note -- "$pkg/usr/bin/edge-node"
    stripped=yes
    break
  fi
done
[ "$stripped" = yes ] || echo "$ME: no ${strip_tools[0]}: packaging $binary as it is" >&2

# The profile's [config] table, as a file of its own: `[config.reserve]` becomes `[reserve]`.
config_body="$(awk '
  /^[[:space:]]*\[/ {
    header = $0
    sub(/^[[:space:]]*/, "", header)
    if (header ~ /^\[config\][[:space:]]*(#.*)?$/) { inside = 1; next }
    if (inside && header ~ /^\[\[?config\./) {
      sub(/config\./, "", header)
      print header
      next
    }
    inside = 0
    next
  }
  inside { print }' "$profile_file")"
[ -n "$config_body" ] || die "targets/$profile.toml has no [config] table"
join_files="$(sed -n 's/^[[:space:]]*join_file[[:space:]]*=[[:space:]]*\[\(.*\)\].*/\1/p' <<<"$config_body" \
  | tr -d '"' | sed 's/[[:space:]]*,[[:space:]]*/, /g; s/^[[:space:]]*//; s/[[:space:]]*$//')"
{
  echo "# /etc/edge-node/node.toml: the edge-node settings for the $profile board profile."
  echo "#"
  echo "# The node's name, the orchestrator's address, the join token, the CA hash, its location"
  echo "# and labels are not here: they come from the join file (on a Raspberry Pi, on the boot"
  echo "# partition), which the node reads on first start and deletes once it has enrolled. It is"
  echo "# looked for at the paths in join_file below:"
  echo "#   ${join_files:-(none: join_file is not set)}"
  echo "# See /usr/share/doc/edge-node/edge-join.example.toml."
  echo
  printf '%s\n' "$config_body"
} >"$pkg/etc/edge-node/node.toml"
chmod 0644 "$pkg/etc/edge-node/node.toml"

install -m 0644 -- "$ROOT/targets/$UNIT" "$pkg/lib/systemd/system/$UNIT"
# Under /usr/share, not in /etc/systemd/system/edge-node.service.d/, where it would be active
# on every node: the administrator copies it there to opt in.
install -m 0644 -- "$ROOT/targets/$CONTAINERS_DROPIN" "$pkg/usr/share/edge-node/containers.conf"

doc="$pkg/usr/share/doc/edge-node"
year="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)"
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: edge-fleet
Upstream-Contact: $MAINTAINER

Files: *
Copyright: $year Edge Fleet Maintainers
License: Apache-2.0

License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License");
 you may not use this file except in compliance with the License.
 You may obtain a copy of the License at
 .
 http://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS,
 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
 See the License for the specific language governing permissions and
 limitations under the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0
 can be found in "/usr/share/common-licenses/Apache-2.0".
EOF

cat >"$work/changelog.Debian" <<EOF
edge-node ($deb_version) unstable; urgency=medium

  * edge-node $version, built for the $profile board profile
    ($triple).

 -- $MAINTAINER  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")
EOF
gzip -9n <"$work/changelog.Debian" >"$doc/changelog.Debian.gz"

cat >"$doc/edge-join.example.toml" <<'EOF'
# An edge-node join file: what a new node needs to enroll in the fleet.
#
# On a Raspberry Pi, write it to the SD card's boot partition before the first boot, as
# edge-join.toml (it shows up as /boot/firmware/edge-join.toml on Bookworm, /boot/edge-join.toml
# on Bullseye); on a gateway, as /etc/edge-node/edge-join.toml. join_file in
# /etc/edge-node/node.toml lists where the node looks. The node reads it on first start,
# enrolls, keeps its identity in /var/lib/edge-node and deletes the file, since it holds a
# token. `edgectl token create` prints the token and the CA hash.

# Where the orchestrator listens for nodes (QUIC, UDP).
orchestrator = "orchestrator.example.net:7443"
# The join token; typically good for one use within an hour.
token = "abcdef.0123456789abcdef0123456789abcdef"
# The fleet CA's hash: the node refuses an orchestrator whose CA does not match it.
ca_hash = "sha256:50d858e0985ecc7f60418aaf0cc5ab587f42c2570a884095a9e8ccacd0f6545c"
# The node's name, unique in the fleet: a-z, 0-9 and '-'.
name = "shop-berlin-1"
# Optional: where the node is, in degrees (alt_m, in metres, optional too). Workloads that ask
# to run near a place are placed by it.
location = { lat = 52.52, lon = 13.405 }
# Optional: labels workloads can require.
labels = { site = "berlin" }
EOF
chmod 0644 "$doc"/*

# A static binary is what the musl profiles are for (one build for Bullseye and Bookworm, no
# glibc to match), and lintian flags every static binary for a human to confirm it. A
# static-pie one (ELF type DYN without DT_NEEDED) looks to it like a library that forgot its
# dependencies.
if [ "$dynamic" = no ]; then
  if [ "$(elf_uint "$binary" 16 2)" = 3 ]; then
    static_tag=shared-library-lacks-prerequisites
  else
    static_tag=statically-linked-binary
  fi
  install -d "$pkg/usr/share/lintian/overrides"
  {
    echo "# Statically linked on purpose: the $triple build runs on any distribution release."
    echo "edge-node: $static_tag [usr/bin/edge-node]"
  } >"$pkg/usr/share/lintian/overrides/edge-node"
  chmod 0644 "$pkg/usr/share/lintian/overrides/edge-node"
fi

# --- Maintainer scripts: debhelper's systemd snippets (dh_installsystemd), except that the
# first install does not start the daemon without a join file or an identity: it would only
# fail. Enabled, it starts on the next boot, when the operator's join file is there.
cat >"$pkg/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e

# Where the node keeps its identity, and where it looks for a join file: from node.toml,
# which the administrator may have changed, else the package's defaults.
config=/etc/edge-node/node.toml
data_dir=/var/lib/edge-node
join_files="${join_files//,/}"
if [ -r "\$config" ]; then
	value=\$(sed -n 's/^[[:space:]]*data_dir[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "\$config")
	[ -z "\$value" ] || data_dir=\$value
	value=\$(sed -n 's/^[[:space:]]*join_file[[:space:]]*=[[:space:]]*\[\(.*\)\].*/\1/p' "\$config" | tr -d '",')
	[ -z "\$value" ] || join_files=\$value
fi

can_start() {
	[ -d "\$data_dir/identity" ] && return 0
	for file in \$join_files; do
		[ -e "\$file" ] && return 0
	done
	return 1
}

if [ "\$1" = "configure" ] || [ "\$1" = "abort-upgrade" ] || [ "\$1" = "abort-deconfigure" ] || [ "\$1" = "abort-remove" ] ; then
	if command -v deb-systemd-helper >/dev/null; then
		# This will only remove masks created by d-s-h on package removal.
		deb-systemd-helper unmask '$UNIT' >/dev/null || true

		# was-enabled defaults to true, so new installations run enable.
		if deb-systemd-helper --quiet was-enabled '$UNIT'; then
			# Enables the unit on first installation, creates new
			# symlinks on upgrades if the unit file has changed.
			deb-systemd-helper enable '$UNIT' >/dev/null || true
		else
			# Update the statefile to add new symlinks (if any), which need to be
			# cleaned up on purge. Also remove old symlinks.
			deb-systemd-helper update-state '$UNIT' >/dev/null || true
		fi
	fi

	if [ -z "\${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if command -v deb-systemd-invoke >/dev/null; then
			if can_start; then
				if [ -n "\$2" ]; then
					_dh_action=restart
				else
					_dh_action=start
				fi
				deb-systemd-invoke \$_dh_action '$UNIT' >/dev/null || true
			else
				# An upgrade of a node that has not enrolled yet: restart it only if it runs.
				[ -z "\$2" ] || deb-systemd-invoke try-restart '$UNIT' >/dev/null || true
				echo "edge-node: not started: no join file (\$join_files) and no identity in \$data_dir."
				echo "edge-node: it starts on the next boot; or put a join file in place and run"
				echo "edge-node: 'systemctl start edge-node'. See /usr/share/doc/edge-node/edge-join.example.toml."
			fi
		fi
	fi
fi

exit 0
EOF

cat >"$pkg/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e

# Upgrades restart the daemon from postinst instead.
if [ -z "\${DPKG_ROOT:-}" ] && [ "\$1" = remove ] && [ -d /run/systemd/system ]; then
	if command -v deb-systemd-invoke >/dev/null; then
		deb-systemd-invoke stop '$UNIT' >/dev/null || true
	fi
fi

exit 0
EOF

cat >"$pkg/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e

if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
	systemctl --system daemon-reload >/dev/null || true
fi

if [ "\$1" = "remove" ]; then
	if command -v deb-systemd-helper >/dev/null; then
		deb-systemd-helper mask '$UNIT' >/dev/null || true
	fi
fi

if [ "\$1" = "purge" ]; then
	if command -v deb-systemd-helper >/dev/null; then
		deb-systemd-helper purge '$UNIT' >/dev/null || true
		deb-systemd-helper unmask '$UNIT' >/dev/null || true
	fi
	# The node's identity (its private key), artifact cache and workload state: systemd made
	# the directory (StateDirectory=), so no package owns it.
	rm -rf /var/lib/edge-node
fi

exit 0
EOF
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"

echo /etc/edge-node/node.toml >"$pkg/DEBIAN/conffiles"

# As dpkg-gencontrol counts: KiB per file, rounded up, and one per directory.
installed_size="$(find "$pkg" -mindepth 1 -path "$pkg/DEBIAN" -prune -o -printf '%y %s\n' \
  | awk '{ n += ($1 == "f") ? int(($2 + 1023) / 1024) : 1 } END { print n }')"

cat >"$pkg/DEBIAN/control" <<EOF
Package: edge-node
Version: $deb_version
Architecture: $deb_arch
Maintainer: $MAINTAINER
Installed-Size: $installed_size
${depends:+Depends: $depends
}Section: admin
Priority: optional
Description: edge fleet node daemon
 edge-node enrolls a board or gateway in an edge fleet with a one-time join
 token, keeps a QUIC session with mutual TLS to the orchestrator, and reports
 what the node is (architecture, CPUs, memory, disk, accelerators, labels) and
 where it is. It runs the workloads the orchestrator places on it, plain
 executables fetched by content digest, under cgroup limits, with restarts
 and health checks, and keeps them running while the orchestrator is out of
 reach.
 .
 This build is for the $profile board profile. The daemon runs as the
 systemd service edge-node. On first start it reads its name, orchestrator,
 join token and CA hash from a join file (on a Raspberry Pi, on the boot
 partition); see /usr/share/doc/edge-node/edge-join.example.toml.
EOF

# Conffiles are left out, as dh_md5sums does: dpkg keeps their sums itself.
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort \
  | grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles) | tr '\n' '\0' | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"

find "$pkg" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
mkdir -p -- "$out"
deb="$(cd "$out" && pwd)/edge-node_${deb_version}_${deb_arch}.deb"
dpkg-deb --build --root-owner-group "$pkg" "$deb" >/dev/null
echo "$ME: $deb ($(stat -c %s "$deb") bytes; Depends: ${depends:-none})" >&2

# --- Checks.
if [ "$lint" = yes ]; then
  command -v lintian >/dev/null || apt_install lintian
  command -v systemd-analyze >/dev/null || apt_install systemd
  failed=no

  # lintian exits non-zero on errors; its warnings and notes are printed for a human.
  lintian_out="$work/lintian.txt"
  if ! lintian --display-info --fail-on error --allow-root -- "$deb" >"$lintian_out" 2>&1; then
    failed=yes
  fi
  grep -q '^E: ' "$lintian_out" && failed=yes
  if [ -s "$lintian_out" ]; then
    sed "s|^|$ME: lintian: |" "$lintian_out" >&2
  else
    echo "$ME: lintian: no tags" >&2
  fi

  # verify checks that ExecStart's binary exists, on this machine unless told otherwise.
  # With --root (systemd 250 and later), it is looked up in the extracted package, so the
  # check covers the binary the package ships at the path the unit names; every other unit is
  # looked up there too, so the host's units (sysinit.target, network-online.target...) go in
  # first. An older systemd verifies a copy of the unit whose ExecStart points into the
  # extracted tree instead.
  # Then once more with the containers drop-in where an administrator puts it, in the unit's
  # drop-in directory, which verify reads in both cases.
  extracted="$work/root"
  mkdir -p "$extracted/lib/systemd"
  if systemd-analyze --help 2>/dev/null | grep -q -- '--root='; then
    for dir in /lib/systemd/system /usr/lib/systemd/system; do
      [ ! -d "$dir" ] || cp -a -- "$dir/." "$extracted/lib/systemd/system/"
    done
    dpkg-deb -x "$deb" "$extracted"
    verify=(systemd-analyze verify --root="$extracted" "$extracted/lib/systemd/system/$UNIT")
    dropin_dir="$extracted/etc/systemd/system/$UNIT.d"
  else
    dpkg-deb -x "$deb" "$extracted"
    mkdir "$work/unit"
    sed "s|^ExecStart=/usr/bin/edge-node|ExecStart=$extracted/usr/bin/edge-node|" \
      "$extracted/lib/systemd/system/$UNIT" >"$work/unit/$UNIT"
    verify=(systemd-analyze verify "$work/unit/$UNIT")
    dropin_dir="$work/unit/$UNIT.d"
  fi
  for what in "$UNIT" "$UNIT with containers.conf"; do
    if [ "$what" != "$UNIT" ]; then
      install -D -m 0644 -- "$extracted/usr/share/edge-node/containers.conf" "$dropin_dir/containers.conf"
    fi
    verify_out="$work/verify.txt"
    "${verify[@]}" >"$verify_out" 2>&1 || failed=yes
    if grep -q 'edge-node' "$verify_out"; then
      sed "s|^|$ME: systemd-analyze verify ($what): |" "$verify_out" >&2
      failed=yes
    else
      echo "$ME: systemd-analyze verify: $what is clean" >&2
    fi
  done

  [ "$failed" = no ] || die "$deb does not pass its checks"
fi

echo "$deb"

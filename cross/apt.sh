# shellcheck shell=bash
# cross/apt.sh: sourced by the scripts in cross/. apt_install PACKAGE...: installs the Debian
# packages that are missing, with sudo only when not root; progress goes to stderr so that a
# script's stdout stays its result.
#
# What it needs (README.md, "Prerequisites"): Debian or Ubuntu with apt-get, root or
# passwordless sudo, and the network to the distribution's mirrors. Without one of them it
# names the packages and the missing piece and fails; a caller under `set -e` stops there.
apt_install() {
  # Tests that run at once may each need a package: one install at a time (dpkg refuses a
  # second while one runs), each deciding what is missing once it holds the lock, so that
  # what another just installed is not installed again.
  local lock="${TMPDIR:-/tmp}/edge-apt.lock"
  if command -v flock >/dev/null 2>&1; then
    (
      flock -w 1800 9 || { echo "${0##*/}: waited 30 min for another install to finish" >&2; exit 1; }
      apt_install_now "$@"
    ) 9>"$lock"
  else
    apt_install_now "$@"
  fi
}

apt_install_now() {
  local missing=() pkg sudo=() me="${0##*/}"
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "$me: needs the Debian packages ${missing[*]}, but this machine has no apt-get and dpkg" \
      "to install them. The project's scripts install what they lack on Debian or Ubuntu only;" \
      "elsewhere install the equivalents of ${missing[*]} yourself (README.md, Prerequisites)." >&2
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
      echo "$me: needs the Debian packages ${missing[*]}, and installing them takes root: run" \
        "as root, give this user passwordless sudo, or install them first with" \
        "'sudo apt-get install ${missing[*]}'." >&2
      return 1
    fi
    sudo=(sudo -n)
  fi
  echo "$me: installing ${missing[*]}" >&2
  # A failed update (one unreachable mirror, say) need not stop an install the cached lists
  # can still serve: only the install decides.
  ${sudo[@]+"${sudo[@]}"} apt-get update -qq >&2 ||
    echo "$me: apt-get update failed; trying the install with the package lists there are" >&2
  if ! ${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >&2; then
    echo "$me: apt-get could not install ${missing[*]} (no network to the package mirrors, or" \
      "no such package in this release?)." >&2
    return 1
  fi
}

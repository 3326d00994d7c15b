# shellcheck shell=bash
# cross/apt.sh: sourced by the scripts in cross/. apt_install PACKAGE...: installs the Debian
# packages that are missing, with sudo only when not root; progress goes to stderr so that a
# script's stdout stays its result.
apt_install() {
  local missing=() pkg sudo=""
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "${0##*/}: installing ${missing[*]}" >&2
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
}

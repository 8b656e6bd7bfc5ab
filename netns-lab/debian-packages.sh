# Sourced by the set-up scripts (netns-lab/setup.sh, tests/vm/setup.sh): one way to
# install what is missing from Debian, only the missing packages and never their
# recommends (wireguard-tools or a kernel image would pull a lot more).
#   install_missing WHO PACKAGE...     WHO names the caller in messages
install_missing() {
  local who=$1 p
  shift
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "$who: missing system packages (${missing[*]}); run as root" >&2
    return 1
  fi
  echo "$who: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

#!/usr/bin/env bash
# What the VM tier (tests/vm) needs from Debian: Debian's kernel (its package
# ships the wireguard module), qemu to boot it and a static busybox for
# virtme-ng's initramfs. Without recommends (the kernel image would pull
# firmware and more); only when missing. virtme-ng itself is in the test extra.
set -euo pipefail
pkgs=(qemu-system-x86 linux-image-amd64 busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/vm/setup.sh: missing system packages (${missing[*]}); run as root" >&2
    exit 1
  fi
  echo "tests/vm/setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

#!/usr/bin/env bash
# What the VM tier (tests/vm) needs from Debian: Debian's kernel (its package
# ships the wireguard module), qemu to boot it and a static busybox for
# virtme-ng's initramfs. Without recommends (the kernel image would pull
# firmware and more); only when missing. virtme-ng itself is in the test extra.
set -euo pipefail
pkgs=(qemu-system-x86 linux-image-amd64 busybox-static)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=netns-lab/debian-packages.sh
. "$root/netns-lab/debian-packages.sh"
install_missing tests/vm/setup.sh "${pkgs[@]}"

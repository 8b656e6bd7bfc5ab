#!/usr/bin/env bash
# One-time set-up shared by the test command and the lab: system packages from
# Debian (only the missing ones, without recommends: wireguard-tools would pull a
# kernel image) and a project venv in .venv with the test extra installed.
# dnsmasq-base is dnsmasq without its system service (the `dnsmasq` package
# would start a resolver on the host): the lab runs it in its own namespaces.
# Idempotent; safe to run on every invocation.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

pkgs=(iproute2 nftables libnftables1 wireguard-tools wireguard-go iperf3 iputils-ping
      conntrack curl procps python3 python3-venv kmod
      dnsmasq-base dnsutils  # the lab's cluster resolvers; dig for the DNS tests
      chromium chromium-driver)  # the operator page's browser test (tests/gateway/test_page_browser.py)
# shellcheck source=netns-lab/debian-packages.sh
. "$root/netns-lab/debian-packages.sh"
install_missing setup "${pkgs[@]}"

venv="$root/.venv"
stamp="$venv/.crosswire-installed"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Reinstall when pyproject.toml changes.
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/pip" install -q --upgrade pip >/dev/null 2> >(grep -v -e "^WARNING: Location" >&2)
  # pip's index warnings are noise here; real errors still fail the script.
  "$venv/bin/pip" install -q -e "$root[test]" 2> >(grep -v -e "^WARNING: Location" >&2)
  "$venv/bin/python" -c "import ipam, fabric, gateway"
  echo "$want" > "$stamp"
fi

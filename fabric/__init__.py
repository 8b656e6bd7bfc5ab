"""The data plane: userspace WireGuard, netlink routes, nftables NAT, node agent."""

"""crosswire-wg: userspace WireGuard (sans-IO core + thin I/O layer)."""

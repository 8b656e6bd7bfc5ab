"""IPAM: allocation of views of peer ranges (pure logic plus a SQLite store)."""

"""The control plane daemon: config, keys, peering, reconcile, HTTP API, CLI."""

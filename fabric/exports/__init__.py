"""Per-peer exports in the data plane: the policy (``model``), its nftables table
(``policy``, sans-IO) and the adapter that programs it (``apply``)."""

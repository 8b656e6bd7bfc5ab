"""What a peer may announce: policy (``policy``), per-token grants and pending changes
(``state``), the operator's view and approval (``admin``, ``api``, ``cli``)."""

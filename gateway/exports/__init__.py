"""Exports in the control plane: the ``exports:`` config and name resolution
(``config``), grants and imports in the state (``state``), telling peers
(``sync``), what peers tell us (``imports``), and the read model, API and CLI
(``read``, ``api``, ``cli``)."""

"""Fixtures for the packaging checks (helpers live in deploykit)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# Helper modules beside the tests; names unique across the suite on purpose.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploykit import TREES, kustomize, render_with_component


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """name -> rendered resources: base, gpu, lab and gpu with the host-network component."""
    out = {name: kustomize(path) for name, path in TREES.items()}
    out["gpu+host-network"] = render_with_component(
        tmp_path_factory.mktemp("hostnet"), "gpu", "host-network")
    return out

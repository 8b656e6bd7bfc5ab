"""Fixtures for the packaging checks (helpers live in deploykit and kustomize_lite)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# Helper modules beside the tests; names unique across the suite on purpose.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import kustomize_lite
from deploykit import TREES, render_with_component


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """name -> rendered resources: base, gpu, lab and gpu with the host-network component."""
    out = {name: kustomize_lite.build(path) for name, path in TREES.items()}
    out["gpu+host-network"] = render_with_component(
        tmp_path_factory.mktemp("hostnet"), "gpu", "host-network")
    return out

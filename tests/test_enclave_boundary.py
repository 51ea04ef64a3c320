"""The enclave boundary as code: outside aggregator/enclave/, no module of the aggregator
imports a library that holds tensors (torch, numpy, safetensors). Plaintext updates and
anything derived from them elementwise exist only in the enclave package; the rest of the
aggregator handles opaque handles and metadata (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AGGREGATOR = ROOT / "aggregator"
ENCLAVE = AGGREGATOR / "enclave"
TENSOR_LIBRARIES = frozenset({"torch", "numpy", "safetensors"})


def _outside_enclave() -> list[Path]:
    return sorted(p for p in AGGREGATOR.rglob("*.py") if ENCLAVE not in p.parents)


def tensor_imports(source: str) -> list[str]:
    """Every import of a tensor library in `source`, at any depth (function bodies too)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names = [node.module]
        else:
            continue
        found.extend(name for name in names if name.split(".")[0] in TENSOR_LIBRARIES)
    return found


def test_the_walk_covers_the_aggregator() -> None:
    names = {p.name for p in _outside_enclave()}
    assert {"_rounds.py", "_intake.py", "_closing.py", "_dp.py", "_cli.py", "_server.py"} <= names


@pytest.mark.parametrize("path", _outside_enclave(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_tensor_library_outside_the_enclave(path: Path) -> None:
    assert tensor_imports(path.read_text(encoding="utf-8")) == [], (
        f"{path.relative_to(ROOT)} imports a tensor library: plaintext belongs in aggregator/enclave/"
    )


@pytest.mark.parametrize(
    "source",
    [
        "import torch",
        "import numpy as np",
        "from safetensors.torch import load",
        "def f():\n    import torch.nn",
        "from numpy import float32",
    ],
)
def test_the_check_catches_each_form_of_import(source: str) -> None:
    assert tensor_imports(source) != []


def test_the_check_leaves_other_imports_alone() -> None:
    assert tensor_imports("import structlog\nfrom aggregator.enclave._aggregation import GlobalModel") == []

"""The layers are enforced: import-linter's contracts (pyproject's [tool.importlinter]) hold
for the tree, and a module that breaks one makes lint-imports fail naming that contract."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedseal", "attestation", "client_sdk", "aggregator", "auditor")
_LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def _contract_names() -> dict[str, str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    return {c["id"]: c["name"] for c in config["contracts"]}


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", _LINT, "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    contracts = _contract_names()
    assert set(contracts) == {
        "layers",
        "independent-sides",
        "enclave-inside-aggregator",
        "no-tensors-outside-enclave",
    }
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in contracts.values():
        assert f"{name} KEPT" in result.stdout
    assert f"Contracts: {len(contracts)} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        # the formats package reaching up into attestation (the cycle this layout removed)
        ("fedseal/_violation.py", "import attestation\n", {"layers"}),
        # a client holding the enclave's plaintext code
        (
            "client_sdk/_violation.py",
            "from aggregator.enclave import _spool\n",
            {"layers", "independent-sides", "enclave-inside-aggregator"},
        ),
        # the auditor sharing the aggregator's logic instead of keeping its own rules
        ("auditor/_violation.py", "import aggregator._rounds\n", {"layers", "independent-sides"}),
        ("attestation/_violation.py", "import aggregator.enclave\n", {"layers", "enclave-inside-aggregator"}),
        # plaintext tensors handled outside the enclave package (issue: the enclave boundary)
        ("aggregator/_violation.py", "import torch\n", {"no-tensors-outside-enclave"}),
        ("aggregator/_violation.py", "from numpy import zeros\n", {"no-tensors-outside-enclave"}),
    ],
)
def test_a_violation_fails_naming_its_contract(
    tmp_path: Path, module: str, source: str, broken: set[str]
) -> None:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.pem", "*.der")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / module).write_text(f'"""A deliberate layering violation."""\n\n{source}', encoding="utf-8")

    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    contracts = _contract_names()
    for contract_id, name in contracts.items():
        verdict = "BROKEN" if contract_id in broken else "KEPT"
        assert f"{name} {verdict}" in result.stdout, result.stdout
    assert module.removesuffix(".py").replace("/", ".") in result.stdout


def test_console_scripts_point_at_the_packages_that_hold_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    scripts = project["scripts"]
    assert scripts["fedseal-audit"] == "auditor._cli:main"
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target

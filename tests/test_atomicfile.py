"""fedseal/_atomicfile.py: the one durable-write helper (witness state and key, receipts,
torn log tails, PEFT adapters)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedseal._atomicfile import create_durably, replace_durably


def test_create_durably_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "key"
    create_durably(path, b"first")
    assert path.read_bytes() == b"first"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_durably(path, b"second")
    assert path.read_bytes() == b"first"


def test_replace_durably_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    replace_durably(path, b"old")
    replace_durably(path, b"new" * 100_000, mode=0o644)
    assert path.read_bytes() == b"new" * 100_000
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_replace_durably_failing_rename_keeps_the_target_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        replace_durably(target, b"data")
    assert (target / "inside").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]

"""Durable file writes: the one home of write, fsync, rename, fsync the directory.

A file that must survive a crash (the witness's state, a client's receipt, a torn log tail
kept aside) is written completely and fsynced before its name points at it, and the
directory is fsynced after, so after a power loss the name holds either the old bytes or
all of the new ones, never a prefix. Errors are the OSError of the failing call.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["create_durably", "fsync_directory", "replace_durably", "write_all"]


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a created or renamed file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_durably(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create `path` holding `data` durably; FileExistsError if it exists (never overwrites)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)


def replace_durably(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path`'s content with `data` atomically and durably (temporary file in the
    same directory, fsync, rename over `path`, fsync the directory)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)

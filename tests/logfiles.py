"""Reading an audit log file's entries in tests (checkpoint lines skipped)."""

from __future__ import annotations

from pathlib import Path

from fedseal.logformat import LogEntry, decode_record


def log_entries(path: Path) -> list[LogEntry]:
    """Every entry of the log at `path`, in order."""
    out = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        record = decode_record(line, line_number=number)
        if record.entry is not None:
            out.append(record.entry)
    return out

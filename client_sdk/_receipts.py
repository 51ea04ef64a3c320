"""A client's receipt store: one directory, one file per verified receipt.

Receipts are C2SP tlog-proof text (fedseal/receipt.py): the log entry (round, client id,
digests, sizes), its inclusion proof and the signed checkpoint. They hold no update data
and no key. Keep them: `fedseal-audit check-receipt FILE --log LOG` (or `--endpoint`)
proves later that the aggregator's log still contains the entry, and a receipt's
checkpoint is a trusted checkpoint for `fedseal-audit verify --trusted-checkpoint`.

Layout: `<directory>/<log origin, '/' as '_'>/round-<round id>-<client id>-entry-<index>.tlog-proof`.
Files are written atomically (fedseal/_atomicfile.py) and never overwritten: the
same receipt again is a no-op, a different one for the same name is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from fedseal._atomicfile import replace_durably
from fedseal.errors import FedSealError
from fedseal.logschema import UpdateAccepted
from fedseal.receipt import Receipt

__all__ = ["ReceiptStore", "ReceiptStoreError"]

_SUFFIX = ".tlog-proof"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ReceiptStoreError(FedSealError):
    """A receipt cannot be stored, or the store holds a conflicting receipt."""


class ReceiptStore:
    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)

    @property
    def directory(self) -> Path:
        return self._directory

    def path_for(self, receipt: Receipt) -> Path:
        body = receipt.entry.body
        if not isinstance(body, UpdateAccepted):
            raise ReceiptStoreError(f"a receipt is for an update_accepted entry, not {body.kind.value!r}")
        name = f"round-{body.round_id}-{_safe(body.client_id)}-entry-{receipt.index}{_SUFFIX}"
        return self._directory / _safe(receipt.log_origin) / name

    def save(self, receipt: Receipt) -> Path:
        """Store a verified receipt; return its path."""
        path = self.path_for(receipt)
        data = receipt.text.encode("utf-8")
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if path.exists():
                if path.read_bytes() != data:
                    raise ReceiptStoreError(f"{path} already holds a different receipt for this entry")
                return path
            replace_durably(path, data)
        except OSError as exc:
            raise ReceiptStoreError(f"cannot store the receipt in {path.parent}: {exc.strerror}") from exc
        return path

    def paths(self) -> Iterator[Path]:
        """Every stored receipt file, sorted."""
        if self._directory.is_dir():
            yield from sorted(self._directory.glob(f"*/*{_SUFFIX}"))


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)[:128] or "_"

"""Aggregator side: CPU TEE reports through Linux configfs-tsm (kernel 6.7+).

The kernel's interface (Documentation/ABI/testing/configfs-tsm-report): a directory per
report request under ``/sys/kernel/config/tsm/report``; in it

* ``inblob`` (write): up to 64 bytes of report data;
* ``outblob`` (read): the report over the current inblob, in the provider's format (the
  SEV-SNP ATTESTATION_REPORT, or the TDX quote);
* ``auxblob`` (read, SEV-SNP): the certificate table the host supplied (VCEK, ASK, ARK);
* ``provider`` (read): ``sev_guest`` or ``tdx_guest``;
* ``generation`` (read): incremented on every write to the entry's attributes.

One collection: create a fresh entry (``mkdir``; or use an entry an administrator made
for FedSeal), read ``provider`` and ``generation``, write ``inblob``, read ``generation``,
``outblob`` and ``auxblob``, read ``generation`` again, remove the entry if we made it. A
concurrent writer is detected as the kernel documents it: the generation after our write
must be exactly one more than before it, and must not move while we read. The report must
also carry our report data. A conflict is retried with a fresh entry, then fails.

``root`` is a constructor argument so the same code runs against any directory tree
shaped like the kernel's (the tests build one); nothing else about the kernel is assumed.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
from pathlib import Path

from .._bundle import Evidence, EvidenceKind
from .._errors import EvidenceFormatError
from ._errors import ConfigfsTsmConflictError, ConfigfsTsmError
from ._report_data import CPU_REPORT_DATA_SIZE
from ._snp import SNP_REPORT_SIZE, parse_snp_cert_table

__all__ = ["DEFAULT_CONFIGFS_TSM_ROOT", "ConfigfsTsmCollector"]

DEFAULT_CONFIGFS_TSM_ROOT = Path("/sys/kernel/config/tsm/report")

_PROVIDERS = {EvidenceKind.AMD_SEV_SNP: "sev_guest", EvidenceKind.INTEL_TDX: "tdx_guest"}
# Intel TDX DCAP quote: 48-byte header; v4 body follows it, v5 puts a 2-byte body type
# and a 4-byte body size first. REPORTDATA is at offset 520 of the TD report body.
_TDX_HEADER_SIZE = 48
_TDX_V5_BODY_DESCRIPTOR = 6
_TDX_REPORT_DATA_OFFSET = 520
_TDX_TEE_TYPE = 0x81
_MAX_OUTBLOB = 64 * 1024
_MAX_AUXBLOB = 64 * 1024
_SNP_REPORT_DATA = slice(0x50, 0x90)


class _Conflict(Exception):
    """Internal: one attempt met a concurrent writer; retried, then ConfigfsTsmConflictError."""


class ConfigfsTsmCollector:
    """Collects ``amd-sev-snp`` or ``intel-tdx`` evidence through configfs-tsm.

    ``kind`` says which TEE this confidential VM is; the entry's ``provider`` must agree
    (``sev_guest`` / ``tdx_guest``), otherwise collection fails. ``entry``: the name of an
    existing report entry to use (e.g. one an administrator created and handed to the
    aggregator's user, since creating entries needs root); by default each collection
    creates and removes its own. ``attempts`` bounds the retries after a conflict.

    :meth:`collect` takes the 64-byte CPU report data (see
    :func:`~attestation.cpu.cpu_report_data`), not the 32-byte binding:
    :func:`attestation.build_bundle` derives it after the other evidence is collected.
    """

    def __init__(
        self,
        kind: EvidenceKind,
        *,
        root: Path = DEFAULT_CONFIGFS_TSM_ROOT,
        entry: str | None = None,
        attempts: int = 3,
    ) -> None:
        if kind not in _PROVIDERS:
            raise ConfigfsTsmError(f"configfs-tsm gives CPU TEE reports only, not {kind.value!r} evidence")
        if entry is not None and (not entry or "/" in entry or entry in (".", "..")):
            raise ConfigfsTsmError(f"configfs-tsm entry must be a plain directory name, got {entry!r}")
        if not isinstance(attempts, int) or attempts < 1:
            raise ConfigfsTsmError("attempts must be a positive integer")
        self._kind = kind
        self._root = Path(root)
        self._entry = entry
        self._attempts = attempts

    @property
    def kind(self) -> EvidenceKind:
        """:attr:`EvidenceKind.AMD_SEV_SNP` or :attr:`EvidenceKind.INTEL_TDX`."""
        return self._kind

    def collect(self, binding: bytes) -> Evidence:
        """A fresh report whose report data is ``binding`` (here: the 64-byte CPU report data).

        Raises :class:`~attestation.cpu.ConfigfsTsmError` when configfs-tsm cannot give one,
        :class:`~attestation.cpu.ConfigfsTsmConflictError` when another writer interfered on
        every attempt.
        """
        if not isinstance(binding, bytes) or len(binding) != CPU_REPORT_DATA_SIZE:
            raise ConfigfsTsmError(
                f"CPU TEE report data must be {CPU_REPORT_DATA_SIZE} bytes (use attestation.build_bundle, "
                "which derives it from the binding and the other evidence)"
            )
        reasons: list[str] = []
        for _ in range(self._attempts):
            try:
                payload = self._collect_once(binding)
            except _Conflict as conflict:
                reasons.append(str(conflict))
                continue
            logging.getLogger(__name__).info(
                "collected %s evidence through configfs-tsm (%d bytes)", self._kind.value, len(payload)
            )
            return Evidence(kind=self._kind, payload=payload)
        raise ConfigfsTsmConflictError(
            f"configfs-tsm report entry changed under us on all {self._attempts} attempt(s): "
            + "; ".join(reasons)
        )

    def _collect_once(self, report_data: bytes) -> bytes:
        if self._entry is not None:
            entry = self._root / self._entry
            if not entry.is_dir():
                raise ConfigfsTsmError(f"configfs-tsm entry {entry} does not exist")
            return self._request(entry, report_data)
        entry = self._make_entry()
        try:
            return self._request(entry, report_data)
        finally:
            try:
                entry.rmdir()
            except OSError as exc:
                # The report (or the failure) stands; a stale entry only costs kernel memory.
                logging.getLogger(__name__).warning("could not remove configfs-tsm entry %s: %s", entry, exc)

    def _make_entry(self) -> Path:
        entry = self._root / f"fedseal-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            entry.mkdir()
        except FileNotFoundError:
            raise ConfigfsTsmError(
                f"no configfs-tsm report interface at {self._root} (not a confidential VM, a kernel "
                "older than 6.7, or configfs not mounted)"
            ) from None
        except PermissionError:
            raise ConfigfsTsmError(
                f"no permission to create a report entry under {self._root}: run as root, or have an "
                "administrator create an entry for FedSeal and pass its name as 'entry'"
            ) from None
        except OSError as exc:
            raise ConfigfsTsmError(
                f"cannot create a report entry under {self._root}: {exc.strerror}"
            ) from None
        return entry

    def _request(self, entry: Path, report_data: bytes) -> bytes:
        expected = _PROVIDERS[self._kind]
        provider = _read(entry / "provider", 64).decode("ascii", "replace").strip()
        if provider != expected:
            raise ConfigfsTsmError(
                f"configfs-tsm provider is {provider!r}, expected {expected!r} "
                f"for {self._kind.value} evidence"
            )
        before = _read_generation(entry)
        _write(entry / "inblob", report_data)
        after_write = _read_generation(entry)
        outblob = _read(entry / "outblob", _MAX_OUTBLOB)
        auxblob = b""
        if self._kind is EvidenceKind.AMD_SEV_SNP and (entry / "auxblob").exists():
            auxblob = _read(entry / "auxblob", _MAX_AUXBLOB)
        after_read = _read_generation(entry)
        if after_write != before + 1 or after_read != after_write:
            raise _Conflict(
                f"generation {before} -> {after_write} -> {after_read}, expected {before} -> {before + 1}"
            )
        if _report_data_of(self._kind, outblob) != report_data:
            raise _Conflict("the report does not carry the report data we wrote")
        try:
            parse_snp_cert_table(auxblob, field="auxblob")
        except EvidenceFormatError as exc:
            # Refuse it here: shipped as is, it would make every client refuse the evidence.
            raise ConfigfsTsmError(f"the host's SNP certificate table is malformed: {exc}") from None
        return outblob + auxblob


def _report_data_of(kind: EvidenceKind, outblob: bytes) -> bytes:
    """The report data field of a provider's outblob; ConfigfsTsmError if it is malformed."""
    if kind is EvidenceKind.AMD_SEV_SNP:
        if len(outblob) != SNP_REPORT_SIZE:
            raise ConfigfsTsmError(
                f"sev_guest outblob is {len(outblob)} bytes, not a {SNP_REPORT_SIZE}-byte report"
            )
        return outblob[_SNP_REPORT_DATA]
    if len(outblob) < _TDX_HEADER_SIZE:
        raise ConfigfsTsmError("tdx_guest outblob is shorter than a quote header")
    version, _, tee_type = struct.unpack_from("<HHI", outblob, 0)
    if tee_type != _TDX_TEE_TYPE or version not in (4, 5):
        raise ConfigfsTsmError(
            f"tdx_guest outblob is not a TDX quote (version {version}, TEE type {tee_type:#x})"
        )
    body = _TDX_HEADER_SIZE + (_TDX_V5_BODY_DESCRIPTOR if version == 5 else 0)
    start = body + _TDX_REPORT_DATA_OFFSET
    if len(outblob) < start + CPU_REPORT_DATA_SIZE:
        raise ConfigfsTsmError("tdx_guest outblob is too short for a TD report")
    return outblob[start : start + CPU_REPORT_DATA_SIZE]


def _read(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ConfigfsTsmError(f"cannot read configfs-tsm attribute {path.name}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigfsTsmError(f"configfs-tsm attribute {path.name} is larger than {limit} bytes")
    return data


def _write(path: Path, data: bytes) -> None:
    # No O_CREAT: configfs attributes exist or the entry is not what we think it is. The
    # kernel takes the value when the file is closed.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as exc:
        raise ConfigfsTsmError(f"cannot open configfs-tsm attribute {path.name}: {exc.strerror}") from None
    try:
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)  # configfs applies a binary attribute on close, so close can fail too
    except OSError as exc:
        raise ConfigfsTsmError(f"cannot write configfs-tsm attribute {path.name}: {exc.strerror}") from None
    if written != len(data):
        raise ConfigfsTsmError(f"short write to configfs-tsm attribute {path.name}")


def _read_generation(entry: Path) -> int:
    text = _read(entry / "generation", 32).decode("ascii", "replace").strip()
    if not text.isdigit():
        raise ConfigfsTsmError(f"configfs-tsm generation is not a number: {text!r}")
    return int(text)

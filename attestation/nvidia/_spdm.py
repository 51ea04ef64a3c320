"""Strict parser for an NVIDIA GPU attestation report (SPDM 1.1 GET_MEASUREMENTS transcript).

An NVIDIA GPU attestation report, as NVML returns it, is the SPDM GET_MEASUREMENTS
request the driver sent, followed by the GPU's signed MEASUREMENTS response (DMTF DSP0274
1.1, sections 10.11; NVIDIA's layout of the opaque data)::

    request (37 bytes)
      0  SPDMVersion (0x11)   1  RequestResponseCode (0xE0 GET_MEASUREMENTS)
      2  Param1 (bit 0: signature requested)   3  Param2 (0xFF: all blocks)
      4  Nonce (32 bytes: the verifier's nonce) 36 SlotIDParam
    response
      0  SPDMVersion          1  RequestResponseCode (0x60 MEASUREMENTS)
      2  Param1  3  Param2    4  NumberOfBlocks     5  MeasurementRecordLength (3, LE)
      8  MeasurementRecord: blocks of Index(1) MeasurementSpecification(1, =1 DMTF)
         MeasurementSize(2, LE) then DMTF ValueType(1) ValueSize(2, LE) Value
         Nonce (32 bytes, the responder's)  OpaqueLength (2, LE)
         OpaqueData: NVIDIA TLVs Type(2, LE) Length(2, LE) Value
         Signature (96 bytes on Hopper: ECDSA P-384 r || s, big-endian)

The signature covers every byte of request and response before the signature field.

NVIDIA's own parser (``verifier.attestation``) is not reused: it checks nothing with
``assert`` (gone under ``python -O``), slices past the end of short input without noticing,
writes the signature length and the opaque-data version into class-level state shared by
every caller, and swallows exceptions in its signature check. This one is ~150 lines,
bounds-checks every field, refuses trailing or missing bytes and duplicate fields, and is
tested on NVIDIA's published reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from .._errors import EvidenceFormatError

__all__ = [
    "HOPPER_SIGNATURE_SIZE",
    "NONCE_SIZE",
    "OpaqueField",
    "SpdmReport",
    "format_vbios_version",
    "parse_attestation_report",
]

NONCE_SIZE: Final = 32
HOPPER_SIGNATURE_SIZE: Final = 96
_REQUEST_SIZE: Final = 37
_SPDM_VERSION_1_1: Final = 0x11
_GET_MEASUREMENTS: Final = 0xE0
_MEASUREMENTS: Final = 0x60
_DMTF_MEASUREMENT_SPEC: Final = 0x01
# NVML's report buffer is 8 KiB (NVML_CC_GPU_ATTESTATION_REPORT_SIZE); nothing longer is real.
MAX_REPORT_SIZE: Final = 0x2000


class OpaqueField:
    """NVIDIA opaque-data field types used by the verifier (NVIDIA's OPAQUE_FIELD_ID_*)."""

    DRIVER_VERSION: Final = 3
    VBIOS_VERSION: Final = 6
    NVDEC0_STATUS: Final = 11
    CHIP_SKU: Final = 15
    PROJECT: Final = 17
    PROJECT_SKU: Final = 18
    FWID: Final = 20


@dataclass(frozen=True)
class SpdmReport:
    """A parsed report. ``measurements`` maps SPDM block index (1-based) to the value bytes."""

    raw: bytes
    spdm_version: int
    request_nonce: bytes
    responder_nonce: bytes
    measurements: MappingProxyType[int, bytes]
    opaque: MappingProxyType[int, bytes]
    signature: bytes

    @property
    def signed_bytes(self) -> bytes:
        """Request and response up to (not including) the signature: what the GPU signed."""
        return self.raw[: len(self.raw) - len(self.signature)]

    def opaque_text(self, field: int) -> str | None:
        """An opaque field as ASCII text without its NUL padding, or None when absent."""
        value = self.opaque.get(field)
        if value is None:
            return None
        try:
            return value.split(b"\0", 1)[0].decode("ascii").strip()
        except UnicodeDecodeError:
            raise EvidenceFormatError(f"opaque field {field} of the GPU report is not ASCII") from None

    @property
    def driver_version(self) -> str | None:
        return self.opaque_text(OpaqueField.DRIVER_VERSION)

    @property
    def vbios_version(self) -> str | None:
        value = self.opaque.get(OpaqueField.VBIOS_VERSION)
        return None if value is None else format_vbios_version(value)

    @property
    def fwid(self) -> bytes | None:
        return self.opaque.get(OpaqueField.FWID)


def format_vbios_version(value: bytes) -> str:
    """NVIDIA's VBIOS version spelling (``96.00.9F.00.01``) of the 8-byte opaque field.

    Same result as ``verifier.utils.format_vbios_version``: read the field little-endian,
    take its low half then the low byte of its high half, and print those five bytes.
    """
    if len(value) != 8:
        raise EvidenceFormatError(f"VBIOS version field of the GPU report is {len(value)} bytes, not 8")
    digits = value[::-1].hex().upper()
    ordered = digits[8:] + digits[6:8]
    return ".".join(ordered[i : i + 2] for i in range(0, len(ordered), 2))


class _Reader:
    """Reads fields in order and raises EvidenceFormatError naming the field when short."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, size: int, field: str) -> bytes:
        if size < 0 or self._pos + size > len(self._data):
            raise EvidenceFormatError(
                f"{self._what} ends inside field {field!r} (needs {size} bytes at offset {self._pos}, "
                f"has {len(self._data) - self._pos})"
            )
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def le(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "little")

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos


def parse_attestation_report(data: bytes, *, signature_size: int = HOPPER_SIGNATURE_SIZE) -> SpdmReport:
    """Parse ``data`` strictly; raise :class:`~attestation.EvidenceFormatError` on any defect."""
    if not isinstance(data, bytes):
        raise EvidenceFormatError("GPU attestation report must be bytes")
    if len(data) > MAX_REPORT_SIZE:
        raise EvidenceFormatError(f"GPU attestation report is {len(data)} bytes, more than {MAX_REPORT_SIZE}")
    request = _Reader(data[:_REQUEST_SIZE], "SPDM GET_MEASUREMENTS request")
    version = request.u8("SPDMVersion")
    if version != _SPDM_VERSION_1_1:
        raise EvidenceFormatError(f"GPU report SPDM version is 0x{version:02x}, expected 0x11 (SPDM 1.1)")
    if request.u8("RequestResponseCode") != _GET_MEASUREMENTS:
        raise EvidenceFormatError("GPU report does not start with an SPDM GET_MEASUREMENTS request")
    if not request.u8("Param1") & 0x01:
        raise EvidenceFormatError("GPU report's GET_MEASUREMENTS request did not ask for a signature")
    request.u8("Param2")
    request_nonce = request.take(NONCE_SIZE, "Nonce")
    request.u8("SlotIDParam")

    response = _Reader(data[_REQUEST_SIZE:], "SPDM MEASUREMENTS response")
    if response.u8("SPDMVersion") != version:
        raise EvidenceFormatError("GPU report's SPDM response version differs from its request's")
    if response.u8("RequestResponseCode") != _MEASUREMENTS:
        raise EvidenceFormatError("GPU report's SPDM response is not a MEASUREMENTS response")
    response.u8("Param1")
    response.u8("Param2")
    block_count = response.u8("NumberOfBlocks")
    record_length = response.le(3, "MeasurementRecordLength")
    measurements = _parse_record(response.take(record_length, "MeasurementRecord"), block_count)
    responder_nonce = response.take(NONCE_SIZE, "Nonce")
    opaque_length = response.le(2, "OpaqueLength")
    opaque = _parse_opaque(response.take(opaque_length, "OpaqueData"))
    signature = response.take(signature_size, "Signature")
    if response.remaining:
        raise EvidenceFormatError(f"GPU report has {response.remaining} bytes after its signature")
    return SpdmReport(
        raw=data,
        spdm_version=version,
        request_nonce=request_nonce,
        responder_nonce=responder_nonce,
        measurements=MappingProxyType(measurements),
        opaque=MappingProxyType(opaque),
        signature=signature,
    )


def _parse_record(record: bytes, block_count: int) -> dict[int, bytes]:
    # Written out rather than through _Reader: 64 blocks per report, and this is the hot loop.
    if block_count == 0:
        raise EvidenceFormatError("GPU report carries no measurement blocks")
    blocks: dict[int, bytes] = {}
    pos, end = 0, len(record)
    for _ in range(block_count):
        if pos + 7 > end:
            raise EvidenceFormatError("SPDM measurement record ends inside a block header")
        index, spec = record[pos], record[pos + 1]
        size = record[pos + 2] | record[pos + 3] << 8
        value_size = record[pos + 5] | record[pos + 6] << 8
        if spec != _DMTF_MEASUREMENT_SPEC:
            raise EvidenceFormatError(f"GPU measurement block {index} is not in DMTF format")
        if size != value_size + 3 or pos + 4 + size > end:
            raise EvidenceFormatError(f"GPU measurement block {index} has inconsistent sizes")
        if index in blocks:
            raise EvidenceFormatError(f"GPU report has measurement block {index} twice")
        blocks[index] = record[pos + 7 : pos + 4 + size]
        pos += 4 + size
    if pos != end:
        raise EvidenceFormatError("GPU measurement record is longer than its blocks")
    return blocks


def _parse_opaque(opaque: bytes) -> dict[int, bytes]:
    reader = _Reader(opaque, "SPDM opaque data")
    fields: dict[int, bytes] = {}
    while reader.remaining:
        field_type = reader.le(2, "DataType")
        value = reader.take(reader.le(2, "DataSize"), f"opaque field {field_type}")
        # Two copies of one field would let a reader and a verifier disagree on which counts.
        if field_type in fields:
            raise EvidenceFormatError(f"GPU report has opaque field {field_type} twice")
        fields[field_type] = value
    return fields

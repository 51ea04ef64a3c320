"""The Confidential Containers attestation agent's evidence documents, back to raw evidence.

The attestation agent (confidential-containers/guest-components) answers
``GET /aa/evidence`` with a JSON document of its own, not with the TEE's raw report:

SEV-SNP (``attester/src/snp``)::

    {"attestation_report": <sev crate AttestationReport, serde field by field>,
     "cert_chain": [{"cert_type": "VCEK" | "VLEK" | "ASK" | "ARK" | "CRL" | {"OTHER": "<uuid>"},
                     "data": [<byte>, ...]}, ...] | null}

The report's fields are those of the ``sev`` crate (6.x and 7.x serialise alike): integers,
byte arrays as JSON arrays of numbers, each TCB_VERSION as ``{"fmc", "bootloader", "tee",
"snp", "microcode"}`` (``fmc`` is a number exactly when the crate read the Turin layout,
null for Milan/Genoa), the firmware versions as ``{"major", "minor", "build"}``, the
signature as ``{"r": [72 bytes], "s": [72 bytes]}``. The crate drops the report's reserved
bytes and the TCB's reserved bytes, which the ABI defines as zero; :func:`snp_report_from_agent`
writes the 1184-byte ATTESTATION_REPORT back with them zero, following the crate's own
``write_bytes`` layout. A report whose reserved bytes were not zero cannot be rebuilt
exactly: its signature then fails at the client (fail closed, never a wrong acceptance).

TDX (``attester/src/tdx``)::

    {"cc_eventlog": "<base64>" | null, "quote": "<base64 of the DCAP quote>"}

FedSeal appraises the quote's MRTD and RTMRs directly, so the event log is type-checked
and not shipped.

Parsing is strict: every field is type- and range-checked, an unknown or missing field is
refused, and each refusal is a :class:`CocoEvidenceFormatError` naming the field. A whole
document of the other TEE is a :class:`CocoTeeMismatchError`, and the agent's sample
evidence (``{"svn", "report_data"}``, what it answers when it finds no TEE) a
:class:`CocoSampleEvidenceError`.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping

from .._encoding import DecodeError, b64decode_strict, json_type, load_json_object
from ._errors import CocoEvidenceFormatError, CocoSampleEvidenceError, CocoTeeMismatchError
from ._snp import SNP_REPORT_SIZE, SUPPORTED_SNP_REPORT_VERSIONS, SnpCertGuid, encode_snp_cert_table

__all__ = ["snp_payload_from_agent", "snp_report_from_agent", "tdx_quote_from_agent"]

# cert_type names of the sev crate's CertType enum, as GUIDs of the GHCB certificate table.
_CERT_TYPES = {
    "VCEK": SnpCertGuid.VCEK.value,
    "VLEK": SnpCertGuid.VLEK.value,
    "ASK": SnpCertGuid.ASK.value,
    "ARK": SnpCertGuid.ARK.value,
    "CRL": uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"),
}
_MAX_CERTIFICATES = 64
_MAX_CERTIFICATE_SIZE = 64 * 1024
_TCB_FIELDS = frozenset({"fmc", "bootloader", "tee", "snp", "microcode"})
_VERSION_FIELDS = frozenset({"major", "minor", "build"})
_REPORT_FIELDS = frozenset(
    {
        "version",
        "guest_svn",
        "policy",
        "family_id",
        "image_id",
        "vmpl",
        "sig_algo",
        "current_tcb",
        "plat_info",
        "key_info",
        "report_data",
        "measurement",
        "host_data",
        "id_key_digest",
        "author_key_digest",
        "report_id",
        "report_id_ma",
        "reported_tcb",
        "cpuid_fam_id",
        "cpuid_mod_id",
        "cpuid_step",
        "chip_id",
        "committed_tcb",
        "current",
        "committed",
        "launch_tcb",
        "signature",
    }
)
# Added by sev 5.x for version 5 reports; older crates omit them, newer write null before v5.
_MIT_FIELDS = frozenset({"launch_mit_vector", "current_mit_vector"})
# The top-level fields of each attester's document: the agent's evidence of another TEE
# than asked for, or its sample attester's (``attester/src/sample``, the fallback when it
# detects no TEE), is refused by what it is.
_SNP_DOCUMENT = frozenset({"attestation_report", "cert_chain"})
_TDX_DOCUMENT = frozenset({"cc_eventlog", "quote"})
_SAMPLE = "sample"
_SHAPES = {
    _SNP_DOCUMENT: "amd-sev-snp",
    _TDX_DOCUMENT: "intel-tdx",
    frozenset({"svn", "report_data"}): _SAMPLE,
}


def _fail(field: str, message: str) -> CocoEvidenceFormatError:
    return CocoEvidenceFormatError(f"attestation agent evidence: {field} {message}")


def _object(
    value: object, field: str, required: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _fail(field, f"must be an object, got {json_type(value)}")
    missing = sorted(required - value.keys())
    if missing:
        raise _fail(f"{field}.{missing[0]}", "is missing")
    unknown = sorted(value.keys() - required - optional)
    if unknown:
        raise _fail(f"{field}.{unknown[0]}", "is not a field this collector knows (a newer agent?)")
    return value


def _uint(value: object, field: str, bits: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise _fail(field, f"must be an unsigned {bits}-bit integer, got {json_type(value)}")
    return value


def _bytes(value: object, field: str, size: int) -> bytes:
    if not isinstance(value, list) or len(value) != size:
        found = f"{len(value)} items" if isinstance(value, list) else json_type(value)
        raise _fail(field, f"must be an array of {size} bytes, got {found}")
    return bytes(_uint(item, f"{field}[{index}]", 8) for index, item in enumerate(value))


def _tcb(value: object, field: str) -> tuple[bytes, bool]:
    """TCB_VERSION bytes and whether they use the Turin layout (the crate's fmc is set)."""
    tcb = _object(value, field, _TCB_FIELDS)
    bootloader, tee, snp, microcode = (
        _uint(tcb[name], f"{field}.{name}", 8) for name in ("bootloader", "tee", "snp", "microcode")
    )
    if tcb["fmc"] is None:
        return bytes([bootloader, tee, 0, 0, 0, 0, snp, microcode]), False
    fmc = _uint(tcb["fmc"], f"{field}.fmc", 8)
    return bytes([fmc, bootloader, tee, snp, 0, 0, 0, microcode]), True


def _firmware_version(value: object, field: str) -> bytes:
    version = _object(value, field, _VERSION_FIELDS)
    # The ABI stores build, minor, major (then a reserved byte).
    return bytes(_uint(version[name], f"{field}.{name}", 8) for name in ("build", "minor", "major")) + b"\0"


def _optional_uint(report: Mapping[str, object], name: str, bits: int, present: bool) -> int | None:
    """A field the crate writes only for some report versions: a number then, else null or absent."""
    value = report.get(name)
    field = f"attestation_report.{name}"
    if present:
        if value is None:
            raise _fail(field, "is missing (the report version has it)")
        return _uint(value, field, bits)
    if value is not None:
        raise _fail(field, "must be null for this report version")
    return None


def snp_report_from_agent(value: object) -> bytes:
    """The 1184-byte ATTESTATION_REPORT that the agent's ``attestation_report`` object describes."""
    field = "attestation_report"
    report = _object(value, field, _REPORT_FIELDS, _MIT_FIELDS)

    def u(name: str, bits: int) -> int:
        return _uint(report[name], f"{field}.{name}", bits)

    def b(name: str, size: int) -> bytes:
        return _bytes(report[name], f"{field}.{name}", size)

    version = u("version", 32)
    if version not in SUPPORTED_SNP_REPORT_VERSIONS:
        raise _fail(
            f"{field}.version", f"is {version}; FedSeal verifies versions {SUPPORTED_SNP_REPORT_VERSIONS}"
        )
    tcbs = {
        name: _tcb(report[name], f"{field}.{name}")
        for name in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")
    }
    if len({turin for _, turin in tcbs.values()}) != 1:
        raise _fail(field, "mixes Turin and Milan/Genoa TCB layouts (fmc set in some TCBs only)")
    cpuid = [
        _optional_uint(report, name, 8, version >= 3)
        for name in ("cpuid_fam_id", "cpuid_mod_id", "cpuid_step")
    ]
    mit = [
        _optional_uint(report, name, 64, version >= 5) for name in ("launch_mit_vector", "current_mit_vector")
    ]
    signature = _object(report["signature"], f"{field}.signature", frozenset({"r", "s"}))

    raw = bytearray(SNP_REPORT_SIZE)
    struct.pack_into("<IIQ", raw, 0x00, version, u("guest_svn", 32), u("policy", 64))
    raw[0x10:0x20] = b("family_id", 16)
    raw[0x20:0x30] = b("image_id", 16)
    struct.pack_into("<II", raw, 0x30, u("vmpl", 32), u("sig_algo", 32))
    raw[0x38:0x40] = tcbs["current_tcb"][0]
    struct.pack_into("<QI", raw, 0x40, u("plat_info", 64), u("key_info", 32))
    raw[0x50:0x90] = b("report_data", 64)
    raw[0x90:0xC0] = b("measurement", 48)
    raw[0xC0:0xE0] = b("host_data", 32)
    raw[0xE0:0x110] = b("id_key_digest", 48)
    raw[0x110:0x140] = b("author_key_digest", 48)
    raw[0x140:0x160] = b("report_id", 32)
    raw[0x160:0x180] = b("report_id_ma", 32)
    raw[0x180:0x188] = tcbs["reported_tcb"][0]
    if version >= 3:
        raw[0x188:0x18B] = bytes(c or 0 for c in cpuid)
    raw[0x1A0:0x1E0] = b("chip_id", 64)
    raw[0x1E0:0x1E8] = tcbs["committed_tcb"][0]
    raw[0x1E8:0x1EC] = _firmware_version(report["current"], f"{field}.current")
    raw[0x1EC:0x1F0] = _firmware_version(report["committed"], f"{field}.committed")
    raw[0x1F0:0x1F8] = tcbs["launch_tcb"][0]
    if version >= 5:
        struct.pack_into("<QQ", raw, 0x1F8, mit[0] or 0, mit[1] or 0)
    raw[0x2A0:0x2E8] = _bytes(signature["r"], f"{field}.signature.r", 72)
    raw[0x2E8:0x330] = _bytes(signature["s"], f"{field}.signature.s", 72)
    return bytes(raw)


def _cert_chain(value: object) -> list[tuple[uuid.UUID, bytes]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > _MAX_CERTIFICATES:
        found = f"{len(value)} entries" if isinstance(value, list) else json_type(value)
        raise _fail(
            "cert_chain", f"must be null or an array of at most {_MAX_CERTIFICATES} entries, got {found}"
        )
    table: dict[uuid.UUID, bytes] = {}
    for index, item in enumerate(value):
        field = f"cert_chain[{index}]"
        entry = _object(item, field, frozenset({"cert_type", "data"}))
        cert_type = entry["cert_type"]
        if isinstance(cert_type, str) and cert_type in _CERT_TYPES:
            guid = _CERT_TYPES[cert_type]
        elif (
            isinstance(cert_type, dict)
            and cert_type.keys() == {"OTHER"}
            and isinstance(cert_type["OTHER"], str)
        ):
            try:
                guid = uuid.UUID(cert_type["OTHER"])
            except ValueError:
                raise _fail(f"{field}.cert_type.OTHER", "is not a UUID") from None
        else:
            known = ", ".join(sorted(_CERT_TYPES))
            raise _fail(f"{field}.cert_type", f'must be one of {known} or {{"OTHER": <uuid>}}')
        data = entry["data"]
        if not isinstance(data, list) or not 0 < len(data) <= _MAX_CERTIFICATE_SIZE:
            raise _fail(f"{field}.data", f"must be an array of 1 to {_MAX_CERTIFICATE_SIZE} bytes")
        if guid in table:
            raise _fail(f"{field}.cert_type", f"repeats {cert_type!r}")
        table[guid] = _bytes(data, f"{field}.data", len(data))
    return list(table.items())


def _document(body: bytes, required: frozenset[str]) -> dict[str, object]:
    try:
        document = load_json_object(body)
    except DecodeError as exc:
        raise _fail("document", str(exc)) from None
    # A whole document of another attester is named as such, not as its first odd field.
    shape = _SHAPES.get(frozenset(document))
    if shape == _SAMPLE:
        raise CocoSampleEvidenceError(
            "attestation agent evidence is its insecure sample evidence ({svn, report_data}): "
            "the agent found no TEE in the pod VM",
            found=_SAMPLE,
        )
    expected = _SHAPES[required]
    if shape is not None and shape != expected:
        raise CocoTeeMismatchError(
            f"attestation agent evidence is {shape} evidence, not the {expected} evidence asked for",
            found=shape,
        )
    return _object(document, "document", required)


def snp_payload_from_agent(body: bytes) -> bytes:
    """An ``amd-sev-snp`` evidence payload (the report, then the certificate table if the
    agent sent certificates) from the agent's SEV-SNP evidence document."""
    document = _document(body, _SNP_DOCUMENT)
    report = snp_report_from_agent(document["attestation_report"])
    table = _cert_chain(document["cert_chain"])
    return report + encode_snp_cert_table(table) if table else report


def tdx_quote_from_agent(body: bytes) -> bytes:
    """The raw DCAP quote from the agent's TDX evidence document."""
    document = _document(body, _TDX_DOCUMENT)
    eventlog = document["cc_eventlog"]
    if eventlog is not None and not isinstance(eventlog, str):
        raise _fail("cc_eventlog", f"must be a base64 string or null, got {json_type(eventlog)}")
    try:
        quote = b64decode_strict(document["quote"])
    except DecodeError as exc:
        raise _fail("quote", str(exc)) from None
    if not quote:
        raise _fail("quote", "is empty")
    return quote

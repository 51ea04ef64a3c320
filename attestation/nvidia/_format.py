"""NVIDIA GPU evidence payload (``fedseal-nvidia-gpu-evidence/v1``) and the SPDM nonce.

The payload of an ``nvidia-gpu`` evidence item is one RFC 8785 canonical JSON object::

    {
      "format": "fedseal-nvidia-gpu-evidence/v1",
      "gpus": [                                   # 1 to 16 entries, one per GPU, all verified
        {
          "architecture":       "HOPPER",
          "attestation_report": "<base64: SPDM GET_MEASUREMENTS request + signed response>",
          "cc_mode":            "on" | "off" | "devtools" | "ppcie" | "unknown",
          "certificate_chain":  "<base64 of the PEM text NVML returns: leaf first>",
          "driver_version":     "550.90.07",
          "vbios_version":      "96.00.9F.00.01"           # optional: omitted when unknown
        }
      ],
      "nras_jwks":      "<base64 of the NRAS key set, as NRAS served it>",  # optional
      "nras_token":     "<NRAS detached EAT, its JSON text>",          # optional
      "ocsp_responses": [ {"der": "<base64 DER OCSP response>"} ],      # optional
      "rims":           [ {"id": "NV_GPU_DRIVER_GH100_550.90.07",
                           "xml": "<base64 of the signed RIM XML>"} ]  # optional
    }

* Optional keys are omitted when empty, never ``null`` or ``[]``: one evidence, one encoding.
* ``attestation_report`` and ``certificate_chain`` are what NVML (or ``nvattest``) returns,
  unchanged; the device-supplied root at the end of the chain is carried but never trusted.
* ``driver_version`` / ``vbios_version`` / ``architecture`` / ``cc_mode`` are what the
  collector read from NVML. The verifier takes versions from the signed report and refuses
  a payload whose declared versions differ from it.
* Stapled ``rims`` and ``ocsp_responses`` let a client verify offline; each is verified like
  a fetched one (signature, chain to the pinned NVIDIA root, validity at the verification
  time), so stapling can make verification fail but never pass.
* ``nras_token`` is NVIDIA NRAS's answer to this evidence, and ``nras_jwks`` (only beside a
  token) the key set it was verified against, for offline verifiers. The key set is signed
  by nothing a client pins: what a verifier trusts it for is the policy's to say
  (``_policy.py``, ``nras_key_pins``).

The SPDM nonce is :func:`spdm_nonce_for_binding`: the collector puts it into every GPU's
GET_MEASUREMENTS request, and the verifier requires it back. It is the only definition.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .._encoding import DecodeError, b64decode_strict, b64encode, canonical_json, load_json_object
from .._errors import EvidenceFormatError
from ._spdm import parse_attestation_report

__all__ = [
    "NVIDIA_GPU_EVIDENCE_FORMAT",
    "SPDM_NONCE_DOMAIN",
    "CcMode",
    "GpuEvidence",
    "NvidiaGpuEvidence",
    "StapledRim",
    "evidence_from_nvidia_json",
    "parse_nvidia_gpu_payload",
    "spdm_nonce_for_binding",
]

NVIDIA_GPU_EVIDENCE_FORMAT: Final = "fedseal-nvidia-gpu-evidence/v1"
SPDM_NONCE_DOMAIN: Final = b"fedseal/nvidia-spdm-nonce/v1"
MAX_GPUS: Final = 16
MAX_REPORT_BYTES: Final = 0x2000
MAX_CHAIN_BYTES: Final = 0x4000
MAX_RIM_BYTES: Final = 1024 * 1024
MAX_STAPLED_ITEMS: Final = 128
MAX_NRAS_JWKS_BYTES: Final = 64 * 1024
_BINDING_SIZE: Final = 32

_TOP_FIELDS = frozenset({"format", "gpus", "nras_jwks", "nras_token", "ocsp_responses", "rims"})
_TOP_REQUIRED = frozenset({"format", "gpus"})
_GPU_FIELDS = frozenset(
    {"architecture", "attestation_report", "cc_mode", "certificate_chain", "driver_version", "vbios_version"}
)
_GPU_REQUIRED = _GPU_FIELDS - {"vbios_version"}


def spdm_nonce_for_binding(binding: bytes) -> bytes:
    """The 32-byte SPDM nonce for a binding: SHA-256(``fedseal/nvidia-spdm-nonce/v1`` || binding).

    Domain-separated so that a GPU report can never be mistaken for a signature over any
    other FedSeal value, and fixed-length input so that the concatenation is unambiguous.
    """
    if not isinstance(binding, bytes) or len(binding) != _BINDING_SIZE:
        raise ValueError(f"binding must be {_BINDING_SIZE} bytes")
    return hashlib.sha256(SPDM_NONCE_DOMAIN + binding).digest()


class CcMode(enum.Enum):
    """The confidential-computing mode NVML reported for the system when evidence was collected."""

    ON = "on"
    OFF = "off"
    #: CC with developer tools enabled: memory can be inspected. Not confidential.
    DEVTOOLS = "devtools"
    #: Protected PCIe (multi-GPU) mode.
    PPCIE = "ppcie"
    #: Evidence converted from a source that does not say (e.g. a saved NVIDIA JSON file).
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class GpuEvidence:
    """One GPU's evidence: its attestation report and device certificate chain, as collected."""

    architecture: str
    attestation_report: bytes
    certificate_chain: bytes
    driver_version: str
    cc_mode: CcMode
    vbios_version: str | None = None

    def __post_init__(self) -> None:
        for name in ("architecture", "driver_version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > 64:
                raise EvidenceFormatError(f"GPU {name} must be a non-empty string of at most 64 characters")
        if self.vbios_version is not None and (
            not isinstance(self.vbios_version, str) or not self.vbios_version or len(self.vbios_version) > 64
        ):
            raise EvidenceFormatError("GPU vbios_version must be a non-empty string or None")
        if not isinstance(self.cc_mode, CcMode):
            raise EvidenceFormatError("GPU cc_mode must be a CcMode")
        for name, limit in (("attestation_report", MAX_REPORT_BYTES), ("certificate_chain", MAX_CHAIN_BYTES)):
            value = getattr(self, name)
            if not isinstance(value, bytes) or not value or len(value) > limit:
                raise EvidenceFormatError(f"GPU {name} must be 1 to {limit} bytes")

    def to_json(self) -> dict[str, str]:
        document = {
            "architecture": self.architecture,
            "attestation_report": b64encode(self.attestation_report),
            "cc_mode": self.cc_mode.value,
            "certificate_chain": b64encode(self.certificate_chain),
            "driver_version": self.driver_version,
        }
        if self.vbios_version is not None:
            document["vbios_version"] = self.vbios_version
        return document


@dataclass(frozen=True)
class StapledRim:
    """A RIM the collector attached, under its RIM service file id (``NV_GPU_DRIVER_GH100_550.90.07``)."""

    id: str
    xml: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not 0 < len(self.id) <= 128:
            raise EvidenceFormatError("stapled RIM id must be a string of 1 to 128 characters")
        if not isinstance(self.xml, bytes) or not 0 < len(self.xml) <= MAX_RIM_BYTES:
            raise EvidenceFormatError(f"stapled RIM must be 1 to {MAX_RIM_BYTES} bytes")


@dataclass(frozen=True)
class NvidiaGpuEvidence:
    """The decoded ``nvidia-gpu`` payload (see the module docstring)."""

    gpus: tuple[GpuEvidence, ...]
    rims: tuple[StapledRim, ...] = ()
    ocsp_responses: tuple[bytes, ...] = ()
    nras_token: str | None = None
    #: The NRAS key set (JWKS document bytes) stapled beside ``nras_token``.
    nras_jwks: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.gpus, tuple) or not 1 <= len(self.gpus) <= MAX_GPUS:
            raise EvidenceFormatError(f"NVIDIA GPU evidence must describe 1 to {MAX_GPUS} GPUs")
        if not all(isinstance(g, GpuEvidence) for g in self.gpus):
            raise EvidenceFormatError("gpus must be GpuEvidence items")
        if not isinstance(self.rims, tuple) or not all(isinstance(r, StapledRim) for r in self.rims):
            raise EvidenceFormatError("rims must be a tuple of StapledRim")
        if len({r.id for r in self.rims}) != len(self.rims):
            raise EvidenceFormatError("two stapled RIMs have the same id")
        if not isinstance(self.ocsp_responses, tuple) or not all(
            isinstance(r, bytes) and 0 < len(r) <= MAX_CHAIN_BYTES for r in self.ocsp_responses
        ):
            raise EvidenceFormatError("ocsp_responses must be non-empty DER byte strings")
        if len(self.rims) > MAX_STAPLED_ITEMS or len(self.ocsp_responses) > MAX_STAPLED_ITEMS:
            raise EvidenceFormatError(f"at most {MAX_STAPLED_ITEMS} stapled RIMs and OCSP responses each")
        if self.nras_token is not None and (not isinstance(self.nras_token, str) or not self.nras_token):
            raise EvidenceFormatError("nras_token must be a non-empty string or None")
        if self.nras_jwks is not None:
            if not isinstance(self.nras_jwks, bytes) or not 0 < len(self.nras_jwks) <= MAX_NRAS_JWKS_BYTES:
                raise EvidenceFormatError(f"nras_jwks must be 1 to {MAX_NRAS_JWKS_BYTES} bytes or None")
            if self.nras_token is None:
                raise EvidenceFormatError("nras_jwks is stapled only beside an nras_token")

    def to_payload(self) -> bytes:
        """The canonical payload bytes (what goes into ``Evidence.payload``)."""
        document: dict[str, object] = {
            "format": NVIDIA_GPU_EVIDENCE_FORMAT,
            "gpus": [gpu.to_json() for gpu in self.gpus],
        }
        if self.rims:
            document["rims"] = [{"id": r.id, "xml": b64encode(r.xml)} for r in self.rims]
        if self.ocsp_responses:
            document["ocsp_responses"] = [{"der": b64encode(r)} for r in self.ocsp_responses]
        if self.nras_token is not None:
            document["nras_token"] = self.nras_token
        if self.nras_jwks is not None:
            document["nras_jwks"] = b64encode(self.nras_jwks)
        return canonical_json(document)


def parse_nvidia_gpu_payload(payload: bytes, *, field: str = "payload") -> NvidiaGpuEvidence:
    """Decode a payload strictly; raise :class:`EvidenceFormatError` naming the field."""
    try:
        document = load_json_object(payload)
    except DecodeError as exc:
        raise EvidenceFormatError(f"{field} {exc}", field=field) from exc
    _check_keys(document, _TOP_FIELDS, _TOP_REQUIRED, field)
    if document["format"] != NVIDIA_GPU_EVIDENCE_FORMAT:
        raise EvidenceFormatError(
            f"{field}.format must be {NVIDIA_GPU_EVIDENCE_FORMAT!r} (a newer aggregator needs a newer "
            "FedSeal)",
            field=f"{field}.format",
        )
    gpus_value = document["gpus"]
    if not isinstance(gpus_value, list) or not 1 <= len(gpus_value) <= MAX_GPUS:
        raise EvidenceFormatError(
            f"{field}.gpus must be an array of 1 to {MAX_GPUS} GPUs", field=f"{field}.gpus"
        )
    gpus = tuple(_parse_gpu(entry, f"{field}.gpus[{i}]") for i, entry in enumerate(gpus_value))
    rims = tuple(
        StapledRim(id=_string(entry, "id", where), xml=_b64(entry, "xml", where))
        for where, entry in _objects(document.get("rims"), f"{field}.rims", {"id", "xml"})
    )
    ocsp = tuple(
        _b64(entry, "der", where)
        for where, entry in _objects(document.get("ocsp_responses"), f"{field}.ocsp_responses", {"der"})
    )
    token = document.get("nras_token")
    if token is not None and not isinstance(token, str):
        raise EvidenceFormatError(f"{field}.nras_token must be a string", field=f"{field}.nras_token")
    jwks = _b64(document, "nras_jwks", field) if "nras_jwks" in document else None
    try:
        evidence = NvidiaGpuEvidence(
            gpus=gpus, rims=rims, ocsp_responses=ocsp, nras_token=token, nras_jwks=jwks
        )
    except EvidenceFormatError as exc:
        raise EvidenceFormatError(f"{field}: {exc}", field=field) from None
    if evidence.to_payload() != payload:
        raise EvidenceFormatError(
            f"{field} is not in RFC 8785 canonical JSON form (or holds an empty optional array)", field=field
        )
    return evidence


def evidence_from_nvidia_json(
    entries: Sequence[Mapping[str, object]], *, cc_mode: CcMode, rims: Sequence[StapledRim] = ()
) -> NvidiaGpuEvidence:
    """Convert NVIDIA's serialized GPU evidence (``nvattest collect-evidence`` output, the
    SDK's remote-evidence list, NVIDIA's sample files) into our payload.

    Each entry has ``certificate`` (base64 of the PEM chain), ``evidence`` (base64 report)
    and ``arch``, and optionally ``driver_version`` / ``vbios_version``. Where the driver
    version is absent it is read from the (not yet verified) report: the verifier checks
    the declared value against the signed one anyway.
    """
    gpus: list[GpuEvidence] = []
    for index, entry in enumerate(entries):
        where = f"GPU evidence entry {index}"
        if not isinstance(entry, Mapping):
            raise EvidenceFormatError(f"{where} must be a JSON object")
        report = _std_b64(entry.get("evidence"), f"{where}.evidence")
        chain = _std_b64(entry.get("certificate"), f"{where}.certificate")
        arch = entry.get("arch")
        if not isinstance(arch, str):
            raise EvidenceFormatError(f"{where}.arch must be a string")
        driver = entry.get("driver_version")
        vbios = entry.get("vbios_version")
        if driver is None:
            driver = parse_attestation_report(report).driver_version
        if not isinstance(driver, str) or (vbios is not None and not isinstance(vbios, str)):
            raise EvidenceFormatError(f"{where}: driver_version / vbios_version must be strings")
        gpus.append(
            GpuEvidence(
                architecture=arch,
                attestation_report=report,
                certificate_chain=chain,
                driver_version=driver,
                cc_mode=cc_mode,
                vbios_version=vbios,
            )
        )
    return NvidiaGpuEvidence(gpus=tuple(gpus), rims=tuple(rims))


def _std_b64(value: object, where: str) -> bytes:
    # NVIDIA's files use standard padded base64 too; our strict decoder refuses other spellings.
    try:
        return b64decode_strict(value)
    except DecodeError as exc:
        raise EvidenceFormatError(f"{where} {exc}") from exc


def _check_keys(
    document: Mapping[str, object], known: frozenset[str], required: frozenset[str], where: str
) -> None:
    missing = sorted(required - document.keys())
    if missing:
        raise EvidenceFormatError(f"{where} is missing field {missing[0]!r}", field=f"{where}.{missing[0]}")
    unknown = sorted(document.keys() - known)
    if unknown:
        raise EvidenceFormatError(f"{where} has unknown field {unknown[0]!r}", field=f"{where}.{unknown[0]}")


def _parse_gpu(entry: object, where: str) -> GpuEvidence:
    if not isinstance(entry, dict):
        raise EvidenceFormatError(f"{where} must be a JSON object", field=where)
    _check_keys(entry, _GPU_FIELDS, _GPU_REQUIRED, where)
    try:
        cc_mode = CcMode(entry["cc_mode"])
    except (ValueError, TypeError):
        known = ", ".join(m.value for m in CcMode)
        raise EvidenceFormatError(
            f"{where}.cc_mode must be one of {known}", field=f"{where}.cc_mode"
        ) from None
    vbios = entry.get("vbios_version")
    try:
        return GpuEvidence(
            architecture=_string(entry, "architecture", where),
            attestation_report=_b64(entry, "attestation_report", where),
            certificate_chain=_b64(entry, "certificate_chain", where),
            driver_version=_string(entry, "driver_version", where),
            cc_mode=cc_mode,
            vbios_version=None if vbios is None else _string(entry, "vbios_version", where),
        )
    except EvidenceFormatError as exc:
        raise EvidenceFormatError(f"{where}: {exc}", field=where) from None


def _objects(value: object, where: str, keys: set[str]) -> list[tuple[str, dict[str, object]]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise EvidenceFormatError(f"{where} must be an array", field=where)
    result = []
    for index, entry in enumerate(value):
        item_where = f"{where}[{index}]"
        if not isinstance(entry, dict):
            raise EvidenceFormatError(f"{item_where} must be a JSON object", field=item_where)
        _check_keys(entry, frozenset(keys), frozenset(keys), item_where)
        result.append((item_where, entry))
    return result


def _string(entry: Mapping[str, object], key: str, where: str) -> str:
    value = entry[key]
    if not isinstance(value, str):
        raise EvidenceFormatError(f"{where}.{key} must be a string", field=f"{where}.{key}")
    return value


def _b64(entry: Mapping[str, object], key: str, where: str) -> bytes:
    try:
        return b64decode_strict(entry[key])
    except DecodeError as exc:
        raise EvidenceFormatError(f"{where}.{key} {exc}", field=f"{where}.{key}") from exc

"""The ``nvidia_gpu`` section of a policy: what a client requires of NVIDIA GPU evidence.

::

    "nvidia_gpu": {
      "allowed_architectures": ["HOPPER"],
      "min_driver_version": "550",
      "min_vbios_version": "96.00.5E.00.00",
      "nras": "if-present",
      "ocsp": "require",
      "require_cc_mode": true,
      "require_rim_match": true
    }

Every key is optional; an absent key (or an absent section) takes the strict default shown
above (no version minimum). Unknown keys are refused, as everywhere in a policy.

``nras`` says what to do about an NVIDIA NRAS token (NVIDIA's own appraisal of the same
evidence, see ``_nras.py``): ``"if-present"`` verifies one when the evidence carries it
(a token that fails is a refusal, an absent one is not), ``"required"`` refuses evidence
without a valid one. NRAS's key set is signed by nothing FedSeal pins, so a token counts
for ``"required"`` only when its signing key is trusted: listed in ``nras_key_pins``
(hex SHA-256 of the key's DER SubjectPublicKeyInfo; with pins, no other key is accepted
in any mode), or, without pins, found in the key set the verifier fetched from NRAS
itself (online). A key set the aggregator stapled is the aggregator's word; under
``"if-present"`` a token is still checked against it (it can make verification fail,
never pass), under ``"required"`` it needs pins.

``roots`` (``{"device_identity_ca": "<PEM>", "rim_signing_ca": "<PEM>"}``, either key
optional) REPLACES the NVIDIA roots FedSeal pins. It exists for a private test PKI
standing in for NVIDIA's; a production policy never carries it, and every check row names
the root it used.

There is no "maximum evidence age": a GPU report carries no timestamp. Its freshness comes
from the SPDM nonce, which is derived from the client's fresh challenge; OCSP responses are
held to their own ``nextUpdate``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from cryptography import x509

from .._encoding import json_type
from .._errors import PolicyError
from ._pki import TrustAnchors, pinned_trust_anchors

__all__ = ["GpuArchitecture", "NrasMode", "NvidiaGpuPolicy", "OcspMode", "parse_version"]


class GpuArchitecture(enum.Enum):
    """GPU architectures this verifier understands (NVIDIA's names)."""

    HOPPER = "HOPPER"


class OcspMode(enum.Enum):
    """What to do about certificate revocation (GPU device chain and RIM signing chains)."""

    #: Every certificate must have a good, fresh, validly signed OCSP answer.
    REQUIRE = "require"
    #: As REQUIRE, except that an OCSP answer that cannot be obtained (offline, service
    #: down) is tolerated. A revoked or invalid answer still fails.
    ALLOW_UNAVAILABLE = "allow-unavailable"
    #: No revocation check at all. Development only: a revoked GPU would pass.
    OFF = "off"


class NrasMode(enum.Enum):
    """Whether GPU evidence must carry an NVIDIA NRAS token (see the module docstring)."""

    #: Verify a token the evidence carries; evidence without one passes on the local checks.
    IF_PRESENT = "if-present"
    #: Refuse evidence without a token that verifies under a trusted NRAS key.
    REQUIRED = "required"


_KEYS = frozenset(
    {
        "allowed_architectures",
        "min_driver_version",
        "min_vbios_version",
        "nras",
        "nras_key_pins",
        "ocsp",
        "require_cc_mode",
        "require_rim_match",
        "roots",
    }
)
_ROOT_KEYS = frozenset({"device_identity_ca", "rim_signing_ca"})
_DRIVER_VERSION = re.compile(r"[0-9]{1,5}(\.[0-9]{1,5}){0,3}")
_VBIOS_VERSION = re.compile(r"[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){0,4}")
_KEY_PIN = re.compile(r"[0-9a-f]{64}")
_MAX_KEY_PINS = 32


def parse_version(text: str, *, hexadecimal: bool) -> tuple[int, ...]:
    """Parse a dotted driver (decimal) or VBIOS (hex) version into comparable numbers.

    Raises ValueError for anything else. Versions compare component by component, a
    missing component counting as 0 (``"550"`` == ``"550.0.0"``).
    """
    pattern = _VBIOS_VERSION if hexadecimal else _DRIVER_VERSION
    if not isinstance(text, str) or not pattern.fullmatch(text):
        kind = (
            "VBIOS version (hex pairs, e.g. 96.00.9F.00.01)"
            if hexadecimal
            else "driver version (e.g. 550.90.07)"
        )
        raise ValueError(f"{text!r} is not a {kind}")
    return tuple(int(part, 16 if hexadecimal else 10) for part in text.split("."))


def version_at_least(found: tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    """``found >= minimum``, padding the shorter with zeros."""
    width = max(len(found), len(minimum))
    return found + (0,) * (width - len(found)) >= minimum + (0,) * (width - len(minimum))


@dataclass(frozen=True)
class NvidiaGpuPolicy:
    """Appraisal settings for ``nvidia-gpu`` evidence (see the module docstring).

    ``require_cc_mode`` checks the CC mode the collector declares (it read it from NVML
    inside the confidential VM). That declaration is as trustworthy as the code that made
    it, which is what the CPU TEE evidence of the same bundle vouches for; the GPU's
    signed report itself does not carry the CC mode.
    """

    allowed_architectures: tuple[GpuArchitecture, ...] = (GpuArchitecture.HOPPER,)
    min_driver_version: str | None = None
    min_vbios_version: str | None = None
    ocsp: OcspMode = OcspMode.REQUIRE
    require_cc_mode: bool = True
    require_rim_match: bool = True
    nras: NrasMode = NrasMode.IF_PRESENT
    #: SHA-256 digests of the DER SubjectPublicKeyInfo of the NRAS keys trusted (empty: none pinned).
    nras_key_pins: frozenset[bytes] = frozenset()
    #: Replacements for the pinned NVIDIA roots (a private test PKI only); None: pinned.
    device_root: x509.Certificate | None = None
    rim_root: x509.Certificate | None = None

    def trust_anchors(self) -> TrustAnchors:
        """The roots GPU evidence must chain to: the pinned NVIDIA ones unless replaced."""
        pinned = pinned_trust_anchors()
        return TrustAnchors(
            device_root=self.device_root if self.device_root is not None else pinned.device_root,
            rim_root=self.rim_root if self.rim_root is not None else pinned.rim_root,
        )

    def __post_init__(self) -> None:
        if not isinstance(self.allowed_architectures, tuple) or not self.allowed_architectures:
            raise PolicyError("nvidia_gpu.allowed_architectures must list at least one architecture")
        if not all(isinstance(a, GpuArchitecture) for a in self.allowed_architectures):
            raise PolicyError("nvidia_gpu.allowed_architectures entries must be GpuArchitecture")
        for name, hexadecimal in (("min_driver_version", False), ("min_vbios_version", True)):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_version(value, hexadecimal=hexadecimal)
                except ValueError as exc:
                    raise PolicyError(f"nvidia_gpu.{name}: {exc}") from None
        if not isinstance(self.ocsp, OcspMode):
            raise PolicyError("nvidia_gpu.ocsp must be an OcspMode")
        if not isinstance(self.nras, NrasMode):
            raise PolicyError("nvidia_gpu.nras must be an NrasMode")
        if not isinstance(self.nras_key_pins, frozenset) or not all(
            isinstance(pin, bytes) and len(pin) == 32 for pin in self.nras_key_pins
        ):
            raise PolicyError("nvidia_gpu.nras_key_pins must be a frozenset of 32-byte SHA-256 digests")
        for name in ("require_cc_mode", "require_rim_match"):
            if not isinstance(getattr(self, name), bool):
                raise PolicyError(f"nvidia_gpu.{name} must be a boolean")
        for name in ("device_root", "rim_root"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), x509.Certificate):
                raise PolicyError(f"nvidia_gpu.{name} must be an X.509 certificate")

    @classmethod
    def from_json_value(cls, value: object, *, where: str) -> NvidiaGpuPolicy:
        """Parse the decoded ``nvidia_gpu`` object; raise PolicyError naming the key."""
        if not isinstance(value, dict):
            raise PolicyError(f"{where}: key 'nvidia_gpu' must be an object, got {json_type(value)}")
        unknown = sorted(value.keys() - _KEYS)
        if unknown:
            raise PolicyError(
                f"{where}: unknown key 'nvidia_gpu.{unknown[0]}' (known: {', '.join(sorted(_KEYS))})"
            )
        fields: dict[str, object] = {}
        if "allowed_architectures" in value:
            fields["allowed_architectures"] = _architectures(value["allowed_architectures"], where)
        for name in ("min_driver_version", "min_vbios_version"):
            if name in value:
                if not isinstance(value[name], str):
                    raise PolicyError(f"{where}: key 'nvidia_gpu.{name}' must be a string")
                fields[name] = value[name]
        if "ocsp" in value:
            try:
                fields["ocsp"] = OcspMode(value["ocsp"])
            except (ValueError, TypeError):
                known = ", ".join(repr(m.value) for m in OcspMode)
                raise PolicyError(f"{where}: key 'nvidia_gpu.ocsp' must be one of {known}") from None
        if "nras" in value:
            try:
                fields["nras"] = NrasMode(value["nras"])
            except (ValueError, TypeError):
                known = ", ".join(repr(m.value) for m in NrasMode)
                raise PolicyError(f"{where}: key 'nvidia_gpu.nras' must be one of {known}") from None
        if "nras_key_pins" in value:
            fields["nras_key_pins"] = _key_pins(value["nras_key_pins"], where)
        for name in ("require_cc_mode", "require_rim_match"):
            if name in value:
                if not isinstance(value[name], bool):
                    raise PolicyError(f"{where}: key 'nvidia_gpu.{name}' must be true or false")
                fields[name] = value[name]
        if "roots" in value:
            roots = value["roots"]
            if not isinstance(roots, dict) or not roots or roots.keys() - _ROOT_KEYS:
                raise PolicyError(
                    f"{where}: key 'nvidia_gpu.roots' must be an object with 'device_identity_ca' "
                    "and/or 'rim_signing_ca'"
                )
            for key, name in (("device_identity_ca", "device_root"), ("rim_signing_ca", "rim_root")):
                if key in roots:
                    fields[name] = pem_certificate(roots[key], f"{where}: key 'nvidia_gpu.roots.{key}'")
        try:
            return cls(**fields)  # type: ignore[arg-type]
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None


def _key_pins(value: object, where: str) -> frozenset[bytes]:
    key = "nvidia_gpu.nras_key_pins"
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_KEY_PINS:
        raise PolicyError(f"{where}: key '{key}' must be an array of 1 to {_MAX_KEY_PINS} pins")
    pins: list[bytes] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str) or not _KEY_PIN.fullmatch(entry):
            raise PolicyError(
                f"{where}: key '{key}[{index}]' must be 64 lower-case hex digits (SHA-256 of the "
                "key's DER SubjectPublicKeyInfo)"
            )
        pin = bytes.fromhex(entry)
        if pin in pins:
            raise PolicyError(f"{where}: key '{key}[{index}]' repeats a pin")
        pins.append(pin)
    return frozenset(pins)


def _architectures(value: object, where: str) -> tuple[GpuArchitecture, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: key 'nvidia_gpu.allowed_architectures' must be a non-empty array")
    result: list[GpuArchitecture] = []
    for index, entry in enumerate(value):
        try:
            arch = GpuArchitecture(entry)
        except (ValueError, TypeError):
            known = ", ".join(a.value for a in GpuArchitecture)
            raise PolicyError(
                f"{where}: key 'nvidia_gpu.allowed_architectures[{index}]' is not a supported "
                f"architecture (supported: {known})"
            ) from None
        if arch in result:
            raise PolicyError(
                f"{where}: key 'nvidia_gpu.allowed_architectures[{index}]' repeats {arch.value}"
            )
        result.append(arch)
    return tuple(result)


def pem_certificate(value: object, where: str) -> x509.Certificate:
    """One PEM certificate from a policy value; PolicyError naming ``where`` otherwise."""
    if not isinstance(value, str):
        raise PolicyError(f"{where} must be a PEM certificate string")
    try:
        certs = x509.load_pem_x509_certificates(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise PolicyError(f"{where} is not a PEM certificate") from None
    if len(certs) != 1:
        raise PolicyError(f"{where} must hold exactly one certificate")
    return certs[0]

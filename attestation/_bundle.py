"""The evidence bundle: what an aggregator answers to GetAttestation.

Wire format (``fedseal-evidence-bundle/v1`` and ``/v2``)
--------------------------------------------------------

One JSON object in RFC 8785 (JCS) canonical form, UTF-8, at most 4 MiB::

    {
      "binding":         "<base64, 32 bytes>",
      "challenge":       "<base64, 32 bytes>",
      "evidence":        [ {"kind": "<evidence kind>", "payload": "<base64>",
                            "collateral": "<base64>" (optional, intel-tdx only)}, ... ],
      "format":          "fedseal-evidence-bundle/v1",
      "hpke_public_key": "<base64, 32 bytes: raw X25519>",
      "log_public_key":  "<base64, 32 bytes: raw Ed25519>",
      "tls_certificate_sha256": "<base64, 32 bytes>"        (v2 only)
    }

(shown indented; on the wire there is no whitespace and keys are in JCS order).

Version 2 adds ``tls_certificate_sha256``, the SHA-256 of the DER certificate the
enclave's TLS endpoint presents, and its ``binding`` is binding v2, which covers it (see
:mod:`fedseal.binding`). A bundle's version is fixed by whether it carries the field.

* base64 is the standard alphabet with padding (RFC 4648 section 4), one spelling only.
* ``challenge`` is the 32 bytes the client sent; ``binding`` is
  :func:`fedseal.binding.compute_binding` over the two public keys (and, in v2, the TLS
  certificate digest) and that challenge.
  A verifier recomputes it from the keys and *its own* challenge and never trusts this
  field on its own; it is carried so that a mismatch can be reported precisely.
* ``evidence`` holds 1 to 64 items. ``kind`` is one of :class:`EvidenceKind`'s values;
  ``payload`` is the kind's own format (for ``simulated-insecure-tee`` see
  ``attestation/_simulated.py``; hardware kinds carry the vendor's report or token).
  Each item's report data must carry the binding. No item may appear twice
  (:class:`DuplicateEvidenceError`).
* ``collateral`` (optional; ``intel-tdx`` items only): the vendor collateral the
  aggregator stapled for the item, a ``fedseal-stapled-collateral/v1`` document (see
  ``attestation/_stapled.py``): Intel PCS's answers (TCB info, QE identity, CRLs, their
  issuer chains) exactly as PCS served them. It is needed because a TDX payload is the raw
  quote, which has no room for it (SEV-SNP and NVIDIA payloads carry theirs inside). It is
  outside the binding and the CPU report data on purpose: every item in it is signed by
  Intel and checked against the pinned Intel SGX Root CA, so a substitute can only be other
  genuine, unexpired Intel collateral, which the policy's ``max_tcb_info_age_seconds``
  bounds. It is inside the bundle's bytes, so :meth:`EvidenceBundle.digest` (logged, and
  verified by auditors) names exactly the collateral a client verified against. A bundle
  without the field is the same bundle as before it existed; verifiers older than the
  field refuse a bundle that carries it (strict parsing), which is the right failure.

Parsing is strict: a missing or unknown field, a wrong length, non-canonical base64, an
unknown evidence kind, another format version or a document not in canonical form is a
:class:`BundleFormatError` that names the field. Requiring canonical form means a bundle
has exactly one byte encoding, so :meth:`EvidenceBundle.digest` is the SHA-256 of the
very bytes that went over the wire and can be logged and compared.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from fedseal.binding import (
    CHALLENGE_SIZE,
    ED25519_PUBLIC_KEY_SIZE,
    TLS_CERTIFICATE_DIGEST_SIZE,
    X25519_PUBLIC_KEY_SIZE,
)

from ._encoding import DecodeError, b64decode_strict, b64encode, canonical_json, load_json_object
from ._errors import BundleFormatError, DuplicateEvidenceError

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_V2",
    "BUNDLE_FORMAT_VERSION",
    "MAX_BUNDLE_SIZE",
    "MAX_EVIDENCE_ITEMS",
    "Evidence",
    "EvidenceBundle",
    "EvidenceKind",
]

BUNDLE_FORMAT_VERSION = 1
_FORMAT_PREFIX = "fedseal-evidence-bundle/v"
BUNDLE_FORMAT = f"{_FORMAT_PREFIX}{BUNDLE_FORMAT_VERSION}"
# Version 2: the bundle also names the enclave's TLS certificate (attested TLS).
BUNDLE_FORMAT_V2 = f"{_FORMAT_PREFIX}2"

# 4 MiB: an NVIDIA GPU report with its certificate chain is tens of KiB, a CPU report
# with its VCEK/PCK chain a few KiB; 4 MiB leaves room for several GPUs while keeping
# a hostile endpoint from making a client parse an unbounded document.
MAX_BUNDLE_SIZE = 4 * 1024 * 1024
MAX_EVIDENCE_ITEMS = 64
_BINDING_SIZE = 32

_TOP_LEVEL_FIELDS = frozenset(
    {"binding", "challenge", "evidence", "format", "hpke_public_key", "log_public_key"}
)
_TOP_LEVEL_FIELDS_V2 = _TOP_LEVEL_FIELDS | {"tls_certificate_sha256"}
_EVIDENCE_FIELDS = frozenset({"kind", "payload"})
_EVIDENCE_OPTIONAL_FIELDS = frozenset({"collateral"})


class EvidenceKind(enum.Enum):
    """Which kind of TEE produced an evidence item; each kind has its own payload format.

    Only ``SIMULATED_INSECURE`` has a collector and a verifier in this version. The
    hardware kinds are named now so that bundles and policies can already mention them;
    verifying one fails with :class:`~attestation.UnsupportedEvidenceError` until its
    verifier exists.
    """

    #: Development only: a software "report" signed by a throwaway key. Proves nothing.
    SIMULATED_INSECURE = "simulated-insecure-tee"
    #: NVIDIA Hopper (or later) GPU in confidential-computing mode.
    NVIDIA_GPU = "nvidia-gpu"
    #: AMD SEV-SNP confidential VM.
    AMD_SEV_SNP = "amd-sev-snp"
    #: Intel TDX trust domain.
    INTEL_TDX = "intel-tdx"


# Kinds whose payload is the vendor's raw report with no room for stapled collateral.
_KINDS_WITH_COLLATERAL = frozenset({EvidenceKind.INTEL_TDX})


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence: a kind and that kind's opaque payload bytes."""

    kind: EvidenceKind
    payload: bytes
    #: Stapled vendor collateral for the item (``intel-tdx`` only; see the module docstring).
    collateral: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, EvidenceKind):
            raise BundleFormatError("evidence kind must be an EvidenceKind", field="kind")
        if not isinstance(self.payload, bytes) or not self.payload:
            raise BundleFormatError("evidence payload must be non-empty bytes", field="payload")
        if len(self.payload) > MAX_BUNDLE_SIZE:
            raise BundleFormatError(f"evidence payload exceeds {MAX_BUNDLE_SIZE} bytes", field="payload")
        if self.collateral is not None:
            if self.kind not in _KINDS_WITH_COLLATERAL:
                raise BundleFormatError(
                    f"{self.kind.value} evidence carries its collateral in its payload, not beside it",
                    field="collateral",
                )
            if not isinstance(self.collateral, bytes) or not self.collateral:
                raise BundleFormatError("evidence collateral must be non-empty bytes", field="collateral")
            if len(self.collateral) > MAX_BUNDLE_SIZE:
                raise BundleFormatError(
                    f"evidence collateral exceeds {MAX_BUNDLE_SIZE} bytes", field="collateral"
                )


@dataclass(frozen=True)
class EvidenceBundle:
    """An aggregator's public keys, the client's challenge, their binding, and the evidence.

    Constructing one checks the shape (lengths, types), never the meaning: a bundle whose
    binding is wrong is still representable, so that :func:`~attestation.verify_bundle`
    can report *why* it is refused. With ``tls_certificate_sha256`` it is a version 2
    bundle (binding v2), without it version 1.
    """

    hpke_public_key: bytes
    log_public_key: bytes
    challenge: bytes
    binding: bytes
    evidence: tuple[Evidence, ...]
    tls_certificate_sha256: bytes | None = None

    @property
    def version(self) -> int:
        return BUNDLE_FORMAT_VERSION if self.tls_certificate_sha256 is None else 2

    def __post_init__(self) -> None:
        tls = self.tls_certificate_sha256
        if tls is not None and (not isinstance(tls, bytes) or len(tls) != TLS_CERTIFICATE_DIGEST_SIZE):
            raise BundleFormatError(
                f"evidence bundle field 'tls_certificate_sha256' must be {TLS_CERTIFICATE_DIGEST_SIZE} bytes",
                field="tls_certificate_sha256",
            )
        for name, size in (
            ("hpke_public_key", X25519_PUBLIC_KEY_SIZE),
            ("log_public_key", ED25519_PUBLIC_KEY_SIZE),
            ("challenge", CHALLENGE_SIZE),
            ("binding", _BINDING_SIZE),
        ):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != size:
                found = len(value) if isinstance(value, bytes) else type(value).__name__
                raise BundleFormatError(
                    f"evidence bundle field {name!r} must be {size} bytes, got {found}",
                    field=name,
                )
        if not isinstance(self.evidence, tuple):
            raise BundleFormatError("evidence must be a tuple of Evidence", field="evidence")
        if not 1 <= len(self.evidence) <= MAX_EVIDENCE_ITEMS:
            raise BundleFormatError(
                f"evidence bundle must carry 1 to {MAX_EVIDENCE_ITEMS} evidence items, "
                f"got {len(self.evidence)}",
                field="evidence",
            )
        first_seen: dict[tuple[EvidenceKind, bytes], int] = {}
        for index, item in enumerate(self.evidence):
            if not isinstance(item, Evidence):
                raise BundleFormatError(f"evidence[{index}] must be an Evidence", field=f"evidence[{index}]")
            # Collateral aside: the same report twice is a duplicate whatever is stapled to it.
            first = first_seen.setdefault((item.kind, item.payload), index)
            if first != index:
                # One report counted twice would look like two attesting devices.
                raise DuplicateEvidenceError(
                    f"evidence[{index}] repeats evidence[{first}] (same kind and payload)",
                    field=f"evidence[{index}]",
                )

    def to_bytes(self) -> bytes:
        """The canonical wire encoding (see the module docstring)."""
        document: dict[str, object] = {
            "binding": b64encode(self.binding),
            "challenge": b64encode(self.challenge),
            "evidence": [_evidence_document(item) for item in self.evidence],
            "format": f"{_FORMAT_PREFIX}{self.version}",
            "hpke_public_key": b64encode(self.hpke_public_key),
            "log_public_key": b64encode(self.log_public_key),
        }
        if self.tls_certificate_sha256 is not None:
            document["tls_certificate_sha256"] = b64encode(self.tls_certificate_sha256)
        return canonical_json(document)

    def digest(self) -> bytes:
        """SHA-256 of :meth:`to_bytes`: the bundle's identity in logs and reports."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> EvidenceBundle:
        """Parse a bundle strictly; raise :class:`BundleFormatError` naming the bad field."""
        if not isinstance(data, bytes):
            raise BundleFormatError("evidence bundle must be bytes")
        # Check the size before parsing anything: the bytes come from an untrusted endpoint.
        if len(data) > MAX_BUNDLE_SIZE:
            raise BundleFormatError(
                f"evidence bundle is {len(data)} bytes, more than the {MAX_BUNDLE_SIZE} allowed"
            )
        try:
            document = load_json_object(data)
        except DecodeError as exc:
            raise BundleFormatError(f"evidence bundle {exc}") from exc

        if "format" not in document:
            raise BundleFormatError("evidence bundle is missing field 'format'", field="format")
        version = _parse_format(document["format"])
        expected = _TOP_LEVEL_FIELDS if version == BUNDLE_FORMAT_VERSION else _TOP_LEVEL_FIELDS_V2
        _check_fields(document, expected, where="evidence bundle", prefix="")
        fields: dict[str, bytes] = {}
        for name, size in (
            ("hpke_public_key", X25519_PUBLIC_KEY_SIZE),
            ("log_public_key", ED25519_PUBLIC_KEY_SIZE),
            ("challenge", CHALLENGE_SIZE),
            ("binding", _BINDING_SIZE),
        ):
            fields[name] = _b64_field(document[name], name, size)
        evidence = _parse_evidence_list(document["evidence"])
        tls = (
            _b64_field(
                document["tls_certificate_sha256"], "tls_certificate_sha256", TLS_CERTIFICATE_DIGEST_SIZE
            )
            if version == 2
            else None
        )

        bundle = cls(
            hpke_public_key=fields["hpke_public_key"],
            log_public_key=fields["log_public_key"],
            challenge=fields["challenge"],
            binding=fields["binding"],
            evidence=evidence,
            tls_certificate_sha256=tls,
        )
        # Every field decoded to exactly one value; what is left to differ is whitespace,
        # key order and string escapes. Refuse those so that one bundle has one encoding.
        if bundle.to_bytes() != data:
            raise BundleFormatError("evidence bundle is not in RFC 8785 canonical JSON form")
        return bundle


def _evidence_document(item: Evidence) -> dict[str, str]:
    document = {"kind": item.kind.value, "payload": b64encode(item.payload)}
    if item.collateral is not None:
        document["collateral"] = b64encode(item.collateral)
    return document


def _check_fields(
    document: dict[str, object],
    expected: frozenset[str],
    *,
    where: str,
    prefix: str,
    optional: frozenset[str] = frozenset(),
) -> None:
    missing = sorted(expected - document.keys())
    if missing:
        raise BundleFormatError(f"{where} is missing field {missing[0]!r}", field=prefix + missing[0])
    unknown = sorted(document.keys() - expected - optional)
    if unknown:
        raise BundleFormatError(f"{where} has unknown field {unknown[0]!r}", field=prefix + unknown[0])


def _parse_format(value: object) -> int:
    if isinstance(value, str) and value == BUNDLE_FORMAT:
        return BUNDLE_FORMAT_VERSION
    if isinstance(value, str) and value == BUNDLE_FORMAT_V2:
        return 2
    if isinstance(value, str) and value.startswith(_FORMAT_PREFIX):
        raise BundleFormatError(
            f"evidence bundle field 'format' is {value!r}; this verifier understands only "
            f"{BUNDLE_FORMAT!r} and {BUNDLE_FORMAT_V2!r} (a newer aggregator needs a newer FedSeal)",
            field="format",
        )
    raise BundleFormatError(
        f"evidence bundle field 'format' must be {BUNDLE_FORMAT!r}: not a FedSeal evidence bundle",
        field="format",
    )


def _b64_field(value: object, field: str, size: int | None) -> bytes:
    try:
        return b64decode_strict(value, size=size)
    except DecodeError as exc:
        raise BundleFormatError(f"evidence bundle field {field!r} {exc}", field=field) from exc


def _parse_evidence_list(value: object) -> tuple[Evidence, ...]:
    if not isinstance(value, list):
        raise BundleFormatError("evidence bundle field 'evidence' must be an array", field="evidence")
    if not 1 <= len(value) <= MAX_EVIDENCE_ITEMS:
        raise BundleFormatError(
            f"evidence bundle field 'evidence' must hold 1 to {MAX_EVIDENCE_ITEMS} items, got {len(value)}",
            field="evidence",
        )
    items: list[Evidence] = []
    for index, entry in enumerate(value):
        prefix = f"evidence[{index}]"
        if not isinstance(entry, dict):
            raise BundleFormatError(f"{prefix} must be a JSON object", field=prefix)
        _check_fields(
            entry, _EVIDENCE_FIELDS, where=prefix, prefix=prefix + ".", optional=_EVIDENCE_OPTIONAL_FIELDS
        )
        kind_value = entry["kind"]
        try:
            kind = EvidenceKind(kind_value)
        except (ValueError, TypeError):
            known = ", ".join(k.value for k in EvidenceKind)
            raise BundleFormatError(
                f"{prefix}.kind {_shorten(kind_value)} is not a known evidence kind (known: {known})",
                field=f"{prefix}.kind",
            ) from None
        payload = _b64_field(entry["payload"], f"{prefix}.payload", None)
        if not payload:
            raise BundleFormatError(f"{prefix}.payload is empty", field=f"{prefix}.payload")
        collateral = None
        if "collateral" in entry:
            collateral = _b64_field(entry["collateral"], f"{prefix}.collateral", None)
            if not collateral:
                raise BundleFormatError(f"{prefix}.collateral is empty", field=f"{prefix}.collateral")
        try:
            items.append(Evidence(kind=kind, payload=payload, collateral=collateral))
        except BundleFormatError as exc:
            raise BundleFormatError(f"{prefix}: {exc}", field=f"{prefix}.{exc.field or 'evidence'}") from None
    return tuple(items)


def _shorten(value: object) -> str:
    """repr() of an untrusted value, cut short so a hostile bundle cannot flood a log line."""
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."

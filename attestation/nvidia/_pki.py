"""Pinned NVIDIA roots and certificate-chain verification against them (``cryptography``'s
X.509 path validation at a given time), with a diagnosis of why a chain fails.
"""

from __future__ import annotations

import datetime
import enum
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = [
    "ChainFailure",
    "ChainOutcome",
    "TrustAnchors",
    "common_name",
    "fingerprint",
    "issued_by",
    "pinned_trust_anchors",
    "verify_chain",
    "verify_chain_links",
]

_DEVICE_ROOT_FILE = "nvidia-device-identity-ca.pem"
_RIM_ROOT_FILE = "nvidia-corim-signing-root-ca.pem"
# Hopper chains are 5 certificates with the root; leave room, refuse absurd ones.
_MAX_CHAIN = 8


@dataclass(frozen=True)
class TrustAnchors:
    """The roots GPU evidence must chain to. Production always uses
    :func:`pinned_trust_anchors`; tests with their own PKI pass their own."""

    device_root: x509.Certificate
    rim_root: x509.Certificate


@functools.cache
def pinned_trust_anchors() -> TrustAnchors:
    """NVIDIA's Device Identity CA and CoRIM signing root, shipped in ``attestation/nvidia/roots``.

    Cached: the files are immutable package data, and parsing them per verification would
    cost more than the rest of a chain check.
    """
    roots = files("attestation.nvidia").joinpath("roots")
    return TrustAnchors(
        device_root=x509.load_pem_x509_certificate(roots.joinpath(_DEVICE_ROOT_FILE).read_bytes()),
        rim_root=x509.load_pem_x509_certificate(roots.joinpath(_RIM_ROOT_FILE).read_bytes()),
    )


class ChainFailure(enum.Enum):
    """Why a chain did not verify, most fundamental first."""

    ROOT_PIN = "not rooted in the pinned root"
    VALIDITY = "certificate outside its validity window"
    INVALID = "invalid chain"


@dataclass(frozen=True)
class ChainOutcome:
    """``path`` (leaf first, pinned root last) when the chain verified, else ``failure``."""

    path: tuple[x509.Certificate, ...] | None
    failure: ChainFailure | None
    detail: str


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    value = names[0].value if names else cert.subject.rfc4514_string()
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def verify_chain(
    certs: Sequence[x509.Certificate], root: x509.Certificate, now: datetime.datetime
) -> ChainOutcome:
    """Verify ``certs`` (leaf first) up to ``root`` at ``now``.

    A self-signed last certificate (the device-supplied root) is dropped before building:
    only ``root`` is ever trusted. Extensions are not held to Web PKI rules (NVIDIA's
    device certificates are not Web PKI certificates), but CA certificates must carry
    basicConstraints, and signatures, names, path length and validity are all checked.
    """
    chain = list(certs)
    if len(chain) > 1 and chain[-1].subject == chain[-1].issuer:
        chain.pop()
    if not chain or len(chain) > _MAX_CHAIN:
        return ChainOutcome(None, ChainFailure.INVALID, f"{len(certs)} certificates")
    ca_policy = ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(now)
        .max_chain_depth(_MAX_CHAIN)
        .extension_policies(ca_policy=ca_policy, ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(chain[0], chain[1:])
    except VerificationError as exc:
        return _diagnose(chain, root, now, str(exc))
    return ChainOutcome(tuple(verified.chain), None, f"verified ({len(verified.chain)} certificates)")


def verify_chain_links(
    certs: Sequence[x509.Certificate], root: x509.Certificate, now: datetime.datetime
) -> ChainOutcome:
    """Verify ``certs`` (leaf first) up to ``root`` link by link, for NVIDIA's RIM chains.

    NVIDIA's RIM signing certificates encode dates before 2050 as GeneralizedTime, which
    RFC 5280 (4.1.2.5) forbids and ``cryptography``'s path validator therefore refuses
    ("validity dates between 1950 and 2049 must be UtcTime"), so :func:`verify_chain`
    cannot take them. This checks what that validator would, for a fixed order: every
    certificate is issued (name and signature, ``verify_directly_issued_by``) by the next
    and the last by ``root``; every issuer is a CA (basicConstraints, keyCertSign when key
    usage is present) within its path length; every certificate, root included, is valid
    at ``now``. A self-signed last certificate (the RIM's own copy of a root) is dropped.
    """
    chain = list(certs)
    if len(chain) > 1 and chain[-1].subject == chain[-1].issuer:
        chain.pop()
    if not chain or len(chain) > _MAX_CHAIN:
        return ChainOutcome(None, ChainFailure.INVALID, f"{len(certs)} certificates")
    path = (*chain, root)
    for position, (cert, issuer) in enumerate(itertools.pairwise(path)):
        if not issued_by(cert, issuer):
            if issuer is root:
                return _diagnose(chain, root, now, "")
            return ChainOutcome(
                None, ChainFailure.INVALID, f"{common_name(cert)!r} is not issued by {common_name(issuer)!r}"
            )
        try:
            _check_ca(issuer, below=position)
        except _NotACaError as exc:
            return ChainOutcome(None, ChainFailure.INVALID, str(exc))
    for cert in path:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return _diagnose(chain, root, now, "")
    return ChainOutcome(path, None, f"verified ({len(path)} certificates)")


class _NotACaError(Exception):
    """``issuer`` may not issue the certificate below it (turned into a ChainOutcome: the
    callers map chain failures to their own named errors, GPU or RIM)."""


def _check_ca(issuer: x509.Certificate, *, below: int) -> None:
    """Raise _NotACaError if ``issuer`` may not issue a certificate with ``below`` CA
    certificates under it."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise _NotACaError(f"{common_name(issuer)!r} is not a CA (no basicConstraints)") from None
    if not constraints.ca:
        raise _NotACaError(f"{common_name(issuer)!r} is not a CA")
    if constraints.path_length is not None and below > constraints.path_length:
        raise _NotACaError(f"{common_name(issuer)!r} path length {constraints.path_length} exceeded")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise _NotACaError(f"{common_name(issuer)!r} may not sign certificates")


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s name and key issued ``cert`` (signature checked)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _diagnose(
    chain: Sequence[x509.Certificate], root: x509.Certificate, now: datetime.datetime, reason: str
) -> ChainOutcome:
    top = chain[-1]
    if not issued_by(top, root):
        return ChainOutcome(
            None,
            ChainFailure.ROOT_PIN,
            f"top certificate {common_name(top)!r} is issued by {top.issuer.rfc4514_string()!r}",
        )
    for cert in (*chain, root):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            window = f"{cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d}"
            return ChainOutcome(
                None,
                ChainFailure.VALIDITY,
                f"{common_name(cert)!r} is valid {window}, not at {now:%Y-%m-%dT%H:%M:%SZ}",
            )
    return ChainOutcome(None, ChainFailure.INVALID, reason[:200])

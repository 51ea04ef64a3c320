"""OCSP revocation checks for NVIDIA certificate chains (stapled, or fetched through the
collateral fetcher), built on ``cryptography``'s OCSP support.

A response counts only if it is for exactly this certificate (CertID: serial, issuer name
hash and issuer key hash), was signed by the issuing CA or by a responder certificate that
CA issued for OCSP signing (RFC 6960 section 4.2.2.2), and is current at the verification
time (``thisUpdate`` not in the future, ``nextUpdate`` not past; without ``nextUpdate``, at
most one day old). Requests carry no nonce, so answers can be cached and stapled; their
validity window is what bounds their age.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp

from .._errors import CollateralUnavailableError
from .._fetch import CollateralFetcher, CollateralRequest
from ._errors import OcspResponseError
from ._pki import common_name, issued_by

__all__ = ["NVIDIA_OCSP_URL", "OcspOutcome", "OcspStatus", "check_revocation", "load_stapled"]

#: NVIDIA's OCSP responder (the one NVIDIA's verifier uses; certificates name it over http).
NVIDIA_OCSP_URL = "https://ocsp.ndis.nvidia.com/"
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_MAX_AGE_WITHOUT_NEXT_UPDATE = datetime.timedelta(days=1)


class OcspStatus(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    UNAVAILABLE = "unavailable"
    INVALID = "invalid"


@dataclass(frozen=True)
class OcspOutcome:
    status: OcspStatus
    detail: str


def load_stapled(blobs: Sequence[bytes]) -> tuple[tuple[ocsp.OCSPResponse, ...], tuple[str, ...]]:
    """Parse stapled DER responses; unparseable ones are returned as problems (never dropped silently)."""
    parsed: list[ocsp.OCSPResponse] = []
    problems: list[str] = []
    for index, blob in enumerate(blobs):
        try:
            parsed.append(ocsp.load_der_ocsp_response(blob))
        except ValueError:
            problems.append(f"stapled OCSP response {index} is not a DER OCSP response")
    return tuple(parsed), tuple(problems)


def check_revocation(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    stapled: Sequence[ocsp.OCSPResponse],
    fetcher: CollateralFetcher,
    now: datetime.datetime,
    max_age: datetime.timedelta | None = None,
) -> OcspOutcome:
    """The OCSP status of ``cert``: from a matching stapled response, else fetched.

    ``max_age`` (the policy's freshness limit) refuses an answer whose ``thisUpdate`` is
    older, even within its ``nextUpdate``; a stapled one that is too old is then fetched anew.
    """
    stale: OcspOutcome | None = None
    for response in stapled:
        single = _single_for(response, cert, issuer)
        if single is None:
            continue
        outcome = _appraise(response, single, issuer, now, "stapled", max_age)
        if outcome.status is not OcspStatus.INVALID:
            return outcome
        stale = outcome  # an unusable staple: try a fresh answer before failing
    request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()
    try:
        body = fetcher.fetch(
            CollateralRequest(
                url=NVIDIA_OCSP_URL,
                body=request.public_bytes(serialization.Encoding.DER),
                content_type="application/ocsp-request",
            )
        )
    except CollateralUnavailableError as exc:
        if stale is not None:
            return stale
        return OcspOutcome(OcspStatus.UNAVAILABLE, _short(str(exc)))
    try:
        response = ocsp.load_der_ocsp_response(body)
    except ValueError:
        return OcspOutcome(OcspStatus.INVALID, "the responder's answer is not a DER OCSP response")
    single = _single_for(response, cert, issuer)
    if single is None:
        return OcspOutcome(OcspStatus.INVALID, "the responder answered about another certificate")
    return _appraise(response, single, issuer, now, "fetched", max_age)


def _single_for(
    response: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse | None:
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return None
    for single in response.responses:
        algorithm = single.hash_algorithm
        if (
            single.serial_number == cert.serial_number
            and single.issuer_name_hash == _digest(algorithm, issuer.subject.public_bytes())
            and single.issuer_key_hash == _digest(algorithm, _key_bits(issuer))
        ):
            return single
    return None


def _appraise(
    response: ocsp.OCSPResponse,
    single: ocsp.OCSPSingleResponse,
    issuer: x509.Certificate,
    now: datetime.datetime,
    source: str,
    max_age: datetime.timedelta | None = None,
) -> OcspOutcome:
    try:
        _check_responder(response, issuer, now)
    except OcspResponseError as exc:
        return OcspOutcome(OcspStatus.INVALID, f"{source} response: {exc}")
    if max_age is not None and now - single.this_update_utc > max_age:
        return OcspOutcome(
            OcspStatus.INVALID,
            f"{source} response of {single.this_update_utc:%Y-%m-%dT%H:%M:%SZ} is older than the "
            f"policy's limit of {int(max_age.total_seconds())} s",
        )
    if single.this_update_utc > now + _CLOCK_SKEW:
        return OcspOutcome(OcspStatus.INVALID, f"{source} response is dated in the future")
    next_update = single.next_update_utc
    if next_update is not None and now > next_update + _CLOCK_SKEW:
        return OcspOutcome(
            OcspStatus.INVALID, f"{source} response expired at {next_update:%Y-%m-%dT%H:%M:%SZ}"
        )
    if next_update is None and now - single.this_update_utc > _MAX_AGE_WITHOUT_NEXT_UPDATE:
        return OcspOutcome(OcspStatus.INVALID, f"{source} response has no nextUpdate and is over a day old")
    status = single.certificate_status
    if status is ocsp.OCSPCertStatus.GOOD:
        return OcspOutcome(OcspStatus.GOOD, f"good ({source}, {single.this_update_utc:%Y-%m-%d})")
    if status is ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason.value if single.revocation_reason is not None else "unspecified"
        return OcspOutcome(OcspStatus.REVOKED, f"revoked ({reason}) per {source} response")
    return OcspOutcome(OcspStatus.UNKNOWN, f"responder does not know this certificate ({source})")


def _check_responder(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime) -> None:
    """Check that the response is signed by the issuer or its delegated OCSP responder, or
    raise OcspResponseError saying why not."""
    signer: x509.Certificate | None = issuer if _is_responder(response, issuer) else None
    if signer is None:
        for candidate in response.certificates:
            if not _is_responder(response, candidate):
                continue
            if not issued_by(candidate, issuer):
                raise OcspResponseError(
                    f"responder {common_name(candidate)!r} is not issued by {common_name(issuer)!r}"
                )
            try:
                usage = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except x509.ExtensionNotFound:
                raise OcspResponseError(
                    f"responder {common_name(candidate)!r} lacks the OCSP-signing key usage"
                ) from None
            if x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
                raise OcspResponseError(
                    f"responder {common_name(candidate)!r} lacks the OCSP-signing key usage"
                )
            if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
                raise OcspResponseError(
                    f"responder certificate {common_name(candidate)!r} is not valid at the verification time"
                )
            signer = candidate
            break
    if signer is None:
        raise OcspResponseError("signed by an unknown responder")
    try:
        _verify_signature(signer, response)
    except (InvalidSignature, TypeError, ValueError):
        raise OcspResponseError("signature does not verify") from None


def _is_responder(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    return response.responder_key_hash == _digest(hashes.SHA1(), _key_bits(cert))  # noqa: S303 - RFC 6960 KeyHash is SHA-1


def _verify_signature(signer: x509.Certificate, response: ocsp.OCSPResponse) -> None:
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    data, signature = response.tbs_response_bytes, response.signature
    if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    else:
        raise TypeError("unsupported OCSP responder key")


def _key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING contents, which OCSP CertIDs hash."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise TypeError("unsupported issuer key type")


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _short(text: str) -> str:
    return text if len(text) <= 160 else text[:157] + "..."

"""Optional remote path: an NVIDIA NRAS attestation token stapled to GPU evidence.

NRAS (NVIDIA Remote Attestation Service) answers GPU evidence with a detached EAT: a JSON
array ``[["JWT", <overall token>], {"GPU-0": <token>, ...}]``. Verification here:

* every token is a JWS with ``alg`` ES384 and a ``kid`` found in the NRAS key set given
  (NVIDIA serves it at ``NRAS_JWKS_URL``), and its signature verifies (PyJWT);
  an HS256 token, or one issued by ``LOCAL_GPU_VERIFIER`` (what nv-attestation-sdk's local
  mode makes with a constant secret), is refused with :class:`NrasUntrustedTokenError`;
* ``iss`` is NRAS, and ``nbf`` / ``exp`` hold at the verification time (not the wall clock);
* ``eat_nonce`` in EVERY token equals the SPDM nonce derived from the client's binding
  (NVIDIA's ``validate_token`` never checks it);
* the overall token's ``submods`` list exactly the detached GPU tokens, each with the
  SHA-256 digest of that token's text, one per GPU of the evidence; the overall result is
  true and every GPU token reports ``measres: success``.

It adds NVIDIA's appraisal to FedSeal's own local checks; it never replaces them.

The key set itself is signed by nothing a client pins: NVIDIA's SDKs trust it because
they fetch it over HTTPS from NRAS. Which key sets a verifier trusts (its own fetch,
one the aggregator stapled, keys pinned by the policy) is decided by the caller
(``_verify.py``); :attr:`NrasAppraisal.key_pins` names the keys that signed so it can.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedseal import strictjson

from .._encoding import DecodeError, b64decode_strict
from ._errors import (
    NrasNonceMismatchError,
    NrasTokenError,
    NrasUntrustedTokenError,
    NvidiaVerifierUnavailableError,
)
from ._format import MAX_NRAS_JWKS_BYTES

__all__ = [
    "NRAS_CLAIMS_VERSION",
    "NRAS_GPU_ATTEST_URL",
    "NRAS_ISSUER",
    "NRAS_JWKS_URL",
    "NrasAppraisal",
    "nras_key_set_certificates",
    "nras_key_set_pins",
    "nras_token_validity",
    "verify_nras_token",
]

NRAS_ISSUER = "https://nras.attestation.nvidia.com"
NRAS_JWKS_URL = "https://nras.attestation.nvidia.com/.well-known/jwks.json"
# NRAS's GPU attestation API (v3), as nv-attestation-sdk calls it, and the claims version
# whose tokens this module verifies (detached EAT with SHA-256 submodule digests).
NRAS_GPU_ATTEST_URL = "https://nras.attestation.nvidia.com/v3/attest/gpu"
NRAS_CLAIMS_VERSION = "3.0"
_LEEWAY = datetime.timedelta(seconds=60)
_MAX_TOKEN_TEXT = 256 * 1024


@dataclass(frozen=True)
class NrasAppraisal:
    """What a verified NRAS token says: the GPU submodule names, the key ids that signed,
    and those keys' pins (SHA-256 of the DER SubjectPublicKeyInfo, as a policy names them)."""

    gpu_submodules: tuple[str, ...]
    key_id: str
    key_pins: frozenset[bytes]


def verify_nras_token(
    token_text: str,
    *,
    expected_nonce: bytes,
    gpu_count: int,
    key_set: bytes,
    now: datetime.datetime,
) -> NrasAppraisal:
    """Verify an NRAS detached EAT against ``key_set`` (the JWKS document's bytes, as NRAS
    serves it at ``NRAS_JWKS_URL``); raise a named error on any failure."""
    jwt = _pyjwt()
    overall, detached = _split(token_text)
    tokens = [overall, *detached.values()]
    key_ids = {_check_header(jwt, token) for token in tokens}
    keys = _load_key_set(jwt, key_set)
    claims = {name: _decode(jwt, keys, token, name, expected_nonce, now) for name, token in detached.items()}
    top = _decode(jwt, keys, overall, "overall", expected_nonce, now)

    if top.get("x-nvidia-overall-att-result") is not True:
        raise NrasTokenError("NRAS reports a failed overall attestation result")
    submods = top.get("submods")
    if not isinstance(submods, dict) or set(submods) != set(detached):
        raise NrasTokenError("NRAS overall token's submods do not list exactly the detached tokens")
    for name, entry in submods.items():
        digest = hashlib.sha256(detached[name].encode("ascii")).hexdigest()
        if entry != ["DIGEST", ["SHA-256", digest]]:
            raise NrasTokenError(f"NRAS submodule {name!r} digest does not match its detached token")
        if claims[name].get("measres") != "success":
            raise NrasTokenError(
                f"NRAS reports measurement result {claims[name].get('measres')!r} for {name}"
            )
    gpus = tuple(sorted(name for name in detached if name.startswith("GPU-")))
    if len(gpus) != gpu_count:
        raise NrasTokenError(f"NRAS token covers {len(gpus)} GPU(s); the evidence has {gpu_count}")
    return NrasAppraisal(
        gpu_submodules=gpus,
        key_id=",".join(sorted(key_ids)),
        key_pins=frozenset(_spki_sha256(keys[kid].key) for kid in key_ids),
    )


def nras_key_set_pins(key_set: bytes) -> dict[str, bytes]:
    """``{kid: SHA-256 of the key's DER SubjectPublicKeyInfo}`` for every key of a JWKS
    document: the values a policy's ``nvidia_gpu.nras_key_pins`` lists. Raises
    NrasTokenError for a document that is not a usable key set."""
    jwt = _pyjwt()
    keys = _load_key_set(jwt, key_set)
    return {key.key_id: _spki_sha256(key.key) for key in keys.keys if isinstance(key.key_id, str)}


def nras_key_set_certificates(key_set: bytes) -> list[x509.Certificate]:
    """The certificates of every key's ``x5c`` chain in a JWKS document (NRAS publishes
    them; a key without one is fine). Nothing is verified: they date the key set (the
    aggregator's cache, the hardware checklist). Raises NrasTokenError for a document, or an
    ``x5c`` entry, that does not parse."""
    if not isinstance(key_set, bytes) or len(key_set) > MAX_NRAS_JWKS_BYTES:
        raise NrasTokenError(f"the NRAS key set must be at most {MAX_NRAS_JWKS_BYTES} bytes")
    try:
        document = strictjson.loads(key_set, what="NRAS key set")
    except ValueError as exc:
        raise NrasTokenError(f"the NRAS key set is not JSON: {exc}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise NrasTokenError("the NRAS key set has no 'keys' array")
    certs: list[x509.Certificate] = []
    for index, key in enumerate(keys):
        chain = key.get("x5c", []) if isinstance(key, dict) else None
        if not isinstance(chain, list):
            raise NrasTokenError(f"the NRAS key set's keys[{index}] is not a JWK with an x5c array")
        for entry in chain:
            try:
                certs.append(x509.load_der_x509_certificate(b64decode_strict(entry)))
            except (DecodeError, ValueError):
                raise NrasTokenError(
                    f"the NRAS key set's keys[{index}].x5c holds a non-certificate"
                ) from None
    return certs


def nras_token_validity(token_text: str) -> tuple[datetime.datetime, datetime.datetime]:
    """The overall token's ``iat`` and ``exp``, read WITHOUT verifying anything: for
    reporting the age of a token :func:`verify_nras_token` checks (the hardware checklist).
    Raises NrasTokenError when the token or those claims do not parse."""
    jwt = _pyjwt()
    overall, _ = _split(token_text)
    try:
        claims = jwt.decode(overall, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise NrasTokenError("NRAS token is not a JWT") from None
    times = [claims.get(claim) for claim in ("iat", "exp")]
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in times):
        raise NrasTokenError("NRAS token has no numeric 'iat' and 'exp'")
    issued, expires = (datetime.datetime.fromtimestamp(value, datetime.UTC) for value in times)
    return issued, expires


def _pyjwt() -> Any:
    try:
        import jwt
    except ImportError as exc:
        raise NvidiaVerifierUnavailableError(
            f"NRAS tokens need PyJWT (pip install 'fedseal[nvidia]'): {exc}"
        ) from None
    return jwt


def _load_key_set(jwt: Any, key_set: bytes) -> Any:
    if not isinstance(key_set, bytes) or len(key_set) > MAX_NRAS_JWKS_BYTES:
        raise NrasTokenError(f"the NRAS key set must be at most {MAX_NRAS_JWKS_BYTES} bytes")
    try:
        document = strictjson.loads(key_set, what="NRAS key set")
        return jwt.PyJWKSet.from_dict(document)
    except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError, TypeError, KeyError) as exc:
        raise NrasTokenError(f"the NRAS key set is not a usable JWK set: {exc}") from None


def _spki_sha256(key: Any) -> bytes:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def _split(token_text: str) -> tuple[str, dict[str, str]]:
    if len(token_text) > _MAX_TOKEN_TEXT:
        raise NrasTokenError("NRAS token is too large")
    try:
        document = strictjson.loads(token_text, what="NRAS token")
    except ValueError:
        raise NrasTokenError("NRAS token is not the JSON of a detached EAT") from None
    if (
        not isinstance(document, list)
        or len(document) != 2
        or not isinstance(document[0], list)
        or len(document[0]) != 2
        or document[0][0] != "JWT"
        or not isinstance(document[0][1], str)
        or not isinstance(document[1], dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in document[1].items())
    ):
        raise NrasTokenError('NRAS token is not a detached EAT [["JWT", token], {name: token}]')
    return document[0][1], dict(document[1])


def _check_header(jwt: Any, token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise NrasTokenError("NRAS token is not a JWT") from None
    if unverified.get("iss") == "LOCAL_GPU_VERIFIER":
        raise NrasUntrustedTokenError(
            "token issued by LOCAL_GPU_VERIFIER: the attested host made it itself; only NRAS tokens count"
        )
    if header.get("alg") != "ES384":
        raise NrasUntrustedTokenError(
            f"token algorithm {header.get('alg')!r} refused: NRAS signs with ES384 only"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise NrasTokenError("NRAS token names no key id")
    return kid


def _decode(
    jwt: Any, keys: Any, token: str, name: str, expected_nonce: bytes, now: datetime.datetime
) -> Mapping[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    try:
        key = keys[kid]
    except KeyError:
        raise NrasTokenError(
            f"NRAS token {name!r} is signed by key {kid!r}, which is not in the NRAS key set"
        ) from None
    try:
        # Times are checked below against the pinned verification time, not the wall clock.
        claims: dict[str, object] = jwt.decode(
            token,
            key=key.key,
            algorithms=["ES384"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False},
        )
    except jwt.InvalidSignatureError:
        raise NrasTokenError(f"NRAS token {name!r}: signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise NrasTokenError(f"NRAS token {name!r} is not valid: {exc}") from None
    if claims.get("iss") != NRAS_ISSUER:
        raise NrasUntrustedTokenError(f"NRAS token {name!r} is issued by {claims.get('iss')!r}, not NRAS")
    for claim, late in (("nbf", False), ("exp", True)):
        value = claims.get(claim)
        if not isinstance(value, int):
            raise NrasTokenError(f"NRAS token {name!r} has no numeric {claim!r}")
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
        if (late and now > moment + _LEEWAY) or (not late and now + _LEEWAY < moment):
            raise NrasTokenError(f"NRAS token {name!r} is not valid at {now:%Y-%m-%dT%H:%M:%SZ} ({claim})")
    nonce = claims.get("eat_nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.lower(), expected_nonce.hex()):
        raise NrasNonceMismatchError(
            f"NRAS token {name!r} eat_nonce is not the nonce derived from your challenge"
        )
    return claims

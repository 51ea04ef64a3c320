"""Optional remote path: an NVIDIA NRAS attestation token stapled to GPU evidence.

NRAS (NVIDIA Remote Attestation Service) answers GPU evidence with a detached EAT: a JSON
array ``[["JWT", <overall token>], {"GPU-0": <token>, ...}]``. Verification here:

* every token is a JWS with ``alg`` ES384 and a ``kid`` found in the NRAS key set, fetched
  through the collateral fetcher (``NRAS_JWKS_URL``), and its signature verifies (PyJWT);
  an HS256 token, or one issued by ``LOCAL_GPU_VERIFIER`` (what nv-attestation-sdk's local
  mode makes with a constant secret), is refused with :class:`NrasUntrustedTokenError`;
* ``iss`` is NRAS, and ``nbf`` / ``exp`` hold at the verification time (not the wall clock);
* ``eat_nonce`` in EVERY token equals the SPDM nonce derived from the client's binding
  (NVIDIA's ``validate_token`` never checks it);
* the overall token's ``submods`` list exactly the detached GPU tokens, each with the
  SHA-256 digest of that token's text, one per GPU of the evidence; the overall result is
  true and every GPU token reports ``measres: success``.

It adds NVIDIA's appraisal to FedSeal's own local checks; it never replaces them.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedseal import strictjson

from .._errors import CollateralUnavailableError
from .._fetch import CollateralFetcher, CollateralRequest
from ._errors import (
    NrasNonceMismatchError,
    NrasTokenError,
    NrasUntrustedTokenError,
    NvidiaVerifierUnavailableError,
)

__all__ = ["NRAS_ISSUER", "NRAS_JWKS_URL", "NrasAppraisal", "verify_nras_token"]

NRAS_ISSUER = "https://nras.attestation.nvidia.com"
NRAS_JWKS_URL = "https://nras.attestation.nvidia.com/.well-known/jwks.json"
_LEEWAY = datetime.timedelta(seconds=60)
_MAX_TOKEN_TEXT = 256 * 1024


@dataclass(frozen=True)
class NrasAppraisal:
    """What a verified NRAS token says: the GPU submodule names and the key that signed."""

    gpu_submodules: tuple[str, ...]
    key_id: str


def verify_nras_token(
    token_text: str,
    *,
    expected_nonce: bytes,
    gpu_count: int,
    fetcher: CollateralFetcher,
    now: datetime.datetime,
) -> NrasAppraisal:
    """Verify a stapled NRAS detached EAT; raise a named error on any failure."""
    try:
        import jwt
    except ImportError as exc:
        raise NvidiaVerifierUnavailableError(
            f"NRAS tokens need PyJWT (pip install 'fedseal[nvidia]'): {exc}"
        ) from None
    overall, detached = _split(token_text)
    tokens = [overall, *detached.values()]
    key_ids = {_check_header(jwt, token) for token in tokens}
    try:
        key_set = jwt.PyJWKSet.from_json(fetcher.fetch(CollateralRequest(url=NRAS_JWKS_URL)).decode("utf-8"))
    except CollateralUnavailableError:
        raise
    except (jwt.PyJWKSetError, UnicodeDecodeError, ValueError) as exc:
        raise NrasTokenError(f"the NRAS key set is not a usable JWK set: {exc}") from None
    claims = {
        name: _decode(jwt, key_set, token, name, expected_nonce, now) for name, token in detached.items()
    }
    top = _decode(jwt, key_set, overall, "overall", expected_nonce, now)

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
    return NrasAppraisal(gpu_submodules=gpus, key_id=",".join(sorted(key_ids)))


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
    jwt: Any, key_set: Any, token: str, name: str, expected_nonce: bytes, now: datetime.datetime
) -> Mapping[str, object]:
    kid = jwt.get_unverified_header(token)["kid"]
    try:
        key = key_set[kid]
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

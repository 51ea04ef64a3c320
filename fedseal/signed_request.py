"""Signed requests: what an operator, an approver or an enrolled site signs to be let in.

One format serves the operator surface (open or close a round, change the job, rotate the
enrolment, approve a release: each names an `action` and its `params`) and the per-call
tokens with which a caller proves its key on a read call (action ``call``, params
``{"method": <gRPC method>}``). Wire form, RFC 8785 canonical JSON in UTF-8::

    {
      "body": {
        "action":        "open_round",
        "audience":      "<base64, 32 bytes: the attested log public key of the enclave>",
        "expires_at_ms": 1767225660000,
        "issued_at_ms":  1767225600000,
        "key_id":        "<16 hex digits, see key_id()>",
        "nonce":         "<base64, 16 to 64 random bytes>",
        "params":        {...}
      },
      "format":    "fedseal-signed-request/v1",
      "signature": "<base64, 64 bytes: Ed25519 over SIGNED_REQUEST_DOMAIN || canonical(body)>"
    }

Why each field: `audience` binds a request to one enclave (a restarted enclave has a new
log key, so a request captured earlier is dead there, and its nonce cache may start
empty); the validity window (at most `MAX_LIFETIME_MS`, checked against the verifier's
clock with `CLOCK_SKEW_MS` of slack) bounds how long a verifier must remember a nonce;
the nonce makes each request usable once. Verification runs in a fixed order and raises
the first failure as a named error (never a bool): malformed, wrong audience, unknown
signer, forged signature, not yet valid / expired, unknown action, wrong role, replayed.
A nonce is remembered only once everything else passed, so a forged request cannot use up
someone else's nonce.

Key ids are ``SHA-256("fedseal/key-id/v1\\n" || raw Ed25519 public key)[:8]`` in hex: the
same derivation names site keys in the enrolment and in `update_accepted` log entries.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedseal.binding import ED25519_PUBLIC_KEY_SIZE
from fedseal.canonical import b64decode_canonical, b64encode, canonical_json, parse_canonical
from fedseal.errors import FedSealError, FormatError

__all__ = [
    "ACTION_ROLES",
    "CALL_ACTION",
    "CLOCK_SKEW_MS",
    "DEFAULT_LIFETIME_MS",
    "MAX_LIFETIME_MS",
    "MAX_SIGNED_REQUEST_BYTES",
    "SIGNED_REQUEST_DOMAIN",
    "SIGNED_REQUEST_FORMAT",
    "ExpiredRequestError",
    "ForgedRequestError",
    "MalformedPrincipalsError",
    "MalformedRequestError",
    "NonceCache",
    "NotYetValidRequestError",
    "ReplayedRequestError",
    "RequestCacheFullError",
    "Role",
    "SignedRequestError",
    "Signer",
    "UnknownActionError",
    "UnknownSignerError",
    "VerifiedRequest",
    "WrongAudienceError",
    "WrongRoleError",
    "key_id",
    "now_ms",
    "parse_principals",
    "principals_to_json",
    "sign_request",
    "verify_signed_request",
]

SIGNED_REQUEST_FORMAT = "fedseal-signed-request/v1"
SIGNED_REQUEST_DOMAIN = b"fedseal/signed-request/v1\n"
KEY_ID_DOMAIN = b"fedseal/key-id/v1\n"
CALL_ACTION = "call"
MAX_SIGNED_REQUEST_BYTES = 1024 * 1024  # a rotated enrolment travels in `params`
MAX_LIFETIME_MS = 10 * 60 * 1000
DEFAULT_LIFETIME_MS = 2 * 60 * 1000
CLOCK_SKEW_MS = 60 * 1000
_MIN_NONCE, _MAX_NONCE = 16, 64
_ACTION = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_BODY_FIELDS = frozenset({"action", "audience", "expires_at_ms", "issued_at_ms", "key_id", "nonce", "params"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
MAX_PRINCIPALS = 256


class MalformedPrincipalsError(FormatError):
    """A `principals` list is invalid (the message names the entry)."""


class SignedRequestError(FedSealError):
    """Root of signed-request refusals; `reason` is the one-word name a service reports."""

    reason = "bad_request"


class MalformedRequestError(SignedRequestError, FormatError):
    """The request does not follow the format (the message names the field)."""

    reason = "malformed_request"


class WrongAudienceError(SignedRequestError):
    """The request was made for another enclave (its audience is another log key)."""

    reason = "wrong_audience"


class UnknownSignerError(SignedRequestError):
    """No key with the request's key id is configured here (or it was removed)."""

    reason = "unknown_signer"


class ForgedRequestError(SignedRequestError):
    """The signature does not verify under the key the request names."""

    reason = "forged_request"


class NotYetValidRequestError(SignedRequestError):
    """The request was issued later than the verifier's clock allows (beyond the skew)."""

    reason = "not_yet_valid"


class ExpiredRequestError(SignedRequestError):
    """The request's validity window has passed."""

    reason = "expired_request"


class UnknownActionError(SignedRequestError):
    """The request names an action this verifier does not accept."""

    reason = "unknown_action"


class WrongRoleError(SignedRequestError):
    """The signer's role may not perform the request's action."""

    reason = "wrong_role"


class ReplayedRequestError(SignedRequestError):
    """This request (its signer and nonce) was already used."""

    reason = "replayed_request"


class RequestCacheFullError(SignedRequestError):
    """Too many requests are still within their validity window to remember another one."""

    reason = "too_many_requests"


class Role(enum.Enum):
    """Who a signer is. Sites are enrolled (fedseal/enrolment.py); the others are named in
    the job config's `principals`, one role per key (separate keys for separate duties)."""

    SITE = "site"
    OPERATOR = "operator"
    APPROVER = "approver"


# The operator-surface actions and the roles that may perform them: the aggregator enforces
# this table and the auditor checks every `operator_action` entry against it.
ACTION_ROLES: dict[str, frozenset[Role]] = {
    "open_round": frozenset({Role.OPERATOR}),
    "close_round": frozenset({Role.OPERATOR}),
    "update_job": frozenset({Role.OPERATOR}),
    "rotate_enrolment": frozenset({Role.OPERATOR}),
}


def key_id(public_key: bytes) -> str:
    """The 16-hex-digit id of a raw 32-byte Ed25519 public key."""
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise FormatError(f"an Ed25519 public key is {ED25519_PUBLIC_KEY_SIZE} bytes, got {len(public_key)}")
    return hashlib.sha256(KEY_ID_DOMAIN + public_key).digest()[:8].hex()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Signer:
    """A key a verifier accepts: who holds it (`name`: site id or principal name) and as what."""

    name: str
    role: Role
    public_key: bytes

    def __post_init__(self) -> None:
        if len(self.public_key) != ED25519_PUBLIC_KEY_SIZE:
            raise FormatError(f"signer {self.name!r}: public key must be {ED25519_PUBLIC_KEY_SIZE} bytes")

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)


_TOKEN = object()


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose every check passed; made only by `verify_signed_request`."""

    _token: InitVar[object]
    action: str
    params: Mapping[str, Any]
    signer: Signer
    nonce: bytes
    issued_at_ms: int
    expires_at_ms: int
    body: bytes = field(repr=False)  # canonical JSON of the body: what the log records
    signature: bytes = field(repr=False)

    def __post_init__(self, _token: object) -> None:
        if _token is not _TOKEN:
            raise TypeError("VerifiedRequest is made only by verify_signed_request()")

    @property
    def key_id(self) -> str:
        return self.signer.key_id

    @property
    def digest(self) -> bytes:
        """SHA-256 of the signed bytes: the request's identity in logs."""
        return hashlib.sha256(SIGNED_REQUEST_DOMAIN + self.body).digest()


class NonceCache:
    """Nonces of requests still within their validity window, per key id (thread-safe).

    Bounded: a request is remembered until its expiry plus the clock skew, then dropped,
    and at most `capacity` are remembered at once (past that, new requests are refused
    with RequestCacheFullError rather than forgetting a live nonce).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._seen: dict[tuple[str, bytes], int] = {}
        self._lock = threading.Lock()
        self._next_prune = 0

    def remember(self, key: str, nonce: bytes, expires_at_ms: int, now: int) -> None:
        """Record (key, nonce) until `expires_at_ms` (+ skew); raise if it is already there."""
        with self._lock:
            if now >= self._next_prune or len(self._seen) >= self._capacity:
                self._seen = {k: t for k, t in self._seen.items() if t >= now}
                self._next_prune = now + 1000
            if (key, nonce) in self._seen:
                raise ReplayedRequestError(f"request with this nonce from key {key} was already used")
            if len(self._seen) >= self._capacity:
                raise RequestCacheFullError(
                    f"{len(self._seen)} requests are within their validity window; try again shortly"
                )
            self._seen[(key, nonce)] = expires_at_ms + CLOCK_SKEW_MS

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


def sign_request(
    private_key: Ed25519PrivateKey,
    action: str,
    params: Mapping[str, Any],
    *,
    audience: bytes,
    issued_at_ms: int | None = None,
    lifetime_ms: int = DEFAULT_LIFETIME_MS,
    nonce: bytes | None = None,
) -> bytes:
    """The wire bytes of a request for `action` with `params`, signed by `private_key`.

    `audience` is the attested log public key of the enclave the request is for.
    """
    issued = now_ms() if issued_at_ms is None else issued_at_ms
    body = {
        "action": action,
        "audience": b64encode(audience),
        "expires_at_ms": issued + lifetime_ms,
        "issued_at_ms": issued,
        "key_id": key_id(private_key.public_key().public_bytes_raw()),
        "nonce": b64encode(os.urandom(32) if nonce is None else nonce),
        "params": dict(params),
    }
    _check_body(body)  # the signer gets the same errors a verifier would raise
    body_bytes = canonical_json(body)
    return canonical_json(
        {
            "body": body,
            "format": SIGNED_REQUEST_FORMAT,
            "signature": b64encode(private_key.sign(SIGNED_REQUEST_DOMAIN + body_bytes)),
        }
    )


def verify_signed_request(
    data: bytes,
    *,
    signers: Mapping[str, Signer],
    audience: bytes,
    actions: Mapping[str, frozenset[Role]],
    nonces: NonceCache,
    now: int | None = None,
) -> VerifiedRequest:
    """Check a signed request; return a VerifiedRequest or raise a SignedRequestError.

    `signers` maps key ids to the keys accepted here; `actions` maps each accepted action
    to the roles that may perform it; `now` is the verifier's clock in Unix milliseconds.
    """
    if len(data) > MAX_SIGNED_REQUEST_BYTES:
        raise MalformedRequestError(f"signed request is larger than {MAX_SIGNED_REQUEST_BYTES} bytes")
    try:
        document = parse_canonical(data, what="signed request")
    except FormatError as exc:
        raise MalformedRequestError(str(exc)) from None
    if not isinstance(document, dict) or set(document) != {"body", "format", "signature"}:
        raise MalformedRequestError("signed request must be an object with 'body', 'format', 'signature'")
    if document["format"] != SIGNED_REQUEST_FORMAT:
        raise MalformedRequestError(f"signed request format must be {SIGNED_REQUEST_FORMAT!r}")
    body = document["body"]
    _check_body(body)
    try:
        signature = b64decode_canonical(document["signature"], what="signed request 'signature'", size=64)
        request_audience = b64decode_canonical(body["audience"], what="signed request 'audience'")
        nonce = b64decode_canonical(body["nonce"], what="signed request 'nonce'")
    except FormatError as exc:
        raise MalformedRequestError(str(exc)) from None
    if request_audience != audience:
        raise WrongAudienceError(
            "the request was made for another enclave (its audience is not this enclave's log key); "
            "attest this enclave and sign a new request"
        )
    signer = signers.get(body["key_id"])
    if signer is None:
        raise UnknownSignerError(f"no key with id {body['key_id']} may sign requests here")
    body_bytes = canonical_json(body)
    try:
        Ed25519PublicKey.from_public_bytes(signer.public_key).verify(
            signature, SIGNED_REQUEST_DOMAIN + body_bytes
        )
    except InvalidSignature:
        raise ForgedRequestError(f"the signature does not verify under key {signer.key_id}") from None
    clock = now_ms() if now is None else now
    issued, expires = body["issued_at_ms"], body["expires_at_ms"]
    if issued > clock + CLOCK_SKEW_MS:
        raise NotYetValidRequestError(
            f"the request was issued {(issued - clock) / 1000:.0f} s in the future; check the signer's clock"
        )
    if clock > expires + CLOCK_SKEW_MS:
        raise ExpiredRequestError(f"the request expired {(clock - expires) / 1000:.0f} s ago")
    action = body["action"]
    roles = actions.get(action)
    if roles is None:
        raise UnknownActionError(f"action {action!r} is not accepted here; accepted: {sorted(actions)}")
    if signer.role not in roles:
        raise WrongRoleError(
            f"{signer.name!r} signs as {signer.role.value}; action {action!r} needs "
            f"{' or '.join(sorted(r.value for r in roles))}"
        )
    nonces.remember(signer.key_id, nonce, expires, clock)
    return VerifiedRequest(
        _TOKEN,
        action=action,
        params=MappingProxyType(dict(body["params"])),
        signer=signer,
        nonce=nonce,
        issued_at_ms=issued,
        expires_at_ms=expires,
        body=body_bytes,
        signature=signature,
    )


def _check_body(body: object) -> None:
    """The body's shape (the parts a signer controls); MalformedRequestError names the field."""
    if not isinstance(body, dict):
        raise MalformedRequestError("signed request 'body' must be an object")
    missing, unknown = sorted(_BODY_FIELDS - set(body)), sorted(set(body) - _BODY_FIELDS)
    if missing or unknown:
        raise MalformedRequestError(f"signed request body: missing {missing}, unknown {unknown}")
    if not isinstance(body["action"], str) or not _ACTION.fullmatch(body["action"]):
        raise MalformedRequestError("signed request 'action' must match [a-z][a-z0-9_]{0,63}")
    if not isinstance(body["key_id"], str) or not _KEY_ID.fullmatch(body["key_id"]):
        raise MalformedRequestError("signed request 'key_id' must be 16 lowercase hex digits")
    if not isinstance(body["params"], dict):
        raise MalformedRequestError("signed request 'params' must be an object")
    for name in ("issued_at_ms", "expires_at_ms"):
        value = body[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
            raise MalformedRequestError(f"signed request {name!r} must be a non-negative integer (Unix ms)")
    lifetime = body["expires_at_ms"] - body["issued_at_ms"]
    if not 0 < lifetime <= MAX_LIFETIME_MS:
        raise MalformedRequestError(
            f"signed request must expire after it is issued and within {MAX_LIFETIME_MS // 1000} s"
        )
    nonce = body["nonce"]
    try:
        raw = b64decode_canonical(nonce, what="signed request 'nonce'")
    except FormatError as exc:
        raise MalformedRequestError(str(exc)) from None
    if not _MIN_NONCE <= len(raw) <= _MAX_NONCE:
        raise MalformedRequestError(f"signed request 'nonce' must be {_MIN_NONCE} to {_MAX_NONCE} bytes")
    if not isinstance(body["audience"], str):
        raise MalformedRequestError("signed request 'audience' must be base64")


def parse_principals(value: object) -> tuple[Signer, ...]:
    """The job config's `principals` list (module docstring); MalformedPrincipalsError names the entry."""
    where = "principals"
    if not isinstance(value, list) or len(value) > MAX_PRINCIPALS:
        raise MalformedPrincipalsError(f"{where} must be a list of at most {MAX_PRINCIPALS} entries")
    principals: list[Signer] = []
    for n, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"name", "role", "key"}:
            raise MalformedPrincipalsError(
                f"{where}[{n}] must be an object with exactly 'name', 'role', 'key'"
            )
        name, role = item["name"], item["role"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise MalformedPrincipalsError(
                f"{where}[{n}]: 'name' must be 1-128 letters, digits, '.', '_', '@', '-'"
            )
        if role not in (Role.OPERATOR.value, Role.APPROVER.value):
            raise MalformedPrincipalsError(f"{where}[{n}] ({name}): 'role' must be 'operator' or 'approver'")
        try:
            key = b64decode_canonical(item["key"], what=f"{where}[{n}] ({name}) 'key'", size=32)
        except FormatError as exc:
            raise MalformedPrincipalsError(str(exc)) from None
        principals.append(Signer(name, Role(role), key))
    if len({p.name for p in principals}) != len(principals):
        raise MalformedPrincipalsError(f"{where}: every principal needs its own name")
    if len({p.key_id for p in principals}) != len(principals):
        raise MalformedPrincipalsError(
            f"{where}: a key may have one role only (use separate keys for separate duties)"
        )
    return tuple(principals)


def principals_to_json(principals: tuple[Signer, ...]) -> list[dict[str, str]]:
    """The `principals` list as the job config writes it (and the log records it)."""
    return [{"name": p.name, "role": p.role.value, "key": b64encode(p.public_key)} for p in principals]

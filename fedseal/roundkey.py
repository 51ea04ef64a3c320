"""Per-round HPKE keys: the statement the enclave's attested log key signs for each round.

Every round has its own X25519 key pair, made in enclave memory when the round opens and
dropped when it closes or fails (aggregator/enclave/_roundkey.py). Clients seal their
updates to the round's public key, never to a key that outlives the round, so an upload
recorded during round r cannot be opened once round r is over.

The public key reaches clients (GetRound) and the audit log (`round_opened`) as a
statement signed by the enclave's log key, the key its attestation binds::

    message = b"fedseal/round-key/v1\\n" || canonical_json({
        "config_digest":   "<base64 SHA-256 of the round config (RoundConfig.digest)>",
        "hpke_public_key": "<base64 raw X25519 public key, 32 bytes>",
        "log_origin":      "<the audit log's origin line>",
        "round_id":        3
    })
    signature = Ed25519(log private key, message)

(canonical_json: RFC 8785.) The domain line keeps this signature from ever being read as
any other statement the log key signs (checkpoints, manifests, receipts). The config digest
ties the key to the one round config the client reads; the origin to one log. A client
checks the signature under the log key of the evidence it just verified, and the round id
and config digest against the round it seals for (`SignedRoundKey.verify`), and seals
nothing otherwise. The auditor checks every `round_opened` entry's signature with its own
rules (auditor/_roundkeys.py), rebuilding the message with `round_key_message`.
"""

from __future__ import annotations

import hmac
from dataclasses import InitVar, dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedseal.canonical import b64encode, canonical_json
from fedseal.errors import FedSealError, FormatError

__all__ = [
    "ROUND_KEY_DOMAIN",
    "ForeignRoundKeyError",
    "MissingRoundKeyError",
    "RoundKeyError",
    "RoundKeyMismatchError",
    "RoundKeyStatement",
    "SignedRoundKey",
    "VerifiedRoundKey",
    "round_key_message",
]

ROUND_KEY_DOMAIN = b"fedseal/round-key/v1\n"
_KEY_SIZE = 32
_DIGEST_SIZE = 32
_SIGNATURE_SIZE = 64
_MAX_ORIGIN = 256
_U53_MAX = 2**53 - 1  # round ids travel in canonical JSON

# Only this module holds it, so only SignedRoundKey.verify makes a VerifiedRoundKey.
_CONSTRUCTION_TOKEN = object()


class RoundKeyError(FedSealError):
    """A round's key cannot be used: it was not signed by the attested log key, names
    another round, or was not served at all. Nothing is sealed to it."""


class ForeignRoundKeyError(RoundKeyError):
    """The round key's signature does not verify under the attested log key: the key was
    not made by the attested enclave."""


class RoundKeyMismatchError(RoundKeyError):
    """The signed round key is for another round id or round config than the one sealed for."""


class MissingRoundKeyError(RoundKeyError):
    """The aggregator served no signed round key for the round."""


def round_key_message(log_origin: str, round_id: int, config_digest: bytes, hpke_public_key: bytes) -> bytes:
    """The bytes the log key signs for one round's key (module docstring)."""
    if not isinstance(log_origin, str) or not 1 <= len(log_origin) <= _MAX_ORIGIN:
        raise FormatError(f"round key log_origin must be 1..{_MAX_ORIGIN} characters")
    if not isinstance(round_id, int) or isinstance(round_id, bool) or not 1 <= round_id <= _U53_MAX:
        raise FormatError(f"round key round_id must be an integer in 1..{_U53_MAX}")
    if not isinstance(config_digest, bytes) or len(config_digest) != _DIGEST_SIZE:
        raise FormatError(f"round key config_digest must be {_DIGEST_SIZE} bytes (SHA-256)")
    if not isinstance(hpke_public_key, bytes) or len(hpke_public_key) != _KEY_SIZE:
        raise FormatError(f"round key hpke_public_key must be {_KEY_SIZE} bytes (raw X25519)")
    body = {
        "config_digest": b64encode(config_digest),
        "hpke_public_key": b64encode(hpke_public_key),
        "log_origin": log_origin,
        "round_id": round_id,
    }
    return ROUND_KEY_DOMAIN + canonical_json(body)


@dataclass(frozen=True)
class RoundKeyStatement:
    """What the log key vouches for: this X25519 key is round `round_id`'s of this log."""

    log_origin: str
    round_id: int
    config_digest: bytes
    hpke_public_key: bytes

    def __post_init__(self) -> None:
        self.message()  # validates every field

    def message(self) -> bytes:
        return round_key_message(self.log_origin, self.round_id, self.config_digest, self.hpke_public_key)

    def sign(self, log_private_key: Ed25519PrivateKey) -> SignedRoundKey:
        return SignedRoundKey(self, log_private_key.sign(self.message()))


@dataclass(frozen=True)
class SignedRoundKey:
    """A round key statement and the log key's Ed25519 signature over its message."""

    statement: RoundKeyStatement
    signature: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.signature, bytes) or len(self.signature) != _SIGNATURE_SIZE:
            raise FormatError(f"round key signature must be {_SIGNATURE_SIZE} bytes (Ed25519)")

    def verify(self, log_public_key: bytes, *, round_id: int, config_digest: bytes) -> VerifiedRoundKey:
        """The key, once its signature verifies under `log_public_key` (the attested log key)
        and it names `round_id` and `config_digest`; else ForeignRoundKeyError or
        RoundKeyMismatchError."""
        try:
            Ed25519PublicKey.from_public_bytes(log_public_key).verify(
                self.signature, self.statement.message()
            )
        except (InvalidSignature, ValueError):
            raise ForeignRoundKeyError(
                f"the key served for round {self.statement.round_id} is not signed by the attested "
                "enclave's log key"
            ) from None
        if self.statement.round_id != round_id:
            raise RoundKeyMismatchError(
                f"the signed round key is round {self.statement.round_id}'s, not round {round_id}'s"
            )
        if not hmac.compare_digest(self.statement.config_digest, config_digest):
            raise RoundKeyMismatchError(
                f"the signed round key names another config than the one served for round {round_id}"
            )
        return VerifiedRoundKey(_CONSTRUCTION_TOKEN, self.statement, log_public_key)


@dataclass(frozen=True)
class VerifiedRoundKey:
    """A round key whose signature verified under `log_public_key`; only
    `SignedRoundKey.verify` makes one (the constructor needs a token private to this module)."""

    _token: InitVar[object]
    statement: RoundKeyStatement
    log_public_key: bytes

    def __post_init__(self, _token: object) -> None:
        if _token is not _CONSTRUCTION_TOKEN:
            raise TypeError("VerifiedRoundKey is created only by SignedRoundKey.verify()")

    @property
    def round_id(self) -> int:
        return self.statement.round_id

    @property
    def hpke_public_key(self) -> bytes:
        return self.statement.hpke_public_key

    def public_key_obj(self) -> X25519PublicKey:
        """The round's key, ready to seal to."""
        return X25519PublicKey.from_public_bytes(self.statement.hpke_public_key)

"""One round's HPKE key pair: made in enclave memory when the round opens, dropped when it ends.

The public key is published as a statement signed by the enclave's attested log key
(fedseal/roundkey.py), in the round's `round_opened` entry and in GetRound; clients seal
their updates to it. The private key is a `cryptography` X25519PrivateKey object and only
that: it is never serialized (no `private_bytes`), so no Python `bytes` object ever holds
it. `drop()` (at close, at failure, at shutdown) removes the round's only reference; from
then on the round can open nothing, and an upload recorded during the round stays sealed.
OpenSSL clears an X25519 key's private bytes when the key object is freed; that happens as
soon as no upload still unwrapping a data key holds the object (a fraction of a millisecond).
"""

from __future__ import annotations

import threading

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedseal.errors import FedSealError
from fedseal.roundkey import RoundKeyStatement, SignedRoundKey

__all__ = ["RoundKeyDroppedError", "RoundKeyPair"]


class RoundKeyDroppedError(FedSealError):
    """The round's private key was dropped (the round closed or failed): nothing opens."""


class RoundKeyPair:
    """The key pair of one round (module docstring)."""

    def __init__(self, private_key: X25519PrivateKey, signed: SignedRoundKey) -> None:
        self._private: X25519PrivateKey | None = private_key
        self._lock = threading.Lock()
        self.signed = signed

    @classmethod
    def generate(
        cls, *, log_origin: str, round_id: int, config_digest: bytes, log_private_key: Ed25519PrivateKey
    ) -> RoundKeyPair:
        """A fresh pair for round `round_id`, its public key signed by `log_private_key`."""
        private = X25519PrivateKey.generate()
        statement = RoundKeyStatement(
            log_origin=log_origin,
            round_id=round_id,
            config_digest=config_digest,
            hpke_public_key=private.public_key().public_bytes_raw(),
        )
        return cls(private, statement.sign(log_private_key))

    @property
    def public_key(self) -> bytes:
        return self.signed.statement.hpke_public_key

    @property
    def dropped(self) -> bool:
        with self._lock:
            return self._private is None

    def private_key(self) -> X25519PrivateKey:
        """The private key, to unwrap one upload's data key; RoundKeyDroppedError once dropped."""
        with self._lock:
            key = self._private
        if key is None:
            raise RoundKeyDroppedError(
                f"round {self.signed.statement.round_id}'s key was dropped when the round ended"
            )
        return key

    def drop(self) -> None:
        """Forget the private key for good (idempotent)."""
        with self._lock:
            self._private = None

    def __repr__(self) -> str:
        # Never the key; only which round's it is and whether it is still held.
        state = "dropped" if self.dropped else "held"
        return f"RoundKeyPair(round_id={self.signed.statement.round_id}, {state})"

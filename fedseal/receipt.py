"""Receipts: proof that an accepted update is in the enclave's audit log.

A receipt is a C2SP tlog-proof (index, inclusion proof, signed checkpoint) whose `extra`
line carries the log entry itself (canonical JSON). Verifying it shows that the enclave
holding the attested log key committed, in a checkpoint it signed, to an `update_accepted`
entry naming this client's round, id, example count and the digest of exactly the
ciphertext it sent.

A client may also require witness cosignatures (C2SP tlog-cosignature lines appended to
the receipt's checkpoint by the aggregator, see aggregator/_witness.py): at least
`min_cosignatures` of the given cosigner keys must have validly cosigned it. Any
cosignature from a given key that fails to verify rejects the receipt.

Keep receipts (client_sdk's ReceiptStore does): `fedseal-audit check-receipt` later proves
that the entry is still in the log's current tree.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedseal.canonical import b64encode
from fedseal.checkpoint import Checkpoint, TlogProof, VerifiedCheckpoint, verify_tlog_proof
from fedseal.errors import FedSealError, NoteError, ReceiptError
from fedseal.logformat import LogEntry
from fedseal.logschema import UpdateAccepted
from fedseal.note import NoteVerifier, split_note

__all__ = ["ExpectedUpdate", "Receipt", "verify_receipt"]


@dataclass(frozen=True)
class ExpectedUpdate:
    """What the client knows it sent; the receipt's entry must say exactly this."""

    round_id: int
    client_id: str
    ciphertext_digest: bytes
    ciphertext_size: int
    num_examples: int
    adapter_spec_digest: bytes
    idempotency_key: bytes

    def expected_values(self) -> dict[str, int | str | bytes]:
        """What the `update_accepted` entry must record, by schema field name."""
        return {
            "round_id": self.round_id,
            "client_id": self.client_id,
            "ciphertext_digest": self.ciphertext_digest,
            "ciphertext_size": self.ciphertext_size,
            "num_examples": self.num_examples,
            "adapter_spec_digest": self.adapter_spec_digest,
            "idempotency_key_digest": hashlib.sha256(self.idempotency_key).digest(),
        }


@dataclass(frozen=True)
class Receipt:
    """A verified receipt. Keep `text`: it is what an auditor checks later."""

    text: str
    index: int
    entry: LogEntry
    checkpoint: Checkpoint
    cosigners: tuple[str, ...] = ()  # names of the required witnesses whose cosignature verified

    @property
    def log_origin(self) -> str:
        return self.checkpoint.origin


def verify_receipt(
    text: str,
    log_public_key: Ed25519PublicKey | bytes,
    expected: ExpectedUpdate | None = None,
    *,
    cosigners: Sequence[NoteVerifier] = (),
    min_cosignatures: int = 0,
) -> Receipt:
    """Verify a receipt against the attested log key (and the required witnesses, if any);
    raise ReceiptError on any failure."""
    if not 0 <= min_cosignatures <= len(cosigners):
        raise ValueError(f"min_cosignatures {min_cosignatures} is outside 0..{len(cosigners)}")
    try:
        proof = TlogProof.parse(text)
        if proof.extra is None:
            raise ReceiptError("receipt carries no log entry (missing 'extra' line)")
        origin = Checkpoint.parse_body(_note_body(proof.checkpoint_note)).origin
        verifier = NoteVerifier(origin, _raw(log_public_key))
        verified = verify_tlog_proof(proof, proof.extra, [verifier, *cosigners], origin)
        entry = LogEntry.from_leaf_data(proof.extra, where="receipt entry")
    except ReceiptError:
        raise
    except FedSealError as exc:
        raise ReceiptError(f"receipt does not verify: {exc}") from exc
    if entry.index != proof.index:
        raise ReceiptError(f"receipt entry says index {entry.index}, the proof is for {proof.index}")
    body = entry.body
    if not isinstance(body, UpdateAccepted):
        raise ReceiptError(f"receipt entry is a {entry.kind.value!r} entry, not 'update_accepted'")
    if expected is not None:
        for name, value in expected.expected_values().items():
            found = getattr(body, name)
            if isinstance(value, bytes) and isinstance(found, bytes):
                same = hmac.compare_digest(found, value)
            elif isinstance(value, str) and isinstance(found, str):
                same = hmac.compare_digest(found.encode(), value.encode())
            else:
                same = found == value
            if not same:
                raise ReceiptError(
                    f"receipt entry field {name!r} is {_shown(found)}, but this client sent {_shown(value)}"
                )
    cosigned = _cosigned_by(verified, cosigners)
    if len(cosigned) < min_cosignatures:
        raise ReceiptError(
            f"the receipt's checkpoint is cosigned by {len(cosigned)} of the required witnesses "
            f"({', '.join(cosigned) or 'none'}); the policy requires {min_cosignatures}"
        )
    return Receipt(
        text=text, index=proof.index, entry=entry, checkpoint=verified.checkpoint, cosigners=cosigned
    )


def _cosigned_by(verified: VerifiedCheckpoint, cosigners: Sequence[NoteVerifier]) -> tuple[str, ...]:
    wanted = {(c.name, c.key_id) for c in cosigners}
    return tuple(s.name for s in verified.cosignatures if (s.name, s.key_id) in wanted)


def _note_body(note: str) -> str:
    try:
        return split_note(note)[0]
    except NoteError as exc:
        raise ReceiptError(f"receipt checkpoint is not a signed note: {exc}") from None


def _raw(key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(key, bytes):
        return key
    return key.public_bytes_raw()


def _shown(value: object) -> str:
    return repr(b64encode(value)) if isinstance(value, bytes) else repr(value)

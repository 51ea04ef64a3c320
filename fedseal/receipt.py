"""Receipts: proof that an accepted update is in the enclave's audit log.

A receipt is a C2SP tlog-proof (index, inclusion proof, signed checkpoint) whose `extra`
line carries the log entry itself (canonical JSON). Verifying it shows that the enclave
holding the attested log key committed, in a checkpoint it signed, to an `update_accepted`
entry naming this client's round, id, example count and the digest of exactly the
ciphertext it sent.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedseal.canonical import b64encode
from fedseal.checkpoint import Checkpoint, TlogProof, verify_tlog_proof
from fedseal.errors import FedSealError, ReceiptError
from fedseal.logformat import EntryKind, LogEntry
from fedseal.note import NoteVerifier

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

    def expected_fields(self) -> dict[str, object]:
        return {
            "round_id": self.round_id,
            "client_id": self.client_id,
            "ciphertext_digest": b64encode(self.ciphertext_digest),
            "ciphertext_size": self.ciphertext_size,
            "num_examples": self.num_examples,
            "adapter_spec_digest": b64encode(self.adapter_spec_digest),
            "idempotency_key_digest": b64encode(hashlib.sha256(self.idempotency_key).digest()),
        }


@dataclass(frozen=True)
class Receipt:
    """A verified receipt. Keep `text`: it is what an auditor checks later."""

    text: str
    index: int
    entry: LogEntry
    checkpoint: Checkpoint

    @property
    def log_origin(self) -> str:
        return self.checkpoint.origin


def verify_receipt(
    text: str, log_public_key: Ed25519PublicKey | bytes, expected: ExpectedUpdate | None = None
) -> Receipt:
    """Verify a receipt against the attested log key; raise ReceiptError on any failure."""
    try:
        proof = TlogProof.parse(text)
        if proof.extra is None:
            raise ReceiptError("receipt carries no log entry (missing 'extra' line)")
        origin = Checkpoint.parse_body(_note_body(proof.checkpoint_note)).origin
        verifier = NoteVerifier(origin, _raw(log_public_key))
        verified = verify_tlog_proof(proof, proof.extra, [verifier], origin)
        entry = LogEntry.from_leaf_data(proof.extra, where="receipt entry")
    except ReceiptError:
        raise
    except FedSealError as exc:
        raise ReceiptError(f"receipt does not verify: {exc}") from exc
    if entry.index != proof.index:
        raise ReceiptError(f"receipt entry says index {entry.index}, the proof is for {proof.index}")
    if entry.kind is not EntryKind.UPDATE_ACCEPTED:
        raise ReceiptError(f"receipt entry is a {entry.kind.value!r} entry, not 'update_accepted'")
    if expected is not None:
        for name, value in expected.expected_fields().items():
            found = entry.fields.get(name)
            same = hmac.compare_digest(str(found), str(value)) if isinstance(value, str) else found == value
            if not same:
                raise ReceiptError(
                    f"receipt entry field {name!r} is {found!r}, but this client sent {value!r}"
                )
    return Receipt(text=text, index=proof.index, entry=entry, checkpoint=verified.checkpoint)


def _note_body(note: str) -> str:
    body, sep, _ = note.rpartition("\n\n")
    if not sep:
        raise ReceiptError("receipt checkpoint is not a signed note")
    return body + "\n"


def _raw(key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(key, bytes):
        return key
    return key.public_bytes_raw()

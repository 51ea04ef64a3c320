"""Round keys, re-verified by the auditor's own rules.

Every round is opened with a fresh HPKE key of its own, and its `round_opened` entry
records that key and the Ed25519 signature of the log key of the enclave that opened the
round over the round-key statement (fedseal/roundkey.py: this log's origin, the round id,
the config digest, the key). The auditor shares only that format with the enclave and the
clients: it rebuilds the message itself and checks the signature under the log key that
the writing enclave's `enclave_started` entry introduced (whose evidence the key chain
verifies). A `round_opened` without a key or signature, a signature that does not verify
there, or a key another round already used is an `invalid_round_key` finding: clients
would have sealed to a key the attested enclave never vouched for, or to one that outlived
its round.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedseal.errors import FormatError
from fedseal.logformat import LogEntry
from fedseal.logschema import RoundOpened
from fedseal.roundkey import round_key_message

from ._findings import FindingKind, Findings

__all__ = ["RoundKeyAuditor"]


class RoundKeyAuditor:
    """Checks each `round_opened` entry's round key (module docstring)."""

    def __init__(self, findings: Findings) -> None:
        self.findings = findings
        self._used: dict[bytes, int] = {}  # round key -> the round that first used it

    def opened(
        self, entry: LogEntry, body: RoundOpened, line: int, origin: str, log_public_key: bytes | None
    ) -> None:
        """`log_public_key`: the log key of the enclave writing this entry (None: no enclave
        has started yet, which the key chain reports on its own)."""
        rid = body.round_id
        where = f"line {line}: round_opened entry {entry.index} (round {rid})"

        def invalid(message: str, field: str) -> None:
            self.findings.add(
                FindingKind.INVALID_ROUND_KEY, line, entry.index, f"{where} {message}", field=field
            )

        key, signature = body.round_public_key, body.round_key_signature
        if key is None or signature is None:
            invalid(
                "records no round key: clients of this round sealed to a key no log key vouched for",
                "round_public_key",
            )
            return
        earlier = self._used.get(key)
        if earlier is not None:
            invalid(f"reuses round {earlier}'s key: every round must have a fresh one", "round_public_key")
        else:
            self._used[key] = rid
        if log_public_key is None:
            invalid(
                "comes before any enclave_started entry: no log key can vouch for its key",
                "round_key_signature",
            )
            return
        try:
            message = round_key_message(origin, rid, body.config_digest, key)
            Ed25519PublicKey.from_public_bytes(log_public_key).verify(signature, message)
        except (InvalidSignature, ValueError, FormatError):
            invalid(
                "carries a round key signature that does not verify under the log key of the enclave "
                "that opened the round (over this log's origin, the round id, its config digest and "
                "the key)",
                "round_key_signature",
            )

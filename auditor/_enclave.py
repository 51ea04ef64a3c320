"""The key chain: which log keys an `enclave_started` entry attests, under a policy.

Shared by the auditor (`fedseal-audit verify`, `check-receipt`) and the witness: a log key
is trusted only through its `enclave_started` entry, whose evidence bundle must verify
under the caller's policy, for the challenge recorded with it, and must attest exactly
the keys the entry names. A resuming enclave's challenge must be
`handover_challenge(previous_checkpoint)`, so its evidence is bound to the log state it
continues; a first enclave's challenge is its own random one.

Evidence is checked at the time the entry records (certificates and collateral valid
then), which is what lets an auditor check an old log after certificates expired.
"""

from __future__ import annotations

import hmac
from dataclasses import InitVar, dataclass

from attestation import AttestationError, CollateralFetcher, Policy, verify_bundle
from fedseal.errors import FedSealError, FormatError
from fedseal.logformat import LogEntry, handover_challenge
from fedseal.logschema import EnclaveStarted
from fedseal.note import NoteVerifier

__all__ = ["AttestedKey", "KeyAttestationError", "attest_enclave_entry"]

# Only attest_enclave_entry holds it, so only it can make an AttestedKey.
_TOKEN = object()


class KeyAttestationError(FedSealError):
    """An `enclave_started` entry does not attest its log key under the policy."""


@dataclass(frozen=True)
class AttestedKey:
    """A log key whose `enclave_started` entry verified; made only by `attest_enclave_entry`."""

    _token: InitVar[object]
    entry_index: int
    origin: str
    verifier: NoteVerifier
    log_public_key: bytes
    hpke_public_key: bytes
    insecure: bool
    evidence_kinds: tuple[str, ...]
    policy_name: str
    previous_checkpoint: str | None

    def __post_init__(self, _token: object) -> None:
        if _token is not _TOKEN:
            raise TypeError("AttestedKey is made only by attest_enclave_entry()")

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id


def attest_enclave_entry(
    entry: LogEntry, policy: Policy, *, fetcher: CollateralFetcher | None = None
) -> AttestedKey:
    """Verify the evidence of an `enclave_started` entry; raise KeyAttestationError or FormatError.

    Collateral comes from the bundle alone unless a `fetcher` is given (an `--online` audit)."""
    body = entry.body
    if not isinstance(body, EnclaveStarted):
        raise FormatError(f"entry {entry.index} is a {entry.kind.value!r} entry, not 'enclave_started'")
    challenge, log_key, hpke_key = body.challenge, body.log_public_key, body.hpke_public_key
    previous = body.previous_checkpoint
    if previous is not None and not hmac.compare_digest(challenge, handover_challenge(previous)):
        raise KeyAttestationError(
            f"entry {entry.index}: a key handover's evidence must answer the challenge derived "
            "from the previous checkpoint it names; this one answers another"
        )
    try:
        attested = verify_bundle(
            body.evidence_bundle, policy, challenge, now=entry.timestamp(), fetcher=fetcher
        )
    except AttestationError as exc:
        raise KeyAttestationError(
            f"entry {entry.index}: the enclave's evidence does not verify under policy {policy.name!r}: {exc}"
        ) from exc
    if not hmac.compare_digest(attested.log_public_key, log_key) or not hmac.compare_digest(
        attested.hpke_public_key, hpke_key
    ):
        raise KeyAttestationError(
            f"entry {entry.index}: the keys in the entry are not the ones its evidence attests"
        )
    return AttestedKey(
        _TOKEN,
        entry_index=entry.index,
        origin=body.log_origin,
        verifier=NoteVerifier(body.log_origin, log_key),
        log_public_key=log_key,
        hpke_public_key=hpke_key,
        insecure=attested.insecure,
        evidence_kinds=tuple(k.value for k in attested.evidence_kinds),
        policy_name=policy.name,
        previous_checkpoint=previous,
    )

"""The enclave-signed provenance of each aggregate, re-verified (fedseal/provenance.py).

A `round_closed` entry that carries a `provenance` envelope must carry exactly the
statement the log itself implies: signed (DSSE, Ed25519) by the attested log key of the
enclave that logged it, for this log's origin, the digest of the config its `round_opened`
logged, its accepted updates (site, example count, ciphertext digest), the aggregate's
digest and size, its DP spend and whether it waits for approvals. The auditor rebuilds
that statement with `aggregate_statement` and compares; anything else is an
`invalid_provenance` finding. Logs from enclaves that did not sign provenance carry none,
which is not a finding (the evidence pack says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedseal.errors import FedSealError
from fedseal.logformat import LogEntry
from fedseal.logschema import RoundClosed, RoundOpened, UpdateAccepted
from fedseal.provenance import DsseEnvelope, UpdateProvenance, aggregate_statement, verify_statement

from ._findings import FindingKind, Findings
from ._keychain import KeyState

__all__ = ["ProvenanceChecker"]


@dataclass
class _Round:
    config_digest: bytes
    approval_required: bool
    updates: list[UpdateProvenance] = field(default_factory=list)


class ProvenanceChecker:
    def __init__(self, findings: Findings) -> None:
        self.findings = findings
        self.rounds: dict[int, _Round] = {}
        self.verified: dict[int, int] = {}  # round id -> index of its round_closed with valid provenance

    def entry(
        self,
        entry: LogEntry,
        body: RoundOpened | UpdateAccepted | RoundClosed,
        line: int,
        key: KeyState | None,
        origin: str,
    ) -> None:
        if isinstance(body, RoundOpened):
            self.rounds[body.round_id] = _Round(body.config_digest, body.config.approval is not None)
            return
        rnd = self.rounds.get(body.round_id)
        if isinstance(body, UpdateAccepted):
            if rnd is not None:
                rnd.updates.append(
                    UpdateProvenance(body.client_id, body.num_examples, body.ciphertext_digest)
                )
            return
        if body.provenance is None or rnd is None or key is None or key.attested is None:
            return  # none recorded; or the round or the key is a finding of its own
        where = f"line {line}: round_closed entry {entry.index} (round {body.round_id})"
        try:
            statement = verify_statement(
                DsseEnvelope.from_json_obj(body.provenance), key.attested.log_public_key
            )
        except FedSealError as exc:
            self.findings.add(FindingKind.INVALID_PROVENANCE, line, entry.index, f"{where}: {exc}")
            return
        expected = aggregate_statement(
            log_origin=origin,
            log_public_key=key.attested.log_public_key,
            round_id=body.round_id,
            round_config_digest=rnd.config_digest,
            strategy=body.strategy,
            updates=rnd.updates,
            aggregate_digest=body.aggregate_digest,
            aggregate_size=body.aggregate_size,
            dp=body.dp,
            approval_required=rnd.approval_required,
        )
        wrong = sorted(
            k for k in expected["predicate"] if statement["predicate"].get(k) != expected["predicate"][k]
        )
        if statement != expected:
            self.findings.add(
                FindingKind.INVALID_PROVENANCE,
                line,
                entry.index,
                f"{where}: its signed provenance statement is not what the log records "
                f"(differs in {wrong or ['subject or fields']})",
            )
            return
        self.verified[body.round_id] = entry.index

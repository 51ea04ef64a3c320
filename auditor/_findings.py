"""What the auditor found: `FindingKind`, `Finding`, and the collector every part adds to."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["DAMAGE", "Finding", "FindingKind", "Findings"]

_MAX_FINDINGS_PER_KIND = 50


class FindingKind(enum.Enum):
    """What is wrong; see auditor/_verify.py and `fedseal-audit verify --help`."""

    MALFORMED_RECORD = "malformed_record"
    # An entry line that does not decode under the log schema (fedseal/logschema.py).
    MALFORMED_ENTRY = "malformed_entry"
    TORN_TAIL = "torn_tail"
    MODIFIED_ENTRY = "modified_entry"
    REMOVED_ENTRY = "removed_entry"
    REORDERED_ENTRIES = "reordered_entries"
    DUPLICATED_ENTRY = "duplicated_entry"
    BAD_CHECKPOINT_SIGNATURE = "bad_checkpoint_signature"
    UNATTESTED_KEY = "unattested_key"
    RETIRED_KEY = "retired_key"
    FUTURE_TIMESTAMP = "future_timestamp"
    FORK = "fork"
    ROLLBACK = "rollback"
    UNTRUSTED_CHECKPOINT = "untrusted_checkpoint"
    NO_CHECKPOINT = "no_checkpoint"
    UNCHECKPOINTED_ENTRIES = "uncheckpointed_entries"
    MISSING_ENCLAVE_START = "missing_enclave_start"
    ATTESTATION_FAILED = "attestation_failed"
    BROKEN_HANDOVER = "broken_handover"
    INCONSISTENT_ROUND = "inconsistent_round"
    BAD_UPDATE_SIGNATURE = "bad_update_signature"
    UNAUTHORIZED_ACTION = "unauthorized_action"
    INCONSISTENT_ACCESS = "inconsistent_access"
    WRONG_STALENESS = "wrong_staleness"
    # The release gate, re-verified by the auditor's own rules (auditor/_release.py):
    # an approval or refusal that does not verify, and a release or withholding that the
    # valid decisions before it do not justify.
    INVALID_APPROVAL = "invalid_approval"
    INVALID_RELEASE = "invalid_release"
    # A round_opened whose round key is missing, reused, or not signed by the log key of
    # the enclave that opened the round (auditor/_roundkeys.py).
    INVALID_ROUND_KEY = "invalid_round_key"
    # A round_closed whose enclave-signed provenance (fedseal/provenance.py) does not
    # verify under its enclave's attested log key, or says other than the log.
    INVALID_PROVENANCE = "invalid_provenance"
    # A DP figure (budget, spend, clip, grid, noise, denominator) that the auditor's own
    # re-derivation from the logged numbers does not give (auditor/_dpcheck.py).
    INVALID_DP_SPEND = "invalid_dp_spend"
    # An update_accepted whose published data card does not parse or does not hash to the
    # signed digest, whose validation summary does not parse, or that lacks the data card
    # or passing validation its round requires (auditor/_datagov.py).
    INVALID_DATA_GOVERNANCE = "invalid_data_governance"


# Findings that show the entries themselves were changed.
DAMAGE = frozenset(
    {
        FindingKind.MODIFIED_ENTRY,
        FindingKind.REMOVED_ENTRY,
        FindingKind.REORDERED_ENTRIES,
        FindingKind.DUPLICATED_ENTRY,
        FindingKind.MALFORMED_RECORD,
        FindingKind.MALFORMED_ENTRY,
        FindingKind.TORN_TAIL,
    }
)
# Findings that usually follow from others and are listed after them.
_CONSEQUENCES = frozenset(
    {
        FindingKind.INCONSISTENT_ROUND,
        FindingKind.UNCHECKPOINTED_ENTRIES,
        # A changed entry breaks the signatures it carries; alone, they are the finding.
        FindingKind.BAD_UPDATE_SIGNATURE,
        FindingKind.UNAUTHORIZED_ACTION,
        FindingKind.INCONSISTENT_ACCESS,
        FindingKind.INVALID_APPROVAL,
        FindingKind.INVALID_RELEASE,
        FindingKind.INVALID_PROVENANCE,
        # Removed or altered release entries change what later staleness must be.
        FindingKind.WRONG_STALENESS,
    }
)


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    line: int | None
    index: int | None
    message: str
    # Transferable evidence (for a fork: both signed checkpoint notes and the proof).
    evidence: tuple[str, ...] = ()
    # When the offending entry is one of a range (entries committed under one checkpoint):
    # the range is index..last_index.
    last_index: int | None = None
    # The entry field at fault, where one is (a malformed entry names it).
    field: str | None = None

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "line": self.line,
            "index": self.index,
            "last_index": self.last_index,
            "field": self.field,
            "message": self.message,
            "evidence": list(self.evidence),
        }


class Findings:
    """Every finding of one audit, in the order found; at most 50 of a kind are kept."""

    def __init__(self) -> None:
        self._items: list[Finding] = []
        self._per_kind: dict[FindingKind, int] = {}

    def add(
        self,
        kind: FindingKind,
        line: int | None,
        index: int | None,
        message: str,
        evidence: tuple[str, ...] = (),
        last_index: int | None = None,
        field: str | None = None,
    ) -> None:
        count = self._per_kind.get(kind, 0) + 1
        self._per_kind[kind] = count
        # A badly broken log can yield a finding per line; the first ones locate the damage.
        if count <= _MAX_FINDINGS_PER_KIND:
            self._items.append(Finding(kind, line, index, message, evidence, last_index, field))

    def any_of(self, kinds: frozenset[FindingKind]) -> bool:
        return any(f.kind in kinds for f in self._items)

    def ordered(self) -> tuple[Finding, ...]:
        """What the log's entries and checkpoints show first; the round story after (it is
        usually a consequence of the former). Each group keeps log order."""
        return tuple(sorted(self._items, key=lambda f: f.kind in _CONSEQUENCES))

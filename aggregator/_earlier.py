"""What became of rounds that an earlier enclave of a resumed log ended (issue 18, item 8).

A restarted enclave holds none of its predecessor's aggregates: they lived in that
enclave's memory, and its keys are gone. The log still says what happened to each round,
so a GetAggregate for such a round answers with that (released at log entry N with
digest D, failed, or withheld) and where to get a released aggregate: from a participant
that fetched it, checked against the digest in the log. The log is read once, on the
first call for a round this enclave does not hold (the entries that end a round never
change; the rounds this enclave holds are answered from its memory before this is asked).
"""

from __future__ import annotations

import threading

from aggregator._log import AuditLog
from fedseal.canonical import b64encode
from fedseal.logformat import LogEntry, released_round
from fedseal.logschema import AggregateReleased, AggregateWithheld, RoundClosed, RoundFailed

__all__ = ["EarlierRounds"]

_OUTCOMES = (b'"kind":"round_closed"', b'"kind":"aggregate_released"', b'"kind":"aggregate_withheld"')
_FAILED = b'"kind":"round_failed"'


class EarlierRounds:
    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._outcomes: dict[int, LogEntry] | None = None

    def _scan(self) -> dict[int, LogEntry]:
        with self._lock:
            if self._outcomes is None:
                outcomes: dict[int, LogEntry] = {}
                for index in range(self._log.size):
                    leaf = self._log.entry_leaf(index)
                    # Only these kinds end a round: skip parsing the other (most) entries.
                    if not any(kind in leaf for kind in _OUTCOMES) and _FAILED not in leaf:
                        continue
                    entry = LogEntry.from_leaf_data(leaf, where=f"entry {index}")
                    rid = released_round(entry)
                    if rid is not None:
                        outcomes[rid] = entry
                    elif isinstance(entry.body, RoundFailed | AggregateWithheld):
                        outcomes[entry.body.round_id] = entry
                self._outcomes = outcomes
            return self._outcomes

    def outcome(self, round_id: int) -> tuple[bool, str] | None:
        """(whether the round failed, a message saying how it ended) if an earlier enclave
        ended it; None if no earlier enclave did."""
        if self._log.key_entry is None or round_id <= 0:
            return None
        entry = self._scan().get(round_id)
        if entry is None:
            return None
        body, where = entry.body, f"log entry {entry.index}"
        if isinstance(body, AggregateReleased | RoundClosed):
            return False, (
                f"round {round_id}'s aggregate was released by a previous enclave ({where}, aggregate "
                f"SHA-256 {b64encode(body.aggregate_digest)}); this enclave was restarted and does not "
                f"hold it. Get it from a participant that fetched it and check its SHA-256 against "
                f"{where} (fedseal-audit verify lists every round's aggregate digest)"
            )
        if isinstance(body, AggregateWithheld):
            return False, (
                f"round {round_id}'s aggregate was withheld under a previous enclave ({where}, refused "
                f"by {body.refused_by}); it was never released"
            )
        reason = body.reason if isinstance(body, RoundFailed) else ""
        return True, f"round {round_id} failed ({where}: {reason}); it released no aggregate"

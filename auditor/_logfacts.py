"""What the report and the evidence pack show beside the audit: times, sizes, metrics, envelopes.

`audit_log` judges the log; this reads the same typed entries once more for what a picture
needs and the audit report does not keep: every entry's time and the log's size after it
(log growth), when each round opened and ended, the metrics each `round_closed` publishes,
the data cards and validation summaries accepted updates carry,
each round's provenance envelope and every `enclave_started` entry. It judges nothing: an
entry that does not decode is skipped here and is a finding of the audit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedseal.errors import FedSealError
from fedseal.logformat import LogEntry, decode_record
from fedseal.logschema import (
    EnclaveStarted,
    RoundClosed,
    RoundFailed,
    RoundOpened,
    UpdateAccepted,
    UpdateRejected,
)

__all__ = ["EntryFact", "LogFacts", "numeric_metrics", "read_log_facts"]


@dataclass(frozen=True)
class EntryFact:
    index: int
    kind: str
    time: dt.datetime
    log_bytes: int  # the file's size up to and including this entry's line


@dataclass(frozen=True)
class LogFacts:
    entries: tuple[EntryFact, ...]
    log_bytes: int
    checkpoints: int
    round_opened: Mapping[int, dt.datetime]
    round_ended: Mapping[int, dt.datetime]  # closed or failed
    round_metrics: Mapping[int, Mapping[str, Any]]  # round_closed.metrics, where logged
    provenance: Mapping[int, Mapping[str, Any]]  # round_closed.provenance (DSSE envelope), where logged
    enclaves: tuple[LogEntry, ...]  # the enclave_started entries, in order
    closed_entries: Mapping[int, LogEntry] = field(default_factory=dict)
    # Refusals naming a round that never opened (the audit's rounds do not list them).
    orphan_rejections: tuple[UpdateRejected, ...] = ()
    # Accepted updates that carry a data card digest or a validation summary, in log order.
    governance: tuple[UpdateAccepted, ...] = ()

    @property
    def first_time(self) -> dt.datetime | None:
        return self.entries[0].time if self.entries else None

    @property
    def last_time(self) -> dt.datetime | None:
        return self.entries[-1].time if self.entries else None


def read_log_facts(path: Path) -> LogFacts:
    """Read the log's entries (OSError if it cannot be read)."""
    entries: list[EntryFact] = []
    opened: dict[int, dt.datetime] = {}
    ended: dict[int, dt.datetime] = {}
    metrics: dict[int, Mapping[str, Any]] = {}
    provenance: dict[int, Mapping[str, Any]] = {}
    closed: dict[int, LogEntry] = {}
    enclaves: list[LogEntry] = []
    rejections: list[UpdateRejected] = []
    governance: list[UpdateAccepted] = []
    size = checkpoints = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            size += len(raw)
            if not raw.endswith(b"\n"):
                continue
            try:
                record = decode_record(raw[:-1], line_number=number)
                entry = record.entry
                moment = entry.timestamp() if entry is not None else None
            except FedSealError:
                continue
            if entry is None or moment is None:
                checkpoints += 1
                continue
            body = entry.body
            entries.append(EntryFact(entry.index, entry.kind.value, moment, size))
            if isinstance(body, EnclaveStarted):
                enclaves.append(entry)
            elif isinstance(body, RoundOpened):
                opened[body.round_id] = moment
            elif isinstance(body, RoundClosed):
                ended[body.round_id] = moment
                closed[body.round_id] = entry
                if body.metrics is not None:
                    metrics[body.round_id] = body.metrics
                if body.provenance is not None:
                    provenance[body.round_id] = body.provenance
            elif isinstance(body, RoundFailed):
                ended[body.round_id] = moment
            elif isinstance(body, UpdateRejected):
                rejections.append(body)
            elif isinstance(body, UpdateAccepted) and (
                body.data_card_digest is not None or body.validation is not None
            ):
                governance.append(body)
    return LogFacts(
        entries=tuple(entries),
        log_bytes=size,
        checkpoints=checkpoints,
        round_opened=opened,
        round_ended=ended,
        round_metrics=metrics,
        provenance=provenance,
        enclaves=tuple(enclaves),
        closed_entries=closed,
        orphan_rejections=tuple(r for r in rejections if r.round_id not in opened),
        governance=tuple(governance),
    )


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The plain numbers of a round's metrics (nested objects as `outer.inner`); lists skipped."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
        elif isinstance(value, Mapping):
            for inner, number in numeric_metrics(value).items():
                out[f"{key}.{inner}"] = number
    return out

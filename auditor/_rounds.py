"""The round story: every round opened, fed, closed or failed in order, as its config says.

From the typed entries alone (fedseal/logschema.py): round ids only grow and one round is
open at a time; an update is accepted once per site, for a spec its round allows, up to
`max_clients`, with the staleness the releases before it imply; a closed round's
participants and example count are those of its accepted updates, its strategy is the
configured one, its cohort within `min_clients`..`max_clients`; a lora-exact round records
its residuals; only a restarted enclave may (and must) abandon a round it did not open.
DP spend and the release gate are `ReleaseGate`'s (auditor/_release.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedseal.canonical import b64encode
from fedseal.errors import FormatError
from fedseal.logformat import FailureCause, LogEntry, released_round
from fedseal.logschema import (
    RoundClosed,
    RoundFailed,
    RoundOpened,
    UpdateAccepted,
    UpdateRejected,
)
from fedseal.roundconfig import RoundConfig
from fedseal.spec import AdapterSpec
from fedseal.wire import StaleBaseError, update_staleness

from ._datagov import governance_problems
from ._findings import FindingKind, Findings
from ._release import ReleaseGate
from ._report import RoundSummary, as_logged

__all__ = ["RoundStory"]

RoundBody = RoundOpened | UpdateAccepted | UpdateRejected | RoundClosed | RoundFailed


@dataclass
class _RoundState:
    round_id: int
    key_entry: int
    config: RoundConfig
    config_digest: bytes
    state: str = "open"
    accepted: list[UpdateAccepted] = field(default_factory=list)
    accepted_index: list[int] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    closed: RoundClosed | None = None
    failed: RoundFailed | None = None
    round_public_key: bytes | None = None

    def summary(self, dp: dict[str, Any] | None, approval: dict[str, Any] | None) -> RoundSummary:
        config = as_logged(self.config.to_json_obj())
        closed, failed = self.closed, self.failed
        specs = self.config.update_specs
        return RoundSummary(
            round_id=self.round_id,
            state=self.state,
            key_entry=self.key_entry,
            strategy=self.config.strategy,
            parameters={k: v for k, v in config.items() if k not in ("adapter_spec", "round_id", "format")},
            adapter_spec_digest=b64encode(self.config.adapter_spec.digest()),
            config_digest=b64encode(self.config_digest),
            min_clients=self.config.min_clients,
            max_clients=self.config.max_clients,
            accepted=tuple(
                {
                    "index": index,
                    "client_id": a.client_id,
                    "ciphertext_digest": b64encode(a.ciphertext_digest),
                    "ciphertext_size": a.ciphertext_size,
                    "num_examples": a.num_examples,
                    "base_round_id": a.base_round_id,
                    "staleness": a.staleness,
                    "lora_ranks": list(_lora_ranks(specs.get(a.adapter_spec_digest))),
                }
                | ({"data_card_digest": b64encode(a.data_card_digest)} if a.data_card_digest else {})
                | ({"validation_passed": a.validation.get("passed")} if a.validation is not None else {})
                for index, a in zip(self.accepted_index, self.accepted, strict=True)
            ),
            rejected=tuple(self.rejected),
            participants=closed.participants if closed is not None else (),
            total_examples=closed.total_examples if closed is not None else 0,
            aggregate_digest=b64encode(closed.aggregate_digest) if closed is not None else "",
            aggregate_size=closed.aggregate_size if closed is not None else 0,
            failure_reason=failed.reason if failed is not None else "",
            failure_cause=failed.cause.value if failed is not None and failed.cause is not None else "",
            dp=dp,
            approval=approval,
            lora_residuals=(
                tuple(r.to_fields() for r in closed.lora_residuals)
                if closed is not None
                and closed.lora_residuals is not None
                and self.config.strategy == "lora-exact"
                else None
            ),
            round_public_key=b64encode(self.round_public_key) if self.round_public_key is not None else None,
        )


def _lora_ranks(spec: AdapterSpec | None) -> tuple[int, ...]:
    """The LoRA ranks of an allowed update spec (none for a non-LoRA spec or no spec)."""
    if spec is None:
        return ()
    try:
        return spec.lora_ranks()
    except FormatError:
        return ()  # a non-LoRA spec (strategies other than lora-exact take any tensors)


class RoundStory:
    def __init__(self, findings: Findings, gate: ReleaseGate) -> None:
        self.findings = findings
        self.gate = gate
        self.rounds: dict[int, _RoundState] = {}
        self.open_round: int | None = None
        self.released: list[int] = []  # rounds whose aggregate became the global, in log order

    def track_release(self, entry: LogEntry) -> None:
        """Count the releases (staleness is measured in them): call for every decoded entry."""
        released = released_round(entry)
        if released is not None:
            self.released.append(released)

    def summaries(self) -> tuple[RoundSummary, ...]:
        return tuple(
            r.summary(self.gate.dp_summary(r.round_id), self.gate.approval_summary(r.round_id))
            for r in sorted(self.rounds.values(), key=lambda r: r.round_id)
        )

    def entry(self, entry: LogEntry, body: RoundBody, line: int, key_entry: int) -> None:
        """One round entry, logged by the enclave of `key_entry`."""
        kind = entry.kind
        rid = body.round_id

        def inconsistent(message: str) -> None:
            self.findings.add(FindingKind.INCONSISTENT_ROUND, line, entry.index, f"line {line}: {message}")

        if isinstance(body, RoundOpened):
            config = body.config
            if body.config_digest != config.digest():
                inconsistent(f"round {rid}'s config_digest is not the digest of its config")
            if rid in self.rounds or (self.rounds and rid <= max(self.rounds)):
                inconsistent(f"round {rid} opened again or out of order (round ids only grow)")
                return
            if self.open_round is not None:
                inconsistent(f"round {rid} opened while round {self.open_round} is still open")
            if config.round_id != rid:
                inconsistent(f"round {rid}'s config names round {config.round_id}")
            self.rounds[rid] = _RoundState(
                rid, key_entry, config, body.config_digest, round_public_key=body.round_public_key
            )
            self.gate.opened(rid, config, line=line, index=entry.index)
            self.open_round = rid
            return
        summary = self.rounds.get(rid)
        if summary is None:
            if not isinstance(body, UpdateRejected):
                # (A refusal for a round that never existed is legitimate: the client named it.)
                inconsistent(f"{kind.value} for round {rid}, which was never opened")
            return
        if isinstance(body, UpdateRejected):
            summary.rejected.append(
                {"index": entry.index, "client_id": body.client_id, "reason": body.reason.value}
            )
            return
        if summary.state != "open":
            inconsistent(f"{kind.value} for round {rid} after it was {summary.state}")
            return
        abandoned = isinstance(body, RoundFailed) and body.cause is FailureCause.ENCLAVE_RESTARTED
        if abandoned != (key_entry != summary.key_entry):
            inconsistent(
                f"{kind.value} for round {rid} opened by the enclave of entry {summary.key_entry}, "
                f"logged by the enclave of entry {key_entry}: only a restarted enclave may "
                "(and must) record the round as abandoned"
            )
        if isinstance(body, UpdateAccepted):
            self._accepted(summary, entry, body, inconsistent)
            self._staleness(summary, entry, body, line)
            for problem in governance_problems(summary.config, body):
                self.findings.add(
                    FindingKind.INVALID_DATA_GOVERNANCE, line, entry.index, f"entry {entry.index}: {problem}"
                )
            return
        self.open_round = None
        if isinstance(body, RoundClosed):
            self._close(summary, body, inconsistent, line, entry.index)
        else:
            summary.state = "abandoned" if abandoned else "failed"
            summary.failed = body
            if body.accepted != len(summary.accepted):
                inconsistent(
                    f"round {rid} failed saying {body.accepted} updates were accepted; the log "
                    f"accepted {len(summary.accepted)}"
                )

    @staticmethod
    def _accepted(
        summary: _RoundState, entry: LogEntry, body: UpdateAccepted, inconsistent: Callable[[str], None]
    ) -> None:
        rid, config = summary.round_id, summary.config
        if any(a.client_id == body.client_id for a in summary.accepted):
            inconsistent(f"second accepted update from {body.client_id!r} in round {rid}")
        if config.update_spec(body.adapter_spec_digest) is None:
            inconsistent(
                f"update_accepted entry {entry.index} from {body.client_id!r} names an adapter spec "
                f"that is neither round {rid}'s nor one of its client ranks' (LoRA ranks "
                f"{list(config.allowed_lora_ranks)}): the round must have refused it"
            )
        summary.accepted.append(body)
        summary.accepted_index.append(entry.index)
        if len(summary.accepted) > config.max_clients:
            inconsistent(
                f"round {rid} accepted update number {len(summary.accepted)} (from {body.client_id!r}), "
                f"above its max_clients of {config.max_clients}"
            )

    def _staleness(self, summary: _RoundState, entry: LogEntry, body: UpdateAccepted, line: int) -> None:
        """The update's recorded staleness must be what the releases before it imply."""
        bound = summary.config.params.staleness
        max_staleness = bound.max_staleness if bound is not None else None
        base, recorded = body.base_round_id, body.staleness
        where = f"line {line}: update_accepted entry {entry.index} (round {summary.round_id})"
        try:
            expected = update_staleness(base, summary.round_id, self.released, max_staleness)
        except StaleBaseError as exc:
            self.findings.add(
                FindingKind.WRONG_STALENESS,
                line,
                entry.index,
                f"{where} accepted an update its round must refuse ({exc.reason.value}): {exc.detail}",
            )
            return
        if recorded != expected:
            self.findings.add(
                FindingKind.WRONG_STALENESS,
                line,
                entry.index,
                f"{where} records staleness {recorded}, but {expected} aggregate(s) were released "
                f"between its base (round {base}) and it: it was weighted alpha**{recorded}, "
                f"not alpha**{expected}",
            )

    def _close(
        self,
        summary: _RoundState,
        body: RoundClosed,
        inconsistent: Callable[[str], None],
        line: int,
        index: int,
    ) -> None:
        rid, config = summary.round_id, summary.config
        summary.state = "closed"
        summary.closed = body
        self.gate.closed(rid, body, inconsistent, line=line, index=index)
        residuals = body.lora_residuals
        if config.strategy == "lora-exact":
            if not residuals or any(not 1 <= r.rank <= r.stacked_rank for r in residuals):
                inconsistent(
                    f"round {rid} is a lora-exact round but its round_closed records no valid "
                    "lora_residuals (module, rank, stacked_rank, residual in [0, 1] per LoRA module)"
                )
        elif residuals is not None:
            inconsistent(f"round {rid} ({config.strategy}) records lora_residuals, which only lora-exact has")
        accepted = sorted(a.client_id for a in summary.accepted)
        if sorted(body.participants) != accepted:
            inconsistent(
                f"round {rid} closed with participants {list(body.participants)} but the log "
                f"accepted updates from {accepted}"
            )
        if body.total_examples != sum(a.num_examples for a in summary.accepted):
            inconsistent(f"round {rid} total_examples does not equal the sum over accepted updates")
        if body.strategy != config.strategy:
            inconsistent(f"round {rid} closed with strategy {body.strategy!r}, not its configured one")
        if len(accepted) < config.min_clients:
            inconsistent(f"round {rid} closed with {len(accepted)} updates, below min_clients")
        if len(body.participants) > config.max_clients:
            inconsistent(
                f"round {rid} closed with {len(body.participants)} participants, above max_clients "
                f"({config.max_clients})"
            )

"""The rounds of this enclave: their state, their errors, and the lock that orders changes.

`RoundBook` is what the parts of the round manager share (aggregator/_rounds.py opens
rounds and serves waiters, aggregator/_intake.py admits and accepts uploads,
aggregator/_closing.py closes, fails and releases rounds): the rounds by id, the releases
in log order (staleness counts them), and one lock with its condition. Every part takes
`book.lock` around what it reads or changes of a round, and notifies `book.changed` when a
round's state changes. A round's plaintext side (its strategy) is an opaque
`RoundAggregator` from the enclave package.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from aggregator._approval import ApprovalGate, GateState
from aggregator._dp import DpLedger
from aggregator._log import AuditLog, PendingEntry
from aggregator.enclave._aggregation import ClosedAggregate, RoundAggregator
from aggregator.enclave._dp import DpNoisePlan
from aggregator.enclave._roundkey import RoundKeyPair
from aggregator.enclave._sitemetrics import SiteMetricsAccumulator
from fedseal.errors import FedSealError
from fedseal.manifest import SignedManifest
from fedseal.roundconfig import RoundConfig
from fedseal.roundkey import SignedRoundKey
from fedseal.wire import RoundState, StaleBaseError, UpdateHeader, UpdateRejectedError, update_staleness

__all__ = [
    "AggregateNotApprovedError",
    "AggregateWithheldError",
    "ApprovalOutcome",
    "PublishedAggregate",
    "RoundBook",
    "RoundError",
    "RoundFailedError",
    "RoundNotFoundError",
    "RoundNotReadyError",
    "RoundSnapshot",
]


class RoundError(FedSealError):
    """An operation on a round is not possible in its current state (message says why)."""


class RoundNotFoundError(RoundError):
    pass


class RoundNotReadyError(RoundError):
    pass


class RoundFailedError(RoundError):
    pass


class AggregateNotApprovedError(RoundNotReadyError):
    """The round closed, but its aggregate still waits for approvals."""


class AggregateWithheldError(RoundFailedError):
    """An approver refused the round's aggregate: it is never released."""


@dataclass(frozen=True)
class ApprovalOutcome:
    """What a recorded approval decision did."""

    round_id: int
    state: GateState
    approvals: int
    min_approvals: int
    log_index: int


@dataclass(frozen=True)
class PublishedAggregate:
    signed_manifest: SignedManifest
    data: bytes


@dataclass(frozen=True)
class RoundSnapshot:
    config: RoundConfig
    state: RoundState
    accepted: int
    # The latest releases, in release order (the last is the current global), as many as
    # the round's staleness bound needs (aggregator/_rounds.py docstring).
    released_round_ids: tuple[int, ...] = ()
    # The round's HPKE key, signed by the log key (fedseal/roundkey.py): what clients seal to.
    round_key: SignedRoundKey | None = None


@dataclass
class Accepted:
    """An accepted update: what a retry must match, and its log entry (for the receipt)."""

    idempotency_key: bytes
    ciphertext_digest: bytes
    num_examples: int
    entry: PendingEntry

    def receipt(self, log: AuditLog) -> str:
        """The receipt (tlog-proof text), once the entry is durable (blocks until then)."""
        return self.entry.wait().receipt(log).to_text()


@dataclass
class Round:
    config: RoundConfig
    aggregator: RoundAggregator
    deadline: float
    # The round's HPKE key pair (enclave memory); its private key is dropped when the round
    # closes or fails (RoundCloser), so nothing sealed for this round opens afterwards.
    key: RoundKeyPair
    state: RoundState = RoundState.OPEN
    accepted: dict[str, Accepted] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    # Full: its last update was accepted and the close (aggregate, log, release) runs on
    # its own thread, off that update's receipt. open_round waits for it.
    closing: bool = False
    published: PublishedAggregate | None = None
    failure: str | None = None
    timer: threading.Timer | None = None
    # L2 norm of each accepted delta; kept only where published (a gated round without DP).
    norms: list[float] = field(default_factory=list)
    clipped: int = 0
    rejected: int = 0
    # A gated round between close and release: the gate and what release will publish.
    gate: ApprovalGate | None = None
    pending: PendingRelease | None = None
    # A DP round: the clip, noise, grid and denominator it runs with (from the ledger).
    dp_plan: DpNoisePlan | None = None
    # The accepted updates' site metrics (sealed in each update), aggregated in the enclave.
    site_metrics: SiteMetricsAccumulator = field(default_factory=SiteMetricsAccumulator)


@dataclass
class PendingRelease:
    aggregate: ClosedAggregate
    round_closed_index: int


class RoundBook:
    """The rounds by id, the releases in log order, and the lock that orders both."""

    def __init__(self, last_round_id: int = 0, released: list[int] | None = None) -> None:
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.rounds: dict[int, Round] = {}
        # Round ids already spent by earlier enclaves of a resumed log: never reused.
        self.last_round_id = last_round_id
        # Rounds whose aggregates were released, in log order (staleness counts them).
        self.released: list[int] = released if released is not None else []
        self.stopped = False
        # The job's DP budget and spend: set when its first DP round opens, or read back
        # from the log of a resumed job (aggregator/_dp.py). Enclave memory.
        self.dp: DpLedger | None = None

    def latest_id(self) -> int:
        """The largest round id used, here or by an earlier enclave (0: none). Lock held."""
        return max([self.last_round_id, *self.rounds])

    def any_open(self) -> bool:
        return any(r.state is RoundState.OPEN for r in self.rounds.values())

    def find(self, round_id: int) -> Round:
        """Round `round_id`, or the open round (else the latest) when it is 0. Lock held."""
        if round_id == 0:
            open_rounds = [r for r in self.rounds.values() if r.state is RoundState.OPEN]
            if open_rounds:
                return open_rounds[0]
            if self.rounds:
                return self.rounds[max(self.rounds)]
            raise RoundNotFoundError("no round has been opened yet")
        rnd = self.rounds.get(round_id)
        if rnd is None:
            raise RoundNotFoundError(f"round {round_id} does not exist")
        return rnd

    def snapshot(self, rnd: Round) -> RoundSnapshot:
        """`rnd` as callers see it, with the releases its staleness bound needs. Lock held."""
        staleness = rnd.config.params.staleness
        window = 1 + (staleness.max_staleness if staleness is not None else 0)
        return RoundSnapshot(
            rnd.config, rnd.state, len(rnd.accepted), tuple(self.released[-window:]), rnd.key.signed
        )

    def staleness(self, config: RoundConfig, header: UpdateHeader) -> int:
        """The update's staleness at this point of the log, or the refusal. Lock held."""
        params = config.params.staleness
        try:
            return update_staleness(
                header.base_round_id,
                config.round_id,
                self.released,
                params.max_staleness if params is not None else None,
            )
        except StaleBaseError as exc:
            raise UpdateRejectedError(exc.reason, exc.detail) from None

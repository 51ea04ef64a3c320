"""Round lifecycle: open, accept or refuse updates, close on quorum and deadline, publish.

State machine per round: OPEN → CLOSED (quorum reached and `max_clients` accepted, or the
deadline passed with at least `min_clients`) or OPEN → FAILED (deadline passed with fewer
than `min_clients`: nothing is published). Every transition and every update, accepted or
refused, is a log entry; a receipt is returned only once its log entry is durable. An
accepted update's entry is staged under the round lock (which fixes its place in the log)
and waited for outside it, so concurrent uploads share one group commit (one fsync).

At most one round is open at a time and round ids only grow, so a ciphertext sealed for
one round can never count in another (the round id is bound into the envelope).

Strategies: every round builds the strategy its config names with the recorded parameters
(`strategy_for_round`); spooling strategies keep their sealed spool in `spool_dir` (else
the system's temporary directory). The global adapter of a round is the last released
aggregate (before any: the job's initial adapter, if given); server optimizers carry their
`ServerState` from release to release, and start from that global when none is carried.

Minimum cohort: `min_clients` counts *accepted* updates (rejections and dropouts never
count). A round closes only with at least that many; strategies that discard some of them
(trimmed mean, Krum) are bounded by the round config's checks (`check_cohort`), so what
they keep is fixed by `min_clients` and their parameters; a strategy that still cannot
produce a result fails the round (`aggregation_failed`): nothing is released.

Central DP (`dp` in the round config, aggregator/_dp.py): each accepted update is clipped
against the round's global adapter before it is folded in, with equal weights; noise is
added at close and the round's spend recorded in `round_closed`.

Approval gate (`approval` in the round config, aggregator/_approval.py): the round closes
and logs its aggregate's digest and metrics, but the aggregate is served (and becomes the
next global, and the job's next round opens) only once approved; a refusal withholds it.

Staleness (async mode, `strategy_params.staleness`). A *release* is a log entry that makes
a round's aggregate the global adapter: a `round_closed` entry without `approval_required`,
or an `aggregate_released` entry (`fedseal.logformat.released_round`); failed and withheld
rounds release nothing. The globals are thus the job's initial adapter (round id 0), then
the released rounds in log order, and the *current* global at any point of the log is the
latest release before it (none: the initial adapter). Every update names in its signed
header the global it was trained from (`base_round_id`); its staleness is the number of
releases in the log before its `update_accepted` entry and after the release of its base
(for base 0: all releases before the entry). A base that is not 0 and not released before
the entry (a round that failed, was withheld, awaits approval, or is this round or later)
is refused as `unknown_base`; a synchronous round accepts staleness 0 only (the current
global), an async one up to `max_staleness`, anything older is refused as `stale_update`.
An accepted update is weighted by num_examples * alpha**staleness, and its entry records
`base_round_id` and `staleness`, so an auditor recomputes both from the entries before it
(fedseal/audit). Releases count over the whole log, the enclaves before a restart included
(a resumed enclave reads them back from the log), although a restarted enclave's own global
is its `--initial-adapter` again. Staleness is decided when the upload starts and again,
under the round lock, when the update is folded in: a release in between can make it staler.
The base is the client's claim: the enclave cannot tell what a site trained on.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import structlog
import torch

from aggregator._approval import ApprovalGate, GateState
from aggregator._config import JobConfig
from aggregator._dp import DpError, DpLedger, DpSpend, add_noise, clip_update
from aggregator._earlier import EarlierRounds
from aggregator._log import AuditLog, PendingEntry
from aggregator._metrics import Metrics
from aggregator.enclave._keys import EnclaveKeys
from aggregator.enclave._receive import FlatTensors, PlaintextBuffers, UpdateReceiver
from aggregator.enclave._serialize import serialize_safetensors
from aggregator.enclave.strategies import (
    AggregationError,
    ServerState,
    Strategy,
    strategy_for_round,
)
from aggregator.enclave.strategies._serverstate import MOMENT_NAMES
from fedseal.approval import Approval, ApprovalNotExpectedError, WrongRoundError
from fedseal.canonical import b64encode
from fedseal.errors import FedSealError
from fedseal.logformat import EntryKind, FailureCause, LogEntry, RejectReason, released_round
from fedseal.manifest import AggregateManifest, SignedManifest, sign_manifest
from fedseal.roundconfig import RoundConfig
from fedseal.spec import AdapterSpec, TensorSpec, WireDtype
from fedseal.wire import RoundState, StaleBaseError, UpdateHeader, UpdateRejectedError, update_staleness

__all__ = [
    "AggregateNotApprovedError",
    "AggregateWithheldError",
    "ApprovalOutcome",
    "PublishedAggregate",
    "RoundError",
    "RoundManager",
    "RoundSnapshot",
]

_log = structlog.get_logger("fedseal.aggregator.rounds")

UPLOAD_GRACE_SECONDS = 5.0
MAX_UPLOAD_SECONDS = 3600.0


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
    # the round's staleness bound needs (module docstring).
    released_round_ids: tuple[int, ...] = ()


@dataclass
class _Accepted:
    idempotency_key: bytes
    ciphertext_digest: bytes
    num_examples: int
    entry: PendingEntry

    def receipt(self, log: AuditLog) -> str:
        """The receipt (tlog-proof text), once the entry is durable (blocks until then)."""
        return self.entry.wait().receipt(log).to_text()


@dataclass
class _Round:
    config: RoundConfig
    strategy: Strategy
    deadline: float
    state: RoundState = RoundState.OPEN
    accepted: dict[str, _Accepted] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    # Full: its last update was accepted and the close (aggregate, log, release) runs on
    # its own thread, off that update's receipt. open_round waits for it.
    closing: bool = False
    published: PublishedAggregate | None = None
    failure: str | None = None
    timer: threading.Timer | None = None
    # The global adapter this round's updates are measured against (None: not known).
    global_adapter: Mapping[str, torch.Tensor] | None = None
    # L2 norm of each accepted delta; kept only where published (a gated round without DP).
    norms: list[float] = field(default_factory=list)
    clipped: int = 0
    rejected: int = 0
    # A gated round between close and release: the gate and what release will publish.
    gate: ApprovalGate | None = None
    pending: _PendingRelease | None = None


@dataclass
class _PendingRelease:
    data: bytes
    digest: bytes
    tensors: dict[str, torch.Tensor]
    next_state: ServerState | None
    round_closed_index: int


class Admission:
    """An upload the round has admitted (RoundManager.admit): receive it once, then exit."""

    def __init__(
        self,
        manager: RoundManager,
        rnd: _Round,
        header: UpdateHeader,
        *,
        retry: _Accepted | None = None,
        spec: AdapterSpec | None = None,
        receiver: UpdateReceiver | None = None,
    ) -> None:
        self._manager = manager
        self._round = rnd
        self._header = header
        self._retry = retry
        self._spec = spec
        self._receiver = receiver
        self._used = False
        self._settled = retry is not None  # a retry never set an in-flight mark

    @property
    def needs_data(self) -> bool:
        """False for a retry of an already accepted upload: its receipt needs no chunks."""
        return self._retry is None

    def receive(self, chunks: Iterator[bytes | memoryview]) -> str:
        """Receive, validate and fold in the chunks; the receipt, or UpdateRejectedError (logged)."""
        if self._used:
            raise RoundError("an admission receives one upload only")
        self._used = True
        manager = self._manager
        if self._retry is not None:
            return self._retry.receipt(manager._log)
        assert self._receiver is not None
        assert self._spec is not None
        try:
            receipt = manager._receive_and_accept(
                self._round, self._header, self._spec, self._receiver, chunks
            )
            self._settled = True  # accepted: the round manager dropped the in-flight mark
            return receipt
        except UpdateRejectedError as exc:
            manager._record_rejection(self._header.round_id, self._header.client_id, exc)
            raise

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._receiver is not None:
            self._receiver.wipe()  # idempotent; gives the buffer back if receive never ran
            self._receiver = None
        if not self._settled:
            with self._manager._lock:
                self._round.in_flight.discard(self._header.client_id)


class RoundManager:
    def __init__(
        self,
        log: AuditLog,
        keys: EnclaveKeys,
        job: JobConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        last_round_id: int = 0,
        spool_dir: Path | None = None,
        initial_adapter: bytes | None = None,
        metrics: Metrics | None = None,
        accumulator_device: torch.device | str = "cpu",
    ) -> None:
        """`initial_adapter`: safetensors bytes of the job's starting global adapter (what
        clients fine-tune in round 1); DP rounds need it, named by digest in their config.
        `accumulator_device`: where FedAvg/FedProx accumulate ("cuda": the enclave's GPU)."""
        self._log = log
        self.metrics = metrics if metrics is not None else Metrics()
        self._keys = keys
        self._job = job
        self._clock = clock
        self._rounds: dict[int, _Round] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopped = False
        # Round ids already spent by earlier enclaves of a resumed log: never reused.
        self._last_round_id = last_round_id
        # Bounds the plaintext held at once, whatever the number of concurrent uploads.
        self._buffers = PlaintextBuffers()
        self._spool_dir = spool_dir
        self._accumulator_device = torch.device(accumulator_device)
        self._initial_digest = (
            hashlib.sha256(initial_adapter).digest() if initial_adapter is not None else None
        )
        # The current global adapter: the initial one, then each released aggregate (float32).
        self._global: dict[str, torch.Tensor] | None = (
            {n: t.to(torch.float32) for n, t in safetensors.torch.load(initial_adapter).items()}
            if initial_adapter is not None
            else None
        )
        self._server_state: ServerState | None = None
        self._dp: DpLedger | None = None
        # Rounds whose aggregates were released, in log order (staleness counts them).
        self._released: list[int] = self._releases_in_log() if last_round_id > 0 else []
        self._earlier = EarlierRounds(log)

    def _releases_in_log(self) -> list[int]:
        """The releases earlier enclaves of a resumed log recorded (module docstring)."""
        released = []
        for index in range(self._log.size):
            leaf = self._log.entry_leaf(index)
            # Only two kinds can release: skip parsing the other (most) entries.
            if b'"kind":"round_closed"' in leaf or b'"kind":"aggregate_released"' in leaf:
                rid = released_round(LogEntry.from_leaf_data(leaf, where=f"entry {index}"))
                if rid is not None:
                    released.append(rid)
        return released

    # ----------------------------------------------------------------- operator side
    def start_job(self) -> None:
        """Open the job's first round not yet used (a resumed log continues after its last)."""
        if self._job is not None and self._last_round_id < self._job.rounds:
            self.open_round(self._job.round_config(self._last_round_id + 1))

    def open_round(self, config: RoundConfig) -> RoundSnapshot:
        with self._lock:
            # A full round being closed on its own thread is as good as closed: wait for it.
            self._changed.wait_for(
                lambda: not any(r.closing for r in self._rounds.values()), timeout=MAX_UPLOAD_SECONDS
            )
            return self._open_locked(config)

    def replace_job(self, job: JobConfig) -> RoundSnapshot | None:
        """Run `job` for the rounds not opened yet (an operator's signed `update_job`); opens
        its next round at once when none is open. Returns that round, if one was opened."""
        with self._lock:
            opened = max([self._last_round_id, *self._rounds])
            if job.rounds < opened:
                raise RoundError(
                    f"the new job has {job.rounds} rounds, but round {opened} was already opened"
                )
            self._job = job
            if (
                not self._stopped
                and opened < job.rounds
                and not any(r.state is RoundState.OPEN for r in self._rounds.values())
            ):
                return self._open_locked(job.round_config(opened + 1))
        return None

    def current_round_id(self) -> int:
        """The open round's id, else the latest round's (0: none yet); for per-round budgets."""
        with self._lock:
            open_ids = [rid for rid, r in self._rounds.items() if r.state is RoundState.OPEN]
            return open_ids[0] if open_ids else max([self._last_round_id, *self._rounds])

    def _open_locked(self, config: RoundConfig) -> RoundSnapshot:
        if self._stopped:
            raise RoundError("the aggregator is shutting down")
        if any(r.state is RoundState.OPEN for r in self._rounds.values()):
            raise RoundError("another round is still open; wait for it to close or fail")
        last = max([self._last_round_id, *self._rounds])
        if config.round_id <= last:
            raise RoundError(f"round id {config.round_id} is not above the last round id {last}")
        if config.dp is not None:
            self._check_dp_locked(config)
        strategy = strategy_for_round(
            config,
            server_state=self._carried_state(config),
            spool_dir=self._spool_dir,
            device=self._accumulator_device,
        )
        self._log.append(
            EntryKind.ROUND_OPENED,
            {
                "round_id": config.round_id,
                "config": config.to_json_obj(),
                "config_digest": b64encode(config.digest()),
            },
        )
        rnd = _Round(
            config=config,
            strategy=strategy,
            deadline=self._clock() + config.deadline_seconds,
            global_adapter=self._global if self._fits(config) else None,
        )
        timer = threading.Timer(config.deadline_seconds, self._on_deadline, args=(config.round_id,))
        timer.daemon = True
        rnd.timer = timer
        self._rounds[config.round_id] = rnd
        self._buffers.reserve(max(spec.max_serialized_size() for spec in config.update_specs.values()))
        timer.start()
        self.metrics.round_opened(config.round_id)
        _log.info(
            "round_opened",
            round_id=config.round_id,
            min_clients=config.min_clients,
            max_clients=config.max_clients,
            deadline_s=config.deadline_seconds,
        )
        self._changed.notify_all()
        return RoundSnapshot(config, rnd.state, 0)

    def _fits(self, config: RoundConfig) -> bool:
        glob = self._global
        return glob is not None and {n: tuple(t.shape) for n, t in glob.items()} == {
            t.name: t.shape for t in config.adapter_spec.tensors
        }

    def _carried_state(self, config: RoundConfig) -> ServerState | None:
        """The server optimizer's state for this round: carried, else started from the global."""
        name = config.strategy_name
        if name not in MOMENT_NAMES:
            return None
        state = self._server_state
        if state is not None and state.optimizer is name:
            state.check_fits(name, config.adapter_spec)
            return state
        # Another optimizer's moments mean nothing here: start from the global adapter.
        return (
            ServerState.initial(name, self._global)
            if self._global is not None and self._fits(config)
            else None
        )

    def _check_dp_locked(self, config: RoundConfig) -> None:
        """Refuse (and log) a DP round that cannot run within the job's budget."""
        dp = config.dp
        assert dp is not None
        try:
            if self._dp is None:
                if self._last_round_id > 0:
                    raise DpError(
                        "this enclave resumed a log: the DP budget spent by earlier enclaves lived in "
                        "their memory, so a DP round cannot continue here (start a new job)"
                    )
                if self._initial_digest != dp.initial_adapter_digest or not self._fits(config):
                    raise DpError(
                        "the DP round's initial_adapter_digest does not name the initial adapter this "
                        "aggregator was started with (--initial-adapter), or none was given"
                    )
                ledger = DpLedger.start(dp)
                ledger.check_round(dp)
                self._dp = ledger
                self._log.append(
                    EntryKind.DP_BUDGET, {"round_id": config.round_id, "budget": ledger.budget.to_json_obj()}
                )
            else:
                self._dp.check_round(dp)
            if self._global is None or not self._fits(config):
                raise DpError("a DP round needs the global adapter of the job, and this round's spec differs")
        except DpError as exc:
            self._log.append(
                EntryKind.DP_ROUND_REFUSED, {"round_id": config.round_id, "reason": str(exc)[:500]}
            )
            _log.warning("dp_round_refused", round_id=config.round_id, reason=str(exc))
            raise

    def snapshot(self, round_id: int) -> RoundSnapshot:
        """Round `round_id`, or the open round (else the latest) when `round_id` is 0."""
        with self._lock:
            rnd = self._find(round_id)
            staleness = rnd.config.params.staleness
            window = 1 + (staleness.max_staleness if staleness is not None else 0)
            return RoundSnapshot(rnd.config, rnd.state, len(rnd.accepted), tuple(self._released[-window:]))

    def _find(self, round_id: int) -> _Round:
        if round_id == 0:
            open_rounds = [r for r in self._rounds.values() if r.state is RoundState.OPEN]
            if open_rounds:
                return open_rounds[0]
            if self._rounds:
                return self._rounds[max(self._rounds)]
            raise RoundNotFoundError("no round has been opened yet")
        rnd = self._rounds.get(round_id)
        if rnd is None:
            raise RoundNotFoundError(f"round {round_id} does not exist")
        return rnd

    # ----------------------------------------------------------------- client side
    def submit(self, header: UpdateHeader, chunks: Iterator[bytes | memoryview]) -> str:
        """Receive one update; return its receipt (tlog-proof text) or raise UpdateRejectedError."""
        with self.admit(header) as admission:
            return admission.receive(chunks)

    def admit(self, header: UpdateHeader) -> Admission:
        """Everything decided from the header alone, then a plaintext buffer for the upload.

        Blocks until a buffer is free (PlaintextBuffers): the service tells the client to
        start sending its chunks only after this returns, so an upload that waits has sent
        nothing but its header. Use the result as a context manager (it releases the buffer
        and the client's in-flight mark) and call `receive` once. Refusals are logged and
        raised as UpdateRejectedError.
        """
        try:
            return self._admit(header)
        except UpdateRejectedError as exc:
            self._record_rejection(header.round_id, header.client_id, exc)
            raise

    def upload_time_limit(self, round_id: int) -> float:
        """Seconds an upload for `round_id` may take: until the round's deadline (plus grace)."""
        with self._lock:
            rnd = self._rounds.get(round_id)
            if rnd is None or rnd.state is not RoundState.OPEN:
                return UPLOAD_GRACE_SECONDS
            remaining = rnd.deadline - self._clock()
        return min(MAX_UPLOAD_SECONDS, max(0.0, remaining) + UPLOAD_GRACE_SECONDS)

    def reject_malformed(self, round_id: int, client_id: str, detail: str) -> UpdateRejectedError:
        """Log a refusal for a stream whose header could not even be parsed."""
        return self.refuse(round_id, client_id, RejectReason.MALFORMED, detail)

    def refuse(self, round_id: int, client_id: str, reason: RejectReason, detail: str) -> UpdateRejectedError:
        """Log a refusal decided before the round sees the update (e.g. the header's identity
        or signature); `client_id` is the authenticated caller's."""
        exc = UpdateRejectedError(reason, detail)
        self._record_rejection(round_id, client_id, exc)
        return exc

    def _admit(self, header: UpdateHeader) -> Admission:
        with self._lock:
            rnd = self._rounds.get(header.round_id)
            if rnd is None:
                raise UpdateRejectedError(
                    RejectReason.UNKNOWN_ROUND, f"round {header.round_id} does not exist"
                )
            if rnd.state is not RoundState.OPEN:
                raise UpdateRejectedError(
                    RejectReason.ROUND_NOT_OPEN,
                    f"round {header.round_id} is {rnd.state.value}, not open",
                )
            previous = rnd.accepted.get(header.client_id)
            if previous is not None and previous.idempotency_key != header.idempotency_key:
                raise UpdateRejectedError(
                    RejectReason.DUPLICATE,
                    f"client {header.client_id!r} already has an accepted update in round "
                    f"{header.round_id}; one update per client per round",
                )
            if previous is None and header.client_id in rnd.in_flight:
                raise UpdateRejectedError(
                    RejectReason.DUPLICATE,
                    f"another upload from client {header.client_id!r} is in progress",
                )
            if previous is None and len(rnd.accepted) >= rnd.config.max_clients:
                raise UpdateRejectedError(
                    RejectReason.ROUND_FULL,
                    f"round {header.round_id} already has max_clients updates",
                )
            config = rnd.config
            if previous is None:
                self._staleness_locked(config, header)  # fail before the upload, not after
                rnd.in_flight.add(header.client_id)
        if previous is not None:
            # A retry of an accepted upload: same receipt, counted once; no data needed.
            return Admission(self, rnd, header, retry=previous)
        try:
            spec, receiver = self._open_receiver(config, header)
        except BaseException:
            with self._lock:
                rnd.in_flight.discard(header.client_id)
            raise
        return Admission(self, rnd, header, spec=spec, receiver=receiver)

    def _open_receiver(self, config: RoundConfig, header: UpdateHeader) -> tuple[AdapterSpec, UpdateReceiver]:
        # The round's spec, or (lora-exact with client_ranks) the spec of an allowed rank:
        # the update is validated, and its sizes bounded, against the spec its header names.
        spec = config.update_spec(header.adapter_spec_digest)
        if spec is None:
            allowed = (
                f" or the spec of a client rank it allows (LoRA ranks {list(config.allowed_lora_ranks)})"
                if len(config.update_specs) > 1
                else ""
            )
            raise UpdateRejectedError(
                RejectReason.SPEC_MISMATCH,
                f"adapter spec digest does not match round {config.round_id}'s adapter spec{allowed}",
            )
        binding = self._keys.bound.binding_for(header.challenge)
        receiver = UpdateReceiver(
            header,
            spec,
            config.max_chunk_size,
            self._keys.hpke_private_key,
            binding,
            buffers=self._buffers,
            wait_seconds=self.upload_time_limit(config.round_id),
        )
        return spec, receiver

    def _receive_and_accept(
        self,
        rnd: _Round,
        header: UpdateHeader,
        spec: AdapterSpec,
        receiver: UpdateReceiver,
        chunks: Iterator[bytes | memoryview],
    ) -> str:
        config = rnd.config
        try:
            for chunk in chunks:
                receiver.feed(chunk)
            update = receiver.finish()
            if update.ciphertext_digest != header.ciphertext_digest:
                # The site's signature covers the digest in its header, not what arrived.
                raise UpdateRejectedError(
                    RejectReason.BAD_SIGNATURE,
                    "the ciphertext received is not the one the header's signature covers",
                )
            tensors, weight, norm, clipped = self._prepare(
                rnd,
                update.tensors,
                header.num_examples,
                same_spec=spec == config.adapter_spec,
                want_norm=config.approval is not None,
            )
            with self._lock:
                if rnd.state is not RoundState.OPEN:
                    raise UpdateRejectedError(
                        RejectReason.ROUND_NOT_OPEN,
                        f"round {config.round_id} closed while the update was being received",
                    )
                if len(rnd.accepted) >= config.max_clients:
                    raise UpdateRejectedError(
                        RejectReason.ROUND_FULL, f"round {config.round_id} filled up during upload"
                    )
                # Again under the lock: a release since the upload began makes it staler.
                staleness = self._staleness_locked(config, header)
                # Fold in first: if that fails (e.g. the spool's disk is full) nothing is
                # logged and nothing counts. Then the entry's place in the log is fixed, and
                # the receipt waits for it to be durable. Should staging fail, the log is
                # broken for good and the round can never close, so an update that was
                # folded in but not logged is never released.
                rnd.strategy.accumulate(tensors, weight, staleness=staleness)
                pending = self._log.stage(
                    EntryKind.UPDATE_ACCEPTED,
                    {
                        "round_id": config.round_id,
                        "client_id": header.client_id,
                        "ciphertext_digest": b64encode(update.ciphertext_digest),
                        "ciphertext_size": update.ciphertext_size,
                        "num_examples": header.num_examples,
                        "adapter_spec_digest": b64encode(header.adapter_spec_digest),
                        "idempotency_key_digest": b64encode(hashlib.sha256(header.idempotency_key).digest()),
                        # The site's signature, and what else it covers (fedseal/wire.py).
                        "key_id": header.key_id,
                        "signature": b64encode(header.signature),
                        "protocol_version": header.protocol_version,
                        "hpke_suite": header.suite.wire_id,
                        "challenge": b64encode(header.challenge),
                        "chunk_size": header.chunk_size,
                        "base_round_id": header.base_round_id,
                        "staleness": staleness,
                    },
                )
                if norm is not None:
                    rnd.norms.append(norm)
                rnd.clipped += clipped
                accepted = _Accepted(
                    header.idempotency_key, update.ciphertext_digest, header.num_examples, pending
                )
                rnd.accepted[header.client_id] = accepted
                # Accepted: the duplicate check now finds it there. Dropping the in-flight
                # mark here, not on the admission's exit, keeps that exit off the round lock
                # (which the close below holds for a while).
                rnd.in_flight.discard(header.client_id)
                self.metrics.update_accepted()
                _log.info(
                    "update_accepted",
                    round_id=config.round_id,
                    client_id=header.client_id,
                    ciphertext_bytes=update.ciphertext_size,
                    log_index=pending.entry.index,
                    # The entry records the spec digest; the rank it stands for, for operators.
                    lora_ranks=list(spec.lora_ranks()) if len(config.update_specs) > 1 else None,
                )
                fills = len(rnd.accepted) >= config.max_clients
                if fills:
                    rnd.closing = True
        finally:
            receiver.wipe()
        if fills:
            # The round is full. Its close (finalize, serialize and hash the aggregate, log,
            # sign) must not delay this update's receipt: it runs on its own thread.
            threading.Thread(
                target=self._close_full, args=(rnd,), name=f"fedseal-close-{config.round_id}"
            ).start()
        # Outside the round lock: concurrent accepts share one commit.
        return accepted.receipt(self._log)

    def _close_full(self, rnd: _Round) -> None:
        with self._lock:
            try:
                if rnd.state is RoundState.OPEN and not self._stopped:
                    self._close_locked(rnd)
            except Exception as exc:
                # No caller to raise to, and the close cancelled the deadline timer: fail
                # the round (nothing is released; waiters get RoundFailedError) rather than
                # leave it open and full for ever. Logging that may fail too (a broken log).
                _log.error("round_close_failed", round_id=rnd.config.round_id, error=str(exc))
                if rnd.state is RoundState.OPEN:
                    try:
                        self._fail_locked(
                            rnd, f"closing the round failed: {exc}", FailureCause.AGGREGATION_FAILED
                        )
                    except Exception as again:
                        _log.error("round_fail_not_logged", round_id=rnd.config.round_id, error=str(again))
            finally:
                rnd.closing = False
                self._changed.notify_all()

    def _staleness_locked(self, config: RoundConfig, header: UpdateHeader) -> int:
        """The update's staleness at this point of the log, or the refusal (module docstring)."""
        params = config.params.staleness
        try:
            return update_staleness(
                header.base_round_id,
                config.round_id,
                self._released,
                params.max_staleness if params is not None else None,
            )
        except StaleBaseError as exc:
            raise UpdateRejectedError(exc.reason, exc.detail) from None

    @staticmethod
    def _prepare(
        rnd: _Round,
        tensors: Mapping[str, torch.Tensor],
        num_examples: int,
        *,
        same_spec: bool = True,
        want_norm: bool = True,
    ) -> tuple[Mapping[str, torch.Tensor], int, float | None, int]:
        """(tensors to fold in, weight, L2 norm of the delta, 1 if clipped). Under DP the delta
        is clipped and weights are equal; outside the round lock (it is a full pass). An
        update at another LoRA rank than the round spec (`same_spec` False) has no elementwise
        delta against the global adapter: its own norm is taken. Without DP the norm is only
        published by a gated round's metrics: `want_norm` False skips that pass (norm None)."""
        glob = rnd.global_adapter if same_spec else None
        dp = rnd.config.dp
        if dp is not None:
            assert glob is not None  # a DP round opens only with a global adapter
            clip = clip_update(tensors, glob, dp.clip_norm)
            return clip.tensors, 1, clip.norm, int(clip.clipped)
        if not want_norm:
            return tensors, num_examples, None, 0
        if glob is None and isinstance(tensors, FlatTensors) and tensors.flat.dtype == torch.float32:
            return tensors, num_examples, float(torch.linalg.vector_norm(tensors.flat)), 0
        # One reduction per tensor, no full-size temporaries (v * v would allocate a copy).
        squares = 0.0
        scratch: torch.Tensor | None = None
        for name, value in tensors.items():
            v = value.to(torch.float32)
            if glob is not None:
                if scratch is None or scratch.numel() < v.numel():
                    scratch = torch.empty(v.numel(), dtype=torch.float32)
                v = torch.sub(v, glob[name], out=scratch[: v.numel()].view(v.shape))
            squares += float(torch.linalg.vector_norm(v)) ** 2
        return tensors, num_examples, math.sqrt(squares), 0

    def _record_rejection(self, round_id: int, client_id: str, exc: UpdateRejectedError) -> None:
        with self._lock:
            rnd = self._rounds.get(round_id)
            if rnd is not None:
                rnd.rejected += 1
        self.metrics.update_rejected(exc.reason)
        _log.warning(
            "update_rejected",
            round_id=round_id,
            client_id=client_id,
            reason=exc.reason.value,
            detail=exc.detail,
        )
        self._log.append(
            EntryKind.UPDATE_REJECTED,
            {
                "round_id": round_id,
                "client_id": client_id[:128],
                "reason": exc.reason.value,
                "detail": exc.detail[:500],
            },
        )

    # ----------------------------------------------------------------- closing
    def _on_deadline(self, round_id: int) -> None:
        with self._lock:
            rnd = self._rounds.get(round_id)
            if rnd is None or rnd.state is not RoundState.OPEN or self._stopped:
                return
            if len(rnd.accepted) >= rnd.config.min_clients:
                self._close_locked(rnd)
            else:
                self._fail_locked(
                    rnd,
                    f"deadline passed with {len(rnd.accepted)} accepted update(s), "
                    f"min_clients is {rnd.config.min_clients}",
                )

    def _close_locked(self, rnd: _Round) -> None:
        config = rnd.config
        if rnd.timer is not None:
            rnd.timer.cancel()
        count = len(rnd.accepted)
        if count < config.min_clients:
            # Never reached by the callers above; kept so no path releases a small cohort.
            self._fail_locked(rnd, f"{count} accepted update(s), min_clients is {config.min_clients}")
            return
        try:
            tensors = rnd.strategy.finalize()
            next_state = rnd.strategy.next_server_state()
        except AggregationError as exc:
            self._fail_locked(
                rnd, f"{config.strategy} produced no aggregate: {exc}", FailureCause.AGGREGATION_FAILED
            )
            return
        finally:
            rnd.strategy.discard()  # crypto-erases a spool; idempotent
        spend: DpSpend | None = None
        dp_record: dict[str, object] = {}
        if config.dp is not None and self._dp is not None:
            budget = self._dp.budget
            add_noise(tensors, budget.noise_multiplier * config.dp.clip_norm, count)
            spend = self._dp.charge(rnd.clipped)
            dp_record = {
                **spend.to_json_obj(),
                "noise_multiplier": budget.noise_multiplier,
                "clip_norm": config.dp.clip_norm,
                "epsilon_budget": config.dp.epsilon,
                "delta": config.dp.delta,
                "updates": count,
            }
        # The idle plaintext buffers (two updates' worth) are not needed until the next
        # round's uploads: freeing them first keeps the serialized copy below within
        # the memory the round already used.
        self._buffers.drop_idle()
        data = serialize_safetensors(tensors)
        digest = hashlib.sha256(data).digest()
        participants = sorted(rnd.accepted)
        total = sum(a.num_examples for a in rnd.accepted.values())
        fields: dict[str, object] = {
            "round_id": config.round_id,
            "strategy": config.strategy,
            "strategy_params": config.params.to_json_obj(),
            "participants": participants,
            "total_examples": total,
            "aggregate_digest": b64encode(digest),
            "aggregate_size": len(data),
        }
        if dp_record:
            fields["dp"] = dp_record
        residuals = getattr(rnd.strategy, "report", ())
        if residuals:  # lora-exact: a property of the aggregate, not of any one update
            fields["lora_residuals"] = [
                {"module": r.module, "rank": r.rank, "stacked_rank": r.stacked_rank, "residual": r.residual}
                for r in residuals
            ]
        if config.approval is not None:
            fields["approval_required"] = True
            fields["metrics"] = self._metrics(rnd)
        appended = self._log.append(EntryKind.ROUND_CLOSED, fields)
        rnd.state = RoundState.CLOSED
        self.metrics.round_closed(config.round_id)
        _log.info(
            "round_closed",
            round_id=config.round_id,
            participants=len(participants),
            total_examples=total,
            log_index=appended.entry.index,
            approval_required=config.approval is not None,
        )
        pending = _PendingRelease(data, digest, tensors, next_state, appended.entry.index)
        if config.approval is None:
            self._release_locked(rnd, pending)
            return
        rnd.pending = pending
        rnd.gate = ApprovalGate(config.approval, self._log.origin, config.round_id, digest)
        self._changed.notify_all()

    @staticmethod
    def _metrics(rnd: _Round) -> dict[str, object]:
        """What a gated round publishes before release. Per-update norms are sorted (not tied
        to a client) and left out under DP, where only the number clipped is shown."""
        metrics: dict[str, object] = {"accepted": len(rnd.accepted), "rejected": rnd.rejected}
        if rnd.config.dp is None:
            # Milli-units keep the log's canonical JSON exact and short.
            metrics["update_norms_milli"] = sorted(round(n * 1000) for n in rnd.norms)
        else:
            metrics["clipped"] = rnd.clipped
        return metrics

    def _release_locked(self, rnd: _Round, pending: _PendingRelease) -> None:
        """Sign and serve the aggregate; it becomes the global adapter of the next round."""
        config = rnd.config
        participants = sorted(rnd.accepted)
        aggregate_spec = AdapterSpec.of(
            [TensorSpec(t.name, t.shape, WireDtype.FLOAT32) for t in config.adapter_spec.tensors]
        )
        manifest = AggregateManifest(
            log_origin=self._log.origin,
            round_id=config.round_id,
            strategy=config.strategy,
            adapter_spec=aggregate_spec.to_json_obj(),
            aggregate_digest=pending.digest,
            aggregate_size=len(pending.data),
            participants=tuple(participants),
            total_examples=sum(a.num_examples for a in rnd.accepted.values()),
            round_closed_index=pending.round_closed_index,
        )
        rnd.published = PublishedAggregate(sign_manifest(manifest, self._keys.log_private_key), pending.data)
        self._released.append(config.round_id)  # its release entry was just logged
        rnd.pending = None
        self._global = pending.tensors
        if pending.next_state is not None:
            self._server_state = pending.next_state
        self._after_round_locked(config.round_id)

    def _fail_locked(
        self, rnd: _Round, reason: str, cause: FailureCause = FailureCause.QUORUM_NOT_REACHED
    ) -> None:
        """Fail an open round (below quorum, or no aggregate): nothing is published."""
        if rnd.timer is not None:
            rnd.timer.cancel()
        rnd.strategy.discard()
        rnd.state = RoundState.FAILED
        rnd.failure = reason
        self._log.append(
            EntryKind.ROUND_FAILED,
            {
                "round_id": rnd.config.round_id,
                "reason": reason[:500],
                "accepted": len(rnd.accepted),
                "cause": cause.value,
            },
        )
        self.metrics.round_failed(rnd.config.round_id, cause)
        _log.warning("round_failed", round_id=rnd.config.round_id, reason=reason)
        self._after_round_locked(rnd.config.round_id)

    def _after_round_locked(self, round_id: int) -> None:
        self._changed.notify_all()
        if self._job is not None and round_id < self._job.rounds and not self._stopped:
            try:
                self._open_locked(self._job.round_config(round_id + 1))
            except FedSealError as exc:
                # No caller to raise to (a timer or an upload thread): the job stops here.
                # A DP refusal is already in the audit log (dp_round_refused).
                _log.error("next_round_not_opened", round_id=round_id + 1, error=str(exc))

    # ----------------------------------------------------------------- approval
    def submit_approval(self, round_id: int, data: bytes) -> ApprovalOutcome:
        """Verify and record one approver's decision on round `round_id`'s aggregate.

        Raises the named errors of fedseal.approval (nothing is logged for those)."""
        approval = Approval.from_bytes(data)
        with self._lock:
            rnd = self._rounds.get(round_id)
            if rnd is None:
                raise WrongRoundError(f"round {round_id} does not exist")
            gate = rnd.gate
            if gate is None:
                raise ApprovalNotExpectedError(
                    f"round {round_id} does not await approval (no approval gate, or not closed yet)"
                )
            verified = gate.verify(approval)
            recorded = self._log.append(
                EntryKind.APPROVAL_RECORDED,
                {
                    "round_id": round_id,
                    "approver": b64encode(approval.approver),
                    "approver_key_id": verified.approver_key_id,
                    "decision": approval.decision.value,
                    "aggregate_digest": b64encode(approval.aggregate_digest),
                    "signature": b64encode(approval.signature),
                    "approval_digest": b64encode(verified.digest),
                },
            )
            state = gate.record(verified)
            _log.info(
                "approval_recorded",
                round_id=round_id,
                approver=verified.approver_key_id,
                decision=approval.decision.value,
                state=state.value,
            )
            pending = rnd.pending
            assert pending is not None
            if state is GateState.RELEASED:
                self._log.append(
                    EntryKind.AGGREGATE_RELEASED,
                    {
                        "round_id": round_id,
                        "aggregate_digest": b64encode(pending.digest),
                        "approvals": list(gate.approved),
                    },
                )
                self._release_locked(rnd, pending)
            elif state is GateState.WITHHELD:
                self._log.append(
                    EntryKind.AGGREGATE_WITHHELD,
                    {
                        "round_id": round_id,
                        "aggregate_digest": b64encode(pending.digest),
                        "refused_by": verified.approver_key_id,
                    },
                )
                for tensor in pending.tensors.values():
                    tensor.zero_()
                rnd.pending = None
                rnd.failure = f"approver {verified.approver_key_id} refused the aggregate"
                self._after_round_locked(round_id)
            return ApprovalOutcome(
                round_id, state, len(gate.approved), gate.params.min_approvals, recorded.entry.index
            )

    # ----------------------------------------------------------------- publication
    def wait_closed(self, round_id: int, timeout: float) -> RoundSnapshot:
        """The round's snapshot once it is no longer open (closed, failed), waiting up to
        `timeout` s. A round filled by its last update closes on its own thread, just after
        that update's receipt; this is how to wait for it. RoundError on timeout."""
        end = self._clock() + max(0.0, timeout)
        with self._lock:
            while True:
                rnd = self._find(round_id)
                if rnd.state is not RoundState.OPEN and not rnd.closing:
                    break
                remaining = end - self._clock()
                if remaining <= 0:
                    raise RoundError(f"round {round_id} is still open after {timeout:.1f} s")
                self._changed.wait(remaining)
        return self.snapshot(round_id)

    def wait_aggregate(self, round_id: int, timeout: float) -> PublishedAggregate:
        """The published aggregate of `round_id`, waiting up to `timeout` s for the round to end
        (and, for a gated round, to be approved)."""
        end = self._clock() + max(0.0, timeout)
        earlier = self._earlier.outcome(round_id)  # ended by an enclave before a restart
        with self._lock:
            while True:
                rnd = self._rounds.get(round_id)
                if rnd is None and earlier is not None:
                    kind, message = earlier
                    failed = kind is EntryKind.ROUND_FAILED
                    raise RoundFailedError(message) if failed else RoundNotFoundError(message)
                if rnd is not None and rnd.published is not None:
                    return rnd.published
                if rnd is not None and rnd.gate is not None and rnd.gate.state is GateState.WITHHELD:
                    raise AggregateWithheldError(f"round {round_id}'s aggregate was withheld: {rnd.failure}")
                if rnd is not None and rnd.state is RoundState.FAILED:
                    raise RoundFailedError(f"round {round_id} failed: {rnd.failure}")
                if self._job is None and rnd is None:
                    raise RoundNotFoundError(f"round {round_id} does not exist")
                if self._job is not None and rnd is None and round_id > self._job.rounds:
                    raise RoundNotFoundError(
                        f"round {round_id} does not exist (this job has {self._job.rounds} rounds)"
                    )
                remaining = end - self._clock()
                if remaining <= 0 or self._stopped:
                    if rnd is not None and rnd.gate is not None:
                        raise AggregateNotApprovedError(
                            f"round {round_id} closed; its aggregate awaits approval "
                            f"({len(rnd.gate.approved)} of {rnd.gate.params.min_approvals})"
                        )
                    raise RoundNotReadyError(f"round {round_id} has not closed yet")
                self._changed.wait(remaining)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            for rnd in self._rounds.values():
                if rnd.timer is not None:
                    rnd.timer.cancel()
                rnd.strategy.discard()
            if self._server_state is not None:
                self._server_state.discard()
            self._changed.notify_all()

"""Round lifecycle: open, accept or refuse updates, close on quorum and deadline, publish.

State machine per round: OPEN → CLOSED (quorum reached and `max_clients` accepted, or the
deadline passed with at least `min_clients`) or OPEN → FAILED (deadline passed with fewer
than `min_clients`: nothing is published). Every transition and every update, accepted or
refused, is a log entry; a receipt is returned only once its log entry is durable. An
accepted update's entry is staged under the round lock (which fixes its place in the log)
and waited for outside it, so concurrent uploads share one group commit (one fsync).

At most one round is open at a time and round ids only grow, so a ciphertext sealed for
one round can never count in another (the round id is bound into the envelope).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import safetensors.torch
import structlog

from aggregator._config import JobConfig
from aggregator._log import AuditLog, PendingEntry
from aggregator.enclave._keys import EnclaveKeys
from aggregator.enclave._receive import UpdateReceiver
from aggregator.enclave.strategies import Strategy, make_strategy
from fedseal.canonical import b64encode
from fedseal.errors import FedSealError
from fedseal.logformat import EntryKind, FailureCause, RejectReason
from fedseal.manifest import AggregateManifest, SignedManifest, sign_manifest
from fedseal.roundconfig import RoundConfig
from fedseal.spec import AdapterSpec, TensorSpec, WireDtype
from fedseal.wire import RoundState, UpdateHeader, UpdateRejectedError

__all__ = ["PublishedAggregate", "RoundError", "RoundManager", "RoundSnapshot"]

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


@dataclass(frozen=True)
class PublishedAggregate:
    signed_manifest: SignedManifest
    data: bytes


@dataclass(frozen=True)
class RoundSnapshot:
    config: RoundConfig
    state: RoundState
    accepted: int


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
    published: PublishedAggregate | None = None
    failure: str | None = None
    timer: threading.Timer | None = None


class RoundManager:
    def __init__(
        self,
        log: AuditLog,
        keys: EnclaveKeys,
        job: JobConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        last_round_id: int = 0,
    ) -> None:
        self._log = log
        self._keys = keys
        self._job = job
        self._clock = clock
        self._rounds: dict[int, _Round] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopped = False
        # Round ids already spent by earlier enclaves of a resumed log: never reused.
        self._last_round_id = last_round_id

    # ----------------------------------------------------------------- operator side
    def start_job(self) -> None:
        """Open the job's first round not yet used (a resumed log continues after its last)."""
        if self._job is not None and self._last_round_id < self._job.rounds:
            self.open_round(self._job.round_config(self._last_round_id + 1))

    def open_round(self, config: RoundConfig) -> RoundSnapshot:
        with self._lock:
            return self._open_locked(config)

    def _open_locked(self, config: RoundConfig) -> RoundSnapshot:
        if self._stopped:
            raise RoundError("the aggregator is shutting down")
        if any(r.state is RoundState.OPEN for r in self._rounds.values()):
            raise RoundError("another round is still open; wait for it to close or fail")
        last = max([self._last_round_id, *self._rounds])
        if config.round_id <= last:
            raise RoundError(f"round id {config.round_id} is not above the last round id {last}")
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
            strategy=make_strategy(config.strategy, config.adapter_spec),
            deadline=self._clock() + config.deadline_seconds,
        )
        timer = threading.Timer(config.deadline_seconds, self._on_deadline, args=(config.round_id,))
        timer.daemon = True
        rnd.timer = timer
        self._rounds[config.round_id] = rnd
        timer.start()
        _log.info(
            "round_opened",
            round_id=config.round_id,
            min_clients=config.min_clients,
            max_clients=config.max_clients,
            deadline_s=config.deadline_seconds,
        )
        self._changed.notify_all()
        return RoundSnapshot(config, rnd.state, 0)

    def snapshot(self, round_id: int) -> RoundSnapshot:
        """Round `round_id`, or the open round (else the latest) when `round_id` is 0."""
        with self._lock:
            rnd = self._find(round_id)
            return RoundSnapshot(rnd.config, rnd.state, len(rnd.accepted))

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
    def submit(self, header: UpdateHeader, chunks: Iterator[bytes]) -> str:
        """Receive one update; return its receipt (tlog-proof text) or raise UpdateRejectedError."""
        try:
            return self._submit(header, chunks)
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
        exc = UpdateRejectedError(RejectReason.MALFORMED, detail)
        self._record_rejection(round_id, client_id, exc)
        return exc

    def _submit(self, header: UpdateHeader, chunks: Iterator[bytes]) -> str:
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
                rnd.in_flight.add(header.client_id)
        if previous is not None:
            # A retry of an accepted upload: same receipt, counted once.
            return previous.receipt(self._log)
        try:
            return self._receive_and_accept(rnd, config, header, chunks)
        finally:
            with self._lock:
                rnd.in_flight.discard(header.client_id)

    def _receive_and_accept(
        self, rnd: _Round, config: RoundConfig, header: UpdateHeader, chunks: Iterator[bytes]
    ) -> str:
        if header.adapter_spec_digest != config.adapter_spec.digest():
            raise UpdateRejectedError(
                RejectReason.SPEC_MISMATCH,
                f"adapter spec digest does not match round {config.round_id}'s adapter spec",
            )
        binding = self._keys.bound.binding_for(header.challenge)
        receiver = UpdateReceiver(
            header, config.adapter_spec, config.max_chunk_size, self._keys.hpke_private_key, binding
        )
        try:
            for chunk in chunks:
                receiver.feed(chunk)
            update = receiver.finish()
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
                # The entry's place in the log is fixed before the update is folded in, and
                # the receipt waits for it to be durable: an accepted update is always logged.
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
                    },
                )
                rnd.strategy.accumulate(update.tensors, header.num_examples)
                accepted = _Accepted(
                    header.idempotency_key, update.ciphertext_digest, header.num_examples, pending
                )
                rnd.accepted[header.client_id] = accepted
                _log.info(
                    "update_accepted",
                    round_id=config.round_id,
                    client_id=header.client_id,
                    ciphertext_bytes=update.ciphertext_size,
                    log_index=pending.entry.index,
                )
                if len(rnd.accepted) >= config.max_clients:
                    self._close_locked(rnd)
        finally:
            receiver.wipe()
        # Outside the round lock: concurrent accepts share one commit.
        return accepted.receipt(self._log)

    def _record_rejection(self, round_id: int, client_id: str, exc: UpdateRejectedError) -> None:
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
        tensors = rnd.strategy.finalize()
        data = safetensors.torch.save(tensors)
        rnd.strategy.discard()
        digest = hashlib.sha256(data).digest()
        participants = sorted(rnd.accepted)
        total = sum(a.num_examples for a in rnd.accepted.values())
        appended = self._log.append(
            EntryKind.ROUND_CLOSED,
            {
                "round_id": config.round_id,
                "strategy": config.strategy,
                "participants": participants,
                "total_examples": total,
                "aggregate_digest": b64encode(digest),
                "aggregate_size": len(data),
            },
        )
        aggregate_spec = AdapterSpec.of(
            [TensorSpec(t.name, t.shape, WireDtype.FLOAT32) for t in config.adapter_spec.tensors]
        )
        manifest = AggregateManifest(
            log_origin=self._log.origin,
            round_id=config.round_id,
            strategy=config.strategy,
            adapter_spec=aggregate_spec.to_json_obj(),
            aggregate_digest=digest,
            aggregate_size=len(data),
            participants=tuple(participants),
            total_examples=total,
            round_closed_index=appended.entry.index,
        )
        rnd.published = PublishedAggregate(sign_manifest(manifest, self._keys.log_private_key), data)
        rnd.state = RoundState.CLOSED
        _log.info(
            "round_closed",
            round_id=config.round_id,
            participants=len(participants),
            total_examples=total,
            log_index=appended.entry.index,
        )
        self._after_round_locked(config.round_id)

    def _fail_locked(self, rnd: _Round, reason: str) -> None:
        """Fail an open round (deadline passed below quorum): nothing is published."""
        if rnd.timer is not None:
            rnd.timer.cancel()
        rnd.strategy.discard()
        rnd.state = RoundState.FAILED
        rnd.failure = reason
        self._log.append(
            EntryKind.ROUND_FAILED,
            {
                "round_id": rnd.config.round_id,
                "reason": reason,
                "accepted": len(rnd.accepted),
                "cause": FailureCause.QUORUM_NOT_REACHED.value,
            },
        )
        _log.warning("round_failed", round_id=rnd.config.round_id, reason=reason)
        self._after_round_locked(rnd.config.round_id)

    def _after_round_locked(self, round_id: int) -> None:
        self._changed.notify_all()
        if self._job is not None and round_id < self._job.rounds and not self._stopped:
            self._open_locked(self._job.round_config(round_id + 1))

    # ----------------------------------------------------------------- publication
    def wait_aggregate(self, round_id: int, timeout: float) -> PublishedAggregate:
        """The published aggregate of `round_id`, waiting up to `timeout` s for the round to end."""
        end = self._clock() + max(0.0, timeout)
        with self._lock:
            while True:
                rnd = self._rounds.get(round_id)
                if rnd is not None and rnd.state is RoundState.CLOSED:
                    assert rnd.published is not None
                    return rnd.published
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
                    raise RoundNotReadyError(f"round {round_id} has not closed yet")
                self._changed.wait(remaining)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            for rnd in self._rounds.values():
                if rnd.timer is not None:
                    rnd.timer.cancel()
            self._changed.notify_all()

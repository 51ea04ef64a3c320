"""Uploads: admit from the header, receive and validate, accept (fold in, log, receipt) or refuse.

An upload goes through `Intake.admit` (everything decided from the header alone, then a
plaintext buffer) and the `Admission` it returns (`receive` once, as a context manager).
The plaintext itself never leaves the enclave package: the receiver decrypts and validates
(aggregator/enclave/_receive.py), the round's `RoundAggregator` prepares and folds it in;
this module sees the handles and their metadata (digests, sizes, a norm). Staleness is
decided when the upload starts and again, under the round lock, when the update is folded
in (aggregator/_rounds.py docstring).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator

import structlog

from aggregator._governance import Governance, check_governance
from aggregator._log import AuditLog
from aggregator._metrics import Metrics
from aggregator._roundbook import Accepted, Round, RoundBook, RoundError
from aggregator.enclave._keys import EnclaveKeys
from aggregator.enclave._receive import BuffersBusyError, InLine, PlaintextBuffers, UpdateReceiver
from fedseal.logschema import RejectReason, UpdateAccepted, UpdateRejected
from fedseal.spec import AdapterSpec
from fedseal.wire import RoundState, UpdateHeader, UpdateRejectedError

__all__ = [
    "MAX_UPLOAD_SECONDS",
    "UPLOAD_GRACE_SECONDS",
    "Admission",
    "Intake",
    "UploadAbandonedError",
    "UploadDeferredError",
]

_log = structlog.get_logger("fedseal.aggregator.rounds")

UPLOAD_GRACE_SECONDS = 5.0
MAX_UPLOAD_SECONDS = 3600.0
# A deferred upload's retry hint: about when a buffer frees for it, within these bounds.
MIN_RETRY_SECONDS = 0.02
MAX_RETRY_SECONDS = 5.0
MAX_HINT_TURNS = 16
_WAITING_FOR_SECONDS = 30.0  # a deferred client not seen again for this long stops counting


class UploadDeferredError(Exception):
    """Not now: every decryption buffer is busy. Not a refusal (nothing is logged): the
    client sends the same upload again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"every decryption buffer is busy; retry in {retry_after:.2f} s")
        self.retry_after = retry_after


class _RetryTickets:
    """The uploads turned away for now, numbered in the order they were first turned away:
    an upload keeps its number across its retries, so its hint counts only those ahead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._held: dict[str, tuple[int, float]] = {}  # client -> (ticket, when last turned away)

    def take(self, client_id: str) -> int | None:
        """The client's ticket, out of the queue (None: it has none)."""
        with self._lock:
            held = self._held.pop(client_id, None)
        return None if held is None else held[0]

    def requeue(self, client_id: str, ticket: int | None) -> int:
        """Put the client back with its ticket (or a new one); how many tickets are ahead."""
        now = time.monotonic()
        with self._lock:
            self._held = {c: h for c, h in self._held.items() if now - h[1] < _WAITING_FOR_SECONDS}
            mine = next(self._numbers) if ticket is None else ticket
            self._held[client_id] = (mine, now)
            return sum(1 for number, _ in self._held.values() if number < mine)


class UploadAbandonedError(Exception):
    """The caller went away while its upload waited in line for a buffer: nothing was
    sent, nothing is logged, and no retry hint is given (nobody is there to read it)."""


class Admission:
    """An upload the round has admitted (Intake.admit): receive it once, then exit."""

    def __init__(
        self,
        intake: Intake,
        rnd: Round,
        header: UpdateHeader,
        *,
        retry: Accepted | None = None,
        spec: AdapterSpec | None = None,
        receiver: UpdateReceiver | None = None,
        governance: Governance | None = None,
    ) -> None:
        self._intake = intake
        self._governance = governance
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
        if self._retry is not None:
            return self._intake.receipt(self._retry)
        assert self._receiver is not None
        assert self._spec is not None
        assert self._governance is not None
        try:
            receipt = self._intake.accept(
                self._round, self._header, self._spec, self._receiver, chunks, self._governance
            )
            self._settled = True  # accepted: the intake dropped the in-flight mark
            return receipt
        except UpdateRejectedError as exc:
            self._intake.record_rejection(self._header.round_id, self._header.client_id, exc)
            raise

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._receiver is not None:
            self._receiver.wipe()  # idempotent; gives the buffer back if receive never ran
            self._receiver = None
        if not self._settled:
            self._intake.forget_in_flight(self._round, self._header.client_id)


class Intake:
    """Admits, receives and accepts or refuses the uploads of the book's open round."""

    def __init__(
        self,
        book: RoundBook,
        log: AuditLog,
        keys: EnclaveKeys,
        buffers: PlaintextBuffers,
        metrics: Metrics,
        clock: Callable[[], float],
        on_full: Callable[[Round], None],
    ) -> None:
        """`on_full` closes a round its last update filled (run on a thread of its own)."""
        self._book = book
        self._log = log
        self._keys = keys
        self._buffers = buffers
        self._metrics = metrics
        self._clock = clock
        self._on_full = on_full
        self._tickets = _RetryTickets()

    def admit(self, header: UpdateHeader, *, line: threading.Event | None = None) -> Admission:
        """Everything decided from the header alone, then a plaintext buffer for the upload
        (RoundManager.admit says more). Refusals are logged and raised as UpdateRejectedError.
        Without `line` the call waits for a buffer as long as the upload may take; with it
        (an Event set when the caller goes away) it waits only in the buffers' bounded line,
        and raises UploadDeferredError if the line is full or UploadAbandonedError if the
        caller left first."""
        # A turned-away upload out of the ticket queue while it tries again (and for good
        # once admitted); turned away again, it takes its old place back.
        ticket = self._tickets.take(header.client_id)
        try:
            admission = self._admit(header, line, ticket)
        except UpdateRejectedError as exc:
            self.record_rejection(header.round_id, header.client_id, exc)
            raise
        return admission

    def _deferred(self, client_id: str, ticket: int | None) -> UploadDeferredError:
        """The hint asks the upload back about when the waiting line will have room for it:
        after the uploads ahead of it (those in line and those turned away before it), less
        the line's length, have each taken a buffer (a "turn": `hold_seconds` / `slots`).
        The line absorbs a return a few turns late; one too early is turned away again with
        a shorter hint. Hints are capped at MAX_HINT_TURNS turns, past which the estimate
        and the client's jitter (10 %) would miss the line: an upload far back comes back
        then and is given a fresh hint."""
        ahead = self._tickets.requeue(client_id, ticket) + self._buffers.waiting()
        self._metrics.upload_deferred()
        turns = min(MAX_HINT_TURNS, max(0.5, ahead - self._buffers.line + 1))
        retry = self._buffers.hold_seconds() * turns / self._buffers.slots
        return UploadDeferredError(min(MAX_RETRY_SECONDS, max(MIN_RETRY_SECONDS, retry)))

    def upload_time_limit(self, round_id: int) -> float:
        """Seconds an upload for `round_id` may take: until the round's deadline (plus grace)."""
        with self._book.lock:
            rnd = self._book.rounds.get(round_id)
            if rnd is None or rnd.state is not RoundState.OPEN:
                return UPLOAD_GRACE_SECONDS
            remaining = rnd.deadline - self._clock()
        return min(MAX_UPLOAD_SECONDS, max(0.0, remaining) + UPLOAD_GRACE_SECONDS)

    def refuse(self, round_id: int, client_id: str, reason: RejectReason, detail: str) -> UpdateRejectedError:
        """Log a refusal decided before the round sees the update; the error to raise."""
        exc = UpdateRejectedError(reason, detail)
        self.record_rejection(round_id, client_id, exc)
        return exc

    def receipt(self, accepted: Accepted) -> str:
        return accepted.receipt(self._log)

    def forget_in_flight(self, rnd: Round, client_id: str) -> None:
        with self._book.lock:
            rnd.in_flight.discard(client_id)

    def record_rejection(self, round_id: int, client_id: str, exc: UpdateRejectedError) -> None:
        with self._book.lock:
            rnd = self._book.rounds.get(round_id)
            if rnd is not None:
                rnd.rejected += 1
        self._metrics.update_rejected(exc.reason)
        _log.warning(
            "update_rejected",
            round_id=round_id,
            client_id=client_id,
            reason=exc.reason.value,
            detail=exc.detail,
        )
        self._log.append(
            UpdateRejected(
                round_id=round_id, client_id=client_id[:128], reason=exc.reason, detail=exc.detail[:500]
            )
        )

    def _admit(self, header: UpdateHeader, line: threading.Event | None, ticket: int | None) -> Admission:
        with self._book.lock:
            rnd = self._book.rounds.get(header.round_id)
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
                self._book.staleness(config, header)  # fail before the upload, not after
                rnd.in_flight.add(header.client_id)
        if previous is not None:
            # A retry of an accepted upload: same receipt, counted once; no data needed.
            return Admission(self, rnd, header, retry=previous)
        try:
            governance = check_governance(rnd.config, header)  # from the header alone
            spec, receiver = self._open_receiver(rnd, header, line)
        except BuffersBusyError:
            self.forget_in_flight(rnd, header.client_id)
            if line is not None and line.is_set():
                raise UploadAbandonedError("the call ended while its upload waited for a buffer") from None
            raise self._deferred(header.client_id, ticket) from None
        except BaseException:
            self.forget_in_flight(rnd, header.client_id)
            raise
        return Admission(self, rnd, header, spec=spec, receiver=receiver, governance=governance)

    def _open_receiver(
        self, rnd: Round, header: UpdateHeader, line: threading.Event | None
    ) -> tuple[AdapterSpec, UpdateReceiver]:
        config = rnd.config
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
        limit = self.upload_time_limit(config.round_id)
        receiver = UpdateReceiver(
            header,
            spec,
            config.max_chunk_size,
            rnd.key,  # the round's own key pair; its private key is gone once the round ends
            binding,
            buffers=self._buffers,
            wait_seconds=limit if line is None else InLine(limit, line),
        )
        return spec, receiver

    def accept(
        self,
        rnd: Round,
        header: UpdateHeader,
        spec: AdapterSpec,
        receiver: UpdateReceiver,
        chunks: Iterator[bytes | memoryview],
        governance: Governance,
    ) -> str:
        """Receive the chunks, fold the update in and log it; its receipt (UpdateRejectedError:
        refused, not yet logged: the admission logs it)."""
        config = rnd.config
        prepared = None
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
            bound = config.max_update_norm
            prepared = rnd.aggregator.prepare(
                update,
                header.num_examples,
                same_spec=spec == config.adapter_spec,
                want_norm=config.approval is not None or bound is not None,
            )
            if bound is not None and prepared.norm is not None and not prepared.norm <= bound:
                # Refused before it counts; the norm is metadata the rejection may carry.
                raise UpdateRejectedError(
                    RejectReason.NORM_EXCEEDED,
                    f"the update's delta against the round's global adapter has L2 norm "
                    f"{prepared.norm:.6g}, above the round's max_update_norm {bound:g}",
                )
            with self._book.lock:
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
                staleness = self._book.staleness(config, header)
                # Fold in first: if that fails (e.g. the spool's disk is full) nothing is
                # logged and nothing counts. Then the entry's place in the log is fixed, and
                # the receipt waits for it to be durable. Should staging fail, the log is
                # broken for good and the round can never close, so an update that was
                # folded in but not logged is never released.
                norm, clipped = prepared.norm, prepared.clipped
                rnd.aggregator.accumulate(prepared, staleness=staleness)
                pending = self._log.stage(
                    UpdateAccepted(
                        round_id=config.round_id,
                        client_id=header.client_id,
                        ciphertext_digest=update.ciphertext_digest,
                        ciphertext_size=update.ciphertext_size,
                        num_examples=header.num_examples,
                        adapter_spec_digest=header.adapter_spec_digest,
                        idempotency_key_digest=hashlib.sha256(header.idempotency_key).digest(),
                        # The site's signature, and what else it covers (fedseal/wire.py).
                        key_id=header.key_id,
                        signature=header.signature,
                        protocol_version=header.protocol_version,
                        hpke_suite=header.suite.wire_id,
                        challenge=header.challenge,
                        chunk_size=header.chunk_size,
                        base_round_id=header.base_round_id,
                        staleness=staleness,
                        data_card_digest=governance.data_card_digest,
                        data_card=governance.data_card,
                        validation=governance.validation,
                    )
                )
                if norm is not None:
                    rnd.norms.append(norm)
                rnd.clipped += int(clipped)
                accepted = Accepted(
                    header.idempotency_key, update.ciphertext_digest, header.num_examples, pending
                )
                rnd.accepted[header.client_id] = accepted
                rnd.site_metrics.add(update.metrics, header.num_examples)
                # Accepted: the duplicate check now finds it there. Dropping the in-flight
                # mark here, not on the admission's exit, keeps that exit off the round lock
                # (which the close below holds for a while).
                rnd.in_flight.discard(header.client_id)
                self._metrics.update_accepted()
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
            if prepared is not None:
                prepared.wipe()  # a refused update's copies too (idempotent)
            receiver.wipe()
        if fills:
            # The round is full. Its close (finalize, serialize and hash the aggregate, log,
            # sign) must not delay this update's receipt: it runs on its own thread.
            threading.Thread(
                target=self._on_full, args=(rnd,), name=f"fedseal-close-{config.round_id}"
            ).start()
        # Outside the round lock: concurrent accepts share one commit.
        return accepted.receipt(self._log)

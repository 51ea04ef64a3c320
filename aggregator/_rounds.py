"""Round lifecycle: open, accept or refuse updates, close on quorum and deadline, publish.

State machine per round: OPEN → CLOSED (quorum reached and `max_clients` accepted, or the
deadline passed with at least `min_clients`) or OPEN → FAILED (deadline passed with fewer
than `min_clients`: nothing is published). Every transition and every update, accepted or
refused, is a log entry; a receipt is returned only once its log entry is durable. An
accepted update's entry is staged under the round lock (which fixes its place in the log)
and waited for outside it, so concurrent uploads share one group commit (one fsync).

At most one round is open at a time and round ids only grow, so a ciphertext sealed for
one round can never count in another (the round id is bound into the envelope). Each round
also has its own HPKE key pair, made here at open (aggregator/enclave/_roundkey.py), its
public key signed by the attested log key and recorded in `round_opened`; the private key
is dropped when the round closes or fails, so a recorded upload cannot be opened later.

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

Central DP (`dp` in the round config, aggregator/_dp.py): each accepted update's delta is
clipped against the round's global adapter before it is folded in, with equal weights; the
sum is noised at close, divided by the round's `max_clients`, and the round's spend recorded
in `round_closed`. A resumed log's DP spend is read back from it (`DpLedger.resume`), so a
job's budget holds across restarts.

Parts, each of one concern: `RoundManager` (here) opens rounds, runs the job and serves
waiters; `Intake` (aggregator/_intake.py) admits, receives and accepts or refuses uploads;
`RoundCloser` (aggregator/_closing.py) closes, fails and releases rounds and records
approvals; they share a `RoundBook` (aggregator/_roundbook.py: the rounds, the releases,
one lock). Whatever holds an update's values (strategies, DP clip and noise, the global
adapter, the aggregate) is in the enclave package (aggregator/enclave/_aggregation.py):
these modules see opaque handles and metadata only, and import neither torch nor numpy.

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
(auditor/). Releases count over the whole log, the enclaves before a restart included
(a resumed enclave reads them back from the log), although a restarted enclave's own global
is its `--initial-adapter` again. Staleness is decided when the upload starts and again,
under the round lock, when the update is folded in: a release in between can make it staler.
The base is the client's claim: the enclave cannot tell what a site trained on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from aggregator._approval import GateState
from aggregator._closing import RoundCloser
from aggregator._config import JobConfig
from aggregator._dp import DpError, DpLedger
from aggregator._earlier import EarlierRounds
from aggregator._intake import MAX_UPLOAD_SECONDS, Admission, Intake
from aggregator._log import AuditLog, DpHistory
from aggregator._metrics import Metrics
from aggregator._roundbook import (
    AggregateNotApprovedError,
    AggregateWithheldError,
    ApprovalOutcome,
    PublishedAggregate,
    Round,
    RoundBook,
    RoundError,
    RoundFailedError,
    RoundNotFoundError,
    RoundNotReadyError,
    RoundSnapshot,
)
from aggregator.enclave._aggregation import GlobalModel
from aggregator.enclave._dp import DpNoisePlan
from aggregator.enclave._keys import EnclaveKeys
from aggregator.enclave._receive import PlaintextBuffers
from aggregator.enclave._roundkey import RoundKeyPair
from fedseal.errors import FedSealError
from fedseal.logformat import LogEntry, released_round
from fedseal.logschema import DpBudgetRecorded, DpRoundRefused, RejectReason, RoundOpened
from fedseal.roundconfig import RoundConfig
from fedseal.wire import RoundState, UpdateHeader, UpdateRejectedError

__all__ = [
    "DEFAULT_UPLOAD_LINE",
    "Admission",
    "AggregateNotApprovedError",
    "AggregateWithheldError",
    "ApprovalOutcome",
    "PublishedAggregate",
    "RoundError",
    "RoundFailedError",
    "RoundManager",
    "RoundNotFoundError",
    "RoundNotReadyError",
    "RoundSnapshot",
]

_log = structlog.get_logger("fedseal.aggregator.rounds")

# Uploads that may wait, header only, for one of the two decryption buffers. Waiting costs a
# blocked thread and a quiet stream; turning an upload away costs a new call when it comes
# back (~2.3-2.7 ms of CPU on the two sides). Measured with 8 MB updates at n = 64 on two
# cores, alternating runs: a line of 4 left 94-151 retries a round, a line of 32 left 30-33
# and ingested 11-22 % more; 48 gained nothing more (README, ingest).
DEFAULT_UPLOAD_LINE = 32


class RoundManager:
    """Opens the job's rounds, hands uploads to the intake, and serves waiters (module docstring)."""

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
        accumulator_device: str = "cpu",
        dp_history: DpHistory | None = None,
        upload_line: int = DEFAULT_UPLOAD_LINE,
    ) -> None:
        """`initial_adapter`: safetensors bytes of the job's starting global adapter (what
        clients fine-tune in round 1); DP rounds need it, named by digest in their config.
        `accumulator_device`: where FedAvg/FedProx accumulate ("cuda": the enclave's GPU).
        `dp_history`: the DP budget and spend of a resumed log (`LogHistory.dp`).
        `upload_line`: how many uploads may wait, header only, for a decryption buffer
        (each holds a stream and a thread); the others are turned away with a retry hint."""
        self._log = log
        self._keys = keys
        self.metrics = metrics if metrics is not None else Metrics()
        self._job = job
        self._clock = clock
        self._spool_dir = spool_dir
        self._book = RoundBook(last_round_id, _releases_in_log(log) if last_round_id > 0 else [])
        # A resumed log's DP ledger; if it cannot be read back, no DP round opens (fail closed).
        self._dp_resume_error: str | None = None
        if dp_history is not None:
            try:
                if len(dp_history.budgets) != 1:
                    raise DpError(f"the log holds {len(dp_history.budgets)} dp_budget entries; a job has one")
                self._book.dp = DpLedger.resume(dp_history.budgets[0], dp_history.spends)
            except DpError as exc:
                self._dp_resume_error = str(exc)
        # Bounds the plaintext held at once, whatever the number of concurrent uploads.
        self._buffers = PlaintextBuffers(line=upload_line)
        self.metrics.watch_line(self._buffers.waiting)
        # The current global adapter and server-optimizer state (enclave memory).
        self._model = GlobalModel(initial_adapter, device=accumulator_device)
        self._closer = RoundCloser(
            self._book, log, keys, self._model, self._buffers, self.metrics, self._after_round_locked
        )
        self._intake = Intake(
            self._book, log, keys, self._buffers, self.metrics, clock, self._closer.close_full
        )
        self._earlier = EarlierRounds(log)

    # ----------------------------------------------------------------- operator side
    def start_job(self) -> None:
        """Open the job's first round not yet used (a resumed log continues after its last)."""
        if self._job is not None and self._book.last_round_id < self._job.rounds:
            self.open_round(self._job.round_config(self._book.last_round_id + 1))

    def open_round(self, config: RoundConfig) -> RoundSnapshot:
        book = self._book
        with book.lock:
            # A full round being closed on its own thread is as good as closed: wait for it.
            book.changed.wait_for(
                lambda: not any(r.closing for r in book.rounds.values()), timeout=MAX_UPLOAD_SECONDS
            )
            return self._open_locked(config)

    def replace_job(self, job: JobConfig) -> RoundSnapshot | None:
        """Run `job` for the rounds not opened yet (an operator's signed `update_job`); opens
        its next round at once when none is open. Returns that round, if one was opened."""
        with self._book.lock:
            opened = self._book.latest_id()
            if job.rounds < opened:
                raise RoundError(
                    f"the new job has {job.rounds} rounds, but round {opened} was already opened"
                )
            self._job = job
            if not self._book.stopped and opened < job.rounds and not self._book.any_open():
                return self._open_locked(job.round_config(opened + 1))
        return None

    def close_round(self, round_id: int, reason: str) -> RoundSnapshot:
        """End open round `round_id` now (an operator's signed `close_round`, e.g. a Flower
        server that knows its other nodes failed): it closes on the updates it has if they
        reach `min_clients`, else it fails with `reason`. A round that already ended is
        returned as it is, so the request is safe to repeat."""
        book = self._book
        with book.lock:
            book.changed.wait_for(
                lambda: not any(r.closing for r in book.rounds.values()), timeout=MAX_UPLOAD_SECONDS
            )
            rnd = book.rounds.get(round_id)
            if rnd is None:
                raise RoundNotFoundError(f"round {round_id} does not exist")
            if rnd.state is RoundState.OPEN and not book.stopped:
                count, needed = len(rnd.accepted), rnd.config.min_clients
                if count >= needed:
                    self._closer.close_locked(rnd)
                else:
                    self._closer.fail_locked(
                        rnd,
                        f"closed by the operator with {count} accepted update(s), min_clients is "
                        f"{needed}: {reason}",
                    )
            return book.snapshot(rnd)

    def failure(self, round_id: int) -> str | None:
        """Why round `round_id` failed or was withheld (None: it did not, or does not exist)."""
        with self._book.lock:
            rnd = self._book.rounds.get(round_id)
            return rnd.failure if rnd is not None else None

    def current_round_id(self) -> int:
        """The open round's id, else the latest round's (0: none yet); for per-round budgets."""
        with self._book.lock:
            open_ids = [rid for rid, r in self._book.rounds.items() if r.state is RoundState.OPEN]
            return open_ids[0] if open_ids else self._book.latest_id()

    def _open_locked(self, config: RoundConfig) -> RoundSnapshot:
        book = self._book
        if book.stopped:
            raise RoundError("the aggregator is shutting down")
        if book.any_open():
            raise RoundError("another round is still open; wait for it to close or fail")
        last = book.latest_id()
        if config.round_id <= last:
            raise RoundError(f"round id {config.round_id} is not above the last round id {last}")
        plan = self._check_dp_locked(config) if config.dp is not None else None
        aggregator = self._model.round(config, spool_dir=self._spool_dir, dp=plan)
        digest = config.digest()
        # The round's own HPKE key, signed by the attested log key: clients seal to it.
        key = RoundKeyPair.generate(
            log_origin=self._log.origin,
            round_id=config.round_id,
            config_digest=digest,
            log_private_key=self._keys.log_private_key,
        )
        try:
            self._log.append(
                RoundOpened(
                    round_id=config.round_id,
                    config=config,
                    config_digest=digest,
                    round_public_key=key.public_key,
                    round_key_signature=key.signed.signature,
                )
            )
        except BaseException:
            key.drop()
            aggregator.discard()
            raise
        rnd = Round(
            config=config,
            aggregator=aggregator,
            deadline=self._clock() + config.deadline_seconds,
            key=key,
            dp_plan=plan,
        )
        timer = threading.Timer(config.deadline_seconds, self._closer.on_deadline, args=(config.round_id,))
        timer.daemon = True
        rnd.timer = timer
        book.rounds[config.round_id] = rnd
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
        book.changed.notify_all()
        return RoundSnapshot(config, rnd.state, 0, round_key=key.signed)

    def _check_dp_locked(self, config: RoundConfig) -> DpNoisePlan:
        """The DP round's noise plan; refuse (and log) one that cannot run within the job's budget."""
        dp = config.dp
        assert dp is not None
        book = self._book
        dimension = sum(t.numel for t in config.adapter_spec.tensors)
        try:
            if self._model.initial_digest != dp.initial_adapter_digest:
                raise DpError(
                    "the DP round's initial_adapter_digest does not name the initial adapter this "
                    "aggregator was started with (--initial-adapter), or none was given"
                )
            if not self._model.fits(config.adapter_spec):
                raise DpError("a DP round needs the global adapter of the job, and this round's spec differs")
            if book.dp is None:
                if self._dp_resume_error is not None:
                    raise DpError(
                        f"the job's DP spend cannot be read back from the log: {self._dp_resume_error}"
                    )
                ledger = DpLedger.start(dp, dimension)
                ledger.check_round(dp, dimension)
                book.dp = ledger
                self._log.append(
                    DpBudgetRecorded(round_id=config.round_id, budget=ledger.budget.to_json_obj())
                )
            else:
                book.dp.check_round(dp, dimension)
            return book.dp.plan(config)
        except DpError as exc:
            self._log.append(DpRoundRefused(round_id=config.round_id, reason=str(exc)[:500]))
            _log.warning("dp_round_refused", round_id=config.round_id, reason=str(exc))
            raise

    def _after_round_locked(self, round_id: int) -> None:
        """A round ended (closed and released, failed, withheld): open the job's next one."""
        self._book.changed.notify_all()
        if self._job is not None and round_id < self._job.rounds and not self._book.stopped:
            try:
                self._open_locked(self._job.round_config(round_id + 1))
            except FedSealError as exc:
                # No caller to raise to (a timer or an upload thread): the job stops here.
                # A DP refusal is already in the audit log (dp_round_refused).
                _log.error("next_round_not_opened", round_id=round_id + 1, error=str(exc))

    def snapshot(self, round_id: int) -> RoundSnapshot:
        """Round `round_id`, or the open round (else the latest) when `round_id` is 0."""
        with self._book.lock:
            return self._book.snapshot(self._book.find(round_id))

    # ----------------------------------------------------------------- client side
    def submit(self, header: UpdateHeader, chunks: Iterator[bytes | memoryview]) -> str:
        """Receive one update; return its receipt (tlog-proof text) or raise UpdateRejectedError."""
        with self.admit(header) as admission:
            return admission.receive(chunks)

    def admit(self, header: UpdateHeader, *, line: threading.Event | None = None) -> Admission:
        """Everything decided from the header alone, then a plaintext buffer for the upload.

        Blocks until a buffer is free (PlaintextBuffers). With `line` (what the service
        passes: an Event set when the call goes away) it waits only in the buffers' bounded
        line, and a busy aggregator whose line is full raises UploadDeferredError at once:
        the client retries after the hint, so at most `upload_line` streams are held open
        waiting. The service tells the client to start
        sending its chunks only after this returns, so nothing but the header is sent
        before. Use the result as a context manager (it releases the buffer and the
        client's in-flight mark) and call `receive` once. Refusals are logged and raised
        as UpdateRejectedError.
        """
        return self._intake.admit(header, line=line)

    def upload_time_limit(self, round_id: int) -> float:
        """Seconds an upload for `round_id` may take: until the round's deadline (plus grace)."""
        return self._intake.upload_time_limit(round_id)

    def reject_malformed(self, round_id: int, client_id: str, detail: str) -> UpdateRejectedError:
        """Log a refusal for a stream whose header could not even be parsed."""
        return self._intake.refuse(round_id, client_id, RejectReason.MALFORMED, detail)

    def refuse(self, round_id: int, client_id: str, reason: RejectReason, detail: str) -> UpdateRejectedError:
        """Log a refusal decided before the round sees the update (e.g. the header's identity
        or signature); `client_id` is the authenticated caller's."""
        return self._intake.refuse(round_id, client_id, reason, detail)

    # ----------------------------------------------------------------- approval
    def submit_approval(self, round_id: int, data: bytes) -> ApprovalOutcome:
        """Verify and record one approver's decision on round `round_id`'s aggregate.

        Raises the named errors of fedseal.approval (nothing is logged for those)."""
        return self._closer.submit_approval(round_id, data)

    # ----------------------------------------------------------------- publication
    def wait_closed(self, round_id: int, timeout: float) -> RoundSnapshot:
        """The round's snapshot once it is no longer open (closed, failed), waiting up to
        `timeout` s. A round filled by its last update closes on its own thread, just after
        that update's receipt; this is how to wait for it. RoundError on timeout."""
        end = self._clock() + max(0.0, timeout)
        with self._book.lock:
            while True:
                rnd = self._book.find(round_id)
                if rnd.state is not RoundState.OPEN and not rnd.closing:
                    break
                remaining = end - self._clock()
                if remaining <= 0:
                    raise RoundError(f"round {round_id} is still open after {timeout:.1f} s")
                self._book.changed.wait(remaining)
        return self.snapshot(round_id)

    def wait_aggregate(self, round_id: int, timeout: float) -> PublishedAggregate:
        """The published aggregate of `round_id`, waiting up to `timeout` s for the round to end
        (and, for a gated round, to be approved)."""
        end = self._clock() + max(0.0, timeout)
        earlier = self._earlier.outcome(round_id)  # ended by an enclave before a restart
        with self._book.lock:
            while True:
                rnd = self._book.rounds.get(round_id)
                if rnd is None and earlier is not None:
                    failed, message = earlier
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
                if remaining <= 0 or self._book.stopped:
                    if rnd is not None and rnd.gate is not None:
                        raise AggregateNotApprovedError(
                            f"round {round_id} closed; its aggregate awaits approval "
                            f"({len(rnd.gate.approved)} of {rnd.gate.params.min_approvals})"
                        )
                    raise RoundNotReadyError(f"round {round_id} has not closed yet")
                self._book.changed.wait(remaining)

    def shutdown(self) -> None:
        with self._book.lock:
            self._book.stopped = True
            for rnd in self._book.rounds.values():
                if rnd.timer is not None:
                    rnd.timer.cancel()
                rnd.key.drop()
                rnd.aggregator.discard()
            self._model.discard()
            self._book.changed.notify_all()


def _releases_in_log(log: AuditLog) -> list[int]:
    """The releases earlier enclaves of a resumed log recorded (module docstring)."""
    released = []
    for index in range(log.size):
        leaf = log.entry_leaf(index)
        # Only two kinds can release: skip parsing the other (most) entries.
        if b'"kind":"round_closed"' in leaf or b'"kind":"aggregate_released"' in leaf:
            rid = released_round(LogEntry.from_leaf_data(leaf, where=f"entry {index}"))
            if rid is not None:
                released.append(rid)
    return released

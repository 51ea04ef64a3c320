"""The end of a round: close (aggregate, DP spend, log), fail, release, and the approval gate.

A round closes on quorum and `max_clients` (on a thread of its own, `close_full`) or at its
deadline (`on_deadline`) with at least `min_clients`; else it fails and nothing is
published. Closing asks the round's `RoundAggregator` (enclave package) for the aggregate:
finalized, DP-noised and serialized there; here only its digest and size are seen, logged
in `round_closed` and signed into the manifest. A gated round's aggregate waits in the
round for `submit_approval`: released (it becomes the global adapter) or withheld (it is
zeroed). Closing or failing a round drops its private HPKE key first
(aggregator/enclave/_roundkey.py). After every round the manager's `after_round` opens the
job's next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from aggregator._approval import ApprovalGate, GateState
from aggregator._log import AuditLog
from aggregator._metrics import Metrics
from aggregator._roundbook import ApprovalOutcome, PendingRelease, PublishedAggregate, Round, RoundBook
from aggregator.enclave._aggregation import ClosedAggregate, GlobalModel
from aggregator.enclave._keys import EnclaveKeys
from aggregator.enclave._receive import PlaintextBuffers
from aggregator.enclave.strategies import AggregationError
from fedseal.approval import Approval, ApprovalNotExpectedError, WrongRoundError
from fedseal.logschema import (
    AggregateReleased,
    AggregateWithheld,
    ApprovalRecorded,
    FailureCause,
    LoraResidual,
    RoundClosed,
    RoundFailed,
)
from fedseal.manifest import AggregateManifest, sign_manifest
from fedseal.provenance import UpdateProvenance, aggregate_statement, sign_statement
from fedseal.spec import AdapterSpec, TensorSpec, WireDtype
from fedseal.wire import RoundState

__all__ = ["RoundCloser"]

_log = structlog.get_logger("fedseal.aggregator.rounds")


class RoundCloser:
    """Closes, fails and releases the book's rounds; records approvals. Callers hold no lock
    unless a method's name ends in `_locked`."""

    def __init__(
        self,
        book: RoundBook,
        log: AuditLog,
        keys: EnclaveKeys,
        model: GlobalModel,
        buffers: PlaintextBuffers,
        metrics: Metrics,
        after_round: Callable[[int], None],
    ) -> None:
        """`after_round(round_id)`, lock held: the round ended (opens the job's next one)."""
        self._book = book
        self._log = log
        self._keys = keys
        self._model = model
        self._buffers = buffers
        self._metrics = metrics
        self._after_round = after_round

    def on_deadline(self, round_id: int) -> None:
        with self._book.lock:
            rnd = self._book.rounds.get(round_id)
            if rnd is None or rnd.state is not RoundState.OPEN or self._book.stopped:
                return
            if len(rnd.accepted) >= rnd.config.min_clients:
                self.close_locked(rnd)
            else:
                self.fail_locked(
                    rnd,
                    f"deadline passed with {len(rnd.accepted)} accepted update(s), "
                    f"min_clients is {rnd.config.min_clients}",
                )

    def close_full(self, rnd: Round) -> None:
        """Close a round its last update filled (on that update's closing thread)."""
        with self._book.lock:
            try:
                if rnd.state is RoundState.OPEN and not self._book.stopped:
                    self.close_locked(rnd)
            except Exception as exc:
                # No caller to raise to, and the close cancelled the deadline timer: fail
                # the round (nothing is released; waiters get RoundFailedError) rather than
                # leave it open and full for ever. Logging that may fail too (a broken log).
                _log.error("round_close_failed", round_id=rnd.config.round_id, error=str(exc))
                if rnd.state is RoundState.OPEN:
                    try:
                        self.fail_locked(
                            rnd, f"closing the round failed: {exc}", FailureCause.AGGREGATION_FAILED
                        )
                    except Exception as again:
                        _log.error("round_fail_not_logged", round_id=rnd.config.round_id, error=str(again))
            finally:
                rnd.closing = False
                self._book.changed.notify_all()

    def close_locked(self, rnd: Round) -> None:
        # The close's own CPU (finalize, serialize, hash, sign, publish), apart from the
        # uploads': operators see what a round's end costs, the ingest benchmark what its
        # uploads cost (benchmarks/bench_ingest.py).
        started = time.thread_time()
        try:
            self._close_locked(rnd)
        finally:
            if rnd.state is RoundState.CLOSED:
                self._metrics.round_close_cpu(time.thread_time() - started)

    def _close_locked(self, rnd: Round) -> None:
        config = rnd.config
        if rnd.timer is not None:
            rnd.timer.cancel()
        # The round takes no more uploads: its private key goes first, whatever follows
        # (uploads still in flight are refused as round_not_open when they finish).
        rnd.key.drop()
        count = len(rnd.accepted)
        if count < config.min_clients:
            # Never reached by the callers above; kept so no path releases a small cohort.
            self.fail_locked(rnd, f"{count} accepted update(s), min_clients is {config.min_clients}")
            return
        ledger = self._book.dp if config.dp is not None else None
        # The idle plaintext buffers (an update's worth each) are not needed until the next
        # round's uploads: freeing them first keeps the aggregate's serialized copy within
        # the memory the round already used.
        self._buffers.drop_idle()
        try:
            aggregate = rnd.aggregator.close(wipeable=config.approval is not None)
        except AggregationError as exc:
            self.fail_locked(
                rnd, f"{config.strategy} produced no aggregate: {exc}", FailureCause.AGGREGATION_FAILED
            )
            return
        dp_record: dict[str, object] | None = None
        try:
            if ledger is not None and rnd.dp_plan is not None:
                spend = ledger.charge(
                    rnd.dp_plan,
                    clipped=rnd.clipped,
                    updates=count,
                    noised_unclipped=aggregate.noised_unclipped_count,
                )
                dp_record = spend.to_json_obj(ledger.budget)
            appended = self._log_close(rnd, aggregate, dp_record)
        except BaseException:
            aggregate.wipe()
            raise
        rnd.state = RoundState.CLOSED
        self._metrics.round_closed(config.round_id)
        _log.info(
            "round_closed",
            round_id=config.round_id,
            participants=len(rnd.accepted),
            total_examples=sum(a.num_examples for a in rnd.accepted.values()),
            log_index=appended,
            approval_required=config.approval is not None,
        )
        pending = PendingRelease(aggregate, appended)
        if config.approval is None:
            self._release_locked(rnd, pending)
            return
        rnd.pending = pending
        rnd.gate = ApprovalGate(config.approval, self._log.origin, config.round_id, aggregate.digest)
        self._book.changed.notify_all()

    def _log_close(self, rnd: Round, aggregate: ClosedAggregate, dp_record: dict[str, object] | None) -> int:
        """Append the round's `round_closed` entry; its index."""
        config = rnd.config
        gated = config.approval is not None
        appended = self._log.append(
            RoundClosed(
                round_id=config.round_id,
                strategy=config.strategy,
                strategy_params=config.params.to_json_obj(),
                participants=tuple(sorted(rnd.accepted)),
                total_examples=sum(a.num_examples for a in rnd.accepted.values()),
                aggregate_digest=aggregate.digest,
                aggregate_size=aggregate.size,
                dp=dp_record,
                # lora-exact: a property of the aggregate, not of any one update
                lora_residuals=tuple(
                    LoraResidual(
                        module=r.module, rank=r.rank, stacked_rank=r.stacked_rank, residual=r.residual
                    )
                    for r in aggregate.residuals
                )
                or None,
                approval_required=True if gated else None,
                metrics=_round_metrics(rnd, gated),
                provenance=self._provenance(rnd, aggregate, dp_record),
            )
        )
        return appended.entry.index

    def _provenance(
        self, rnd: Round, aggregate: ClosedAggregate, dp_record: dict[str, object] | None
    ) -> dict[str, object]:
        """The aggregate's in-toto statement, signed by the log key (fedseal/provenance.py)."""
        config = rnd.config
        statement = aggregate_statement(
            log_origin=self._log.origin,
            log_public_key=self._keys.bound.log_public_key,
            round_id=config.round_id,
            round_config_digest=config.digest(),
            strategy=config.strategy,
            updates=[
                UpdateProvenance(site, a.num_examples, a.ciphertext_digest)
                for site, a in rnd.accepted.items()
            ],
            aggregate_digest=aggregate.digest,
            aggregate_size=aggregate.size,
            dp=dp_record,
            approval_required=config.approval is not None,
        )
        return sign_statement(statement, self._keys.log_private_key).to_json_obj()

    def _release_locked(self, rnd: Round, pending: PendingRelease) -> None:
        """Sign and serve the aggregate; it becomes the global adapter of the next round."""
        config = rnd.config
        aggregate = pending.aggregate
        aggregate_spec = AdapterSpec.of(
            [TensorSpec(t.name, t.shape, WireDtype.FLOAT32) for t in config.adapter_spec.tensors]
        )
        manifest = AggregateManifest(
            log_origin=self._log.origin,
            round_id=config.round_id,
            strategy=config.strategy,
            adapter_spec=aggregate_spec.to_json_obj(),
            aggregate_digest=aggregate.digest,
            aggregate_size=aggregate.size,
            participants=tuple(sorted(rnd.accepted)),
            total_examples=sum(a.num_examples for a in rnd.accepted.values()),
            round_closed_index=pending.round_closed_index,
            client_metrics=rnd.site_metrics.means() or None,
        )
        signed = sign_manifest(manifest, self._keys.log_private_key)
        rnd.published = PublishedAggregate(signed, aggregate.publish())
        self._book.released.append(config.round_id)  # its release entry was just logged
        rnd.pending = None
        self._model.release(aggregate)
        self._after_round(config.round_id)

    def fail_locked(
        self, rnd: Round, reason: str, cause: FailureCause = FailureCause.QUORUM_NOT_REACHED
    ) -> None:
        """Fail an open round (below quorum, or no aggregate): nothing is published."""
        if rnd.timer is not None:
            rnd.timer.cancel()
        rnd.key.drop()
        rnd.aggregator.discard()
        rnd.state = RoundState.FAILED
        rnd.failure = reason
        self._log.append(
            RoundFailed(
                round_id=rnd.config.round_id, reason=reason[:500], accepted=len(rnd.accepted), cause=cause
            )
        )
        self._metrics.round_failed(rnd.config.round_id, cause)
        _log.warning("round_failed", round_id=rnd.config.round_id, reason=reason)
        self._after_round(rnd.config.round_id)

    def submit_approval(self, round_id: int, data: bytes) -> ApprovalOutcome:
        """Verify and record one approver's decision on round `round_id`'s aggregate.

        Raises the named errors of fedseal.approval (nothing is logged for those)."""
        approval = Approval.from_bytes(data)
        with self._book.lock:
            rnd = self._book.rounds.get(round_id)
            if rnd is None:
                raise WrongRoundError(f"round {round_id} does not exist")
            gate = rnd.gate
            if gate is None:
                raise ApprovalNotExpectedError(
                    f"round {round_id} does not await approval (no approval gate, or not closed yet)"
                )
            verified = gate.verify(approval)
            recorded = self._log.append(
                ApprovalRecorded(
                    round_id=round_id,
                    approver=approval.approver,
                    approver_key_id=verified.approver_key_id,
                    decision=approval.decision,
                    aggregate_digest=approval.aggregate_digest,
                    signature=approval.signature,
                    approval_digest=verified.digest,
                )
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
            digest = pending.aggregate.digest
            if state is GateState.RELEASED:
                self._log.append(
                    AggregateReleased(
                        round_id=round_id, aggregate_digest=digest, approvals=tuple(gate.approved)
                    )
                )
                self._release_locked(rnd, pending)
            elif state is GateState.WITHHELD:
                self._log.append(
                    AggregateWithheld(
                        round_id=round_id, aggregate_digest=digest, refused_by=verified.approver_key_id
                    )
                )
                pending.aggregate.wipe()
                rnd.pending = None
                rnd.failure = f"approver {verified.approver_key_id} refused the aggregate"
                self._after_round(round_id)
            return ApprovalOutcome(
                round_id, state, len(gate.approved), gate.params.min_approvals, recorded.entry.index
            )


def _round_metrics(rnd: Round, gated: bool) -> dict[str, object] | None:
    """round_closed.metrics: a gated round's (below), and the sites' metrics as the enclave
    aggregated them (example-weighted means, under "client") when any site sent some."""
    metrics = _metrics(rnd) if gated else {}
    client = rnd.site_metrics.means()
    if client:
        metrics["client"] = client
        metrics["client_reports"] = rnd.site_metrics.reports
    return metrics or None


def _metrics(rnd: Round) -> dict[str, object]:
    """What a gated round publishes before release. Per-update norms are sorted (not tied
    to a client) and left out under DP, where only the number clipped is shown."""
    metrics: dict[str, object] = {"accepted": len(rnd.accepted), "rejected": rnd.rejected}
    if rnd.config.dp is None:
        # Milli-units keep the log's canonical JSON exact and short.
        metrics["update_norms_milli"] = sorted(round(n * 1000) for n in rnd.norms)
    else:
        metrics["clipped"] = rnd.clipped
    return metrics

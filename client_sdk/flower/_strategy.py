"""The server-side piece: a Flower strategy whose rounds are FedSeal rounds.

``FedSealStrategy`` keeps what Flower's FedAvg does about sampling nodes, configs and
metrics; Flower drives the rounds, FedSeal aggregates them:

- ``start`` fixes the run's plan: the adapter spec of the initial arrays (each tensor in
  its own dtype), the FedSeal strategy and its parameters, FedSeal's central DP (if any,
  calibrated over the run's ``num_rounds``), the round deadline;
- ``configure_train`` samples nodes as FedAvg does, then **opens the FedSeal round** with
  a signed ``open_round`` request: the sampled nodes are its cohort (``max_clients``), its
  minimum is Flower's ``min_train_nodes`` (at most the cohort), its deadline starts now.
  Each client is told which round to submit to (``fedseal.round-id``), which round's
  aggregate the arrays are (``fedseal.global-round``) and, under FedProx, ``proximal-mu``;
- ``aggregate_train`` receives receipts, no updates: it verifies each against the log key
  of its own attestation; Flower has then every reply it will get, so a round still open
  (a node failed, timed out or sent no valid receipt) is **ended with a signed
  ``close_round``**: it closes on the updates it has if they reach the minimum, else fails.
  The round's verified aggregate becomes the new global arrays; a round that published
  none raises ``FedSealRoundFailedError`` with the aggregator's reason, so the Flower run
  fails rather than completes on stale arrays.

The strategy calls the aggregator as `identity`, a principal of role ``operator`` in the
job config, whose job opens no rounds itself (``"rounds": 0``): the round count is
Flower's ``num_rounds``, the cohort Flower's sample. Flower round ``r`` is FedSeal round
``first_round_id + r - 1``; by default the first id after every round the log has used.

A strategy wrapped around this one (Flower's ``DifferentialPrivacy*`` wrappers) would
change the enclave's signed aggregate, which every client refuses: it is refused when the
run starts (``WrappedStrategyError``); FedSeal's own DP (``dp=FedSealDp(...)``) runs in
the enclave instead.

What the server learns: receipts (ids, digests, sizes), the metrics the clients' train
functions return, and the aggregate. Which nodes take part is still the Flower server's
choice (so privacy amplification by sampling does not hold unless the enclave samples).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from attestation import Policy
from client_sdk._client import FedSealClient
from client_sdk._identity import ClientIdentity
from client_sdk.flower._records import (
    GLOBAL_ROUND_KEY,
    PROXIMAL_MU_KEY,
    RECEIPT_RECORD,
    ROUND_KEY,
    FlowerIntegrationError,
    WrappedStrategyError,
    arrays_to_tensors,
    tensors_to_arrays,
)
from client_sdk.flower._rounds import FedSealDp, FlowerRounds, RoundPlan, parse_params, plan_rounds
from fedseal.errors import FedSealError
from fedseal.logschema import UpdateAccepted
from fedseal.receipt import verify_receipt
from fedseal.roundconfig import FedProxParams

__all__ = ["FedSealFedAvg", "FedSealStrategy"]

_log = logging.getLogger("fedseal.flower")


class FedSealStrategy(FedAvg):
    """A Flower strategy whose aggregation is a FedSeal round in the attested enclave.

    ``endpoint`` and ``policy``: the FedSeal aggregator and the policy this server attests
    it under; ``identity``: the operator principal this server signs its requests with.
    ``strategy`` and ``strategy_params``: any FedSeal strategy (``fedavg``, ``fedprox``
    with ``proximal_mu``, ``fedavgm``, ``fedadam``, ``fedyogi``, ``fedmedian``,
    ``trimmed-mean``, ``krum``, ``multi-krum``, ``lora-exact``) with its parameters, as a
    round config names them; ``dp``: FedSeal's central DP. ``round_deadline_seconds``:
    each round's deadline, from its opening. ``min_clients``: the round's minimum (default:
    Flower's ``min_train_nodes``, at most the cohort). Every other keyword goes to
    ``flwr.serverapp.strategy.FedAvg`` (sampling, metrics).
    """

    def __init__(
        self,
        endpoint: str,
        policy: Policy,
        *,
        identity: ClientIdentity,
        strategy: str = "fedavg",
        strategy_params: Mapping[str, Any] | None = None,
        dp: FedSealDp | None = None,
        round_deadline_seconds: float = 600.0,
        min_clients: int | None = None,
        first_round_id: int | None = None,
        timeout: float = 60.0,
        **fedavg_options: Any,
    ) -> None:
        super().__init__(**fedavg_options)
        if first_round_id is not None and first_round_id < 1:
            raise FlowerIntegrationError("first_round_id must be >= 1")
        if not 0 < round_deadline_seconds <= 7 * 24 * 3600:
            raise FlowerIntegrationError("round_deadline_seconds must be in (0, 604800]")
        if min_clients is not None and min_clients < 1:
            raise FlowerIntegrationError("min_clients must be >= 1")
        self.strategy_name, self.strategy_params = parse_params(
            strategy, dict(strategy_params) if strategy_params is not None else None
        )
        self.dp = dp
        self.round_deadline_seconds = round_deadline_seconds
        self.min_clients = min_clients
        self.first_round_id = first_round_id
        self.endpoint = endpoint
        self.policy = policy
        self.identity = identity
        self.timeout = timeout
        self._rounds = FlowerRounds(endpoint, policy, identity, timeout=timeout)
        self._plan: RoundPlan | None = None
        self._starting = False
        # The FedSeal round whose verified aggregate the current global arrays are (0: the
        # initial arrays), and the round each Flower round opened (none: no node sampled).
        self.global_round = 0
        self.opened: dict[int, int] = {}
        self._sampled: dict[int, set[int]] = {}

    # ------------------------------------------------------------------ run
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's ``Strategy.start``, after fixing the run's plan (module docstring)."""
        self.prepare(initial_arrays, num_rounds)
        self._starting = True
        try:
            return super().start(
                grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn
            )
        finally:
            self._starting = False

    def prepare(self, initial_arrays: ArrayRecord, num_rounds: int) -> RoundPlan:
        """Fix the plan of a run of `num_rounds` from `initial_arrays` (``start`` calls it)."""
        if num_rounds < 1:
            raise FlowerIntegrationError("num_rounds must be >= 1")
        self._plan = plan_rounds(
            arrays_to_tensors(initial_arrays),
            strategy=self.strategy_name,
            params=self.strategy_params,
            deadline_seconds=self.round_deadline_seconds,
            dp=self.dp,
            num_rounds=num_rounds,
        )
        return self._plan

    def summary(self) -> None:
        # Strategy.start calls summary() on the strategy that was started; a wrapper's
        # summary() calls its inner strategy's: reaching here outside our own start means
        # something else started the run around this strategy.
        if not self._starting:
            raise WrappedStrategyError(
                f"{type(self).__name__} was started by a strategy wrapped around it (such as Flower's "
                "DifferentialPrivacy* wrappers): they add noise to the enclave's signed aggregate, which "
                "every client refuses. Use FedSeal's central DP, applied in the enclave: "
                f"{type(self).__name__}(..., dp=FedSealDp(epsilon, delta, clip_norm, initial_adapter)) "
                "or the run-config keys fedseal-dp-epsilon, fedseal-dp-delta, fedseal-dp-clip-norm"
            )
        super().summary()
        _log.info(
            "FedSeal: strategy %s %s, central DP %s",
            self.strategy_name.value,
            self.strategy_params.to_json_obj(),
            "off" if self.dp is None else f"epsilon={self.dp.epsilon:g} delta={self.dp.delta:g}",
        )

    # ------------------------------------------------------------------ rounds
    def fedseal_round(self, server_round: int) -> int:
        if self.first_round_id is None:
            self.first_round_id = self._rounds.next_round_id()
        return self.first_round_id + server_round - 1

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        plan = self._plan if self._plan is not None else self.prepare(arrays, 1)
        round_id = self.fedseal_round(server_round)
        config[ROUND_KEY] = round_id
        config[GLOBAL_ROUND_KEY] = self.global_round
        if isinstance(self.strategy_params, FedProxParams):
            config[PROXIMAL_MU_KEY] = self.strategy_params.proximal_mu
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        cohort = len(messages)
        minimum = min(cohort, self.min_clients if self.min_clients is not None else self.min_train_nodes)
        self._rounds.open(plan, round_id, cohort=cohort, min_clients=max(1, minimum))
        self.opened[server_round] = round_id
        self._sampled[server_round] = {m.metadata.dst_node_id for m in messages}
        _log.info("fedseal round %d opened for %d sampled nodes (min %d)", round_id, cohort, minimum)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[GLOBAL_ROUND_KEY] = self.global_round
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_id = self.opened.get(server_round)
        if round_id is None:
            return None, None  # no node was sampled: no round was opened
        replies = list(replies)
        with FedSealClient(
            self.endpoint, self.policy, identity=self.identity, timeout=self.timeout
        ) as client:
            log_key = client.attest().log_public_key
        accepted, problems = self._with_valid_receipts(replies, round_id, log_key)
        missing = self._sampled.get(server_round, set()) - {r.metadata.src_node_id for r in replies}
        problems += [f"node {node} did not reply" for node in sorted(missing)]
        _log.info(
            "fedseal round %d: %d of %d replies carry a valid receipt", round_id, len(accepted), len(replies)
        )
        why = f"Flower has all replies: {len(accepted)} with a valid receipt" + (
            f"; {'; '.join(problems)}" if problems else ""
        )
        aggregate = self._rounds.finish(round_id, why)
        self.global_round = round_id
        # The sites' metrics as the enclave averaged them (example-weighted, signed with the
        # aggregate); the server never sees a single site's numbers.
        metrics = MetricRecord(dict(aggregate.metrics)) if aggregate.metrics else None
        return tensors_to_arrays(aggregate.tensors()), metrics

    def _with_valid_receipts(
        self, replies: list[Message], round_id: int, log_key: bytes
    ) -> tuple[list[Message], list[str]]:
        accepted: list[Message] = []
        problems: list[str] = []
        seen: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                # Not the reason: Flower puts the ClientApp's exception text there, which can
                # quote a training record, and this line reaches the log and close_round.
                problems.append(f"node {node} failed ({_error_name(reply.error.code)})")
                continue
            record = reply.content.config_records.get(RECEIPT_RECORD)
            text = record.get("receipt") if record is not None else None
            if not isinstance(text, str):
                problems.append(f"node {node} sent no FedSeal receipt")
                continue
            try:
                receipt = verify_receipt(text, log_key)
            except FedSealError as exc:
                problems.append(f"node {node} sent a receipt that does not verify ({type(exc).__name__})")
                continue
            entry = receipt.entry
            if not isinstance(entry.body, UpdateAccepted) or entry.body.round_id != round_id:
                problems.append(f"node {node} sent a receipt for another round or entry")
                continue
            if receipt.index in seen:  # one accepted update, one vote in the metrics
                continue
            seen.add(receipt.index)
            accepted.append(reply)
        for problem in problems:
            _log.warning("fedseal round %d: %s", round_id, problem)
        return accepted, problems


# The name of the first release, which ran FedAvg only; any strategy is selected by argument.
FedSealFedAvg = FedSealStrategy


_ERROR_NAMES = {
    value: name.lower().replace("_", " ")
    for name, value in vars(ErrorCode).items()
    if not name.startswith("_") and isinstance(value, int)
}


def _error_name(code: int) -> str:
    """Flower's name for an error code ("node unavailable"); never its reason text."""
    return f"Flower error {_ERROR_NAMES.get(code, 'code ' + str(code))}"

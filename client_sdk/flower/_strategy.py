"""The server-side piece: Flower's FedAvg, with the averaging done by the FedSeal enclave.

``FedSealFedAvg`` keeps everything Flower's FedAvg does about sampling nodes, configs and
metrics, and changes what a round's arrays are:

- ``configure_train`` tells each client which FedSeal round to submit to
  (``fedseal.round-id``) and which FedSeal round's aggregate the arrays are
  (``fedseal.global-round``), so the client mod can verify them;
- ``aggregate_train`` receives no updates at all, only receipts: it verifies each one
  against the log key of an attestation it makes itself (under its own policy), keeps the
  replies whose receipt proves an accepted update in this round, then fetches the round's
  aggregate from the enclave, verifies its signed manifest, and makes it the new global
  arrays. Metrics are FedAvg's weighted average over the replies with a valid receipt.

The strategy calls the aggregator with its own `identity`: a key the aggregator knows (a
principal of the job config, e.g. the operator who runs the Flower server), since fetching
an aggregate needs an authenticated caller.

The FedSeal aggregator's job config decides when a round closes (``max_clients`` updates,
or the deadline with at least ``min_clients``): make ``max_clients`` the number of nodes
Flower samples, or rounds close only at their deadline. Flower round ``r`` goes to FedSeal
round ``first_round_id + r - 1``.

What the server learns: receipts (ids, digests, sizes), the metrics the clients' train
functions return, and the aggregate. Which nodes take part is still the Flower server's
choice (so privacy amplification by sampling does not hold unless the enclave samples).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from attestation import Policy
from client_sdk._client import FedSealClient
from client_sdk._errors import RoundUnavailableError
from client_sdk._identity import ClientIdentity
from client_sdk.flower._records import (
    GLOBAL_ROUND_KEY,
    RECEIPT_RECORD,
    ROUND_KEY,
    tensors_to_arrays,
)
from fedseal.errors import FedSealError
from fedseal.logschema import UpdateAccepted
from fedseal.receipt import verify_receipt

__all__ = ["FedSealFedAvg"]

_log = logging.getLogger("fedseal.flower")


class FedSealFedAvg(FedAvg):
    """Flower FedAvg whose aggregation happens in the attested FedSeal enclave.

    ``endpoint`` and ``policy`` are the FedSeal aggregator's address and the policy this
    server attests it under; ``identity`` is the key this server calls it with;
    ``aggregate_wait_seconds`` bounds the wait for a round to close. Every other keyword
    goes to ``flwr.serverapp.strategy.FedAvg``.
    """

    def __init__(
        self,
        endpoint: str,
        policy: Policy,
        *,
        identity: ClientIdentity,
        first_round_id: int = 1,
        aggregate_wait_seconds: float = 600.0,
        timeout: float = 60.0,
        **fedavg_options: Any,
    ) -> None:
        super().__init__(**fedavg_options)
        if first_round_id < 1:
            raise ValueError("first_round_id must be >= 1")
        self.endpoint = endpoint
        self.policy = policy
        self.identity = identity
        self.first_round_id = first_round_id
        self.aggregate_wait_seconds = aggregate_wait_seconds
        self.timeout = timeout
        # The FedSeal round whose verified aggregate the current global arrays are (0: the
        # initial arrays).
        self.global_round = 0

    def fedseal_round(self, server_round: int) -> int:
        return self.first_round_id + server_round - 1

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[ROUND_KEY] = self.fedseal_round(server_round)
        config[GLOBAL_ROUND_KEY] = self.global_round
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[GLOBAL_ROUND_KEY] = self.global_round
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_id = self.fedseal_round(server_round)
        replies = list(replies)
        with FedSealClient(
            self.endpoint, self.policy, identity=self.identity, timeout=self.timeout
        ) as client:
            log_key = client.attest().log_public_key
            accepted = self._with_valid_receipts(replies, round_id, log_key)
            _log.info(
                "fedseal round %d: %d of %d replies carry a valid receipt",
                round_id,
                len(accepted),
                len(replies),
            )
            try:
                aggregate = client.fetch_aggregate(round_id, wait_seconds=self.aggregate_wait_seconds)
            except RoundUnavailableError as exc:
                # The round failed (too few updates by its deadline): keep the old arrays.
                _log.warning("fedseal round %d published no aggregate: %s", round_id, exc)
                return None, None
        self.global_round = round_id
        metrics = (
            self.train_metrics_aggr_fn([m.content for m in accepted], self.weighted_by_key)
            if accepted
            else None
        )
        return tensors_to_arrays(aggregate.tensors()), metrics

    def _with_valid_receipts(self, replies: list[Message], round_id: int, log_key: bytes) -> list[Message]:
        accepted: list[Message] = []
        seen: set[int] = set()
        for reply in replies:
            if reply.has_error():
                _log.warning(
                    "node %d replied with an error: %s", reply.metadata.src_node_id, reply.error.reason
                )
                continue
            record = reply.content.config_records.get(RECEIPT_RECORD)
            text = record.get("receipt") if record is not None else None
            if not isinstance(text, str):
                _log.warning("node %d sent no FedSeal receipt: ignored", reply.metadata.src_node_id)
                continue
            try:
                receipt = verify_receipt(text, log_key)
            except FedSealError as exc:
                _log.warning(
                    "node %d sent a receipt that does not verify: %s", reply.metadata.src_node_id, exc
                )
                continue
            entry = receipt.entry
            if not isinstance(entry.body, UpdateAccepted) or entry.body.round_id != round_id:
                _log.warning("node %d sent a receipt for another round or entry", reply.metadata.src_node_id)
                continue
            if receipt.index in seen:  # one accepted update, one vote in the metrics
                continue
            seen.add(receipt.index)
            accepted.append(reply)
        return accepted

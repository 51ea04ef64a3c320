"""How a Flower server runs FedSeal rounds: open one per Flower round, end it, fetch its aggregate.

`FlowerRounds` is the FedSeal side of a FedSeal strategy, apart from anything Flower: it
turns a Flower round (the cohort Flower sampled, its minimum) into a signed `open_round`
request, ends the round with a signed `close_round` once Flower has every reply it will
get (a node Flower knows failed will not submit), and returns the verified aggregate or
raises `FedSealRoundFailedError` with the aggregator's reason. Every call goes to the
aggregator under the operator principal's identity, attested afresh under the server's
policy (FedSealClient).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from attestation import Policy
from client_sdk._client import Aggregate, FedSealClient
from client_sdk._errors import OperatorActionError, RoundUnavailableError
from client_sdk._identity import ClientIdentity
from client_sdk.flower._records import FedSealRoundFailedError, FlowerIntegrationError
from fedseal.roundconfig import (
    DpParams,
    RoundConfig,
    StrategyName,
    StrategyParams,
    parse_strategy_params,
)
from fedseal.spec import AdapterSpec
from fedseal.wire import RoundState

__all__ = ["FedSealDp", "FlowerRounds", "RoundPlan"]

_REASON_LIMIT = 400  # what close_round records


@dataclass(frozen=True)
class FedSealDp:
    """FedSeal's central DP for a Flower job: the enclave clips every update to `clip_norm`
    and adds Gaussian noise calibrated so that the run's rounds spend at most (`epsilon`,
    `delta`). `initial_adapter` is the safetensors file the aggregator was started with
    (`fedseal-aggregator --initial-adapter`): the ServerApp's initial arrays must be it."""

    epsilon: float
    delta: float
    clip_norm: float
    initial_adapter: Path


@dataclass(frozen=True)
class RoundPlan:
    """What every round of a Flower run shares (fixed when the strategy starts)."""

    adapter_spec: AdapterSpec
    strategy: StrategyName
    params: StrategyParams
    deadline_seconds: float
    dp: DpParams | None


def plan_rounds(
    initial: dict[str, torch.Tensor],
    *,
    strategy: StrategyName,
    params: StrategyParams,
    deadline_seconds: float,
    dp: FedSealDp | None,
    num_rounds: int,
) -> RoundPlan:
    """The plan for a run of `num_rounds` from the `initial` arrays (each in its own dtype)."""
    spec = AdapterSpec.from_tensors(initial)
    dp_params = None
    if dp is not None:
        dp_params = DpParams(
            epsilon=dp.epsilon,
            delta=dp.delta,
            clip_norm=dp.clip_norm,
            rounds=num_rounds,
            initial_adapter_digest=_initial_adapter_digest(dp.initial_adapter, initial),
        )
    return RoundPlan(spec, strategy, params, deadline_seconds, dp_params)


def _initial_adapter_digest(path: Path, initial: dict[str, torch.Tensor]) -> bytes:
    """SHA-256 of the aggregator's initial adapter file, once the initial arrays equal it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlowerIntegrationError(f"cannot read the initial adapter {path}: {exc.strerror}") from None
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types for a bad file
        raise FlowerIntegrationError(f"{path} is not a safetensors file: {exc}") from None
    if sorted(tensors) != sorted(initial) or any(
        tensors[name].shape != initial[name].shape or not torch.equal(tensors[name], initial[name])
        for name in tensors
    ):
        raise FlowerIntegrationError(
            f"the ServerApp's initial arrays are not the initial adapter {path} (under DP the enclave "
            "measures round 1's updates against that file): start from the same adapter"
        )
    return hashlib.sha256(data).digest()


def parse_params(strategy: str, params: dict[str, Any] | None) -> tuple[StrategyName, StrategyParams]:
    """A FedSeal strategy name and its parameters, validated (ConfigError names the field)."""
    try:
        name = StrategyName(strategy)
    except ValueError:
        raise FlowerIntegrationError(
            f"unknown FedSeal strategy {strategy!r}; available: {', '.join(s.value for s in StrategyName)}"
        ) from None
    return name, parse_strategy_params(name, params)


class FlowerRounds:
    """Opens, ends and fetches the FedSeal rounds of one Flower run (module docstring)."""

    def __init__(self, endpoint: str, policy: Policy, identity: ClientIdentity, *, timeout: float) -> None:
        self._endpoint = endpoint
        self._policy = policy
        self._identity = identity
        self._timeout = timeout

    def _client(self) -> FedSealClient:
        return FedSealClient(self._endpoint, self._policy, identity=self._identity, timeout=self._timeout)

    def next_round_id(self) -> int:
        """The first round id after every round this aggregator's log has used."""
        with self._client() as client:
            try:
                return client.round_info(0).config.round_id + 1
            except RoundUnavailableError:
                return 1  # no round yet

    def open(self, plan: RoundPlan, round_id: int, *, cohort: int, min_clients: int) -> RoundConfig:
        """Open `round_id` for the `cohort` nodes Flower sampled; its deadline starts now."""
        config = RoundConfig(
            round_id=round_id,
            adapter_spec=plan.adapter_spec,
            min_clients=min_clients,
            max_clients=cohort,
            deadline_seconds=plan.deadline_seconds,
            strategy=plan.strategy.value,
            strategy_params=plan.params,
            dp=plan.dp,
        )
        with self._client() as client:
            client.open_round(config)
        return config

    def finish(self, round_id: int, why_short: str) -> Aggregate:
        """End `round_id` now if it is still open (Flower has all the replies it will get:
        `why_short` says which nodes did not submit), then its verified aggregate; raises
        FedSealRoundFailedError with the aggregator's reason when it published none."""
        failure: str | None = None
        with self._client() as client:
            try:
                if client.round_info(round_id).state is RoundState.OPEN:
                    failure = client.close_round(round_id, why_short[:_REASON_LIMIT]).failure
                if failure is None:
                    # Closed: published at once (a round its last update filled closes on
                    # its own thread: the short wait covers that).
                    return client.fetch_aggregate(round_id, wait_seconds=self._timeout)
            except RoundUnavailableError as exc:
                failure = str(exc)
            except OperatorActionError as exc:
                failure = f"close_round was refused: {exc}"
        raise FedSealRoundFailedError(f"FedSeal round {round_id} published no aggregate: {failure}")

"""Aggregation strategies, one module each. A round config names one by `strategy` and gives
its validated parameters in `strategy_params` (`fedseal.roundconfig`).

| strategy       | module            | memory while accepting        | aggregate                        |
|----------------|-------------------|-------------------------------|----------------------------------|
| fedavg         | fedavg.py         | one accumulator               | weighted mean                    |
| fedprox        | fedprox.py        | one accumulator               | weighted mean (mu is for clients) |
| fedavgm        | fedavgm.py        | one accumulator (+ state)     | server momentum step             |
| fedadam        | fedadam.py        | one accumulator (+ state)     | Adam step (Reddi et al. 2021)    |
| fedyogi        | fedyogi.py        | one accumulator (+ state)     | Yogi step (Reddi et al. 2021)    |
| fedmedian      | median.py         | none: spooled sealed on file  | coordinate-wise median           |
| trimmed-mean   | trimmed_mean.py   | none: spooled sealed on file  | coordinate-wise trimmed mean     |
| krum           | krum.py           | none: spooled sealed on file  | the update with the best score   |
| multi-krum     | krum.py           | none: spooled sealed on file  | mean of the m best updates       |
| lora-exact     | lora_exact.py     | none: spooled sealed on file  | optimal rank-r factors of Σ pBA  |

Weights and async mode: averaging strategies weight an update by its example count times
alpha**staleness when the round config has `strategy_params.staleness` (async mode), and
refuse updates staler than its `max_staleness` (`StaleUpdateError`); a synchronous round
accepts staleness 0 only. The caller (aggregator/_rounds.py, module docstring) computes
staleness as the number of aggregates released after the one the client trained from
(the header's `base_round_id`), and passes it to `accumulate`.
Robust strategies (median, trimmed mean, Krum's choice) ignore weights by definition; the
round config refuses staleness parameters for them.

Server optimizers carry a `ServerState` from round to round: see `_serverstate.py` for
the contract with the round manager.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from aggregator.enclave._spool import DEFAULT_PIECE_ELEMENTS
from fedseal.roundconfig import (
    FedAdamParams,
    FedAvgMParams,
    FedAvgParams,
    FedMedianParams,
    FedProxParams,
    FedYogiParams,
    KrumParams,
    LoraExactParams,
    MultiKrumParams,
    RoundConfig,
    StrategyName,
    StrategyParams,
    TrimmedMeanParams,
    default_strategy_params,
)
from fedseal.spec import AdapterSpec

from ._common import (
    AggregationError,
    NotEnoughUpdatesError,
    ServerStateError,
    StaleUpdateError,
    StrategyDiscardedError,
    update_weight,
)
from ._serverstate import ServerState
from .fedadam import FedAdam
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedprox import FedProx
from .fedyogi import FedYogi
from .krum import Krum, MultiKrum
from .lora_exact import LoraExact
from .median import FedMedian
from .trimmed_mean import TrimmedMean

__all__ = [
    "AggregationError",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedProx",
    "FedYogi",
    "Krum",
    "LoraExact",
    "MultiKrum",
    "NotEnoughUpdatesError",
    "ServerState",
    "ServerStateError",
    "StaleUpdateError",
    "Strategy",
    "StrategyDiscardedError",
    "TrimmedMean",
    "make_strategy",
    "strategy_for_round",
    "update_weight",
]


class Strategy(Protocol):
    """Folds validated updates in one at a time; `finalize` returns the float32 aggregate.

    `finalize` may be called once; afterwards, and after `discard`, the strategy holds no
    update data. `next_server_state` is None except for server optimizers (after finalize).
    """

    @property
    def name(self) -> str: ...

    def accumulate(
        self, tensors: Mapping[str, torch.Tensor], num_examples: int, *, staleness: int = 0
    ) -> None: ...

    def finalize(self) -> dict[str, torch.Tensor]: ...

    def live_tensor_bytes(self) -> int: ...

    def next_server_state(self) -> ServerState | None: ...

    def discard(self) -> None: ...


def make_strategy(
    name: str,
    spec: AdapterSpec,
    params: StrategyParams | None = None,
    *,
    server_state: ServerState | None = None,
    spool_dir: Path | None = None,
    piece_elements: int = DEFAULT_PIECE_ELEMENTS,
    workers: int | None = None,
    device: torch.device | str = "cpu",
) -> Strategy:
    """The strategy `name` for one round. `params` None means the strategy's defaults
    (a ConfigError for strategies with required parameters, such as Krum's f).

    `server_state` is for server optimizers only; `spool_dir` (default: the system's
    temporary directory), `piece_elements` and `workers` for spooling strategies;
    `device` for the streaming FedAvg/FedProx accumulator (the others run on the CPU).
    """
    try:
        strategy = StrategyName(name)
    except ValueError:
        raise AggregationError(f"unknown strategy {name!r}") from None
    if params is None:
        params = default_strategy_params(strategy)
    if strategy not in params.strategies:
        raise AggregationError(f"{type(params).__name__} are not parameters for {strategy.value!r}")
    if server_state is not None and strategy not in (
        StrategyName.FEDAVGM,
        StrategyName.FEDADAM,
        StrategyName.FEDYOGI,
    ):
        raise ServerStateError(f"{strategy.value} carries no server state; got one")
    match params:
        case FedAvgParams():
            return FedAvg(spec, params, device=device)
        case FedProxParams():
            return FedProx(spec, params, device=device)
        case FedAvgMParams():
            return FedAvgM(spec, params, server_state)
        case FedAdamParams():
            return FedAdam(spec, params, server_state)
        case FedYogiParams():
            return FedYogi(spec, params, server_state)
        case FedMedianParams():
            return FedMedian(
                spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers
            )
        case TrimmedMeanParams():
            return TrimmedMean(
                spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers
            )
        case MultiKrumParams():
            return MultiKrum(
                spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers
            )
        case KrumParams():
            return Krum(spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers)
        case LoraExactParams():
            return LoraExact(
                spec, params, spool_dir=spool_dir, piece_elements=piece_elements, workers=workers
            )
    raise AggregationError(f"no strategy implements {type(params).__name__}")


def strategy_for_round(
    config: RoundConfig,
    *,
    server_state: ServerState | None = None,
    spool_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> Strategy:
    """The strategy a round config names, with its recorded parameters."""
    return make_strategy(
        config.strategy,
        config.adapter_spec,
        config.params,
        server_state=server_state,
        spool_dir=spool_dir,
        device=device,
    )

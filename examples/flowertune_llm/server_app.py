"""The ServerApp of the FlowerTune-style template: the rounds, and the global adapter saved.

As in Flower's FlowerTune template: the initial adapter comes from ``get_model``, the
strategy samples ``strategy.fraction-train`` of the nodes, and a server-side evaluate
function saves the global PEFT adapter every ``train.save-every-round`` rounds and at the
last (``save_pretrained``: a PEFT adapter folder). The line marked ``# FedSeal`` makes the
strategy a FedSeal strategy from the run config's ``fedseal-*`` keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.config import unflatten_dict
from flwr.serverapp import Grid, ServerApp

from client_sdk.flower import fedseal_strategy  # FedSeal
from examples.flowertune_llm.dataset import replace_keys
from examples.flowertune_llm.models import get_model, get_parameters, set_parameters

app = ServerApp()


def get_evaluate_fn(
    model_cfg: Mapping[str, Any], save_every_round: int, total_round: int, save_path: Path
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Save the global adapter (a PEFT folder) every `save_every_round` rounds and at the end."""

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round != 0 and (server_round == total_round or server_round % save_every_round == 0):
            model = get_model(model_cfg)
            set_parameters(model, arrays.to_torch_state_dict())
            model.save_pretrained(str(save_path / f"peft_{server_round}"))
        return None

    return evaluate


@app.main()
def main(grid: Grid, context: Context) -> None:
    num_rounds = int(context.run_config["num-server-rounds"])
    cfg = replace_keys(unflatten_dict(dict(context.run_config)))
    save_path = Path(cfg["train"]["save_dir"]) / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    save_path.mkdir(parents=True, exist_ok=True)
    strategy_cfg, min_nodes = cfg["strategy"], int(cfg["strategy"]["min_nodes"])
    strategy = fedseal_strategy(  # FedSeal: was FedAvg(
        context.run_config,  # FedSeal
        fraction_train=float(strategy_cfg["fraction_train"]),
        fraction_evaluate=float(strategy_cfg["fraction_evaluate"]),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(torch_state_dict=get_parameters(get_model(cfg["model"]))),
        num_rounds=num_rounds,
        train_config=ConfigRecord({}),
        evaluate_fn=get_evaluate_fn(
            cfg["model"], int(cfg["train"]["save_every_round"]), num_rounds, save_path
        ),
    )
    context.state["train-loss"] = MetricRecord(
        {str(r): float(m["train_loss"]) for r, m in result.train_metrics_clientapp.items()}  # type: ignore[arg-type]
    )

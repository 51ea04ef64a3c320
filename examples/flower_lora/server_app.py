"""The Flower ServerApp of the LoRA job: federated rounds over the hospitals.

The line marked ``# FedSeal`` swaps Flower's FedAvg for a FedSeal strategy built from the
run config (``fedseal-*`` keys: the aggregator, the server's policy and operator key, the
FedSeal strategy and DP); everything else is the usual Flower ServerApp.
"""

from __future__ import annotations

from typing import cast

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from client_sdk.flower import fedseal_strategy  # FedSeal
from examples.lora_demo.training import DemoModelConfig, adapter_state, build_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    nodes = int(run_config["min-train-nodes"])
    strategy = fedseal_strategy(  # FedSeal: was FedAvg(
        run_config,  # FedSeal
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=nodes,
        min_evaluate_nodes=nodes,
        min_available_nodes=nodes,
    )
    initial = ArrayRecord(torch_state_dict=adapter_state(build_model(DemoModelConfig())))
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(run_config["num-server-rounds"]),
        train_config=ConfigRecord({"local-steps": int(run_config["local-steps"])}),
        timeout=float(run_config["round-timeout-s"]),
    )
    # Keep what the caller wants to see: the federated losses after each round.
    context.state["eval-loss"] = MetricRecord(
        {str(r): cast(float, m["eval_loss"]) for r, m in result.evaluate_metrics_clientapp.items()}
    )
    context.state["train-loss"] = MetricRecord(
        {str(r): cast(float, m["train_loss"]) for r, m in result.train_metrics_clientapp.items()}
    )
    context.state["global-adapter"] = result.arrays

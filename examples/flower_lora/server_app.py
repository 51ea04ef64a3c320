"""The Flower ServerApp of the LoRA job: FedAvg over the hospitals, round after round.

The line marked ``# FedSeal`` swaps Flower's FedAvg for FedSealFedAvg, whose averaging
happens in the attested enclave; everything else is the usual Flower ServerApp.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from attestation import load_builtin_policy
from client_sdk import ClientIdentity  # FedSeal
from client_sdk.flower import FedSealFedAvg  # FedSeal
from examples.lora_demo.training import DemoModelConfig, adapter_state, build_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    nodes = int(run_config["num-nodes"])
    strategy = FedSealFedAvg(  # FedSeal: was FedAvg(
        str(run_config["fedseal-endpoint"]),  # FedSeal
        load_builtin_policy(str(run_config["fedseal-policy"])),  # FedSeal
        identity=ClientIdentity.from_files(  # FedSeal: the key the aggregator knows this server by
            str(run_config["fedseal-identity"]), Path(str(run_config["fedseal-key-file"]))
        ),
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
        train_config=ConfigRecord(),
    )
    # Keep what the caller wants to see: the federated evaluation loss after each round.
    context.state["eval-loss"] = MetricRecord(
        {str(r): cast(float, m["eval_loss"]) for r, m in result.evaluate_metrics_clientapp.items()}
    )
    context.state["global-adapter"] = result.arrays

"""The Flower ClientApp of a LoRA fine-tuning job, as a Flower user writes it.

Each node is a hospital: it loads the global adapter, fine-tunes it on its own notes and
returns the adapter and its metrics. The two lines marked ``# FedSeal`` are all that routes
its updates through the attested aggregator instead of the Flower server (plus the
optional FedProx term, used when the run's FedSeal strategy is ``fedprox``).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_sdk.flower import ProximalTerm, fedseal_mod, proximal_mu  # FedSeal
from examples.lora_demo.training import (
    HOSPITALS,
    DemoModelConfig,
    HospitalData,
    adapter_state,
    build_model,
    evaluate,
    load_adapter_state,
    train_local,
)

app = ClientApp(mods=[fedseal_mod()])  # FedSeal: was ClientApp()


def _hospital(context: Context) -> str:
    # A SuperNode names its hospital; a simulated node is partition i of the federation.
    if "hospital" in context.node_config:
        return str(context.node_config["hospital"])
    return HOSPITALS[int(context.node_config["partition-id"]) % len(HOSPITALS)]


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = build_model(DemoModelConfig())
    load_adapter_state(model, msg.content.array_records["arrays"].to_torch_state_dict())
    data = HospitalData.generate(_hospital(context))
    config = msg.content.config_records["config"]
    server_round, steps = config["server-round"], config["local-steps"]
    assert isinstance(server_round, int)
    assert isinstance(steps, int)
    prox = ProximalTerm(model, proximal_mu(msg))  # FedProx: 0 unless the round is fedprox
    loss = train_local(model, data, steps=steps, seed=server_round, extra_loss=prox)
    reply = RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict=adapter_state(model)),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": data.num_examples}),
        }
    )
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate_global(msg: Message, context: Context) -> Message:
    model = build_model(DemoModelConfig())
    load_adapter_state(model, msg.content.array_records["arrays"].to_torch_state_dict())
    data = HospitalData.generate(_hospital(context))
    loss = evaluate(model, data)
    reply = RecordDict({"metrics": MetricRecord({"eval_loss": loss, "num-examples": len(data.eval_texts)})})
    return Message(reply, reply_to=msg)

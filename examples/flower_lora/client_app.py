"""The Flower ClientApp of a LoRA fine-tuning job, as a Flower user writes it.

Each node is a hospital: it loads the global adapter, fine-tunes it on its own notes and
returns the adapter and its metrics. The two lines marked ``# FedSeal`` are all that routes
its updates through the attested aggregator instead of the Flower server.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_sdk.flower import fedseal_mod  # FedSeal
from examples.lora_demo.training import (
    DemoModelConfig,
    HospitalData,
    adapter_state,
    build_model,
    evaluate,
    load_adapter_state,
    train_local,
)

app = ClientApp(mods=[fedseal_mod()])  # FedSeal: was ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = build_model(DemoModelConfig())
    load_adapter_state(model, msg.content.array_records["arrays"].to_torch_state_dict())
    data = HospitalData.generate(str(context.node_config["hospital"]))
    server_round = msg.content.config_records["config"]["server-round"]
    assert isinstance(server_round, int)
    steps = int(context.run_config["local-steps"])
    loss = train_local(model, data, steps=steps, seed=server_round)
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
    data = HospitalData.generate(str(context.node_config["hospital"]))
    loss = evaluate(model, data)
    reply = RecordDict({"metrics": MetricRecord({"eval_loss": loss, "num-examples": len(data.eval_texts)})})
    return Message(reply, reply_to=msg)

"""The ClientApp of the FlowerTune-style template: SFT of a LoRA adapter on local instructions.

As in Flower's FlowerTune template: the run config (unflattened) gives the model, LoRA and
training arguments; each round sets the learning rate by cosine annealing over the rounds,
fine-tunes the global adapter on the node's partition and returns it with ``train_loss``
and ``num-examples``. The line marked ``# FedSeal`` sends the adapter to the attested
aggregator instead of the Flower server.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.config import unflatten_dict
from peft import PeftModel

from client_sdk.flower import fedseal_mod  # FedSeal
from examples.flowertune_llm.dataset import load_data, replace_keys, tokenize
from examples.flowertune_llm.models import cosine_annealing, get_model, get_parameters, set_parameters

app = ClientApp(mods=[fedseal_mod()])  # FedSeal: was ClientApp()


def _config(context: Context) -> dict[str, Any]:
    return replace_keys(unflatten_dict(dict(context.run_config)))


def _partition(context: Context, *, evaluation: bool = False) -> list[tuple[str, str]]:
    cfg = _config(context)
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    size = int(cfg["dataset"]["partition_size"])
    # The held-out set is another draw of the same partition's tasks.
    return load_data(partition_id + (1000 if evaluation else 0), num_partitions, size)


def _loss(model: PeftModel, pairs: list[tuple[str, str]], seq_length: int) -> torch.Tensor:
    batch = tokenize(pairs, seq_length)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels)
    loss: torch.Tensor = out.loss
    return loss


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the model on local data."""
    cfg = _config(context)
    num_rounds = int(context.run_config["num-server-rounds"])
    args = cfg["train"]["training_arguments"]
    trainset = _partition(context)
    model = get_model(cfg["model"])
    set_parameters(model, msg.content.array_records["arrays"].to_torch_state_dict())
    server_round = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
    lr = cosine_annealing(
        server_round, num_rounds, cfg["train"]["learning_rate_max"], cfg["train"]["learning_rate_min"]
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch_size, seq_length = int(args["per_device_train_batch_size"]), int(cfg["train"]["seq_length"])
    generator = torch.Generator().manual_seed(server_round)
    model.train()
    losses = []
    for _ in range(int(args["max_steps"])):
        rows = torch.randint(len(trainset), (batch_size,), generator=generator).tolist()
        loss = _loss(model, [trainset[i] for i in rows], seq_length)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss))
    content = RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict=get_parameters(model)),
            "metrics": MetricRecord({"train_loss": sum(losses) / len(losses), "num-examples": len(trainset)}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global adapter's loss on the node's held-out instructions."""
    cfg = _config(context)
    model = get_model(cfg["model"])
    set_parameters(model, msg.content.array_records["arrays"].to_torch_state_dict())
    heldout = _partition(context, evaluation=True)
    model.eval()
    with torch.no_grad():
        loss = float(_loss(model, heldout, int(cfg["train"]["seq_length"])))
    content = RecordDict({"metrics": MetricRecord({"eval_loss": loss, "num-examples": len(heldout)})})
    return Message(content=content, reply_to=msg)

"""Flower through FedSeal: the example job runs, the Flower server never sees an update,
a tampered global adapter is refused, identity comes from the site, receipts are checked.

Everything runs in this process against a live aggregator with the insecure simulated TEE
(dev policy), through Flower's own Message types and protobuf encoding (no Ray).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import make_adapter, round_config, site_client, submit_as
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.supercore.run import Run
from identities import principal_identity, signing_key

from aggregator import RunningAggregator
from attestation import Policy, SimulatedEvidenceRefusedError, load_builtin_policy
from client_sdk.flower import (
    GLOBAL_ROUND_KEY,
    RECEIPT_RECORD,
    ROUND_KEY,
    FedSealFedAvg,
    FlowerIntegrationError,
    GlobalModelMismatchError,
    fedseal_mod,
)
from examples.flower_lora.__main__ import LocalGrid, main, server_task_identity
from fedseal.logformat import EntryKind, decode_record

DEV = "dev-insecure-allow-simulated"
SERVER = principal_identity("olivia-operator")  # the Flower server calls FedSeal as the operator


def _entries(path: Path) -> list[tuple[EntryKind, dict[str, object]]]:
    out = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        record = decode_record(line, line_number=number)
        if record.entry is not None:
            out.append((record.entry.kind, dict(record.entry.fields)))
    return out


def _site(aggregator: RunningAggregator, client_id: str, *, policy: str = DEV) -> Context:
    # The site's enrolled key as a PEM file (what its SuperNode operator points to), kept
    # next to the test aggregator's log.
    key_file = aggregator.log.path.parent / f"{client_id}.key"
    if not key_file.exists():
        key_file.write_bytes(
            signing_key(client_id).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
    node_config: dict[str, str | int | float | bool] = {
        "fedseal-endpoint": aggregator.endpoint,
        "fedseal-policy": policy,
        "fedseal-client-id": client_id,
        "fedseal-key-file": str(key_file),
    }
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


@pytest.fixture
def server_identity() -> Iterator[None]:
    with server_task_identity():
        yield


def _train_message(arrays: dict[str, torch.Tensor] | None, **config: int) -> Message:
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {"config": ConfigRecord(dict(config))}
    if arrays is not None:
        records["arrays"] = ArrayRecord(torch_state_dict=arrays)
    return Message(RecordDict(records), dst_node_id=7, message_type=MessageType.TRAIN)


def _closed_round(
    aggregator: RunningAggregator, policy: Policy, adapter: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Round 1 with one update; returns its signed aggregate (what an honest server sends)."""
    aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    with site_client(aggregator.endpoint, policy, "site-0", timeout=20) as client:
        client.submit_update(adapter, round_id=1, num_examples=10)
        return client.fetch_aggregate(1, wait_seconds=10).tensors()


# --- the example, end to end ----------------------------------------------------------------


@pytest.mark.slow
def test_example_job_runs_through_the_enclave_and_the_log_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--hospitals", "2", "--rounds", "2", "--local-steps", "5", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "VERIFIED:" in out and "OK: every round's adapter was averaged in the enclave" in out
    losses = [float(m) for m in re.findall(r"round \d+: federated eval loss ([0-9.]+)", out)]
    assert len(losses) == 2 and losses[1] < losses[0]  # the hospitals' adapter learns
    entries = _entries(tmp_path / "audit.log")
    for round_id in (1, 2):
        accepted = sorted(
            str(f["client_id"])
            for k, f in entries
            if k is EntryKind.UPDATE_ACCEPTED and f["round_id"] == round_id
        )
        # The sealed identity is the site's configured id, not Flower's node id.
        assert accepted == ["hospital-a", "hospital-b"]
    assert sum(1 for k, _ in entries if k is EntryKind.ROUND_CLOSED) == 2


class _RecordingGrid(LocalGrid):
    """LocalGrid that keeps every reply the Flower server receives, as delivered."""

    def __init__(self, apps: dict[int, tuple[ClientApp, Context]]) -> None:
        super().__init__(apps, Run.create_empty(1))
        self.replies: list[Message] = []

    def _deliver(self, message: Message) -> Message:
        reply = super()._deliver(message)
        self.replies.append(reply)
        return reply


def test_flower_server_receives_receipts_and_metrics_never_the_update(
    live_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None
) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=2, max_clients=2))
    app = ClientApp(mods=[fedseal_mod()])
    updates = {"site-x": make_adapter(1), "site-y": make_adapter(2)}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        name = str(context.node_config["fedseal-client-id"])
        reply = RecordDict(
            {
                "arrays": ArrayRecord(torch_state_dict=updates[name]),
                "metrics": MetricRecord({"train_loss": 1.0, "num-examples": 10 if name == "site-x" else 30}),
            }
        )
        return Message(reply, reply_to=msg)

    grid = _RecordingGrid(
        {
            1: (app, _site(live_aggregator, "site-x")),
            2: (app, _site(live_aggregator, "site-y")),
        }
    )
    strategy = FedSealFedAvg(
        live_aggregator.endpoint, dev_policy, identity=SERVER, min_train_nodes=2, min_available_nodes=2
    )
    initial = ArrayRecord(torch_state_dict=make_adapter(0))
    arrays, metrics = strategy.aggregate_train(
        1, grid.send_and_receive(strategy.configure_train(1, initial, ConfigRecord(), grid))
    )
    assert len(grid.replies) == 2
    for reply in grid.replies:
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        assert not reply.content.array_records  # nothing of the update crossed Flower
        receipt = reply.content.config_records[RECEIPT_RECORD]
        assert receipt["round-id"] == 1 and "\nextra " in str(receipt["receipt"])
    # The global arrays are the enclave's FedAvg: (10 * x + 30 * y) / 40.
    assert arrays is not None and metrics is not None
    got = arrays.to_torch_state_dict()
    for name, x in updates["site-x"].items():
        torch.testing.assert_close(got[name], (10 * x + 30 * updates["site-y"][name]) / 40)
    assert metrics["train_loss"] == pytest.approx(1.0)
    assert strategy.global_round == 1


# --- the client mod ---------------------------------------------------------------------------


def test_tampered_global_arrays_are_refused_and_true_ones_pass(
    live_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None
) -> None:
    adapter = _closed_round(live_aggregator, dev_policy, make_adapter(5))
    mod = fedseal_mod()
    context = _site(live_aggregator, "site-a")
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(message: Message, _: Context) -> Message:
        seen.append(message.content.array_records["arrays"].to_torch_state_dict())
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message)

    def as_evaluate(arrays: dict[str, torch.Tensor] | None) -> Message:
        message = _train_message(arrays, **{GLOBAL_ROUND_KEY: 1})
        message.metadata.message_type = MessageType.EVALUATE
        return message

    mod(as_evaluate(adapter), context, evaluate)
    mod(as_evaluate(None), context, evaluate)  # no arrays sent: the verified ones are filled in
    for arrays in seen:
        for name, value in adapter.items():
            assert torch.equal(arrays[name], value)
    tampered = {name: value.clone() for name, value in adapter.items()}
    next(iter(tampered.values()))[0, 0] += 1e-3
    with pytest.raises(GlobalModelMismatchError, match="differs from FedSeal round 1"):
        mod(as_evaluate(tampered), context, evaluate)
    renamed = {f"x.{name}": value for name, value in adapter.items()}
    with pytest.raises(GlobalModelMismatchError, match="other tensors"):
        mod(as_evaluate(renamed), context, evaluate)
    assert len(seen) == 2


def test_the_sites_policy_wins_and_fails_closed(
    live_aggregator: RunningAggregator, server_identity: None
) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    # The app's code offers the dev policy; the site's node config says "default".
    mod = fedseal_mod(policy=load_builtin_policy(DEV))
    context = _site(live_aggregator, "site-a", policy="default")
    called = []

    def train(message: Message, _: Context) -> Message:
        called.append(True)
        return Message(
            RecordDict({"arrays": ArrayRecord(torch_state_dict=make_adapter(1))}), reply_to=message
        )

    with pytest.raises(SimulatedEvidenceRefusedError):
        mod(_train_message(make_adapter(0), **{ROUND_KEY: 1}), context, train)
    assert called == []  # refused before training, and nothing was sent


def test_missing_site_settings_and_malformed_replies_are_named(
    live_aggregator: RunningAggregator, server_identity: None
) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    bare = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    noop = fedseal_mod()
    with pytest.raises(FlowerIntegrationError, match="fedseal-endpoint, fedseal-client-id, fedseal-policy"):
        noop(_train_message(make_adapter(0), **{ROUND_KEY: 1}), bare, lambda m, c: m)
    context = _site(live_aggregator, "site-a")
    with pytest.raises(FlowerIntegrationError, match=r"no 'fedseal\.round-id'"):
        noop(_train_message(make_adapter(0)), context, lambda m, c: m)

    def reply_with(records: dict[str, ArrayRecord | MetricRecord | ConfigRecord]) -> Message:
        return noop(
            _train_message(make_adapter(0), **{ROUND_KEY: 1}),
            context,
            lambda m, c: Message(RecordDict(records), reply_to=m),
        )

    arrays = ArrayRecord(torch_state_dict=make_adapter(1))
    with pytest.raises(FlowerIntegrationError, match="'num-examples'"):
        reply_with({"arrays": arrays, "metrics": MetricRecord({"train_loss": 1.0})})
    with pytest.raises(FlowerIntegrationError, match="exactly one ArrayRecord"):
        reply_with({"a": arrays, "b": arrays, "metrics": MetricRecord({"num-examples": 3})})
    with pytest.raises(FlowerIntegrationError, match="positive integer"):
        reply_with({"arrays": arrays, "metrics": MetricRecord({"num-examples": 0})})


# --- the server strategy --------------------------------------------------------------------


def test_strategy_counts_only_valid_receipts_once(
    live_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None
) -> None:
    live_aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    receipt = submit_as(
        live_aggregator.endpoint, dev_policy, "site-0", make_adapter(3), round_id=1, num_examples=10
    )
    instruction = _train_message(None, **{ROUND_KEY: 1})

    def reply(loss: float, receipt_text: str | None) -> Message:
        records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
            "metrics": MetricRecord({"train_loss": loss, "num-examples": 10})
        }
        if receipt_text is not None:
            records[RECEIPT_RECORD] = ConfigRecord({"receipt": receipt_text})
        return Message(RecordDict(records), reply_to=instruction)

    forged = receipt.text.replace("index ", "index 1", 1)
    replies = [
        reply(2.0, receipt.text),
        reply(100.0, receipt.text),  # the same receipt again: one update, one vote
        reply(100.0, forged),
        reply(100.0, "not a receipt"),
        reply(100.0, None),
    ]
    strategy = FedSealFedAvg(
        live_aggregator.endpoint, dev_policy, identity=SERVER, min_train_nodes=1, min_available_nodes=1
    )
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None and metrics["train_loss"] == pytest.approx(2.0)
    assert arrays is not None
    for name, value in make_adapter(3).items():
        torch.testing.assert_close(arrays.to_torch_state_dict()[name], value)
    # A receipt for round 1 does not count for round 2, whose aggregate does not exist.
    other = FedSealFedAvg(
        live_aggregator.endpoint,
        dev_policy,
        identity=SERVER,
        first_round_id=2,
        aggregate_wait_seconds=0.5,
        min_available_nodes=1,
    )
    assert other.aggregate_train(1, [reply(2.0, receipt.text)]) == (None, None)
    assert other.global_round == 0

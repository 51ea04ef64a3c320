"""Flower through FedSeal: the example job runs, the Flower server never sees an update,
a tampered global adapter is refused, identity comes from the site, receipts are checked.

Everything runs in this process against a live aggregator with the insecure simulated TEE
(dev policy), through Flower's own Message types and protobuf encoding (no Ray).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from conftest import (
    access_config,
    make_adapter,
    round_config,
    site_client,
    start_test_aggregator,
    submit_as,
)
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
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.supercore.run import Run
from identities import principal_identity, signing_key

from aggregator import AccessLimits, RunningAggregator
from attestation import Policy, SimulatedEvidenceRefusedError, load_builtin_policy
from client_sdk.flower import (
    GLOBAL_ROUND_KEY,
    RECEIPT_RECORD,
    ROUND_KEY,
    FedSealFedAvg,
    FedSealRoundFailedError,
    FedSealStrategy,
    FlowerIntegrationError,
    GlobalModelMismatchError,
    ProximalTerm,
    WrappedStrategyError,
    arrays_to_tensors,
    fedseal_mod,
    fedseal_strategy,
    proximal_mu,
    tensors_to_arrays,
)
from examples.flower_lora.__main__ import LocalGrid, main, server_task_identity
from fedseal.logformat import EntryKind, decode_record
from fedseal.roundconfig import STRATEGIES

DEV = "dev-insecure-allow-simulated"
SERVER = principal_identity("olivia-operator")  # the Flower server calls FedSeal as the operator

_RECORD = "MRN-0042-Jane-Roe"  # a stand-in for training data in a ClientApp error


def _entries(path: Path) -> list[tuple[EntryKind, dict[str, Any]]]:
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
def busy_aggregator(tmp_path: Path) -> Iterator[RunningAggregator]:
    """The test aggregator with room for every party's public calls from one address: each
    node and the server attest afresh for every call, and here they all share loopback."""
    limits = AccessLimits(public_rate_per_peer=1000.0, public_burst_per_peer=5000)
    running = start_test_aggregator(
        tmp_path,
        access=access_config(limits),
    )
    try:
        yield running
    finally:
        running.stop(grace=0.5)


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


def _example(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, list[float]]:
    rc = main(["--hospitals", "3", "--rounds", "2", "--local-steps", "4", "--out", str(tmp_path), *argv])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "VERIFIED:" in out and "OK: every round's adapter was averaged in the enclave" in out
    losses = [
        float(m) for m in re.findall(r"round \d+: federated train loss [0-9.]+, eval loss ([0-9.]+)", out)
    ]
    assert len(losses) == 2 and losses[1] < losses[0]  # the hospitals' adapter learns
    entries = _entries(tmp_path / "audit.log")
    for round_id in (1, 2):
        accepted = sorted(
            str(f["client_id"])
            for k, f in entries
            if k is EntryKind.UPDATE_ACCEPTED and f["round_id"] == round_id
        )
        # The sealed identity is the site's configured id, not Flower's node id.
        assert accepted == ["hospital-a", "hospital-b", "hospital-c"]
    # Flower opened each round (signed by the server's principal) for the 3 nodes it sampled.
    opened = [f for k, f in entries if k is EntryKind.ROUND_OPENED]
    assert [(c["config"]["max_clients"], c["config"]["min_clients"]) for c in opened] == [(3, 3), (3, 3)]
    actions = [(f["action"], f["signer"]) for k, f in entries if k is EntryKind.OPERATOR_ACTION]
    assert actions == [("open_round", "flower-server")] * 2
    assert sum(1 for k, _ in entries if k is EntryKind.ROUND_CLOSED) == 2
    return out, losses


@pytest.mark.slow
def test_example_job_runs_through_an_aggregator_process_and_the_log_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _example(tmp_path, capsys, "--engine", "local")


@pytest.mark.slow
def test_flowers_simulation_engine_runs_the_job_with_sites_from_the_site_map(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ray, 3 simulated nodes whose node config holds only partition-id and num-partitions:
    # each takes its site (and key) from the site map fedseal-job init wrote.
    out, _ = _example(tmp_path, capsys, "--engine", "simulation")
    assert "(simulation engine)" in out
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    assert job["rounds"] == 0 and "round_template" not in job  # Flower holds rounds and cohort


class _RecordingGrid(LocalGrid):
    """LocalGrid that keeps every reply the Flower server receives, as delivered."""

    def __init__(self, apps: dict[int, tuple[ClientApp, Context]]) -> None:
        super().__init__(apps, Run.create_empty(1))
        self.replies: list[Message] = []

    def _deliver(self, message: Message) -> Message:
        reply = super()._deliver(message)
        self.replies.append(reply)
        return reply


def _node_app(updates: dict[str, dict[str, torch.Tensor]], seen_mu: list[float] | None = None) -> ClientApp:
    """A ClientApp that returns a fixed update per site; a site named in `fail` raises."""
    app = ClientApp(mods=[fedseal_mod()])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        name = str(context.node_config["fedseal-client-id"])
        if seen_mu is not None:
            seen_mu.append(proximal_mu(msg))
        if name not in updates:
            # Text a training error may carry (a record): it must not reach the audit log.
            raise RuntimeError(f"{name} is down on record {_RECORD}")
        reply = RecordDict(
            {
                "arrays": tensors_to_arrays(updates[name]),
                "metrics": MetricRecord({"train_loss": 1.0, "num-examples": 10 if name == "site-x" else 30}),
            }
        )
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    return app


def _grid(aggregator: RunningAggregator, app: ClientApp, sites: list[str]) -> _RecordingGrid:
    return _RecordingGrid({i + 1: (app, _site(aggregator, name)) for i, name in enumerate(sites)})


def _strategy(
    aggregator: RunningAggregator, policy: Policy, nodes: int, **options: object
) -> FedSealStrategy:
    return FedSealStrategy(
        aggregator.endpoint,
        policy,
        identity=SERVER,
        fraction_evaluate=0.0,
        min_train_nodes=nodes,
        min_available_nodes=nodes,
        **options,  # type: ignore[arg-type]
    )


def test_flower_opens_the_round_and_receives_receipts_and_metrics_never_the_update(
    live_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None
) -> None:
    updates = {"site-x": make_adapter(1), "site-y": make_adapter(2)}
    grid = _grid(live_aggregator, _node_app(updates), ["site-x", "site-y"])
    strategy = _strategy(live_aggregator, dev_policy, 2)
    initial = ArrayRecord(torch_state_dict=make_adapter(0))
    strategy.prepare(initial, 1)
    arrays, metrics = strategy.aggregate_train(
        1, grid.send_and_receive(strategy.configure_train(1, initial, ConfigRecord(), grid))
    )
    assert len(grid.replies) == 2
    for reply in grid.replies:
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        assert not reply.content.array_records  # nothing of the update crossed Flower
        receipt = reply.content.config_records[RECEIPT_RECORD]
        assert receipt["round-id"] == 1 and "\nextra " in str(receipt["receipt"])
        # Only the weight crossed Flower in the clear; the train loss went sealed.
        assert {k for m in reply.content.metric_records.values() for k in m} == {"num-examples"}
    # The global arrays are the enclave's FedAvg: (10 * x + 30 * y) / 40.
    assert arrays is not None and metrics is not None
    got = arrays.to_torch_state_dict()
    for name, x in updates["site-x"].items():
        torch.testing.assert_close(got[name], (10 * x + 30 * updates["site-y"][name]) / 40)
    assert metrics["train_loss"] == pytest.approx(1.0)
    assert strategy.global_round == 1
    opened = [f for k, f in _entries(live_aggregator.log.path) if k is EntryKind.ROUND_OPENED]
    assert [(f["config"]["max_clients"], f["config"]["min_clients"]) for f in opened] == [(2, 2)]


def test_a_failed_node_closes_the_round_on_the_others_at_once(
    live_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None
) -> None:
    # Three sampled, site-2 fails: two updates reach the minimum of two, and the round
    # closes as soon as Flower has the replies, not at its 600 s deadline.
    updates = {"site-0": make_adapter(1), "site-1": make_adapter(2)}
    grid = _grid(live_aggregator, _node_app(updates), ["site-0", "site-1", "site-2"])
    strategy = _strategy(live_aggregator, dev_policy, 3, min_clients=2, round_deadline_seconds=600.0)
    started = time.monotonic()
    result = strategy.start(
        grid=grid, initial_arrays=ArrayRecord(torch_state_dict=make_adapter(0)), num_rounds=1
    )
    assert time.monotonic() - started < 60
    got = result.arrays.to_torch_state_dict()
    for name, x in updates["site-0"].items():
        torch.testing.assert_close(got[name], (x + updates["site-1"][name]) / 2)
    entries = _entries(live_aggregator.log.path)
    close = [f for k, f in entries if k is EntryKind.OPERATOR_ACTION and f["action"] == "close_round"]
    assert len(close) == 1
    reason = str(close[0]["request"]["params"]["reason"])
    assert "2 with a valid receipt" in reason
    assert "failed (Flower error client app raised exception)" in reason
    assert _RECORD not in live_aggregator.log.path.read_text()
    closed = [f for k, f in entries if k is EntryKind.ROUND_CLOSED]
    assert [sorted(f["participants"]) for f in closed] == [["site-0", "site-1"]]


def test_a_round_without_an_aggregate_fails_the_run_with_the_aggregators_reason(
    live_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None
) -> None:
    grid = _grid(live_aggregator, _node_app({"site-0": make_adapter(1)}), ["site-0", "site-1", "site-2"])
    strategy = _strategy(live_aggregator, dev_policy, 3, round_deadline_seconds=600.0)
    started = time.monotonic()
    with pytest.raises(FedSealRoundFailedError) as failed:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(torch_state_dict=make_adapter(0)), num_rounds=2)
    assert time.monotonic() - started < 60  # no deadline waited out
    message = str(failed.value)
    assert "FedSeal round 1 published no aggregate" in message
    assert "1 accepted update(s), min_clients is 3" in message
    assert "failed (Flower error client app raised exception)" in message
    assert _RECORD not in message and _RECORD not in live_aggregator.log.path.read_text()
    kinds = [k for k, _ in _entries(live_aggregator.log.path)]
    assert EntryKind.ROUND_FAILED in kinds and kinds.count(EntryKind.ROUND_OPENED) == 1  # the run stopped


def test_a_flower_dp_wrapper_is_refused_at_start_pointing_at_fedseals_dp(
    live_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None
) -> None:
    grid = _grid(live_aggregator, _node_app({"site-0": make_adapter(1)}), ["site-0"])
    for wrapper in (
        DifferentialPrivacyServerSideFixedClipping(
            _strategy(live_aggregator, dev_policy, 1),
            noise_multiplier=1.0,
            clipping_norm=1.0,
            num_sampled_clients=1,
        ),
        DifferentialPrivacyClientSideFixedClipping(
            _strategy(live_aggregator, dev_policy, 1),
            noise_multiplier=1.0,
            clipping_norm=1.0,
            num_sampled_clients=1,
        ),
    ):
        with pytest.raises(WrappedStrategyError, match=r"FedSeal's central DP.*dp=FedSealDp"):
            wrapper.start(
                grid=grid, initial_arrays=ArrayRecord(torch_state_dict=make_adapter(0)), num_rounds=1
            )
    assert EntryKind.ROUND_OPENED not in [k for k, _ in _entries(live_aggregator.log.path)]


_STRATEGY_PARAMS: dict[str, dict[str, object]] = {
    "fedavg": {},
    "fedprox": {"proximal_mu": 0.25},
    "fedavgm": {"server_lr": 1.0, "momentum": 0.5},
    "fedadam": {"server_lr": 0.05},
    "fedyogi": {"server_lr": 0.01},
    "fedmedian": {},
    "trimmed-mean": {"beta": 0.2},
    "krum": {"f": 1},
    "multi-krum": {"f": 1, "m": 2},
    "lora-exact": {},
}


def test_every_fedseal_strategy_is_selectable_from_the_run_config_and_reaches_the_enclave(
    busy_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None, tmp_path: Path
) -> None:
    assert sorted(_STRATEGY_PARAMS) == sorted(STRATEGIES)
    sites = [f"site-{i}" for i in range(5)]
    seen_mu: list[float] = []
    grid = _grid(
        busy_aggregator, _node_app({s: make_adapter(i + 1) for i, s in enumerate(sites)}, seen_mu), sites
    )
    key_file = tmp_path / "operator.key"
    key_file.write_bytes(
        signing_key("principal olivia-operator").private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    base = {
        "fedseal-endpoint": busy_aggregator.endpoint,
        "fedseal-policy": DEV,
        "fedseal-identity": "olivia-operator",
        "fedseal-key-file": str(key_file),
    }
    initial = ArrayRecord(torch_state_dict=make_adapter(0))
    for name, params in _STRATEGY_PARAMS.items():
        run_config = base | {"fedseal-strategy": name, "fedseal-strategy-params": json.dumps(params)}
        strategy = fedseal_strategy(
            run_config, fraction_evaluate=0.0, min_train_nodes=5, min_available_nodes=5
        )
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
        assert result.arrays is not None, name
    entries = _entries(busy_aggregator.log.path)
    opened = [f["config"] for k, f in entries if k is EntryKind.ROUND_OPENED]
    closed = [f for k, f in entries if k is EntryKind.ROUND_CLOSED]
    assert [c["strategy"] for c in opened] == list(_STRATEGY_PARAMS)
    assert [c["strategy"] for c in closed] == list(_STRATEGY_PARAMS)
    for config, (name, params) in zip(opened, _STRATEGY_PARAMS.items(), strict=True):
        recorded = config.get("strategy_params", {})
        assert all(recorded[k] == v for k, v in params.items()), (name, recorded)
    # FedProx's mu reached every client in its round, and no other round's clients.
    assert seen_mu.count(0.25) == 5 and seen_mu.count(0.0) == 5 * (len(_STRATEGY_PARAMS) - 1)
    with pytest.raises(FlowerIntegrationError, match="unknown run-config key"):
        fedseal_strategy(base | {"fedseal-stratgy": "fedavg"})
    with pytest.raises(FlowerIntegrationError, match="unknown FedSeal strategy"):
        fedseal_strategy(base | {"fedseal-strategy": "fedsgd"})
    with pytest.raises(FlowerIntegrationError, match="needs all of"):
        fedseal_strategy(base | {"fedseal-dp-epsilon": 1.0})


def test_fedseals_central_dp_from_the_run_config_runs_in_the_enclave(
    tmp_path: Path, dev_policy: Policy, server_identity: None
) -> None:
    initial = make_adapter(0)
    adapter_file = tmp_path / "initial.safetensors"
    adapter_file.write_bytes(safetensors.torch.save(initial))
    running = start_test_aggregator(
        tmp_path,
        access=access_config(AccessLimits(public_rate_per_peer=1000.0, public_burst_per_peer=5000)),
        initial_adapter=adapter_file.read_bytes(),
    )
    try:
        key_file = tmp_path / "operator.key"
        key_file.write_bytes(
            signing_key("principal olivia-operator").private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            )
        )
        run_config: dict[str, str | int | float | bool] = {
            "fedseal-endpoint": running.endpoint,
            "fedseal-policy": DEV,
            "fedseal-identity": "olivia-operator",
            "fedseal-key-file": str(key_file),
            "fedseal-dp-epsilon": 8.0,
            "fedseal-dp-delta": 1e-5,
            "fedseal-dp-clip-norm": 1.0,
            "fedseal-initial-adapter": str(adapter_file),
        }
        sites = ["site-0", "site-1"]
        grid = _grid(running, _node_app({s: make_adapter(i + 1) for i, s in enumerate(sites)}), sites)
        options = {"fraction_evaluate": 0.0, "min_train_nodes": 2, "min_available_nodes": 2}
        strategy = fedseal_strategy(run_config, **options)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(torch_state_dict=initial), num_rounds=2)
        entries = _entries(running.log.path)
        opened = [f["config"] for k, f in entries if k is EntryKind.ROUND_OPENED]
        assert [c["dp"]["rounds"] for c in opened] == [2, 2]  # the run's num_rounds, from Flower
        assert [c["dp"]["epsilon"] for c in opened] == [8.0, 8.0]
        closed = [f for k, f in entries if k is EntryKind.ROUND_CLOSED]
        assert len(closed) == 2 and all(f["dp"] is not None for f in closed)
        # Other initial arrays than the aggregator's initial adapter: refused before any round.
        with pytest.raises(FlowerIntegrationError, match="initial arrays are not the initial adapter"):
            fedseal_strategy(run_config, **options).start(
                grid=grid, initial_arrays=ArrayRecord(torch_state_dict=make_adapter(9)), num_rounds=1
            )
    finally:
        running.stop(grace=0.5)


def test_bfloat16_adapters_keep_their_dtype_through_flower_and_the_round_spec(
    live_aggregator: RunningAggregator, dev_policy: Policy, server_identity: None
) -> None:
    updates = {"site-0": make_adapter(1, torch.bfloat16), "site-1": make_adapter(2, torch.bfloat16)}
    grid = _grid(live_aggregator, _node_app(updates), ["site-0", "site-1"])
    strategy = _strategy(live_aggregator, dev_policy, 2)
    initial = tensors_to_arrays(make_adapter(0, torch.bfloat16))
    assert {a.dtype for a in initial.values()} == {"bfloat16"}
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=1)
    opened = [f["config"] for k, f in _entries(live_aggregator.log.path) if k is EntryKind.ROUND_OPENED]
    assert {t["dtype"] for t in opened[0]["adapter_spec"]["tensors"]} == {"BF16"}
    got = arrays_to_tensors(result.arrays)
    for name, x in updates["site-0"].items():
        expected = (x.float() + updates["site-1"][name].float()) / 2
        torch.testing.assert_close(got[name], expected)  # the enclave's float32 aggregate, as signed


def test_proximal_term_is_mu_half_the_squared_distance_from_the_global() -> None:
    model = torch.nn.Linear(3, 2)
    prox = ProximalTerm(model, 0.5)
    assert float(prox()) == 0.0
    with torch.no_grad():
        model.weight.add_(1.0)
    assert float(prox()) == pytest.approx(0.5 / 2 * 6)
    prox().backward()  # type: ignore[no-untyped-call]
    assert model.weight.grad is not None and torch.allclose(model.weight.grad, torch.full((2, 3), 0.5))


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
        live_aggregator.endpoint,
        dev_policy,
        "site-0",
        make_adapter(3),
        round_id=1,
        num_examples=10,
        metrics={"train_loss": 2.0},
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
    strategy.opened[1] = 1  # round 1 was opened above
    arrays, metrics = strategy.aggregate_train(1, replies)
    # The enclave's mean of what the sites sealed, not what the replies claim (100.0).
    assert metrics is not None and metrics["train_loss"] == pytest.approx(2.0)
    assert arrays is not None
    for name, value in make_adapter(3).items():
        torch.testing.assert_close(arrays.to_torch_state_dict()[name], value)

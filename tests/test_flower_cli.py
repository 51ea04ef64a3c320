"""The example app run by Flower's own commands, as a Flower user runs it.

- the Deployment Engine on loopback: ``flower-superlink``, three ``flower-supernode``
  processes (each site's FedSeal settings in its ``--node-config``), a real aggregator
  process, and ``flwr run APP CONNECTION``; one SuperNode is killed mid-round, the round
  closes on the other two long before its deadline, the run finishes, the log verifies;
- ``flwr run APP`` on a local-simulation connection (Flower starts its own SuperLink in
  simulation mode, Ray runs the ClientApps), simulated nodes taking their sites from the
  site map.

Skipped (with the reason) only when a Flower command is not installed.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from flwr.common.config import get_fused_config_from_dir, unflatten_dict

from attestation import load_builtin_policy
from auditor import audit_log
from client_sdk import ClientIdentity, FedSealClient
from examples.flower_lora._deployment import (
    LOOPBACK,
    SIMULATION,
    copy_app,
    deployment,
    flwr_run,
    local_simulation_env,
    run_status,
    site_node_config,
)
from examples.flower_lora._job import DEV_POLICY, aggregator_process, prepare_job, run_config
from examples.flower_lora._simulation import APP_DIR
from examples.flowertune_llm.dataset import replace_keys
from examples.flowertune_llm.models import get_model, get_parameters
from fedseal.errors import FedSealError
from fedseal.logformat import EntryKind, decode_record

SITES = ["hospital-a", "hospital-b", "hospital-c"]
_BIN = Path(sys.executable).parent


def _need(*commands: str) -> None:
    missing = [c for c in commands if not (_BIN / c).exists() and shutil.which(c) is None]
    if missing:
        pytest.skip(f"Flower's {', '.join(missing)} not installed (pip install 'flwr[simulation]==1.42.0')")


def _entries(path: Path) -> list[tuple[EntryKind, dict[str, Any]]]:
    out: list[tuple[EntryKind, dict[str, Any]]] = []
    if not path.exists():
        return out
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            record = decode_record(line, line_number=number)
        except FedSealError:  # the aggregator is writing this line: read it next time
            break
        if record.entry is not None:
            out.append((record.entry.kind, dict(record.entry.fields)))
    return out


def _rounds(path: Path, kind: EntryKind) -> set[int]:
    return {int(f["round_id"]) for k, f in _entries(path) if k is kind}


@pytest.mark.slow
def test_deployment_engine_on_loopback_closes_a_round_without_a_killed_node(tmp_path: Path) -> None:
    _need("flower-superlink", "flower-supernode", "flwr")
    job = prepare_job(tmp_path / "job", SITES)
    audit = tmp_path / "audit.log"
    app = copy_app(APP_DIR, tmp_path / "app")
    with aggregator_process(job, audit) as endpoint:
        sites = {s: site_node_config(endpoint, s, job / "sites" / f"{s}.key") for s in SITES}
        with deployment(tmp_path / "flower", sites) as flower:
            # Flower waits for 2 nodes (min-train-nodes): with all 3 connected it samples
            # all 3; after the kill it evaluates on the 2 left.
            config = run_config(endpoint, job, rounds=1, nodes=2, local_steps=2)
            config["fedseal-round-deadline-s"] = 600.0
            config["round-timeout-s"] = 600
            result: dict[str, Any] = {}

            def run() -> None:
                try:
                    result["run"] = flwr_run(app, LOOPBACK, config, flower.env, timeout=300)
                except Exception as exc:
                    result["error"] = exc

            runner = threading.Thread(target=run)
            started = time.monotonic()
            runner.start()
            # Mid-round 1: the round is open and hospital-c's ClientApp is training.
            while 1 not in _rounds(audit, EntryKind.ROUND_OPENED) or not flower.node_is_running_app(
                "hospital-c"
            ):
                assert runner.is_alive() and time.monotonic() - started < 90, result
                time.sleep(0.2)
            opened = time.monotonic()
            flower.kill_node("hospital-c")
            while 1 not in _rounds(audit, EntryKind.ROUND_CLOSED) and runner.is_alive():
                time.sleep(0.5)
            closed = time.monotonic()
            runner.join(300)
            assert "error" not in result, result.get("error")
            run_id, out = result["run"]
            status = run_status(LOOPBACK, run_id, flower.env, cwd=app)
    print(
        f"deployment: round 1 closed {closed - opened:.0f} s after the kill, "
        f"the run took {time.monotonic() - started:.0f} s"
    )
    assert status == "finished:completed", out[-3000:]
    # Closed by the strategy's signed close_round once Flower knew the node was gone, not
    # at the 600 s deadline.
    assert closed - opened < 150
    entries = _entries(audit)
    close = [f for k, f in entries if k is EntryKind.OPERATOR_ACTION and f["action"] == "close_round"]
    assert close and close[0]["signer"] == "flower-server"
    assert int(close[0]["request"]["params"]["round_id"]) == 1
    participants = {
        int(f["round_id"]): sorted(f["participants"]) for k, f in entries if k is EntryKind.ROUND_CLOSED
    }
    assert participants == {1: ["hospital-a", "hospital-b"]}
    opened_configs = [f["config"] for k, f in entries if k is EntryKind.ROUND_OPENED]
    assert [(c["max_clients"], c["min_clients"]) for c in opened_configs] == [(3, 2)]
    reason = str(close[0]["request"]["params"]["reason"])
    assert "2 with a valid receipt" in reason and "failed (Flower error node unavailable)" in reason, reason
    assert "eval_loss" in out and "train_loss" in out  # the losses reached Flower's history
    report = audit_log(audit, load_builtin_policy(DEV_POLICY))
    assert report.findings == (), report.findings


@pytest.mark.slow
def test_flwr_run_on_a_local_simulation_connection_through_the_aggregator(tmp_path: Path) -> None:
    # `flwr run APP fedseal-simulation`: flwr starts its own SuperLink in simulation mode,
    # which runs the ServerApp and 3 simulated nodes on Ray; each node takes its site and
    # key from the site map (run config fedseal-sites), having no node config of its own.
    _need("flower-superlink", "flwr")
    job = prepare_job(tmp_path / "job", SITES)
    audit = tmp_path / "audit.log"
    app = copy_app(APP_DIR, tmp_path / "app")
    started = time.monotonic()
    with aggregator_process(job, audit) as endpoint, local_simulation_env(tmp_path, num_supernodes=3) as env:
        config = run_config(endpoint, job, rounds=1, nodes=3, local_steps=2)
        run_id, out = flwr_run(app, SIMULATION, config, env, timeout=400)
        status = run_status(SIMULATION, run_id, env, cwd=app)
    print(f"flwr run (local simulation): {time.monotonic() - started:.0f} s")
    assert status == "finished:completed", out[-3000:]
    assert "eval_loss" in out and "train_loss" in out  # the losses reached Flower's history
    entries = _entries(audit)
    closed = [f for k, f in entries if k is EntryKind.ROUND_CLOSED]
    assert [sorted(f["participants"]) for f in closed] == [SITES]
    opened = [f for k, f in entries if k is EntryKind.ROUND_OPENED]
    assert [f["config"]["max_clients"] for f in opened] == [3]
    report = audit_log(audit, load_builtin_policy(DEV_POLICY))
    assert report.findings == (), report.findings


FLOWERTUNE_DIR = APP_DIR.parent / "flowertune_llm"


def _flowertune_config(
    endpoint: str, job: Path, save_dir: Path, **extra: str | int | float
) -> dict[str, Any]:
    return {
        "num-server-rounds": 1,
        "train.training-arguments.max-steps": 2,
        "train.save-dir": str(save_dir),
        "fedseal-endpoint": endpoint,
        "fedseal-key-file": str(job / "flower-server.key"),
        "fedseal-sites": str(job / "sites"),
        **extra,
    }


@pytest.mark.slow
def test_flowertune_template_runs_one_round_with_flwr_run_in_simulation(tmp_path: Path) -> None:
    # The FlowerTune-style LLM template (PEFT LoRA, SFT with the loss on the response,
    # run-config driven) on the tiny random Llama: one round of `flwr run` on a
    # local-simulation connection through the aggregator.
    _need("flower-superlink", "flwr")
    model_cfg = replace_keys(unflatten_dict(get_fused_config_from_dir(FLOWERTUNE_DIR, {})))["model"]
    initial = get_parameters(get_model(model_cfg))
    job = prepare_job(tmp_path / "job", SITES, initial=initial)
    audit = tmp_path / "audit.log"
    app = copy_app(FLOWERTUNE_DIR, tmp_path / "app")
    site = ClientIdentity.from_files("hospital-a", job / "sites" / "hospital-a.key")
    started = time.monotonic()
    with aggregator_process(job, audit) as endpoint, local_simulation_env(tmp_path, num_supernodes=3) as env:
        config = _flowertune_config(endpoint, job, tmp_path / "results")
        run_id, out = flwr_run(app, SIMULATION, config, env, timeout=400)
        status = run_status(SIMULATION, run_id, env, cwd=app)
        with FedSealClient(endpoint, load_builtin_policy(DEV_POLICY), identity=site) as client:
            aggregate = client.fetch_aggregate(1, wait_seconds=5).tensors()
    print(f"FlowerTune template, flwr run (local simulation, 1 round): {time.monotonic() - started:.0f} s")
    assert status == "finished:completed", out[-3000:]
    assert "train_loss" in out and "eval_loss" in out
    entries = _entries(audit)
    closed = [f for k, f in entries if k is EntryKind.ROUND_CLOSED]
    assert [sorted(f["participants"]) for f in closed] == [SITES]
    # The global adapter the ServerApp saved (a PEFT folder, as FlowerTune saves it) is
    # round 1's verified aggregate, which training moved away from the initial adapter.
    saved = list((tmp_path / "results").glob("*/peft_1/adapter_model.safetensors"))
    assert len(saved) == 1
    tensors = safetensors.torch.load_file(str(saved[0]))
    assert sorted(tensors) == sorted(aggregate) == sorted(initial)
    for name, value in aggregate.items():
        torch.testing.assert_close(tensors[name].float(), value.float(), rtol=0, atol=0)
    assert any(not torch.equal(aggregate[n].float(), initial[n].float()) for n in initial)
    report = audit_log(audit, load_builtin_policy(DEV_POLICY))
    assert report.findings == (), report.findings


@pytest.mark.slow
def test_flowertune_template_runs_one_round_on_the_deployment_engine(tmp_path: Path) -> None:
    # The same template on the loopback deployment: each SuperNode's node config names
    # its partition (as FlowerTune deployments do) and its site's FedSeal settings.
    _need("flower-superlink", "flower-supernode", "flwr")
    model_cfg = replace_keys(unflatten_dict(get_fused_config_from_dir(FLOWERTUNE_DIR, {})))["model"]
    job = prepare_job(tmp_path / "job", SITES, initial=get_parameters(get_model(model_cfg)))
    audit = tmp_path / "audit.log"
    app = copy_app(FLOWERTUNE_DIR, tmp_path / "app")
    started = time.monotonic()
    with aggregator_process(job, audit) as endpoint:
        sites = {
            s: {
                **site_node_config(endpoint, s, job / "sites" / f"{s}.key"),
                "partition-id": i,
                "num-partitions": len(SITES),
            }
            for i, s in enumerate(SITES)
        }
        with deployment(tmp_path / "flower", sites) as flower:
            config = _flowertune_config(endpoint, job, tmp_path / "results")
            config.pop("fedseal-sites")  # the SuperNodes' node configs name the sites
            run_id, out = flwr_run(app, LOOPBACK, config, flower.env, timeout=300)
            status = run_status(LOOPBACK, run_id, flower.env, cwd=app)
    print(f"FlowerTune template, deployment engine (1 round): {time.monotonic() - started:.0f} s")
    assert status == "finished:completed", out[-3000:]
    closed = [f for k, f in _entries(audit) if k is EntryKind.ROUND_CLOSED]
    assert [sorted(f["participants"]) for f in closed] == [SITES]
    assert len(list((tmp_path / "results").glob("*/peft_1/adapter_model.safetensors"))) == 1
    assert audit_log(audit, load_builtin_policy(DEV_POLICY)).findings == ()

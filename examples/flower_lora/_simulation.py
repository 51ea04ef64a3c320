"""Flower's Simulation Engine on the example app: what `flwr run` runs on a local simulation.

`flwr run .` on a local-simulation federation ends in ``flwr.simulation``'s
``_run_simulation`` with the app folder, its components and the run config fused from the
app's pyproject.toml and ``--run-config``; this calls the same with the same arguments,
without the background SuperLink that `flwr run` starts (and without building a FAB), so
a test can run it in bounded time. Ray runs the ClientApps in worker processes, which
import the app from this folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
from flwr.app import Context, RecordDict
from flwr.common.config import get_fused_config_from_dir
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType

from examples.flower_lora._job import python_env

__all__ = ["APP_DIR", "run_simulation_engine"]

APP_DIR = Path(__file__).resolve().parent
_RUN_ID = 7


def run_simulation_engine(
    overrides: dict[str, str | int | float | bool], num_nodes: int, *, app_dir: Path = APP_DIR
) -> RecordDict:
    """Run the app in `app_dir` on `num_nodes` simulated nodes; the ServerApp's final state."""
    os.environ.update(python_env())  # Ray's workers import the app's modules
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray's workers import the app's components ("client_app:app") from the app folder.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(app_dir), os.environ["PYTHONPATH"]])
    _start_ray()
    run = Run.create_empty(_RUN_ID)
    run.override_config = dict(overrides)
    run.federation_id = NOOP_FEDERATION_ID
    run.primary_task_id = 1
    # Messages the ServerApp makes are stamped with the run's task identity (as flwr's
    # simulation process sets it).
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = _RUN_ID, SUPERLINK_NODE_ID, 1
    fused = get_fused_config_from_dir(app_dir, run.override_config)
    context = Context(
        run_id=_RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=fused
    )
    result = _run_simulation(
        num_supernodes=num_nodes,
        exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
        server_app_attr="server_app:app",
        client_app_attr="client_app:app",
        backend_name="ray",
        # One CPU per ClientApp; Ray itself gets this machine's CPUs.
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {}},
        app_dir=str(app_dir),
        run=run,
        server_app_context=context,
        is_app=True,
    )
    return result.context.state


def _start_ray(attempts: int = 3) -> None:
    """Start Ray before Flower does (Flower then uses it, and shuts it down at the end).

    Ray's node has a fixed 30 s to register at start, and its GCS server a fixed time to
    write its port file; on a loaded machine either can miss it, and Ray then raises a bare
    Exception or RuntimeError saying it timed out: those are retried, nothing else."""
    for attempt in range(attempts):
        try:
            ray.init(
                include_dashboard=False,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
            )
            return
        except Exception as exc:
            if "timed out" not in str(exc).lower() or attempt + 1 == attempts:
                raise
            ray.shutdown()

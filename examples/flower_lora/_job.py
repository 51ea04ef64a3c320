"""The operator's side of the Flower example: make the job with `fedseal-job init`, run the aggregator.

`prepare_job` saves the demo model's initial adapter and runs the operator command on it
(site keys and site map, enrolment, the Flower server's operator principal, a job whose
rounds Flower opens, the adapter spec). `aggregator_process` starts `fedseal-aggregator`
on that job as a separate process, on loopback, with the INSECURE simulated TEE; every
party then uses the dev policy that accepts it. `run_config` is what the ServerApp reads.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import safetensors.torch
import torch

from client_sdk._jobcli import main as job_main
from examples.lora_demo.training import DemoModelConfig, adapter_state, build_model

__all__ = ["DEV_POLICY", "SERVER", "aggregator_process", "prepare_job", "run_config"]

DEV_POLICY = "dev-insecure-allow-simulated"
SERVER = "flower-server"  # the Flower server's principal name (role operator)
ROOT = Path(__file__).resolve().parents[2]


def prepare_job(job_dir: Path, hospitals: list[str], initial: dict[str, torch.Tensor] | None = None) -> Path:
    """`fedseal-job init` into `job_dir` (made anew) for `hospitals`, on the `initial`
    adapter (default: the demo model's); returns `job_dir`."""
    job_dir.parent.mkdir(parents=True, exist_ok=True)
    adapter = job_dir.parent / "initial_adapter_in.safetensors"
    tensors = initial if initial is not None else adapter_state(build_model(DemoModelConfig()))
    adapter.write_bytes(safetensors.torch.save(tensors))
    argv = ["init", str(job_dir), "--sites", ",".join(hospitals), "--operator", SERVER]
    argv += ["--adapter", str(adapter), "--policy", DEV_POLICY]
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        if job_main(argv) != 0:
            raise RuntimeError(f"fedseal-job init failed for {job_dir}")
    return job_dir


@contextlib.contextmanager
def aggregator_process(job_dir: Path, audit_log: Path) -> Iterator[str]:
    """`fedseal-aggregator` on the job in `job_dir` (a subprocess); yields its endpoint."""
    port_file = audit_log.parent / "aggregator.port"
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "aggregator", "--insecure-simulated-tee", "--listen", "127.0.0.1:0"]
    command += ["--log", str(audit_log), "--log-origin", "fedseal.local/flower-example"]
    command += ["--job", str(job_dir / "job.json"), "--enrolment", str(job_dir / "enrolment.json")]
    command += [
        "--initial-adapter",
        str(job_dir / "initial_adapter.safetensors"),
        "--port-file",
        str(port_file),
    ]
    stderr = open(audit_log.parent / "aggregator.stderr", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=python_env())
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the aggregator did not start; see {audit_log.parent / 'aggregator.stderr'}"
                )
            time.sleep(0.1)
        yield f"127.0.0.1:{port_file.read_text().strip()}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        stderr.close()


def python_env() -> dict[str, str]:
    """This environment with the repository on PYTHONPATH (subprocesses and Ray workers
    import the example's modules)."""
    env = dict(os.environ)
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def run_config(
    endpoint: str, job_dir: Path, *, rounds: int, nodes: int, local_steps: int, **extra: str | int | float
) -> dict[str, str | int | float | bool]:
    """The run config of the example app (what `flwr run --run-config` would set)."""
    return {
        "num-server-rounds": rounds,
        "min-train-nodes": nodes,
        "local-steps": local_steps,
        "round-timeout-s": 600,
        "fedseal-endpoint": endpoint,
        "fedseal-policy": DEV_POLICY,
        "fedseal-identity": SERVER,
        "fedseal-key-file": str(job_dir / f"{SERVER}.key"),
        "fedseal-sites": str(job_dir / "sites"),
        **extra,
    }

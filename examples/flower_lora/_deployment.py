"""Flower's Deployment Engine on loopback: a SuperLink and one SuperNode per site, run by `flwr run`.

What a deployment runs, as separate processes on this machine (insecure mode, 127.0.0.1):
``flower-superlink`` (its Fleet, Control and Runtime APIs on one HTTP port; it runs the
ServerApp in a subprocess), one ``flower-supernode`` per site whose ``--node-config``
holds the site's FedSeal settings (endpoint, policy, client id, enrolled key), and
``flwr run APP CONNECTION`` against it. Flower 1.42 keeps SuperLink connections in its
own config file (``$FLWR_HOME/config.toml``), which `flower_config` writes.

Nothing is installed at run time (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION``): the
apps import what this environment has, with the repository on PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from examples.flower_lora._job import DEV_POLICY, python_env

__all__ = [
    "APP_FILES",
    "LOOPBACK",
    "SIMULATION",
    "Deployment",
    "FlowerRunError",
    "copy_app",
    "deployment",
    "flower_config",
    "flower_env",
    "flwr_run",
    "local_simulation_env",
    "run_status",
    "site_node_config",
]

LOOPBACK = "fedseal-loopback"  # the connection to the loopback SuperLink
SIMULATION = "fedseal-simulation"  # a local-simulation connection (flwr starts its own SuperLink)
APP_FILES = ("pyproject.toml", "client_app.py", "server_app.py")
_BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr


class FlowerRunError(RuntimeError):
    """A Flower process did not start, or `flwr` failed (the message names its log)."""


def flower_config(*, loopback: str | None = None, num_supernodes: int = 3) -> str:
    """The Flower config (``$FLWR_HOME/config.toml``) with this example's two connections."""
    text = (
        f'[superlink]\ndefault = "{SIMULATION}"\n\n'
        f'[superlink.{SIMULATION}]\naddress = ":local:"\noptions.num-supernodes = {num_supernodes}\n'
        "options.backend.client-resources.num-cpus = 1\n"
    )
    if loopback is not None:
        text += f'\n[superlink.{LOOPBACK}]\naddress = "{loopback}"\ninsecure = true\n'
    return text


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: its own FLWR_HOME, no installs, no update checks."""
    env = python_env()
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["PATH"] = os.pathsep.join([str(_BIN), env.get("PATH", "")])
    return env


def copy_app(source: Path, target: Path) -> Path:
    """The app's files (no job, no results) in `target`: `flwr` builds its FAB from the folder."""
    target.mkdir(parents=True, exist_ok=True)
    for name in APP_FILES:
        shutil.copy2(source / name, target / name)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Deployment:
    """A running loopback deployment: the SuperLink's address and each site's SuperNode."""

    address: str
    env: dict[str, str]
    logs: Path
    nodes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def kill_node(self, site: str) -> None:
        """SIGKILL the site's SuperNode and the ClientApp processes it started (a crash)."""
        _kill_tree(self.nodes[site])

    def node_is_running_app(self, site: str) -> bool:
        """Whether the site's SuperNode has a ClientApp process running now."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.nodes[site].pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if any("flwr-clientapp" in part for part in child.cmdline()):
                        return True
        return False


@contextlib.contextmanager
def deployment(
    work: Path, sites: Mapping[str, Mapping[str, str | int | float | bool]], *, start_timeout: float = 60.0
) -> Iterator[Deployment]:
    """A SuperLink and one SuperNode per site (`sites`: site -> its node config), on loopback."""
    work.mkdir(parents=True, exist_ok=True)
    flwr_home = work / "flwr-home"
    port = free_port()
    address = f"127.0.0.1:{port}"
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(flower_config(loopback=address))
    env = flower_env(flwr_home)
    superlink_log = work / "superlink.log"
    superlink = _start(
        ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(port)],
        superlink_log,
        env,
        work,
    )
    running = Deployment(address, env, work)
    try:
        _wait_for(
            lambda: "Uvicorn running on" in _read(superlink_log), superlink, superlink_log, start_timeout
        )
        for site, node_config in sites.items():
            command = ["flower-supernode", "--insecure", "--superlink", address]
            command += ["--port", str(free_port()), "--node-config", _node_config(node_config)]
            running.nodes[site] = _start(command, work / f"supernode-{site}.log", env, work)
        _wait_for(
            lambda: _read(superlink_log).count("Activated node_id") >= len(sites),
            superlink,
            superlink_log,
            start_timeout,
        )
        yield running
    finally:
        for process in [*running.nodes.values(), superlink]:
            _kill_tree(process)


def flwr_run(
    app: Path,
    connection: str,
    run_config: dict[str, str | int | float | bool],
    env: dict[str, str],
    *,
    timeout: float,
) -> tuple[int, str]:
    """`flwr run APP CONNECTION --run-config FILE --stream`: the run's id and its output, once
    it has ended (streaming stops when the run finishes)."""
    overrides = app / "run-config.toml"
    overrides.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()))
    command = [str(_BIN / "flwr"), "run", str(app), connection, "--run-config", str(overrides), "--stream"]
    log = app / "flwr-run.log"
    with log.open("w") as out_file:
        try:
            done = subprocess.run(
                command, env=env, cwd=app, stdout=out_file, stderr=subprocess.STDOUT, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise FlowerRunError(f"`flwr run` did not end within {timeout:.0f} s; see {log}") from None
    out = log.read_text(errors="replace")
    found = re.search(r"Successfully started run (\d+)", out)
    if done.returncode != 0 or found is None:
        raise FlowerRunError(f"`flwr run` exited {done.returncode}; see {log}")
    return int(found.group(1)), out


def run_status(connection: str, run_id: int, env: dict[str, str], *, cwd: Path) -> str:
    """The run's status as `flwr ls` reports it (``finished:completed``, ``finished:failed``, ...)."""
    command = [str(_BIN / "flwr"), "ls", connection, "--run-id", str(run_id), "--format", "json"]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    try:
        runs = json.loads(done.stdout)["runs"]
        return str(runs[0]["status"])
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise FlowerRunError(f"`flwr ls` gave no run status: {(done.stdout + done.stderr)[-1000:]}") from None


def site_node_config(endpoint: str, site: str, key_file: Path) -> dict[str, str | int | float | bool]:
    """A site's SuperNode node config: its FedSeal settings and, for the app, its hospital."""
    return {
        "fedseal-endpoint": endpoint,
        "fedseal-policy": DEV_POLICY,
        "fedseal-client-id": site,
        "fedseal-key-file": str(key_file),
        "hospital": site,
    }


def _node_config(values: Mapping[str, str | int | float | bool]) -> str:
    return " ".join(f"{k}={_toml_value(v)}" for k, v in values.items())


def _toml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's


def _start(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def _read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def _wait_for(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise FlowerRunError(f"a Flower process did not come up; see {log}")
        time.sleep(0.2)


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL `process` and every process it started (found before the kill, by parent id)."""
    try:
        pids = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        pids = [process.pid]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


@contextlib.contextmanager
def local_simulation_env(work: Path, *, num_supernodes: int) -> Iterator[dict[str, str]]:
    """An environment for `flwr run APP fedseal-simulation`: its own FLWR_HOME (with the
    connection) and free ports for the SuperLink `flwr` starts on demand, which it leaves
    running detached: it is ended here (found by its FLWR_HOME, then by process id)."""
    flwr_home = work / "flwr-home"
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(flower_config(num_supernodes=num_supernodes))
    env = flower_env(flwr_home)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    try:
        yield env
    finally:
        marker = str(flwr_home / "local-superlink")
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if any("flower-superlink" in part for part in cmdline) and any(
                marker in part for part in cmdline
            ):
                children = proc.children(recursive=True)
                for p in [proc, *children]:
                    with contextlib.suppress(psutil.Error):
                        p.kill()

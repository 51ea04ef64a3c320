"""Run the Flower LoRA job through a FedSeal aggregator process, on one machine.

    python -m examples.flower_lora [--hospitals 3] [--rounds 2] [--local-steps 20]
        [--engine local|simulation] [--run-config fedseal-strategy=fedprox ...] [--out DIR]

The operator's part first: `fedseal-job init` makes the job (site keys and the site map,
the enrolment, the Flower server's operator key, a job whose rounds Flower opens, the
adapter spec and initial adapter), and `fedseal-aggregator` runs it as a separate process
on loopback with the INSECURE simulated TEE (every party uses the dev policy that accepts
it: this shows the protocol, not hardware protection). Then Flower runs the rounds:

- ``--engine local`` (no Ray): the ServerApp drives rounds through a small in-process
  Flower ``Grid`` that serializes every message with Flower's own protobuf encoding, as the
  SuperLink would, to each hospital's ClientApp, whose context is a SuperNode's (the
  site's own node config);
- ``--engine simulation``: Flower's Simulation Engine (Ray), what ``flwr run`` runs on a
  local-simulation federation; simulated nodes take their sites from the site map.

At the end the losses are printed and the audit log is verified.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from auditor._cli import main as audit_main
from examples.flower_lora._job import DEV_POLICY, aggregator_process, prepare_job, run_config
from examples.flower_lora._simulation import run_simulation_engine
from examples.flower_lora.client_app import app as client_app
from examples.flower_lora.server_app import app as server_app
from examples.lora_demo.training import HOSPITALS

__all__ = ["LocalGrid", "main", "server_task_identity"]

_RUN_ID = 1


class LocalGrid(Grid):
    """Flower's ``Grid`` over ClientApps in this process, one ``Context`` per node.

    Messages cross as Flower's protobuf ``Message`` both ways (what the SuperLink stores
    and forwards), so nothing passes that would not pass the real transport. A pushed
    message is delivered at once and its reply kept until pulled; an exception in a
    ClientApp becomes an error reply, as on a SuperNode.
    """

    def __init__(self, apps: dict[int, tuple[ClientApp, Context]], run: Run) -> None:
        self._apps = apps
        self._run = run
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = uuid.uuid4().hex
            self._replies[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        app, context = self._apps[message.metadata.dst_node_id]
        delivered = message_from_proto(message_to_proto(message))
        try:
            reply = app(delivered, context)
        except Exception as exc:  # reported to the server as a SuperNode does, not swallowed
            reply = Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                reply_to=delivered,
            )
        return message_from_proto(message_to_proto(reply))


@contextlib.contextmanager
def server_task_identity() -> Iterator[None]:
    """Flower stamps new messages with a process-wide task identity; set the server's, then restore."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = _RUN_ID, SUPERLINK_NODE_ID, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.flower_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--hospitals", type=int, default=3, choices=range(2, len(HOSPITALS) + 1))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument(
        "--engine",
        choices=("local", "simulation"),
        default="local",
        help="local: one process, a Grid over in-process ClientApps with per-site node configs; "
        "simulation: Flower's Simulation Engine (Ray), nodes' sites from the site map",
    )
    p.add_argument(
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra run-config entries, e.g. fedseal-strategy=fedprox (values as JSON, else text)",
    )
    p.add_argument(
        "--out", type=Path, help="folder for the job and the audit log (default: a temporary folder)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1 or args.local_steps < 1:
        print("error: --rounds and --local-steps must be at least 1", file=sys.stderr)
        return 2
    try:
        extra = dict(_entry(item) for item in args.run_config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        out.mkdir(parents=True, exist_ok=True)
        audit_path = out / "audit.log"
        audit_path.unlink(missing_ok=True)
        hospitals = list(HOSPITALS[: args.hospitals])
        job_dir = out / "job"
        shutil.rmtree(job_dir, ignore_errors=True)  # a rerun into the same folder makes new keys
        prepare_job(job_dir, hospitals)
        print("Operator: fedseal-job init wrote", ", ".join(sorted(p.name for p in job_dir.iterdir())))
        with aggregator_process(job_dir, audit_path) as endpoint:
            config = run_config(
                endpoint,
                job_dir,
                rounds=args.rounds,
                nodes=len(hospitals),
                local_steps=args.local_steps,
                **extra,
            )
            print(
                f"FedSeal aggregator on {endpoint} (a separate process, INSECURE simulated TEE, dev policy)"
            )
            print(
                f"Flower job: {len(hospitals)} hospitals, {args.rounds} rounds, "
                f"{args.local_steps} local steps"
            )
            started = time.monotonic()
            if args.engine == "local":
                state = _run_local(config, hospitals, job_dir)
            else:
                state = run_simulation_engine(config, len(hospitals))
            print(f"Flower rounds took {time.monotonic() - started:.1f} s ({args.engine} engine)")
        losses = _print_losses(state)
        print("Auditing the log with: fedseal-audit verify", audit_path, "--builtin-policy", DEV_POLICY)
        if audit_main(["verify", str(audit_path), "--builtin-policy", DEV_POLICY]) != 0:
            print("FAILED: the audit log did not verify")
            return 1
    if len(losses) != args.rounds:
        print("FAILED: not every round produced an evaluation")
        return 1
    print("OK: every round's adapter was averaged in the enclave, and the audit log verified.")
    return 0


def _entry(item: str) -> tuple[str, str | int | float | bool]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--run-config {item!r}: expected KEY=VALUE")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return key, text
    return key, value if isinstance(value, str | int | float | bool) else text


def _print_losses(state: RecordDict) -> dict[int, float]:
    losses = {int(r): float(v) for r, v in state.metric_records["eval-loss"].items()}  # type: ignore[arg-type]
    train = {int(r): float(v) for r, v in state.metric_records["train-loss"].items()}  # type: ignore[arg-type]
    for server_round, loss in sorted(losses.items()):
        print(
            f"round {server_round}: federated train loss {train.get(server_round, float('nan')):.4f}, "
            f"eval loss {loss:.4f}"
        )
    return losses


def _run_local(
    config: dict[str, str | int | float | bool], hospitals: list[str], job_dir: Path
) -> RecordDict:
    """Run the ServerApp over the hospitals' ClientApps in this process; its final state."""
    # Each site's own settings (its SuperNode's --node-config): where the aggregator is,
    # which policy it requires, and the identity (and enrolled key) that signs its updates.
    apps = {
        100 + i: (
            client_app,
            Context(
                run_id=_RUN_ID,
                node_id=100 + i,
                node_config={
                    "hospital": name,
                    "fedseal-endpoint": str(config["fedseal-endpoint"]),
                    "fedseal-policy": DEV_POLICY,
                    "fedseal-client-id": name,
                    "fedseal-key-file": str(job_dir / "sites" / f"{name}.key"),
                },
                state=RecordDict(),
                run_config=dict(config),
            ),
        )
        for i, name in enumerate(hospitals)
    }
    server_context = Context(
        run_id=_RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=dict(config)
    )
    with server_task_identity():
        server_app(LocalGrid(apps, Run.create_empty(_RUN_ID)), server_context)
    return server_context.state


if __name__ == "__main__":
    sys.exit(main())

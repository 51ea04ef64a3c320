"""Run the Flower LoRA job through a local FedSeal aggregator, in one process, without Ray.

    python -m examples.flower_lora [--hospitals 3] [--rounds 2] [--local-steps 20] [--out DIR]

What runs is the real thing except the transport between Flower's server and its nodes:
the ServerApp (server_app.py, with FedSealFedAvg) drives rounds through a small in-process
Flower ``Grid`` that serializes every message with Flower's own protobuf encoding, as the
SuperLink would, and delivers it to each hospital's ClientApp (client_app.py, with the
FedSeal mod). The FedSeal aggregator is started in-process on loopback with the INSECURE
simulated TEE, and every party uses the dev policy that accepts it: this shows the
protocol, not hardware protection. Each hospital gets an Ed25519 key, enrolled with the
aggregator, and the Flower server a key the job names as its operator (all written to the
output folder). At the end the audit log is verified.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from aggregator import AccessConfig, JobConfig, start_aggregator
from attestation import InsecureSimulatedTeeCollector
from auditor._cli import main as audit_main
from client_sdk import write_signing_key
from examples.flower_lora.client_app import app as client_app
from examples.flower_lora.server_app import app as server_app
from examples.lora_demo.training import HOSPITALS, DemoModelConfig, adapter_state, build_model
from fedseal.enrolment import EnrolledSite, Enrolment
from fedseal.signed_request import Role, Signer
from fedseal.spec import AdapterSpec

__all__ = ["LocalGrid", "main", "server_task_identity"]

DEV_POLICY = "dev-insecure-allow-simulated"
_RUN_ID = 1
_SERVER = "flower-server"  # the Flower server's principal name (role operator)


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


def _job(rounds: int, hospitals: int) -> JobConfig:
    spec = AdapterSpec.from_tensors(adapter_state(build_model(DemoModelConfig())))
    return JobConfig.from_json_obj(
        {
            "format": "fedseal-job/v1",
            "rounds": rounds,
            "round_template": {
                "adapter_spec": spec.to_json_obj(),
                # every sampled node submits: the round closes as soon as all have
                "min_clients": hospitals,
                "max_clients": hospitals,
                "deadline_ms": 300_000,
                "strategy": "fedavg",
            },
        }
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.flower_lora", description=__doc__.split("\n\n")[0])
    p.add_argument("--hospitals", type=int, default=3, choices=range(2, len(HOSPITALS) + 1))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--out", type=Path, help="folder for the audit log (default: a temporary folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1 or args.local_steps < 1:
        print("error: --rounds and --local-steps must be at least 1", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        out.mkdir(parents=True, exist_ok=True)
        audit_path = out / "audit.log"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the collector warns that it is insecure; we said so
            collector = InsecureSimulatedTeeCollector("fedseal flower example (insecure simulated TEE)")
        hospitals = HOSPITALS[: args.hospitals]
        keys = out / "keys"
        keys.mkdir(exist_ok=True)
        for key_file in keys.glob("*.key"):
            key_file.unlink()  # a rerun into the same folder makes new keys
        access = AccessConfig(
            Enrolment(1, tuple(EnrolledSite(n, (write_signing_key(keys / f"{n}.key"),)) for n in hospitals)),
            (Signer(_SERVER, Role.OPERATOR, write_signing_key(keys / f"{_SERVER}.key")),),
        )
        running = start_aggregator(
            log_path=audit_path,
            log_origin="fedseal.local/flower-example",
            collectors=[collector],
            access=access,
            job=_job(args.rounds, args.hospitals),
            listen="127.0.0.1:0",
        )
        try:
            losses = _run_flower(running.endpoint, args, keys)
        finally:
            running.stop(0.5)
        print("Auditing the log with: fedseal-audit verify", audit_path, "--builtin-policy", DEV_POLICY)
        if audit_main(["verify", str(audit_path), "--builtin-policy", DEV_POLICY]) != 0:
            print("FAILED: the audit log did not verify")
            return 1
    if len(losses) != args.rounds:
        print("FAILED: not every round produced an evaluation")
        return 1
    print("OK: every round's adapter was averaged in the enclave, and the audit log verified.")
    return 0


def _run_flower(endpoint: str, args: argparse.Namespace, keys: Path) -> dict[int, float]:
    """Run the ServerApp over the hospitals' ClientApps; return the eval loss per round."""
    hospitals = HOSPITALS[: args.hospitals]
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
                    "fedseal-endpoint": endpoint,
                    "fedseal-policy": DEV_POLICY,
                    "fedseal-client-id": name,
                    "fedseal-key-file": str(keys / f"{name}.key"),
                },
                state=RecordDict(),
                run_config={"local-steps": args.local_steps},
            ),
        )
        for i, name in enumerate(hospitals)
    }
    server_context = Context(
        run_id=_RUN_ID,
        node_id=SUPERLINK_NODE_ID,
        node_config={},
        state=RecordDict(),
        run_config={
            "num-server-rounds": args.rounds,
            "num-nodes": len(hospitals),
            "fedseal-endpoint": endpoint,
            "fedseal-policy": DEV_POLICY,
            "fedseal-identity": _SERVER,
            "fedseal-key-file": str(keys / f"{_SERVER}.key"),
        },
    )
    print(f"FedSeal aggregator on {endpoint} (INSECURE simulated TEE, dev policy)")
    print(f"Flower job: {len(hospitals)} hospitals, {args.rounds} rounds, {args.local_steps} local steps")
    started = time.monotonic()
    with server_task_identity():
        server_app(LocalGrid(apps, Run.create_empty(_RUN_ID)), server_context)
    losses = {int(r): float(v) for r, v in server_context.state.metric_records["eval-loss"].items()}  # type: ignore[arg-type]
    for server_round, loss in sorted(losses.items()):
        print(f"round {server_round}: federated eval loss {loss:.4f}")
    print(f"Flower rounds took {time.monotonic() - started:.1f} s")
    return losses


if __name__ == "__main__":
    sys.exit(main())

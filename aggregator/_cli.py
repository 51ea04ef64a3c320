"""`fedseal-aggregator`: run the confidential aggregator service."""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
from pathlib import Path

from aggregator._config import JobConfig
from aggregator._logging import configure_logging
from aggregator._server import RunningAggregator, start_aggregator
from attestation import EvidenceCollectionError, EvidenceCollector, InsecureSimulatedTeeCollector
from attestation._hardware import CpuTee, GpuCollector, hardware_collectors
from fedseal.errors import FedSealError, FormatError
from fedseal.roundconfig import ConfigError
from fedseal.witness_rpc import WitnessCosigner, WitnessEndpoint

__all__ = ["main"]

_ORIGIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")

_DESCRIPTION = """\
Run the FedSeal aggregator: it makes fresh keys in memory, proves them with attestation
evidence, receives envelope-encrypted LoRA updates over gRPC, aggregates them in memory
only, and writes an append-only, signed audit log.

On a Hopper confidential VM the hardware evidence collectors are used: NVIDIA GPU
evidence (--gpu-collector) and the CPU TEE report (--cpu-tee sev-snp|tdx), which covers
the GPU evidence and the VM's launch measurement. For local development without that
hardware, pass --insecure-simulated-tee: clients then refuse the aggregator unless their
policy explicitly allows simulated evidence.
"""

_EPILOG = """\
exit codes: 0 stopped cleanly (SIGINT/SIGTERM),
            2 bad arguments or configuration, 1 any other start-up failure.
example:
  fedseal-aggregator --insecure-simulated-tee --job deploy/examples/job.json \\
      --log ./audit.log --listen 127.0.0.1:50051
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedseal-aggregator",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--log",
        type=Path,
        required=True,
        help="audit log file: created if new; an existing log is resumed (a torn last commit "
        "is cut and kept aside, and this enclave's new keys are recorded as a key handover)",
    )
    p.add_argument(
        "--log-origin",
        default="fedseal.local/demo",
        help="name of the log in its checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:50051",
        help="address to serve gRPC on; port 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--job",
        type=Path,
        help="job config (JSON): rounds to open one after another; without it, rounds "
        "are opened through the OpenRound call",
    )
    p.add_argument("--port-file", type=Path, help="write the port actually bound to this file")
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="VERIFIER_KEY@HOST:PORT",
        help="a witness (fedseal-audit witness serve) to offer every new checkpoint to; its "
        "cosignature is added to the checkpoint receipts carry. Repeatable",
    )
    p.add_argument(
        "--witness-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for each witness per checkpoint (default: %(default)s)",
    )
    p.add_argument(
        "--gpu-collector",
        choices=[c.value for c in GpuCollector],
        default=GpuCollector.NV_LOCAL_GPU_VERIFIER.value,
        help="how to collect NVIDIA GPU evidence: NVIDIA's Python verifier over NVML (needs "
        "`make nvidia-collector`), NVIDIA's nvattest CLI, or none (default: %(default)s)",
    )
    p.add_argument(
        "--cpu-tee",
        choices=[c.value for c in CpuTee],
        default=CpuTee.NONE.value,
        help="the confidential VM's CPU TEE, reported through configfs-tsm: sev-snp, tdx or none "
        "(default: %(default)s). Without it the evidence proves the GPU, not the VM's software",
    )
    p.add_argument(
        "--insecure-simulated-tee",
        action="store_true",
        help="INSECURE, development only: sign evidence with a throwaway key instead of TEE "
        "hardware (replaces --gpu-collector and --cpu-tee)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    if not _ORIGIN.match(args.log_origin):
        print(
            "error: --log-origin must be 1-128 characters of letters, digits, '.', '_', '/', '-'",
            file=sys.stderr,
        )
        return 2
    try:
        job = JobConfig.from_file(args.job) if args.job else None
        witnesses = [WitnessEndpoint.parse(w) for w in args.witness]
    except (ConfigError, FormatError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cosigner = WitnessCosigner(witnesses, timeout=args.witness_timeout) if witnesses else None
    with contextlib.ExitStack() as stack:
        try:
            collectors = _collectors(args, stack)
            running = start_aggregator(
                log_path=args.log,
                log_origin=args.log_origin,
                collectors=collectors,
                job=job,
                listen=args.listen,
                cosigner=cosigner,
            )
        except EvidenceCollectionError as exc:
            print(
                f"error: cannot collect attestation evidence: {exc}\n"
                "Check that this is a confidential VM with the GPU(s) in CC mode and the NVIDIA "
                "collector installed (see deploy/README.md). For local development only, pass "
                "--insecure-simulated-tee.",
                file=sys.stderr,
            )
            return 1
        except (FedSealError, OSError) as exc:
            print(f"error: cannot start the aggregator: {exc}", file=sys.stderr)
            return 1
        return _serve(running, args.port_file)


def _collectors(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[EvidenceCollector]:
    if args.insecure_simulated_tee:
        return [InsecureSimulatedTeeCollector("fedseal-aggregator (insecure simulated TEE)")]
    return stack.enter_context(hardware_collectors(GpuCollector(args.gpu_collector), CpuTee(args.cpu_tee)))


def _serve(running: RunningAggregator, port_file: Path | None) -> int:
    if port_file:
        port_file.write_text(f"{running.port}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

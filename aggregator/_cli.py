"""`fedseal-aggregator`: run the confidential aggregator service."""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog
from cryptography import x509

from aggregator._config import JobConfig
from aggregator._gc import frozen_startup_heap
from aggregator._identity import AccessConfig, AccessLimits
from aggregator._logging import configure_logging
from aggregator._malloc import tune_malloc
from aggregator._metrics import ListenAddress, Metrics, parse_listen_address
from aggregator._preflight import CocoAgent, GpuRequirement, Preflight, PreflightError, PreflightMode
from aggregator._preflight import CpuTee as CvmTee
from aggregator._rounds import DEFAULT_UPLOAD_LINE
from aggregator._selfattest import SelfAttestationGate
from aggregator._server import RunningAggregator, start_aggregator
from aggregator._witness import WitnessCosigner, WitnessEndpoint
from aggregator.enclave._device import cuda_available as enclave_cuda_available
from aggregator.enclave._serialize import check_safetensors
from attestation import (
    CachingFetcher,
    CheckResult,
    CollateralCache,
    CollateralRefresher,
    EvidenceCollectionError,
    EvidenceCollector,
    EvidenceKind,
    HttpFetcher,
    InsecureSimulatedTeeCollector,
    Policy,
    PolicyError,
    load_builtin_policy,
)
from attestation._hardware import CpuTee, GpuCollector, hardware_collectors
from attestation.cpu import DEFAULT_COCO_AGENT_URL, CocoAgentError
from fedseal.checkpoint import check_log_origin
from fedseal.cliargs import file_in_the_way, host_port, output_file_problem, positive_int, positive_seconds
from fedseal.enrolment import Enrolment
from fedseal.errors import FedSealError, FormatError
from fedseal.roundconfig import ConfigError
from fedseal.tls import refuse_private_key_in

_log = structlog.get_logger("fedseal.aggregator")

__all__ = ["main"]

_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)

_DESCRIPTION = """\
Run the FedSeal aggregator: it makes fresh keys in memory, proves them with attestation
evidence, receives envelope-encrypted LoRA updates over gRPC, aggregates them in memory
only, and writes an append-only, signed audit log.

On a Hopper confidential VM the hardware evidence collectors are used: NVIDIA GPU
evidence (--gpu-collector) and the CPU TEE report (--cpu-tee sev-snp|tdx), which covers
the GPU evidence and the VM's launch measurement. In a Confidential Containers pod the CPU
TEE report comes from the pod's attestation agent (--cpu-tee coco-sev-snp|coco-tdx). A
confidential VM or pod without GPUs runs with --gpu-collector none, said explicitly: no GPU
is probed or attested, and clients whose policy requires GPUs refuse it. For local
development without that hardware, pass --insecure-simulated-tee: clients then refuse the
aggregator unless their policy explicitly allows simulated evidence.

It serves TLS only, with a key made in memory whose certificate the evidence binds
(clients pin it). Only sites in the enrolment (--enrolment) may submit, each with its
enrolled Ed25519 key and, for sites enrolled by certificate, a client certificate from
--client-ca on the --listen-mtls port. Operator requests (open a round, change the job,
rotate the enrolment) must be signed by the principals of the job config (--job).
GetAttestation and the log calls are public and rate-limited.
"""

_EPILOG = """\
exit codes: 0 stopped cleanly (SIGINT/SIGTERM),
            2 bad arguments or configuration, 1 any other start-up failure.
On the confidential host, `fedseal-aggregator check-hardware --policy FILE` runs the
operator's checklist (preflight, collect, staple, verify as a client) and serves nothing.
example:
  fedseal-aggregator --insecure-simulated-tee --job deploy/examples/job.json \\
      --enrolment deploy/examples/enrolment.json --log ./audit.log --listen 127.0.0.1:50051
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
        type=host_port(allow_port_zero=True),
        help="address to serve gRPC on; port 0 picks a free one (default: %(default)s)",
    )
    p.add_argument(
        "--job",
        type=Path,
        help="job config (JSON): rounds to open one after another; without it, rounds "
        "are opened by operators' signed requests (FedSealClient.open_round)",
    )
    p.add_argument(
        "--enrolment",
        type=Path,
        required=True,
        help="the job's enrolment (JSON, fedseal-enrolment/v1): the sites that may submit, their "
        "Ed25519 keys and client certificates. Recorded in the log; rotate it with a signed request",
    )
    p.add_argument(
        "--listen-mtls",
        metavar="ADDR",
        type=host_port(allow_port_zero=True),
        help="also serve mutual TLS here: callers must present a client certificate from --client-ca",
    )
    p.add_argument(
        "--client-ca", type=Path, help="PEM certificate(s) of the CA that issues site certificates"
    )
    p.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="DNS_NAME",
        help="a public DNS name of this service, added to the enclave's TLS certificate (for load "
        "balancers that route TLS by server name; clients pin the attested certificate either way). "
        "Repeatable",
    )
    p.add_argument(
        "--crl",
        type=Path,
        help="that CA's revocation list (PEM or DER); re-read when the file changes, never rolled "
        "back; past its next update, certificate logins are refused",
    )
    p.add_argument(
        "--spool-dir",
        type=Path,
        help="where strategies that need every update at once (median, trimmed mean, Krum, exact "
        "LoRA) spool them, re-sealed under per-update keys held in enclave memory: ciphertext "
        "only, in an unlinked file (default: the system's temporary directory)",
    )
    p.add_argument(
        "--initial-adapter",
        type=Path,
        help="the job's starting global adapter (safetensors): what round 1 measures update "
        "deltas against; required by DP rounds, whose config names its SHA-256",
    )
    p.add_argument(
        "--accumulator-device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where FedAvg/FedProx add up the updates: the GPU of this confidential VM ('cuda'), "
        "or the CPU; 'auto' (default) takes the GPU when this build of torch sees one",
    )
    p.add_argument(
        "--max-workers",
        type=positive_int,
        default=16,
        help="threads that serve calls, a quarter of them at most for anonymous callers "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--upload-line",
        type=positive_int,
        default=DEFAULT_UPLOAD_LINE,
        help="uploads that may wait, header only, for one of the two decryption buffers, each on "
        "a thread of its own on top of --max-workers; the others are turned away with a retry "
        "hint and come back (default: %(default)s)",
    )
    p.add_argument("--port-file", type=Path, help="write the port actually bound to this file")
    p.add_argument(
        "--metrics-listen",
        type=_listen_address("--metrics-listen"),
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at /metrics over plain HTTP here (a bare port binds loopback "
        "only); counts, latencies, round ids and reasons, never update data, keys or client ids",
    )
    p.add_argument(
        "--health-listen",
        type=_listen_address("--health-listen"),
        metavar="[HOST:]PORT",
        help="serve only the standard gRPC health service (grpc.health.v1), without TLS, here: for "
        "Kubernetes' gRPC probes, which cannot speak TLS (a bare port binds loopback only)",
    )
    p.add_argument(
        "--mtls-port-file", type=Path, help="write the mutual-TLS port actually bound to this file"
    )
    limits = p.add_argument_group("abuse limits (per identity: an enrolled site or a principal)")
    defaults = AccessLimits()
    limits.add_argument(
        "--max-streams",
        type=positive_int,
        default=defaults.max_streams_per_identity,
        help="concurrent SubmitUpdate/GetAggregate streams per identity (default: %(default)s)",
    )
    limits.add_argument(
        "--max-calls-per-round",
        type=positive_int,
        default=defaults.max_calls_per_round,
        help="authenticated calls per identity while one round is current (default: %(default)s)",
    )
    limits.add_argument(
        "--max-bytes-per-round",
        type=positive_int,
        default=defaults.max_bytes_per_round,
        help="upload bytes (as headers declare them) per identity per round (default: %(default)s)",
    )
    limits.add_argument(
        "--public-rate",
        type=positive_seconds,
        default=defaults.public_rate_per_peer,
        help="public calls (GetAttestation, log calls) per second per peer address (default: %(default)s)",
    )
    limits.add_argument(
        "--public-burst",
        type=positive_int,
        default=defaults.public_burst_per_peer,
        help="burst of public calls per peer address (default: %(default)s)",
    )
    limits.add_argument(
        "--public-rate-total",
        type=positive_seconds,
        default=defaults.public_rate_total,
        help="public calls per second from all peers together (default: %(default)s)",
    )
    limits.add_argument(
        "--public-burst-total",
        type=positive_int,
        default=defaults.public_burst_total,
        help="burst of public calls from all peers together (default: %(default)s)",
    )
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
        type=positive_seconds,
        default=5.0,
        help="seconds to wait for each witness per checkpoint (default: %(default)s)",
    )
    p.add_argument(
        "--gpu-collector",
        choices=[c.value for c in GpuCollector],
        default=GpuCollector.NV_LOCAL_GPU_VERIFIER.value,
        help="how to collect NVIDIA GPU evidence: NVIDIA's Python verifier over NVML (needs "
        "`make nvidia-collector`), NVIDIA's nvattest CLI, or none: a host without GPUs (the "
        "preflight then skips NVML, the evidence carries no GPU, aggregation runs on the CPU, and "
        "the self-attestation policy must not require GPUs) (default: %(default)s)",
    )
    p.add_argument(
        "--cpu-tee",
        choices=[c.value for c in CpuTee],
        default=CpuTee.NONE.value,
        help="the confidential VM's CPU TEE: sev-snp or tdx (configfs-tsm), coco-sev-snp or coco-tdx "
        "(in a Confidential Containers pod: the attestation agent on 127.0.0.1:8006), or none "
        "(default: %(default)s). Without it the evidence proves the GPU, not the VM's software",
    )
    p.add_argument(
        "--coco-agent-url",
        metavar="URL",
        help="with --cpu-tee coco-sev-snp|coco-tdx: the attestation agent's API server, a loopback "
        f"http:// address (default: {DEFAULT_COCO_AGENT_URL})",
    )
    p.add_argument(
        "--nras",
        action="store_true",
        help="also staple an NVIDIA NRAS token (NVIDIA's own appraisal of the GPU evidence, verified "
        "here first) and NRAS's key set to every GPU evidence item; needs outbound HTTPS to "
        "nras.attestation.nvidia.com. If NRAS fails, evidence is served without a token "
        "(fedseal_nras_tokens_total{outcome='failed'}); clients whose policy requires one refuse",
    )
    p.add_argument(
        "--insecure-simulated-tee",
        action="store_true",
        help="INSECURE, development only: sign evidence with a throwaway key instead of TEE "
        "hardware (replaces --gpu-collector and --cpu-tee)",
    )
    p.add_argument(
        "--self-attestation-policy",
        type=Path,
        metavar="FILE",
        help="policy (fedseal-policy/v1 JSON) the aggregator's own evidence must pass before the "
        "GPUs are released and it listens (default: the builtin 'default' policy). Hardware mode only",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check-hardware"]:  # the operator's checklist (aggregator/_checklist.py)
        from aggregator._checklist import main as check_hardware

        return check_hardware(argv[1:])
    return run(argv)


def _accumulator_device(
    choice: str,
    *,
    gpus: GpuRequirement = GpuRequirement.CC_GPUS,
    cuda_available: Callable[[], bool] | None = None,
) -> str:
    """'auto' → 'cuda' when torch sees a GPU, else 'cpu'; 'cuda' without one is an error.

    On a declared GPU-less host no GPU is attested, so no update may reach one: 'cpu'.
    """
    if gpus is GpuRequirement.NONE:
        if choice == "cuda":
            raise ConfigError(
                "--accumulator-device cuda with --gpu-collector none: no GPU is attested, so no "
                "update may reach one; use --accumulator-device cpu or auto"
            )
        return "cpu"
    if choice == "cpu":  # no probe: it would start the CUDA driver (e.g. under MDWE) for nothing
        return "cpu"
    has_cuda = (cuda_available or enclave_cuda_available)()
    if choice == "auto":
        return "cuda" if has_cuda else "cpu"
    if choice == "cuda" and not has_cuda:
        raise ConfigError(
            "--accumulator-device cuda: torch sees no CUDA GPU (a CPU-only torch build, no driver, "
            "or the GPU not visible to this VM); use --accumulator-device cpu or auto"
        )
    return choice


class PreflightFactory(Protocol):
    """How run() makes its Preflight: the class itself, or a test's over a fake host."""

    def __call__(
        self, mode: PreflightMode, /, *, gpus: GpuRequirement, coco_agent: CocoAgent | None
    ) -> Preflight: ...


def run(argv: list[str] | None = None, *, preflight_for: PreflightFactory = Preflight) -> int:
    """main() with the preflight's constructor injected: tests pass one over a fake root and
    NVML; the command always probes the real host."""
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        check_log_origin(args.log_origin)
    except FormatError as exc:
        print(f"error: --log-origin: {exc}", file=sys.stderr)
        return 2
    try:
        _check_paths(args)
        job = JobConfig.from_file(args.job) if args.job else None
        witnesses = [_witness(w) for w in args.witness]
        initial_adapter = _initial_adapter(args.initial_adapter, job)
        access = _access(args, job)
        for name in args.tls_name:
            if not _DNS_NAME.fullmatch(name):
                raise ConfigError(f"--tls-name {name[:64]!r} is not a DNS name")
        if args.nras and (args.insecure_simulated_tee or args.gpu_collector == GpuCollector.NONE.value):
            raise ConfigError(
                "--nras staples NVIDIA NRAS tokens to GPU evidence: it needs a --gpu-collector "
                "other than 'none', and hardware mode (not --insecure-simulated-tee)"
            )
        policy = _self_attestation_policy(args)
        gpus, coco_agent = _host(args, policy)
        accumulator_device = _accumulator_device(args.accumulator_device, gpus=gpus)
    except (ConfigError, FormatError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mode = PreflightMode.INSECURE_DEV if args.insecure_simulated_tee else PreflightMode.HARDWARE
    preflight = preflight_for(mode, gpus=gpus, coco_agent=coco_agent)
    try:
        report = preflight.check()  # before any key exists: a wrong host fails here
    except PreflightError as exc:
        _print_refusal("the start-up preflight refused this host", exc, exc.checks)
        return 1
    gate = (
        SelfAttestationGate(preflight, report, policy, fetcher=CachingFetcher(HttpFetcher()))
        if policy is not None
        else None
    )
    cosigner = WitnessCosigner(witnesses, timeout=args.witness_timeout) if witnesses else None
    # Before the server's threads exist: they are what would each get an arena.
    _log.info("malloc", outcome=tune_malloc())
    with contextlib.ExitStack() as stack:
        try:
            metrics = Metrics()
            collectors = _collectors(args, stack, metrics)
            running = start_aggregator(
                log_path=args.log,
                log_origin=args.log_origin,
                collectors=collectors,
                access=access,
                job=job,
                listen=args.listen,
                listen_mtls=args.listen_mtls,
                tls_names=args.tls_name,
                cosigner=cosigner,
                spool_dir=args.spool_dir,
                initial_adapter=initial_adapter,
                self_attestation=gate,
                metrics_listen=args.metrics_listen,
                health_listen=args.health_listen,
                accumulator_device=accumulator_device,
                metrics=metrics,
                max_workers=args.max_workers,
                upload_line=args.upload_line,
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
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except PreflightError as exc:
            _print_refusal("the aggregator's self-attestation failed; the GPUs stay closed", exc, exc.checks)
            return 1
        except (FedSealError, OSError) as exc:
            print(f"error: cannot start the aggregator: {exc}", file=sys.stderr)
            return 1
        with frozen_startup_heap() as outcome:
            _log.info("garbage_collection", outcome=outcome)
            return _serve(running, args.port_file, args.mtls_port_file)


def _listen_address(flag: str) -> Callable[[str], ListenAddress]:
    def parse(value: str) -> ListenAddress:
        try:
            return parse_listen_address(value, flag)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _check_paths(args: argparse.Namespace) -> None:
    """Paths that name the wrong kind of thing: refused before anything is created."""
    if args.log.is_dir():
        raise ConfigError(f"--log {args.log} is a directory; name the audit log file")
    if (blocker := file_in_the_way(args.log)) is not None:  # the log's folders are created
        raise ConfigError(f"--log {args.log}: {blocker} is a file, not a folder")
    for flag, path in (("--port-file", args.port_file), ("--mtls-port-file", args.mtls_port_file)):
        if path is not None and (problem := output_file_problem(flag, path)) is not None:
            raise ConfigError(problem)
    if args.spool_dir is not None:
        if args.spool_dir.exists() and not args.spool_dir.is_dir():
            raise ConfigError(f"--spool-dir {args.spool_dir} exists and is not a directory")
        if not args.spool_dir.exists():
            # Spooling rounds write their sealed spool there; found missing only at the first
            # such round otherwise.
            raise ConfigError(f"--spool-dir {args.spool_dir} does not exist; create it first")


def _witness(text: str) -> WitnessEndpoint:
    if "PRIVATE+KEY+" in text:  # also after the spaces a key file may start with
        raise ConfigError(
            "--witness takes the witness's verifier key (NAME+HASH+KEY@HOST:PORT), not its "
            "private key (nothing of it is shown)"
        )
    try:
        return WitnessEndpoint.parse(text)
    except FormatError as exc:
        raise ConfigError(f"--witness {text[:80]!r}: {exc}") from None


def _initial_adapter(path: Path | None, job: JobConfig | None) -> bytes | None:
    """The file's bytes, once they parse as safetensors with the tensors of the job's adapter
    spec (rounds opened by request are checked when they open)."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read --initial-adapter {path}: {exc.strerror}") from None
    try:
        shapes = check_safetensors(data, what=f"--initial-adapter {path}")
    except FormatError as exc:
        raise ConfigError(str(exc)) from None
    if job is not None and job.rounds > 0:
        # A global that does not fit the rounds would be ignored: no DP, norm bound or server
        # optimizer could start from it.
        wanted = job.round_config(1).adapter_spec.shapes()
        if shapes != wanted:
            missing = sorted(set(wanted) - set(shapes))
            extra = sorted(set(shapes) - set(wanted))
            other = sorted(n for n in set(wanted) & set(shapes) if wanted[n] != shapes[n])
            detail = "; ".join(
                f"{what} {names[0]!r}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
                for what, names in (("missing", missing), ("not in the spec", extra), ("other shape", other))
                if names
            )
            raise ConfigError(f"--initial-adapter {path} does not fit the job's adapter_spec: {detail}")
    return data


def _access(args: argparse.Namespace, job: JobConfig | None) -> AccessConfig:
    try:
        client_ca = args.client_ca.read_bytes() if args.client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read --client-ca {args.client_ca}: {exc.strerror}") from None
    if client_ca is not None:
        try:
            refuse_private_key_in(client_ca, f"--client-ca {args.client_ca}")
        except FormatError as exc:
            raise ConfigError(str(exc)) from None
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise ConfigError(f"--client-ca {args.client_ca} holds no PEM certificate") from None
    return AccessConfig(
        enrolment=Enrolment.from_file(args.enrolment),
        principals=job.principals if job is not None else (),
        client_ca_pem=client_ca,
        crl_path=args.crl,
        limits=AccessLimits(
            max_streams_per_identity=args.max_streams,
            max_calls_per_round=args.max_calls_per_round,
            max_bytes_per_round=args.max_bytes_per_round,
            public_rate_per_peer=args.public_rate,
            public_burst_per_peer=args.public_burst,
            public_rate_total=args.public_rate_total,
            public_burst_total=args.public_burst_total,
        ),
    )


def _self_attestation_policy(args: argparse.Namespace) -> Policy | None:
    """The operator's policy for our own evidence; None in insecure dev mode (no gate)."""
    if args.insecure_simulated_tee:
        if args.self_attestation_policy is not None:
            raise ConfigError(
                "--self-attestation-policy applies to hardware mode, not --insecure-simulated-tee"
            )
        return None
    if args.self_attestation_policy is None:
        return load_builtin_policy("default")
    return Policy.from_file(args.self_attestation_policy)


_COCO_TEES = {CpuTee.COCO_SEV_SNP: CvmTee.AMD_SEV_SNP, CpuTee.COCO_TDX: CvmTee.INTEL_TDX}


def preflight_host(
    gpu: GpuCollector, cpu: CpuTee, coco_agent_url: str | None
) -> tuple[GpuRequirement, CocoAgent | None]:
    """What the preflight must find, from the collector options: GPUs in CC mode, or none
    where --gpu-collector none says so; the CPU TEE in the device tree, or shown by the
    attestation agent for --cpu-tee coco-*. Raises ConfigError for options that disagree."""
    if coco_agent_url is not None and cpu not in _COCO_TEES:
        raise ConfigError("--coco-agent-url applies to --cpu-tee coco-sev-snp or coco-tdx only")
    gpus = GpuRequirement.NONE if gpu is GpuCollector.NONE else GpuRequirement.CC_GPUS
    if gpus is GpuRequirement.NONE and cpu is CpuTee.NONE:
        raise ConfigError(
            "no evidence collector chosen (--gpu-collector none, --cpu-tee none): name the GPU "
            "collector and/or the CPU TEE of this VM"
        )
    if cpu not in _COCO_TEES:
        return gpus, None
    try:
        agent = CocoAgent(_COCO_TEES[cpu], url=coco_agent_url or DEFAULT_COCO_AGENT_URL)
    except CocoAgentError as exc:
        raise ConfigError(f"--coco-agent-url: {exc}") from None
    return gpus, agent


def _host(args: argparse.Namespace, policy: Policy | None) -> tuple[GpuRequirement, CocoAgent | None]:
    if args.insecure_simulated_tee:  # replaced by the simulated TEE: nothing is probed
        if args.coco_agent_url is not None:
            raise ConfigError("--coco-agent-url applies to hardware mode, not --insecure-simulated-tee")
        return GpuRequirement.CC_GPUS, None
    if CpuTee(args.cpu_tee) is CpuTee.NONE and GpuCollector(args.gpu_collector) is not GpuCollector.NONE:
        # The GPUs open (and the service starts) only once the aggregator's own evidence
        # covers the CPU TEE the preflight finds (aggregator/_preflight.py, release_gpus):
        # without a CPU TEE collector that never happens, so say it now, not after the keys.
        raise ConfigError(
            "hardware mode needs --cpu-tee: sev-snp or tdx (coco-sev-snp or coco-tdx in a "
            "Confidential Containers pod); the aggregator serves only once its own evidence "
            "covers the CPU TEE (deploy/README.md)"
        )
    gpus, agent = preflight_host(GpuCollector(args.gpu_collector), CpuTee(args.cpu_tee), args.coco_agent_url)
    if (
        gpus is GpuRequirement.NONE
        and policy is not None
        and EvidenceKind.NVIDIA_GPU in policy.required_evidence
    ):
        raise ConfigError(
            f"--gpu-collector none: the self-attestation policy {policy.name!r} requires nvidia-gpu "
            "evidence, which a host without GPUs cannot give; pass --self-attestation-policy with a "
            "policy that requires the CPU TEE only (policies/templates/production-*-cpu.json)"
        )
    return gpus, agent


def _print_refusal(what: str, exc: Exception, checks: Sequence[CheckResult]) -> None:
    lines = [f"error: {what}: {exc}"]
    lines += [f"  failed: {c.name}: expected {c.expected}, found {c.found}" for c in checks if not c.passed]
    lines.append(
        "Run the aggregator in an SEV-SNP or TDX confidential VM or Confidential Containers pod, "
        "with its GPUs in production CC mode (or --gpu-collector none where it has none; see "
        "deploy/README.md, 'Start-up preflight'). For local development only, pass "
        "--insecure-simulated-tee."
    )
    print("\n".join(lines), file=sys.stderr)


def _collectors(
    args: argparse.Namespace, stack: contextlib.ExitStack, metrics: Metrics
) -> list[EvidenceCollector]:
    if args.insecure_simulated_tee:
        return [InsecureSimulatedTeeCollector("fedseal-aggregator (insecure simulated TEE)")]
    # Collateral is fetched here, on the host side, and stapled so clients verify offline.
    network = HttpFetcher()
    collateral = CollateralCache(network, on_event=metrics.collateral_event)
    stack.enter_context(CollateralRefresher(collateral))  # refreshed before due, stopped at exit
    return stack.enter_context(
        hardware_collectors(
            GpuCollector(args.gpu_collector),
            CpuTee(args.cpu_tee),
            coco_agent_url=args.coco_agent_url,
            collateral=collateral,
            nras=network if args.nras else None,  # uncached: each token answers one challenge
            on_nras=metrics.nras_outcome,
        )
    )


def _serve(running: RunningAggregator, port_file: Path | None, mtls_port_file: Path | None) -> int:
    # Handlers first, then announce the ports: a supervisor may signal as soon as it sees them.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if mtls_port_file and running.mtls_port is not None:
            mtls_port_file.write_text(f"{running.mtls_port}\n")
        if port_file:  # written last: a watcher that sees it finds the other one written too
            port_file.write_text(f"{running.port}\n")
    except OSError as exc:  # checked at start, but the folder can change (permissions, removal)
        running.stop()
        print(f"error: cannot write the port file {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        # Poll: a signal delivered to one of gRPC's threads would not wake a blocked wait.
        while not stop.wait(0.5):
            pass
    finally:
        running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

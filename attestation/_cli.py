"""``fedseal-attest``: check an aggregator's attestation from the command line.

Two ways in, one report out:

* ``fedseal-attest verify --endpoint HOST:PORT`` asks a running aggregator for a fresh
  attestation (with a new random challenge) and verifies it;
* ``fedseal-attest verify --bundle FILE --challenge HEX`` verifies a bundle saved earlier
  (``--save-bundle``, or ``collect``) against the challenge it was made for;
* ``fedseal-attest collect`` runs on the aggregator host (inside the confidential VM) and
  writes a bundle with NVIDIA GPU evidence for a given challenge and keys;
* ``fedseal-attest measure snp|tdx`` computes (SEV-SNP) or checks (TDX) the launch
  measurement of the aggregator's VM image and writes a policy that pins it
  (``_measure_cli.py``).

``--now`` pins the verification time (replaying old evidence, whose certificates or
collateral have since expired), and ``--offline`` verifies from stapled material only.

The gRPC import stays in this module: the library (``attestation.verify_bundle``) takes
bytes and never needs a transport.
"""

from __future__ import annotations

import argparse
import datetime
import json
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

import grpc

from fedseal._proto.fedseal.v1 import fedseal_pb2, fedseal_pb2_grpc
from fedseal.binding import CHALLENGE_SIZE, ED25519_PUBLIC_KEY_SIZE, X25519_PUBLIC_KEY_SIZE, BoundKeys
from fedseal.cliargs import parse_host_port, positive_seconds
from fedseal.errors import FormatError
from fedseal.tls import TlsProbeError, pinned_channel, probe_server_certificate

from ._bundle import MAX_BUNDLE_SIZE, EvidenceBundle
from ._checks import CheckResult
from ._collect import build_bundle
from ._errors import (
    AttestationError,
    BindingMismatchError,
    BundleFormatError,
    EndpointError,
    EvidenceCollectionError,
    PolicyError,
    SimulatedEvidenceRefusedError,
    UnsupportedEvidenceError,
)
from ._fetch import CachingFetcher, CollateralFetcher, HttpFetcher, OfflineFetcher
from ._hardware import CpuTee, GpuCollector, hardware_collectors
from ._measure_cli import add_measure_parser, measure_command
from ._policy import Policy, builtin_policy_names, load_builtin_policy
from ._verify import VerifiedAttestation, verify_bundle

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "fetch_bundle",
    "main",
    "parse_endpoint",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_TIMEOUT_S = 10.0
# Room for the bundle plus protobuf framing; gRPC's own default (4 MiB) would cut a
# maximal bundle off with a confusing RESOURCE_EXHAUSTED.
_MAX_MESSAGE_SIZE = MAX_BUNDLE_SIZE + 64 * 1024
_SIMULATED_HINT = (
    "the aggregator runs the INSECURE simulated TEE (no hardware protection). "
    "To try FedSeal on your own machine, use --builtin-policy dev-insecure-allow-simulated "
    "for local development only, never with real data."
)
_UNSUPPORTED_HINT = (
    "this FedSeal version cannot verify that evidence kind yet; it fails closed rather than "
    "trusting evidence it cannot check."
)

_DESCRIPTION = """\
Check that a FedSeal aggregator really runs inside a trusted execution environment (TEE)
before you send it anything.

The aggregator answers a random challenge with an "evidence bundle": its two public keys
(the encryption key your update will be sealed to, and the key that signs its audit log),
proof from the TEE that those keys were made inside it, and a binding that ties both to
your challenge so the answer cannot be replayed. This tool verifies that bundle against a
policy and prints every check it made.

The verification does not depend on the security of the connection: the evidence is
signed by the hardware and bound to your fresh challenge and to the very keys your update
will be sealed to, so whoever sits on the network can make verification fail, never pass.
Any HOST:PORT may be checked. (Metadata such as sizes and timing is visible on the wire.)

Collateral (NVIDIA RIMs, OCSP answers, the NRAS key set) is fetched from the vendors'
services over HTTPS unless --offline is given, in which case only material stapled into
the bundle is used; a policy that needs more then fails, as it should.
"""

_EPILOG = """\
exit status:
  0  verified: the bundle satisfies the policy (collect: the bundle was written)
  1  verification failed: the error's name and every failing check are printed
     (collect: no evidence could be collected, e.g. no GPU in CC mode here)
  2  usage or input error: bad arguments, unreadable file, bad policy file
  3  cannot reach the endpoint, or it did not answer GetAttestation

examples:
  fedseal-attest verify --endpoint 127.0.0.1:50051
  fedseal-attest verify --endpoint localhost:50051 \\
      --builtin-policy dev-insecure-allow-simulated --save-bundle bundle.json
  fedseal-attest verify --bundle bundle.json --challenge $(cat bundle.json.challenge)
  fedseal-attest verify --bundle old.json --challenge HEX --now 2026-06-01T00:00:00Z --offline
  fedseal-attest collect --challenge HEX --hpke-public-key HEX --log-public-key HEX \\
      --out bundle.json            # on the aggregator host, with its GPUs in CC mode
"""


class _UsageError(Exception):
    """Bad input from the person running the tool: printed, exit status 2."""


class _ArgumentParser(argparse.ArgumentParser):
    # argparse's default is to print and sys.exit(2); raising lets main() return the
    # status instead, so it can be called in-process (tests, other tools).
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message}\n{self.format_usage().strip()}")


def build_parser() -> argparse.ArgumentParser:
    """The ``fedseal-attest`` argument parser."""
    parser = _ArgumentParser(
        prog="fedseal-attest",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    verify = commands.add_parser(
        "verify",
        help="verify an aggregator's evidence bundle (live or saved) against a policy",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    source = verify.add_argument_group("where the evidence comes from (pick one)")
    exclusive = source.add_mutually_exclusive_group(required=True)
    exclusive.add_argument(
        "--endpoint",
        metavar="HOST:PORT",
        help="ask a running aggregator, with a fresh random challenge. Any host: the "
        "evidence is bound to your challenge and the attested keys, so verification does not "
        "rely on the connection's security",
    )
    exclusive.add_argument(
        "--bundle",
        metavar="FILE",
        type=Path,
        help="verify a saved evidence bundle (see --save-bundle); needs --challenge",
    )
    source.add_argument(
        "--challenge",
        metavar="HEX",
        help=f"with --bundle: the {CHALLENGE_SIZE}-byte challenge ({2 * CHALLENGE_SIZE} hex "
        "digits) the bundle was requested with, e.g. the content of FILE.challenge",
    )

    policy_group = verify.add_argument_group(
        "policy: what the evidence must prove (default: --builtin-policy default)"
    )
    policies = policy_group.add_mutually_exclusive_group()
    policies.add_argument(
        "--policy", metavar="FILE", type=Path, help="a policy JSON file (see policies/README.md)"
    )
    policies.add_argument(
        "--builtin-policy",
        metavar="NAME",
        help=f"a policy shipped with FedSeal: {', '.join(builtin_policy_names())}. "
        "'default' is for production and refuses simulated evidence",
    )

    verification = verify.add_argument_group("verification time and collateral")
    verification.add_argument(
        "--now",
        metavar="ISO8601",
        help="verify as of this time (with a UTC offset, e.g. 2026-06-01T00:00:00Z) instead of "
        "the current time, to re-check saved evidence whose certificates have since expired. "
        "Printed in the report",
    )
    verification.add_argument(
        "--offline",
        action="store_true",
        help="fetch nothing: use only the RIMs, OCSP answers and tokens stapled into the bundle "
        "(default: fetch what is missing from NVIDIA's services over HTTPS, with a cache)",
    )

    output = verify.add_argument_group("output and connection")
    output.add_argument(
        "--json",
        action="store_true",
        help="print a machine-readable JSON report instead of a table",
    )
    output.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        help=f"with --endpoint: give up after this long (default {DEFAULT_TIMEOUT_S:g})",
    )
    output.add_argument(
        "--save-bundle",
        metavar="FILE",
        type=Path,
        help="with --endpoint: write the received bundle to FILE and its challenge (hex) to "
        "FILE.challenge, whatever the verdict, to re-check later with --bundle",
    )

    collect = commands.add_parser(
        "collect",
        help="on the aggregator host: collect GPU and CPU TEE evidence and write a bundle",
        description="Collect NVIDIA GPU evidence (every GPU, CC mode on) and the CPU TEE report "
        "on the aggregator host, bound to the given keys and challenge, and write the evidence "
        "bundle to --out (and the challenge to OUT.challenge) for `fedseal-attest verify "
        "--bundle`. Needs the GPUs and NVIDIA's packages (make nvidia-collector) or the "
        "nvattest CLI, and configfs-tsm for --cpu-tee.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    collect.add_argument(
        "--challenge", metavar="HEX", required=True, help=f"the {CHALLENGE_SIZE}-byte challenge, in hex"
    )
    collect.add_argument(
        "--hpke-public-key", metavar="HEX", required=True, help="the aggregator's X25519 key (32 bytes, hex)"
    )
    collect.add_argument(
        "--log-public-key",
        metavar="HEX",
        required=True,
        help="the aggregator's Ed25519 log key (32 bytes, hex)",
    )
    collect.add_argument("--out", metavar="FILE", type=Path, required=True, help="where to write the bundle")
    collect.add_argument(
        "--gpu-collector",
        choices=[c.value for c in GpuCollector],
        default=GpuCollector.NV_LOCAL_GPU_VERIFIER.value,
        help="nv-local-gpu-verifier: NVIDIA's Python verifier over NVML (default); nvattest: "
        "NVIDIA's CLI; none: no GPU evidence",
    )
    collect.add_argument(
        "--cpu-tee",
        choices=[c.value for c in CpuTee],
        default=CpuTee.NONE.value,
        help="the VM's CPU TEE: sev-snp or tdx (configfs-tsm), coco-sev-snp or coco-tdx (the "
        "attestation agent of a Confidential Containers pod), or none (default: %(default)s)",
    )
    collect.add_argument(
        "--nvattest", metavar="PATH", default="nvattest", help="the nvattest executable (default: from PATH)"
    )
    add_measure_parser(commands)
    return parser


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6 address]:PORT`` for IPv6); raise :class:`~fedseal.errors.FormatError`.

    Any host is accepted: the evidence, not the channel, is what is verified (see the
    command's description).
    """
    return parse_host_port(endpoint, what="endpoint")


def fetch_bundle(endpoint: str, challenge: bytes, timeout: float) -> EvidenceBundle:
    """Call GetAttestation on ``endpoint`` with ``challenge``; return the parsed bundle.

    The call goes over TLS pinned to the certificate the endpoint presents (fedseal/tls.py);
    a bundle that names another TLS certificate (something in between terminates TLS)
    raises :class:`~attestation.BindingMismatchError`.

    Raises :class:`~fedseal.errors.FormatError` for a malformed endpoint,
    :class:`~attestation.EndpointError` when the call fails (unreachable, deadline, server
    error) and :class:`~attestation.BundleFormatError` when the answer is not a bundle.
    The bundle is parsed, not verified: call :func:`~attestation.verify_bundle` next.
    """
    if len(challenge) != CHALLENGE_SIZE:
        raise FormatError(f"challenge must be {CHALLENGE_SIZE} bytes")
    if not timeout > 0:
        raise FormatError("timeout must be positive")
    host, port = parse_endpoint(endpoint)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE_SIZE),
        ("grpc.max_send_message_length", _MAX_MESSAGE_SIZE),
    ]
    try:
        certificate = probe_server_certificate(target, timeout=timeout)
    except TlsProbeError as exc:
        raise EndpointError(f"GetAttestation on {endpoint} failed: UNAVAILABLE: {exc}") from exc
    with pinned_channel(target, certificate, options=options) as channel:
        stub = fedseal_pb2_grpc.AggregatorStub(channel)  # type: ignore[no-untyped-call]
        request = fedseal_pb2.AttestationRequest(challenge=challenge)
        try:
            response = stub.GetAttestation(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise EndpointError(f"GetAttestation on {endpoint} failed: {_rpc_error(exc)}") from exc
    data = response.evidence_bundle
    if not isinstance(data, bytes):
        raise BundleFormatError("GetAttestation answer carries no evidence bundle bytes")
    bundle = EvidenceBundle.from_bytes(data)
    named = bundle.tls_certificate_sha256
    if named is not None and named != certificate.sha256:
        raise BindingMismatchError(
            f"{endpoint} presented TLS certificate sha256:{certificate.sha256.hex()}, but the evidence "
            f"names sha256:{named.hex()}: something between here and the enclave terminates TLS"
        )
    return bundle


def _rpc_error(exc: grpc.RpcError) -> str:
    """Status code and (shortened, server-chosen) details of a failed call."""
    if isinstance(exc, grpc.Call):
        details = exc.details() or ""
        if len(details) > 200:
            details = details[:197] + "..."
        return f"{exc.code().name}: {details}" if details else exc.code().name
    return type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``fedseal-attest`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"fedseal-attest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version exit through here with status 0
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    commands = {"verify": _verify_command, "collect": _collect_command, "measure": measure_command}
    if args.command not in commands:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return commands[args.command](args)
    except _UsageError as exc:
        print(f"fedseal-attest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _verify_command(args: argparse.Namespace) -> int:
    policy = _load_policy(args)
    as_json: bool = args.json
    now = _parse_now(args.now)
    fetcher: CollateralFetcher = OfflineFetcher() if args.offline else CachingFetcher(HttpFetcher())
    context = _Context(
        now=now if now is not None else datetime.datetime.now(datetime.UTC),
        pinned=now is not None,
        offline=args.offline,
    )

    if args.bundle is not None:
        if args.challenge is None:
            raise _UsageError("--bundle needs --challenge HEX (the challenge it was made for)")
        if args.save_bundle is not None:
            raise _UsageError("--save-bundle goes with --endpoint, not --bundle")
        challenge = _parse_challenge(args.challenge)
        data = _read_bundle_file(args.bundle)
        try:
            bundle = EvidenceBundle.from_bytes(data)
        except BundleFormatError as exc:
            return _report_failure(exc, None, policy, challenge, as_json, context)
    else:
        if args.challenge is not None:
            raise _UsageError("--challenge goes with --bundle; --endpoint always makes a fresh random one")
        if not args.timeout > 0:
            raise _UsageError("--timeout must be a positive number of seconds")
        try:
            parse_endpoint(args.endpoint)
        except FormatError as exc:
            raise _UsageError(str(exc)) from exc
        # A fresh challenge per run: it is what makes a replayed old answer detectable.
        challenge = secrets.token_bytes(CHALLENGE_SIZE)
        try:
            bundle = fetch_bundle(args.endpoint, challenge, args.timeout)
        except EndpointError as exc:
            print(f"fedseal-attest: cannot get an attestation: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        except (BundleFormatError, BindingMismatchError) as exc:
            return _report_failure(exc, None, policy, challenge, as_json, context)
        if args.save_bundle is not None:
            _save_bundle(args.save_bundle, bundle, challenge)

    try:
        verified = verify_bundle(bundle, policy, challenge, now=context.now, fetcher=fetcher)
    except AttestationError as exc:
        return _report_failure(exc, bundle, policy, challenge, as_json, context)
    _report_success(verified, bundle, policy, as_json, context)
    return EXIT_OK


@dataclass(frozen=True)
class _Context:
    """How this run verifies: at what time, and whether it may fetch collateral."""

    now: datetime.datetime
    pinned: bool
    offline: bool

    @property
    def iso_time(self) -> str:
        return self.now.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")

    @property
    def collateral(self) -> str:
        if self.offline:
            return "offline (stapled material only)"
        return "online (vendor services over HTTPS, cached)"


def _parse_now(text: str | None) -> datetime.datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _UsageError(f"--now {text!r} is not an ISO 8601 time (e.g. 2026-06-01T00:00:00Z)") from None
    if moment.tzinfo is None:
        raise _UsageError("--now needs a UTC offset (e.g. 2026-06-01T00:00:00Z or +02:00)")
    # Its UTC time is reported, and verification adds leeways (days at most) to it: keep a
    # year clear of the ends of datetime's range rather than overflow later.
    try:
        year = moment.astimezone(datetime.UTC).year
    except OverflowError:
        year = datetime.MINYEAR
    if not datetime.MINYEAR < year < datetime.MAXYEAR:
        raise _UsageError(
            f"--now {text!r} is out of range: give a time between years "
            f"{datetime.MINYEAR + 1} and {datetime.MAXYEAR - 1}"
        )
    return moment


def _collect_command(args: argparse.Namespace) -> int:
    challenge = _parse_challenge(args.challenge)
    keys = BoundKeys(
        hpke_public_key=_parse_hex(args.hpke_public_key, X25519_PUBLIC_KEY_SIZE, "--hpke-public-key"),
        log_public_key=_parse_hex(args.log_public_key, ED25519_PUBLIC_KEY_SIZE, "--log-public-key"),
    )
    if args.out.is_dir() or not args.out.parent.is_dir():
        raise _UsageError(f"--out {args.out} must name a file in an existing directory")
    try:
        with hardware_collectors(
            GpuCollector(args.gpu_collector), CpuTee(args.cpu_tee), nvattest=args.nvattest
        ) as collectors:
            bundle = build_bundle(keys, challenge, collectors)
    except EvidenceCollectionError as exc:
        print(f"fedseal-attest: cannot collect evidence: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _save_bundle(args.out, bundle, challenge)
    return EXIT_OK


def _parse_hex(text: str, size: int, option: str) -> bytes:
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        value = b""
    if len(value) != size:
        raise _UsageError(f"{option} must be {2 * size} hex digits ({size} bytes)")
    return value


def _load_policy(args: argparse.Namespace) -> Policy:
    try:
        if args.policy is not None:
            return Policy.from_file(args.policy)
        return load_builtin_policy(args.builtin_policy or "default")
    except PolicyError as exc:
        raise _UsageError(str(exc)) from exc


def _parse_challenge(text: str) -> bytes:
    try:
        challenge = bytes.fromhex(text.strip())
    except ValueError:
        challenge = b""
    if len(challenge) != CHALLENGE_SIZE:
        raise _UsageError(f"--challenge must be {2 * CHALLENGE_SIZE} hex digits ({CHALLENGE_SIZE} bytes)")
    return challenge


def _read_bundle_file(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            # One byte over the limit is enough for from_bytes to refuse it by size.
            return handle.read(MAX_BUNDLE_SIZE + 1)
    except OSError as exc:
        raise _UsageError(f"cannot read bundle file {path}: {exc.strerror or exc}") from exc


def _save_bundle(path: Path, bundle: EvidenceBundle, challenge: bytes) -> None:
    challenge_path = path.with_name(path.name + ".challenge")
    try:
        path.write_bytes(bundle.to_bytes())
        challenge_path.write_text(challenge.hex() + "\n", encoding="ascii")
    except OSError as exc:
        raise _UsageError(f"cannot save bundle to {path}: {exc.strerror or exc}") from exc
    print(f"saved bundle to {path} and its challenge to {challenge_path}", file=sys.stderr)


def _hint(exc: AttestationError) -> str | None:
    if isinstance(exc, SimulatedEvidenceRefusedError):
        return _SIMULATED_HINT
    if isinstance(exc, UnsupportedEvidenceError):
        return _UNSUPPORTED_HINT
    return None


def _report_failure(
    exc: AttestationError,
    bundle: EvidenceBundle | None,
    policy: Policy,
    challenge: bytes,
    as_json: bool,
    context: _Context,
) -> int:
    hint = _hint(exc)
    if as_json:
        report = _json_report(
            verified=False,
            bundle=bundle,
            policy=policy,
            challenge=challenge,
            checks=exc.checks,
            insecure=None,
            error={"type": type(exc).__name__, "message": str(exc), "hint": hint},
            context=context,
        )
        _print_json(report, sys.stdout)
        return EXIT_FAILED
    _print_header(bundle, policy, challenge, context)
    if exc.checks:
        print(_render_table(exc.checks))
        print()
    print(f"NOT VERIFIED: {type(exc).__name__}: {exc}")
    if hint is not None:
        print(f"hint: {hint}")
    return EXIT_FAILED


def _report_success(
    verified: VerifiedAttestation, bundle: EvidenceBundle, policy: Policy, as_json: bool, context: _Context
) -> None:
    if as_json:
        report = _json_report(
            verified=True,
            bundle=bundle,
            policy=policy,
            challenge=verified.challenge,
            checks=verified.checks,
            insecure=verified.insecure,
            error=None,
            context=context,
        )
        _print_json(report, sys.stdout)
        return
    _print_header(bundle, policy, verified.challenge, context)
    print(_render_table(verified.checks))
    print()
    print(f"VERIFIED under policy {verified.policy_name!r}")
    print(f"  encryption (HPKE) key: {verified.hpke_public_key.hex()}")
    print(f"  log signing key:       {verified.log_public_key.hex()}")
    if verified.tls_certificate_sha256 is not None:
        print(f"  TLS certificate:       sha256:{verified.tls_certificate_sha256.hex()}")
    if verified.insecure:
        print(
            "WARNING: INSECURE: accepted SIMULATED TEE evidence. Nothing protects data sent "
            "to this aggregator. Development only."
        )


def _print_header(bundle: EvidenceBundle | None, policy: Policy, challenge: bytes, context: _Context) -> None:
    print(f"policy:    {policy.name} ({policy.source})")
    print(f"challenge: {challenge.hex()}")
    print(f"time:      {context.iso_time} ({'pinned with --now' if context.pinned else 'current time'})")
    print(f"fetching:  {context.collateral}")
    if bundle is not None:
        print(f"bundle:    sha256:{bundle.digest().hex()}")
    print()


def _short(text: str) -> str:
    # Full 64-digit hex values make the table wrap on any terminal; the JSON report keeps
    # them whole, and 16 digits are plenty to see that two values differ.
    if len(text) > 24 and all(c in "0123456789abcdef" for c in text):
        return text[:16] + "..."
    return text


def _render_table(checks: Sequence[CheckResult]) -> str:
    header = ("CHECK", "EXPECTED", "FOUND", "VERDICT")
    rows = [header] + [
        (c.name, _short(c.expected), _short(c.found), "pass" if c.passed else "FAIL") for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(
            [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]), row[3]]
        ).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def _json_report(
    *,
    verified: bool,
    bundle: EvidenceBundle | None,
    policy: Policy,
    challenge: bytes,
    checks: Sequence[CheckResult],
    insecure: bool | None,
    error: dict[str, str | None] | None,
    context: _Context,
) -> dict[str, object]:
    return {
        "verification_time": context.iso_time,
        "verification_time_pinned": context.pinned,
        "offline": context.offline,
        "verified": verified,
        "insecure": insecure,
        "policy": {"name": policy.name, "source": policy.source},
        "challenge": challenge.hex(),
        "bundle_sha256": bundle.digest().hex() if bundle is not None else None,
        "hpke_public_key": bundle.hpke_public_key.hex() if bundle is not None else None,
        "log_public_key": bundle.log_public_key.hex() if bundle is not None else None,
        "evidence_kinds": [e.kind.value for e in bundle.evidence] if bundle is not None else [],
        "checks": [
            {"name": c.name, "expected": c.expected, "found": c.found, "passed": c.passed} for c in checks
        ],
        "error": error,
    }


def _print_json(report: dict[str, object], stream: TextIO) -> None:
    stream.write(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

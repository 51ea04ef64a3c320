"""`fedseal-aggregator check-hardware`: the operator's checklist on the confidential host.

Run it inside the confidential VM before the aggregator is deployed (and after any change
of image, driver or firmware). It does what start-up does, in order, and reports each
step instead of stopping the service:

1. **preflight**: the CPU TEE guest interface and NVML's CC state (``_preflight.py``);
2. **collect**: fresh throw-away keys and a random challenge of its own, and evidence from
   the hardware collectors for them (GPU first, the CPU report covering it);
3. **staple**: the collateral the collectors stapled (RIMs, OCSP answers, the VCEK chain,
   Intel's TCB info, QE identity, CRLs and their issuer chains, with ``--nras`` the NRAS
   token and key set), each with its age and time left; with ``--nras``, GPU evidence
   without a token fails this step;
4. **verify**: the bundle verified with :func:`attestation.verify_bundle` under the
   production policy, with the collateral source that policy gives a client (stapled
   only unless it or ``--online`` says otherwise): exactly what a client would do;
5. **measurement**: the launch measurement (SEV-SNP MEASUREMENT, TDX MRTD and RTMRs) to pin
   in the policy, and whether the policy pins it.

It never sets the GPU ready state and never listens: the keys it makes are discarded.
Exit status 0 when every step passed, 1 when one failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import enum
import json
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509 import ocsp

from aggregator._cli import preflight_host
from aggregator._preflight import CpuTee as CvmTee
from aggregator._preflight import GpuRequirement, Preflight, PreflightError, PreflightMode, PreflightReport
from attestation import (
    AttestationError,
    CheckResult,
    CollateralCache,
    CollateralFetcher,
    Evidence,
    EvidenceBundle,
    EvidenceCollectionError,
    EvidenceCollector,
    EvidenceKind,
    HttpFetcher,
    Policy,
    PolicyError,
    StapledCollateralExpiredError,
    build_bundle,
    collateral_fetcher,
    load_builtin_policy,
    verify_bundle,
)
from attestation._hardware import CpuTee, GpuCollector, hardware_collectors
from attestation._stapled import decode_stapled
from attestation.cpu import SnpCertGuid, parse_sev_snp_payload, parse_tdx_quote, tdx_collateral_requests
from attestation.nvidia import (
    NrasStapleOutcome,
    nras_key_set_certificates,
    nras_token_validity,
    parse_nvidia_gpu_payload,
)
from fedseal.binding import CHALLENGE_SIZE, BoundKeys
from fedseal.roundconfig import ConfigError

__all__ = ["ChecklistReport", "StepStatus", "main", "run", "run_checklist"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class StepStatus(enum.Enum):
    PASSED = "pass"
    FAILED = "FAIL"
    NOT_RUN = "not run"


@dataclass(frozen=True)
class Step:
    name: str
    status: StepStatus
    summary: str
    checks: tuple[CheckResult, ...] = ()


@dataclass(frozen=True)
class StapledItem:
    """One stapled collateral item and its validity window (None where it has none)."""

    kind: EvidenceKind
    item: str
    issued: datetime.datetime | None
    expires: datetime.datetime | None


@dataclass(frozen=True)
class Measurement:
    """A launch measurement the evidence reports; ``pinned`` is None where the policy does not check it."""

    kind: EvidenceKind
    register: str
    value: bytes
    pinned: bool | None


@dataclass(frozen=True)
class ChecklistReport:
    policy_name: str
    collateral_source: str
    now: datetime.datetime
    steps: tuple[Step, ...]
    stapled: tuple[StapledItem, ...] = ()
    measurements: tuple[Measurement, ...] = ()

    @property
    def passed(self) -> bool:
        return all(step.status is StepStatus.PASSED for step in self.steps)

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "policy": self.policy_name,
            "collateral_source": self.collateral_source,
            "time": _iso(self.now),
            "steps": [
                {
                    "name": s.name,
                    "status": s.status.value,
                    "summary": s.summary,
                    "checks": [
                        {"name": c.name, "expected": c.expected, "found": c.found, "passed": c.passed}
                        for c in s.checks
                    ],
                }
                for s in self.steps
            ],
            "stapled": [
                {
                    "evidence": i.kind.value,
                    "item": i.item,
                    "issued": _iso(i.issued) if i.issued else None,
                    "expires": _iso(i.expires) if i.expires else None,
                    "age_seconds": int((self.now - i.issued).total_seconds()) if i.issued else None,
                    "seconds_left": int((i.expires - self.now).total_seconds()) if i.expires else None,
                }
                for i in self.stapled
            ],
            "measurements": [
                {"evidence": m.kind.value, "register": m.register, "value": m.value.hex(), "pinned": m.pinned}
                for m in self.measurements
            ],
        }

    def render(self) -> str:
        lines = [
            f"policy:     {self.policy_name} (collateral: {self.collateral_source})",
            f"time:       {_iso(self.now)}",
            "",
        ]
        for step in self.steps:
            lines.append(f"[{step.status.value:>7}] {step.name}: {step.summary}")
            for check in step.checks:
                if not check.passed or step.status is StepStatus.FAILED:
                    verdict = "pass" if check.passed else "FAIL"
                    lines.append(
                        f"            {verdict}  {check.name}: {check.found} (expected {check.expected})"
                    )
        if self.stapled:
            lines += ["", "stapled collateral:"]
            for i in self.stapled:
                if i.issued is None or i.expires is None:  # RIMs (their signing chain bounds them)
                    lines.append(f"  {i.kind.value:<12} {i.item}: stapled (no dates of its own)")
                    continue
                age, left = _span(self.now - i.issued), _span(i.expires - self.now)
                lines.append(f"  {i.kind.value:<12} {i.item}: issued {age} ago, expires in {left}")
        if self.measurements:
            lines += ["", "launch measurement to pin:"]
            for m in self.measurements:
                pinned = {
                    True: "pinned by the policy",
                    False: "NOT pinned by the policy",
                    None: "not checked",
                }
                lines.append(f"  {m.kind.value:<12} {m.register}: {m.value.hex()} ({pinned[m.pinned]})")
        lines += ["", "READY: a client with this policy accepts this host" if self.passed else "NOT READY"]
        return "\n".join(lines)


def run_checklist(
    preflight: Preflight,
    collectors: Callable[[PreflightReport], Sequence[EvidenceCollector]],
    policy: Policy,
    *,
    verify_fetcher: CollateralFetcher,
    collateral_source: str,
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    require_nras: bool = False,
    nras_failures: Sequence[str] = (),
) -> ChecklistReport:
    """Run the five steps (see the module docstring); never raises for a failing host.

    ``collectors`` opens the evidence collectors once the preflight passed, given its report.
    With ``require_nras``, GPU evidence must carry an NRAS token; ``nras_failures`` (read
    after collecting) says why the stapler left it out.
    """
    steps: list[Step] = []

    def report(
        *, stapled: Sequence[StapledItem] = (), measured: Sequence[Measurement] = ()
    ) -> ChecklistReport:
        names = ("preflight", "collect", "staple", "verify", "measurement")
        done = {s.name for s in steps}
        rest = [Step(n, StepStatus.NOT_RUN, "an earlier step failed") for n in names if n not in done]
        return ChecklistReport(
            policy.name, collateral_source, now(), (*steps, *rest), tuple(stapled), tuple(measured)
        )

    try:
        found = preflight.check()
    except PreflightError as exc:
        steps.append(Step("preflight", StepStatus.FAILED, f"{type(exc).__name__}: {exc}", tuple(exc.checks)))
        return report()
    cvm = found.cvm.tee.value if found.cvm else "none"
    gpus = (
        "no GPU (a GPU-less host, as declared)"
        if found.gpu_requirement is GpuRequirement.NONE
        else f"{len(found.gpus)} GPU(s) in CC mode"
    )
    steps.append(Step("preflight", StepStatus.PASSED, f"CPU TEE {cvm}, {gpus}", found.checks))

    keys = BoundKeys(
        hpke_public_key=X25519PrivateKey.generate().public_key().public_bytes_raw(),
        log_public_key=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
    )
    challenge = secrets.token_bytes(CHALLENGE_SIZE)
    try:
        bundle = build_bundle(keys, challenge, collectors(found))
    except StapledCollateralExpiredError as exc:
        steps.append(Step("collect", StepStatus.PASSED, "the hardware answered"))
        steps.append(Step("staple", StepStatus.FAILED, f"{type(exc).__name__}: {exc}"))
        return report()
    except EvidenceCollectionError as exc:
        steps.append(Step("collect", StepStatus.FAILED, f"{type(exc).__name__}: {exc}"))
        return report()
    kinds = ", ".join(e.kind.value for e in bundle.evidence)
    steps.append(Step("collect", StepStatus.PASSED, f"evidence: {kinds}"))

    at = now()
    stapled = _stapled(bundle)
    expired = [i.item for i in stapled if i.expires is not None and i.expires <= at]
    tokens = sum(1 for i in stapled if i.item == "NRAS token")
    gpu_items = sum(1 for e in bundle.evidence if e.kind is EvidenceKind.NVIDIA_GPU)
    if expired:
        status, summary = StepStatus.FAILED, f"expired: {', '.join(expired)}"
    elif require_nras and tokens < gpu_items:
        why = f": {nras_failures[-1]}" if nras_failures else ""
        status, summary = StepStatus.FAILED, f"--nras: no NRAS token stapled to the GPU evidence{why}"
    else:
        status, summary = StepStatus.PASSED, f"{len(stapled)} item(s), all within validity"
    steps.append(Step("staple", status, summary))

    try:
        verified = verify_bundle(bundle, policy, challenge, now=at, fetcher=verify_fetcher)
    except AttestationError as exc:
        steps.append(Step("verify", StepStatus.FAILED, f"{type(exc).__name__}: {exc}", tuple(exc.checks)))
    else:
        steps.append(
            Step("verify", StepStatus.PASSED, f"accepted under policy {policy.name!r}", verified.checks)
        )

    measured = _measurements(bundle, policy)
    unpinned = [f"{m.kind.value} {m.register}" for m in measured if m.pinned is False]
    if not measured:
        status, summary = StepStatus.FAILED, "no CPU TEE evidence: nothing measures the VM's software"
    elif unpinned:
        status, summary = StepStatus.FAILED, f"not in the policy's allow-list: {', '.join(unpinned)}"
    else:
        status, summary = StepStatus.PASSED, "every checked register is pinned by the policy"
    steps.append(Step("measurement", status, summary))
    return report(stapled=stapled, measured=measured)


def _stapled(bundle: EvidenceBundle) -> list[StapledItem]:
    items: list[StapledItem] = []
    for evidence in bundle.evidence:
        if evidence.kind is EvidenceKind.NVIDIA_GPU:
            gpu = parse_nvidia_gpu_payload(evidence.payload)
            items += [StapledItem(evidence.kind, f"RIM {rim.id}", None, None) for rim in gpu.rims]
            for blob in gpu.ocsp_responses:
                answer = ocsp.load_der_ocsp_response(blob)
                if answer.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
                    items.append(
                        StapledItem(evidence.kind, f"OCSP {answer.response_status.name}", None, None)
                    )
                    continue
                items.append(
                    StapledItem(
                        evidence.kind,
                        f"OCSP answer for serial {answer.serial_number:x}",
                        answer.this_update_utc,
                        answer.next_update_utc,
                    )
                )
            if gpu.nras_token is not None:
                items.append(_nras_token_item(evidence.kind, gpu.nras_token))
            if gpu.nras_jwks is not None:
                items.append(_nras_key_set_item(evidence.kind, gpu.nras_jwks))
        elif evidence.kind is EvidenceKind.AMD_SEV_SNP:
            _, table = parse_sev_snp_payload(evidence.payload)
            for guid in SnpCertGuid:
                if guid.value in table:
                    cert = x509.load_der_x509_certificate(table[guid.value])
                    items.append(
                        StapledItem(
                            evidence.kind, guid.name, cert.not_valid_before_utc, cert.not_valid_after_utc
                        )
                    )
        elif evidence.kind is EvidenceKind.INTEL_TDX:
            items += _tdx_stapled(evidence)
    return items


def _tdx_stapled(evidence: Evidence) -> list[StapledItem]:
    """Intel's PCS answers stapled beside the quote, each with its validity window."""
    if evidence.collateral is None:
        return []
    stapled = decode_stapled(evidence.collateral)
    items: list[StapledItem] = []
    for item in tdx_collateral_requests(parse_tdx_quote(evidence.payload)).items():
        body = stapled.get(item.request.staple_key())
        if body is not None:
            window = item.window(body)
            items.append(StapledItem(evidence.kind, item.what, window.issued, window.expires))
    return items


def _nras_token_item(kind: EvidenceKind, token: str) -> StapledItem:
    try:
        issued, expires = nras_token_validity(token)
    except AttestationError:  # the verify step names what is wrong with it
        return StapledItem(kind, "NRAS token (unreadable)", None, None)
    return StapledItem(kind, "NRAS token", issued, expires)


def _nras_key_set_item(kind: EvidenceKind, key_set: bytes) -> StapledItem:
    """The key set dated by its keys' x5c certificates (the youngest issued, the first to expire)."""
    try:
        certs = nras_key_set_certificates(key_set)
    except AttestationError:
        return StapledItem(kind, "NRAS key set (unreadable)", None, None)
    if not certs:
        return StapledItem(kind, "NRAS key set", None, None)
    return StapledItem(
        kind,
        "NRAS key set",
        max(c.not_valid_before_utc for c in certs),
        min(c.not_valid_after_utc for c in certs),
    )


def _measurements(bundle: EvidenceBundle, policy: Policy) -> list[Measurement]:
    measured: list[Measurement] = []
    for evidence in bundle.evidence:
        if evidence.kind is EvidenceKind.AMD_SEV_SNP:
            report, _ = parse_sev_snp_payload(evidence.payload)
            snp = policy.amd_sev_snp
            pinned = None if snp is None else report.measurement in snp.measurements
            measured.append(Measurement(evidence.kind, "MEASUREMENT", report.measurement, pinned))
        elif evidence.kind is EvidenceKind.INTEL_TDX:
            quote = parse_tdx_quote(evidence.payload)
            tdx = policy.intel_tdx
            measured.append(
                Measurement(
                    evidence.kind, "MRTD", quote.mr_td, None if tdx is None else quote.mr_td in tdx.mrtd
                )
            )
            for index, value in enumerate(quote.rtmrs):
                allowed = None if tdx is None else tdx.rtmrs.get(index)
                measured.append(
                    Measurement(
                        evidence.kind, f"RTMR{index}", value, None if allowed is None else value in allowed
                    )
                )
    return measured


# --------------------------------------------------------------------------- command line

_EPILOG = """\
exit status:
  0  every step passed: a client with this policy accepts this host
  1  a step failed (the report names it and every failing check)
  2  usage error: bad arguments, a policy that does not load

examples:
  fedseal-aggregator check-hardware --policy policy.json
  fedseal-aggregator check-hardware --policy policy.json --cpu-tee sev-snp --json
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedseal-aggregator check-hardware",
        description="On the confidential host: preflight, collect, staple, and verify this host's own "
        "evidence under the production policy exactly as a client would; report what passed, the "
        "stapled collateral's ages and the launch measurement to pin. Sets no GPU ready state and "
        "serves nothing.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    policies = p.add_mutually_exclusive_group()
    policies.add_argument("--policy", type=Path, metavar="FILE", help="the production policy clients use")
    policies.add_argument("--builtin-policy", metavar="NAME", help="a shipped policy (default: 'default')")
    p.add_argument(
        "--cpu-tee",
        choices=["auto", *(c.value for c in CpuTee if c is not CpuTee.NONE)],
        default="auto",
        help="the CPU TEE to collect from (default: the one the preflight finds)",
    )
    p.add_argument(
        "--gpu-collector",
        choices=[c.value for c in GpuCollector],
        default=GpuCollector.NV_LOCAL_GPU_VERIFIER.value,
        help="as for the aggregator; none: a host without GPUs (default: %(default)s)",
    )
    p.add_argument(
        "--coco-agent-url",
        metavar="URL",
        help="as for the aggregator: the attestation agent with --cpu-tee coco-sev-snp|coco-tdx",
    )
    p.add_argument("--nvattest", default="nvattest", metavar="PATH", help="the nvattest executable")
    p.add_argument("--min-gpus", type=int, default=1, metavar="N", help="GPUs required (default: 1)")
    p.add_argument(
        "--online",
        action="store_true",
        help="verify as a client that fetches missing collateral (default: as the policy says)",
    )
    p.add_argument(
        "--nras",
        action="store_true",
        help="staple an NVIDIA NRAS token as `fedseal-aggregator --nras` does, and fail the staple "
        "step when none could be stapled",
    )
    p.add_argument("--json", action="store_true", help="print a JSON report")
    return p


def main(argv: list[str] | None = None) -> int:
    return run(argv)


def run(
    argv: list[str] | None = None,
    *,
    preflight: Preflight | None = None,
    collectors: Sequence[EvidenceCollector] | None = None,
    network: CollateralFetcher | None = None,
    now: Callable[[], datetime.datetime] | None = None,
) -> int:
    """main() with the hardware and the network injectable: tests pass the fake device trees,
    collectors over them and a test fetcher; the command always uses the real host."""
    args = _parser().parse_args(argv)
    try:
        policy = (
            Policy.from_file(args.policy)
            if args.policy
            else load_builtin_policy(args.builtin_policy or "default")
        )
        if args.min_gpus < 0:
            raise PolicyError("--min-gpus must be >= 0")
        verify_fetcher = collateral_fetcher(
            policy.collateral, online=True if args.online else None, fetcher=network if args.online else None
        )
        # "auto" takes the CPU TEE the device tree shows; a pod's agent is named, never guessed.
        chosen = CpuTee(args.cpu_tee) if args.cpu_tee != "auto" else CpuTee.SEV_SNP
        gpus, coco_agent = preflight_host(GpuCollector(args.gpu_collector), chosen, args.coco_agent_url)
    except (PolicyError, ConfigError) as exc:
        print(f"fedseal-aggregator check-hardware: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    source = "online" if args.online else policy.collateral.source.value
    check = (
        preflight
        if preflight is not None
        else Preflight(PreflightMode.HARDWARE, min_gpus=args.min_gpus, gpus=gpus, coco_agent=coco_agent)
    )
    nras_failures: list[str] = []

    def nras_outcome(outcome: NrasStapleOutcome, reason: str) -> None:
        if outcome is not NrasStapleOutcome.STAPLED:
            nras_failures.append(reason)

    with contextlib.ExitStack() as stack:

        def open_collectors(found: PreflightReport) -> Sequence[EvidenceCollector]:
            if collectors is not None:
                return collectors
            # The CPU TEE the preflight found, unless --cpu-tee names one.
            cpu = CpuTee(args.cpu_tee) if args.cpu_tee != "auto" else _collector_tee(found)
            fetcher = network if network is not None else HttpFetcher()
            cache = CollateralCache(fetcher)
            gpu = GpuCollector(args.gpu_collector)
            return stack.enter_context(
                hardware_collectors(
                    gpu,
                    cpu,
                    nvattest=args.nvattest,
                    coco_agent_url=args.coco_agent_url,
                    collateral=cache,
                    nras=fetcher if args.nras else None,
                    on_nras=nras_outcome,
                )
            )

        result = run_checklist(
            check,
            open_collectors,
            policy,
            verify_fetcher=verify_fetcher,
            collateral_source=source,
            require_nras=args.nras,
            nras_failures=nras_failures,
            **_clock(now),
        )
    if args.json:
        print(json.dumps(result.to_json_obj(), indent=2, sort_keys=True))
    else:
        print(result.render())
    return EXIT_OK if result.passed else EXIT_FAILED


def _collector_tee(found: PreflightReport) -> CpuTee:
    if found.cvm is None:
        return CpuTee.NONE
    return CpuTee.SEV_SNP if found.cvm.tee is CvmTee.AMD_SEV_SNP else CpuTee.TDX


def _clock(now: Callable[[], datetime.datetime] | None) -> dict[str, Callable[[], datetime.datetime]]:
    return {} if now is None else {"now": now}


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _span(delta: datetime.timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds >= 2 * 86400:
        return f"{sign}{seconds // 86400}d"
    if seconds >= 2 * 3600:
        return f"{sign}{seconds // 3600}h"
    return f"{sign}{seconds // 60}m"

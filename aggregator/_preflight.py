"""Start-up preflight: refuse to serve anywhere but a confidential VM with CC-mode GPUs.

The service runs it in three steps, before it listens::

    preflight = Preflight(PreflightMode.HARDWARE)   # or INSECURE_DEV with --insecure-simulated-tee
    report = preflight.check()                      # raises PreflightError; touches nothing
    # ... make the keys, collect evidence for a challenge of our own, and verify it with
    # attestation.verify_bundle() under the operator's policy: the self-attestation ...
    release = preflight.release_gpus(report, self_attestation, keys.bound)
    # ... only now start the gRPC server

**check()** (hardware mode) requires:

- a CPU TEE guest: AMD SEV-SNP (``/dev/sev-guest``) or Intel TDX (``/dev/tdx_guest``), seen
  as a device node, as a registered misc device in ``/sys/class/misc``, or as the provider
  of the configfs-tsm report interface (``/sys/kernel/config/tsm/report``); the signals must
  not contradict each other. Inside a Confidential Containers pod (``coco_agent``), which
  sees none of these, the sign is the pod's attestation agent instead: its ``/info`` must
  name the expected TEE (never the agent's insecure ``sample`` fallback), and it must answer
  a fresh random nonce with a report or quote of that TEE that parses and carries the
  nonce as its report data. Its signature is checked later, by the self-attestation;
- NVML's confidential-computing state: GPUs CC-capable, CC feature on, production (not
  simulation) environment, developer-tools mode off, and the CPU TEE NVML reports matches
  the one found above. NVML reports this state for the system, not per GPU; each GPU's own
  CC mode is proven by its attestation report in the self-attestation, which is why the
  ready state waits for it;
- at least ``min_gpus`` GPUs, each Hopper or newer.

Unless the operator declared a GPU-less host (``GpuRequirement.NONE``, the aggregator's
``--gpu-collector none``): then NVML is neither imported nor called, the evidence carries
no GPU, and release_gpus() opens nothing. Without that declaration a missing GPU is refused.

**release_gpus()** sets NVML's GPU ready state (``nvmlSystemSetConfComputeGpusReadyState``)
only with a :class:`~attestation.VerifiedAttestation` of *this* enclave's keys that is not
insecure and carries verified NVIDIA GPU evidence and the CPU TEE's evidence (on a GPU-less
host: the CPU TEE's evidence and no GPU evidence, and nothing is set). A CC-mode
GPU refuses work until the ready state is set, so nothing runs on it before the aggregator
has proven, under its own policy, what it runs on.

**Insecure dev mode** (``PreflightMode.INSECURE_DEV``, which goes with the insecure
simulated TEE) probes nothing, never imports NVML and never sets the ready state. The
report says so; what says so to clients and auditors is the evidence itself, which is
simulated and labelled INSECURE in the ``enclave_started`` log entry.

The filesystem root and the NVML module are constructor parameters so that tests run this
logic against fake trees and a fake NVML object with the functions of ``pynvml``
(nvidia-ml-py, the ``hardware`` extra; imported only in hardware mode).
"""

from __future__ import annotations

import enum
import importlib
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from attestation import CheckResult, EvidenceKind, VerifiedAttestation
from attestation.cpu import (
    CPU_REPORT_DATA_SIZE,
    DEFAULT_COCO_AGENT_URL,
    CocoAgentError,
    CocoAgentUnavailableError,
    CocoEvidenceCollector,
    CocoEvidenceFormatError,
    CocoSampleEvidenceError,
    CocoTeeMismatchError,
)
from fedseal.binding import BoundKeys
from fedseal.errors import FedSealError

__all__ = [
    "AttestationAgentEvidenceError",
    "AttestationAgentTeeMismatchError",
    "AttestationAgentUnavailableError",
    "CocoAgent",
    "CpuTee",
    "CvmFinding",
    "GpuFinding",
    "GpuReadyStateError",
    "GpuRelease",
    "GpuRequirement",
    "GpuStateError",
    "InsecureAttestationAgentError",
    "NoConfidentialVmError",
    "NvmlApi",
    "NvmlUnavailableError",
    "Preflight",
    "PreflightError",
    "PreflightMode",
    "PreflightReport",
    "SelfAttestationError",
]

# NVML values (nvml.h; the names pynvml gives them). tests/test_preflight.py checks them
# against the installed binding.
NVML_CC_SYSTEM_GPUS_CC_CAPABLE = 1
NVML_CC_SYSTEM_CPU_CAPS_NONE = 0
NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV = 1
NVML_CC_SYSTEM_CPU_CAPS_INTEL_TDX = 2
NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV_SNP = 3
NVML_CC_SYSTEM_CPU_CAPS_AMD_SNP_VTOM = 4
NVML_CC_SYSTEM_FEATURE_ENABLED = 1
NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF = 0
NVML_CC_SYSTEM_ENVIRONMENT_SIM = 1
NVML_CC_SYSTEM_ENVIRONMENT_PROD = 2
NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE = 0
NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE = 1
NVML_DEVICE_ARCH_HOPPER = 9

_CPU_CAPS_NAMES = {
    NVML_CC_SYSTEM_CPU_CAPS_NONE: "none",
    NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV: "AMD SEV (without SNP)",
    NVML_CC_SYSTEM_CPU_CAPS_INTEL_TDX: "Intel TDX",
    NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV_SNP: "AMD SEV-SNP",
    NVML_CC_SYSTEM_CPU_CAPS_AMD_SNP_VTOM: "AMD SEV-SNP with a paravisor (vTOM)",
}
_ENVIRONMENT_NAMES = {0: "unavailable", NVML_CC_SYSTEM_ENVIRONMENT_SIM: "simulation", 2: "production"}

_TSM_REPORT_DIR = "sys/kernel/config/tsm/report"

# Only this module holds the token, so only Preflight makes reports and releases.
_TOKEN = object()


class PreflightMode(enum.Enum):
    """How the aggregator starts: on CC hardware, or in explicit insecure development mode."""

    HARDWARE = "hardware"
    INSECURE_DEV = "insecure-dev"


class CpuTee(enum.Enum):
    """The CPU TEE a confidential VM runs in."""

    AMD_SEV_SNP = "amd-sev-snp"
    INTEL_TDX = "intel-tdx"

    @property
    def evidence_kind(self) -> EvidenceKind:
        return EvidenceKind.AMD_SEV_SNP if self is CpuTee.AMD_SEV_SNP else EvidenceKind.INTEL_TDX


# Where each TEE shows itself to the guest: device node, misc device, configfs-tsm provider.
_TEE_SIGNS = {
    CpuTee.AMD_SEV_SNP: ("dev/sev-guest", "sys/class/misc/sev-guest", "sev_guest"),
    CpuTee.INTEL_TDX: ("dev/tdx_guest", "sys/class/misc/tdx_guest", "tdx_guest"),
}
_NVML_CPU_CAPS = {
    CpuTee.AMD_SEV_SNP: NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV_SNP,
    CpuTee.INTEL_TDX: NVML_CC_SYSTEM_CPU_CAPS_INTEL_TDX,
}
# What the attestation agent's /info calls each TEE (kbs-types' Tee, lowercase).
_AGENT_TEE_NAMES = {CpuTee.AMD_SEV_SNP: "snp", CpuTee.INTEL_TDX: "tdx"}
# kbs-types: "only used for testing an attestation server"; the agent's fallback without a TEE.
_AGENT_SAMPLE_TEES = frozenset({"sample", "sampledevice"})
_COCO_CPU_TEE_CHOICES = {CpuTee.AMD_SEV_SNP: "coco-sev-snp", CpuTee.INTEL_TDX: "coco-tdx"}
_COCO_RUNTIME_CLASSES = {
    CpuTee.AMD_SEV_SNP: "kata-qemu-snp or kata-qemu-nvidia-gpu-snp",
    CpuTee.INTEL_TDX: "kata-qemu-tdx or kata-qemu-nvidia-gpu-tdx",
}


class GpuRequirement(enum.Enum):
    """What the preflight asks of the GPUs: production CC mode, or none at all.

    ``NONE`` is only ever the operator's explicit choice (``--gpu-collector none``): a
    CPU-only confidential VM or Confidential Containers pod. It is never a fallback.
    """

    CC_GPUS = "cc-gpus"
    NONE = "none"


@dataclass(frozen=True)
class CocoAgent:
    """The CPU TEE's sign inside a Confidential Containers pod: the attestation agent's API
    server at ``url`` (loopback only), attesting with ``tee``."""

    tee: CpuTee
    url: str = DEFAULT_COCO_AGENT_URL
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.tee, CpuTee):
            raise TypeError("CocoAgent.tee must be a CpuTee")
        self.collector()  # a URL or timeout the collector refuses is refused here, up front

    def collector(self) -> CocoEvidenceCollector:
        """Raises attestation.cpu.CocoAgentError for a URL that is not a loopback http:// one."""
        return CocoEvidenceCollector(self.tee.evidence_kind, url=self.url, timeout=self.timeout)


class PreflightError(FedSealError):
    """The host is not what a production aggregator may run on; ``checks`` says why."""

    def __init__(self, message: str, *, checks: Sequence[CheckResult] = ()) -> None:
        super().__init__(message)
        self.checks: tuple[CheckResult, ...] = tuple(checks)


class NoConfidentialVmError(PreflightError):
    """No SEV-SNP or TDX guest interface, or contradicting ones."""


class AttestationAgentUnavailableError(NoConfidentialVmError):
    """Inside a CoCo pod: no attestation agent answers at its address, or it answers an error."""


class AttestationAgentTeeMismatchError(NoConfidentialVmError):
    """Inside a CoCo pod: the attestation agent attests another TEE than the one configured."""


class InsecureAttestationAgentError(AttestationAgentTeeMismatchError):
    """Inside a CoCo pod: the attestation agent uses its insecure sample attester (it found
    no TEE), which proves nothing and is never accepted in hardware mode."""


class AttestationAgentEvidenceError(NoConfidentialVmError):
    """Inside a CoCo pod: the attestation agent's evidence does not parse as a report or
    quote of the expected TEE, or is not over the nonce the preflight asked for."""


class NvmlUnavailableError(PreflightError):
    """NVML cannot be used: nvidia-ml-py missing, driver library missing, or NVML failed."""


class GpuStateError(PreflightError):
    """A GPU is missing, too old, or not in production confidential-computing mode."""


class SelfAttestationError(PreflightError):
    """The self-attestation given to release_gpus() cannot justify opening the GPUs."""


class GpuReadyStateError(PreflightError):
    """NVML did not accept the GPU ready state, or did not report it set afterwards."""


class NvmlApi(Protocol):
    """The part of ``pynvml`` (nvidia-ml-py) the preflight uses; a fake implements the same.

    Failures raise (``pynvml.NVMLError`` subclasses in the real binding).
    """

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlSystemGetConfComputeCapabilities(self) -> Any: ...  # .cpuCaps, .gpusCaps
    def nvmlSystemGetConfComputeState(self) -> Any: ...  # .environment, .ccFeature, .devToolsMode
    def nvmlSystemGetConfComputeGpusReadyState(self) -> int: ...
    def nvmlSystemSetConfComputeGpusReadyState(self, state: int) -> Any: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUUID(self, handle: Any) -> str: ...
    def nvmlDeviceGetName(self, handle: Any) -> str: ...
    def nvmlDeviceGetArchitecture(self, handle: Any) -> int: ...


@dataclass(frozen=True)
class CvmFinding:
    """The CPU TEE found, and each interface that showed it (paths relative to the root)."""

    tee: CpuTee
    signs: tuple[str, ...]


@dataclass(frozen=True)
class GpuFinding:
    index: int
    uuid: str
    name: str
    architecture: int


@dataclass(frozen=True)
class PreflightReport:
    """What check() found. Only Preflight.check() makes one (it needs a private token).

    ``ready_at_start`` is NVML's GPU ready state before this process touched it (None when
    not probed): already set means something else in the VM opened the GPUs.
    ``gpu_requirement`` is NONE when the operator declared a GPU-less host (NVML not used).
    """

    _token: InitVar[object]
    mode: PreflightMode
    cvm: CvmFinding | None
    gpus: tuple[GpuFinding, ...]
    ready_at_start: bool | None
    checks: tuple[CheckResult, ...]
    gpu_requirement: GpuRequirement = GpuRequirement.CC_GPUS

    def __post_init__(self, _token: object) -> None:
        if _token is not _TOKEN:
            raise TypeError("PreflightReport is created only by Preflight.check()")

    @property
    def insecure(self) -> bool:
        """True in insecure dev mode: nothing was checked and nothing protects the data."""
        return self.mode is PreflightMode.INSECURE_DEV

    def to_json_obj(self) -> dict[str, Any]:
        """A JSON-ready summary for the service's structured log (nothing in it is secret)."""
        return {
            "mode": self.mode.value,
            "cpu_tee": self.cvm.tee.value if self.cvm else None,
            "cpu_tee_signs": list(self.cvm.signs) if self.cvm else [],
            "gpu_requirement": self.gpu_requirement.value,
            "gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name} for g in self.gpus],
            "gpus_ready_at_start": self.ready_at_start,
            "checks": [{"name": c.name, "found": c.found, "passed": c.passed} for c in self.checks],
        }


@dataclass(frozen=True)
class GpuRelease:
    """The outcome of release_gpus(). Only Preflight.release_gpus() makes one.

    ``released`` is True when the GPUs accept work because of this self-attestation (set by
    this call, or found already set); in insecure dev mode and on a GPU-less host it is
    False and NVML was not used.
    ``bundle_digest`` names the self-attestation's evidence bundle (empty in dev mode).
    """

    _token: InitVar[object]
    mode: PreflightMode
    released: bool
    already_ready: bool
    gpu_uuids: tuple[str, ...]
    bundle_digest: bytes

    def __post_init__(self, _token: object) -> None:
        if _token is not _TOKEN:
            raise TypeError("GpuRelease is created only by Preflight.release_gpus()")


_T = TypeVar("_T")


class _Checks:
    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def record(self, name: str, expected: str, found: str, passed: bool) -> bool:
        self.results.append(CheckResult(name=name, expected=expected, found=found, passed=passed))
        return passed

    def fail(self, error: type[PreflightError], message: str) -> PreflightError:
        return error(message, checks=self.results)


class Preflight:
    """The start-up checks of one aggregator process (see the module docstring).

    ``root`` is where ``/dev`` and ``/sys`` are looked up; ``nvml`` is a ``pynvml``-like
    object, by default the ``pynvml`` module, imported on first use in hardware mode.
    ``coco_agent``: the CPU TEE is shown by this attestation agent (a Confidential
    Containers pod), not by ``root``'s device tree. ``gpus``: ``GpuRequirement.NONE`` only
    where the operator declared a GPU-less host.
    """

    def __init__(
        self,
        mode: PreflightMode,
        *,
        root: Path = Path("/"),
        nvml: NvmlApi | None = None,
        min_gpus: int = 1,
        gpus: GpuRequirement = GpuRequirement.CC_GPUS,
        coco_agent: CocoAgent | None = None,
    ) -> None:
        if not isinstance(mode, PreflightMode):
            raise TypeError("mode must be a PreflightMode")
        if not isinstance(gpus, GpuRequirement):
            raise TypeError("gpus must be a GpuRequirement")
        if coco_agent is not None and not isinstance(coco_agent, CocoAgent):
            raise TypeError("coco_agent must be a CocoAgent")
        if min_gpus < 0:
            raise ValueError("min_gpus must be >= 0")
        self._mode = mode
        self._root = root
        self._nvml = nvml
        self._min_gpus = min_gpus
        self._gpus = gpus
        self._coco_agent = coco_agent

    @property
    def mode(self) -> PreflightMode:
        return self._mode

    # --- step 1 -------------------------------------------------------------------------

    def check(self) -> PreflightReport:
        """Check the CVM and the GPUs; raise a PreflightError subclass if either is wrong."""
        if self._mode is PreflightMode.INSECURE_DEV:
            return PreflightReport(_TOKEN, self._mode, None, (), None, ())
        checks = _Checks()
        cvm = (
            self._check_cvm(checks)
            if self._coco_agent is None
            else self._check_agent(self._coco_agent, checks)
        )
        if self._gpus is GpuRequirement.NONE:
            checks.record(
                "GPUs",
                "none: the operator declared a GPU-less host (--gpu-collector none)",
                "not probed (NVML not used); the evidence will carry no GPU",
                True,
            )
            return PreflightReport(
                _TOKEN, self._mode, cvm, (), None, tuple(checks.results), GpuRequirement.NONE
            )
        nvml = self._load_nvml(checks)
        gpus, ready = self._with_nvml(nvml, checks, lambda: self._check_gpus(nvml, cvm, checks))
        return PreflightReport(_TOKEN, self._mode, cvm, gpus, ready, tuple(checks.results))

    def _check_agent(self, agent: CocoAgent, checks: _Checks) -> CvmFinding:
        """The attestation agent as the CPU TEE's sign: its word (/info), then its evidence
        over a nonce of ours (a canned or replayed document cannot carry it)."""
        expected = _AGENT_TEE_NAMES[agent.tee]
        probed = f"the attestation agent at {agent.url}"
        runtime_class = _COCO_RUNTIME_CLASSES[agent.tee]
        collector = agent.collector()
        try:
            tee = collector.agent_tee()
        except CocoAgentUnavailableError as exc:
            checks.record("attestation agent /info", f"TEE {expected!r}", f"no answer: {exc}", False)
            raise checks.fail(
                AttestationAgentUnavailableError,
                f"{probed} is not usable ({exc}); in a Confidential Containers pod guest-components' "
                f"API server must run there (runtime class {runtime_class}), or give its address "
                "with --coco-agent-url",
            ) from None
        except CocoAgentError as exc:
            checks.record("attestation agent /info", f"TEE {expected!r}", f"malformed: {exc}", False)
            raise checks.fail(
                AttestationAgentEvidenceError,
                f"{probed} answered /info with nonsense ({exc}); check that guest-components' "
                "API server listens there and nothing else does",
            ) from None
        checks.record("attestation agent TEE (/info)", repr(expected), repr(tee), tee == expected)
        if tee in _AGENT_SAMPLE_TEES:
            raise checks.fail(
                InsecureAttestationAgentError,
                f"{probed} attests with its insecure {tee!r} attester: it found no TEE in the pod "
                f"VM, so nothing is protected; run the pod with runtime class {runtime_class}",
            )
        if tee != expected:
            raise checks.fail(
                AttestationAgentTeeMismatchError,
                f"{probed} attests TEE {tee!r}, but --cpu-tee {_COCO_CPU_TEE_CHOICES[agent.tee]} "
                f"expects {expected!r}: name the pod's TEE in --cpu-tee, or run the pod with "
                f"runtime class {runtime_class}",
            )
        nonce = secrets.token_bytes(CPU_REPORT_DATA_SIZE)
        try:
            evidence = collector.collect(nonce)
        except CocoSampleEvidenceError as exc:
            checks.record("attestation agent evidence", agent.tee.value, "sample (insecure)", False)
            raise checks.fail(
                InsecureAttestationAgentError,
                f"{probed} answered with insecure sample evidence ({exc}); run the pod with runtime "
                f"class {runtime_class}",
            ) from None
        except CocoTeeMismatchError as exc:
            checks.record("attestation agent evidence", agent.tee.value, exc.found, False)
            raise checks.fail(
                AttestationAgentTeeMismatchError,
                f"{probed} answered {exc.found} evidence where /info said {tee!r}: refusing an agent "
                "that contradicts itself",
            ) from None
        except CocoAgentUnavailableError as exc:
            checks.record("attestation agent evidence", agent.tee.value, f"no answer: {exc}", False)
            raise checks.fail(
                AttestationAgentUnavailableError,
                f"{probed} gave no evidence ({exc}); check the agent's log in the pod VM",
            ) from None
        except (CocoEvidenceFormatError, CocoAgentError) as exc:
            checks.record("attestation agent evidence", agent.tee.value, f"unusable: {exc}", False)
            raise checks.fail(
                AttestationAgentEvidenceError,
                f"{probed} answered evidence that is not a {agent.tee.value} report over the "
                f"nonce asked for ({exc}); update guest-components or check what listens there",
            ) from None
        checks.record(
            "attestation agent evidence",
            f"{agent.tee.value} evidence over a fresh nonce",
            f"{evidence.kind.value}, {len(evidence.payload)} bytes, over the nonce (signature "
            "checked by the self-attestation)",
            True,
        )
        return CvmFinding(tee=agent.tee, signs=(f"attestation agent at {agent.url} (TEE {tee!r})",))

    def _check_cvm(self, checks: _Checks) -> CvmFinding:
        found: dict[CpuTee, list[str]] = {}
        for tee, (device, misc, _) in _TEE_SIGNS.items():
            for sign in (device, misc):
                if os.path.lexists(self._root / sign):
                    found.setdefault(tee, []).append("/" + sign)
        provider = self._tsm_provider()
        if provider is not None:
            for tee, (_, _, name) in _TEE_SIGNS.items():
                if provider == name:
                    found.setdefault(tee, []).append(f"configfs-tsm provider {name}")
        described = "; ".join(f"{tee.value}: {', '.join(signs)}" for tee, signs in found.items()) or "nothing"
        if provider is not None and not any(provider == signs[2] for signs in _TEE_SIGNS.values()):
            described += f"; configfs-tsm provider {provider!r} (unknown)"
        ok = len(found) == 1
        checks.record("CPU TEE guest interface", "exactly one of SEV-SNP, TDX", described, ok)
        if not found:
            raise checks.fail(
                NoConfidentialVmError,
                "no confidential VM: neither an SEV-SNP guest (/dev/sev-guest) nor a TDX guest "
                "(/dev/tdx_guest) nor a configfs-tsm provider was found. Run the aggregator in an "
                "SEV-SNP or TDX confidential VM with the guest driver loaded (and its device passed "
                "into the container), or pass --insecure-simulated-tee for development only. "
                "Paravisor CVMs that expose SNP only through a vTPM are not supported yet.",
            )
        if not ok:
            raise checks.fail(
                NoConfidentialVmError,
                f"contradicting CPU TEE interfaces ({described}): refusing to guess which one holds",
            )
        ((tee, signs),) = found.items()
        return CvmFinding(tee=tee, signs=tuple(signs))

    def _tsm_provider(self) -> str | None:
        """The configfs-tsm provider name, or None when the interface is absent or mute.

        A provider is shown inside a report entry; read one that exists, else make a
        short-lived entry of our own (configfs creates its attributes) and remove it.
        """
        reports = self._root / _TSM_REPORT_DIR
        if not reports.is_dir():
            return None
        for entry in sorted(reports.iterdir()):
            provider = _read_text(entry / "provider")
            if provider:
                return provider
        entry = reports / f"fedseal-preflight-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            entry.mkdir()
        except OSError:
            return None
        try:
            return _read_text(entry / "provider") or None
        finally:
            entry.rmdir()

    def _load_nvml(self, checks: _Checks) -> NvmlApi:
        if self._nvml is None:
            try:
                self._nvml = cast(NvmlApi, importlib.import_module("pynvml"))
            except ImportError as exc:
                checks.record("NVML binding", "nvidia-ml-py installed", "not installed", False)
                raise checks.fail(
                    NvmlUnavailableError,
                    "nvidia-ml-py is not installed: install the aggregator with its 'hardware' extra "
                    "(pip install 'fedseal[hardware]')",
                ) from exc
        return self._nvml

    def _with_nvml(self, nvml: NvmlApi, checks: _Checks, body: Callable[[], _T]) -> _T:
        try:
            nvml.nvmlInit()
        except Exception as exc:  # pynvml makes one exception class per NVML return code
            checks.record("NVML initialisation", "NVML initialised", f"failed: {exc}", False)
            raise checks.fail(
                NvmlUnavailableError,
                f"NVML cannot start ({exc}): is the NVIDIA driver loaded and libnvidia-ml.so visible "
                "(in a container: the GPU and the driver's libraries passed in)?",
            ) from exc
        try:
            return body()
        finally:
            nvml.nvmlShutdown()

    def _check_gpus(
        self, nvml: NvmlApi, cvm: CvmFinding, checks: _Checks
    ) -> tuple[tuple[GpuFinding, ...], bool]:
        caps = _nvml_call(checks, "NVML CC capabilities", nvml.nvmlSystemGetConfComputeCapabilities)
        state = _nvml_call(checks, "NVML CC state", nvml.nvmlSystemGetConfComputeState)
        cpu_caps = int(caps.cpuCaps)
        ok = checks.record(
            "GPUs CC-capable",
            "capable",
            "capable" if caps.gpusCaps == NVML_CC_SYSTEM_GPUS_CC_CAPABLE else "not capable",
            caps.gpusCaps == NVML_CC_SYSTEM_GPUS_CC_CAPABLE,
        )
        ok &= checks.record(
            "CPU TEE seen by the GPU driver",
            _CPU_CAPS_NAMES[_NVML_CPU_CAPS[cvm.tee]],
            _CPU_CAPS_NAMES.get(cpu_caps, f"unknown ({cpu_caps})"),
            cpu_caps == _NVML_CPU_CAPS[cvm.tee],
        )
        ok &= checks.record(
            "GPU CC feature",
            "on",
            "on" if state.ccFeature == NVML_CC_SYSTEM_FEATURE_ENABLED else "off",
            state.ccFeature == NVML_CC_SYSTEM_FEATURE_ENABLED,
        )
        ok &= checks.record(
            "GPU CC environment",
            "production",
            _ENVIRONMENT_NAMES.get(int(state.environment), f"unknown ({state.environment})"),
            state.environment == NVML_CC_SYSTEM_ENVIRONMENT_PROD,
        )
        ok &= checks.record(
            "GPU developer-tools mode",
            "off",
            "off" if state.devToolsMode == NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF else "ON (debuggable)",
            state.devToolsMode == NVML_CC_SYSTEM_DEVTOOLS_MODE_OFF,
        )
        count = int(_nvml_call(checks, "NVML GPU count", nvml.nvmlDeviceGetCount))
        ok &= checks.record("GPUs visible", f">= {self._min_gpus}", str(count), count >= self._min_gpus)
        gpus: list[GpuFinding] = []
        for index in range(count):
            handle = _nvml_call(checks, f"GPU {index}", nvml.nvmlDeviceGetHandleByIndex, index)
            gpu = GpuFinding(
                index=index,
                uuid=str(_nvml_call(checks, f"GPU {index} UUID", nvml.nvmlDeviceGetUUID, handle)),
                name=str(_nvml_call(checks, f"GPU {index} name", nvml.nvmlDeviceGetName, handle)),
                architecture=int(
                    _nvml_call(checks, f"GPU {index} architecture", nvml.nvmlDeviceGetArchitecture, handle)
                ),
            )
            ok &= checks.record(
                f"GPU {index} ({gpu.uuid}) architecture",
                "Hopper or newer",
                f"{gpu.name}, NVML architecture {gpu.architecture}",
                gpu.architecture >= NVML_DEVICE_ARCH_HOPPER,
            )
            gpus.append(gpu)
        ready = _nvml_call(checks, "NVML GPU ready state", nvml.nvmlSystemGetConfComputeGpusReadyState)
        checks.record(
            "GPU ready state before self-attestation",
            "not ready (set only after the self-attestation)",
            "ready (set by something else)"
            if ready == NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE
            else "not ready",
            True,  # recorded, not refused: the self-attestation still gates our own start
        )
        if not ok:
            failing = ", ".join(c.name for c in checks.results if not c.passed)
            raise checks.fail(
                GpuStateError, f"the GPUs are not in production confidential-computing mode: {failing}"
            )
        return tuple(gpus), ready == NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE

    # --- step 2 -------------------------------------------------------------------------

    def release_gpus(
        self, report: PreflightReport, self_attestation: VerifiedAttestation, keys: BoundKeys
    ) -> GpuRelease:
        """Open the GPUs to work, only on a passing self-attestation of these keys.

        Raises SelfAttestationError if the attestation is insecure, of other keys, or lacks
        verified GPU or CPU TEE evidence (on a GPU-less host: lacks the CPU TEE's evidence or
        carries GPU evidence; nothing is opened then); GpuReadyStateError if NVML refuses.
        """
        if (
            not isinstance(report, PreflightReport)
            or report.mode is not self._mode
            or report.gpu_requirement is not self._gpus
        ):
            raise TypeError("release_gpus() needs the report of this Preflight's check()")
        if not isinstance(self_attestation, VerifiedAttestation):
            raise TypeError("release_gpus() needs a VerifiedAttestation from attestation.verify_bundle()")
        if self._mode is PreflightMode.INSECURE_DEV:
            # Never open CC GPUs on simulated evidence; dev mode does not use them.
            return GpuRelease(_TOKEN, self._mode, False, False, (), b"")
        checks = _Checks()
        kinds = set(self_attestation.evidence_kinds)
        expected_cpu = report.cvm.tee.evidence_kind if report.cvm else None
        ok = checks.record(
            "self-attestation is hardware evidence",
            "not insecure",
            "INSECURE (simulated)" if self_attestation.insecure else "hardware",
            not self_attestation.insecure,
        )
        ok &= checks.record(
            "self-attestation is of this enclave's keys",
            "the keys just made",
            "same keys" if _same_keys(self_attestation, keys) else "OTHER keys",
            _same_keys(self_attestation, keys),
        )
        gpu_less = self._gpus is GpuRequirement.NONE
        ok &= checks.record(
            "self-attestation covers the GPUs" if not gpu_less else "self-attestation carries no GPU",
            EvidenceKind.NVIDIA_GPU.value if not gpu_less else "no nvidia-gpu (a GPU-less host)",
            ", ".join(sorted(k.value for k in kinds)) or "none",
            (EvidenceKind.NVIDIA_GPU in kinds) != gpu_less,
        )
        ok &= checks.record(
            "self-attestation covers the CPU TEE",
            expected_cpu.value if expected_cpu else "a CPU TEE",
            ", ".join(sorted(k.value for k in kinds)) or "none",
            expected_cpu in kinds,
        )
        if not ok:
            failing = ", ".join(c.name for c in checks.results if not c.passed)
            refused = "nothing is served" if gpu_less else "GPUs stay closed"
            raise checks.fail(SelfAttestationError, f"{refused}: {failing}")
        if gpu_less:  # nothing to open, and NVML is not ours to touch
            return GpuRelease(_TOKEN, self._mode, False, False, (), self_attestation.bundle_digest)
        nvml = self._load_nvml(checks)
        already = report.ready_at_start is True

        def set_ready() -> None:
            _nvml_call(
                checks,
                "set GPU ready state",
                nvml.nvmlSystemSetConfComputeGpusReadyState,
                NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE,
                error=GpuReadyStateError,
            )
            now = _nvml_call(
                checks,
                "read GPU ready state",
                nvml.nvmlSystemGetConfComputeGpusReadyState,
                error=GpuReadyStateError,
            )
            if not checks.record(
                "GPU ready state after release",
                "ready",
                "ready" if now == NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE else "not ready",
                now == NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE,
            ):
                raise checks.fail(
                    GpuReadyStateError, "NVML accepted the ready state but does not report it set"
                )

        self._with_nvml(nvml, checks, set_ready)
        return GpuRelease(
            _TOKEN,
            self._mode,
            True,
            already,
            tuple(g.uuid for g in report.gpus),
            self_attestation.bundle_digest,
        )


def _same_keys(attestation: VerifiedAttestation, keys: BoundKeys) -> bool:
    return (attestation.hpke_public_key, attestation.log_public_key) == (
        keys.hpke_public_key,
        keys.log_public_key,
    )


def _nvml_call(
    checks: _Checks,
    what: str,
    fn: Callable[..., _T],
    *args: Any,
    error: type[PreflightError] = GpuStateError,
) -> _T:
    try:
        return fn(*args)
    except Exception as exc:  # pynvml makes one exception class per NVML return code
        checks.record(what, "answered", f"NVML error: {exc}", False)
        raise checks.fail(error, f"{what}: NVML error: {exc}") from exc


def _read_text(path: Path) -> str:
    # An attribute that cannot be read is a provider that cannot be named: "" (absent).
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""

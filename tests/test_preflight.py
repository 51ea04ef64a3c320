"""The start-up preflight, run for real against fake /dev and /sys trees and a fake NVML.

The fake NVML implements the functions of ``pynvml`` (nvidia-ml-py) that the preflight
calls; a conformance test checks those names, arities and constants against the installed
binding, and one test runs the preflight on the real binding (no driver here: it must
refuse with NvmlUnavailableError).
"""

from __future__ import annotations

import ctypes.util
import dataclasses
import importlib
import inspect
import os
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aggregator._preflight import (
    CpuTee,
    GpuReadyStateError,
    GpuRelease,
    GpuStateError,
    NoConfidentialVmError,
    NvmlApi,
    NvmlUnavailableError,
    Preflight,
    PreflightMode,
    PreflightReport,
    SelfAttestationError,
)
from aggregator.enclave._keys import EnclaveKeys
from attestation import (
    EvidenceKind,
    InsecureSimulatedTeeCollector,
    VerifiedAttestation,
    build_bundle,
    load_builtin_policy,
    verify_bundle,
)
from fedseal.binding import BoundKeys

HOPPER, BLACKWELL, AMPERE = 9, 10, 8
SNP_CAPS, TDX_CAPS, VTOM_CAPS = 3, 2, 4


class FakeNvmlError(Exception):
    """Stands in for pynvml.NVMLError (the preflight catches whatever NVML raises)."""


class FakeNvml:
    """The pynvml functions the preflight uses, over a settable state; counts init/shutdown."""

    def __init__(
        self,
        *,
        cpu_caps: int = SNP_CAPS,
        gpus_caps: int = 1,
        environment: int = 2,
        cc_feature: int = 1,
        devtools: int = 0,
        architectures: tuple[int, ...] = (HOPPER, HOPPER),
        ready: int = 0,
        fail: frozenset[str] = frozenset(),
        ignore_ready_writes: bool = False,
    ) -> None:
        self.caps = SimpleNamespace(cpuCaps=cpu_caps, gpusCaps=gpus_caps)
        self.state = SimpleNamespace(environment=environment, ccFeature=cc_feature, devToolsMode=devtools)
        self.architectures = architectures
        self.ready = ready
        self.fail = fail
        self.ignore_ready_writes = ignore_ready_writes
        self.calls: list[str] = []
        self.ready_writes: list[int] = []
        self.open = 0

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise FakeNvmlError(f"{name}: Not Supported")
        if name not in {"nvmlInit", "nvmlShutdown"} and self.open <= 0:
            raise FakeNvmlError(f"{name}: Uninitialized")

    def nvmlInit(self) -> None:
        self._enter("nvmlInit")
        self.open += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.open -= 1

    def nvmlSystemGetConfComputeCapabilities(self) -> Any:
        self._enter("nvmlSystemGetConfComputeCapabilities")
        return self.caps

    def nvmlSystemGetConfComputeState(self) -> Any:
        self._enter("nvmlSystemGetConfComputeState")
        return self.state

    def nvmlSystemGetConfComputeGpusReadyState(self) -> int:
        self._enter("nvmlSystemGetConfComputeGpusReadyState")
        return self.ready

    def nvmlSystemSetConfComputeGpusReadyState(self, state: int) -> Any:
        self._enter("nvmlSystemSetConfComputeGpusReadyState")
        self.ready_writes.append(state)
        if not self.ignore_ready_writes:
            self.ready = state
        return 0

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.architectures)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex")
        return ("handle", index)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetUUID")
        return f"GPU-0000000{handle[1]}-fake"

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._enter("nvmlDeviceGetName")
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetArchitecture(self, handle: Any) -> int:
        self._enter("nvmlDeviceGetArchitecture")
        return int(self.architectures[handle[1]])


def _tree(root: Path, *signs: str, tsm_entries: dict[str, str] | None = None) -> Path:
    """A fake root: each sign is a path that exists (device node, misc device)."""
    for sign in signs:
        path = root / sign
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    if tsm_entries is not None:
        reports = root / "sys/kernel/config/tsm/report"
        reports.mkdir(parents=True, exist_ok=True)
        for name, provider in tsm_entries.items():
            (reports / name).mkdir()
            (reports / name / "provider").write_text(provider + "\n")
    return root


def _snp_root(tmp_path: Path) -> Path:
    return _tree(tmp_path / "root", "dev/sev-guest", "sys/class/misc/sev-guest")


def _dev_attestation() -> tuple[VerifiedAttestation, BoundKeys]:
    """A real self-attestation with the simulated TEE, as the service makes it in dev mode."""
    keys = EnclaveKeys.generate().bound
    challenge = os.urandom(32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collector = InsecureSimulatedTeeCollector("fedseal preflight test")
    bundle = build_bundle(keys, challenge, [collector])
    verified = verify_bundle(
        bundle.to_bytes(), load_builtin_policy("dev-insecure-allow-simulated"), challenge
    )
    return verified, keys


def _hardware_attestation(
    keys: BoundKeys, kinds: tuple[EvidenceKind, ...] = (EvidenceKind.NVIDIA_GPU, EvidenceKind.AMD_SEV_SNP)
) -> VerifiedAttestation:
    """What verify_bundle returns for real GPU + CPU TEE evidence, which only that hardware
    can produce; built with verify_bundle's private token since no such evidence exists here."""
    from attestation._verify import _CONSTRUCTION_TOKEN

    return VerifiedAttestation(
        _CONSTRUCTION_TOKEN,
        hpke_public_key=keys.hpke_public_key,
        log_public_key=keys.log_public_key,
        binding=b"\x01" * 32,
        challenge=b"\x02" * 32,
        bundle_digest=b"\x03" * 32,
        evidence_kinds=kinds,
        policy_name="default",
        insecure=False,
        checks=(),
    )


# --- the fake is the real API ---------------------------------------------------------------


def test_fake_nvml_matches_the_real_pynvml_binding() -> None:
    pynvml = importlib.import_module("pynvml")
    members = [name for name, _ in inspect.getmembers(NvmlApi) if name.startswith("nvml")]
    assert len(members) == 11
    for name in members:
        real = getattr(pynvml, name)
        ours = getattr(NvmlApi, name)
        # same number of parameters (ours has self)
        assert len(inspect.signature(real).parameters) == len(inspect.signature(ours).parameters) - 1, name
        assert hasattr(FakeNvml, name)
    from aggregator import _preflight

    for constant in [n for n in dir(_preflight) if n.startswith("NVML_")]:
        assert getattr(_preflight, constant) == getattr(pynvml, constant), constant


@pytest.mark.skipif(
    ctypes.util.find_library("nvidia-ml") is not None, reason="an NVIDIA driver is installed here"
)
def test_real_binding_without_a_driver_refuses_with_nvml_unavailable(tmp_path: Path) -> None:
    # No NVIDIA driver on this machine: the real pynvml cannot find libnvidia-ml.so.
    with pytest.raises(NvmlUnavailableError, match="NVML cannot start") as info:
        Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path)).check()
    assert [c.name for c in info.value.checks if not c.passed] == ["NVML initialisation"]


# --- hardware mode: what passes -------------------------------------------------------------


def test_snp_vm_with_two_cc_hoppers_passes(tmp_path: Path) -> None:
    nvml = FakeNvml()
    report = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml).check()
    assert report.mode is PreflightMode.HARDWARE and not report.insecure
    assert report.cvm is not None and report.cvm.tee is CpuTee.AMD_SEV_SNP
    assert report.cvm.signs == ("/dev/sev-guest", "/sys/class/misc/sev-guest")
    assert [g.uuid for g in report.gpus] == ["GPU-00000000-fake", "GPU-00000001-fake"]
    assert report.ready_at_start is False
    assert all(c.passed for c in report.checks)
    assert nvml.open == 0 and nvml.ready_writes == []  # balanced init/shutdown; nothing set yet
    summary = report.to_json_obj()
    assert summary["cpu_tee"] == "amd-sev-snp" and len(summary["gpus"]) == 2


def test_tdx_vm_seen_only_through_configfs_tsm(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root", tsm_entries={"other-report": "tdx_guest"})
    report = Preflight(PreflightMode.HARDWARE, root=root, nvml=FakeNvml(cpu_caps=TDX_CAPS)).check()
    assert report.cvm is not None and report.cvm.tee is CpuTee.INTEL_TDX
    assert report.cvm.signs == ("configfs-tsm provider tdx_guest",)


def test_configfs_tsm_probe_entry_is_removed_again(tmp_path: Path) -> None:
    # No entry yet: the preflight makes one to read the provider, and removes it.
    # (On a plain filesystem the new entry has no provider file; the device node decides.)
    root = _tree(tmp_path / "root", "dev/tdx_guest", tsm_entries={})
    report = Preflight(PreflightMode.HARDWARE, root=root, nvml=FakeNvml(cpu_caps=TDX_CAPS)).check()
    assert report.cvm is not None and report.cvm.tee is CpuTee.INTEL_TDX
    assert list((root / "sys/kernel/config/tsm/report").iterdir()) == []


def test_gpus_already_ready_are_recorded_not_refused(tmp_path: Path) -> None:
    report = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=FakeNvml(ready=1)).check()
    assert report.ready_at_start is True
    (row,) = [c for c in report.checks if c.name == "GPU ready state before self-attestation"]
    assert row.found == "ready (set by something else)"


# --- hardware mode: what is refused ---------------------------------------------------------


def test_no_confidential_vm_is_refused_before_nvml_is_touched(tmp_path: Path) -> None:
    nvml = FakeNvml()
    with pytest.raises(NoConfidentialVmError, match="/dev/sev-guest") as info:
        Preflight(PreflightMode.HARDWARE, root=_tree(tmp_path / "root"), nvml=nvml).check()
    assert "--insecure-simulated-tee" in str(info.value)
    assert nvml.calls == []


def test_contradicting_tee_interfaces_are_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root", "dev/sev-guest", "sys/class/misc/tdx_guest")
    with pytest.raises(NoConfidentialVmError, match="contradicting"):
        Preflight(PreflightMode.HARDWARE, root=root, nvml=FakeNvml()).check()
    root2 = _tree(tmp_path / "root2", "dev/sev-guest", tsm_entries={"r": "tdx_guest"})
    with pytest.raises(NoConfidentialVmError, match="contradicting"):
        Preflight(PreflightMode.HARDWARE, root=root2, nvml=FakeNvml()).check()


@pytest.mark.parametrize(
    ("nvml_state", "failing"),
    [
        ({"cc_feature": 0}, ["GPU CC feature"]),
        ({"devtools": 1}, ["GPU developer-tools mode"]),
        ({"environment": 1}, ["GPU CC environment"]),
        ({"gpus_caps": 0}, ["GPUs CC-capable"]),
        ({"cpu_caps": TDX_CAPS}, ["CPU TEE seen by the GPU driver"]),
        ({"cpu_caps": VTOM_CAPS}, ["CPU TEE seen by the GPU driver"]),
        ({"architectures": (HOPPER, AMPERE)}, ["GPU 1 (GPU-00000001-fake) architecture"]),
        ({"architectures": ()}, ["GPUs visible"]),
        ({"cc_feature": 0, "devtools": 1}, ["GPU CC feature", "GPU developer-tools mode"]),
    ],
)
def test_gpus_not_in_production_cc_mode_are_refused(
    tmp_path: Path, nvml_state: dict[str, Any], failing: list[str]
) -> None:
    nvml = FakeNvml(**nvml_state)
    with pytest.raises(GpuStateError, match="not in production confidential-computing mode") as info:
        Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml).check()
    assert [c.name for c in info.value.checks if not c.passed] == failing  # every reason, not the first
    assert nvml.open == 0  # NVML shut down on the failure path too


def test_blackwell_counts_as_new_enough(tmp_path: Path) -> None:
    nvml = FakeNvml(architectures=(BLACKWELL,))
    assert len(Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml).check().gpus) == 1


def test_nvml_errors_become_named_errors(tmp_path: Path) -> None:
    nvml = FakeNvml(fail=frozenset({"nvmlSystemGetConfComputeState"}))
    with pytest.raises(GpuStateError, match="NVML CC state: NVML error"):
        Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml).check()
    assert nvml.open == 0
    with pytest.raises(NvmlUnavailableError, match="driver loaded"):
        Preflight(
            PreflightMode.HARDWARE,
            root=_snp_root(tmp_path / "b"),
            nvml=FakeNvml(fail=frozenset({"nvmlInit"})),
        ).check()


def test_missing_nvidia_ml_py_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(NvmlUnavailableError, match=r"fedseal\[hardware\]"):
        Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path)).check()


# --- the ready state waits for the self-attestation -----------------------------------------


def test_ready_state_is_set_only_on_a_hardware_self_attestation_of_these_keys(tmp_path: Path) -> None:
    nvml = FakeNvml()
    preflight = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml)
    report = preflight.check()
    keys = EnclaveKeys.generate().bound
    release = preflight.release_gpus(report, _hardware_attestation(keys), keys)
    assert release.released and not release.already_ready
    assert release.gpu_uuids == ("GPU-00000000-fake", "GPU-00000001-fake")
    assert release.bundle_digest == b"\x03" * 32
    assert nvml.ready_writes == [1] and nvml.ready == 1 and nvml.open == 0


def test_simulated_self_attestation_never_opens_cc_gpus(tmp_path: Path) -> None:
    nvml = FakeNvml()
    preflight = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml)
    report = preflight.check()
    dev, keys = _dev_attestation()
    with pytest.raises(SelfAttestationError, match="hardware evidence") as info:
        preflight.release_gpus(report, dev, keys)
    failing = [c.name for c in info.value.checks if not c.passed]
    assert failing == [
        "self-attestation is hardware evidence",
        "self-attestation covers the GPUs",
        "self-attestation covers the CPU TEE",
    ]
    assert nvml.ready_writes == []


@pytest.mark.parametrize(
    ("kinds", "other_keys", "failing"),
    [
        (
            (EvidenceKind.NVIDIA_GPU, EvidenceKind.AMD_SEV_SNP),
            True,
            "self-attestation is of this enclave's keys",
        ),
        ((EvidenceKind.AMD_SEV_SNP,), False, "self-attestation covers the GPUs"),
        ((EvidenceKind.NVIDIA_GPU, EvidenceKind.INTEL_TDX), False, "self-attestation covers the CPU TEE"),
        ((EvidenceKind.NVIDIA_GPU,), False, "self-attestation covers the CPU TEE"),  # no --cpu-tee
    ],
)
def test_self_attestation_of_other_keys_or_missing_evidence_is_refused(
    tmp_path: Path, kinds: tuple[EvidenceKind, ...], other_keys: bool, failing: str
) -> None:
    nvml = FakeNvml()
    preflight = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml)
    report = preflight.check()
    keys = EnclaveKeys.generate().bound
    attested = _hardware_attestation(EnclaveKeys.generate().bound if other_keys else keys, kinds)
    with pytest.raises(SelfAttestationError) as info:
        preflight.release_gpus(report, attested, keys)
    assert [c.name for c in info.value.checks if not c.passed] == [failing]
    assert nvml.ready_writes == []


def test_ready_state_that_does_not_stick_is_an_error(tmp_path: Path) -> None:
    for nvml, message in [
        (FakeNvml(ignore_ready_writes=True), "does not report it set"),
        (FakeNvml(fail=frozenset({"nvmlSystemSetConfComputeGpusReadyState"})), "set GPU ready state"),
    ]:
        preflight = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path / message[:4]), nvml=nvml)
        report = preflight.check()
        keys = EnclaveKeys.generate().bound
        with pytest.raises(GpuReadyStateError, match=message):
            preflight.release_gpus(report, _hardware_attestation(keys), keys)
        assert nvml.open == 0


# --- insecure dev mode ----------------------------------------------------------------------


def test_dev_mode_probes_nothing_and_never_opens_gpus(tmp_path: Path) -> None:
    nvml = FakeNvml()
    preflight = Preflight(PreflightMode.INSECURE_DEV, root=tmp_path / "does-not-exist", nvml=nvml)
    report = preflight.check()
    assert report.insecure and report.cvm is None and report.gpus == () and report.checks == ()
    dev, keys = _dev_attestation()
    release = preflight.release_gpus(report, dev, keys)
    assert not release.released and release.mode is PreflightMode.INSECURE_DEV
    assert nvml.calls == []


def test_results_cannot_be_forged_or_mixed_up(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        PreflightReport(object(), PreflightMode.HARDWARE, None, (), None, ())
    with pytest.raises(TypeError):
        GpuRelease(object(), PreflightMode.HARDWARE, True, False, (), b"")
    dev_report = Preflight(PreflightMode.INSECURE_DEV).check()
    hardware = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=FakeNvml())
    keys = EnclaveKeys.generate().bound
    with pytest.raises(TypeError, match="this Preflight"):
        hardware.release_gpus(dev_report, _hardware_attestation(keys), keys)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dev_report.mode = PreflightMode.HARDWARE  # type: ignore[misc]

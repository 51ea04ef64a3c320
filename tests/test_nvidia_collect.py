"""GPU evidence collectors, run for real down to the hardware interface, which is faked.

``NvidiaGpuCollector`` runs NVIDIA's real nv-local-gpu-verifier and the real ``pynvml``
binding; only ``libnvidia-ml`` (the C library, absent here) is replaced by ``FakeNvml``,
which answers the C calls with NVIDIA's published reports and chains. ``NvattestCollector``
runs a real subprocess: an executable script standing in for ``nvattest``. Real reports
carry NVIDIA's nonces, so positive collections ask for those nonces
(``collect_for_nonce``), and ``collect(binding)`` shows the binding-derived nonce reaching
the GPU and a report with another nonce being refused at the source.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_nvml import FakeNvml, install_fake_nvml

from attestation import EvidenceCollectionError, EvidenceKind, Policy, build_bundle, verify_bundle
from attestation.nvidia import (
    CcMode,
    GpuCollectorUnavailableError,
    GpuConfidentialComputeOffError,
    GpuNonceMismatchError,
    NvattestCollector,
    NvidiaGpuCollector,
    NvidiaGpuPolicy,
    OcspMode,
    parse_nvidia_gpu_payload,
    spdm_nonce_for_binding,
    verify_gpu_evidence_against_nonce,
)
from attestation.nvidia._collect import NVATTEST_ARGUMENTS, nvml_cc_mode
from fedseal.binding import BoundKeys

pynvml = pytest.importorskip("pynvml")
# Not imported here: importing it is the collector's job (it writes ./verifier.log otherwise).
if importlib.util.find_spec("verifier") is None:
    pytest.skip("nv-local-gpu-verifier is installed by the Makefile's set-up", allow_module_level=True)

VECTORS = Path(__file__).parent / "vectors" / "nvidia"
EIGHT = json.loads((VECTORS / "nvtrust_ppcie_gpu_evidence.json").read_text())
REAL_NONCE = bytes.fromhex(EIGHT[0]["nonce"])
PINNED = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
CORE = NvidiaGpuPolicy(ocsp=OcspMode.OFF, require_rim_match=False)


@pytest.fixture
def install_nvml(monkeypatch: pytest.MonkeyPatch) -> Any:
    return lambda fake: install_fake_nvml(monkeypatch, fake)


@pytest.fixture
def collector() -> Iterator[NvidiaGpuCollector]:
    with NvidiaGpuCollector(timeout=60) as made:
        yield made


def test_sdk_collector_collects_every_gpu(install_nvml: Any, collector: NvidiaGpuCollector) -> None:
    fake = install_nvml(FakeNvml(EIGHT))
    evidence = collector.collect_for_nonce(REAL_NONCE)
    assert evidence.kind is EvidenceKind.NVIDIA_GPU
    payload = parse_nvidia_gpu_payload(evidence.payload)
    assert len(payload.gpus) == 8 and fake.nonces == [REAL_NONCE] * 8
    assert {g.cc_mode for g in payload.gpus} == {CcMode.ON}
    assert [g.vbios_version for g in payload.gpus] == [e["vbios_version"] for e in EIGHT]
    assert {g.driver_version for g in payload.gpus} == {"590.12"} and {
        g.architecture for g in payload.gpus
    } == {"HOPPER"}
    checks = verify_gpu_evidence_against_nonce(
        evidence.payload, expected_nonce=REAL_NONCE, policy=CORE, now=PINNED
    )
    assert all(c.passed for c in checks)
    assert fake.inits == fake.shutdowns  # NVML left as found


def test_sdk_collector_uses_the_binding_nonce(install_nvml: Any, collector: NvidiaGpuCollector) -> None:
    fake = install_nvml(FakeNvml(EIGHT[:2]))
    binding = os.urandom(32)
    with pytest.raises(EvidenceCollectionError, match="another nonce"):
        collector.collect(binding)
    # The binding's nonce reached every GPU; the (replayed) reports that came back were refused.
    assert fake.nonces == [spdm_nonce_for_binding(binding)] * 2


@pytest.mark.parametrize(("cc", "devtools"), [(0, 0), (1, 1)], ids=["cc-off", "devtools"])
def test_sdk_collector_refuses_without_cc_mode(
    install_nvml: Any, collector: NvidiaGpuCollector, cc: int, devtools: int
) -> None:
    fake = install_nvml(FakeNvml(EIGHT[:1], cc=cc, devtools=devtools))
    with pytest.raises(GpuConfidentialComputeOffError):
        collector.collect(os.urandom(32))
    assert fake.nonces == [] and fake.inits == fake.shutdowns


def test_sdk_collector_without_gpus(install_nvml: Any, collector: NvidiaGpuCollector) -> None:
    install_nvml(FakeNvml([]))
    with pytest.raises(EvidenceCollectionError, match="No GPU found"):
        collector.collect(os.urandom(32))


def test_sdk_collector_without_nvml_library(
    monkeypatch: pytest.MonkeyPatch, collector: NvidiaGpuCollector
) -> None:
    monkeypatch.setattr(pynvml, "nvmlLib", None)  # what a machine without the NVIDIA driver has
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    with pytest.raises(GpuCollectorUnavailableError, match="NVML is not available"):
        collector.collect(os.urandom(32))


def test_sdk_class_state_does_not_leak(install_nvml: Any, collector: NvidiaGpuCollector) -> None:
    from verifier.config import BaseSettings, HopperSettings
    from verifier.nvml import NvmlHandler

    def state() -> list[dict[str, object]]:
        return [
            {k: v for k, v in vars(c).items() if not k.startswith("__")}
            for c in (BaseSettings, HopperSettings, NvmlHandler)
        ]

    before = state()
    install_nvml(FakeNvml(EIGHT[:1]))
    collector.collect_for_nonce(REAL_NONCE)
    assert state() == before
    with pytest.raises(EvidenceCollectionError):
        collector.collect(os.urandom(32))
    assert state() == before


def test_sdk_collections_from_threads_are_serialised(install_nvml: Any) -> None:
    fake = install_nvml(FakeNvml(EIGHT[:4]))
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with NvidiaGpuCollector(timeout=60) as own:
                results.append(len(parse_nvidia_gpu_payload(own.collect_for_nonce(REAL_NONCE).payload).gpus))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [4, 4, 4]
    assert not fake.overlapped and len(fake.nonces) == 12


def test_sdk_import_writes_nothing_to_the_working_directory(tmp_path: Path) -> None:
    # A fresh interpreter: the package writes ./verifier.log the first time it is imported.
    code = (
        "import logging; from attestation.nvidia import NvidiaGpuCollector\n"
        "NvidiaGpuCollector().close()\n"
        "names = ('gpu-verifier-info', 'gpu-verifier-event', 'sdk-logger')\n"
        "handlers = [h for n in names for h in logging.getLogger(n).handlers]\n"
        "assert all(type(h) is logging.NullHandler for h in handlers), handlers\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == [] and result.stdout == ""


# --- the nvattest CLI collector -------------------------------------------------------------


def _fake_nvattest(tmp_path: Path, document: object, *, status: int = 0, sleep: float = 0) -> Path:
    """An executable standing in for nvattest: logs its argv, prints ``document``."""
    output = tmp_path / "output.json"
    output.write_text(json.dumps(document) if not isinstance(document, str) else document)
    script = tmp_path / "nvattest"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys, time\n"
        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        f"time.sleep({sleep})\n"
        f"sys.stdout.write(open({str(output)!r}).read())\n"
        "sys.stderr.write('nvattest: fake diagnostics')\n"
        f"sys.exit({status})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _nvattest_output(entries: list[dict[str, str]], **overrides: object) -> dict[str, object]:
    return {"evidences": entries, "result_code": 0, "result_message": "Ok", **overrides}


def test_nvattest_collector(tmp_path: Path) -> None:
    script = _fake_nvattest(tmp_path, _nvattest_output(EIGHT))
    collector = NvattestCollector(executable=script, cc_mode=lambda: CcMode.ON)
    evidence = collector.collect_for_nonce(REAL_NONCE)
    before, after = NVATTEST_ARGUMENTS
    assert json.loads((tmp_path / "argv.json").read_text()) == [*before, REAL_NONCE.hex(), *after]
    assert before == ("collect-evidence", "--device", "gpu", "--nonce") and after == ("--format", "json")
    payload = parse_nvidia_gpu_payload(evidence.payload)
    assert len(payload.gpus) == 8
    checks = verify_gpu_evidence_against_nonce(
        evidence.payload, expected_nonce=REAL_NONCE, policy=CORE, now=PINNED
    )
    assert all(c.passed for c in checks)


def test_nvattest_collector_reads_cc_mode_from_nvml(tmp_path: Path, install_nvml: Any) -> None:
    fake = install_nvml(FakeNvml([], cc=0))
    collector = NvattestCollector(executable=_fake_nvattest(tmp_path, _nvattest_output(EIGHT)))
    with pytest.raises(GpuConfidentialComputeOffError):
        collector.collect(os.urandom(32))
    assert not (tmp_path / "argv.json").exists()  # nothing ran
    fake.cc = 1
    assert len(parse_nvidia_gpu_payload(collector.collect_for_nonce(REAL_NONCE).payload).gpus) == 8
    assert nvml_cc_mode(pynvml) is CcMode.ON and fake.inits == fake.shutdowns


@pytest.mark.parametrize(
    ("document", "status", "message"),
    [
        (_nvattest_output([], result_code=5, result_message="NVML error"), 1, "NVML error"),
        ("not json", 3, "fake diagnostics"),
        (_nvattest_output([]), 0, "no evidences"),
        (_nvattest_output([{**EIGHT[0], "nonce": "00" * 32}]), 0, "declares another nonce"),
        (_nvattest_output([{**EIGHT[0], "evidence": "***"}]), 0, "not GPU evidence"),
    ],
)
def test_nvattest_failures(tmp_path: Path, document: object, status: int, message: str) -> None:
    collector = NvattestCollector(
        executable=_fake_nvattest(tmp_path, document, status=status), cc_mode=lambda: CcMode.ON
    )
    with pytest.raises(EvidenceCollectionError, match=message):
        collector.collect_for_nonce(REAL_NONCE)


def test_nvattest_report_with_another_nonce_is_refused(tmp_path: Path) -> None:
    binding = os.urandom(32)
    entries = [{**e, "nonce": spdm_nonce_for_binding(binding).hex()} for e in EIGHT[:1]]  # a lying tool
    collector = NvattestCollector(
        executable=_fake_nvattest(tmp_path, _nvattest_output(entries)), cc_mode=lambda: CcMode.ON
    )
    with pytest.raises(EvidenceCollectionError, match="another nonce than requested"):
        collector.collect(binding)


def test_nvattest_timeout_and_absence(tmp_path: Path) -> None:
    slow = NvattestCollector(
        executable=_fake_nvattest(tmp_path, _nvattest_output(EIGHT), sleep=5),
        timeout=0.5,
        cc_mode=lambda: CcMode.ON,
    )
    with pytest.raises(EvidenceCollectionError, match="more than"):
        slow.collect_for_nonce(REAL_NONCE)
    with pytest.raises(GpuCollectorUnavailableError, match="not installed"):
        NvattestCollector(executable=tmp_path / "no-such-nvattest")


def test_collected_real_evidence_in_a_bundle_is_a_replay(tmp_path: Path) -> None:
    # The whole aggregator path with the CLI collector: build_bundle asks for the binding's
    # nonce; a tool that hands back an old (real) report is caught by the collector, and a
    # bundle assembled around one anyway is refused by the client for its nonce.
    keys = BoundKeys(hpke_public_key=os.urandom(32), log_public_key=os.urandom(32))
    challenge = os.urandom(32)
    script = _fake_nvattest(
        tmp_path, _nvattest_output([{k: v for k, v in e.items() if k != "nonce"} for e in EIGHT])
    )
    collector = NvattestCollector(executable=script, cc_mode=lambda: CcMode.ON)
    with pytest.raises(EvidenceCollectionError):
        build_bundle(keys, challenge, [collector])
    evidence = collector.collect_for_nonce(REAL_NONCE)

    class Replaying:
        kind = EvidenceKind.NVIDIA_GPU

        def collect(self, binding: bytes) -> Any:
            return evidence

    bundle = build_bundle(keys, challenge, [Replaying()])
    policy = Policy(name="gpu", required_evidence=(EvidenceKind.NVIDIA_GPU,), nvidia_gpu=CORE)
    with pytest.raises(GpuNonceMismatchError) as info:
        verify_bundle(bundle, policy, challenge, now=PINNED)
    assert len(info.value.failures) == 8


# --- real hardware ----------------------------------------------------------------------------


def _cc_gpu_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return nvml_cc_mode(pynvml) is CcMode.ON
    except pynvml.NVMLError:
        return False
    finally:
        pynvml.nvmlShutdown()


@pytest.mark.gpu_cc
@pytest.mark.skipif(not _cc_gpu_present(), reason="needs an NVIDIA Hopper GPU in confidential-computing mode")
def test_real_gpu_evidence_verifies_under_the_binding() -> None:
    logging.getLogger(__name__).info("collecting from the real GPU(s)")
    keys = BoundKeys(hpke_public_key=os.urandom(32), log_public_key=os.urandom(32))
    challenge = os.urandom(32)
    with NvidiaGpuCollector() as collector:
        bundle = build_bundle(keys, challenge, [collector])
    policy = Policy(
        name="gpu-cc-hardware",
        required_evidence=(EvidenceKind.NVIDIA_GPU,),
        nvidia_gpu=NvidiaGpuPolicy(ocsp=OcspMode.ALLOW_UNAVAILABLE, require_rim_match=False),
    )
    verified = verify_bundle(bundle, policy, challenge)
    assert verified.evidence_kinds == (EvidenceKind.NVIDIA_GPU,)

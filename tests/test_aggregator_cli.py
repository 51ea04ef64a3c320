"""`fedseal-aggregator` refuses to start without evidence it can stand behind, and says what to do."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import access_config, simulated_collector
from identities import write_enrolment
from test_preflight import FakeNvml, _snp_root, _tree

from aggregator import start_aggregator
from aggregator._cli import _accumulator_device, _parser, main, run
from aggregator._malloc import tune_malloc
from aggregator._preflight import CocoAgent, GpuRequirement, Preflight, PreflightMode, SelfAttestationError
from aggregator._selfattest import SelfAttestationGate
from attestation import SimulatedEvidenceRefusedError, load_builtin_policy
from fedseal.roundconfig import ConfigError


def _enrolment(tmp_path: Path) -> list[str]:
    return ["--enrolment", str(write_enrolment(tmp_path / "enrolment.json"))]


class _Preflights:
    """The preflight constructor the CLI gets: a fake host, recording what was asked for."""

    def __init__(self, root: Path, nvml: FakeNvml) -> None:
        self.root, self.nvml = root, nvml
        self.modes: list[PreflightMode] = []
        self.gpus: list[GpuRequirement] = []

    def __call__(
        self, mode: PreflightMode, /, *, gpus: GpuRequirement, coco_agent: CocoAgent | None
    ) -> Preflight:
        self.modes.append(mode)
        self.gpus.append(gpus)
        return Preflight(mode, root=self.root, nvml=self.nvml, gpus=gpus, coco_agent=coco_agent)


def _log_is_empty(path: Path) -> bool:
    return not path.exists() or path.stat().st_size == 0


def test_default_start_on_this_host_is_refused_by_the_preflight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real command on the real host (no CVM, no CC GPU here): refused before any key exists.
    rc = main(
        [
            "--log",
            str(tmp_path / "audit.log"),
            "--listen",
            "127.0.0.1:0",
            "--cpu-tee",
            "sev-snp",
            *_enrolment(tmp_path),
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "the start-up preflight refused this host" in err
    assert "--insecure-simulated-tee" in err
    assert _log_is_empty(tmp_path / "audit.log")


def test_hardware_mode_without_a_cvm_refuses_with_the_preflight_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preflights = _Preflights(_tree(tmp_path / "root", "dev/null-device"), FakeNvml())
    rc = run(
        ["--log", str(tmp_path / "audit.log"), "--cpu-tee", "sev-snp", *_enrolment(tmp_path)],
        preflight_for=preflights,
    )
    assert rc == 1
    assert preflights.modes == [PreflightMode.HARDWARE]
    err = capsys.readouterr().err
    assert "the start-up preflight refused this host: no confidential VM" in err
    assert "failed: CPU TEE guest interface: expected exactly one of SEV-SNP, TDX, found nothing" in err
    assert "deploy/README.md" in err
    assert preflights.nvml.calls == []  # refused before NVML was touched
    assert _log_is_empty(tmp_path / "audit.log")


def test_gpus_not_in_cc_mode_refuse_with_each_failing_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preflights = _Preflights(_snp_root(tmp_path), FakeNvml(cc_feature=0, devtools=1))
    rc = run(
        ["--log", str(tmp_path / "audit.log"), "--cpu-tee", "sev-snp", *_enrolment(tmp_path)],
        preflight_for=preflights,
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "failed: GPU CC feature: expected on, found off" in err
    assert "failed: GPU developer-tools mode: expected off, found ON (debuggable)" in err
    assert preflights.nvml.ready_writes == []


def test_cc_host_whose_self_attestation_fails_refuses_and_keeps_the_gpus_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The preflight passes (fake SNP guest, fake NVML with CC on); the GPU collector (NVIDIA's
    # nvattest, not installed here) then cannot run, so there is no evidence to self-attest.
    preflights = _Preflights(_snp_root(tmp_path), FakeNvml())
    rc = run(
        [
            "--log",
            str(tmp_path / "audit.log"),
            "--gpu-collector",
            "nvattest",
            "--cpu-tee",
            "sev-snp",
            *_enrolment(tmp_path),
        ],
        preflight_for=preflights,
    )
    assert rc == 1
    assert preflights.gpus == [GpuRequirement.CC_GPUS]
    assert "nvmlSystemGetConfComputeState" in preflights.nvml.calls  # the preflight did run
    err = capsys.readouterr().err
    assert "cannot collect attestation evidence" in err
    assert preflights.nvml.ready_writes == [] and preflights.nvml.ready == 0
    assert _log_is_empty(tmp_path / "audit.log")


def _gate(tmp_path: Path, nvml: FakeNvml, policy: str) -> SelfAttestationGate:
    preflight = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml)
    return SelfAttestationGate(preflight, preflight.check(), load_builtin_policy(policy))


def test_self_attestation_under_the_operators_policy_gates_log_gpus_and_server(tmp_path: Path) -> None:
    # Evidence that is collected but fails the operator's policy: nothing is logged, no GPU
    # is released, nothing listens (start_aggregator raises before the server exists).
    nvml = FakeNvml()
    with pytest.raises(SelfAttestationError, match="fails policy 'default'") as refused:
        start_aggregator(
            log_path=tmp_path / "audit.log",
            log_origin="fedseal.test/preflight",
            collectors=[simulated_collector()],
            access=access_config(),
            self_attestation=_gate(tmp_path, nvml, "default"),
        )
    assert isinstance(refused.value.__cause__, SimulatedEvidenceRefusedError)
    assert any(not c.passed for c in refused.value.checks)
    assert nvml.ready_writes == [] and nvml.ready == 0
    assert _log_is_empty(tmp_path / "audit.log")


def test_a_policy_that_admits_simulated_evidence_still_never_opens_cc_gpus(tmp_path: Path) -> None:
    nvml = FakeNvml()
    with pytest.raises(SelfAttestationError, match="GPUs stay closed") as refused:
        start_aggregator(
            log_path=tmp_path / "audit.log",
            log_origin="fedseal.test/preflight",
            collectors=[simulated_collector()],
            access=access_config(),
            self_attestation=_gate(tmp_path, nvml, "dev-insecure-allow-simulated"),
        )
    failed = {c.name for c in refused.value.checks if not c.passed}
    assert "self-attestation is hardware evidence" in failed
    assert nvml.ready_writes == []
    assert _log_is_empty(tmp_path / "audit.log")


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_signals")
def test_dev_mode_starts_without_probing_the_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nvml = FakeNvml()
    preflights = _Preflights(_tree(tmp_path / "root", "dev/null-device"), nvml)  # no CVM at all
    port_file = tmp_path / "port"

    returned = threading.Event()
    frozen_while_serving: list[int] = []

    def stop_when_listening() -> None:
        # SIGTERM is what a supervisor sends; only while run() is still serving.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not returned.is_set():
            if port_file.exists():
                frozen_while_serving.append(gc.get_freeze_count())
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    stopper = threading.Thread(target=stop_when_listening, daemon=True)
    stopper.start()
    try:
        rc = run(
            [
                "--insecure-simulated-tee",
                "--log",
                str(tmp_path / "audit.log"),
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--max-workers",
                "8",
                "--upload-line",
                "3",
                *_enrolment(tmp_path),
            ],
            preflight_for=preflights,
        )
    finally:
        returned.set()
        stopper.join(5)
    assert rc == 0
    assert int(port_file.read_text()) > 0
    assert preflights.modes == [PreflightMode.INSECURE_DEV]
    assert nvml.calls == []  # dev mode probes nothing and never touches NVML
    # The start-up heap is out of garbage collection while serving (aggregator/_gc.py says
    # why), and the collector is as it was once serving ends.
    assert frozen_while_serving and frozen_while_serving[0] > 10_000
    assert gc.get_freeze_count() == 0
    assert '"insecure_simulated":true' in (tmp_path / "audit.log").read_text().replace(" ", "")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    (started,) = [e for e in events if e.get("event") == "aggregator_started"]
    assert (started["max_workers"], started["upload_line"]) == (8, 3)
    # glibc's malloc was tuned at start (README; aggregator/_malloc.py), and it says how.
    (malloc,) = [e for e in events if e.get("event") == "malloc"]
    assert malloc["outcome"] == tune_malloc()


def test_self_attestation_policy_is_checked_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--log", str(tmp_path / "a.log"), *_enrolment(tmp_path)]
    missing = tmp_path / "missing-policy.json"
    assert main([*base, "--self-attestation-policy", str(missing)]) == 2
    assert "cannot read policy file" in capsys.readouterr().err
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    assert main([*base, "--insecure-simulated-tee", "--self-attestation-policy", str(policy)]) == 2
    assert "applies to hardware mode" in capsys.readouterr().err


def test_nras_needs_a_gpu_collector_in_hardware_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--log", str(tmp_path / "a.log"), *_enrolment(tmp_path), "--nras"]
    for extra in (["--insecure-simulated-tee"], ["--gpu-collector", "none", "--cpu-tee", "sev-snp"]):
        assert main([*base, *extra]) == 2
        assert "--nras staples NVIDIA NRAS tokens to GPU evidence" in capsys.readouterr().err
    assert not (tmp_path / "a.log").exists()


def test_hardware_mode_without_a_cpu_tee_is_refused_before_the_host_is_probed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its GPUs would never open: release_gpus needs the self-attestation to cover the CPU
    # TEE the preflight finds (tests/test_preflight.py, GPU evidence alone).
    preflights = _Preflights(_snp_root(tmp_path), FakeNvml())
    rc = run(["--log", str(tmp_path / "a.log"), *_enrolment(tmp_path)], preflight_for=preflights)
    assert rc == 2
    assert "hardware mode needs --cpu-tee" in capsys.readouterr().err
    assert preflights.modes == [] and not (tmp_path / "a.log").exists()


def test_no_collector_at_all_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = run(
        [
            "--log",
            str(tmp_path / "a.log"),
            "--gpu-collector",
            "none",
            "--cpu-tee",
            "none",
            *_enrolment(tmp_path),
        ],
        preflight_for=_Preflights(_snp_root(tmp_path), FakeNvml()),
    )
    assert rc == 2  # a usage error, before the host is probed
    assert "no evidence collector chosen" in capsys.readouterr().err


def test_bad_origin_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "--log",
            str(tmp_path / "a.log"),
            "--insecure-simulated-tee",
            "--log-origin",
            "bad origin",
            *_enrolment(tmp_path),
        ]
    )
    assert rc == 2
    assert "--log-origin" in capsys.readouterr().err


def test_accumulator_device_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # README: `auto` is the default (the GPU when torch sees one).
    defaults = _parser().parse_args(["--log", "a.log", "--enrolment", "e.json"])
    assert defaults.accumulator_device == "auto"
    assert _accumulator_device("auto", cuda_available=lambda: False) == "cpu"
    assert _accumulator_device("auto", cuda_available=lambda: True) == "cuda"
    assert _accumulator_device("cpu", cuda_available=lambda: True) == "cpu"

    def no_probe() -> bool:
        raise AssertionError("'cpu' must not start the CUDA driver to ask")

    assert _accumulator_device("cpu", cuda_available=no_probe) == "cpu"
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        _accumulator_device("cuda", cuda_available=lambda: False)
    if not torch.cuda.is_available():  # this host: asking for the GPU is a usage error, up front
        base = ["--log", str(tmp_path / "a.log"), *_enrolment(tmp_path), "--insecure-simulated-tee"]
        assert main([*base, "--accumulator-device", "cuda"]) == 2
        assert "--accumulator-device cuda: torch sees no CUDA GPU" in capsys.readouterr().err
        assert not (tmp_path / "a.log").exists()


def test_log_that_is_no_log_is_a_usage_error_and_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 18 item 5: exit code 2, one line naming the file, the file unchanged, nothing kept aside."""
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes, not a log")
    rc = main(
        ["--log", str(notes), "--insecure-simulated-tee", "--listen", "127.0.0.1:0", *_enrolment(tmp_path)]
    )
    assert rc == 2
    err = capsys.readouterr().err
    # stderr also carries the structured log's JSON lines; the refusal is one plain line.
    (line,) = [x for x in err.splitlines() if not x.startswith("{")]
    assert line.startswith("error:") and f"--log {notes} is not a FedSeal audit log" in line
    assert notes.read_bytes() == b"my notes, not a log"
    assert not list(tmp_path.glob("notes.txt.torn-*"))

"""`fedseal-aggregator check-hardware`, run against the fake device trees.

The preflight probes a fake filesystem root (an SEV-SNP guest's device nodes) and a fake
pynvml (test_preflight.py's); the collectors are the real ones over the fake NVML and
configfs-tsm (``hardware_rig``), stapling through the test vendors; the policy is the
production template filled with the test guest's measurement (test root pins only).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amd_pki import MEASUREMENT
from hardware_rig import Rig, filled_template_document, open_rig
from test_preflight import FakeNvml, _snp_root

from aggregator._checklist import run
from aggregator._cli import main as aggregator_main
from aggregator._preflight import Preflight, PreflightMode


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with open_rig(tmp_path, monkeypatch) as opened:
        yield opened


def _policy_file(tmp_path: Path, rig: Rig, **changes: Any) -> Path:
    document = filled_template_document(rig)
    for key, value in changes.items():
        document["amd_sev_snp"][key] = value
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    return path


def _check(
    tmp_path: Path, rig: Rig, capsys: pytest.CaptureFixture[str], *args: str, root: Path | None = None
) -> tuple[int, dict[str, Any]]:
    preflight = Preflight(
        PreflightMode.HARDWARE, root=root if root is not None else _snp_root(tmp_path), nvml=FakeNvml()
    )
    status = run([*args, "--json"], preflight=preflight, collectors=rig.collectors, network=rig.vendors)
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return status, report


def _steps(report: dict[str, Any]) -> dict[str, str]:
    return {step["name"]: step["status"] for step in report["steps"]}


def test_a_ready_host_passes_every_step(tmp_path: Path, rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    policy = _policy_file(tmp_path, rig)
    rig.vendors.requests.clear()
    status, report = _check(tmp_path, rig, capsys, "--policy", str(policy))
    assert status == 0 and report["passed"] is True
    assert _steps(report) == {
        "preflight": "pass",
        "collect": "pass",
        "staple": "pass",
        "verify": "pass",
        "measurement": "pass",
    }
    assert report["policy"] == "production-sev-snp-gpu" and report["collateral_source"] == "stapled"
    # Collateral ages: every OCSP answer and the AMD chain, each with its window.
    items = {i["item"]: i for i in report["stapled"]}
    ocsp = [i for name, i in items.items() if name.startswith("OCSP answer")]
    assert len(ocsp) == 6 and all(0 < i["age_seconds"] <= 3600 + 60 and i["seconds_left"] > 0 for i in ocsp)
    assert {"VCEK", "ASK", "ARK"} <= items.keys()
    assert any(name.startswith("RIM NV_GPU_DRIVER") for name in items)
    assert report["measurements"] == [
        {"evidence": "amd-sev-snp", "register": "MEASUREMENT", "value": MEASUREMENT.hex(), "pinned": True}
    ]
    verify = next(s for s in report["steps"] if s["name"] == "verify")
    assert verify["checks"] and all(c["passed"] for c in verify["checks"])


def test_the_text_report_names_the_measurement_to_pin(
    tmp_path: Path, rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    other = os.urandom(48).hex()
    policy = _policy_file(tmp_path, rig, measurements=[other])
    preflight = Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=FakeNvml())
    assert run(["--policy", str(policy)], preflight=preflight, collectors=rig.collectors) == 1
    text = capsys.readouterr().out
    assert f"MEASUREMENT: {MEASUREMENT.hex()} (NOT pinned by the policy)" in text
    assert "[   FAIL] verify: CpuMeasurementError" in text
    assert "[   FAIL] measurement: not in the policy's allow-list: amd-sev-snp MEASUREMENT" in text
    assert text.rstrip().endswith("NOT READY")


def test_a_host_that_is_no_confidential_vm_stops_at_the_preflight(
    tmp_path: Path, rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    status, report = _check(tmp_path, rig, capsys, "--policy", str(_policy_file(tmp_path, rig)), root=bare)
    assert status == 1 and report["passed"] is False
    assert _steps(report) == {
        "preflight": "FAIL",
        "collect": "not run",
        "staple": "not run",
        "verify": "not run",
        "measurement": "not run",
    }
    assert "NoConfidentialVmError" in report["steps"][0]["summary"]


def test_collateral_that_cannot_be_fetched_fails_the_staple_step(
    tmp_path: Path, rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.vendors.down = True  # nothing cached yet and the vendors unreachable
    status, report = _check(tmp_path, rig, capsys, "--policy", str(_policy_file(tmp_path, rig)))
    assert status == 1
    steps = _steps(report)
    assert steps["preflight"] == steps["collect"] == "pass" and steps["staple"] == "FAIL"
    assert steps["verify"] == "not run"
    staple = next(s for s in report["steps"] if s["name"] == "staple")
    assert "StapledCollateralExpiredError" in staple["summary"]


def test_with_nras_the_report_dates_the_token_and_its_key_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_rig(tmp_path, monkeypatch, nras=True) as nras_rig:
        assert nras_rig.vendors.nras is not None
        document = filled_template_document(nras_rig)
        document["nvidia_gpu"] |= {"nras": "required", "nras_key_pins": [nras_rig.vendors.nras.issuer.pin()]}
        policy = tmp_path / "nras-policy.json"
        policy.write_text(json.dumps(document))
        status, report = _check(tmp_path, nras_rig, capsys, "--policy", str(policy), "--nras")
        assert status == 0 and set(_steps(report).values()) == {"pass"}
        items = {i["item"]: i for i in report["stapled"]}
        token, key_set = items["NRAS token"], items["NRAS key set"]
        assert 0 < token["age_seconds"] <= 120 and 3400 < token["seconds_left"] <= 3600
        certificate = nras_rig.vendors.nras.issuer.certificate  # the key set is dated by its x5c
        assert key_set["issued"].startswith(certificate.not_valid_before_utc.strftime("%Y-%m-%dT"))
        assert key_set["expires"].startswith(certificate.not_valid_after_utc.strftime("%Y-%m-%dT"))

        # NRAS unreachable: the evidence comes without a token and --nras fails the staple step.
        nras_rig.vendors.nras.down = True
        nras_rig.clock.offset = datetime.timedelta(minutes=2)  # past the stapler's retry pause
        status, report = _check(tmp_path, nras_rig, capsys, "--policy", str(policy), "--nras")
        assert status == 1
        staple = next(s for s in report["steps"] if s["name"] == "staple")
        assert staple["status"] == "FAIL" and "no NRAS token stapled" in staple["summary"]
        verify = next(s for s in report["steps"] if s["name"] == "verify")
        assert verify["status"] == "FAIL" and "NrasTokenRequiredError" in verify["summary"]


def test_the_builtin_gpu_only_default_flags_the_unmeasured_vm(
    tmp_path: Path, rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under the shipped `default` (vendor roots, no CPU TEE section) the test PKIs fail the
    root pins and the SEV-SNP evidence has no allow-list: both named, nothing passes."""
    status, report = _check(tmp_path, rig, capsys)
    assert status == 1 and report["policy"] == "default"
    assert _steps(report)["verify"] == "FAIL"
    assert report["measurements"][0]["pinned"] is None


def test_usage_errors_and_the_aggregator_entry_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert aggregator_main(["check-hardware", "--policy", str(tmp_path / "missing.json")]) == 2
    assert "cannot read policy file" in capsys.readouterr().err
    assert aggregator_main(["check-hardware", "--builtin-policy", "no-such-policy"]) == 2
    assert "no builtin policy" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        aggregator_main(["check-hardware", "--help"])
    assert info.value.code == 0
    assert "exit status" in capsys.readouterr().out

"""`fedseal-aggregator check-hardware`, run against the fake device trees.

The preflight probes a fake filesystem root (an SEV-SNP or TDX guest's device nodes) and
a fake pynvml (test_preflight.py's); the collectors are the real ones over the fake NVML and
configfs-tsm (``hardware_rig``, and test_hardware_path_tdx's for TDX), stapling through the
test vendors; the policy is the production template filled with the test guest's
measurement (test root pins only).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from amd_pki import MEASUREMENT
from hardware_rig import Rig, filled_template_document, open_rig
from intel_pki import MRTD, RTMRS, IntelPki
from nvidia_pki import make_world
from test_hardware_path import Clock, Vendors
from test_hardware_path_tdx import TamperTdx, filled_tdx_template, open_tdx_collectors
from test_preflight import TDX_CAPS, FakeNvml, _snp_root, _tree

from aggregator._checklist import run
from aggregator._cli import main as aggregator_main
from aggregator._preflight import Preflight, PreflightMode

DAY = datetime.timedelta(days=1)


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


# --------------------------------------------------------------------------- a TDX host


def test_a_ready_tdx_host_lists_intels_collateral_and_its_ages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world, intel = make_world(), IntelPki()
    vendors = Vendors(world, None, Clock(), intel=intel)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(filled_tdx_template(world, intel)))
    root = _tree(tmp_path / "root", "dev/tdx_guest", tsm_entries={"probe": "tdx_guest"})
    preflight = Preflight(PreflightMode.HARDWARE, root=root, nvml=FakeNvml(cpu_caps=TDX_CAPS))
    with contextlib.ExitStack() as stack:
        gpu, tdx = open_tdx_collectors(tmp_path, monkeypatch, stack, vendors)
        tampering = TamperTdx(tdx)
        collectors = [gpu, tampering]
        status = run(["--policy", str(policy), "--json"], preflight=preflight, collectors=collectors)
        report: dict[str, Any] = json.loads(capsys.readouterr().out)
        assert status == 0 and report["passed"] is True, report
        assert report["policy"] == "production-tdx-gpu"
        items = {i["item"]: i for i in report["stapled"] if i["evidence"] == "intel-tdx"}
        assert set(items) == {
            "Intel TCB info (FMSPC 90C06F000000)",
            "Intel TCB info issuer chain",
            "Intel QE identity",
            "Intel QE identity issuer chain",
            "Intel PCK CRL (platform CA)",
            "Intel PCK CRL issuer chain",
            "Intel SGX Root CA CRL",
        }
        for name in ("Intel TCB info (FMSPC 90C06F000000)", "Intel QE identity", "Intel SGX Root CA CRL"):
            # Issued an hour before the test PKI's "now", valid 30 days.
            assert 3600 - 60 <= items[name]["age_seconds"] <= 3600 + 600
            assert 29 * 86400 < items[name]["seconds_left"] <= 30 * 86400
        assert [m["register"] for m in report["measurements"]] == ["MRTD", "RTMR0", "RTMR1", "RTMR2", "RTMR3"]
        assert [bytes.fromhex(m["value"]) for m in report["measurements"]] == [MRTD, *RTMRS]
        assert all(m["pinned"] is True for m in report["measurements"])

        # The text report prints each item's age; an expired item fails the staple step.
        stale = intel.pcs_answers(
            intel.collateral_json(qe_identity=intel.qe_identity(issued=intel.now - 40 * DAY))
        )
        qe_key = next(k for k in stale if k.endswith("/tdx/certification/v4/qe/identity"))
        tampering.edit = lambda stapled: {**stapled, qe_key: stale[qe_key]}
        assert run(["--policy", str(policy)], preflight=preflight, collectors=collectors) == 1
        text = capsys.readouterr().out
        assert "intel-tdx    Intel PCK CRL (platform CA): issued 60m ago, expires in 29d" in text
        assert "intel-tdx    Intel QE identity: issued 40d ago, expires in -10d" in text
        assert "[   FAIL] staple: expired: Intel QE identity" in text
        assert "[   FAIL] verify: TdxCollateralError" in text

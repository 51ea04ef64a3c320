"""fedseal-attest with NVIDIA GPU evidence: the GPU check table, --now, --offline, collect."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
from fake_nvml import FakeNvml, install_fake_nvml

from attestation import Evidence, EvidenceBundle, EvidenceKind
from attestation._cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from attestation.nvidia import CcMode, evidence_from_nvidia_json
from fedseal.binding import compute_binding

VECTORS = Path(__file__).parent / "vectors" / "nvidia"
TESTS = Path(__file__).parent


@pytest.fixture
def real_bundle(tmp_path: Path) -> tuple[Path, bytes]:
    """A bundle around NVIDIA's real report: everything verifies but the nonce (a replay)."""
    entries = json.loads((VECTORS / "serialized_test_evidence" / "hopper_evidence.json").read_text())
    payload = evidence_from_nvidia_json(entries, cc_mode=CcMode.ON).to_payload()
    challenge, hpke, log = os.urandom(32), os.urandom(32), os.urandom(32)
    bundle = EvidenceBundle(
        hpke_public_key=hpke,
        log_public_key=log,
        challenge=challenge,
        binding=compute_binding(hpke, log, challenge),
        evidence=(Evidence(EvidenceKind.NVIDIA_GPU, payload),),
    )
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle.to_bytes())
    return path, challenge


def _verify(path: Path, challenge: bytes, *extra: str) -> list[str]:
    return ["verify", "--bundle", str(path), "--challenge", challenge.hex(), *extra]


def test_table_shows_gpu_checks_at_the_pinned_time(
    real_bundle: tuple[Path, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    path, challenge = real_bundle
    assert main(_verify(path, challenge, "--now", "2026-06-01T00:00:00Z", "--offline")) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "time:      2026-06-01T00:00:00Z (pinned with --now)" in out
    assert "fetching:  offline (stapled material only)" in out
    lines = {line.split("  ")[0]: line for line in out.splitlines() if line.startswith("evidence[0]")}
    assert lines["evidence[0] nvidia-gpu GPU-0 certificate chain"].endswith("pass")
    assert "NVIDIA Device Identity CA" in lines["evidence[0] nvidia-gpu GPU-0 certificate chain"]
    assert lines["evidence[0] nvidia-gpu GPU-0 report signature"].endswith("pass")
    assert lines["evidence[0] nvidia-gpu GPU-0 FWID"].endswith("pass")
    assert lines["evidence[0] nvidia-gpu GPU-0 SPDM nonce"].endswith("FAIL")
    assert "NOT VERIFIED: GpuNonceMismatchError" in out


def test_json_report_carries_the_verification_time(
    real_bundle: tuple[Path, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    path, challenge = real_bundle
    assert (
        main(_verify(path, challenge, "--now", "2026-06-01T02:00:00+02:00", "--offline", "--json"))
        == EXIT_FAILED
    )
    report = json.loads(capsys.readouterr().out)
    assert report["verification_time"] == "2026-06-01T00:00:00Z" and report["verification_time_pinned"]
    assert report["offline"] and report["error"]["type"] == "GpuNonceMismatchError"
    names = {c["name"] for c in report["checks"]}
    assert "evidence[0] nvidia-gpu GPU-0 report signature" in names


def test_expired_time_makes_the_chain_fail(
    real_bundle: tuple[Path, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    path, challenge = real_bundle
    assert main(_verify(path, challenge, "--now", "2021-01-01T00:00:00Z", "--offline")) == EXIT_FAILED
    assert "NOT VERIFIED: GpuCertificateExpiredError" in capsys.readouterr().out


@pytest.mark.parametrize("now", ["yesterday", "2026-06-01T00:00:00"], ids=["not-iso", "no-offset"])
def test_bad_now_is_a_usage_error(
    real_bundle: tuple[Path, bytes], now: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path, challenge = real_bundle
    assert main(_verify(path, challenge, "--now", now)) == EXIT_USAGE
    assert "--now" in capsys.readouterr().err


def test_help_says_transport_security_is_not_relied_upon(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--help"]) == EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert "does not depend on the security of the connection" in out and "--offline" in out


def _collect_args(out: Path, challenge: bytes, *extra: str) -> list[str]:
    return [
        "collect",
        "--challenge",
        challenge.hex(),
        "--hpke-public-key",
        "11" * 32,
        "--log-public-key",
        "22" * 32,
        "--out",
        str(out),
        *extra,
    ]


def test_collect_without_gpu_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pynvml = pytest.importorskip("pynvml")
    monkeypatch.setattr(pynvml, "nvmlLib", None)  # no NVIDIA driver here
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    out = tmp_path / "bundle.json"
    assert main(_collect_args(out, os.urandom(32))) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "cannot collect evidence" in err and "GpuCollectorUnavailableError" in err and not out.exists()
    assert main(
        _collect_args(out, os.urandom(32), "--gpu-collector", "nvattest", "--nvattest", str(tmp_path / "x"))
    ) == (EXIT_FAILED)
    assert "not installed" in capsys.readouterr().err


def test_collect_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _collect_args(tmp_path / "b.json", os.urandom(32))
    args[args.index("--hpke-public-key") + 1] = "abc"
    assert main(args) == EXIT_USAGE
    assert "--hpke-public-key" in capsys.readouterr().err


def test_collect_then_verify_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stand-in nvattest that signs the nonce it is given with the test PKI: the collector
    # accepts it (right nonce), and the verifier refuses it at the NVIDIA root pin.
    pytest.importorskip("pynvml")
    install_fake_nvml(monkeypatch, FakeNvml([]))  # CC mode on
    script = tmp_path / "nvattest"
    script.write_text(
        f"#!{sys.executable}\n"
        "import base64, json, sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from nvidia_pki import make_world, make_report, DRIVER, VBIOS\n"
        "nonce = bytes.fromhex(sys.argv[sys.argv.index('--nonce') + 1])\n"
        "world = make_world()\n"
        "report = make_report(world.device.leaf.key, nonce, fwid=world.device.fwid)\n"
        "entry = {'arch': 'HOPPER', 'nonce': nonce.hex(), 'evidence': base64.b64encode(report).decode(),\n"
        "         'certificate': base64.b64encode(world.device.pem()).decode(),\n"
        "         'driver_version': DRIVER, 'vbios_version': VBIOS}\n"
        "print(json.dumps({'evidences': [entry], 'result_code': 0, 'result_message': 'Ok'}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    out, challenge = tmp_path / "bundle.json", os.urandom(32)
    assert (
        main(_collect_args(out, challenge, "--gpu-collector", "nvattest", "--nvattest", str(script)))
        == EXIT_OK
    )
    assert (tmp_path / "bundle.json.challenge").read_text().strip() == challenge.hex()
    capsys.readouterr()
    assert main(_verify(out, challenge, "--offline", "--json")) == EXIT_FAILED
    report = json.loads(capsys.readouterr().out)
    assert report["error"]["type"] == "GpuRootPinError"
    rows = {c["name"].removeprefix("evidence[0] nvidia-gpu GPU-0 "): c["passed"] for c in report["checks"]}
    assert rows["SPDM nonce"] and rows["report signature"] and rows["FWID"] and not rows["certificate chain"]

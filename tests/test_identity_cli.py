"""`fedseal-aggregator` with identity and access options: refusals in-process (main()), and
one real start with mutual TLS, a CA, a revocation list and limits (a subprocess: the CLI
waits for signals, which only the main thread may handle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import round_config
from identities import ConsortiumPki, principals_json, site_identity, write_enrolment

from aggregator._cli import main
from attestation import Policy
from client_sdk import AccessDeniedError, AccessDeniedReason, ClientIdentity, FedSealClient

ROOT = Path(__file__).resolve().parents[1]


def _base(tmp_path: Path) -> list[str]:
    return ["--log", str(tmp_path / "audit.log"), "--insecure-simulated-tee", "--listen", "127.0.0.1:0"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-streams", "0"], "--max-streams"),
        (["--public-rate", "0"], "--public-rate"),
        (["--listen-mtls", "127.0.0.1:0"], "--client-ca"),
        (["--tls-name", "not a name"], "--tls-name"),
    ],
)
def test_bad_access_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    enrolment = write_enrolment(tmp_path / "enrolment.json")
    try:
        code = main([*_base(tmp_path), "--enrolment", str(enrolment), *extra])
    except SystemExit as exc:  # argparse refuses a bad number itself, naming the flag
        code = exc.code if isinstance(exc.code, int) else -1
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_bad_enrolment_or_crl_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"format": "fedseal-enrolment/v1", "version": 1, "sites": [{"id": "x", "keys": []}]})
    )
    assert main([*_base(tmp_path), "--enrolment", str(bad)]) == 2
    assert "'keys' must list 1 to 8" in capsys.readouterr().err
    assert main([*_base(tmp_path), "--enrolment", str(tmp_path / "missing.json")]) == 2
    assert "cannot read enrolment file" in capsys.readouterr().err
    # A revocation list that its CA did not sign: refused at start, nothing logged.
    pki, impostor = ConsortiumPki(), ConsortiumPki()
    (tmp_path / "ca.pem").write_bytes(pki.ca_pem)
    (tmp_path / "crl.pem").write_bytes(impostor.crl([]))
    args = [
        "--client-ca",
        str(tmp_path / "ca.pem"),
        "--listen-mtls",
        "127.0.0.1:0",
        "--crl",
        str(tmp_path / "crl.pem"),
    ]
    enrolment = write_enrolment(tmp_path / "enrolment.json")
    assert main([*_base(tmp_path), "--enrolment", str(enrolment), *args]) == 2
    assert "revocation list" in capsys.readouterr().err


def _wait_for(path: Path, proc: subprocess.Popen[bytes], stderr: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(
                f"the aggregator exited with {proc.returncode}: {stderr.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    raise AssertionError("the aggregator did not start within 60 s")


def test_a_real_start_with_mutual_tls_and_limits(tmp_path: Path, dev_policy: Policy) -> None:
    pki = ConsortiumPki()
    _, site_a_tls = pki.issue("site-a")
    (tmp_path / "ca.pem").write_bytes(pki.ca_pem)
    (tmp_path / "crl.pem").write_bytes(pki.crl([]))
    enrolment = write_enrolment(
        tmp_path / "enrolment.json", ["site-a", "site-k"], certificates={"site-a": pki.subject_of("site-a")}
    )
    template = {k: v for k, v in round_config(1).to_json_obj().items() if k != "round_id"}
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps(
            {
                "format": "fedseal-job/v1",
                "rounds": 1,
                "round_template": template,
                "principals": principals_json(),
            }
        )
    )
    stderr = tmp_path / "aggregator.stderr"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aggregator",
            *_base(tmp_path),
            "--enrolment",
            str(enrolment),
            "--job",
            str(job),
            "--listen-mtls",
            "127.0.0.1:0",
            "--client-ca",
            str(tmp_path / "ca.pem"),
            "--crl",
            str(tmp_path / "crl.pem"),
            "--max-calls-per-round",
            "2",
            "--port-file",
            str(tmp_path / "port"),
            "--mtls-port-file",
            str(tmp_path / "mtls-port"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("wb"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        port = _wait_for(tmp_path / "port", proc, stderr)
        mtls_port = int((tmp_path / "mtls-port").read_text())
        identity = ClientIdentity("site-a", site_identity("site-a").signing_key, site_a_tls)
        with FedSealClient(f"127.0.0.1:{mtls_port}", dev_policy, identity=identity, timeout=10) as site_a:
            assert site_a.round_info(1).config.round_id == 1
            assert site_a.round_info(1).accepted == 0
            with pytest.raises(AccessDeniedError) as info:  # --max-calls-per-round 2
                site_a.round_info(1)
            assert info.value.reason is AccessDeniedReason.THROTTLED
        with FedSealClient(
            f"127.0.0.1:{port}", dev_policy, identity=site_identity("site-a"), timeout=10
        ) as key_only:
            with pytest.raises(AccessDeniedError) as info:
                key_only.round_info(1)
            assert info.value.reason is AccessDeniedReason.CERTIFICATE_REQUIRED
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    log = stderr.read_text()
    assert '"event": "access_denied"' in log and "certificate_required" in log


def test_the_shipped_example_enrolments_are_valid() -> None:
    from fedseal.enrolment import Enrolment

    for path in (ROOT / "deploy/examples/enrolment.json", ROOT / "deploy/kubernetes/enrolment.json"):
        assert [s.site_id for s in Enrolment.from_file(path).sites] == [f"hospital-{c}" for c in "abcd"]

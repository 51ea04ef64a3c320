"""`fedseal-aggregator` refuses to start without evidence it can stand behind, and says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from identities import write_enrolment

from aggregator._cli import main


def _enrolment(tmp_path: Path) -> list[str]:
    return ["--enrolment", str(write_enrolment(tmp_path / "enrolment.json"))]


def test_default_start_without_tee_hardware_fails_with_guidance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
    assert "cannot collect attestation evidence" in err
    assert "--insecure-simulated-tee" in err
    # Nothing was logged by an enclave that could not prove itself.
    log = tmp_path / "audit.log"
    assert not log.exists() or log.stat().st_size == 0


def test_no_collector_at_all_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "--log",
            str(tmp_path / "a.log"),
            "--gpu-collector",
            "none",
            "--cpu-tee",
            "none",
            *_enrolment(tmp_path),
        ]
    )
    assert rc == 1
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

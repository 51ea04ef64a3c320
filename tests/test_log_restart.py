"""Crash safety: `fedseal-aggregator` killed with SIGKILL at random points during rounds,
restarted on the same log each time.

After every restart the log verifies, and every receipt a client obtained before any of
the crashes still holds against the log (no receipt was ever issued for an entry the
crash lost). The kill points come from a seeded generator, so a failure reproduces.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_adapter, operator_client, round_config, submit_as
from identities import principals_json, write_enrolment

from attestation import Policy
from auditor import check_receipts_in_log, verify_log
from client_sdk import AggregatorUnavailableError, Receipt, UpdateRejectedError
from fedseal.errors import FedSealError

ORIGIN = "fedseal.test/sigkill"
SEED = 20261125
ITERATIONS = 6
ROOT = Path(__file__).resolve().parents[1]
SITES_PER_THREAD = 300  # more than a thread submits before a kill: every update has its own site


def _access_files(directory: Path) -> list[str]:
    """CLI arguments naming an enrolment of every submitter's site and a job with the test
    operator (who opens the rounds), written once into `directory`."""
    sites = [f"c{t}-{n}" for t in range(3) for n in range(SITES_PER_THREAD)]
    enrolment = write_enrolment(directory / "enrolment.json", sites)
    job = directory / "job.json"
    job.write_text(json.dumps({"format": "fedseal-job/v1", "rounds": 0, "principals": principals_json()}))
    return ["--enrolment", str(enrolment), "--job", str(job)]


def _start(log: Path, port_file: Path, stderr: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aggregator",
            "--insecure-simulated-tee",
            "--log",
            str(log),
            "--log-origin",
            ORIGIN,
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--log-level",
            "warning",
            *_access_files(log.parent),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("ab"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, f"127.0.0.1:{port_file.read_text().strip()}"
        if proc.poll() is not None:
            raise AssertionError(
                f"the aggregator exited with {proc.returncode}: {stderr.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the aggregator did not start within 60 s")


def _submitter(
    endpoint: str, policy: Policy, prefix: str, round_id: int, stop: threading.Event, out: list[Receipt]
) -> None:
    for n in range(SITES_PER_THREAD):
        if stop.is_set():
            return
        try:
            receipt = submit_as(
                endpoint,
                policy,
                f"{prefix}-{n}",
                make_adapter(n),
                round_id=round_id,
                num_examples=1,
                retries=0,
            )
        except (AggregatorUnavailableError, UpdateRejectedError):
            return  # the aggregator died under us (or refused as it went down)
        except FedSealError:
            return
        out.append(receipt)


@pytest.mark.slow
def test_sigkill_during_rounds_never_loses_a_receipted_entry(tmp_path: Path, dev_policy: Policy) -> None:
    rng = random.Random(SEED)
    log = tmp_path / "audit.log"
    stderr = tmp_path / "aggregator.stderr"
    receipts: list[Receipt] = []
    for iteration in range(ITERATIONS + 1):
        proc, endpoint = _start(log, tmp_path / "port", stderr)
        try:
            # After each restart: the whole log verifies, and no receipt was lost.
            started = time.monotonic()
            report = verify_log(log, dev_policy).report
            assert len(report.keys) == iteration + 1
            checks = check_receipts_in_log([r.text for r in receipts], log, dev_policy)
            assert [c.entry for c in checks] == [r.entry for r in receipts]
            print(
                f"restart {iteration}: {report.entries} entries, {len(receipts)} receipts hold "
                f"({time.monotonic() - started:.1f} s)"
            )
            if iteration == ITERATIONS:
                break
            round_id = max((r.round_id for r in report.rounds), default=0) + 1
            with operator_client(endpoint, dev_policy) as operator:
                operator.open_round(
                    round_config(round_id, min_clients=1, max_clients=1000, deadline_seconds=120)
                )
            stop = threading.Event()
            got: list[Receipt] = []
            threads = [
                threading.Thread(target=_submitter, args=(endpoint, dev_policy, f"c{t}", round_id, stop, got))
                for t in range(3)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.1, 1.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            stop.set()
            for t in threads:
                t.join(timeout=60)
            receipts.extend(got)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    assert receipts, "no client got a receipt: the kill points are too early to test anything"
    report = verify_log(log, dev_policy).report
    # Every killed round was recorded as abandoned by the next enclave.
    assert sum(1 for r in report.rounds if r.state == "abandoned") == ITERATIONS
    assert len(report.handovers) == ITERATIONS
    accepted = {(a["index"]) for r in report.rounds for a in r.accepted}
    assert {r.index for r in receipts} <= accepted

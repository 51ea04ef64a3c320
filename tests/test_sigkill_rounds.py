"""SIGKILL while rounds open, fill, close and release (issue 18, item 9).

`fedseal-aggregator` runs rounds of three sites back to back (min = max = 3, so each round
closes as soon as its third update is in) with the SDK's retries on, and is killed with
SIGKILL: at a random time on even restarts, and just as a round fills (its close, the
aggregation and the release in flight) on odd ones. After every restart the log verifies
without findings, every receipt still holds, and every aggregate a client fetched is the
one the log released (same SHA-256) and the exact weighted mean of the updates the log
accepted for that round. A round released just before a kill and fetched by nobody is
answered, by the next enclave, with where it was released (not "does not exist").
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import ADAPTER_SHAPES, make_adapter, operator_client, round_config, site_client, submit_as
from test_log_restart import _start

from attestation import Policy
from auditor import check_receipts_in_log, verify_log
from client_sdk import Receipt, RoundUnavailableError
from fedseal.errors import FedSealError

SEED = 20261206
# Each restart costs a process start (3-4 s on a loaded 2-core box): CI kills 4 times;
# FEDSEAL_SIGKILL_KILLS=N runs longer (even N: half random, half as a round fills).
KILLS = int(os.environ.get("FEDSEAL_SIGKILL_KILLS", "4"))
SUBMITTERS = 3


def _seed(site: str) -> int:
    thread, n = site[1:].split("-")
    return int(thread) * 1000 + int(n)


def _mean(accepted: tuple[dict[str, object], ...]) -> dict[str, torch.Tensor]:
    out = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in ADAPTER_SHAPES.items()}
    total = 0
    for a in accepted:
        weight = int(str(a["num_examples"]))
        total += weight
        for name, value in make_adapter(_seed(str(a["client_id"]))).items():
            out[name] += value.double() * weight
    return {name: (value / total).float() for name, value in out.items()}


class _Run:
    """Rounds against one aggregator process until it is killed."""

    def __init__(self, endpoint: str, policy: Policy, counters: list[int]) -> None:
        self.endpoint, self.policy, self.counters = endpoint, policy, counters
        self.receipts: list[Receipt] = []
        self.fetched: dict[int, bytes] = {}
        self.filled = threading.Event()  # set when a round's last receipt is in

    def rounds(self, first_round: int, stop: threading.Event) -> None:
        round_id = first_round
        while not stop.is_set():
            try:
                with operator_client(self.endpoint, self.policy) as operator:
                    operator.open_round(
                        round_config(
                            round_id, min_clients=SUBMITTERS, max_clients=SUBMITTERS, deadline_seconds=30
                        )
                    )
            except FedSealError:
                return  # killed
            got: list[Receipt] = []
            threads = [
                threading.Thread(target=self._submit, args=(t, round_id, got)) for t in range(SUBMITTERS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.receipts.extend(got)
            if len(got) < SUBMITTERS:
                return
            self.filled.set()
            try:
                with site_client(self.endpoint, self.policy, "c0-0", timeout=15) as client:
                    self.fetched[round_id] = client.fetch_aggregate(round_id, wait_seconds=10).data
            except FedSealError:
                return
            round_id += 1

    def _submit(self, thread: int, round_id: int, out: list[Receipt]) -> None:
        n = self.counters[thread]
        self.counters[thread] += 1
        site = f"c{thread}-{n}"
        # An update the aggregator died under (and stayed dead through the retries) is lost.
        with contextlib.suppress(FedSealError):
            out.append(
                submit_as(
                    self.endpoint,
                    self.policy,
                    site,
                    make_adapter(_seed(site)),
                    round_id=round_id,
                    num_examples=1 + n % 5,
                )  # retries on (the SDK's default)
            )


@pytest.mark.slow
def test_sigkill_while_rounds_close_keeps_receipts_and_released_aggregates(
    tmp_path: Path, dev_policy: Policy
) -> None:
    rng = random.Random(SEED)
    log = tmp_path / "audit.log"
    stderr = tmp_path / "aggregator.stderr"
    counters = [1] * SUBMITTERS  # c0-0 is the fetching client's identity
    receipts: list[Receipt] = []
    fetched: dict[int, bytes] = {}
    started = time.monotonic()
    asked_after_restart = 0
    for iteration in range(KILLS + 1):
        proc, endpoint = _start(log, tmp_path / "port", stderr)
        try:
            report = verify_log(log, dev_policy).report
            assert report.findings == ()
            checks = check_receipts_in_log([r.text for r in receipts], log, dev_policy)
            assert [c.entry for c in checks] == [r.entry for r in receipts]
            rounds = {r.round_id: r for r in report.rounds}
            for round_id, data in fetched.items():
                summary = rounds[round_id]
                assert summary.state == "closed"
                assert summary.aggregate_digest == base64.b64encode(hashlib.sha256(data).digest()).decode()
                got = safetensors.torch.load(data)
                for name, value in _mean(summary.accepted).items():
                    torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)
            unfetched = [r for r in report.rounds if r.state == "closed" and r.round_id not in fetched]
            if unfetched:  # released just before a kill: the new enclave says where it went
                with (
                    site_client(endpoint, dev_policy, "c0-0", timeout=15) as client,
                    pytest.raises(RoundUnavailableError, match="released by a previous enclave"),
                ):
                    client.fetch_aggregate(unfetched[-1].round_id)
                asked_after_restart += 1
            if iteration == KILLS:
                break
            run = _Run(endpoint, dev_policy, counters)
            stop = threading.Event()
            worker = threading.Thread(target=run.rounds, args=(max(rounds, default=0) + 1, stop))
            worker.start()
            if iteration % 2:  # just as a round fills: its close and release are in flight
                run.filled.wait(60)
                time.sleep(rng.uniform(0.0, 0.05))
            else:
                time.sleep(rng.uniform(0.2, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            stop.set()
            worker.join(120)
            receipts.extend(run.receipts)
            fetched.update(run.fetched)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    report = verify_log(log, dev_policy).report
    closed = sum(1 for r in report.rounds if r.state == "closed")
    assert closed >= KILLS // 2, "rounds must close between kills, or the test proves little"
    assert fetched, "no aggregate was fetched: nothing was checked against the log"
    print(
        f"sigkill: {KILLS} kills ({KILLS // 2} as a round filled), {len(report.rounds)} rounds "
        f"({closed} closed), {len(fetched)} aggregates fetched and checked, {len(receipts)} receipts, "
        f"{asked_after_restart} released-before-the-kill rounds asked for after a restart, "
        f"{time.monotonic() - started:.1f} s"
    )

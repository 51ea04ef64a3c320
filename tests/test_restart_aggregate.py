"""After a restart, asking for a round an earlier enclave ended says what happened (issue 18, item 8).

The restarted enclave holds none of its predecessor's aggregates; GetAggregate must not
answer "round N does not exist" when the log says round N was released: it names the log
entry and the aggregate's digest, and where to get it (a participant's copy, checked
against the log).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import access_config, make_adapter, round_config, simulated_collector, site_client

from aggregator import RunningAggregator, start_aggregator
from attestation import Policy
from client_sdk import RoundUnavailableError
from fedseal.logformat import EntryKind, decode_record

ORIGIN = "fedseal.test/log"


def _entries(path: Path) -> list[tuple[int, EntryKind, Mapping[str, Any]]]:
    out: list[tuple[int, EntryKind, Mapping[str, Any]]] = []
    for n, line in enumerate(path.read_bytes().splitlines(), start=1):
        entry = decode_record(line, line_number=n).entry
        if entry is not None:
            out.append((entry.index, entry.kind, entry.fields))
    return out


def test_a_released_round_after_a_restart_names_its_log_entry_and_digest(
    tmp_path: Path, dev_policy: Policy
) -> None:
    path = tmp_path / "audit.log"

    def start() -> RunningAggregator:
        return start_aggregator(
            log_path=path, log_origin=ORIGIN, collectors=[simulated_collector()], access=access_config()
        )

    first = start()
    try:
        first.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
        with site_client(first.endpoint, dev_policy, "site-0", timeout=20) as client:
            client.submit_update(make_adapter(0), round_id=1, num_examples=5)
            aggregate = client.fetch_aggregate(1, wait_seconds=10)
        first.rounds.open_round(round_config(2))  # open at the restart
    finally:
        first.stop(grace=0.5)
    (closed,) = [i for i, kind, f in _entries(path) if kind is EntryKind.ROUND_CLOSED and f["round_id"] == 1]
    digest = base64.b64encode(hashlib.sha256(aggregate.data).digest()).decode()

    second = start()
    try:
        with site_client(second.endpoint, dev_policy, "site-1", timeout=20) as client:
            with pytest.raises(RoundUnavailableError) as info:
                client.fetch_aggregate(1)
            message = str(info.value)
            assert "released by a previous enclave" in message
            assert f"log entry {closed}" in message and digest in message
            assert "participant" in message and "does not exist" not in message
            # The round open at the restart was abandoned: that is what it says.
            with pytest.raises(RoundUnavailableError, match=r"round 2 failed \(log entry \d+: "):
                client.fetch_aggregate(2)
            # A round that never existed still says so.
            with pytest.raises(RoundUnavailableError, match="round 7 does not exist"):
                client.fetch_aggregate(7)
    finally:
        second.stop(grace=0.5)

"""A bounded load test on loopback (issue 18, item 9): 32 clients at once into one round.

24 honest sites, 4 that drop their upload mid-stream (the client goes away after one
chunk) and 4 that send garbage (random bytes as SubmitUpdate messages, under their own
valid call token). The round takes exactly the honest updates: the aggregate is their
weighted mean, the garbage is logged as malformed, and the log verifies.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ADAPTER_SHAPES, make_adapter, round_config, simulated_collector
from identities import enrolment, principals, site_identity

from aggregator import AccessConfig, start_aggregator
from attestation import Policy
from auditor import verify_log
from client_sdk import FedSealClient
from fedseal.logformat import EntryKind, decode_record

HONEST, DROPPING, GARBAGE = 24, 4, 4
SITES = [f"load-{n}" for n in range(HONEST + DROPPING + GARBAGE)]
METHOD = "/fedseal.v1.Aggregator/SubmitUpdate"


def _weighted_mean(weights: dict[int, int]) -> dict[str, torch.Tensor]:
    total = sum(weights.values())
    out = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in ADAPTER_SHAPES.items()}
    for seed, weight in weights.items():
        for name, value in make_adapter(seed).items():
            out[name] += value.double() * weight
    return {name: (value / total).float() for name, value in out.items()}


@pytest.mark.slow
def test_32_clients_with_droppers_and_garbage_get_the_exact_honest_mean(
    tmp_path: Path, dev_policy: Policy
) -> None:
    running = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/load",
        collectors=[simulated_collector()],
        access=AccessConfig(enrolment(SITES), principals()),
        listen="127.0.0.1:0",
    )
    weights = {n: 1 + n % 7 for n in range(HONEST)}
    errors: list[str] = []
    started = time.monotonic()
    try:
        running.rounds.open_round(
            round_config(1, min_clients=HONEST, max_clients=HONEST, deadline_seconds=60)
        )

        def honest(n: int) -> None:
            try:
                with FedSealClient(
                    running.endpoint, dev_policy, identity=site_identity(SITES[n]), timeout=60
                ) as c:
                    c.submit_update(make_adapter(n), round_id=1, num_examples=weights[n])
            except Exception as exc:  # reported below
                errors.append(f"{SITES[n]}: {exc!r}")

        def dropping(n: int) -> None:
            with FedSealClient(
                running.endpoint, dev_policy, identity=site_identity(SITES[n]), timeout=60
            ) as c:
                sealed = c.seal_update(make_adapter(n), round_id=1, num_examples=1, chunk_size=1024)

                def one_chunk_then_gone() -> Iterator[bytes]:
                    yield sealed.chunks[0]
                    raise ConnectionAbortedError("the site's process died mid-upload")

                try:
                    c._connection.submit(sealed.header, one_chunk_then_gone(), timeout=30)
                except Exception:  # the call is cancelled under it, whatever the SDK calls that
                    return
                errors.append(f"{SITES[n]}: a dropped upload got a receipt")

        def garbage(n: int) -> None:
            with FedSealClient(
                running.endpoint, dev_policy, identity=site_identity(SITES[n]), timeout=60
            ) as c:
                c.attest()
                conn = c._connection
                call = conn._channel.stream_stream(METHOD, None, None)  # raw bytes both ways
                messages = [os.urandom(64 + 97 * k) for k in range(3)]
                try:
                    for _ in call(iter(messages), metadata=conn._auth("SubmitUpdate"), timeout=30):
                        pass
                except Exception:
                    return
                errors.append(f"{SITES[n]}: garbage was answered without an error")

        threads = [threading.Thread(target=honest, args=(n,)) for n in range(HONEST)]
        threads += [threading.Thread(target=dropping, args=(HONEST + n,)) for n in range(DROPPING)]
        threads += [threading.Thread(target=garbage, args=(HONEST + DROPPING + n,)) for n in range(GARBAGE)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        published = running.rounds.wait_aggregate(1, 60.0)
        import safetensors.torch

        got = safetensors.torch.load(published.data)
        for name, value in _weighted_mean(weights).items():
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6)
    finally:
        running.stop(grace=0.5)
    elapsed = time.monotonic() - started
    entries = [
        e
        for n, line in enumerate((tmp_path / "audit.log").read_bytes().splitlines(), start=1)
        if (e := decode_record(line, line_number=n).entry) is not None
    ]
    accepted = sorted(e.fields["client_id"] for e in entries if e.kind is EntryKind.UPDATE_ACCEPTED)
    assert accepted == sorted(SITES[:HONEST])
    rejected = {
        e.fields["client_id"]: e.fields["reason"] for e in entries if e.kind is EntryKind.UPDATE_REJECTED
    }
    assert {SITES[HONEST + DROPPING + n] for n in range(GARBAGE)} <= set(rejected)
    assert verify_log(tmp_path / "audit.log", dev_policy).report.findings == ()
    kinds = f"{HONEST} honest, {DROPPING} dropping, {GARBAGE} garbage"
    print(f"load: {len(SITES)} clients ({kinds}), {elapsed:.1f} s")

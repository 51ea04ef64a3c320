"""Multi-megabyte uploads from four sites at once, into an aggregator with two decryption
buffers: two are admitted and stream 1 MiB chunks while the others wait with only their
header sent, then go in turn; the aggregate is the mean of all four."""

from __future__ import annotations

import threading

import safetensors.torch
import torch
from conftest import round_config, submit_as

from aggregator import RunningAggregator
from attestation import Policy
from fedseal.spec import AdapterSpec, WireDtype

SHAPES = {
    f"layers.{i}.q_proj.lora_{ab}.weight": (16, 4096) if ab == "A" else (4096, 16)
    for i in range(4)
    for ab in "AB"
}


def _adapter(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in SHAPES.items()}


def test_concurrent_multi_megabyte_uploads_complete(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    spec = AdapterSpec.from_tensors(_adapter(0), dtype=WireDtype.FLOAT32)  # 2 MiB per update
    running = live_aggregator
    running.rounds.open_round(
        round_config(1, adapter_spec=spec, min_clients=4, max_clients=4, max_chunk_size=1 << 20)
    )
    errors: list[BaseException] = []

    def upload(i: int) -> None:
        try:
            submit_as(
                running.endpoint,
                dev_policy,
                f"site-{i}",
                _adapter(i),
                round_id=1,
                num_examples=10,
                chunk_size=1 << 20,
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    published = running.rounds.wait_aggregate(1, 30.0)
    assert running.rounds.snapshot(1).accepted == 4
    aggregate = safetensors.torch.load(published.data)
    for name in SHAPES:
        mean = sum(_adapter(i)[name] for i in range(4)) / 4
        torch.testing.assert_close(aggregate[name], mean, rtol=1e-5, atol=1e-6)

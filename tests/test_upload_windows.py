"""Both flow-control settings of `fedseal-aggregator --upload-windows` carry real uploads.

FIXED keeps gRPC's 64 KiB stream windows (no BDP probing): each 1 MiB chunk is larger
than the window, so this is the case where a wrong setting would stall an upload. Four
sites upload at once into a round with two plaintext slots, so two of them wait with
their windows full while the others are decrypted.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import access_config, round_config, simulated_collector, submit_as

from aggregator import UploadWindows, start_aggregator
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


@pytest.mark.parametrize("windows", list(UploadWindows))
def test_concurrent_multi_megabyte_uploads_complete(
    tmp_path: Path, dev_policy: Policy, windows: UploadWindows
) -> None:
    spec = AdapterSpec.from_tensors(_adapter(0), dtype=WireDtype.FLOAT32)  # 2 MiB per update
    running = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/log",
        collectors=[simulated_collector()],
        access=access_config(),
        upload_windows=windows,
    )
    try:
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
    finally:
        running.stop(grace=0.5)

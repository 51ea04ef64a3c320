"""FedAvg accumulating on the aggregator's GPU gives what the CPU accumulator gives.

Needs a CUDA GPU (the Hopper of the confidential VM): skipped on CPU-only hosts. The device
choice itself (auto / cpu / cuda, refused without a GPU) is tested in test_aggregator_cli.py.
"""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from aggregator.enclave._receive import _parse_and_validate
from aggregator.enclave.strategies.fedavg import FedAvg
from fedseal.spec import AdapterSpec, WireDtype

SHAPES = {
    f"layers.{i}.{m}.lora_{ab}.weight": (8, 256) if ab == "A" else (256, 8)
    for i in range(4)
    for m in "qv"
    for ab in "AB"
}


@pytest.mark.gpu_cc
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("wire", [WireDtype.FLOAT32, WireDtype.BFLOAT16])
def test_fedavg_on_cuda_equals_fedavg_on_cpu(wire: WireDtype) -> None:
    dtype = torch.float32 if wire is WireDtype.FLOAT32 else torch.bfloat16
    gen = torch.Generator().manual_seed(11)
    updates = [{n: torch.randn(s, generator=gen).to(dtype) for n, s in SHAPES.items()} for _ in range(5)]
    spec = AdapterSpec.from_tensors(updates[0], dtype=wire)
    means = []
    for device in ("cpu", "cuda"):
        strategy = FedAvg(spec, device=device)
        for i, update in enumerate(updates):
            strategy.accumulate(
                _parse_and_validate(memoryview(bytearray(safetensors.torch.save(update))), spec), 7 + i
            )
        means.append(strategy.finalize())
    for name in SHAPES:
        assert means[1][name].device.type == "cpu"
        torch.testing.assert_close(means[1][name], means[0][name], rtol=1e-6, atol=1e-6)

"""The aggregate's serializer writes exactly what safetensors.torch.save writes."""

from __future__ import annotations

import random

import pytest
import safetensors.torch
import torch

from aggregator.enclave._serialize import serialize_safetensors
from fedseal.spec import AdapterSpec, TensorSpec, WireDtype


def _lora_tensors(layers: int, rank: int, hidden: int) -> dict[str, torch.Tensor]:
    tensors = {}
    for layer in range(layers):
        for proj in ("q", "k", "v", "o"):
            base = f"base_model.model.layers.{layer}.self_attn.{proj}_proj"
            tensors[f"{base}.lora_A.weight"] = torch.randn(rank, hidden)
            tensors[f"{base}.lora_B.weight"] = torch.randn(hidden, rank)
    return tensors


def _as_flat_views(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Views of one flat tensor, as FedAvg's accumulator holds them."""
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    views, start = {}, 0
    for name, t in tensors.items():
        views[name] = flat[start : start + t.numel()].view(t.shape)
        start += t.numel()
    return views


CASES = {
    "lora-4-layers": lambda: _lora_tensors(4, 8, 64),
    "flat-views": lambda: _as_flat_views(_lora_tensors(2, 4, 32)),
    "insertion-order-shuffled": lambda: dict(
        random.Random(7).sample(sorted(_lora_tensors(3, 2, 16).items()), k=24)
    ),
    "empty-and-scalar": lambda: {"b": torch.zeros(0, 5), "a": torch.tensor(1.5), "c": torch.ones(3)},
    "non-contiguous": lambda: {"t": torch.randn(6, 4).t(), "u": torch.randn(10)[::2]},
    "one-tensor": lambda: {"w": torch.randn(7)},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bytes_equal_safetensors(case: str) -> None:
    tensors = CASES[case]()
    # safetensors refuses non-contiguous tensors; their contiguous copies are the reference.
    reference = safetensors.torch.save({name: t.contiguous() for name, t in tensors.items()})
    assert serialize_safetensors(tensors) == reference


def test_round_trips() -> None:
    tensors = _lora_tensors(2, 4, 16)
    loaded = safetensors.torch.load(serialize_safetensors(tensors))
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value)


@pytest.mark.parametrize(
    "tensors",
    [
        {"w": torch.randn(4).to(torch.bfloat16), "v": torch.randn(2)},  # another dtype
        {"name with space": torch.randn(3)},  # JSON-escaped or unusual names
        {'quote"name': torch.randn(3)},
        {"unicodé": torch.randn(3)},
        {},
    ],
    ids=["bf16", "space", "quote", "unicode", "empty"],
)
def test_unusual_input_goes_to_safetensors(tensors: dict[str, torch.Tensor]) -> None:
    assert serialize_safetensors(tensors) == safetensors.torch.save(tensors)


def test_spec_shaped_aggregate_matches() -> None:
    names = [f"layer.{i}.lora_{ab}.weight" for i in range(3) for ab in "AB"]
    spec = AdapterSpec.of([TensorSpec(name, (8, 32), WireDtype.FLOAT32) for name in names])
    tensors = {t.name: torch.randn(t.shape) for t in spec.tensors}
    assert serialize_safetensors(tensors) == safetensors.torch.save(tensors)

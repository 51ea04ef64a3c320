"""The demo's ML half: identical shared base, LoRA-only adapter state, data, local training."""

from __future__ import annotations

import math
import re

import pytest
import torch

# The demo's model stack is an optional extra ("demo"); skip cleanly without it.
pytest.importorskip("peft")
pytest.importorskip("transformers")

from examples.lora_demo.training import (
    HOSPITALS,
    DemoModelConfig,
    HospitalData,
    adapter_state,
    build_model,
    decode,
    evaluate,
    fedavg,
    load_adapter_state,
    train_local,
)

CFG = DemoModelConfig()
KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.lora_([AB])\.weight")


def test_every_build_has_the_same_base_and_lora_init() -> None:
    rng_before = torch.random.get_rng_state()
    first, second = build_model(CFG), build_model(CFG)
    # build_model seeds privately: the caller's RNG stream is not disturbed.
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The init is a real one: A is random, B starts at zero (so the adapter starts as a no-op).
    state = adapter_state(first)
    assert all(t.abs().sum() > 0 for n, t in state.items() if "lora_A" in n)
    assert all(not t.any() for n, t in state.items() if "lora_B" in n)
    # A different base seed gives a different shared model.
    other = build_model(DemoModelConfig(base_seed=CFG.base_seed + 1)).state_dict()
    assert not torch.equal(other["base_model.model.lm_head.weight"], a["base_model.model.lm_head.weight"])


def test_adapter_state_is_only_lora_tensors_with_expected_shapes() -> None:
    model = build_model(CFG)
    state = adapter_state(model)
    assert list(state) == sorted(state)
    expected = {
        (layer, module, ab)
        for layer in range(CFG.num_hidden_layers)
        for module in CFG.target_modules
        for ab in "AB"
    }
    seen = set()
    for name, tensor in state.items():
        match = KEY.fullmatch(name)
        assert match is not None, name
        layer, module, ab = int(match[1]), match[2], match[3]
        seen.add((layer, module, ab))
        # Heads are not grouped (kv heads == heads), so every target is hidden x hidden.
        shape = (CFG.lora_rank, CFG.hidden_size) if ab == "A" else (CFG.hidden_size, CFG.lora_rank)
        assert tuple(tensor.shape) == shape, name
        assert tensor.dtype == torch.float32
        assert tensor.device.type == "cpu"
        assert tensor.is_contiguous()
        assert not tensor.requires_grad
    assert seen == expected
    # Copies, not views: editing the returned tensors leaves the model alone.
    for tensor in state.values():
        tensor.add_(1.0)
    assert all(not t.any() for n, t in adapter_state(model).items() if "lora_B" in n)


def test_load_adapter_state_round_trips() -> None:
    source, target = build_model(CFG), build_model(CFG)
    gen = torch.Generator().manual_seed(7)
    new = {name: torch.randn(t.shape, generator=gen) * 0.1 for name, t in adapter_state(source).items()}
    load_adapter_state(target, new)
    got = adapter_state(target)
    assert got.keys() == new.keys()
    for name in new:
        assert torch.equal(got[name], new[name]), name
    # The loaded adapter is live: the model's outputs change, and match another model loaded alike.
    ids = HospitalData.generate("hospital-a", num_train=2, num_eval=2).eval_ids
    with torch.no_grad():
        before = source(input_ids=ids).logits
        load_adapter_state(source, new)
        after = source(input_ids=ids).logits
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, target(input_ids=ids).logits)


def test_load_adapter_state_rejects_wrong_names() -> None:
    model = build_model(CFG)
    state = adapter_state(model)
    missing = dict(list(state.items())[1:])
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state(model, missing)
    with pytest.raises(ValueError, match="unexpected"):
        load_adapter_state(model, {**state, "extra.lora_A.weight": torch.zeros(1)})


def test_short_local_training_lowers_eval_loss() -> None:
    torch.manual_seed(0)
    model = build_model(CFG)
    data = HospitalData.generate("hospital-d", num_train=64, num_eval=16)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    initial = evaluate(model, data)
    last = train_local(model, data, steps=15, batch_size=8, lr=1e-2, seed=1)
    final = evaluate(model, data)
    assert final < initial - 1.0, (initial, final)
    assert math.isfinite(last)
    # Only the adapter moved; the shared base stayed frozen.
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


def test_hospital_data_is_deterministic_and_differs_between_hospitals() -> None:
    datasets = {h: HospitalData.generate(h) for h in HOSPITALS}
    again = HospitalData.generate("hospital-b")
    assert again.train_texts == datasets["hospital-b"].train_texts
    assert torch.equal(again.train_ids, datasets["hospital-b"].train_ids)
    assert HospitalData.generate("hospital-b", seed=1).train_texts != again.train_texts
    for h, data in datasets.items():
        assert data.hospital == h
        assert data.num_examples == len(data.train_texts) == data.train_ids.shape[0]
        assert data.eval_ids.shape == (len(data.eval_texts), data.seq_len)
        assert decode(data.train_ids[0]) == data.train_texts[0]
    texts = [set(d.train_texts) for d in datasets.values()]
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            assert a != b
    # Different sizes, so FedAvg's num_examples weighting matters.
    assert len({d.num_examples for d in datasets.values()}) == len(HOSPITALS)
    # Specialty skew: cardiology words are far more frequent at hospital-a than at hospital-b.
    share = {h: sum("fibrillation" in t for t in d.train_texts) / d.num_examples for h, d in datasets.items()}
    assert share["hospital-a"] > 3 * share["hospital-b"]
    with pytest.raises(ValueError, match="unknown hospital"):
        HospitalData.generate("hospital-z")


def test_fedavg_weights_by_num_examples() -> None:
    one = {"x": torch.tensor([1.0, 2.0]), "y": torch.tensor([[0.0]])}
    two = {"x": torch.tensor([4.0, 8.0]), "y": torch.tensor([[3.0]])}
    avg = fedavg([(one, 1), (two, 2)])
    torch.testing.assert_close(avg["x"], torch.tensor([3.0, 6.0]))
    torch.testing.assert_close(avg["y"], torch.tensor([[2.0]]))
    with pytest.raises(ValueError):
        fedavg([])
    with pytest.raises(ValueError):
        fedavg([(one, 0)])
    with pytest.raises(ValueError):
        fedavg([(one, 1), ({"x": one["x"]}, 1)])

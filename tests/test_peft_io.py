"""PEFT in and out: every accepted adapter form sends exactly the adapter tensors, and the
aggregate written as a PEFT folder loads with ``PeftModel.from_pretrained``.

The models are the demo's small byte-level Llama with a real PEFT LoRA adapter (built
from a config, nothing downloaded).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import round_config, site_client, submit_as
from peft import PeftModel, get_peft_model_state_dict

from aggregator import RunningAggregator
from attestation import Policy
from client_sdk import AdapterInputError, adapter_tensors, write_peft_adapter
from examples.lora_demo.training import DemoModelConfig, adapter_state, build_model
from fedseal.spec import AdapterSpec

CFG = DemoModelConfig()


def _trained(seed: int) -> PeftModel:
    """The demo model with its LoRA tensors moved to seed-specific values (as after training)."""
    model = build_model(CFG)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def _save(model: PeftModel, folder: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that the base model has no hub name
        model.save_pretrained(str(folder))
    return folder


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name].to(value.dtype), value, rtol=0, atol=0)


# --- the accepted forms ----------------------------------------------------------------------


def test_peft_model_gives_only_the_adapter_tensors() -> None:
    model = _trained(1)
    got = adapter_tensors(model)
    _assert_same(got, adapter_state(model))
    assert all("lora_" in name for name in got)
    base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    assert base_params > 10 * sum(t.numel() for t in got.values())  # the base model stays home


def test_peft_model_adapter_name_is_checked() -> None:
    model = _trained(2)
    _assert_same(adapter_tensors(model, adapter_name="default"), adapter_state(model))
    with pytest.raises(AdapterInputError, match="no adapter 'other'"):
        adapter_tensors(model, adapter_name="other")
    with pytest.raises(AdapterInputError, match="only to a PEFT model"):
        adapter_tensors({"a": torch.zeros(1)}, adapter_name="default")


def test_state_dict_of_torch_tensors_and_of_numpy_arrays() -> None:
    state = adapter_state(_trained(3))
    _assert_same(adapter_tensors(state), state)
    as_numpy = {name: value.numpy().copy() for name, value in state.items()}
    _assert_same(adapter_tensors(as_numpy), state)
    # Half precision, and read-only arrays (e.g. memory-mapped): converted, not refused.
    readonly = {name: value.astype(np.float16) for name, value in as_numpy.items()}
    for value in readonly.values():
        value.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it would share a read-only array
        got = adapter_tensors(readonly)
    assert all(t.dtype == torch.float16 for t in got.values())


def test_adapter_folder_and_safetensors_file(tmp_path: Path) -> None:
    model = _trained(4)
    folder = _save(model, tmp_path / "adapter")
    assert {p.name for p in folder.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    _assert_same(adapter_tensors(folder), adapter_state(model))
    _assert_same(adapter_tensors(str(folder)), adapter_state(model))
    _assert_same(adapter_tensors(folder / "adapter_model.safetensors"), adapter_state(model))


# --- refusals name what is wrong -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, "holds no tensors"),
        ({1: torch.zeros(2)}, "int key"),
        ({"w": [1.0, 2.0]}, "'w' in the state dict is a list"),
        ({"w": np.array(["a"], dtype=object)}, "numpy dtype object"),
        (42, "cannot take adapter tensors from a builtins.int"),
    ],
)
def test_malformed_inputs_are_refused(value: object, message: str) -> None:
    with pytest.raises(AdapterInputError, match=message):
        adapter_tensors(value)


def test_pickle_and_unknown_files_are_refused(tmp_path: Path) -> None:
    pickle_file = tmp_path / "adapter.bin"
    pickle_file.write_bytes(b"\x80\x04not loaded")
    with pytest.raises(AdapterInputError, match="pickle"):
        adapter_tensors(pickle_file)
    other = tmp_path / "adapter.npz"
    other.write_bytes(b"")
    with pytest.raises(AdapterInputError, match=r"expected a \.safetensors file"):
        adapter_tensors(other)
    with pytest.raises(AdapterInputError, match="no such file or folder"):
        adapter_tensors(tmp_path / "missing")
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\x10" + b"\x00" * 7 + b"{not json}")
    with pytest.raises(AdapterInputError, match="not a readable safetensors file"):
        adapter_tensors(garbage)


def test_folders_that_are_not_peft_adapters_are_refused(tmp_path: Path) -> None:
    folder = _save(_trained(5), tmp_path / "adapter")
    (folder / "adapter_config.json").unlink()
    with pytest.raises(AdapterInputError, match=r"no adapter_config\.json"):
        adapter_tensors(folder)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    with pytest.raises(AdapterInputError, match="no 'peft_type'"):
        adapter_tensors(folder)
    (folder / "adapter_config.json").write_text("{")
    with pytest.raises(AdapterInputError, match="not readable JSON"):
        adapter_tensors(folder)

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "adapter_model.bin").write_bytes(b"pickle")
    (legacy / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(AdapterInputError, match=r"adapter_model\.bin, a pickle file"):
        adapter_tensors(legacy)

    parent = tmp_path / "multi"
    _save(_trained(6), parent / "second")
    with pytest.raises(AdapterInputError, match="subfolder named after the adapter"):
        adapter_tensors(parent)


# --- through the real client and aggregator --------------------------------------------------


def test_every_form_through_submit_update_and_back_into_peft(
    live_aggregator: RunningAggregator, dev_policy: Policy, tmp_path: Path
) -> None:
    models = [_trained(seed) for seed in (10, 11, 12, 13)]
    weights = [5, 10, 20, 40]
    forms: list[Any] = [
        models[0],  # a PEFT model
        {name: value.numpy() for name, value in adapter_state(models[1]).items()},  # numpy state dict
        _save(models[2], tmp_path / "site-c-adapter"),  # an adapter folder
        _save(models[3], tmp_path / "site-d-adapter") / "adapter_model.safetensors",  # a file
    ]
    spec = AdapterSpec.from_tensors(adapter_state(models[0]))
    live_aggregator.rounds.open_round(round_config(1, adapter_spec=spec, min_clients=4, max_clients=4))
    for i, (form, n) in enumerate(zip(forms, weights, strict=True)):
        submit_as(live_aggregator.endpoint, dev_policy, f"site-{i}", form, round_id=1, num_examples=n)
    with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=30) as client:
        aggregate = client.fetch_aggregate(1, wait_seconds=30)

    total = sum(weights)
    states = [adapter_state(m) for m in models]
    expected = {
        name: sum(w * s[name] for w, s in zip(weights, states, strict=True)) / total for name in states[0]
    }
    got = aggregate.tensors()
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)

    folder = write_peft_adapter(aggregate, tmp_path / "global", CFG.lora_config_dict())
    from transformers import LlamaForCausalLM

    torch.manual_seed(CFG.base_seed)
    base = LlamaForCausalLM(CFG.llama_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = PeftModel.from_pretrained(base, str(folder))
    loaded_state = {k: v.detach() for k, v in get_peft_model_state_dict(loaded).items()}
    assert sorted(loaded_state) == sorted(got)
    for name, value in got.items():
        torch.testing.assert_close(loaded_state[name], value, rtol=0, atol=0)
    # and the folder round-trips through adapter_tensors as well
    on_disk = safetensors.torch.load_file(str(folder / "adapter_model.safetensors"))
    _assert_same(adapter_tensors(folder), on_disk)


def test_client_sdk_imports_neither_peft_nor_flower() -> None:
    """PEFT is imported only when given a PEFT model; Flower only by client_sdk.flower."""
    code = (
        "import sys, client_sdk; "
        "bad = sorted(m for m in ('peft', 'transformers', 'flwr') if m in sys.modules); "
        "print(' '.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"import client_sdk imported {result.stdout.strip()}"

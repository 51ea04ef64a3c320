"""What a trainer holds → the adapter tensors FedSeal sends, and nothing else.

`submit_update()` accepts any of:

- a PEFT model (a ``PeftModel``, or a transformers model with a PEFT adapter loaded):
  only its adapter tensors are taken, with ``peft.get_peft_model_state_dict``, so the
  base model's weights never leave the site;
- a state dict: tensor name → ``torch.Tensor`` or ``numpy.ndarray``;
- a PEFT adapter folder, as ``save_pretrained`` writes it: ``adapter_model.safetensors``
  next to ``adapter_config.json``;
- a ``.safetensors`` file.

The names are PEFT's adapter-name-free keys in every form (a saved folder and
``get_peft_model_state_dict`` agree), so the round's adapter spec names the same tensors
whichever form a site uses. PEFT is imported only when given a PEFT model: client_sdk
never depends on it. Pickle formats (``adapter_model.bin``, ``.pt``) are refused, because
loading one can run arbitrary code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch

from client_sdk._errors import ClientError
from fedseal import strictjson
from fedseal.errors import FormatError

__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "AdapterInputError", "adapter_tensors"]

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
# An adapter_config.json is a few KiB; refuse to parse something far larger.
_MAX_CONFIG_BYTES = 1024 * 1024


class AdapterInputError(ClientError, ValueError):
    """What was passed as an adapter is none of the accepted forms, or is malformed.

    The message names what is wrong (the file, the tensor name, the type) and never
    includes tensor values.
    """


def adapter_tensors(obj: object, *, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``obj`` (see the module docstring for the accepted forms).

    ``adapter_name`` picks one adapter of a PEFT model that holds several (default: its
    active adapter). Tensors keep their dtype (``submit_update`` converts to the round's
    wire dtype) and are detached CPU tensors. Raises :class:`AdapterInputError`.
    """
    if isinstance(obj, str | os.PathLike):
        return _from_path(Path(obj))
    if _looks_like_peft_model(obj):
        return _from_peft_model(obj, adapter_name)
    if adapter_name is not None:
        raise AdapterInputError("adapter_name applies only to a PEFT model")
    if isinstance(obj, Mapping):
        return _from_mapping(obj, source="state dict")
    raise AdapterInputError(
        f"cannot take adapter tensors from a {type(obj).__module__}.{type(obj).__qualname__}: pass a "
        "PEFT model, a dict of tensor name -> torch.Tensor or numpy.ndarray, a PEFT adapter folder "
        f"({ADAPTER_WEIGHTS_FILE} + {ADAPTER_CONFIG_FILE}) or a .safetensors file"
    )


def _looks_like_peft_model(obj: object) -> bool:
    # PeftModel and transformers models with a loaded adapter both carry a dict
    # `peft_config`; checking that avoids importing peft for every other input.
    return isinstance(getattr(obj, "peft_config", None), dict) and callable(getattr(obj, "state_dict", None))


def _from_peft_model(model: Any, adapter_name: str | None) -> dict[str, torch.Tensor]:
    try:
        from peft import get_peft_model_state_dict
    except ImportError as exc:
        raise AdapterInputError(
            f"{type(model).__qualname__} carries a PEFT adapter, but peft is not installed: "
            "install peft, or pass the adapter's state dict or saved folder instead"
        ) from exc
    if adapter_name is None:
        active = getattr(model, "active_adapter", "default")
        if not isinstance(active, str):
            raise AdapterInputError(
                f"the PEFT model has several active adapters {sorted(active)}: pass adapter_name"
            )
        adapter_name = active
    if adapter_name not in model.peft_config:
        raise AdapterInputError(
            f"the PEFT model has no adapter {adapter_name!r} (it has {sorted(model.peft_config)})"
        )
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return _from_mapping(state, source=f"PEFT adapter {adapter_name!r}")


def _from_mapping(state: Mapping[Any, Any], *, source: str) -> dict[str, torch.Tensor]:
    if not state:
        raise AdapterInputError(f"the {source} holds no tensors")
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise AdapterInputError(f"the {source} has a {type(name).__name__} key; names must be str")
        tensors[name] = _as_tensor(name, value, source)
    return tensors


def _as_tensor(name: str, value: object, source: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return _real_tensor(name, value, source).detach().to("cpu")
    if isinstance(value, np.ndarray):
        # torch.from_numpy shares memory and warns on read-only arrays: copy those.
        array = value if value.flags.writeable else value.copy()
        try:
            return _real_tensor(name, torch.from_numpy(array), source)
        except TypeError as exc:
            raise AdapterInputError(
                f"tensor {name!r} in the {source}: numpy dtype {value.dtype} has no torch equivalent"
            ) from exc
    raise AdapterInputError(
        f"tensor {name!r} in the {source} is a {type(value).__name__}, not a torch.Tensor or numpy.ndarray"
    )


def _real_tensor(name: str, tensor: torch.Tensor, source: str) -> torch.Tensor:
    """Refuse what cannot be converted to a real wire dtype without losing meaning: a
    complex tensor would lose its imaginary part, a bool one is not a weight, a meta or
    sparse tensor has no dense data to send."""
    where = f"tensor {name!r} in the {source}"
    if tensor.device.type == "meta":
        raise AdapterInputError(f"{where} is on the meta device (it holds no data): load its weights first")
    if tensor.layout is not torch.strided:
        raise AdapterInputError(f"{where} has layout {tensor.layout}: pass a dense tensor (.to_dense())")
    if tensor.is_complex() or tensor.dtype is torch.bool:
        raise AdapterInputError(
            f"{where} has dtype {tensor.dtype}: adapter weights must be real numbers (it would not be "
            "converted without losing information)"
        )
    return tensor


def _from_path(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".safetensors":
            return _load_safetensors(path)
        if suffix in _PICKLE_SUFFIXES:
            raise AdapterInputError(
                f"{path} is a pickle file, which can run code when loaded: save the adapter as "
                "safetensors (PEFT does by default; safe_serialization=True)"
            )
        raise AdapterInputError(f"{path}: expected a .safetensors file or a PEFT adapter folder")
    raise AdapterInputError(f"{path}: no such file or folder")


def _from_folder(folder: Path) -> dict[str, torch.Tensor]:
    weights = folder / ADAPTER_WEIGHTS_FILE
    config = folder / ADAPTER_CONFIG_FILE
    if not weights.is_file():
        hint = ""
        if (folder / "adapter_model.bin").exists():
            hint = " (it has adapter_model.bin, a pickle file: re-save with safe_serialization=True)"
        elif any(child.is_dir() and (child / ADAPTER_WEIGHTS_FILE).is_file() for child in folder.iterdir()):
            hint = " (PEFT saves non-default adapters in a subfolder named after the adapter: pass that)"
        raise AdapterInputError(f"{folder} is not a PEFT adapter folder: no {ADAPTER_WEIGHTS_FILE}{hint}")
    if not config.is_file():
        raise AdapterInputError(f"{folder} is not a PEFT adapter folder: no {ADAPTER_CONFIG_FILE}")
    # The config is not sent, but a folder whose config does not parse is not what the
    # site meant to submit.
    try:
        with config.open("rb") as handle:
            raw = handle.read(_MAX_CONFIG_BYTES + 1)
        if len(raw) > _MAX_CONFIG_BYTES:
            raise AdapterInputError(f"{config} is larger than {_MAX_CONFIG_BYTES} bytes")
        parsed = strictjson.loads(raw, what=str(config))
    except (OSError, FormatError) as exc:
        raise AdapterInputError(f"{config} is not readable JSON: {exc}") from exc
    if not isinstance(parsed, dict) or "peft_type" not in parsed:
        raise AdapterInputError(f"{config} is not a PEFT adapter config (no 'peft_type')")
    return _load_safetensors(weights)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError) as exc:
        raise AdapterInputError(f"{path} is not a readable safetensors file: {exc}") from exc
    return _from_mapping(tensors, source=str(path))

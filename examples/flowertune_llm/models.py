"""The model of the FlowerTune-style template: a PEFT LoRA adapter on a causal LM.

FlowerTune's ``models.py`` loads ``model.name`` from the Hugging Face Hub (4-bit quantised)
and wraps it with a LoRA config from ``model.lora.*``. Here ``model.name`` names a tiny
random Llama built from its config (``tiny-random-llama``: byte-level, nothing downloaded),
so the template runs on a CPU in seconds; everything around it is the template's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = ["TINY_MODEL", "cosine_annealing", "get_model", "get_parameters", "set_parameters"]

TINY_MODEL = "tiny-random-llama"


def get_model(model_cfg: Mapping[str, Any]) -> PeftModel:
    """The base model named by `model_cfg["name"]` with a fresh LoRA adapter (fixed seeds:
    every node builds the same base and the same initial adapter)."""
    if model_cfg["name"] != TINY_MODEL:
        raise ValueError(f"model.name {model_cfg['name']!r}: this template builds only {TINY_MODEL!r}")
    lora = model_cfg["lora"]
    config = LlamaConfig(
        vocab_size=259,  # bytes and 3 special tokens (dataset.py)
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        initializer_range=0.15,
        pad_token_id=0,
        tie_word_embeddings=False,
        attn_implementation="eager",  # type: ignore[call-arg]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_cfg.get("seed", 0)))
        base = LlamaForCausalLM(config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(
                base,
                LoraConfig(
                    r=int(lora["peft_lora_r"]),
                    lora_alpha=int(lora["peft_lora_alpha"]),
                    lora_dropout=0.0,
                    target_modules=["q_proj", "v_proj"],
                    task_type="CAUSAL_LM",
                ),
            )
    if not isinstance(model, PeftModel):  # pragma: no cover - get_peft_model's contract
        raise TypeError(f"expected a PeftModel, got {type(model).__name__}")
    return model


def get_parameters(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's tensors (what a round federates), by name."""
    state = get_peft_model_state_dict(model)
    return {name: state[name].detach().cpu().contiguous() for name in sorted(state)}


def set_parameters(model: PeftModel, tensors: Mapping[str, torch.Tensor]) -> None:
    set_peft_model_state_dict(model, dict(tensors))


def cosine_annealing(current_round: int, total_round: int, lrate_max: float, lrate_min: float) -> float:
    """FlowerTune's learning-rate schedule over the rounds."""
    cos_inner = math.pi * current_round / total_round
    return lrate_min + 0.5 * (lrate_max - lrate_min) * (1 + math.cos(cos_inner))

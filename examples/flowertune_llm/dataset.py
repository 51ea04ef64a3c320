"""The data of the FlowerTune-style template: instruction/response pairs, SFT formatting.

FlowerTune loads a Hugging Face dataset partitioned by ``flwr-datasets`` and formats each
example as an Alpaca-style prompt; the loss covers the response only (completion-only
SFT). Here each partition is a small synthetic instruction set made from its id (nothing
downloaded), tokenised by bytes (``tiny-random-llama``'s vocabulary: 0 pad, 1 bos, 2 eos,
then the 256 byte values).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["IGNORE_INDEX", "SftBatch", "formatting_prompts_func", "load_data", "replace_keys", "tokenize"]

IGNORE_INDEX = -100  # labels the loss skips: the prompt's tokens
_PAD, _BOS, _EOS, _OFFSET = 0, 1, 2, 3
_WORDS = ("heart", "lung", "fever", "dose", "scan", "nurse", "ward", "pulse", "blood", "rest")


def _reverse(text: str) -> str:
    return text[::-1]


def _twice(text: str) -> str:
    return f"{text} {text}"


_TASKS: dict[str, Callable[[str], str]] = {
    "Write in capitals": str.upper,
    "Reverse the letters": _reverse,
    "Repeat twice": _twice,
}


def replace_keys(config: Mapping[str, Any], match: str = "-", target: str = "_") -> dict[str, Any]:
    """The run config's nested keys with '-' made '_' (FlowerTune's helper, for attribute-like keys)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        out[key.replace(match, target)] = (
            replace_keys(value, match, target) if isinstance(value, dict) else value
        )
    return out


def load_data(partition_id: int, num_partitions: int, size: int) -> list[tuple[str, str]]:
    """Partition `partition_id` of `num_partitions`: `size` (instruction, response) pairs.
    Each partition leans on one task, so the federation gains from the others' updates."""
    rng = random.Random(f"flowertune/{partition_id}/{num_partitions}")
    tasks = list(_TASKS)
    own = tasks[partition_id % len(tasks)]
    pairs = []
    for _ in range(size):
        task = own if rng.random() < 0.6 else rng.choice(tasks)
        text = " ".join(rng.choice(_WORDS) for _ in range(2))
        pairs.append((f"{task}: {text}", _TASKS[task](text)))
    return pairs


def formatting_prompts_func(instruction: str) -> str:
    """The Alpaca-style prompt; the response follows it."""
    return f"### Instruction:\n{instruction}\n### Response:\n"


def _ids(text: str) -> list[int]:
    return [b + _OFFSET for b in text.encode("utf-8")]


@dataclass(frozen=True)
class SftBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # IGNORE_INDEX on the prompt and the padding


def tokenize(pairs: list[tuple[str, str]], seq_length: int) -> SftBatch:
    """Prompt + response + eos, right-padded to `seq_length`; labels on the response only
    (what trl's completion-only collator does in FlowerTune)."""
    ids = torch.full((len(pairs), seq_length), _PAD, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row, (instruction, response) in enumerate(pairs):
        prompt = [_BOS, *_ids(formatting_prompts_func(instruction))]
        full = (prompt + _ids(response) + [_EOS])[:seq_length]
        ids[row, : len(full)] = torch.tensor(full)
        labels[row, len(prompt) : len(full)] = torch.tensor(full[len(prompt) :])
    return SftBatch(ids, (ids != _PAD).long(), labels)

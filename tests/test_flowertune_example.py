"""examples/flowertune_llm/README.md, its promises as unit tests (no model, no Ray):

- SFT-style local training with the loss on the response only: the labels are -100 over
  the prompt (and the padding), the response's own tokens elsewhere, and the training loss
  is computed with those labels;
- the learning rate annealed over the rounds (``cosine_annealing``, from
  ``train.learning-rate-max`` to ``train.learning-rate-min``);
- the server-side evaluate function saves the global adapter every
  ``train.save-every-round`` rounds and at the last one.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord

from examples.flowertune_llm import client_app, server_app
from examples.flowertune_llm.dataset import (
    IGNORE_INDEX,
    formatting_prompts_func,
    load_data,
    replace_keys,
    tokenize,
)
from examples.flowertune_llm.models import cosine_annealing

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flowertune_llm"


def _run_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    run_config: dict[str, Any] = config["tool"]["flwr"]["app"]["config"]
    return run_config


# ------------------------------------------------------------------ loss on the response only


def test_labels_are_ignored_over_the_prompt_and_padding_and_are_the_response_elsewhere() -> None:
    assert IGNORE_INDEX == -100  # what torch's cross-entropy (and transformers) skip
    pairs = [("reverse: ab cd", "dc ba"), ("twice: x", "x x")]
    seq_length = 64
    batch = tokenize(pairs, seq_length)
    assert batch.input_ids.shape == batch.labels.shape == (2, seq_length)
    for row, (instruction, response) in enumerate(pairs):
        prompt_len = 1 + len(formatting_prompts_func(instruction).encode())  # BOS + prompt bytes
        end = prompt_len + len(response.encode()) + 1  # response bytes + EOS
        labels, ids, mask = batch.labels[row], batch.input_ids[row], batch.attention_mask[row]
        assert (labels[:prompt_len] == IGNORE_INDEX).all()  # the prompt carries no loss
        assert torch.equal(labels[prompt_len:end], ids[prompt_len:end])  # the response does
        assert (labels[prompt_len:end] != IGNORE_INDEX).all()
        assert (labels[end:] == IGNORE_INDEX).all()  # nor does the padding
        assert int(mask.sum()) == end and (mask[:end] == 1).all()


def test_a_truncated_response_keeps_labels_only_on_what_is_left() -> None:
    instruction, response = "reverse: abc", "cba" * 20
    prompt_len = 1 + len(formatting_prompts_func(instruction).encode())
    seq_length = prompt_len + 5
    batch = tokenize([(instruction, response)], seq_length)
    assert (batch.labels[0, :prompt_len] == IGNORE_INDEX).all()
    assert torch.equal(batch.labels[0, prompt_len:], batch.input_ids[0, prompt_len:])
    assert (batch.labels[0, prompt_len:] != IGNORE_INDEX).all()


def test_the_training_loss_is_computed_with_the_response_only_labels() -> None:
    seen: dict[str, torch.Tensor] = {}

    class Model:
        def __call__(self, **kwargs: torch.Tensor) -> Any:
            seen.update(kwargs)

            class Out:
                loss = torch.tensor(0.5)

            return Out()

    pairs = load_data(0, 2, 4)
    loss = client_app._loss(Model(), pairs, 64)  # type: ignore[arg-type]
    assert float(loss) == 0.5
    expected = tokenize(pairs, 64)
    assert torch.equal(seen["labels"], expected.labels)
    assert torch.equal(seen["input_ids"], expected.input_ids)
    assert (seen["labels"] == IGNORE_INDEX).any() and (seen["labels"] != IGNORE_INDEX).any()


def test_a_loss_over_these_labels_does_not_see_the_prompt() -> None:
    """With cross-entropy's ignore_index, changing the logits at prompt positions does not
    change the loss; changing them at response positions does."""
    batch = tokenize([("reverse: ab cd", "dc ba")], 48)
    labels = batch.labels[0]
    prompt_len = int((labels != IGNORE_INDEX).nonzero()[0])
    logits = torch.randn(48, 300, generator=torch.Generator().manual_seed(0))

    def loss(values: torch.Tensor) -> float:
        return float(torch.nn.functional.cross_entropy(values, labels, ignore_index=IGNORE_INDEX))

    prompt_changed = logits.clone()
    prompt_changed[:prompt_len] = 0.0
    assert loss(prompt_changed) == loss(logits)
    response_changed = logits.clone()
    response_changed[prompt_len] = 0.0
    assert loss(response_changed) != loss(logits)


# ------------------------------------------------------------------ learning rate over the rounds


def test_cosine_annealing_runs_from_max_to_min_over_the_rounds() -> None:
    lr_max, lr_min, rounds = 5e-3, 1e-4, 10
    schedule = [cosine_annealing(r, rounds, lr_max, lr_min) for r in range(rounds + 1)]
    assert schedule[0] == pytest.approx(lr_max)
    assert schedule[-1] == pytest.approx(lr_min)
    assert schedule[rounds // 2] == pytest.approx((lr_max + lr_min) / 2)
    assert all(a > b for a, b in itertools.pairwise(schedule))  # strictly annealed
    assert all(lr_min <= lr <= lr_max for lr in schedule)
    # The cosine shape itself (FlowerTune's schedule), not just any decreasing curve.
    for r, lr in enumerate(schedule):
        assert lr == pytest.approx(lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * r / rounds)))


def test_the_run_config_holds_the_learning_rate_bounds_and_the_save_interval() -> None:
    train = _run_config()["train"]  # TOML's dotted keys: train.save-every-round etc.
    assert train["learning-rate-max"] > train["learning-rate-min"] > 0
    assert isinstance(train["save-every-round"], int) and train["save-every-round"] > 0
    # The apps read them through replace_keys: '-' becomes '_'.
    flat = replace_keys({"train": {"save-every-round": 5, "learning-rate-max": 1.0}})
    assert flat == {"train": {"save_every_round": 5, "learning_rate_max": 1.0}}


# ------------------------------------------------------------------ saves every N rounds


def test_the_evaluate_function_saves_every_n_rounds_and_at_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved: list[str] = []
    loaded: list[dict[str, torch.Tensor]] = []

    class Model:
        def save_pretrained(self, path: str) -> None:
            saved.append(Path(path).name)

    monkeypatch.setattr(server_app, "get_model", lambda cfg: Model())
    monkeypatch.setattr(server_app, "set_parameters", lambda model, tensors: loaded.append(dict(tensors)))
    evaluate = server_app.get_evaluate_fn({"name": "unused"}, 3, 7, tmp_path)
    arrays = ArrayRecord(torch_state_dict={"w": torch.ones(2)})
    for server_round in range(8):  # round 0 is the initial adapter: not saved
        assert evaluate(server_round, arrays) is None
    assert saved == ["peft_3", "peft_6", "peft_7"]
    assert len(loaded) == 3 and all(torch.equal(t["w"], torch.ones(2)) for t in loaded)

    saved.clear()
    evaluate = server_app.get_evaluate_fn({"name": "unused"}, 5, 10, tmp_path)
    for server_round in range(11):
        evaluate(server_round, arrays)
    assert saved == ["peft_5", "peft_10"]  # the last round is saved once

"""Local LoRA training for the FedSeal demo hospitals.

Every hospital starts from the same small, randomly initialised "shared open
model" (a byte-level Llama built from a config, so nothing is downloaded) and
fine-tunes a PEFT LoRA adapter on its own synthetic clinical notes. Only the
adapter tensors ever leave a hospital; :func:`adapter_state` and
:func:`load_adapter_state` are the bridge to the aggregation protocol.

Everything here is deterministic given its seeds, so a federated run is
reproducible and every hospital can rebuild the identical base model and
initial global adapter on its own.
"""

from __future__ import annotations

import hashlib
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LOCAL_STEPS",
    "DEFAULT_LR",
    "DEFAULT_ROUNDS",
    "HOSPITALS",
    "IGNORE_INDEX",
    "PAD_ID",
    "DemoModelConfig",
    "HospitalData",
    "adapter_state",
    "build_model",
    "decode",
    "encode",
    "evaluate",
    "fedavg",
    "load_adapter_state",
    "train_local",
]

HOSPITALS: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
"""The demo's federation members, in a fixed order."""

DEFAULT_ROUNDS = 3
DEFAULT_LOCAL_STEPS = 50
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 1e-2

PAD_ID = 0
"""Byte 0 (NUL) never occurs in the ASCII notes, so it is free to mark padding."""

IGNORE_INDEX = -100
"""Label value that the causal-LM loss skips (the transformers convention)."""


@dataclass(frozen=True)
class DemoModelConfig:
    """Sizes of the shared base model and of the LoRA adapter.

    The model is byte-level (vocabulary of 256), so the demo needs no
    tokenizer. The defaults are tuned so that one hospital's local round
    takes a few seconds on a single CPU thread.
    """

    vocab_size: int = 256
    hidden_size: int = 96
    intermediate_size: int = 192
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 128
    # A random base with the usual std of 0.02 has a frozen lm_head so small
    # that its logits can barely move away from uniform, whatever the adapter
    # does; a larger init scale gives the adapter room to lower the loss.
    initializer_range: float = 0.15
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    base_seed: int = 1234
    lora_seed: int = 5678

    def llama_config(self) -> LlamaConfig:
        """The transformers config of the shared base model."""
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            pad_token_id=PAD_ID,
            bos_token_id=None,
            eos_token_id=None,
            tie_word_embeddings=False,
            # Eager attention is deterministic and needs no optional kernels.
            attn_implementation="eager",  # type: ignore[call-arg]
        )

    def lora_config(self) -> LoraConfig:
        """The PEFT config of the adapter that the federation trains."""
        return LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    def lora_config_dict(self) -> dict[str, Any]:
        """The LoRA config as a JSON-ready dict, the content of ``adapter_config.json``."""
        config: dict[str, Any] = self.lora_config().to_dict()  # type: ignore[no-untyped-call]
        # PEFT keeps target_modules as a set; JSON needs a list (sorted: stable bytes).
        config["target_modules"] = sorted(config["target_modules"])
        config["peft_type"] = str(config["peft_type"].value)
        return config


def build_model(cfg: DemoModelConfig | None = None) -> PeftModel:
    """Build the shared base model with a freshly initialised LoRA adapter.

    Both the base weights and the adapter's initial weights are drawn from
    fixed seeds, so every hospital that calls this gets bit-identical models
    and round 1 starts from one common global adapter. The caller's global
    torch RNG state is left untouched.
    """
    cfg = cfg or DemoModelConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.base_seed)
        base = LlamaForCausalLM(cfg.llama_config())
        torch.manual_seed(cfg.lora_seed)
        with warnings.catch_warnings():
            # peft still calls a transformers helper that v5 has deprecated.
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(base, cfg.lora_config())
    if not isinstance(model, PeftModel):  # pragma: no cover - get_peft_model contract
        raise TypeError(f"expected a PeftModel, got {type(model).__name__}")
    model.eval()
    return model


def adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    """The adapter's LoRA tensors only: sorted names, detached float32 CPU copies.

    The names are PEFT's adapter-name-free keys (for example
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), the
    same in every hospital, so they can serve as the wire format's keys.
    """
    state = get_peft_model_state_dict(model)
    return {
        name: state[name].detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
        for name in sorted(state)
    }


def load_adapter_state(model: PeftModel, tensors: Mapping[str, torch.Tensor]) -> None:
    """Replace the model's adapter with ``tensors`` (as made by :func:`adapter_state`).

    Raises ``ValueError`` if ``tensors`` does not name exactly the model's
    adapter tensors, so a malformed global update cannot be half-applied.
    """
    expected = set(get_peft_model_state_dict(model))
    given = set(tensors)
    if given != expected:
        missing = sorted(expected - given)
        unexpected = sorted(given - expected)
        raise ValueError(f"adapter mismatch: missing={missing} unexpected={unexpected}")
    result = set_peft_model_state_dict(model, dict(tensors))
    unexpected_keys = getattr(result, "unexpected_keys", ())
    if unexpected_keys:  # pragma: no cover - guarded by the check above
        raise ValueError(f"unexpected adapter keys: {unexpected_keys}")


def fedavg(
    updates: Sequence[tuple[Mapping[str, torch.Tensor], int]],
) -> dict[str, torch.Tensor]:
    """Plain FedAvg: average adapters weighted by each client's ``num_examples``.

    ``updates`` holds ``(adapter tensors, num_examples)`` pairs that all name
    the same tensors with the same shapes. The in-process reference that the
    confidential aggregator's result can be checked against.
    """
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = sum(n for _, n in updates)
    if total <= 0 or any(n <= 0 for _, n in updates):
        raise ValueError("every update needs a positive num_examples")
    names = sorted(updates[0][0])
    for tensors, _ in updates[1:]:
        if sorted(tensors) != names:
            raise ValueError("updates name different tensors")
    out: dict[str, torch.Tensor] = {}
    for name in names:
        # Accumulate in float64 so the result does not depend on client order
        # beyond float64 rounding.
        acc = torch.zeros_like(updates[0][0][name], dtype=torch.float64)
        for tensors, n in updates:
            acc += tensors[name].to(torch.float64) * (n / total)
        out[name] = acc.to(torch.float32).contiguous()
    return out


# --- Synthetic private data -------------------------------------------------

# Vocabulary every hospital uses: the note template plus generic findings.
_COMMON_SYMPTOMS = ("fever", "cough", "fatigue", "headache", "nausea", "dizziness", "back pain")
_COMMON_DIAGNOSES = ("viral infection", "hypertension", "diabetes", "anemia", "dehydration")
_COMMON_DRUGS = ("paracetamol", "ibuprofen", "metformin", "amlodipine", "omeprazole")
_PLANS = ("f/u 2w", "f/u 4w", "discharge home", "admit obs", "refer gp")

# Each hospital's specialty: words that appear mostly, but not only, there.
_SPECIALTIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "hospital-a": (  # cardiology
        ("chest pain", "palpitations", "edema", "syncope"),
        ("atrial fibrillation", "heart failure", "angina"),
        ("metoprolol", "warfarin", "furosemide"),
    ),
    "hospital-b": (  # oncology
        ("weight loss", "night sweats", "breast lump", "bone pain"),
        ("lymphoma", "breast cancer", "colon cancer"),
        ("tamoxifen", "cisplatin", "ondansetron"),
    ),
    "hospital-c": (  # pediatrics
        ("rash", "ear pain", "vomiting", "poor feeding"),
        ("otitis media", "bronchiolitis", "gastroenteritis"),
        ("amoxicillin", "oral rehydration", "cetirizine"),
    ),
    "hospital-d": (  # respiratory
        ("wheeze", "dyspnea", "sputum", "chest tightness"),
        ("asthma", "copd", "pneumonia"),
        ("salbutamol", "prednisolone", "tiotropium"),
    ),
}

# Train sizes differ so that FedAvg's num_examples weighting matters.
_TRAIN_SIZES: dict[str, int] = {
    "hospital-a": 512,
    "hospital-b": 384,
    "hospital-c": 320,
    "hospital-d": 256,
}
_EVAL_SIZE = 64
_SEQ_LEN = 112
# Where a note's findings come from: the hospital's own specialty, the common
# pool, or (referrals) another hospital's specialty. The overlap is what lets
# every hospital gain from the others' updates.
_OWN_SHARE = 0.5
_COMMON_SHARE = 0.35


def encode(texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Byte-encode ``texts`` into a right-padded ``(len(texts), seq_len)`` int64 tensor."""
    ids = torch.full((len(texts), seq_len), PAD_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        data = text.encode("ascii")[:seq_len]
        ids[row, : len(data)] = torch.tensor(list(data), dtype=torch.long)
    return ids


def decode(ids: torch.Tensor) -> str:
    """Inverse of :func:`encode` for one row (padding dropped)."""
    return bytes(int(b) for b in ids.tolist() if b != PAD_ID).decode("ascii")


def _pick(rng: random.Random, hospital: str, kind: int, common: tuple[str, ...]) -> str:
    u = rng.random()
    if u < _OWN_SHARE:
        return rng.choice(_SPECIALTIES[hospital][kind])
    if u < _OWN_SHARE + _COMMON_SHARE:
        return rng.choice(common)
    other = rng.choice([h for h in HOSPITALS if h != hospital])
    return rng.choice(_SPECIALTIES[other][kind])


def _note(rng: random.Random, hospital: str) -> str:
    # Pediatrics sees children; the others adults.
    age = rng.randint(1, 16) if hospital == "hospital-c" else rng.randint(18, 90)
    return (
        f"pt {age}{rng.choice('mf')} c/o {_pick(rng, hospital, 0, _COMMON_SYMPTOMS)}"
        f" x{rng.randint(1, 9)}d. bp {rng.randint(10, 17)}0/{rng.randint(6, 9)}0."
        f" dx {_pick(rng, hospital, 1, _COMMON_DIAGNOSES)}."
        f" rx {_pick(rng, hospital, 2, _COMMON_DRUGS)}. {rng.choice(_PLANS)}.\n"
    )


def _rng_for(hospital: str, seed: int) -> random.Random:
    # sha256 rather than hash(): str hashing is salted per process.
    digest = hashlib.sha256(f"fedseal-demo:{hospital}:{seed}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True, eq=False)
class HospitalData:
    """One hospital's private notes, byte-encoded and split into train and eval.

    The template and part of the vocabulary are shared by all hospitals (what
    federation can pool); each hospital also over-represents its specialty's
    words (what makes the data non-IID).
    """

    hospital: str
    train_texts: tuple[str, ...]
    eval_texts: tuple[str, ...]
    seq_len: int = _SEQ_LEN
    train_ids: torch.Tensor = field(init=False, repr=False)
    eval_ids: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Frozen dataclass: derived fields are set once, here.
        object.__setattr__(self, "train_ids", encode(self.train_texts, self.seq_len))
        object.__setattr__(self, "eval_ids", encode(self.eval_texts, self.seq_len))

    @classmethod
    def generate(
        cls,
        hospital: str,
        *,
        seed: int = 0,
        num_train: int | None = None,
        num_eval: int = _EVAL_SIZE,
    ) -> HospitalData:
        """Deterministically generate ``hospital``'s data from ``(hospital, seed)``."""
        if hospital not in _SPECIALTIES:
            raise ValueError(f"unknown hospital {hospital!r}; expected one of {HOSPITALS}")
        n_train = _TRAIN_SIZES[hospital] if num_train is None else num_train
        rng = _rng_for(hospital, seed)
        notes = tuple(_note(rng, hospital) for _ in range(n_train + num_eval))
        return cls(hospital=hospital, train_texts=notes[:n_train], eval_texts=notes[n_train:])

    @property
    def num_examples(self) -> int:
        """Train-set size: the FedAvg weight of this hospital's update."""
        return len(self.train_texts)


def _labels(ids: torch.Tensor) -> torch.Tensor:
    return ids.masked_fill(ids == PAD_ID, IGNORE_INDEX)


def _trim(ids: torch.Tensor) -> torch.Tensor:
    # Drop all-padding columns on the right: about a fifth of the compute.
    return ids[:, : int((ids != PAD_ID).sum(dim=1).max())]


def _loss(model: PeftModel, ids: torch.Tensor) -> torch.Tensor:
    # No attention mask is needed: padding is on the right, so under the
    # causal mask no real byte ever attends to a pad, and pads carry no label.
    out = model(input_ids=ids, labels=_labels(ids))
    loss: torch.Tensor = out.loss
    return loss


def train_local(
    model: PeftModel,
    data: HospitalData,
    *,
    steps: int = DEFAULT_LOCAL_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    extra_loss: Callable[[], torch.Tensor] | None = None,
) -> float:
    """Fine-tune the adapter on ``data`` with AdamW; return the last batch's loss.

    ``extra_loss`` is added to every step's loss (e.g. FedProx's proximal term); the
    returned loss is the task's alone.

    Only the LoRA parameters are optimised (PEFT froze the base). The
    optimizer is fresh on every call, as in plain FedAvg, and the batches are
    drawn from a generator seeded with ``seed`` so that a round is
    reproducible; pass the round number to see new batches every round.
    """
    if steps <= 0 or batch_size <= 0:
        raise ValueError("steps and batch_size must be positive")
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if not params or not all("lora_" in name for name in trainable):
        raise ValueError("expected only LoRA parameters to be trainable")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    n = data.train_ids.shape[0]
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = _trim(data.train_ids[torch.randint(0, n, (batch_size,), generator=generator)])
        loss = _loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        (loss + extra_loss() if extra_loss is not None else loss).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: PeftModel, data: HospitalData, *, batch_size: int = 64) -> float:
    """Mean per-byte cross-entropy of the model on ``data``'s eval split."""
    model.eval()
    total = 0.0
    count = 0
    for start in range(0, data.eval_ids.shape[0], batch_size):
        ids = _trim(data.eval_ids[start : start + batch_size])
        # Weight each batch by its number of predicted bytes so the mean is
        # over bytes, independent of how the split is batched.
        n_targets = int((_labels(ids)[:, 1:] != IGNORE_INDEX).sum())
        total += float(_loss(model, ids)) * n_targets
        count += n_targets
    return total / count

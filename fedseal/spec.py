"""The adapter spec: which tensors an update carries, with their shapes and wire dtypes.

A round's configuration fixes one spec; every update must match it exactly (names, shapes,
dtypes) and its digest is bound into the envelope. The spec also bounds sizes *before*
anything is allocated: the largest possible serialized update follows from it.

LoRA rank: PEFT names a module's factors ``<module>.lora_A[.<adapter>].weight`` (A: r x k)
and ``<module>.lora_B[.<adapter>].weight`` (B: d x r); `pair_lora_names` pairs them. A
lora-exact round may let clients train at other ranks (`client_ranks` in its strategy
params): each allowed rank is the spec `AdapterSpec.with_lora_rank(rank)`, with its own
digest, derived the same way by the aggregator, its clients and auditors.

Updates travel as safetensors bytes. The accumulator is always float32; bfloat16 and
float16 exist on the wire only to halve the bytes sent.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fedseal.canonical import canonical_json
from fedseal.errors import FormatError
from fedseal.sitemetrics import METRICS_METADATA_ALLOWANCE

__all__ = [
    "MAX_LORA_RANK",
    "AdapterSpec",
    "LoraFactorError",
    "LoraModuleNames",
    "TensorSpec",
    "WireDtype",
    "pair_lora_names",
]

_MAX_TENSORS = 65_536
_MAX_NAME = 512
_MAX_PARAMS = 4 * 1024**3  # 4 Gi parameters: far beyond any LoRA adapter
MAX_LORA_RANK = 4096  # far above any LoRA rank in use (PEFT's common ranks: 4 to 256)


class LoraFactorError(FormatError):
    """LoRA factors do not fit together (shapes, ranks, pairing, weights); message says which."""


class WireDtype(enum.Enum):
    """Element types allowed on the wire, named as safetensors names them."""

    FLOAT32 = "F32"
    BFLOAT16 = "BF16"
    FLOAT16 = "F16"

    @property
    def itemsize(self) -> int:
        return 4 if self is WireDtype.FLOAT32 else 2


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: WireDtype

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > _MAX_NAME or not self.name.isprintable():
            raise FormatError(f"tensor name {self.name[:80]!r} must be 1..{_MAX_NAME} printable chars")
        if not 1 <= len(self.shape) <= 4 or any(d <= 0 for d in self.shape):
            raise FormatError(f"tensor {self.name!r}: shape {self.shape} must have 1..4 positive dims")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


@dataclass(frozen=True)
class AdapterSpec:
    """Tensors sorted by name; build with `AdapterSpec.of(...)` or `from_tensors`."""

    tensors: tuple[TensorSpec, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tensors]
        if not names:
            raise FormatError("an adapter spec needs at least one tensor")
        if len(names) > _MAX_TENSORS:
            raise FormatError(f"an adapter spec may list at most {_MAX_TENSORS} tensors")
        if names != sorted(names) or len(set(names)) != len(names):
            raise FormatError("adapter spec tensor names must be unique and sorted")
        if self.num_parameters > _MAX_PARAMS:
            raise FormatError(f"adapter spec has {self.num_parameters} parameters, limit {_MAX_PARAMS}")

    @classmethod
    def of(cls, tensors: list[TensorSpec] | tuple[TensorSpec, ...]) -> AdapterSpec:
        return cls(tuple(sorted(tensors, key=lambda t: t.name)))

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Any], dtype: WireDtype | None = None) -> AdapterSpec:
        """Spec of a state dict of torch tensors or numpy arrays.

        `dtype` forces one wire dtype for all tensors; otherwise each tensor's own dtype
        is used (it must be float32, bfloat16 or float16).
        """
        specs = []
        for name, tensor in tensors.items():
            wire = dtype or _wire_dtype_of(tensor, name)
            specs.append(TensorSpec(name, tuple(int(d) for d in tensor.shape), wire))
        return cls.of(specs)

    # Derived sizes are cached: the receiver consults them on every upload, and recomputing
    # them walks every tensor (2-3 ms for a 256-tensor spec). A frozen dataclass's fields
    # never change, and cached_property stores outside them (equality and hash unchanged).
    @cached_property
    def num_parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    @cached_property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def by_name(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.tensors}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape for t in self.tensors}

    def lora_ranks(self) -> tuple[int, ...]:
        """The distinct ranks of the spec's LoRA pairs, ascending (empty: no LoRA pair).

        Raises LoraFactorError if a factor has no partner or a pair does not chain.
        """
        return tuple(sorted({rank for rank, _ in self._lora_pairs()}))

    def with_lora_rank(self, rank: int) -> AdapterSpec:
        """This spec with every LoRA pair at rank `rank`: A (r, k) -> (rank, k) and
        B (d, r) -> (d, rank); names, dtypes and every other tensor unchanged.

        Raises LoraFactorError if `rank` is not an integer in [1, MAX_LORA_RANK], if the
        spec has no LoRA pair, or if a pair is not a 2-D A (r, k) with a 2-D B (d, r).
        """
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_LORA_RANK:
            raise LoraFactorError(f"LoRA rank must be an integer in [1, {MAX_LORA_RANK}], got {rank!r}")
        pairs = self._lora_pairs()
        if not pairs:
            raise LoraFactorError("the adapter spec has no LoRA factor pair whose rank could change")
        shapes = self.shapes()
        for _, pair in pairs:
            (_, k), (d, _) = shapes[pair.a], shapes[pair.b]
            shapes[pair.a], shapes[pair.b] = (rank, k), (d, rank)
        return AdapterSpec(tuple(TensorSpec(t.name, shapes[t.name], t.dtype) for t in self.tensors))

    def _lora_pairs(self) -> list[tuple[int, LoraModuleNames]]:
        """(rank, names) of each LoRA pair, after checking that A and B chain."""
        shapes = self.shapes()
        pairs, _ = pair_lora_names(shapes)
        out = []
        for pair in pairs:
            a, b = shapes[pair.a], shapes[pair.b]
            if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
                raise LoraFactorError(f"LoRA module {pair.module!r}: B {b} and A {a} do not chain")
            out.append((a[0], pair))
        return out

    def max_serialized_size(self) -> int:
        """Upper bound on the safetensors encoding of a conforming update (header + data).

        safetensors writes an 8-byte header length, a JSON header with one entry per tensor
        (`"name":{"dtype":"BF16","shape":[..],"data_offsets":[a,b]}`) padded to 8 bytes, then
        the data. The bound counts every header entry at its longest possible form, and the
        site metrics a client may carry in the metadata (fedseal/sitemetrics.py).
        """
        return self._max_serialized_size

    @cached_property
    def _max_serialized_size(self) -> int:
        header = 64 + METRICS_METADATA_ALLOWANCE  # braces, metadata, padding
        for t in self.tensors:
            name_json = len(json.dumps(t.name))
            # 48 covers the fixed keys and punctuation; 21 per dim and per offset covers
            # the longest decimal u64 plus a comma.
            header += name_json + 48 + 21 * len(t.shape) + 2 * 21
        return 8 + header + 8 + self.data_bytes

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": "fedseal-adapter-spec/v1",
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.value} for t in self.tensors
            ],
        }

    @classmethod
    def from_json_obj(cls, obj: object) -> AdapterSpec:
        if not isinstance(obj, dict) or set(obj) != {"format", "tensors"}:
            raise FormatError("adapter spec must be an object with exactly 'format' and 'tensors'")
        if obj["format"] != "fedseal-adapter-spec/v1":
            raise FormatError(f"unknown adapter spec format {obj['format']!r}")
        tensors = obj["tensors"]
        if not isinstance(tensors, list):
            raise FormatError("adapter spec 'tensors' must be a list")
        specs = []
        for i, item in enumerate(tensors):
            if not isinstance(item, dict) or set(item) != {"name", "shape", "dtype"}:
                raise FormatError(f"adapter spec tensor #{i} must have exactly name, shape, dtype")
            name, shape, dtype = item["name"], item["shape"], item["dtype"]
            if not isinstance(name, str):
                raise FormatError(f"adapter spec tensor #{i}: name must be a string")
            if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in shape
            ):
                raise FormatError(f"adapter spec tensor {name!r}: shape must be a list of integers")
            try:
                wire = WireDtype(dtype)
            except ValueError:
                allowed = ", ".join(d.value for d in WireDtype)
                raise FormatError(
                    f"adapter spec tensor {name!r}: dtype {dtype!r} is not one of {allowed}"
                ) from None
            specs.append(TensorSpec(name, tuple(shape), wire))
        spec = cls(tuple(specs))
        return spec

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_json_obj())

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical_bytes()).digest()


_LORA_NAME = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?P<adapter>\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraModuleNames:
    module: str  # e.g. "base_model.model.layers.0.self_attn.q_proj" (plus ".<adapter>" if named)
    a: str
    b: str


def pair_lora_names(names: Iterable[str]) -> tuple[tuple[LoraModuleNames, ...], tuple[str, ...]]:
    """Pair PEFT LoRA factors by name; return the pairs and every other (non-LoRA) name.

    A factor without its partner is an error (LoraFactorError): it cannot be aggregated
    exactly, and treating it as an ordinary tensor would silently average half a product.
    """
    halves: dict[str, dict[str, str]] = {}
    others = []
    for name in sorted(names):
        match = _LORA_NAME.match(name)
        if match is None:
            others.append(name)
            continue
        key = match["module"] + (match["adapter"] or "")
        halves.setdefault(key, {})[match["which"]] = name
    pairs = []
    for key, found in sorted(halves.items()):
        if set(found) != {"A", "B"}:
            missing = "lora_B" if "A" in found else "lora_A"
            raise LoraFactorError(f"LoRA module {key!r} has no {missing} factor")
        pairs.append(LoraModuleNames(key, found["A"], found["B"]))
    return tuple(pairs), tuple(others)


def _wire_dtype_of(tensor: Any, name: str) -> WireDtype:
    text = str(tensor.dtype)
    for marker, wire in (
        ("bfloat16", WireDtype.BFLOAT16),
        ("float16", WireDtype.FLOAT16),
        ("float32", WireDtype.FLOAT32),
    ):
        if text.endswith(marker):
            return wire
    raise FormatError(f"tensor {name!r} has dtype {text}; updates must be float32, bfloat16 or float16")

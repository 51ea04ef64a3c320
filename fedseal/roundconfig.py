"""Round configuration (JSON, strict): shared by the aggregator, its clients and auditors.

A round config fixes everything a round needs: the adapter spec updates must match, the
quorum (`min_clients`, `max_clients`), the deadline, the aggregation strategy and the
largest chunk a client may send. The operator writes it; the aggregator records it verbatim
in the log's `round_opened` entry; clients read it (GetRound) before they seal an update.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fedseal.canonical import canonical_json
from fedseal.errors import FormatError
from fedseal.spec import AdapterSpec

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "STRATEGIES",
    "ConfigError",
    "RoundConfig",
    "config_int",
]

STRATEGIES = ("fedavg",)
MAX_CHUNK_SIZE = 4 * 1024 * 1024  # the transport's receive limit is set from this
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CLIENTS = 10_000


class ConfigError(FormatError):
    """A round or job configuration is invalid; the message names the field."""


def config_int(obj: dict[str, Any], key: str, lo: int, hi: int, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{where}: {key!r} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


@dataclass(frozen=True)
class RoundConfig:
    round_id: int
    adapter_spec: AdapterSpec
    min_clients: int
    max_clients: int
    deadline_seconds: float
    strategy: str = "fedavg"
    max_chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.round_id < 1:
            raise ConfigError("round config: 'round_id' must be >= 1")
        if not 1 <= self.min_clients <= self.max_clients <= MAX_CLIENTS:
            raise ConfigError(
                f"round config: need 1 <= min_clients ({self.min_clients}) <= max_clients "
                f"({self.max_clients}) <= {MAX_CLIENTS}"
            )
        if not 0 < self.deadline_seconds <= 7 * 24 * 3600:
            raise ConfigError("round config: 'deadline_seconds' must be in (0, 604800]")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"round config: unknown strategy {self.strategy!r}; available: {', '.join(STRATEGIES)}"
            )
        if not 4096 <= self.max_chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"round config: 'max_chunk_size' must be in [4096, {MAX_CHUNK_SIZE}]")

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": "fedseal-round-config/v1",
            "round_id": self.round_id,
            "adapter_spec": self.adapter_spec.to_json_obj(),
            "min_clients": self.min_clients,
            "max_clients": self.max_clients,
            # milliseconds keep the canonical JSON free of floats
            "deadline_ms": round(self.deadline_seconds * 1000),
            "strategy": self.strategy,
            "max_chunk_size": self.max_chunk_size,
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_json_obj())

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical_bytes()).digest()

    @classmethod
    def from_json_obj(cls, obj: object, *, round_id: int | None = None) -> RoundConfig:
        where = "round config"
        allowed = {
            "format",
            "round_id",
            "adapter_spec",
            "min_clients",
            "max_clients",
            "deadline_ms",
            "strategy",
            "max_chunk_size",
        }
        if not isinstance(obj, dict):
            raise ConfigError(f"{where}: must be a JSON object")
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown}")
        if obj.get("format", "fedseal-round-config/v1") != "fedseal-round-config/v1":
            raise ConfigError(f"{where}: unknown format {obj.get('format')!r}")
        if "adapter_spec" not in obj:
            raise ConfigError(f"{where}: 'adapter_spec' is required")
        rid = round_id if round_id is not None else config_int(obj, "round_id", 1, 2**53, where)
        return cls(
            round_id=rid,
            adapter_spec=AdapterSpec.from_json_obj(obj["adapter_spec"]),
            min_clients=config_int(obj, "min_clients", 1, MAX_CLIENTS, where),
            max_clients=config_int(obj, "max_clients", 1, MAX_CLIENTS, where),
            deadline_seconds=config_int(obj, "deadline_ms", 1, 7 * 24 * 3600 * 1000, where) / 1000,
            strategy=str(obj.get("strategy", "fedavg")),
            max_chunk_size=config_int(obj, "max_chunk_size", 4096, MAX_CHUNK_SIZE, where)
            if "max_chunk_size" in obj
            else DEFAULT_CHUNK_SIZE,
        )

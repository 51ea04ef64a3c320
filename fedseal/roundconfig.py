"""Round configuration (JSON, strict): shared by the aggregator, its clients and auditors.

A round config fixes everything a round needs: the adapter spec updates must match, the
quorum (`min_clients`, `max_clients`), the deadline, the aggregation strategy with its
validated parameters (`strategy_params`, see `StrategyParams`), the largest chunk a
client may send, and two optional sections: `dp` (central differential privacy in the
enclave, `DpParams`) and `approval` (the release gate, `ApprovalParams`). The operator
writes it; the aggregator records it verbatim in the log's `round_opened` entry; clients
read it (GetRound) before they seal an update.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from fedseal.canonical import b64decode_canonical, b64encode, canonical_json
from fedseal.errors import FormatError
from fedseal.spec import MAX_LORA_RANK, AdapterSpec

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DP_STRATEGIES",
    "MAX_CHUNK_SIZE",
    "MAX_CLIENT_RANKS",
    "MAX_JOB_ROUNDS",
    "MAX_STALENESS",
    "STRATEGIES",
    "AdaptiveClipParams",
    "ApprovalParams",
    "ConfigError",
    "DpParams",
    "DpSamplingRefusedError",
    "FedAdamParams",
    "FedAvgMParams",
    "FedAvgParams",
    "FedMedianParams",
    "FedProxParams",
    "FedYogiParams",
    "KrumParams",
    "LoraExactParams",
    "MultiKrumParams",
    "RoundConfig",
    "StalenessParams",
    "StrategyName",
    "StrategyParams",
    "TrimmedMeanParams",
    "config_int",
    "default_strategy_params",
    "parse_strategy_params",
]


class StrategyName(enum.StrEnum):
    """The aggregation strategies a round config may name (`strategy`)."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDAVGM = "fedavgm"
    FEDADAM = "fedadam"
    FEDYOGI = "fedyogi"
    FEDMEDIAN = "fedmedian"
    TRIMMED_MEAN = "trimmed-mean"
    KRUM = "krum"
    MULTI_KRUM = "multi-krum"
    LORA_EXACT = "lora-exact"


STRATEGIES = tuple(name.value for name in StrategyName)
# Central DP bounds each client's influence on a plain average of clipped deltas; robust
# statistics, Krum's choice and server optimizers would need their own sensitivity analysis.
DP_STRATEGIES = (StrategyName.FEDAVG, StrategyName.FEDPROX)
MAX_STALENESS = 1000
MAX_CHUNK_SIZE = 4 * 1024 * 1024  # the transport's receive limit is set from this
MAX_JOB_ROUNDS = 100_000  # rounds a job file may list (fedseal-job init checks the same)
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CLIENTS = 10_000
MAX_CLIENT_RANKS = 16  # LoRA ranks one lora-exact round may allow (client_ranks)


class ConfigError(FormatError):
    """A round or job configuration is invalid; the message names the field."""


class DpSamplingRefusedError(ConfigError):
    """`dp.sampling_rate` below 1: the accountant would claim amplification by sampling,
    but nothing samples clients (the host chooses who takes part), so it is refused."""


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
    # None means the strategy's defaults; __post_init__ replaces it with the resolved object,
    # so a config always carries (and records in the log) exactly what its strategy runs with.
    strategy_params: StrategyParams | None = None
    dp: DpParams | None = None
    approval: ApprovalParams | None = None
    # Outside DP: an update whose delta against the round's global adapter is longer (L2,
    # all tensors) is refused as `norm_exceeded` (aggregator/_intake.py), so one site cannot
    # swing an average. Without a global adapter of the round's spec (no --initial-adapter,
    # or a lora-exact client at another rank) the update's own norm is bounded. None: no bound.
    max_update_norm: float | None = None
    # Data governance: every update must carry a data card digest (fedseal/datacard.py), or a
    # validation summary whose checks all passed (fedseal/validation.py); refused by name.
    require_data_card: bool = False
    require_validation: bool = False

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
        name = StrategyName(self.strategy)
        params = self.strategy_params
        if params is None:
            params = default_strategy_params(name)
            object.__setattr__(self, "strategy_params", params)
        if name not in params.strategies:
            raise ConfigError(
                f"round config: strategy_params are {type(params).__name__}, which is not for "
                f"strategy {name.value!r}"
            )
        params.check_cohort(self.min_clients)
        if self.dp is not None and name not in DP_STRATEGIES:
            raise ConfigError(
                f"round config: 'dp' works with strategies {[s.value for s in DP_STRATEGIES]} "
                f"(a plain average of clipped deltas), not {name.value!r}"
            )
        if self.dp is not None and params.staleness is not None:
            raise ConfigError("round config: 'dp' and async mode (staleness) cannot be combined")
        if isinstance(params, LoraExactParams):
            params.client_specs(self.adapter_spec)  # each allowed rank must derive a spec
        if self.max_update_norm is not None:
            bound = _real(self.max_update_norm, "max_update_norm", 0.0, 1e9, lo_open=True, hi_open=False)
            object.__setattr__(self, "max_update_norm", bound)
            if self.dp is not None:
                raise ConfigError(
                    "round config: 'max_update_norm' is for rounds without 'dp' (a DP round clips "
                    "every delta to its clip norm instead of refusing it)"
                )

    @functools.cached_property
    def update_specs(self) -> Mapping[bytes, AdapterSpec]:
        """The specs an update may match, by digest: the round's adapter spec first, then
        those of a lora-exact round's `client_ranks` (a rank that yields the round spec
        itself is listed once). Other strategies: the round spec alone."""
        params = self.params
        derived = params.client_specs(self.adapter_spec) if isinstance(params, LoraExactParams) else ()
        specs = {self.adapter_spec.digest(): self.adapter_spec}
        for spec in derived:
            specs.setdefault(spec.digest(), spec)
        return specs  # typed read-only; a plain dict keeps the config picklable

    def update_spec(self, digest: bytes) -> AdapterSpec | None:
        """The allowed spec whose digest an update header names; None: not one of them."""
        return self.update_specs.get(digest)

    def spec_for_lora_rank(self, rank: int) -> AdapterSpec | None:
        """The spec a client training at LoRA rank `rank` must match, if the round allows it:
        a listed client rank, or the round spec's own rank (when all its pairs share one)."""
        params = self.params
        if isinstance(params, LoraExactParams) and rank in params.client_ranks:
            derived = self.adapter_spec.with_lora_rank(rank)
            return self.update_specs[derived.digest()]
        if self._own_lora_ranks() == (rank,):
            return self.adapter_spec
        return None

    @property
    def allowed_lora_ranks(self) -> tuple[int, ...]:
        """Every LoRA rank an update may have, ascending (the round spec's, plus client_ranks)."""
        params = self.params
        extra = params.client_ranks if isinstance(params, LoraExactParams) else ()
        return tuple(sorted({*self._own_lora_ranks(), *extra}))

    def _own_lora_ranks(self) -> tuple[int, ...]:
        try:
            return self.adapter_spec.lora_ranks()
        except FormatError:
            return ()  # not a LoRA spec (a strategy other than lora-exact may take any tensors)

    @property
    def strategy_name(self) -> StrategyName:
        return StrategyName(self.strategy)

    @property
    def params(self) -> StrategyParams:
        """The resolved strategy parameters (never None after construction)."""
        if self.strategy_params is None:  # unreachable: __post_init__ resolves it
            raise ConfigError("round config: strategy_params were not resolved")
        return self.strategy_params

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
        } | (
            ({"strategy_params": params} if (params := self.params.to_json_obj()) else {})
            | ({"dp": self.dp.to_json_obj()} if self.dp is not None else {})
            | ({"approval": self.approval.to_json_obj()} if self.approval is not None else {})
            | ({"max_update_norm": self.max_update_norm} if self.max_update_norm is not None else {})
            # Written only when set, so configs (and logs) from before them keep their digest.
            | ({"require_data_card": True} if self.require_data_card else {})
            | ({"require_validation": True} if self.require_validation else {})
        )

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
            "strategy_params",
            "dp",
            "approval",
            "max_update_norm",
            "require_data_card",
            "require_validation",
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
        strategy = obj.get("strategy", "fedavg")
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise ConfigError(f"{where}: unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
        return cls(
            round_id=rid,
            adapter_spec=AdapterSpec.from_json_obj(obj["adapter_spec"]),
            min_clients=config_int(obj, "min_clients", 1, MAX_CLIENTS, where),
            max_clients=config_int(obj, "max_clients", 1, MAX_CLIENTS, where),
            deadline_seconds=config_int(obj, "deadline_ms", 1, 7 * 24 * 3600 * 1000, where) / 1000,
            strategy=strategy,
            max_chunk_size=config_int(obj, "max_chunk_size", 4096, MAX_CHUNK_SIZE, where)
            if "max_chunk_size" in obj
            else DEFAULT_CHUNK_SIZE,
            strategy_params=parse_strategy_params(StrategyName(strategy), obj.get("strategy_params")),
            dp=DpParams.from_json_obj(obj["dp"]) if "dp" in obj else None,
            approval=ApprovalParams.from_json_obj(obj["approval"]) if "approval" in obj else None,
            max_update_norm=_real(
                obj["max_update_norm"], "max_update_norm", 0.0, 1e9, lo_open=True, hi_open=False
            )
            if "max_update_norm" in obj
            else None,
            require_data_card=_flag(obj, "require_data_card", where),
            require_validation=_flag(obj, "require_validation", where),
        )


def _flag(obj: dict[str, Any], key: str, where: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------- privacy and release


@dataclass(frozen=True)
class AdaptiveClipParams:
    """Adaptive clipping (Andrew et al., "Differentially Private Learning with Adaptive
    Clipping", NeurIPS 2021; Flower's `DifferentialPrivacyServerSideAdaptiveClipping`).

    The clip C_t of round t tracks the `target_quantile` of the clients' delta norms: the
    enclave counts the updates whose delta was not clipped, releases that count with
    discrete Gaussian noise of stddev `clipped_count_stddev` (its privacy cost is accounted
    with the model noise's, aggregator/_dp.py), and sets
    C_{t+1} = C_t · exp(-`learning_rate` · (noised count / denominator - `target_quantile`)).
    C_1 is `DpParams.clip_norm` (written `initial_clip` in the JSON)."""

    target_quantile: float
    learning_rate: float
    clipped_count_stddev: float

    def __post_init__(self) -> None:
        for key, lo, hi, lo_open, hi_open in (
            ("target_quantile", 0.0, 1.0, True, True),
            ("learning_rate", 0.0, 10.0, True, False),
            ("clipped_count_stddev", 0.0, 1e6, True, False),
        ):
            value = _real(getattr(self, key), f"dp.clip.{key}", lo, hi, lo_open=lo_open, hi_open=hi_open)
            object.__setattr__(self, key, value)


_DP_KEYS = {"epsilon", "delta", "clip_norm", "clip", "rounds", "sampling_rate", "initial_adapter_digest"}
_ADAPTIVE_KEYS = {"mode", "target_quantile", "learning_rate", "clipped_count_stddev", "initial_clip"}


@dataclass(frozen=True)
class DpParams:
    """Central DP over the whole job: the discrete Gaussian mechanism on the sum of clipped
    deltas (aggregator/enclave/_dp.py describes the mechanism, aggregator/_dp.py the
    accounting).

    Each accepted update's delta against the round's global adapter (round 1: the job's
    initial adapter, named by `initial_adapter_digest`, SHA-256 of its safetensors bytes;
    later rounds: the last released aggregate) is clipped to L2 norm `clip_norm` over all
    tensors together (fixed, the default; or adaptive, `adaptive_clip`, from `clip_norm` as
    its initial value); the enclave rounds the sum of clipped deltas to a grid, adds discrete
    Gaussian noise, and divides by the round's `max_clients` (a fixed denominator, not the
    number of updates that arrived; updates are weighted equally under DP: example counts
    are the clients' own claims and would raise the sensitivity). The noise is calibrated
    with zCDP and dp-accounting's RDP accountant so that `rounds` such rounds spend at most
    (`epsilon`, `delta`). `sampling_rate` must be 1 (its default): amplification by
    sampling holds only if clients are sampled at that rate with randomness the host does
    not control, and nothing samples them (the host chooses who takes part), so a rate
    below 1 is refused (`DpSamplingRefusedError`) rather than recorded as a spend the job
    does not get.

    JSON: a fixed clip is ``"clip_norm": C``; an adaptive one is ``"clip": {"mode":
    "adaptive", "target_quantile", "learning_rate", "clipped_count_stddev", "initial_clip"}``
    instead (one of the two).
    """

    epsilon: float
    delta: float
    clip_norm: float  # the fixed clip, or the adaptive clip's initial value
    rounds: int
    initial_adapter_digest: bytes
    sampling_rate: float = 1.0
    adaptive_clip: AdaptiveClipParams | None = None

    def __post_init__(self) -> None:
        for key, hi in (("epsilon", 20.0), ("delta", 0.01), ("clip_norm", 1e6), ("sampling_rate", 1.0)):
            value = _real(getattr(self, key), f"dp.{key}", 0.0, hi, lo_open=True, hi_open=False)
            object.__setattr__(self, key, value)
        if self.sampling_rate < 1.0:
            raise DpSamplingRefusedError(
                f"round config: 'dp.sampling_rate' = {self.sampling_rate:g} is refused: nothing samples "
                "clients (the host chooses who takes part), so no amplification by sampling can be "
                "claimed; set it to 1 or leave it out"
            )
        if (
            isinstance(self.rounds, bool)
            or not isinstance(self.rounds, int)
            or not 1 <= self.rounds <= 100_000
        ):
            raise ConfigError(
                f"round config: 'dp.rounds' must be an integer in [1, 100000], got {self.rounds!r}"
            )
        if not isinstance(self.initial_adapter_digest, bytes) or len(self.initial_adapter_digest) != 32:
            raise ConfigError("round config: 'dp.initial_adapter_digest' must be 32 bytes (SHA-256)")
        if self.adaptive_clip is not None and not isinstance(self.adaptive_clip, AdaptiveClipParams):
            raise ConfigError("round config: 'dp.clip' must be adaptive clipping parameters")

    def to_json_obj(self) -> dict[str, Any]:
        clip: dict[str, Any] = (
            {"clip_norm": self.clip_norm}
            if self.adaptive_clip is None
            else {
                "clip": {
                    "mode": "adaptive",
                    "target_quantile": self.adaptive_clip.target_quantile,
                    "learning_rate": self.adaptive_clip.learning_rate,
                    "clipped_count_stddev": self.adaptive_clip.clipped_count_stddev,
                    "initial_clip": self.clip_norm,
                }
            }
        )
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            **clip,
            "rounds": self.rounds,
            "sampling_rate": self.sampling_rate,
            "initial_adapter_digest": b64encode(self.initial_adapter_digest),
        }

    @classmethod
    def from_json_obj(cls, obj: object) -> DpParams:
        required = {"epsilon", "delta", "rounds", "initial_adapter_digest"}
        if (
            not isinstance(obj, dict)
            or not set(obj) <= _DP_KEYS
            or not set(obj) >= required
            or ("clip_norm" in obj) == ("clip" in obj)
        ):
            raise ConfigError(
                f"round config: 'dp' must be an object with {sorted(required)}, one of 'clip_norm' "
                "(a fixed clip) or 'clip' (adaptive clipping), and optionally 'sampling_rate'"
            )
        try:
            digest = b64decode_canonical(
                obj["initial_adapter_digest"], what="dp.initial_adapter_digest", size=32
            )
        except FormatError as exc:
            raise ConfigError(f"round config: {exc}") from None
        adaptive = None
        if "clip" in obj:
            clip = obj["clip"]
            if not isinstance(clip, dict) or set(clip) != _ADAPTIVE_KEYS or clip.get("mode") != "adaptive":
                raise ConfigError(
                    "round config: 'dp.clip' must be an object with exactly 'mode': 'adaptive', "
                    "'target_quantile', 'learning_rate', 'clipped_count_stddev' and 'initial_clip' "
                    "(a fixed clip is written 'clip_norm')"
                )
            adaptive = AdaptiveClipParams(
                target_quantile=_real(
                    clip["target_quantile"], "dp.clip.target_quantile", 0.0, 1.0, lo_open=True, hi_open=True
                ),
                learning_rate=_real(
                    clip["learning_rate"], "dp.clip.learning_rate", 0.0, 10.0, lo_open=True, hi_open=False
                ),
                clipped_count_stddev=_real(
                    clip["clipped_count_stddev"],
                    "dp.clip.clipped_count_stddev",
                    0.0,
                    1e6,
                    lo_open=True,
                    hi_open=False,
                ),
            )
            clip_norm = _real(
                clip["initial_clip"], "dp.clip.initial_clip", 0.0, 1e6, lo_open=True, hi_open=False
            )
        else:
            clip_norm = _real(obj["clip_norm"], "dp.clip_norm", 0.0, 1e6, lo_open=True, hi_open=False)
        return cls(
            epsilon=_real(obj["epsilon"], "dp.epsilon", 0.0, 20.0, lo_open=True, hi_open=False),
            delta=_real(obj["delta"], "dp.delta", 0.0, 0.01, lo_open=True, hi_open=False),
            clip_norm=clip_norm,
            rounds=_integer(obj["rounds"], "dp.rounds", 1, 100_000),
            sampling_rate=_real(
                obj.get("sampling_rate", 1.0), "dp.sampling_rate", 0.0, 1.0, lo_open=True, hi_open=False
            ),
            initial_adapter_digest=digest,
            adaptive_clip=adaptive,
        )


@dataclass(frozen=True)
class ApprovalParams:
    """The release gate: the aggregate is released only once `min_approvals` distinct keys of
    `approvers` (raw Ed25519 public keys) signed an approval of its digest; any one of them
    may refuse it instead, which withholds the aggregate for good (fedseal/approval.py)."""

    approvers: tuple[bytes, ...]
    min_approvals: int = 1

    def __post_init__(self) -> None:
        if not self.approvers or len(self.approvers) > 64:
            raise ConfigError("round config: 'approval.approvers' must list 1 to 64 keys")
        if any(not isinstance(k, bytes) or len(k) != 32 for k in self.approvers):
            raise ConfigError("round config: 'approval.approvers' must be raw 32-byte Ed25519 keys")
        if len(set(self.approvers)) != len(self.approvers):
            raise ConfigError("round config: 'approval.approvers' lists a key twice")
        if not 1 <= self.min_approvals <= len(self.approvers):
            raise ConfigError(
                f"round config: 'approval.min_approvals' must be in [1, {len(self.approvers)}], "
                f"got {self.min_approvals!r}"
            )

    def to_json_obj(self) -> dict[str, Any]:
        return {"approvers": [b64encode(k) for k in self.approvers], "min_approvals": self.min_approvals}

    @classmethod
    def from_json_obj(cls, obj: object) -> ApprovalParams:
        if not isinstance(obj, dict) or set(obj) != {"approvers", "min_approvals"}:
            raise ConfigError(
                "round config: 'approval' must be an object with 'approvers' and 'min_approvals'"
            )
        keys = obj["approvers"]
        if not isinstance(keys, list):
            raise ConfigError("round config: 'approval.approvers' must be a list of base64 keys")
        try:
            approvers = tuple(
                b64decode_canonical(k, what=f"approval.approvers[{n}]", size=32) for n, k in enumerate(keys)
            )
        except FormatError as exc:
            raise ConfigError(f"round config: {exc}") from None
        return cls(approvers, _integer(obj["min_approvals"], "approval.min_approvals", 1, 64))


# ---------------------------------------------------------------- strategy parameters
#
# Each strategy has one frozen parameter class. Its fields are the JSON keys of the round
# config's "strategy_params" object; defaults are filled in when the config is built, so the
# config (and the log's round_opened entry) records every value the round runs with.


# A parameter's kind ("real" or "int"), bounds, and whether each bound is excluded.
_Range = tuple[str, float, float, bool, bool]


def _real(value: object, key: str, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> float:
    where = f"round config: strategy_params {key!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    number = float(value)
    below = number <= lo if lo_open else number < lo
    above = number >= hi if hi_open else number > hi
    if not math.isfinite(number) or below or above:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{where} must be in {interval}, got {value!r}")
    return number


def _integer(value: object, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(
            f"round config: strategy_params {key!r} must be an integer in [{lo}, {hi}], got {value!r}"
        )
    return value


@dataclass(frozen=True)
class StalenessParams:
    """Async mode: an update computed on a global adapter `s` rounds old is weighted by
    ``alpha ** s`` (on top of its example count); one older than `max_staleness` is refused.

    Only strategies whose aggregate is a weighted average accept it (FedAvg, FedProx, the
    server optimizers, Multi-Krum's average and exact LoRA); median, trimmed mean and Krum
    ignore weights by definition, so staleness weighting would be a silent no-op there.
    """

    alpha: float
    max_staleness: int

    def __post_init__(self) -> None:
        _real(self.alpha, "staleness.alpha", 0.0, 1.0, lo_open=True, hi_open=False)
        _integer(self.max_staleness, "staleness.max_staleness", 0, MAX_STALENESS)

    def to_json_obj(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "max_staleness": self.max_staleness}

    @classmethod
    def from_json_obj(cls, obj: object) -> StalenessParams:
        if not isinstance(obj, dict) or set(obj) != {"alpha", "max_staleness"}:
            raise ConfigError(
                "round config: strategy_params 'staleness' must be an object with exactly "
                "'alpha' and 'max_staleness'"
            )
        alpha = _real(obj["alpha"], "staleness.alpha", 0.0, 1.0, lo_open=True, hi_open=False)
        return cls(alpha, _integer(obj["max_staleness"], "staleness.max_staleness", 0, MAX_STALENESS))


@dataclass(frozen=True, kw_only=True)
class StrategyParams:
    """Base of the per-strategy parameter classes. `staleness` set means async mode."""

    strategies: ClassVar[tuple[StrategyName, ...]] = ()
    # JSON/field name -> its range; the order is the JSON order.
    _ranges: ClassVar[dict[str, _Range]] = {}
    _weighted: ClassVar[bool] = True

    staleness: StalenessParams | None = None

    def __post_init__(self) -> None:
        for key, (kind, lo, hi, lo_open, hi_open) in self._ranges.items():
            value = getattr(self, key)
            if kind == "int":
                _integer(value, key, int(lo), int(hi))
            else:
                # Store a float even when an int was given, so equal configs compare equal.
                object.__setattr__(self, key, _real(value, key, lo, hi, lo_open=lo_open, hi_open=hi_open))
        if self.staleness is not None and not self._weighted:
            raise ConfigError(
                f"round config: strategy {self.strategies[0].value!r} ignores update weights, so it "
                "cannot apply staleness weighting (async mode); use an averaging strategy"
            )

    def check_cohort(self, min_clients: int) -> None:
        """Refuse parameters that cannot hold with as few as `min_clients` updates."""

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {key: getattr(self, key) for key in self._ranges}
        if self.staleness is not None:
            obj["staleness"] = self.staleness.to_json_obj()
        return obj

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> StrategyParams:
        unknown = sorted(set(obj) - set(cls._ranges) - {"staleness"})
        if unknown:
            raise ConfigError(
                f"round config: unknown strategy_params field(s) {unknown} for "
                f"{'/'.join(s.value for s in cls.strategies)}; allowed: {sorted(cls._ranges)}"
            )
        kwargs: dict[str, Any] = {}
        for key, (kind, lo, hi, lo_open, hi_open) in cls._ranges.items():
            if key in obj:
                value = obj[key]
                kwargs[key] = (
                    _integer(value, key, int(lo), int(hi))
                    if kind == "int"
                    else _real(value, key, lo, hi, lo_open=lo_open, hi_open=hi_open)
                )
        if "staleness" in obj:
            kwargs["staleness"] = StalenessParams.from_json_obj(obj["staleness"])
        try:
            return cls(**kwargs)
        except TypeError:
            required = [
                f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.init
            ]
            raise ConfigError(
                f"round config: strategy {cls.strategies[0].value!r} needs strategy_params {required}"
            ) from None


@dataclass(frozen=True, kw_only=True)
class FedAvgParams(StrategyParams):
    """Weighted FedAvg (McMahan et al. 2017). No parameters besides async mode."""

    strategies = (StrategyName.FEDAVG,)


@dataclass(frozen=True, kw_only=True)
class FedProxParams(StrategyParams):
    """FedProx (Li et al. 2020): the server averages like FedAvg; `proximal_mu` is for the
    clients, who add (mu/2)·||w - w_global||² to their local loss. Clients read it here."""

    strategies = (StrategyName.FEDPROX,)
    _ranges: ClassVar[dict[str, _Range]] = {"proximal_mu": ("real", 0.0, 1000.0, True, False)}

    proximal_mu: float


@dataclass(frozen=True, kw_only=True)
class FedAvgMParams(StrategyParams):
    """FedAvgM (Hsu et al. 2019): server momentum over the averaged pseudo-gradient."""

    strategies = (StrategyName.FEDAVGM,)
    _ranges: ClassVar[dict[str, _Range]] = {
        "server_lr": ("real", 0.0, 100.0, True, False),
        "momentum": ("real", 0.0, 1.0, False, True),
    }

    server_lr: float = 1.0
    momentum: float = 0.9


@dataclass(frozen=True, kw_only=True)
class _AdaptiveParams(StrategyParams):
    _ranges: ClassVar[dict[str, _Range]] = {
        "server_lr": ("real", 0.0, 100.0, True, False),
        "beta1": ("real", 0.0, 1.0, False, True),
        "beta2": ("real", 0.0, 1.0, False, True),
        "tau": ("real", 0.0, 1.0, True, False),
    }

    server_lr: float
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3


@dataclass(frozen=True, kw_only=True)
class FedAdamParams(_AdaptiveParams):
    """FedAdam (Reddi et al. 2021, Algorithm 2): eta = `server_lr`, tau is the adaptivity."""

    strategies = (StrategyName.FEDADAM,)

    server_lr: float = 0.1


@dataclass(frozen=True, kw_only=True)
class FedYogiParams(_AdaptiveParams):
    """FedYogi (Reddi et al. 2021, Algorithm 2)."""

    strategies = (StrategyName.FEDYOGI,)

    server_lr: float = 0.01


@dataclass(frozen=True, kw_only=True)
class FedMedianParams(StrategyParams):
    """Coordinate-wise median (Yin et al. 2018). No parameters."""

    strategies = (StrategyName.FEDMEDIAN,)
    _weighted = False


@dataclass(frozen=True, kw_only=True)
class TrimmedMeanParams(StrategyParams):
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop floor(beta·n) values at each end.

    Tolerates f Byzantine updates when floor(beta·n) >= f.
    """

    strategies = (StrategyName.TRIMMED_MEAN,)
    _ranges: ClassVar[dict[str, _Range]] = {"beta": ("real", 0.0, 0.5, True, True)}
    _weighted = False

    beta: float

    def check_cohort(self, min_clients: int) -> None:
        if math.floor(self.beta * min_clients) < 1:
            raise ConfigError(
                f"round config: trimmed-mean with beta={self.beta:g} trims nothing at "
                f"min_clients={min_clients}; raise beta or min_clients"
            )


@dataclass(frozen=True, kw_only=True)
class KrumParams(StrategyParams):
    """Krum (Blanchard et al. 2017) tolerating `f` Byzantine updates; needs n >= 2f + 3."""

    strategies = (StrategyName.KRUM,)
    _ranges: ClassVar[dict[str, _Range]] = {"f": ("int", 0, MAX_CLIENTS, False, False)}
    _weighted = False

    f: int

    def check_cohort(self, min_clients: int) -> None:
        if min_clients < 2 * self.f + 3:
            raise ConfigError(
                f"round config: {self.strategies[0].value} with f={self.f} needs min_clients >= "
                f"2f + 3 = {2 * self.f + 3} (Krum's bound n > 2f + 2), got {min_clients}"
            )


@dataclass(frozen=True, kw_only=True)
class MultiKrumParams(KrumParams):
    """Multi-Krum: average the `m` updates with the best Krum scores (m <= n - f)."""

    strategies = (StrategyName.MULTI_KRUM,)
    _ranges: ClassVar[dict[str, _Range]] = {
        "f": ("int", 0, MAX_CLIENTS, False, False),
        "m": ("int", 1, MAX_CLIENTS, False, False),
    }
    _weighted = True

    m: int

    def check_cohort(self, min_clients: int) -> None:
        super().check_cohort(min_clients)
        if self.m > min_clients - self.f:
            raise ConfigError(
                f"round config: multi-krum needs m <= min_clients - f = {min_clients - self.f}, "
                f"got m={self.m}"
            )


@dataclass(frozen=True, kw_only=True)
class LoraExactParams(StrategyParams):
    """Exact LoRA aggregation: the optimal rank-r factors of Σ pᵢ BᵢAᵢ at the spec's ranks.

    `client_ranks` (ascending, distinct, each in [1, MAX_LORA_RANK], at most
    MAX_CLIENT_RANKS of them; empty by default) are the LoRA ranks a client may train at,
    besides the round spec's own: a client at rank rᵢ sends an update matching
    ``adapter_spec.with_lora_rank(rᵢ)`` and names that spec's digest. The aggregate keeps
    the round spec's ranks (it is the output spec).
    """

    strategies = (StrategyName.LORA_EXACT,)

    client_ranks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        ranks = self.client_ranks
        if not isinstance(ranks, tuple | list) or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in ranks
        ):
            raise ConfigError(
                f"round config: strategy_params 'client_ranks' must be a list of integers, got {ranks!r}"
            )
        if len(ranks) > MAX_CLIENT_RANKS or any(not 1 <= r <= MAX_LORA_RANK for r in ranks):
            raise ConfigError(
                f"round config: strategy_params 'client_ranks' must list at most {MAX_CLIENT_RANKS} "
                f"ranks, each in [1, {MAX_LORA_RANK}], got {list(ranks)}"
            )
        if list(ranks) != sorted(set(ranks)):
            raise ConfigError(
                f"round config: strategy_params 'client_ranks' must be ascending without repeats, "
                f"got {list(ranks)}"
            )
        object.__setattr__(self, "client_ranks", tuple(ranks))

    def client_specs(self, spec: AdapterSpec) -> tuple[AdapterSpec, ...]:
        """The specs of the allowed client ranks, derived from the round spec `spec`, in
        `client_ranks` order (ConfigError if `spec` has no LoRA pair to derive them from)."""
        try:
            return tuple(spec.with_lora_rank(rank) for rank in self.client_ranks)
        except FormatError as exc:
            raise ConfigError(f"round config: strategy_params 'client_ranks': {exc}") from None

    def to_json_obj(self) -> dict[str, Any]:
        # Absent when empty, so configs without mixed ranks keep their digests.
        obj = super().to_json_obj()
        if self.client_ranks:
            obj["client_ranks"] = list(self.client_ranks)
        return obj

    @classmethod
    def from_json_obj(cls, obj: dict[str, Any]) -> StrategyParams:
        unknown = sorted(set(obj) - {"client_ranks", "staleness"})
        if unknown:
            raise ConfigError(
                f"round config: unknown strategy_params field(s) {unknown} for lora-exact; "
                "allowed: ['client_ranks', 'staleness']"
            )
        base = super().from_json_obj({k: v for k, v in obj.items() if k != "client_ranks"})
        if "client_ranks" not in obj:
            return base
        ranks = obj["client_ranks"]
        if not isinstance(ranks, list) or not ranks:
            # Empty is refused rather than dropped: a recorded config reads back as written.
            raise ConfigError(
                "round config: strategy_params 'client_ranks' must be a non-empty list of integers "
                f"(omit it to allow only the round spec's ranks), got {ranks!r}"
            )
        return cls(staleness=base.staleness, client_ranks=tuple(ranks))


_PARAMS_CLASSES: dict[StrategyName, type[StrategyParams]] = {
    cls.strategies[0]: cls
    for cls in (
        FedAvgParams,
        FedProxParams,
        FedAvgMParams,
        FedAdamParams,
        FedYogiParams,
        FedMedianParams,
        TrimmedMeanParams,
        KrumParams,
        MultiKrumParams,
        LoraExactParams,
    )
}


def parse_strategy_params(strategy: StrategyName, obj: object) -> StrategyParams:
    """Validate a round config's "strategy_params" object (absent: the defaults) for `strategy`."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise ConfigError("round config: 'strategy_params' must be a JSON object")
    return _PARAMS_CLASSES[strategy].from_json_obj(obj)


def default_strategy_params(strategy: StrategyName) -> StrategyParams:
    """The defaults for `strategy`; ConfigError if it has required parameters (Krum's f...)."""
    return parse_strategy_params(strategy, {})

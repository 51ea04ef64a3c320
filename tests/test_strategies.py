"""Aggregation strategies: round-config parameters, and each strategy against an independent
float64 reference written from the papers' definitions (numpy/torch, no shared code)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import adapter_spec, round_config

from aggregator.enclave.lora_exact import LoraFactorError
from aggregator.enclave.strategies import (
    AggregationError,
    FedAvg,
    FedMedian,
    Krum,
    LoraExact,
    MultiKrum,
    NotEnoughUpdatesError,
    ServerState,
    ServerStateError,
    StaleUpdateError,
    Strategy,
    StrategyDiscardedError,
    TrimmedMean,
    make_strategy,
    strategy_for_round,
)
from aggregator.enclave.strategies.krum import krum_scores
from fedseal.roundconfig import (
    STRATEGIES,
    ConfigError,
    FedAdamParams,
    FedAvgMParams,
    FedAvgParams,
    FedMedianParams,
    FedProxParams,
    FedYogiParams,
    KrumParams,
    MultiKrumParams,
    RoundConfig,
    StalenessParams,
    StrategyName,
    StrategyParams,
    TrimmedMeanParams,
    default_strategy_params,
)
from fedseal.spec import AdapterSpec, WireDtype

SHAPES = {
    "layers.0.q_proj.lora_A.weight": (4, 40),
    "layers.0.q_proj.lora_B.weight": (30, 4),
    "norm.weight": (7,),
}


def spec_of(dtype: WireDtype = WireDtype.FLOAT32) -> AdapterSpec:
    return AdapterSpec.from_tensors({n: torch.zeros(s) for n, s in SHAPES.items()}, dtype=dtype)


def updates(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=gen).to(dtype) for k, s in SHAPES.items()} for _ in range(n)]


def stacked(ups: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {k: np.stack([u[k].to(torch.float64).numpy() for u in ups]) for k in SHAPES}


def run(
    strategy_name: str, ups: list[dict[str, torch.Tensor]], params: StrategyParams | None = None
) -> tuple[Strategy, dict[str, torch.Tensor]]:
    """Accumulate `ups` with example counts 10, 20, ... and finalize."""
    strategy = make_strategy(strategy_name, spec_of(), params, piece_elements=16)
    for i, u in enumerate(ups):
        strategy.accumulate(u, 10 * (i + 1))
    return strategy, strategy.finalize()


def assert_close(
    actual: Mapping[str, torch.Tensor], expected: Mapping[str, np.ndarray], tol: float = 1e-5
) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name].numpy(), value, rtol=tol, atol=tol, err_msg=name)


# ---------------------------------------------------------------- round config


def test_every_strategy_name_is_implemented() -> None:
    assert set(STRATEGIES) == {s.value for s in StrategyName}
    for name in STRATEGIES:
        params: StrategyParams | None = {
            "krum": KrumParams(f=1),
            "multi-krum": MultiKrumParams(f=1, m=2),
            "trimmed-mean": TrimmedMeanParams(beta=0.2),
            "fedprox": FedProxParams(proximal_mu=0.01),
        }.get(name)
        strategy = make_strategy(name, spec_of(), params)
        assert strategy.name == name
        strategy.discard()


def test_strategy_params_round_trip_and_are_recorded() -> None:
    config = round_config(
        min_clients=7,
        max_clients=9,
        strategy="multi-krum",
        strategy_params=MultiKrumParams(f=2, m=3),
    )
    obj = json.loads(config.canonical_bytes())
    assert obj["strategy_params"] == {"f": 2, "m": 3}
    assert RoundConfig.from_json_obj(obj) == config

    adam = round_config(strategy="fedadam", strategy_params=FedAdamParams(staleness=StalenessParams(0.5, 3)))
    obj = json.loads(adam.canonical_bytes())
    # Defaults are resolved and recorded, so the log says exactly what ran.
    assert obj["strategy_params"] == {
        "server_lr": 0.1,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 0.001,
        "staleness": {"alpha": 0.5, "max_staleness": 3},
    }
    assert RoundConfig.from_json_obj(obj) == adam


def test_fedavg_config_without_params_is_unchanged() -> None:
    # No "strategy_params" key for a plain FedAvg round: older config digests still hold.
    assert "strategy_params" not in round_config().to_json_obj()
    assert round_config().params == FedAvgParams()


@pytest.mark.parametrize(
    ("strategy", "params", "message"),
    [
        ("krum", None, r"needs strategy_params \['f'\]"),
        ("krum", {"f": 1}, "needs min_clients >= 2f \\+ 3 = 5"),
        ("multi-krum", {"f": 0, "m": 4}, "m <= min_clients - f"),
        ("trimmed-mean", {"beta": 0.5}, r"must be in \(0, 0.5\)"),
        ("trimmed-mean", {"beta": 0.2}, "trims nothing at min_clients=3"),
        ("fedprox", {"proximal_mu": -1}, "proximal_mu"),
        ("fedprox", {"proximal_mu": True}, "must be a number"),
        ("fedadam", {"tau": 0}, "tau"),
        ("fedadam", {"beta1": 1.0}, "beta1"),
        ("fedavgm", {"momentum": "0.9"}, "must be a number"),
        ("fedavg", {"surprise": 1}, "unknown strategy_params"),
        ("fedmedian", {"staleness": {"alpha": 0.5, "max_staleness": 2}}, "ignores update weights"),
        ("fedavg", {"staleness": {"alpha": 0, "max_staleness": 2}}, "staleness.alpha"),
        ("fedavg", {"staleness": {"alpha": 0.5, "max_staleness": 10**6}}, "max_staleness"),
        ("fedavg", {"staleness": {"alpha": 0.5}}, "exactly 'alpha' and 'max_staleness'"),
        ("fedavg", [1], "must be a JSON object"),
    ],
)
def test_bad_strategy_params_name_the_field(strategy: str, params: object, message: str) -> None:
    obj = round_config(1).to_json_obj() | {"strategy": strategy}
    if params is not None:
        obj["strategy_params"] = params
    with pytest.raises(ConfigError, match=message):
        RoundConfig.from_json_obj(obj)


def test_params_of_another_strategy_are_refused() -> None:
    with pytest.raises(ConfigError, match="not for strategy 'fedavg'"):
        round_config(strategy="fedavg", strategy_params=FedMedianParams())
    with pytest.raises(AggregationError, match="not parameters for 'fedavg'"):
        make_strategy("fedavg", spec_of(), FedMedianParams())
    with pytest.raises(AggregationError, match="unknown strategy"):
        make_strategy("bulyan", spec_of())


def test_strategy_for_round_uses_the_recorded_params() -> None:
    config = round_config(min_clients=5, max_clients=5, strategy="krum", strategy_params=KrumParams(f=1))
    strategy = strategy_for_round(config)
    assert isinstance(strategy, Krum) and strategy.f == 1
    strategy.discard()
    with pytest.raises(ConfigError, match="needs strategy_params"):
        default_strategy_params(StrategyName.KRUM)


# ---------------------------------------------------------------- averaging and async mode


def test_fedavg_weighted_mean_and_bf16() -> None:
    ups = updates(5)
    _, out = run("fedavg", ups)
    w = np.array([10.0 * (i + 1) for i in range(5)])
    ref = {k: np.tensordot(w / w.sum(), v, axes=1) for k, v in stacked(ups).items()}
    assert_close(out, ref)

    bf = updates(5, dtype=torch.bfloat16)
    strategy = FedAvg(spec_of(WireDtype.BFLOAT16))
    for u in bf:
        strategy.accumulate(u, 1)
    assert_close(strategy.finalize(), {k: v.mean(0) for k, v in stacked(bf).items()})


def test_staleness_weights_and_bound() -> None:
    ups = updates(3)
    params = FedAvgParams(staleness=StalenessParams(alpha=0.5, max_staleness=2))
    strategy = make_strategy("fedavg", spec_of(), params)
    for u, s in zip(ups, (0, 1, 2), strict=True):
        strategy.accumulate(u, 100, staleness=s)
    with pytest.raises(StaleUpdateError, match="more than this round's max_staleness 2"):
        strategy.accumulate(ups[0], 100, staleness=3)
    w = np.array([1.0, 0.5, 0.25])
    assert_close(
        strategy.finalize(), {k: np.tensordot(w / w.sum(), v, axes=1) for k, v in stacked(ups).items()}
    )

    sync = make_strategy("fedavg", spec_of())
    with pytest.raises(StaleUpdateError, match="synchronous"):
        sync.accumulate(ups[0], 100, staleness=1)
    with pytest.raises(AggregationError, match="num_examples"):
        sync.accumulate(ups[0], 0)


def test_multi_krum_average_uses_staleness_not_example_counts() -> None:
    # Five identical honest updates: all are chosen; weights are alpha**s only.
    base = updates(1)[0]
    ups = [{k: v * (1 + 0.001 * i) for k, v in base.items()} for i in range(5)]
    params = MultiKrumParams(f=1, m=3, staleness=StalenessParams(alpha=0.5, max_staleness=4))
    strategy = make_strategy("multi-krum", spec_of(), params, piece_elements=16)
    for i, u in enumerate(ups):
        strategy.accumulate(u, 10**6 if i == 4 else 1, staleness=i % 2)
    out = strategy.finalize()
    assert isinstance(strategy, MultiKrum)
    chosen = strategy.selected
    assert len(chosen) == 3
    w = np.array([0.5 ** (i % 2) for i in chosen])
    ref = {k: np.tensordot(w / w.sum(), v[list(chosen)], axes=1) for k, v in stacked(ups).items()}
    assert_close(out, ref)


def test_fedprox_is_fedavg_on_the_server() -> None:
    ups = updates(4)
    prox_strategy, prox = run("fedprox", ups, FedProxParams(proximal_mu=0.1))
    _, avg = run("fedavg", ups)
    assert getattr(prox_strategy, "proximal_mu", None) == 0.1
    for k in SHAPES:
        assert torch.equal(prox[k], avg[k])


# ---------------------------------------------------------------- server optimizers


def _reference_optimizer(
    kind: str, means: list[dict[str, np.ndarray]], x0: dict[str, np.ndarray], p: dict[str, float]
) -> dict[str, np.ndarray]:
    """Reddi et al. 2021 Algorithm 2 / Hsu et al. 2019, straight from the equations, float64."""
    x = {k: v.copy() for k, v in x0.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v2 = {k: np.zeros_like(v) for k, v in x.items()}
    for mean in means:
        for k in x:
            delta = mean[k] - x[k]
            if kind == "fedavgm":
                m[k] = p["momentum"] * m[k] + delta
                x[k] = x[k] + p["server_lr"] * m[k]
                continue
            m[k] = p["beta1"] * m[k] + (1 - p["beta1"]) * delta
            if kind == "fedadam":
                v2[k] = p["beta2"] * v2[k] + (1 - p["beta2"]) * delta**2
            else:
                v2[k] = v2[k] - (1 - p["beta2"]) * delta**2 * np.sign(v2[k] - delta**2)
            x[k] = x[k] + p["server_lr"] * m[k] / (np.sqrt(v2[k]) + p["tau"])
    return x


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("fedavgm", FedAvgMParams(server_lr=0.7, momentum=0.9)),
        ("fedadam", FedAdamParams(server_lr=0.05, beta1=0.8, beta2=0.95, tau=0.01)),
        ("fedyogi", FedYogiParams(server_lr=0.05, beta1=0.8, beta2=0.95, tau=0.01)),
    ],
)
def test_server_optimizers_follow_the_papers_over_rounds(kind: str, params: StrategyParams) -> None:
    x0 = updates(1, seed=99)[0]
    state: ServerState | None = ServerState.initial(StrategyName(kind), x0)
    means = []
    for rnd in range(4):
        ups = updates(3, seed=rnd)
        strategy = make_strategy(kind, spec_of(), params, server_state=state)
        for u in ups:
            strategy.accumulate(u, 5)
        out = strategy.finalize()
        strategy.discard()  # the next state must survive discard
        state = strategy.next_server_state()
        assert state is not None and state.step == rnd + 1
        means.append({k: v.mean(0) for k, v in stacked(ups).items()})
        out[next(iter(SHAPES))].add_(1e6)  # the caller owns the aggregate: state unaffected
    expected = _reference_optimizer(
        kind, means, {k: v.double().numpy() for k, v in x0.items()}, dataclasses.asdict(params)
    )
    assert state is not None
    assert_close(state.weights, expected, tol=1e-4)
    assert not torch.equal(state.weights[next(iter(SHAPES))], x0[next(iter(SHAPES))])


def test_server_optimizer_bootstrap_and_state_checks() -> None:
    ups = updates(3)
    strategy = make_strategy("fedadam", spec_of())
    with pytest.raises(AggregationError, match="only available after finalize"):
        strategy.next_server_state()
    for u in ups:
        strategy.accumulate(u, 1)
    out = strategy.finalize()
    assert_close(out, {k: v.mean(0) for k, v in stacked(ups).items()})  # bootstrap: the mean
    state = strategy.next_server_state()
    assert state is not None and state.step == 0
    assert all(float(t.abs().sum()) == 0 for m in state.moments.values() for t in m.values())

    with pytest.raises(ServerStateError, match="belongs to fedadam"):
        make_strategy("fedyogi", spec_of(), server_state=state)
    with pytest.raises(ServerStateError, match="adapter spec"):
        make_strategy("fedadam", adapter_spec(), server_state=state)
    with pytest.raises(ServerStateError, match="carries no server state"):
        make_strategy("fedavg", spec_of(), server_state=state)
    with pytest.raises(ServerStateError, match="needs moments"):
        ServerState(StrategyName.FEDAVGM, 0, state.weights, state.moments)
    before = state.live_tensor_bytes()
    assert before == 3 * sum(math.prod(s) * 4 for s in SHAPES.values())
    state.discard()
    assert all(float(t.abs().sum()) == 0 for t in state.weights.values())


# ---------------------------------------------------------------- robust statistics


@pytest.mark.parametrize("n", [5, 6])
def test_median_matches_numpy(n: int) -> None:
    ups = updates(n)
    _, out = run("fedmedian", ups)
    assert_close(out, {k: np.median(v, axis=0) for k, v in stacked(ups).items()})


@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (10, 0.25), (9, 0.45)])
def test_trimmed_mean_matches_scipy_definition(n: int, beta: float) -> None:
    ups = updates(n)
    strategy, out = run("trimmed-mean", ups, TrimmedMeanParams(beta=beta))
    assert isinstance(strategy, TrimmedMean)
    cut = int(beta * n)
    ref = {k: np.sort(v, axis=0)[cut : n - cut].mean(0) for k, v in stacked(ups).items()}
    assert_close(out, ref)


def test_median_of_bfloat16_updates() -> None:
    ups = updates(5, dtype=torch.bfloat16)
    strategy = FedMedian(spec_of(WireDtype.BFLOAT16), FedMedianParams(), piece_elements=8)
    for u in ups:
        strategy.accumulate(u, 1)
    assert_close(strategy.finalize(), {k: np.median(v, axis=0) for k, v in stacked(ups).items()})


def _reference_krum(ups: list[dict[str, torch.Tensor]], f: int) -> list[float]:
    flat = np.stack([np.concatenate([u[k].double().numpy().ravel() for k in SHAPES]) for u in ups])
    n = len(ups)
    scores = []
    for i in range(n):
        d = sorted(float(((flat[i] - flat[j]) ** 2).sum()) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return scores


@pytest.mark.parametrize(("n", "f", "m"), [(7, 2, 1), (9, 3, 4), (5, 1, 4)])
def test_krum_and_multi_krum_match_the_definition(n: int, f: int, m: int) -> None:
    ups = updates(n, seed=3)
    # Spread the updates so that the scores are well separated.
    ups = [{k: v * (1 + i) for k, v in u.items()} for i, u in enumerate(ups)]
    params = KrumParams(f=f) if m == 1 else MultiKrumParams(f=f, m=m)
    strategy, out = run("krum" if m == 1 else "multi-krum", ups, params)
    assert isinstance(strategy, Krum)
    ref_scores = _reference_krum(ups, f)
    best = sorted(sorted(range(n), key=lambda i: (ref_scores[i], i))[:m])
    assert list(strategy.selected) == best
    ref = {k: v[best].mean(0) for k, v in stacked(ups).items()}
    assert_close(out, ref)


def test_krum_scores_need_enough_updates() -> None:
    with pytest.raises(NotEnoughUpdatesError, match="n >= 2f \\+ 3"):
        krum_scores(torch.zeros((4, 4), dtype=torch.float64), f=1)
    strategy = make_strategy("krum", spec_of(), KrumParams(f=2), piece_elements=16)
    for u in updates(6):
        strategy.accumulate(u, 1)
    with pytest.raises(NotEnoughUpdatesError, match="needs n >= 2f \\+ 3 = 7 updates, got 6"):
        strategy.finalize()


# ---------------------------------------------------------------- lifecycle and memory


@pytest.mark.parametrize(
    ("name", "params"),
    [("fedavg", None), ("fedmedian", None), ("krum", KrumParams(f=0)), ("lora-exact", None)],
)
def test_finalize_once_then_nothing_is_held(name: str, params: StrategyParams | None) -> None:
    strategy = make_strategy(name, spec_of(), params, piece_elements=16)
    with pytest.raises(NotEnoughUpdatesError, match="no accepted update"):
        strategy.finalize()
    strategy = make_strategy(name, spec_of(), params, piece_elements=16)
    for u in updates(3):
        strategy.accumulate(u, 1)
    strategy.finalize()
    assert strategy.live_tensor_bytes() == 0
    with pytest.raises(StrategyDiscardedError):
        strategy.finalize()
    with pytest.raises(StrategyDiscardedError):
        strategy.accumulate(updates(1)[0], 1)
    strategy.discard()  # idempotent


def test_live_tensor_bytes_do_not_grow_with_n() -> None:
    one_copy = sum(math.prod(s) * 4 for s in SHAPES.values())
    for name, params in (("fedavg", None), ("fedadam", None), ("fedmedian", None), ("lora-exact", None)):
        sizes = []
        for n in (2, 8):
            strategy = make_strategy(name, spec_of(), params)
            for u in updates(n):
                strategy.accumulate(u, 1)
            sizes.append(strategy.live_tensor_bytes())
            spooled = getattr(strategy, "spooled_bytes", 0)
            strategy.discard()
        assert sizes[0] == sizes[1] <= one_copy, name
        if name in ("fedmedian", "lora-exact"):
            assert sizes == [0, 0] and spooled >= 8 * one_copy  # on file, sealed


def test_overflowing_aggregate_fails_closed() -> None:
    big = {k: torch.full(s, 3e38) for k, s in SHAPES.items()}
    strategy = make_strategy("fedavg", spec_of())
    strategy.accumulate(big, 2)
    strategy.accumulate(big, 2)
    with pytest.raises(AggregationError, match="not finite"):
        strategy.finalize()


def test_spool_directory_is_honoured(tmp_path: Path) -> None:
    strategy = make_strategy("fedmedian", spec_of(), spool_dir=tmp_path)
    strategy.accumulate(updates(1)[0], 1)
    # The spool file is unlinked at creation: nothing to find by name, nothing left behind.
    assert list(tmp_path.iterdir()) == []
    strategy.discard()


def test_lora_exact_strategy_is_exact_on_the_lora_pair() -> None:
    ups = updates(4)
    strategy, out = run("lora-exact", ups)
    assert isinstance(strategy, LoraExact)
    w = np.array([10.0 * (i + 1) for i in range(4)])
    p = w / w.sum()
    a, b = "layers.0.q_proj.lora_A.weight", "layers.0.q_proj.lora_B.weight"
    dense = sum(p[i] * (ups[i][b].double() @ ups[i][a].double()).numpy() for i in range(4))
    u, s, vh = np.linalg.svd(dense)
    best = (u[:, :4] * s[:4]) @ vh[:4]
    got = (out[b].double() @ out[a].double()).numpy()
    np.testing.assert_allclose(got, best, atol=1e-4)
    (module,) = strategy.report
    expected_residual = np.linalg.norm(dense - best) / np.linalg.norm(dense)
    assert module.rank == 4 and module.stacked_rank == 16
    assert module.residual == pytest.approx(expected_residual, rel=1e-4)
    np.testing.assert_allclose(
        out["norm.weight"].numpy(), np.tensordot(p, stacked(ups)["norm.weight"], axes=1), atol=1e-6
    )


def test_public_api() -> None:
    import aggregator.enclave.strategies as strategies

    for name in strategies.__all__:
        assert hasattr(strategies, name), name


def test_lora_exact_refuses_a_spec_without_pairs_at_round_open() -> None:
    lonely = AdapterSpec.from_tensors({"m.lora_A.weight": torch.zeros(4, 8), "other": torch.zeros(3)})
    with pytest.raises(LoraFactorError, match="has no lora_B factor"):
        make_strategy("lora-exact", lonely)
    with pytest.raises(LoraFactorError, match="needs an adapter spec with LoRA factor pairs"):
        make_strategy("lora-exact", AdapterSpec.from_tensors({"w": torch.zeros(3)}))
    unchained = AdapterSpec.from_tensors(
        {"m.lora_A.weight": torch.zeros(4, 8), "m.lora_B.weight": torch.zeros(8, 3)}
    )
    with pytest.raises(LoraFactorError, match="do not chain"):
        make_strategy("lora-exact", unchained)

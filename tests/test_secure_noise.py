"""Secure DP noise (aggregator/enclave/_noise.py): the CKS20 discrete Gaussian is exact (its
empirical law matches the closed form, also when the exact slow path decides), the grid
mechanism's noise has the calibrated scale and lands on the grid, every bit comes from the
OS-keyed ChaCha20 stream and none from numpy's generators, the accountant is conservative
against the continuous Gaussian, and bad parameters are refused by name."""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction

import dp_accounting
import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from aggregator.enclave import _noise
from aggregator.enclave._noise import (
    NoiseParameterError,
    add_secure_noise,
    calibrate_secure_noise,
    discrete_gaussian,
    grid_step,
    quantised_sensitivity,
    secure_epsilon_after,
)
from fedseal.roundconfig import DpParams


def _params(**overrides: object) -> DpParams:
    fields: dict[str, object] = {
        "epsilon": 8.0,
        "delta": 1e-5,
        "clip_norm": 1.0,
        "rounds": 10,
        "initial_adapter_digest": hashlib.sha256(b"initial").digest(),
    }
    fields.update(overrides)
    return DpParams(**fields)  # type: ignore[arg-type]


def _chi_square_p_value(samples: np.ndarray, sigma: float) -> float:
    """Goodness of fit against N_Z(0, sigma²). Each tail is folded into one edge bin of at
    least 5 expected samples (a lone sparse tail bin would break the chi-square law)."""
    support = np.arange(-int(12 * sigma) - 2, int(12 * sigma) + 3)
    pmf = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma**2))
    pmf /= pmf.sum()
    expected = pmf * len(samples)
    observed = np.array([np.count_nonzero(samples == k) for k in support], dtype=np.float64)
    assert observed.sum() == len(samples), "a sample fell outside 12 sigma"
    upper = np.cumsum(expected[::-1])[::-1]  # expected at or above each support point
    edge = int(support[np.nonzero(upper >= 5)[0][-1]])  # symmetric: the same on the left
    inner = (support > -edge) & (support < edge)
    left, right = support <= -edge, support >= edge
    obs = np.concatenate([[observed[left].sum()], observed[inner], [observed[right].sum()]])
    exp = np.concatenate([[expected[left].sum()], expected[inner], [expected[right].sum()]])
    statistic, dof = float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1
    # Wilson-Hilferty: (X/k)^(1/3) is close to normal for a chi-square X with k dof.
    z = ((statistic / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.5, 7.3])
def test_discrete_gaussian_matches_its_exact_law(sigma: float) -> None:
    samples = discrete_gaussian(sigma, 200_000)
    assert samples.dtype == np.int64 and samples.shape == (200_000,)
    assert _chi_square_p_value(samples, sigma) > 1e-6


def test_large_scale_moments() -> None:
    """At sigma = 1e5 the discrete Gaussian's variance equals sigma² to within e^-(2π²·sigma²)."""
    n, sigma = 1 << 20, 1e5
    samples = discrete_gaussian(sigma, n).astype(np.float64)
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(n)
    assert samples.var() / sigma**2 == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))


def test_exact_slow_paths_keep_the_law(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widen the float fast paths' margins so that many decisions take the exact rational
    paths; the samples must still follow the discrete Gaussian."""
    calls = {"bernoulli": 0, "floor": 0}
    real_less, real_floor = _noise._less_than_exp_slow, _noise._floor_exponential_slow

    def less(stream: _noise._KeyStream, u: int, bits: int, x: Fraction) -> bool:
        calls["bernoulli"] += 1
        return real_less(stream, u, bits, x)

    def floor(stream: _noise._KeyStream, u: int, bits: int, t: int) -> int:
        calls["floor"] += 1
        return real_floor(stream, u, bits, t)

    monkeypatch.setattr(_noise, "_MARGIN", 2.0**-7)
    monkeypatch.setattr(_noise, "_FLOOR_MARGIN", 2.0**-6)
    monkeypatch.setattr(_noise, "_less_than_exp_slow", less)
    monkeypatch.setattr(_noise, "_floor_exponential_slow", floor)
    samples = discrete_gaussian(1.7, 20_000)
    assert calls["bernoulli"] > 300 and calls["floor"] > 300
    assert _chi_square_p_value(samples, 1.7) > 1e-6


def test_floor_exponential_slow_path_respects_the_prefix() -> None:
    """The exact floor(t·E) path stays within what U's 64-bit prefix allows, also for a
    prefix of zeros (U below 2^-64)."""
    stream = _noise._KeyStream()
    for u, t in ((3 << 60, 5), (12345678901234567, 1000), (1, 7), (0, 3)):
        got = _noise._floor_exponential_slow(stream, u, 64, t)
        if u:  # U lies in [u, u + 1)·2^-64
            low = math.floor(-t * (math.log(u + 1) - 64 * math.log(2)))
            assert low <= got <= math.floor(-t * (math.log(u) - 64 * math.log(2)))
        else:
            assert got >= math.floor(64 * t * math.log(2))


@pytest.mark.parametrize("x", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(7, 2), Fraction(200, 7)])
def test_exact_bounds_bracket_exp(x: Fraction) -> None:
    lo, hi = _noise._exp_neg_bounds(x, 30)
    assert lo <= Fraction(math.exp(-float(x))) * (1 + Fraction(1, 10**12)) and hi >= Fraction(
        math.exp(-float(x))
    ) * (1 - Fraction(1, 10**12))
    assert lo <= hi and float(hi - lo) < 1e-20


def test_mechanism_noise_has_the_calibrated_scale_and_stays_on_the_grid() -> None:
    sigma, gamma, n = 3.0, 3e-4, 1 << 20
    values = torch.linspace(-2.0, 2.0, n, dtype=torch.float64)
    noised = {"w": values.clone()}
    add_secure_noise(noised, sigma, gamma=gamma)
    steps = noised["w"] / gamma
    assert float((steps - torch.round(steps)).abs().max()) < 1e-9  # on the grid up to float64 rounding
    noise = (noised["w"] - values).numpy()
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(n)
    assert noise.var() / sigma**2 == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))


def test_float32_output_is_a_function_of_the_grid_integers() -> None:
    """float32 tensors receive float32(k·gamma) for an integer k: the released value carries no
    low-order bits of a floating-point sample."""
    gamma = 2.0**-10
    tensor = torch.randn(50_000, dtype=torch.float32)
    add_secure_noise({"w": tensor}, 0.5, gamma=gamma)
    steps = tensor.double() / gamma
    assert torch.equal(steps, torch.round(steps))  # gamma a power of two: float32 holds k·gamma exactly


def test_bits_come_from_the_os_keyed_chacha20_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    def fixed(byte: int):  # type: ignore[no-untyped-def]
        def fill(buf: bytearray) -> None:
            buf[:] = bytes([byte]) * len(buf)

        return fill

    monkeypatch.setattr(_noise, "_fill_seed", fixed(7))
    stream = _noise._KeyStream()
    expected = (
        Cipher(algorithms.ChaCha20(bytes([7]) * 32, bytes(16)), mode=None).encryptor().update(bytes(64))
    )
    assert stream.words(16).tobytes() == expected

    def run() -> torch.Tensor:
        tensor = torch.zeros(10_000, dtype=torch.float64)
        add_secure_noise({"w": tensor}, 1.0, gamma=0.01)
        return tensor

    first, second = run(), run()
    assert torch.equal(first, second) and bool(first.any())
    monkeypatch.setattr(_noise, "_fill_seed", fixed(8))
    assert not torch.equal(run(), first)


def test_numpy_generators_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("numpy's generator was used")

    for name in ("default_rng", "Generator", "PCG64", "normal", "standard_normal", "randint", "random"):
        monkeypatch.setattr(np.random, name, refuse)
    tensor = torch.zeros(20_000)
    add_secure_noise({"w": tensor}, 1.0, gamma=0.01)
    assert bool(tensor.any())


def test_fresh_key_every_call() -> None:
    a, b = torch.zeros(1000, dtype=torch.float64), torch.zeros(1000, dtype=torch.float64)
    add_secure_noise({"w": a}, 1.0, gamma=0.01)
    add_secure_noise({"w": b}, 1.0, gamma=0.01)
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    ("rounds", "clip", "dimension"), [(1, 1.0, 1000), (10, 0.5, 16_777_216), (20, 2.0, 4096)]
)
def test_accounting_is_conservative_against_the_continuous_gaussian(
    rounds: int, clip: float, dimension: int
) -> None:
    params = _params(rounds=rounds, clip_norm=clip)
    gamma = grid_step(clip, dimension)
    calibration = calibrate_secure_noise(params, dimension=dimension, gamma=gamma)
    assert calibration.sensitivity == pytest.approx(1.01 * clip) and calibration.sensitivity > 1.01 * clip * (
        1 - 1e-12
    )
    spent = secure_epsilon_after(params, calibration, rounds)
    assert spent <= params.epsilon and spent == pytest.approx(params.epsilon, rel=1e-3)
    assert secure_epsilon_after(params, calibration, 0) == 0.0

    # The continuous Gaussian at the same noise stddev, accounted exactly (PLD), spends less.
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(calibration.sigma / clip), rounds)
    )
    assert float(accountant.get_epsilon(params.delta)) <= spent
    # ...and the continuous Gaussian calibrated exactly (PLD) for the same budget needs less noise.
    continuous = dp_accounting.calibrate_dp_mechanism(
        dp_accounting.pld.PLDAccountant,
        lambda s: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(s), rounds),
        params.epsilon,
        params.delta,
        dp_accounting.ExplicitBracketInterval(0.2, 1000.0),
        tol=1e-4,
    )
    assert calibration.sigma >= continuous * clip

    # Independently, zCDP's standard conversion (Bun-Steinke 2016) bounds the RDP figure.
    rho = rounds * calibration.sensitivity**2 / (2 * calibration.sigma**2)
    assert spent <= rho + 2 * math.sqrt(rho * math.log(1 / params.delta)) + 1e-9


def test_sensitivity_bound_covers_worst_case_rounding() -> None:
    """Two sums that differ by a delta of norm C, placed so every coordinate rounds apart."""
    d, gamma, clip = 400, 0.01, 0.202  # each coordinate moves by 1.01 gamma and rounds 2 gamma apart
    a = torch.full((d,), 0.5 * gamma - 1e-7, dtype=torch.float64)
    b = a + clip / math.sqrt(d)
    qa, qb = torch.round(a / gamma) * gamma, torch.round(b / gamma) * gamma
    assert float(torch.linalg.vector_norm(b - a)) == pytest.approx(clip)
    assert float(torch.linalg.vector_norm(qb - qa)) <= quantised_sensitivity(clip, d, gamma)
    assert float(torch.linalg.vector_norm(qb - qa)) > clip + 0.5 * math.sqrt(d) * gamma  # not C + √d·gamma/2


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: add_secure_noise({"w": torch.zeros(3)}, 0.0, gamma=0.1), "'sigma'"),
        (lambda: add_secure_noise({"w": torch.zeros(3)}, float("nan"), gamma=0.1), "'sigma'"),
        (lambda: add_secure_noise({"w": torch.zeros(3)}, 1.0, gamma=-1.0), "'gamma'"),
        (lambda: add_secure_noise({"w": torch.zeros(3)}, 1.0, gamma=True), "'gamma'"),
        (lambda: add_secure_noise({"w": torch.zeros(3)}, 1e6, gamma=1e-9), "coarser grid"),
        (lambda: add_secure_noise({"w": torch.zeros(3, dtype=torch.int32)}, 1.0, gamma=0.1), "'w'"),
        (lambda: add_secure_noise({"w": torch.zeros(4, 4).t()}, 1.0, gamma=0.1), "'w'"),
        (lambda: add_secure_noise({"w": torch.tensor([0.0, float("nan")])}, 1.0, gamma=0.1), "non-finite"),
        (lambda: add_secure_noise({"w": torch.tensor([1e30])}, 1.0, gamma=0.1), "2^50"),
        (lambda: discrete_gaussian(1.0, -1), "'n'"),
        (lambda: grid_step(1.0, 0), "'dimension'"),
        (lambda: grid_step(1.0, 10, inflation=2.0), "'inflation'"),
        (lambda: quantised_sensitivity(float("inf"), 10, 0.1), "'clip_norm'"),
        (lambda: calibrate_secure_noise(_params(), dimension=10, gamma=0.0), "'gamma'"),
    ],
)
def test_bad_parameters_are_refused_by_name(call, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NoiseParameterError, match=name.replace("^", r"\^")):
        call()


def test_refused_tensor_is_left_untouched() -> None:
    tensor = torch.tensor([0.25, float("nan")])
    with pytest.raises(NoiseParameterError):
        add_secure_noise({"w": tensor}, 1.0, gamma=0.1)
    assert tensor[0] == 0.25

"""Secure Gaussian noise for central DP: an exact discrete Gaussian on a grid, from a CSPRNG.

Mechanism. `add_secure_noise(tensors, sigma, gamma=gamma)` rounds every coordinate v of the
value it is given to the nearest multiple of gamma, k = round(v/gamma) (an integer), adds an
integer Y ~ N_Z(0, (sigma/gamma)²) drawn from the discrete Gaussian of Canonne, Kamath and
Steinke (CKS20, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020), and writes
back (k + Y)·gamma. The released float is a function of the integer k + Y alone, so the low
bits of a floating-point sample, which Mironov's attack (CCS 2012) reads, do not exist here.

Sensitivity after quantisation. Call it on the sum S of the round's clipped deltas (each of
L2 norm at most C). Neighbouring sums differ by one clipped delta; rounding moves each
coordinate of each of them by at most gamma/2, so |round(a) - round(b)| ≤ |a - b| + gamma per
coordinate and ‖q(S) - q(S')‖₂ ≤ C + √d·gamma over d coordinates (`quantised_sensitivity`).
The mean is post-processing: (noised S)/n + global. Calling this on the mean with
sigma/n and gamma/n is the same mechanism (the grid scales with it). `grid_step` picks gamma so
that the grid adds a chosen fraction (1 % by default) to C.

Accounting. The multivariate discrete Gaussian with integer L2 sensitivity Δ and scale sigma
satisfies ½(Δ/sigma)²-zCDP, the same Rényi curve as the continuous Gaussian (CKS20, their
concentrated-DP theorem for the multivariate discrete Gaussian). `calibrate_secure_noise`
therefore composes `ZCDpEvent(Δ²/2·sigma²)` per round with dp-accounting's RDP accountant at
Δ = C + √d·gamma. This is conservative against today's continuous accounting twice over: the
sensitivity is inflated by the grid, and RDP's conversion to (ε, δ) is looser than the PLD
accountant's exact one for the continuous Gaussian (tests/test_secure_noise.py checks
ε_discrete ≥ ε_continuous at the same sigma). The PLD accountant has no multivariate
discrete-Gaussian event, and using its continuous Gaussian event for this mechanism would
not be a proven bound. No amplification by sampling is claimed: `DpParams` refuses a
sampling rate below 1, since nothing samples clients.

Randomness. All bits come from a ChaCha20 keystream (the construction of the kernel's own
CSPRNG) under a 256-bit key read from the OS CSPRNG into a buffer that is wiped once the
cipher is keyed; a fresh key per call. numpy's generators are not used.

Sampler. CKS20 Algorithms 1-3 (discrete Laplace by rejection, then the discrete Gaussian by
rejection from it), vectorised with numpy in chunks. Every Bernoulli(exp(-x)) decision
compares a 32-bit uniform U with exp(-x): in float64 when the two are more than 2⁻⁴⁰ apart
(float error here is below 2⁻⁴⁸), otherwise (about once in 2³² decisions) U is extended
with fresh bits and compared with exact rational bounds on exp(-x) (alternating Taylor
series, `fractions.Fraction`) until the order is certain. The samples are therefore
exactly discrete Gaussian given uniform bits, with no table and no truncation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Any

import dp_accounting
import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedseal.errors import FedSealError
from fedseal.roundconfig import DpParams

__all__ = [
    "NoiseParameterError",
    "SecureNoiseCalibration",
    "add_secure_noise",
    "calibrate_secure_noise",
    "discrete_gaussian",
    "grid_step",
    "quantised_sensitivity",
    "secure_epsilon_after",
]

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


class NoiseParameterError(FedSealError):
    """A secure-noise parameter is out of range (message names it)."""


# Fast-path safety margin of a Bernoulli decision; float64 error in exp(-x) is below 2^-48.
_MARGIN = 2.0**-40
# Coordinates per chunk: bounds the sampler's working memory (a few tens of MB).
_CHUNK = 1 << 20
# Grid scale and grid values stay far below 2^53 so integers are exact in float64 and int64.
_MAX_GRID_SIGMA = 2.0**40
_MAX_GRID_VALUE = 2.0**50
# Rekey the keystream well before ChaCha20's 32-bit block counter (256 GiB) could wrap.
_REKEY_BYTES = 1 << 32
_SLOW_PATH_MAX_BITS = 4096


# ---------------------------------------------------------------- random bits


def _fill_seed(buf: bytearray) -> None:
    """Fill `buf` from the OS CSPRNG without an intermediate bytes object."""
    with open("/dev/urandom", "rb", buffering=0) as urandom:
        if urandom.readinto(buf) != len(buf):
            raise OSError("short read from the OS random source")


class _KeyStream:
    """Uniform 32-bit words from a ChaCha20 keystream keyed by the OS CSPRNG."""

    def __init__(self) -> None:
        self._buf = bytearray(4 * _CHUNK * 4)
        self._zeros = bytes(len(self._buf))
        self._used = 0
        self._rekey()

    def _rekey(self) -> None:
        key = bytearray(32)
        _fill_seed(key)
        try:
            self._cipher = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
        finally:
            key[:] = bytes(32)
        self._used = 0

    def words(self, n: int) -> npt.NDArray[np.uint32]:
        out = np.empty(n, dtype=np.uint32)
        view = out.view(np.uint8)
        done = 0
        while done < len(view):
            take = min(len(view) - done, len(self._buf))
            if self._used + take > _REKEY_BYTES:
                self._rekey()
            written = self._cipher.update_into(memoryview(self._zeros)[:take], self._buf)
            view[done : done + written] = np.frombuffer(self._buf, np.uint8, count=written)
            done += written
            self._used += written
        return out

    def close(self) -> None:
        self._buf[:] = self._zeros


# ---------------------------------------------------------------- exact Bernoulli(exp(-x))


def _alternating_bounds(f: Fraction, terms: int) -> tuple[Fraction, Fraction]:
    """Bounds on exp(-f) for 0 ≤ f ≤ 1: consecutive partial sums of its Taylor series
    bracket it, because the terms alternate in sign and do not grow in magnitude."""
    term, total = Fraction(1), Fraction(1)
    previous = total
    for j in range(1, terms + 1):
        term = -term * f / j
        previous, total = total, total + term
    return max(Fraction(0), min(previous, total)), max(previous, total)


def _exp_neg_bounds(x: Fraction, terms: int) -> tuple[Fraction, Fraction]:
    whole = math.floor(x)
    lo, hi = _alternating_bounds(x - whole, terms)
    if whole:
        e_lo, e_hi = _alternating_bounds(Fraction(1), terms)
        lo, hi = lo * e_lo**whole, hi * e_hi**whole
    return lo, hi


def _less_than_exp_slow(stream: _KeyStream, u: int, x: Fraction) -> bool:
    """Is U < exp(-x), for a uniform U in [0, 1) whose first 32 bits are `u`? Extends U
    with fresh bits and tightens exact bounds on exp(-x) until the answer is certain."""
    bits, terms = 32, 24
    while bits <= _SLOW_PATH_MAX_BITS:
        lo, hi = _exp_neg_bounds(x, terms)
        if Fraction(u + 1, 1 << bits) <= lo:
            return True
        if Fraction(u, 1 << bits) >= hi:
            return False
        u = (u << 32) | int(stream.words(1)[0])
        bits, terms = bits + 32, terms + 16
    raise RuntimeError("secure noise: a Bernoulli decision did not resolve (probability < 2^-4000)")


def _bernoulli_exp(stream: _KeyStream, x: Floats, exact_x: Callable[[int], Fraction]) -> Bools:
    """Exact Bernoulli(exp(-x_i)) for each i; `exact_x(i)` is x_i as a rational."""
    p = np.exp(-x)
    p *= 2.0**32  # exact: a power of two
    u = stream.words(len(x)).astype(np.float64)
    yes = u + 1.0 <= p - _MARGIN * 2.0**32  # U < p for every U with this 32-bit prefix
    undecided = ~yes
    undecided &= u < p + _MARGIN * 2.0**32
    for i in np.flatnonzero(undecided).tolist():
        yes[i] = _less_than_exp_slow(stream, int(u[i]), exact_x(i))
    return yes


# Bernoulli(e^-1) in integers: a 32-bit prefix u decides U < e^-1 when u < _E1_YES, decides
# the opposite when u ≥ _E1_NO, and goes to the exact path in between.
_E1_YES = math.floor((math.exp(-1.0) - _MARGIN) * 2.0**32)
_E1_NO = math.ceil((math.exp(-1.0) + _MARGIN) * 2.0**32)


def _bernoulli_exp_minus_one(stream: _KeyStream, n: int) -> Bools:
    u = stream.words(n)
    yes = u < _E1_YES
    for i in np.flatnonzero(~yes & (u < _E1_NO)).tolist():
        yes[i] = _less_than_exp_slow(stream, int(u[i]), Fraction(1))
    return yes


# ---------------------------------------------------------------- CKS20 samplers


def _uniform_below(stream: _KeyStream, t: int, n: int) -> Ints:
    """n uniform integers in [0, t), by rejection from the smallest power of two ≥ t."""
    bits = (t - 1).bit_length()
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        want = n - filled + 16
        if bits <= 32:
            draw = (stream.words(want).astype(np.int64) >> (32 - bits)) if bits else np.zeros(want, np.int64)
        else:
            pair = stream.words(2 * want).astype(np.int64)
            draw = ((pair[0::2] << 32) | pair[1::2]) >> (64 - bits)
        draw = draw[draw < t][: n - filled]
        out[filled : filled + len(draw)] = draw
        filled += len(draw)
    return out


def _geometric(stream: _KeyStream, n: int) -> Ints:
    """n draws of V with P(V ≥ k) = e^-k: count successes of Bernoulli(e^-1) until a failure."""
    v = np.zeros(n, dtype=np.int64)
    active = np.arange(n)
    while active.size:
        active = active[_bernoulli_exp_minus_one(stream, active.size)]
        v[active] += 1
    return v


def _exact_ratio(values: Ints, t: int, i: int) -> Fraction:
    return Fraction(int(values[i]), t)


def _exact_exponent(values: Ints, shift: Fraction, sigma_sq: Fraction, i: int) -> Fraction:
    return (abs(int(values[i])) - shift) ** 2 / (2 * sigma_sq)


def _discrete_laplace(stream: _KeyStream, t: int, n: int) -> Ints:
    """n draws with P(Z = z) ∝ exp(-|z|/t) (CKS20 Algorithm 2 with s = 1)."""
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        want = (n - filled) * 17 // 10 + 16
        u = _uniform_below(stream, t, want)
        u = u[_bernoulli_exp(stream, u / t, partial(_exact_ratio, u, t))]
        x = u + t * _geometric(stream, len(u))
        negative = (stream.words(len(x)) & 1).astype(bool)
        z = np.where(negative, -x, x)[~(negative & (x == 0))][: n - filled]
        out[filled : filled + len(z)] = z
        filled += len(z)
    return out


def _stream_discrete_gaussian(stream: _KeyStream, sigma_sq: Fraction, n: int) -> Ints:
    """n draws of N_Z(0, sigma_sq) (CKS20 Algorithm 3): Y from the discrete Laplace of scale
    t = ⌊sigma⌋ + 1, kept with probability exp(-(|Y| - sigma²/t)² / 2·sigma²)."""
    t = math.isqrt(math.floor(sigma_sq)) + 1  # ⌊√x⌋ = isqrt(⌊x⌋)
    s = float(sigma_sq)
    shift = sigma_sq / t
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        want = (n - filled) * 14 // 10 + 16
        y = _discrete_laplace(stream, t, want)
        x = (np.abs(y) - s / t) ** 2 / (2.0 * s)
        keep = _bernoulli_exp(stream, x, partial(_exact_exponent, y, shift, sigma_sq))
        y = y[keep][: n - filled]
        out[filled : filled + len(y)] = y
        filled += len(y)
    return out


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NoiseParameterError(f"secure noise: '{name}' must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise NoiseParameterError(f"secure noise: '{name}' must be finite and > 0, got {value!r}")


def _grid_sigma_sq(sigma: float, gamma: float) -> Fraction:
    _positive("sigma", sigma)
    _positive("gamma", gamma)
    if sigma / gamma > _MAX_GRID_SIGMA:
        raise NoiseParameterError(
            f"secure noise: sigma/gamma = {sigma / gamma:.3g} exceeds 2^40; "
            "use a coarser grid (larger 'gamma')"
        )
    return (Fraction(sigma) / Fraction(gamma)) ** 2


def discrete_gaussian(sigma: float, n: int) -> Ints:
    """n independent draws of the discrete Gaussian N_Z(0, sigma²) (integers), from a fresh
    keystream. sigma is the scale parameter of the exact distribution ∝ exp(-y²/2·sigma²)."""
    sigma_sq = _grid_sigma_sq(sigma, 1.0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise NoiseParameterError(f"secure noise: 'n' must be a non-negative integer, got {n!r}")
    stream = _KeyStream()
    try:
        return _stream_discrete_gaussian(stream, sigma_sq, n)
    finally:
        stream.close()


# ---------------------------------------------------------------- the mechanism


def add_secure_noise(tensors: Mapping[str, torch.Tensor], sigma: float, *, gamma: float) -> None:
    """Quantise every coordinate to the grid gamma·Z and add gamma·N_Z(0, (sigma/gamma)²), in place.

    `sigma` is the noise standard deviation in the tensors' units (noise multiplier * the
    sensitivity from `calibrate_secure_noise`); `gamma` the grid step. Tensors must be
    contiguous floating-point CPU tensors with finite values.
    """
    sigma_sq = _grid_sigma_sq(sigma, gamma)
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise NoiseParameterError(
                f"secure noise: tensor {name!r} must be a contiguous floating-point CPU tensor"
            )
        # Checked before any tensor is touched, so that a refused call leaves all of them as they were.
        if not bool(torch.all(tensor.detach().abs() <= _MAX_GRID_VALUE * gamma)):  # False for NaN
            raise NoiseParameterError(
                f"secure noise: tensor {name!r} holds a non-finite value or one beyond 2^50 grid "
                "steps; refusing to noise it"
            )
    stream = _KeyStream()
    try:
        for name, tensor in tensors.items():
            flat = tensor.view(-1)
            for start in range(0, flat.numel(), _CHUNK):
                part = flat[start : start + _CHUNK]
                values = part.to(torch.float64, copy=True).numpy()
                grid = np.rint(values / gamma)
                values.fill(0.0)
                if not np.all(np.abs(grid) <= _MAX_GRID_VALUE):  # also false for NaN
                    raise NoiseParameterError(
                        f"secure noise: tensor {name!r} holds a non-finite value or one beyond "
                        "2^50 grid steps; refusing to noise it"
                    )
                noised = grid.astype(np.int64)
                noised += _stream_discrete_gaussian(stream, sigma_sq, len(noised))
                np.multiply(noised, gamma, out=grid)  # a function of the integers alone
                part.copy_(torch.from_numpy(grid))
                noised.fill(0)
                grid.fill(0.0)
    finally:
        stream.close()


# ---------------------------------------------------------------- calibration


def grid_step(clip_norm: float, dimension: int, *, inflation: float = 0.01) -> float:
    """The grid step gamma whose worst-case rounding, √d·gamma, adds `inflation`·C to the sensitivity."""
    _check_dimension(dimension)
    _positive("clip_norm", clip_norm)
    _positive("inflation", inflation)
    if inflation > 1:
        raise NoiseParameterError(f"secure noise: 'inflation' must be at most 1, got {inflation!r}")
    return inflation * clip_norm / math.sqrt(dimension)


def quantised_sensitivity(clip_norm: float, dimension: int, gamma: float) -> float:
    """C + √d·gamma, rounded up: the L2 distance between the grid roundings of two sums that
    differ by one delta of norm ≤ C."""
    _check_dimension(dimension)
    _positive("clip_norm", clip_norm)
    _positive("gamma", gamma)
    return math.nextafter(clip_norm + math.sqrt(dimension) * gamma, math.inf)


def _check_dimension(dimension: int) -> None:
    if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
        raise NoiseParameterError(f"secure noise: 'dimension' must be a positive integer, got {dimension!r}")


def _rdp_accountant() -> dp_accounting.rdp.RdpAccountant:
    return dp_accounting.rdp.RdpAccountant()


def _zcdp_event(noise_multiplier: float, rounds: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(0.5 / noise_multiplier**2), rounds)


@dataclass(frozen=True)
class SecureNoiseCalibration:
    """The mechanism one job runs: noise stddev `sigma` = noise_multiplier * sensitivity."""

    noise_multiplier: float  # sigma / sensitivity
    sensitivity: float  # C + √d·gamma
    gamma: float
    dimension: int

    @property
    def sigma(self) -> float:
        return self.noise_multiplier * self.sensitivity

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "mechanism": "discrete-gaussian-cks20-grid",
            "accountant": "rdp-zcdp",
            "noise_multiplier": self.noise_multiplier,
            "noise_stddev": self.sigma,
            "sensitivity": self.sensitivity,
            "grid_step": self.gamma,
            "dimension": self.dimension,
        }


def calibrate_secure_noise(params: DpParams, *, dimension: int, gamma: float) -> SecureNoiseCalibration:
    """The noise multiplier such that `params.rounds` rounds of the grid discrete Gaussian
    spend at most (ε, δ): zCDP composed by the RDP accountant at sensitivity C + √d·gamma."""
    sensitivity = quantised_sensitivity(params.clip_norm, dimension, gamma)
    try:
        multiplier = dp_accounting.calibrate_dp_mechanism(
            _rdp_accountant,
            lambda z: _zcdp_event(z, params.rounds),
            params.epsilon,
            params.delta,
            dp_accounting.ExplicitBracketInterval(0.05, 10_000.0),
            tol=1e-5,
        )
    except Exception as exc:  # the library raises ValueError/RuntimeError on infeasible targets
        raise NoiseParameterError(
            f"secure noise: cannot calibrate for epsilon={params.epsilon:g}, delta={params.delta:g}: {exc}"
        ) from None
    calibration = SecureNoiseCalibration(float(multiplier), sensitivity, gamma, dimension)
    _grid_sigma_sq(calibration.sigma, gamma)
    return calibration


def secure_epsilon_after(params: DpParams, calibration: SecureNoiseCalibration, rounds: int) -> float:
    """ε (at the job's δ) spent by `rounds` rounds of this mechanism."""
    if rounds == 0:
        return 0.0
    accountant = _rdp_accountant()
    accountant.compose(_zcdp_event(calibration.noise_multiplier, rounds))
    return float(accountant.get_epsilon(params.delta))

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
Δ = C + √d·gamma. This is conservative against the continuous Gaussian's exact accounting
twice over: the sensitivity is inflated by the grid, and RDP's conversion to (ε, δ) is looser
than the PLD accountant's exact one for the continuous Gaussian (tests/test_secure_noise.py checks
ε_discrete ≥ ε_continuous at the same sigma). The PLD accountant has no multivariate
discrete-Gaussian event, and using its continuous Gaussian event for this mechanism would
not be a proven bound. No amplification by sampling is claimed: `DpParams` refuses a
sampling rate below 1, since nothing samples clients.

Randomness. All bits come from a ChaCha20 keystream (the construction of the kernel's own
CSPRNG) under a 256-bit key read from the OS CSPRNG into a buffer that is wiped once the
cipher is keyed; a fresh key per call. numpy's generators are not used.

Sampler. CKS20 Algorithm 3 (the discrete Gaussian by rejection from a discrete Laplace of
scale t = floor(sigma) + 1), vectorised with numpy in chunks. The discrete Laplace is a random
sign on X = floor(t·E), E = -ln U exponential, which has CKS20 Algorithm 2's law
P(X >= k) = exp(-k/t) with one 64-bit uniform instead of a loop. Every decision is exact:
floor(t·E) is taken from float64 only when t·E is more than t·2^-40 away from an
integer (its float error is below t·2^-44) and U >= 2^-16; each Bernoulli(exp(-x)) compares a 32-bit uniform
U with exp(-x) in float64 only when they are more than 2^-40 apart. Otherwise (rarely: a few
times per 7B round) U is extended with fresh bits and compared with exact rational bounds on
exp(-x) (alternating Taylor series, `fractions.Fraction`) until the order is certain. The
samples are therefore exactly discrete Gaussian given uniform bits: no table, no truncation.
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


# Fast-path safety margin: float64 error in exp(-x) is below 2^-48.
_MARGIN = 2.0**-40
# Same for floor(t·E): the float error in t·ln(U), for U >= 2^-16, is below t·2^-44.
_FLOOR_MARGIN = 2.0**-40
# Coordinates per chunk: bounds the sampler's working memory (a few tens of MB).
_CHUNK = 1 << 20
# Grid scale and grid values stay far below 2^53 so integers are exact in float64 and int64.
_MAX_GRID_SIGMA = 2.0**40
_MAX_GRID_VALUE = 2.0**50
# Rekey the keystream well before ChaCha20's 32-bit block counter (256 GiB) could wrap.
_REKEY_BYTES = 1 << 32
_SLOW_PATH_MAX_BITS = 4096
_BUF_MAX = 4 * _CHUNK * 4  # keystream bytes produced per cipher call, at most


# ---------------------------------------------------------------- random bits


def _fill_seed(buf: bytearray) -> None:
    """Fill `buf` from the OS CSPRNG without an intermediate bytes object."""
    with open("/dev/urandom", "rb", buffering=0) as urandom:
        if urandom.readinto(buf) != len(buf):
            raise OSError("short read from the OS random source")


class _KeyStream:
    """Uniform 32-bit words from a ChaCha20 keystream keyed by the OS CSPRNG."""

    def __init__(self) -> None:
        # Grown on demand up to _BUF_MAX: a small draw (one count) costs no 16 MiB buffers.
        self._buf = bytearray(0)
        self._zeros = b""
        self._used = 0
        self._rekey()

    def _grow(self, size: int) -> None:
        if len(self._buf) < size:
            self._buf[:] = bytes(len(self._buf))
            self._buf = bytearray(size)
            self._zeros = bytes(size)

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
            take = min(len(view) - done, _BUF_MAX)
            self._grow(min(_BUF_MAX, max(take, 4096)))
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


def _less_than_exp_slow(stream: _KeyStream, u: int, bits: int, x: Fraction) -> bool:
    """Is U < exp(-x), for a uniform U in [0, 1) whose first `bits` bits are `u`? Extends U
    with fresh bits and tightens exact bounds on exp(-x) until the answer is certain."""
    terms = 24
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
        yes[i] = _less_than_exp_slow(stream, int(u[i]), 32, exact_x(i))
    return yes


# ---------------------------------------------------------------- CKS20 samplers


def _floor_exponential_slow(stream: _KeyStream, u: int, bits: int, t: int) -> int:
    """floor(-t·ln U), exactly, for a uniform U whose first `bits` bits are `u`."""
    while u < t << 8:  # until the prefix pins -t·ln U to within 1/256
        u, bits = (u << 32) | int(stream.words(1)[0]), bits + 32
    k = round(-t * (math.log(u + 0.5) - bits * math.log(2)))
    # floor(-t·ln U) is k or k - 1; it is at least k exactly when U <= exp(-k/t).
    return k if k <= 0 or _less_than_exp_slow(stream, u, bits, Fraction(k, t)) else k - 1


def _floor_exponential(stream: _KeyStream, t: int, n: int) -> Ints:
    """n draws of X = floor(t·E), E ~ Exp(1), so P(X >= k) = exp(-k/t): the one-sided
    geometric of CKS20 Algorithm 2, from E = -ln U with U uniform on 64 bits."""
    u = stream.words(2 * n).view(np.uint64)
    y = u.astype(np.float64)
    y += 0.5
    y *= 2.0**-64  # within 2^-53 (relative) of the midpoint of U's interval
    tiny = y < 2.0**-16  # rare (2^-16): left to the exact path, which keeps the bound simple
    np.log(y, out=y)
    y *= -t
    x = np.floor(y)
    y -= x  # the fractional part
    # Above 2^-16, |t·E - y| < t·2^-44 (U's interval 2^-48, ln's error < 11·2^-50, rounding);
    # a fractional part within t·_FLOOR_MARGIN of 0 or 1 goes to the exact path.
    err = t * _FLOOR_MARGIN
    tiny |= y < err
    tiny |= y > 1.0 - err
    out: Ints = x.astype(np.int64)
    for i in np.flatnonzero(tiny).tolist():
        out[i] = _floor_exponential_slow(stream, int(u[i]), 64, t)
    return out


def _exact_exponent(values: Ints, shift: Fraction, sigma_sq: Fraction, i: int) -> Fraction:
    return (abs(int(values[i])) - shift) ** 2 / (2 * sigma_sq)


def _discrete_laplace(stream: _KeyStream, t: int, n: int) -> Ints:
    """n draws with P(Z = z) ∝ exp(-|z|/t) (CKS20 Algorithm 2 with s = 1): a random sign
    on the one-sided geometric, with "-0" rejected."""
    out = np.empty(n, dtype=np.int64)
    filled = 0
    while filled < n:
        want = n - filled + 16
        x = _floor_exponential(stream, t, want)
        negative = np.unpackbits(stream.words((want + 31) // 32).view(np.uint8))[:want].astype(bool)
        np.negative(x, out=x, where=negative)
        z = x[~(negative & (x == 0))][: n - filled]
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
        x = np.abs(y).astype(np.float64)
        x -= s / t
        np.square(x, out=x)
        x /= 2.0 * s
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


class _NoiseSource:
    """Discrete Gaussian draws served in any sizes from blocks of _CHUNK, so that many small
    tensors cost what one large one does."""

    def __init__(self, stream: _KeyStream, sigma_sq: Fraction, total: int) -> None:
        self._stream, self._sigma_sq = stream, sigma_sq
        self._left = total  # draws still to serve: a small adapter draws no full block
        self._block: Ints = np.zeros(0, dtype=np.int64)
        self._next = 0

    def add_to(self, values: Ints) -> None:
        done = 0
        while done < len(values):
            if self._next == len(self._block):
                self._block.fill(0)
                size = max(1, min(_CHUNK, self._left))
                self._block = _stream_discrete_gaussian(self._stream, self._sigma_sq, size)
                self._left -= size
                self._next = 0
            take = min(len(values) - done, len(self._block) - self._next)
            values[done : done + take] += self._block[self._next : self._next + take]
            done += take
            self._next += take

    def close(self) -> None:
        self._block.fill(0)


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
        # Checked before any tensor is touched, so that a refused call leaves all of them as they
        # were; a reduction (no |tensor| copy of the plaintext). NaN compares False.
        if not float(torch.linalg.vector_norm(tensor.detach(), math.inf)) <= _MAX_GRID_VALUE * gamma:
            raise NoiseParameterError(
                f"secure noise: tensor {name!r} holds a non-finite value or one beyond 2^50 grid "
                "steps; refusing to noise it"
            )
    stream = _KeyStream()
    source = _NoiseSource(stream, sigma_sq, sum(t.numel() for t in tensors.values()))
    try:
        for name, tensor in tensors.items():
            flat = tensor.view(-1)
            for start in range(0, flat.numel(), _CHUNK):
                part = flat[start : start + _CHUNK]
                # In place: the two buffers below are the only ones that hold the plaintext
                # (or its grid value), and both are zeroed before they are dropped.
                grid = part.to(torch.float64, copy=True).numpy()
                noised: Ints | None = None
                try:
                    np.divide(grid, gamma, out=grid)
                    np.rint(grid, out=grid)
                    # Reductions, no |grid| copy; NaN compares False.
                    if not (float(grid.min()) >= -_MAX_GRID_VALUE and float(grid.max()) <= _MAX_GRID_VALUE):
                        raise NoiseParameterError(
                            f"secure noise: tensor {name!r} holds a non-finite value or one beyond "
                            "2^50 grid steps; refusing to noise it"
                        )
                    noised = grid.astype(np.int64)
                    source.add_to(noised)
                    np.multiply(noised, gamma, out=grid)  # a function of the integers alone
                    part.copy_(torch.from_numpy(grid))
                finally:
                    grid.fill(0.0)
                    if noised is not None:
                        noised.fill(0)
    finally:
        source.close()
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

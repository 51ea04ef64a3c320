"""DP noise for one round: the secure sampler against today's float Gaussian.

    python benchmarks/bench_noise.py            # 7B LoRA case: 256 tensors, 16.8 M float32
    python benchmarks/bench_noise.py --smoke    # a tiny adapter, one repeat (CI)

Both run on the same tensors (the round's sum of clipped deltas), at the noise stddev that
`calibrate_secure_noise` gives for epsilon = 8, delta = 1e-5, 10 rounds, C = 1 and a grid
that adds 1 % to C:

* secure: `aggregator.enclave._noise.add_secure_noise`, the CKS20 discrete Gaussian on the
  grid from a ChaCha20 keystream keyed by the OS CSPRNG (quantisation included), and
* peer: float32 N(0, sigma²) from numpy's PCG64 (`_float_gaussian` below), the float noise
  FedSeal used before the secure sampler, kept here as the reference a reader knows.

Timings are best of --repeats, one thread each (torch and the sampler are single-threaded
here), wall clock.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from aggregator.enclave._noise import add_secure_noise, calibrate_secure_noise, grid_step
from fedseal.roundconfig import DpParams

# 7B (hidden 4096, 32 layers), LoRA r = 16 on q/k/v/o: 128 modules, A and B each 16 x 4096.
LAYERS, MODULES, RANK, HIDDEN = 32, 4, 16, 4096


def _adapter(layers: int, hidden: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for layer in range(layers):
        for module in ("q", "k", "v", "o")[:MODULES]:
            prefix = f"layers.{layer}.{module}_proj"
            out[f"{prefix}.lora_A.weight"] = torch.randn(RANK, hidden) * 1e-3
            out[f"{prefix}.lora_B.weight"] = torch.randn(hidden, RANK) * 1e-3
    return out


def _float_gaussian(tensors: dict[str, torch.Tensor], sigma: float) -> None:
    """The former float path: N(0, sigma²) float32 from PCG64 seeded by the OS (reference only)."""
    rng = np.random.Generator(np.random.PCG64())
    for tensor in tensors.values():
        tensor.view(-1).add_(
            torch.from_numpy(rng.standard_normal(tensor.numel(), dtype=np.float32)), alpha=sigma
        )


def _best(
    repeats: int, fresh: Callable[[], dict[str, torch.Tensor]], run: Callable[[dict[str, torch.Tensor]], None]
) -> float:
    times = []
    for _ in range(repeats):
        tensors = fresh()
        start = time.perf_counter()
        run(tensors)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny adapter, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    layers, hidden, repeats = (2, 256, 1) if args.smoke else (LAYERS, HIDDEN, args.repeats)
    base = _adapter(layers, hidden)
    dimension = sum(t.numel() for t in base.values())
    params = DpParams(
        epsilon=8.0, delta=1e-5, clip_norm=1.0, rounds=10, initial_adapter_digest=hashlib.sha256(b"").digest()
    )
    gamma = grid_step(params.clip_norm, dimension)
    calibration = calibrate_secure_noise(params, dimension=dimension, gamma=gamma)
    sigma = calibration.sigma

    def fresh() -> dict[str, torch.Tensor]:
        return {name: t.clone() for name, t in base.items()}

    secure = _best(repeats, fresh, lambda t: add_secure_noise(t, sigma, gamma=gamma))
    peer = _best(repeats, fresh, lambda t: _float_gaussian(t, sigma))
    print(f"# {platform.processor() or platform.machine()}, python {sys.version.split()[0]}, one thread")
    print(
        f"noise for one round: {len(base)} tensors, {dimension:,} float32 coordinates; sigma {sigma:.4g} "
        f"(multiplier {calibration.noise_multiplier:.4g} x sensitivity {calibration.sensitivity:.4g}), "
        f"grid step {gamma:.3g}"
    )
    print(f"secure (CKS20 discrete Gaussian, ChaCha20 from the OS CSPRNG): {secure:.3f} s")
    print(f"peer (numpy PCG64 float32 Gaussian, the former float path):    {peer:.3f} s")
    print(f"ratio secure/peer: {secure / peer:.1f}x; secure {dimension / secure / 1e6:.2f} M coordinates/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

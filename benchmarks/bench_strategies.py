"""Every aggregation strategy at n = 8 and 32 on the 7B r16 workload, against Flower (not a test).

Workload: LoRA rank 16 on q/k/v/o of 32 layers, hidden 4096: 256 tensors, 16.8 M float32
parameters, 67.1 MB per update (one "model copy"). Updates are synthetic (seeded uniform
noise); `--quick` uses 4 layers (the 1/8 case).

Each case runs in a fresh child process, so that the peak RSS (the kernel's high-water mark,
which also sees torch's and numpy's allocations) belongs to that case alone. Reported:

  FedSeal  ingest   time of `accumulate` per update (as updates arrive: FedAvg adds into an
                    accumulator; spooling strategies seal the update to file)
           finalize time of `finalize` (the round-close latency)
           peak     RSS high-water above the child's baseline after imports, in MB and in
                    model copies; updates arrive one at a time, as over the wire
           spool    sealed bytes on file (not memory) for the spooling strategies
  Flower   time     the corresponding function of `flwr.server.strategy` on all n updates
                    already in memory (its server's model): `aggregate` (FedAvg),
                    `aggregate_median`, `aggregate_trimmed_avg`, `aggregate_krum`; for the
                    server optimizers the strategies' `aggregate_fit` on FitRes objects
           peak     as above; it includes the n input updates Flower holds
  ratios   close x: Flower time / FedSeal finalize (both are the work left when the round
           closes, with every update received); total x: Flower time / FedSeal (n x ingest +
           finalize); mem x: Flower peak / FedSeal peak

Flower comes with the `bench` extra; `--flower-python` runs its side under another
interpreter instead (its child needs only flwr and numpy). The host's CPU pressure (Linux
PSI) is recorded: figures taken while other work competes for the cores are noisy, and
`--threads 1` gives both sides the same single-core budget.
Run: python benchmarks/bench_strategies.py [--quick] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HIDDEN, RANK, MODULES = 4096, 16, ("q", "k", "v", "o")
RESULT_MARK = "BENCH-RESULT "


@dataclass(frozen=True)
class Case:
    side: str  # "fedseal" or "flower"
    strategy: str
    n: int
    layers: int
    spool_dir: str | None = None
    threads: int | None = None  # torch intra-op threads in the FedSeal child (None: torch's default)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


def krum_f(n: int) -> int:
    return max(1, n // 4 - 1)  # n = 8: f = 1; n = 32: f = 7 (n >= 2f + 3 either way)


def multi_krum_m(n: int) -> int:
    return n // 2


TRIM_BETA = 0.2
FLOWER_PEER = {
    "fedavg": "aggregate",
    "fedavgm": "FedAvgM.aggregate_fit",
    "fedadam": "FedAdam.aggregate_fit",
    "fedyogi": "FedYogi.aggregate_fit",
    "fedmedian": "aggregate_median",
    "trimmed-mean": "aggregate_trimmed_avg",
    "krum": "aggregate_krum",
    "multi-krum": "aggregate_krum (to_keep=m)",
}
STRATEGIES = (
    "fedavg",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedmedian",
    "trimmed-mean",
    "krum",
    "multi-krum",
    "lora-exact",
)


# ------------------------------------------------------------------ shared by both children


def tensor_shapes(layers: int) -> list[tuple[str, tuple[int, int]]]:
    shapes = []
    for layer in range(layers):
        for module in MODULES:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}_proj"
            shapes.append((f"{prefix}.lora_A.weight", (RANK, HIDDEN)))
            shapes.append((f"{prefix}.lora_B.weight", (HIDDEN, RANK)))
    return sorted(shapes)


def rss_now_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def generate(seed: int, size: int, out: Any = None) -> Any:
    """Update `seed` as one flat float32 numpy array (uniform noise in [-1, 1))."""
    import numpy as np

    rng = np.random.default_rng(seed)
    flat = rng.random(size, dtype=np.float32, out=out)
    flat -= 0.5
    flat *= 2.0
    return flat


def emit(result: dict[str, Any]) -> None:
    print(RESULT_MARK + json.dumps(result), flush=True)


# ------------------------------------------------------------------ FedSeal child


def run_fedseal(case: Case) -> dict[str, Any]:
    import numpy as np
    import torch

    from aggregator.enclave.strategies import ServerState, make_strategy
    from fedseal.roundconfig import KrumParams, MultiKrumParams, StrategyName, TrimmedMeanParams
    from fedseal.spec import AdapterSpec, TensorSpec, WireDtype

    if case.threads:
        torch.set_num_threads(case.threads)
    shapes = tensor_shapes(case.layers)
    spec = AdapterSpec.of([TensorSpec(name, shape, WireDtype.FLOAT32) for name, shape in shapes])
    size = spec.num_parameters
    params = {
        "trimmed-mean": TrimmedMeanParams(beta=TRIM_BETA),
        "krum": KrumParams(f=krum_f(case.n)),
        "multi-krum": MultiKrumParams(f=krum_f(case.n), m=multi_krum_m(case.n)),
    }.get(case.strategy)
    base = rss_now_bytes()
    state = None
    if case.strategy in ("fedavgm", "fedadam", "fedyogi"):
        # The previous global adapter the optimizer steps from: part of what this strategy holds.
        x0 = torch.from_numpy(generate(10_000, size))
        views, offset = {}, 0
        for name, shape in shapes:
            numel = shape[0] * shape[1]
            views[name] = x0[offset : offset + numel].view(shape)
            offset += numel
        state = ServerState.initial(StrategyName(case.strategy), views)
        del x0, views
    spool_dir = Path(case.spool_dir) if case.spool_dir else None
    strategy = make_strategy(case.strategy, spec, params, server_state=state, spool_dir=spool_dir)
    incoming = np.empty(size, dtype=np.float32)  # the receiver's one plaintext buffer
    ingest = 0.0
    for i in range(case.n):
        generate(i, size, out=incoming)
        flat = torch.from_numpy(incoming)
        tensors, offset = {}, 0
        for name, shape in shapes:
            numel = shape[0] * shape[1]
            tensors[name] = flat[offset : offset + numel].view(shape)
            offset += numel
        start = time.perf_counter()
        strategy.accumulate(tensors, 100 + i)
        ingest += time.perf_counter() - start
    spooled = int(getattr(strategy, "spooled_bytes", 0))
    start = time.perf_counter()
    aggregate = strategy.finalize()
    finalize = time.perf_counter() - start
    assert len(aggregate) == len(shapes)
    return {
        "n": case.n,
        "ingest_s": ingest,
        "finalize_s": finalize,
        "peak_bytes": rss_peak_bytes() - base,
        "spooled_bytes": spooled,
        "model_bytes": size * 4,
        "torch_threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------ Flower child


def run_flower(case: Case) -> dict[str, Any]:
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.server.strategy import FedAdam, FedAvgM, FedYogi
    from flwr.server.strategy.aggregate import (
        aggregate,
        aggregate_krum,
        aggregate_median,
        aggregate_trimmed_avg,
    )

    shapes = tensor_shapes(case.layers)
    size = sum(s[0] * s[1] for _, s in shapes)
    base = rss_now_bytes()

    def arrays(flat: Any) -> list[Any]:
        out, offset = [], 0
        for _, shape in shapes:
            numel = shape[0] * shape[1]
            out.append(flat[offset : offset + numel].reshape(shape))
            offset += numel
        return out

    results = [(arrays(generate(i, size)), 100 + i) for i in range(case.n)]
    name = case.strategy
    if name in ("fedavgm", "fedadam", "fedyogi"):
        initial = ndarrays_to_parameters(arrays(generate(10_000, size)))
        strategy: Any
        if name == "fedavgm":
            strategy = FedAvgM(initial_parameters=initial, server_learning_rate=1.0, server_momentum=0.9)
        elif name == "fedadam":
            strategy = FedAdam(initial_parameters=initial, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
        else:
            strategy = FedYogi(initial_parameters=initial, eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3)
        fit = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(w), k, {})) for w, k in results]
        del results
        start = time.perf_counter()
        parameters, _ = strategy.aggregate_fit(1, fit, [])
        seconds = time.perf_counter() - start
        assert parameters is not None
    else:
        start = time.perf_counter()
        if name == "fedavg":
            out = aggregate(results)
        elif name == "fedmedian":
            out = aggregate_median(results)
        elif name == "trimmed-mean":
            out = aggregate_trimmed_avg(results, TRIM_BETA)
        elif name == "krum":
            out = aggregate_krum(results, krum_f(case.n), 0)
        elif name == "multi-krum":
            out = aggregate_krum(results, krum_f(case.n), multi_krum_m(case.n))
        else:
            raise SystemExit(f"no Flower peer for {name}")
        seconds = time.perf_counter() - start
        assert len(out) == len(shapes)
        assert np.isfinite(out[0]).all()
    return {"seconds": seconds, "peak_bytes": rss_peak_bytes() - base, "model_bytes": size * 4}


# ------------------------------------------------------------------ parent


def run_child(python: str, case: Case, timeout: float, threads: int | None) -> dict[str, Any] | str:
    command = [python, str(Path(__file__).resolve()), "--child", case.to_json()]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    if threads:
        # The same thread budget for both sides (Flower's numpy calls BLAS for its norms).
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    try:
        done = subprocess.run(  # noqa: S603 - our own script, with our own interpreter
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return f"failed (exit {done.returncode}): {tail[0][:160]}"


def flower_available(python: str) -> str | None:
    """Flower's version under `python`, or None."""
    probe = "import flwr.server.strategy.aggregate, importlib.metadata as m; print(m.version('flwr'))"
    try:
        done = subprocess.run(  # noqa: S603 - the interpreter the operator named
            [python, "-W", "ignore", "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[-1] if done.returncode == 0 and lines else None


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def mb(n: float) -> str:
    return f"{n / 1e6:8.0f}"


def cpu_pressure() -> str | None:
    """Linux PSI 'some' line for the CPU: the share of time runnable work waited for a core."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None


def best_of(python: str, case: Case, args: argparse.Namespace) -> dict[str, Any] | str:
    """The fastest of `args.repeats` runs (each in a fresh process): contention only adds time."""
    best: dict[str, Any] | str = "not run"
    for _ in range(args.repeats):
        result = run_child(python, case, args.timeout, args.threads)
        if isinstance(result, str):
            return result
        key = "seconds" if case.side == "flower" else "total_s"
        if case.side == "fedseal":
            result["total_s"] = result["ingest_s"] + result["finalize_s"]
        if isinstance(best, str) or result[key] < best[key]:
            best = result
    return best


def row_text(ours: dict[str, Any] | str, theirs: dict[str, Any] | str | None, name: str, model: int) -> str:
    if isinstance(ours, str):
        text = f"{ours[:52]:<53}| "
    else:
        text = (
            f"{ours['ingest_s'] / ours['n'] * 1e3:8.1f} {ours['finalize_s']:9.3f} {ours['total_s']:8.3f} "
            f"{mb(ours['peak_bytes'])} {ours['peak_bytes'] / model:7.1f} {mb(ours['spooled_bytes']):>9} | "
        )
    if theirs is None:
        return text + f"{'no peer' if name not in FLOWER_PEER else 'not run':<26}|"
    if isinstance(theirs, str):
        return text + f"{theirs[:26]:<26}|"
    text += f"{theirs['seconds']:9.3f} {mb(theirs['peak_bytes'])} {theirs['peak_bytes'] / model:7.1f} | "
    if not isinstance(ours, str):
        close = theirs["seconds"] / max(ours["finalize_s"], 1e-9)
        total = theirs["seconds"] / ours["total_s"]
        text += f"{close:8.1f} {total:7.1f} {theirs['peak_bytes'] / max(ours['peak_bytes'], 1):6.1f}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers (the 1/8 case) instead of 32")
    parser.add_argument("--n", type=int, nargs="+", default=[8, 32], help="client counts (default 8 32)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--flower-python", default=sys.executable, help="interpreter with flwr installed")
    parser.add_argument("--no-flower", action="store_true")
    parser.add_argument("--spool-dir", default=None, help="where spooling strategies keep sealed updates")
    parser.add_argument("--json", default="bench-strategies.json", help="write results here")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; the fastest is kept")
    parser.add_argument(
        "--threads", type=int, default=None, help="thread budget for every child (torch, BLAS, OpenMP)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        case = Case(**json.loads(args.child))
        emit(run_fedseal(case) if case.side == "fedseal" else run_flower(case))
        return 0

    layers = 4 if args.quick else 32
    flower = None if args.no_flower else flower_available(args.flower_python)
    import torch  # only for the header

    info = machine() | {
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "flower": flower,
        "layers": layers,
        "parameters": sum(s[0] * s[1] for _, s in tensor_shapes(layers)),
        "repeats": args.repeats,
        "torch_threads": args.threads or torch.get_num_threads(),
        "cpu_pressure_before": cpu_pressure(),
    }
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; python {info['python']}, "
        f"torch {info['torch']}, "
        f"flwr {flower or 'not available (install the bench extra, or --flower-python)'}; "
        f"GPU: {info['cuda'] or 'none (CPU only)'}\nCPU pressure before: {info['cpu_pressure_before']}"
    )
    model = info["parameters"] * 4
    print(
        f"workload: {layers} layers x q/k/v/o, LoRA r{RANK}, hidden {HIDDEN}: {2 * 4 * layers} tensors, "
        f"{info['parameters'] / 1e6:.1f} M params, {model / 1e6:.1f} MB float32 (= 1 model copy)\n"
    )
    header = (
        f"{'strategy':<13}{'n':>4} | {'ingest':>8} {'finalize':>9} {'total':>8} {'peak MB':>8} {'copies':>7}"
        f" {'spool MB':>9} | {'Flower s':>9} {'peak MB':>8} {'copies':>7} | {'close x':>8} {'total x':>7}"
        f" {'mem x':>6}"
    )
    print(f"{'':<18}| {'FedSeal (ms/update, s, s)':<53}| {'Flower':<26}| {'Flower / FedSeal'}")
    print(header)
    print("-" * len(header))
    rows = []
    for n in args.n:
        for name in args.strategies:
            case = Case("fedseal", name, n, layers, args.spool_dir, args.threads)
            ours = best_of(sys.executable, case, args)
            theirs: dict[str, Any] | str | None = None
            if flower and name in FLOWER_PEER:
                theirs = best_of(args.flower_python, Case("flower", name, n, layers), args)
            rows.append({"strategy": name, "n": n, "fedseal": ours, "flower": theirs})
            print(f"{name:<13}{n:>4} | {row_text(ours, theirs, name, model)}", flush=True)
    info["cpu_pressure_after"] = cpu_pressure()
    Path(args.json).write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    peers = ", ".join(f"{k}={v}" for k, v in FLOWER_PEER.items())
    print(
        "\ningest: accumulate per update (as updates arrive); finalize: round-close latency;"
        " total = n x ingest + finalize.\n"
        "close x = Flower / FedSeal finalize; total x = Flower / FedSeal total; mem x = peak / peak.\n"
        "peak: RSS high-water above the child's baseline; FedSeal receives updates one at a time,"
        " Flower holds all n.\n"
        f"spool: sealed ciphertext on file (not memory). Flower peers: {peers}.\n"
        f"CPU pressure after: {info['cpu_pressure_after']}\nJSON: {args.json}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

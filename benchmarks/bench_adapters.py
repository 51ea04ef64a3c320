"""What accepting many adapter forms, and checking Flower's global arrays, costs (not a test).

Reference workload: LoRA r16 on q/k/v/o of a 7B model (hidden 4096, 32 layers): 256
tensors, 16.8 M f32 parameters, 67 MB. Best and median of several runs, each against the
peer that does the same work without FedSeal:

  .safetensors file   client_sdk.adapter_tensors(path)  vs  safetensors.torch.load_file(path)
  adapter folder      adapter_tensors(folder) (config parsed too)  vs  load_file(weights)
  numpy state dict    adapter_tensors(dict of ndarrays)  vs  {k: torch.from_numpy(v)}
  torch state dict    adapter_tensors(dict of tensors)  vs  nothing (the dict as is)

With flwr installed, also the Flower mod's check of the server's global arrays (compare
every tensor with the verified aggregate and build the ArrayRecord handed to the train
function) against Flower's own cost of carrying the same ArrayRecord (one protobuf
encode + decode of the message content, which every Flower round pays anyway).

Run: python benchmarks/bench_adapters.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch

from client_sdk import adapter_tensors

HIDDEN, RANK, LAYERS = 4096, 16, 32


def workload() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(LAYERS):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            base = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{base}.lora_A.weight"] = torch.randn(RANK, HIDDEN, generator=gen)
            tensors[f"{base}.lora_B.weight"] = torch.randn(HIDDEN, RANK, generator=gen)
    return tensors


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best, median) seconds over `repeats` runs, after one warm-up run."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return min(samples), statistics.median(samples)


def row(label: str, seconds: tuple[float, float], nbytes: int) -> None:
    best, median = seconds
    print(f"  {label:<44} {best * 1e3:8.1f} ms  {median * 1e3:8.1f} ms  {nbytes / best / 1e9:6.2f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tensors = workload()
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    threads = torch.get_num_threads()
    print(f"{len(tensors)} tensors, {nbytes / 1e6:.1f} MB f32; torch {torch.__version__}, {threads} threads")
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"  {'':<44} {'best':>11}  {'median':>11}  {'best rate':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapter"
        folder.mkdir()
        weights = folder / "adapter_model.safetensors"
        safetensors.torch.save_file(tensors, str(weights))
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": RANK}))
        as_numpy = {k: v.numpy() for k, v in tensors.items()}

        row("file: adapter_tensors", timed(lambda: adapter_tensors(weights), args.repeats), nbytes)
        row(
            "file: safetensors load_file (peer)",
            timed(lambda: safetensors.torch.load_file(str(weights)), args.repeats),
            nbytes,
        )
        row("folder: adapter_tensors", timed(lambda: adapter_tensors(folder), args.repeats), nbytes)
        row("numpy dict: adapter_tensors", timed(lambda: adapter_tensors(as_numpy), args.repeats), nbytes)
        row(
            "numpy dict: torch.from_numpy (peer)",
            timed(lambda: {k: torch.from_numpy(v) for k, v in as_numpy.items()}, args.repeats),
            nbytes,
        )
        row("torch dict: adapter_tensors", timed(lambda: adapter_tensors(tensors), args.repeats), nbytes)
    try:
        from flwr.app import ArrayRecord, ConfigRecord, RecordDict
        from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

        from client_sdk.flower._mod import _with_verified_arrays
    except ImportError:
        print("  (flwr not installed: Flower rows skipped; install the `flower` extra)")
        return
    content = RecordDict({"arrays": ArrayRecord(torch_state_dict=tensors), "config": ConfigRecord({"x": 1})})
    row(
        "Flower mod: verify + hand over global arrays",
        timed(lambda: _with_verified_arrays(content, tensors, 1), args.repeats),
        nbytes,
    )
    row(
        "Flower: protobuf encode + decode (peer)",
        timed(lambda: recorddict_from_proto(recorddict_to_proto(content)), args.repeats),
        nbytes,
    )


if __name__ == "__main__":
    main()

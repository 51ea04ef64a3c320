"""In-process FedAvg simulation of the demo: no networking, no crypto.

Runs the four hospitals one after another in a single process, averages
their adapters with plain weighted FedAvg, and prints each hospital's eval
loss per round with timings. It checks that the ML half of the demo learns
and is fast enough before the confidential aggregator is put in between::

    python -m examples.lora_demo.simulate_fedavg [--rounds 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

from examples.lora_demo.training import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LOCAL_STEPS,
    DEFAULT_LR,
    DEFAULT_ROUNDS,
    HOSPITALS,
    DemoModelConfig,
    HospitalData,
    adapter_state,
    build_model,
    evaluate,
    fedavg,
    load_adapter_state,
    train_local,
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="In-process FedAvg simulation of the LoRA demo.")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--steps", type=int, default=DEFAULT_LOCAL_STEPS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the simulation; exit status 1 if some hospital's eval loss did not fall."""
    args = _parse_args(argv)
    # The real demo runs four client processes on two cores: one thread each.
    torch.set_num_threads(args.threads)

    cfg = DemoModelConfig()
    datasets = {h: HospitalData.generate(h) for h in HOSPITALS}
    # One model per hospital, as in the real demo; all start identical.
    models = {h: build_model(cfg) for h in HOSPITALS}
    global_state = adapter_state(models[HOSPITALS[0]])
    n_params = sum(t.numel() for t in global_state.values())
    print(f"adapter: {len(global_state)} tensors, {n_params} parameters")
    print("num_examples: " + ", ".join(f"{h}={d.num_examples}" for h, d in datasets.items()))

    initial = {h: evaluate(models[h], datasets[h]) for h in HOSPITALS}
    history: dict[str, list[float]] = {h: [initial[h]] for h in HOSPITALS}
    header = f"{'round':>5} {'hospital':<11} {'before':>7} {'local':>7} {'global':>7} {'train_s':>7}"
    print(header)
    print("-" * len(header))
    for rnd in range(1, args.rounds + 1):
        round_start = time.perf_counter()
        updates: list[tuple[dict[str, torch.Tensor], int]] = []
        rows: list[tuple[str, float, float, float]] = []
        for h in HOSPITALS:
            model, data = models[h], datasets[h]
            load_adapter_state(model, global_state)
            before = evaluate(model, data)
            t0 = time.perf_counter()
            train_local(model, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=rnd)
            train_s = time.perf_counter() - t0
            rows.append((h, before, evaluate(model, data), train_s))
            updates.append((adapter_state(model), data.num_examples))
        global_state = fedavg(updates)
        for h, before, local, train_s in rows:
            load_adapter_state(models[h], global_state)
            after = evaluate(models[h], datasets[h])
            history[h].append(after)
            print(f"{rnd:>5} {h:<11} {before:7.3f} {local:7.3f} {after:7.3f} {train_s:7.2f}")
        print(f"round {rnd}: {time.perf_counter() - round_start:.2f} s for all four hospitals")

    ok = True
    for h, losses in history.items():
        falls = all(b < a for a, b in itertools.pairwise(losses))
        ok = ok and falls
        trail = " -> ".join(f"{x:.3f}" for x in losses)
        print(f"{h}: {trail} {'ok' if falls else 'NOT FALLING'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

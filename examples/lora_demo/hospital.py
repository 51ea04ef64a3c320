"""One hospital of the demo federation, run as its own process.

For each round: evaluate the current global adapter on local held-out notes, train the
LoRA adapter locally, seal and submit it through `client_sdk` (which first verifies the
aggregator's attestation), fetch the signed aggregate, and load it as the new global
adapter. One JSON line per round goes to stdout for the orchestrator; the final global
adapter is written as a PEFT adapter folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from attestation import Policy, load_builtin_policy
from client_sdk import FedSealClient, write_peft_adapter
from examples.lora_demo.training import (
    DemoModelConfig,
    HospitalData,
    adapter_state,
    build_model,
    evaluate,
    load_adapter_state,
    train_local,
)


def run(name: str, endpoint: str, rounds: int, policy: Policy, out_dir: Path) -> None:
    torch.set_num_threads(1)  # four hospitals share two cores
    cfg = DemoModelConfig()
    model = build_model(cfg)
    data = HospitalData.generate(name)
    with FedSealClient(endpoint, policy, timeout=120) as client:
        aggregate = None
        for round_id in range(1, rounds + 1):
            before = evaluate(model, data)
            started = time.perf_counter()
            train_loss = train_local(model, data, seed=round_id)
            trained = time.perf_counter()
            receipt = client.submit_update(
                adapter_state(model),
                round_id=round_id,
                client_id=name,
                num_examples=data.num_examples,
            )
            submitted = time.perf_counter()
            aggregate = client.fetch_aggregate(round_id, wait_seconds=120)
            load_adapter_state(model, aggregate.tensors())
            after = evaluate(model, data)
            print(
                json.dumps(
                    {
                        "hospital": name,
                        "round": round_id,
                        "eval_loss_before": round(before, 4),
                        "train_loss": round(train_loss, 4),
                        "eval_loss_after": round(after, 4),
                        "receipt_index": receipt.index,
                        "aggregate_participants": list(aggregate.manifest.participants),
                        "train_s": round(trained - started, 2),
                        "submit_s": round(submitted - trained, 3),
                    }
                ),
                flush=True,
            )
        assert aggregate is not None
        folder = write_peft_adapter(aggregate, out_dir / f"{name}-global-adapter", cfg.lora_config_dict())
        (out_dir / f"{name}-last-receipt.txt").write_text(receipt.text)
        print(json.dumps({"hospital": name, "adapter_folder": str(folder)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="One demo hospital: train locally, submit through FedSeal.")
    p.add_argument("--name", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--builtin-policy", default="dev-insecure-allow-simulated")
    args = p.parse_args(argv)
    run(args.name, args.endpoint, args.rounds, load_builtin_policy(args.builtin_policy), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

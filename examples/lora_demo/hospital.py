"""One hospital of the demo federation, run as its own process.

For each round: evaluate the current global adapter on local held-out notes, train the
LoRA adapter locally, seal, sign (with the hospital's enrolled key) and submit it through
`client_sdk` (which first verifies the aggregator's attestation and that the TLS channel
ends at the attested enclave), fetch the signed aggregate, and load it as the new global
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
from client_sdk import ClientIdentity, FedSealClient, write_peft_adapter
from examples.lora_demo.training import (
    DemoModelConfig,
    HospitalData,
    adapter_state,
    build_model,
    evaluate,
    load_adapter_state,
    train_local,
)


def run(identity: ClientIdentity, endpoint: str, rounds: int, policy: Policy, out_dir: Path) -> None:
    torch.set_num_threads(1)  # four hospitals share two cores
    name = identity.name
    cfg = DemoModelConfig()
    model = build_model(cfg)
    data = HospitalData.generate(name)
    with FedSealClient(endpoint, policy, identity=identity, timeout=120) as client:
        aggregate = None
        for round_id in range(1, rounds + 1):
            before = evaluate(model, data)
            started = time.perf_counter()
            train_loss = train_local(model, data, seed=round_id)
            trained = time.perf_counter()
            receipt = client.submit_update(
                adapter_state(model), round_id=round_id, num_examples=data.num_examples
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
    p.add_argument("--key-file", type=Path, required=True, help="the hospital's enrolled Ed25519 key")
    p.add_argument("--tls-certificate", type=Path, help="its TLS client certificate (mutual TLS)")
    p.add_argument("--tls-key", type=Path, help="that certificate's key")
    args = p.parse_args(argv)
    identity = ClientIdentity.from_files(
        args.name, args.key_file, certificate_file=args.tls_certificate, tls_key_file=args.tls_key
    )
    run(identity, args.endpoint, args.rounds, load_builtin_policy(args.builtin_policy), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's main job runs end to end: 4 hospital processes, 3 rounds, losses fall, audit passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from auditor._cli import main as audit_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_and_every_loss_falls(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.lora_demo", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "OK: every hospital's loss fell each round, and the audit log verified." in result.stdout
    assert "VERIFIED:" in result.stdout
    (run_dir,) = tmp_path.iterdir()
    # It ends by writing the auditor's report and evidence pack, and says where.
    for name in ("report.html", "report-summary.png", "evidence/pack.json", "evidence/datasheet.md"):
        assert (run_dir / name).is_file(), name
    assert f"Audit report:  {run_dir / 'report.html'}" in result.stdout
    assert f"Evidence pack: {run_dir / 'evidence'}" in result.stdout
    assert sorted(p.name for p in (run_dir / "evidence" / "releases").iterdir()) == [
        "round-1",
        "round-2",
        "round-3",
    ]
    adapters = sorted(run_dir.glob("hospital-*-global-adapter"))
    assert len(adapters) == 4
    # All four hospitals ended with the same, signed global adapter.
    weights = {(a / "adapter_model.safetensors").read_bytes() for a in adapters}
    assert len(weights) == 1
    # README: the run folder holds the identities with the aggregator's enrolment, the audit
    # log, the aggregator's JSON log lines and each hospital's last receipt, which holds
    # against that log.
    assert (run_dir / "identities" / "enrolment.json").is_file()
    lines = (run_dir / "aggregator.jsonl").read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    receipts = sorted(run_dir.glob("hospital-*-last-receipt.txt"))
    assert len(receipts) == 4
    for receipt in receipts:
        args = ["check-receipt", str(receipt), "--log", str(run_dir / "audit.log")]
        assert audit_main([*args, "--builtin-policy", "dev-insecure-allow-simulated"]) == 0, receipt.name


def test_the_demo_writes_under_demo_run_by_default() -> None:
    # README: "Output goes to `demo-run/<time>/`".
    from examples.lora_demo.__main__ import _parser

    assert _parser().parse_args([]).out == Path("demo-run")


def test_global_adapter_folder_loads_with_peft(tmp_path: Path) -> None:
    """The client's PEFT folder for an aggregate loads with PeftModel.from_pretrained."""
    import warnings

    import torch
    from peft import PeftModel

    from client_sdk import Aggregate, write_peft_adapter
    from examples.lora_demo.training import DemoModelConfig, adapter_state, build_model
    from fedseal.manifest import AggregateManifest

    cfg = DemoModelConfig()
    trained = build_model(cfg)
    state = {k: v + 0.01 for k, v in adapter_state(trained).items()}
    import hashlib

    import safetensors.torch

    data = safetensors.torch.save(state)
    manifest = AggregateManifest("o", 1, "fedavg", {}, hashlib.sha256(data).digest(), len(data), (), 0, 0)
    folder = write_peft_adapter(Aggregate(manifest, data), tmp_path / "adapter", cfg.lora_config_dict())
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.base_seed)
    base = LlamaForCausalLM(cfg.llama_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = PeftModel.from_pretrained(base, str(folder))
    got = adapter_state(loaded)
    assert got.keys() == state.keys()
    for name, value in state.items():
        torch.testing.assert_close(got[name], value)

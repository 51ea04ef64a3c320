"""The FedSeal demo: one confidential federated LoRA job on this machine.

    make demo            (or: python -m examples.lora_demo)

Starts an aggregator on loopback (with the INSECURE simulated TEE: there is no Hopper GPU
here), runs four hospitals as separate processes for three rounds, prints each hospital's
evaluation loss round by round, then audits the log with `fedseal-audit` and writes the
auditor's HTML report (with a PNG summary) and evidence pack into the run folder. The hospitals are
enrolled for the job: each has an Ed25519 key and a TLS client certificate from a demo
consortium CA, made fresh in the run folder (`identities/`), and calls the aggregator over
mutual TLS pinned to the attested enclave certificate.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from auditor._browser import BrowserUnavailableError, find_browser
from auditor._cli import main as audit_main
from examples.lora_demo.identities import make_identities
from examples.lora_demo.training import (
    DEFAULT_ROUNDS,
    HOSPITALS,
    DemoModelConfig,
    adapter_state,
    build_model,
)
from fedseal.spec import AdapterSpec

DEV_POLICY = "dev-insecure-allow-simulated"


def _job(rounds: int, clients: int) -> dict[str, object]:
    spec = AdapterSpec.from_tensors(adapter_state(build_model(DemoModelConfig())))
    return {
        "format": "fedseal-job/v1",
        "rounds": rounds,
        "round_template": {
            "adapter_spec": spec.to_json_obj(),
            "min_clients": clients,
            "max_clients": clients,
            "deadline_ms": 180_000,
            "strategy": "fedavg",
        },
    }


def _wait_for_port(port_file: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(
                f"the aggregator exited early with code {proc.returncode}; see {port_file.parent}"
            )
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        time.sleep(0.1)
    raise SystemExit("the aggregator did not start within 60 s")


def _write_evidence(run_dir: Path, audit_path: Path) -> int:
    """The auditor's report (HTML, and a PNG where Chromium is installed) and evidence pack."""
    report = run_dir / "report.html"
    png = run_dir / "report-summary.png"
    pack = run_dir / "evidence"
    args = ["report", str(audit_path), "--builtin-policy", DEV_POLICY, "--out", str(report)]
    try:
        find_browser()
        args += ["--png", str(png)]
    except BrowserUnavailableError as exc:
        print(f"(no PNG summary: {exc})")
    print("\nWriting the audit report:  fedseal-audit", " ".join(args))
    report_rc = audit_main(args)
    base = DemoModelConfig()
    base_model = (
        f"demo byte-level Llama, random init (seed {base.base_seed}, {base.num_hidden_layers} layers)"
    )
    pack_args = [
        "evidence-pack",
        str(audit_path),
        str(pack),
        "--builtin-policy",
        DEV_POLICY,
        "--base-model",
        base_model,
    ]
    print("Writing the evidence pack: fedseal-audit", " ".join(pack_args[:4]), "...")
    pack_rc = audit_main(pack_args)
    print(f"\nAudit report:  {report}")
    if png.is_file():
        print(f"PNG summary:   {png}")
    print(f"Evidence pack: {pack}")
    return report_rc or pack_rc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-run"),
        help="folder for the audit log, aggregator log and adapters (default: %(default)s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    run_dir = args.out / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    job_file = run_dir / "job.json"
    job_file.write_text(json.dumps(_job(args.rounds, len(HOSPITALS)), indent=2))
    audit_path = run_dir / "audit.log"
    port_file = run_dir / "aggregator.port"
    mtls_port_file = run_dir / "aggregator.mtls-port"
    identities = make_identities(run_dir / "identities", list(HOSPITALS))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # gRPC's C core would put a plain-text line in the aggregator's JSON log for each
    # hospital's certificate probe, refused by the mutual-TLS port (deploy/README.md, Logs).
    aggregator_env = {"GRPC_VERBOSITY": "ERROR", **env}

    print(f"FedSeal demo: {len(HOSPITALS)} hospitals, {args.rounds} rounds, output in {run_dir}")
    print("NOTE: the aggregator runs with an INSECURE simulated TEE (no Hopper GPU here); the")
    print(f"      hospitals accept it only because they use the '{DEV_POLICY}' policy.\n")
    with (run_dir / "aggregator.jsonl").open("wb") as agg_log:
        aggregator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aggregator",
                "--insecure-simulated-tee",
                "--job",
                str(job_file),
                "--log",
                str(audit_path),
                "--enrolment",
                str(identities.enrolment),
                "--listen",
                "127.0.0.1:0",
                "--listen-mtls",
                "127.0.0.1:0",
                "--client-ca",
                str(identities.ca_certificate),
                "--port-file",
                str(port_file),
                "--mtls-port-file",
                str(mtls_port_file),
            ],
            stdout=agg_log,
            stderr=subprocess.STDOUT,
            env=aggregator_env,
        )
        try:
            _wait_for_port(port_file, aggregator)
            endpoint = f"127.0.0.1:{int(mtls_port_file.read_text())}"
            print(f"aggregator listening on {endpoint} (mutual TLS; 4 hospitals enrolled)")
            clients = {
                name: subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "examples.lora_demo.hospital",
                        "--name",
                        name,
                        "--endpoint",
                        endpoint,
                        "--rounds",
                        str(args.rounds),
                        "--out",
                        str(run_dir),
                        "--builtin-policy",
                        DEV_POLICY,
                        "--key-file",
                        str(identities.keys[name]),
                        "--tls-certificate",
                        str(identities.certificates[name][0]),
                        "--tls-key",
                        str(identities.certificates[name][1]),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=(run_dir / f"{name}.stderr").open("wb"),
                    env=env,
                )
                for name in HOSPITALS
            }
            results: dict[str, list[dict[str, object]]] = {}
            failed = []
            for name, proc in clients.items():
                out, _ = proc.communicate(timeout=600)
                lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
                results[name] = [line for line in lines if "round" in line]
                if proc.returncode != 0:
                    failed.append(name)
        finally:
            # The job is over once every hospital has fetched the last aggregate.
            aggregator.terminate()
            aggregator.wait(timeout=30)

    print("\nEvaluation loss on each hospital's own held-out notes (global adapter):")
    header = "hospital     " + "".join(f"  round {r}" for r in range(0, args.rounds + 1))
    print(header)
    falling = True
    for name in HOSPITALS:
        rows = sorted(results.get(name, []), key=lambda row: int(str(row["round"])))
        if len(rows) != args.rounds:
            print(f"{name:<12}  (incomplete: see {run_dir / (name + '.stderr')})")
            falling = False
            continue
        losses = [float(str(rows[0]["eval_loss_before"]))] + [float(str(r["eval_loss_after"])) for r in rows]
        falling &= all(b < a for a, b in itertools.pairwise(losses))
        print(f"{name:<12}" + "".join(f"  {loss:7.4f}" for loss in losses))
    print("(round 0 = the common initial adapter, before any training)\n")

    print("Auditing the log with: fedseal-audit verify", audit_path, "--builtin-policy", DEV_POLICY)
    audit_rc = audit_main(["verify", str(audit_path), "--builtin-policy", DEV_POLICY])
    evidence_rc = _write_evidence(run_dir, audit_path)
    elapsed = time.monotonic() - started
    print(f"\nDemo finished in {elapsed:.0f} s.")
    if failed:
        print(f"FAILED: client(s) {failed} did not finish; see their .stderr files in {run_dir}")
        return 1
    if not falling:
        print("FAILED: evaluation loss did not fall round over round for every hospital")
        return 1
    if audit_rc != 0:
        print("FAILED: the audit log did not verify")
        return 1
    if evidence_rc != 0:
        print("FAILED: the report or the evidence pack could not be written")
        return 1
    print("OK: every hospital's loss fell each round, and the audit log verified.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`fedseal-audit`: verify a log, check a receipt against it, or run a witness."""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from attestation import AttestationError, Policy, PolicyError, collateral_fetcher, load_builtin_policy
from fedseal.checkpoint import check_log_origin
from fedseal.cliargs import host_port, non_negative_seconds, output_file_problem, positive_seconds
from fedseal.errors import FedSealError, FormatError
from fedseal.logschema import UpdateAccepted, UpdateRejected

from ._endpoint import AuditEndpointError
from ._receipt import ReceiptCheck, ReceiptCheckError, check_receipt_at_endpoint, check_receipt_in_log
from ._report_cli import add_report_commands, run_evidence_pack, run_evidence_verify, run_report
from ._verify import DEFAULT_MAX_CLOCK_SKEW, AuditReport, TrustedCheckpoint, audit_log
from ._witness import Witness, WitnessKey
from ._witness_server import serve_witness

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

_DESCRIPTION = """\
The auditor's tool for FedSeal audit logs, which needs nothing but the log (or the
aggregator's endpoint) and an appraisal policy.

  verify         recompute every leaf and root, check every checkpoint signature and the
                 key chain (each signing key attested under the policy, each restart a
                 proven key handover), compare with checkpoints you trust, and report
                 what happened in every round
  check-receipt  prove that a client's receipt still holds: its entry is in the log's
                 current tree (inclusion + consistency, signed by attested keys)
  report         verify, then write a self-contained HTML report with charts (and a PNG)
  evidence-pack  verify, then write what an auditor hands on: datasheet, ML-BOMs, the
                 enclave-signed provenance of each release, the log and its verification
  evidence-verify  check such a pack against its own log under your policy
  witness        cosign checkpoints that are consistent with all it saw before
"""

_EPILOG = """\
exit codes: 0 verified / the receipt holds / clean stop; 1 findings / the receipt does not
            hold; 2 usage error or unreadable file or policy; 3 endpoint unreachable.
examples:
  fedseal-audit verify audit.log                      # production default policy
  fedseal-audit verify audit.log --builtin-policy dev-insecure-allow-simulated --json
  fedseal-audit verify audit.log --trusted-checkpoint receipts/x/round-3-a-entry-41.tlog-proof
  fedseal-audit report audit.log --out report.html --png summary.png
  fedseal-audit evidence-pack audit.log evidence/ --base-model meta-llama/Llama-3.1-8B
  fedseal-audit check-receipt round-3-a-entry-41.tlog-proof --log audit.log
  fedseal-audit check-receipt round-3-a-entry-41.tlog-proof --endpoint agg.example:50051
  fedseal-audit witness keygen --name witness.example/w1 --key-file w1.key
  fedseal-audit witness serve --key-file w1.key --state w1.state \\
      --log-origin fedseal.example.org/consortium --listen 0.0.0.0:50061
"""

_VERIFY_HELP = """\
Findings, each with the line and entry index: modified_entry, removed_entry,
reordered_entries, duplicated_entry, rollback (against --trusted-checkpoint), fork (two
validly signed, inconsistent checkpoints; both printed as proof), unattested_key,
retired_key, future_timestamp, bad_checkpoint_signature, attestation_failed,
broken_handover, inconsistent_round, torn_tail, uncheckpointed_entries, malformed_record,
bad_update_signature (an accepted update not signed by a key enrolled for its site),
unauthorized_action (an operator action not signed by a principal allowed to do it),
inconsistent_access (enrolment or principals changed without a signed request),
wrong_staleness (an accepted update's staleness is not what the releases before it imply,
or its round must have refused it), malformed_entry (an entry that does not decode under the
log schema; the field is named), invalid_approval (an approval or refusal not validly signed
by an approver the round config lists, for its round's aggregate, once per approver),
invalid_release (a release without min_approvals valid approvals, a withholding without a
valid refusal), invalid_round_key (a round_opened without a round key, with one another round
used, or whose signature does not verify under the log key of the enclave that opened it),
invalid_provenance (a round's enclave-signed provenance statement that does not
verify under its enclave's attested log key or says other than the log),
invalid_dp_spend (a DP budget, spend, clip, grid step, noise or denominator
that the auditor's own re-derivation from the logged numbers does not give).
"""


def _add_policy(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--policy", type=Path, help="appraisal policy file (JSON)")
    group.add_argument(
        "--builtin-policy", default=None, help="name of a policy shipped in policies/ (default: 'default')"
    )


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="fedseal-audit", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=raw
    )
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser(
        "verify", help="verify a whole log", description=_VERIFY_HELP, epilog=_EPILOG, formatter_class=raw
    )
    v.add_argument("log", type=Path, help="the audit log file")
    _add_policy(v)
    v.add_argument(
        "--trusted-checkpoint",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a checkpoint you trust (a signed note, or a receipt); repeatable",
    )
    v.add_argument(
        "--max-clock-skew",
        type=non_negative_seconds,
        default=DEFAULT_MAX_CLOCK_SKEW,
        metavar="SECONDS",
        help="how far a checkpoint's time may be ahead of this machine's clock (default: %(default)s)",
    )
    v.add_argument(
        "--online",
        action="store_true",
        help="fetch evidence collateral the log's bundles lack (RIMs, OCSP, AMD/Intel) from the "
        "vendors; default: the policy's collateral.source (stapled: offline)",
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--quiet", action="store_true", help="print only the verdict line")
    v.add_argument(
        "--progress", action="store_true", help="show progress on stderr even if it is not a terminal"
    )

    c = sub.add_parser(
        "check-receipt",
        help="prove a receipt's entry is in the current tree",
        epilog=_EPILOG,
        formatter_class=raw,
    )
    c.add_argument("receipt", type=Path, help="the receipt file (C2SP tlog-proof)")
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--log", type=Path, help="the audit log file")
    where.add_argument("--endpoint", type=host_port(), help="a running aggregator, HOST:PORT")
    _add_policy(c)
    c.add_argument("--timeout", type=positive_seconds, default=30.0, help="seconds per call with --endpoint")
    c.add_argument("--json", action="store_true", help="print the result as JSON")

    add_report_commands(sub, _add_policy, _EPILOG)

    w = sub.add_parser("witness", help="run a witness, or make its key", epilog=_EPILOG, formatter_class=raw)
    wsub = w.add_subparsers(dest="witness_command", required=True)
    k = wsub.add_parser("keygen", help="make a witness key file and print its verifier key")
    k.add_argument("--name", required=True, help="the witness's key name, e.g. witness.example/w1")
    k.add_argument("--key-file", type=Path, required=True, help="where to write the private key (mode 600)")
    s = wsub.add_parser("serve", help="serve the witness over gRPC until SIGINT/SIGTERM")
    s.add_argument("--key-file", type=Path, required=True)
    s.add_argument(
        "--state", type=Path, required=True, help="state file: the last checkpoint cosigned per log"
    )
    s.add_argument(
        "--log-origin",
        type=_log_origin,
        action="append",
        required=True,
        help="a log origin to witness; repeatable",
    )
    s.add_argument(
        "--listen",
        type=host_port(allow_port_zero=True),
        default="127.0.0.1:50061",
        help="address to serve on (default: %(default)s)",
    )
    s.add_argument("--port-file", type=Path, help="write the port actually bound to this file")
    s.add_argument(
        "--max-clock-skew", type=non_negative_seconds, default=DEFAULT_MAX_CLOCK_SKEW, metavar="SECONDS"
    )
    _add_policy(s)
    return p


def _log_origin(text: str) -> str:
    """argparse type: a log origin as the aggregator accepts it (a witness for an origin the
    aggregator refuses would never be asked anything)."""
    try:
        return check_log_origin(text)
    except FormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "witness" and args.witness_command == "keygen":
        return _keygen(args)
    try:
        policy = (
            Policy.from_file(args.policy)
            if args.policy
            else load_builtin_policy(args.builtin_policy or "default")
        )
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "verify":
        return _verify(args, policy)
    if args.command == "check-receipt":
        return _check_receipt(args, policy)
    if args.command == "report":
        return run_report(args, policy)
    if args.command == "evidence-pack":
        return run_evidence_pack(args, policy)
    if args.command == "evidence-verify":
        return run_evidence_verify(args, policy)
    return _serve_witness(args, policy)


# ----------------------------------------------------------------------------- verify


def _verify(args: argparse.Namespace, policy: Policy) -> int:
    if not args.log.is_file():
        print(f"error: {args.log} is not a readable file", file=sys.stderr)
        return EXIT_USAGE
    trusted = []
    for path in args.trusted_checkpoint:
        try:
            trusted.append(TrustedCheckpoint.from_text(path.read_text(encoding="utf-8"), source=str(path)))
        except (OSError, UnicodeDecodeError, FedSealError) as exc:
            print(f"error: cannot read trusted checkpoint {path}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    show = not args.json and not args.quiet and (args.progress or sys.stderr.isatty())

    def progress(lines: int, done: int, total: int) -> None:
        if show:
            percent = 100 * done / total if total else 100.0
            print(f"\r... {lines} lines checked ({percent:.0f}%)", end="", file=sys.stderr, flush=True)

    try:
        report = audit_log(
            args.log,
            policy,
            trusted=trusted,
            max_clock_skew=args.max_clock_skew,
            progress=progress,
            fetcher=collateral_fetcher(policy.collateral, online=True if args.online else None),
        )
    except OSError as exc:
        print(f"error: cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if show:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json_obj(), indent=2))
    else:
        print(_render(report, quiet=args.quiet))
    return EXIT_OK if not report.findings else EXIT_FAILED


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dp_line(dp: dict[str, Any] | None) -> str:
    if dp is None:
        return "none"
    params, budget, spend = dp.get("params") or {}, dp.get("budget") or {}, dp.get("spend")
    clip = params.get("clip")
    clip_text = (
        f"adaptive clip from C={clip.get('initial_clip')}"
        if isinstance(clip, dict)
        else (f"clip C={params.get('clip_norm')}")
    )
    text = (
        f"budget epsilon={params.get('epsilon')} delta={params.get('delta')} over {params.get('rounds')} "
        f"round(s), sampling {params.get('sampling_rate')}, {clip_text}, "
        f"{budget.get('mechanism')} accounted by {budget.get('accountant')}, "
        f"noise multiplier {budget.get('noise_multiplier')}"
    )
    if spend:
        text += (
            f"; spent after this round: epsilon={spend.get('epsilon_spent')} ({spend.get('rounds_spent')} "
            f"round(s)), clip {spend.get('clip_norm')}, {spend.get('clipped')} of {spend.get('updates')} "
            f"update(s) clipped, sum / {spend.get('denominator')}"
        )
    return text


def _approval_line(approval: dict[str, Any] | None) -> str:
    if approval is None:
        return "not required"
    params = approval.get("params") or {}
    decisions = ", ".join(f"{d['key_id']} {d['decision']}" for d in approval.get("decisions", []))
    needs = f"needs {params.get('min_approvals')} of {len(params.get('approvers', []))}"
    return (
        f"{approval.get('state')} ({needs}); "
        f"metrics {approval.get('metrics')}; decisions: {decisions or 'none'}"
    )


def _render(report: AuditReport, *, quiet: bool) -> str:
    verdict = (
        f"VERIFIED: {report.entries} entries, {report.checkpoints_verified} checkpoints, "
        f"{len(report.keys)} enclave key(s), log {report.log_origin!r}, policy {report.policy_name!r}"
        if not report.findings
        else f"FAILED: {len(report.findings)} finding(s) in {report.path}"
    )
    if quiet:
        return verdict
    out = [f"Audit of {report.path} at {report.audited_at}", ""]
    if report.insecure_simulated:
        out += ["WARNING: an enclave of this log used an INSECURE simulated TEE (development only).", ""]
    out.append("Key chain:")
    for k in report.keys:
        status = (
            "attested" + (" (INSECURE simulated)" if k.insecure else "") if k.attested else "NOT ATTESTED"
        )
        sizes = f"sizes {k.first_size}..{k.last_size}" if k.first_size is not None else "no checkpoint"
        out.append(f"  entry {k.entry_index:<8} {status:<32} {k.checkpoints} checkpoint(s), {sizes}")
        out.append(f"    {k.verifier_key}")
    for h in report.handovers:
        out.append(
            f"  handover at entry {h.entry_index}: key of entry {h.old_key_entry} (last size "
            f"{h.old_size}) -> key of entry {h.new_key_entry} (first size {h.new_size}); "
            f"consistency proof of {len(h.consistency_proof)} hash(es) verified"
        )
    for d in report.tail_drops:
        out.append(
            f"  torn tail cut on restart, recorded at entry {d['index']}: {d['dropped_bytes']} bytes "
            f"({d['dropped_lines']} complete lines) from offset {d['offset']}, sha256 {d['dropped_digest']}"
        )
    if report.enrolments or report.operator_actions:
        out.append("Access:")
    for e in report.enrolments:
        out.append(
            f"  enrolment version {e['version']} ({e['cause']}, {e['sites']} site(s)) at entry {e['index']}"
        )
    for a in report.operator_actions:
        out.append(f"  {a['action']} signed by {a['role']} {a['signer']!r} at entry {a['index']}")
    out.append("")
    for r in report.rounds:
        params = " ".join(
            f"{k}={v}"
            for k, v in sorted(r.parameters.items())
            if k != "strategy" and not isinstance(v, dict | list)
        )
        out.append(f"Round {r.round_id}: {r.state.upper()}  strategy={r.strategy}  {params}")
        if r.parameters.get("strategy_params"):
            out.append(
                "  strategy_params: "
                + " ".join(f"{k}={v}" for k, v in sorted(r.parameters["strategy_params"].items()))
            )
        out.append(f"  adapter spec {r.adapter_spec_digest[:24]}...  enclave of entry {r.key_entry}")
        mixed = "client_ranks" in (r.parameters.get("strategy_params") or {})
        for a in r.accepted:
            rank = f"lora_ranks={a['lora_ranks']}  " if mixed else ""
            out.append(
                f"  accepted  {a['client_id']:<20} examples={a['num_examples']:<8} "
                f"base=round {a['base_round_id']} staleness={a['staleness']}  {rank}"
                f"ciphertext={a['ciphertext_digest'][:16]}...  (entry {a['index']})"
            )
        for x in r.rejected:
            out.append(f"  rejected  {x['client_id'] or '-':<20} reason={x['reason']}  (entry {x['index']})")
        if r.state == "closed":
            out.append(
                f"  aggregate {r.aggregate_digest[:24]}...  participants={len(r.participants)} "
                f"total_examples={r.total_examples}"
            )
        up = sum(int(a["ciphertext_size"]) for a in r.accepted)
        down = f"; aggregate {r.aggregate_size} bytes per download" if r.state == "closed" else ""
        out.append(f"  bytes: up {up} in {len(r.accepted)} update(s){down}")
        if r.state in ("failed", "abandoned"):
            out.append(f"  {r.state}: {r.failure_reason}")
        out.append(f"  DP: {_dp_line(r.dp)}")
        out.append(f"  approval: {_approval_line(r.approval)}")
        if r.lora_residuals:
            worst = max(r.lora_residuals, key=lambda m: float(m["residual"]))
            out.append(
                f"  exact LoRA: {len(r.lora_residuals)} module(s) re-factorised to rank {worst['rank']}; "
                f"largest residual {float(worst['residual']):.3g} ({worst['module']}, stacked rank "
                f"{worst['stacked_rank']})"
            )
    for t in report.trusted:
        out.append(f"Trusted checkpoint {t.source} (size {t.size}): {t.status}")
    if report.findings:
        out += ["", "Findings:"]
        for f in report.findings:
            where = [
                w for w in (f.line and f"line {f.line}", f.index is not None and f"entry {f.index}") if w
            ]
            out.append(f"  [{f.kind.value}] {', '.join(str(w) for w in where) or 'log'}: {f.message}")
            for item in f.evidence:
                out.append("    | " + item.rstrip("\n").replace("\n", "\n    | "))
    out += ["", f"root hash {_b64(report.root_hash)} at size {report.entries}", verdict]
    return "\n".join(out)


# ----------------------------------------------------------------------------- check-receipt


def _check_receipt(args: argparse.Namespace, policy: Policy) -> int:
    try:
        text = args.receipt.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read receipt {args.receipt}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.log is not None and not args.log.is_file():
        print(f"error: {args.log} is not a readable file", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.log is not None:
            check = check_receipt_in_log(text, args.log, policy)
        else:
            check = check_receipt_at_endpoint(text, args.endpoint, policy, timeout=args.timeout)
    except AuditEndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ReceiptCheckError, AttestationError) as exc:
        finding = getattr(exc, "finding", None)
        evidence: tuple[str, ...] = getattr(exc, "evidence", ())
        if args.json:
            print(
                json.dumps(
                    {
                        "verdict": "FAILED",
                        "finding": finding.value if finding is not None else None,
                        "message": str(exc),
                        "evidence": list(evidence),
                    },
                    indent=2,
                )
            )
        else:
            print(f"RECEIPT DOES NOT HOLD: {exc}")
            for item in evidence:
                print("    | " + item.rstrip("\n").replace("\n", "\n    | "))
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(_check_json(check), indent=2))
    else:
        e = check.entry
        body = e.body
        print(
            f"RECEIPT HOLDS: entry {e.index} ({e.kind.value}"
            + (
                f", round {body.round_id}, client {body.client_id!r}"
                if isinstance(body, UpdateAccepted | UpdateRejected)
                else ""
            )
            + f") is in {check.source}'s current tree of {check.current_size} entries: inclusion in the "
            f"receipt's checkpoint (size {check.receipt_checkpoint.size}) and consistency "
            f"{check.receipt_checkpoint.size} -> {check.current_size} verified, both signed by attested keys."
        )
    return EXIT_OK


def _check_json(check: ReceiptCheck) -> dict[str, Any]:
    return {
        "verdict": "holds",
        "source": check.source,
        "index": check.index,
        "entry": check.entry.to_json_obj(),
        "receipt_size": check.receipt_checkpoint.size,
        "current_size": check.current_size,
        "current_checkpoint": check.current_checkpoint,
        "consistency_proof": [_b64(h) for h in check.consistency_proof],
    }


# ----------------------------------------------------------------------------- witness


def _keygen(args: argparse.Namespace) -> int:

    try:
        key = WitnessKey.generate(args.name)
        key.write(args.key_file)
    except FileExistsError:
        print(f"error: {args.key_file} exists; a witness key is never overwritten", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, FedSealError) as exc:
        print(f"error: cannot make the witness key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(key.verifier_key())
    return EXIT_OK


def _serve_witness(args: argparse.Namespace, policy: Policy) -> int:
    if args.port_file is not None and (problem := output_file_problem("--port-file", args.port_file)):
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        witness = Witness(
            WitnessKey.load(args.key_file),
            args.state,
            policy,
            args.log_origin,
            max_clock_skew=args.max_clock_skew,
        )
    except FedSealError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        server, port = serve_witness(witness, args.listen)
    except (OSError, RuntimeError) as exc:
        # Exit 1 means findings here; a port in use is the --listen given (documented: 2).
        print(f"error: {exc} (--listen)", file=sys.stderr)
        return EXIT_USAGE
    # Handlers first, then announce the port: a supervisor may signal as soon as it sees it.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.port_file:
        try:
            args.port_file.write_text(f"{port}\n")
        except OSError as exc:  # checked at start, but the folder can change under it
            server.stop(None).wait()
            print(f"error: cannot write --port-file {args.port_file}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    print(f"witness {witness.verifier_key} listening on port {port}", file=sys.stderr, flush=True)
    try:
        # Poll: a signal delivered to one of gRPC's threads would not wake a blocked wait.
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(1.0).wait()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

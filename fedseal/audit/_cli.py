"""`fedseal-audit`: the auditor's log-verification tool."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attestation import Policy, PolicyError, load_builtin_policy
from fedseal.audit._verify import AuditReport, audit_log

__all__ = ["main"]

EXIT_VERIFIED = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Verify a FedSeal audit log with nothing but the log file and an appraisal policy.

`verify` re-reads every entry, recomputes the RFC 9162 Merkle tree, checks every signed
checkpoint against the recomputed roots and the enclave's attested log key (whose
evidence, in the log's first entry, must satisfy the policy), and prints what happened in
every round. Any modified, removed or reordered entry is reported with its line and index.
"""

_EPILOG = """\
exit codes: 0 the log verified; 1 findings (tampering, bad signature, attestation failure);
            2 usage error or unreadable file/policy.
examples:
  fedseal-audit verify audit.log                      # production default policy
  fedseal-audit verify audit.log --builtin-policy dev-insecure-allow-simulated
  fedseal-audit verify audit.log --policy my-policy.json --json
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedseal-audit",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "verify",
        help="verify a whole log and print a per-round report",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("log", type=Path, help="the audit log file")
    group = v.add_mutually_exclusive_group()
    group.add_argument("--policy", type=Path, help="appraisal policy file (JSON)")
    group.add_argument(
        "--builtin-policy",
        default=None,
        help="name of a policy shipped in policies/ (default: 'default')",
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--quiet", action="store_true", help="print only the verdict line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        policy = (
            Policy.from_file(args.policy)
            if args.policy
            else load_builtin_policy(args.builtin_policy or "default")
        )
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.log.is_file():
        print(f"error: {args.log} is not a readable file", file=sys.stderr)
        return EXIT_USAGE

    def progress(line: int) -> None:
        if not args.json and not args.quiet and sys.stderr.isatty():
            print(f"\r... {line} lines checked", end="", file=sys.stderr)

    try:
        report = audit_log(args.log, policy, progress=progress)
    except OSError as exc:
        print(f"error: cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.to_json_obj(), indent=2))
    else:
        print(_render(report, quiet=args.quiet))
    return EXIT_VERIFIED if not report.findings else EXIT_FINDINGS


def _render(report: AuditReport, *, quiet: bool) -> str:
    verdict = (
        f"VERIFIED: {report.entries} entries, {report.checkpoints_verified} checkpoints, "
        f"log {report.log_origin!r}, policy {report.policy_name!r}"
        if not report.findings
        else f"FAILED: {len(report.findings)} finding(s) in {report.path}"
    )
    if quiet:
        return verdict
    out = [f"Audit of {report.path}", ""]
    if report.insecure_simulated:
        out += [
            "WARNING: this log's enclave used an INSECURE simulated TEE (development only).",
            "",
        ]
    for r in report.rounds:
        out.append(
            f"Round {r.round_id}: {r.state.upper()}  strategy={r.strategy} "
            f"quorum={r.min_clients}..{r.max_clients}"
        )
        for a in r.accepted:
            out.append(
                f"  accepted  {a['client_id']:<20} examples={a['num_examples']:<8} "
                f"ciphertext={a['ciphertext_digest'][:16]}...  (entry {a['index']})"
            )
        for x in r.rejected:
            out.append(f"  rejected  {x['client_id'] or '-':<20} reason={x['reason']}  (entry {x['index']})")
        if r.state == "closed":
            out.append(
                f"  aggregate {r.aggregate_digest[:24]}...  participants={len(r.participants)} "
                f"total_examples={r.total_examples}"
            )
        if r.state == "failed":
            out.append(f"  failed: {r.failure_reason}")
    if report.findings:
        out += ["", "Findings:"]
        for f in report.findings:
            where = []
            if f.line is not None:
                where.append(f"line {f.line}")
            if f.index is not None:
                where.append(f"entry {f.index}")
            out.append(f"  [{f.kind.value}] {', '.join(where) or 'log'}: {f.message}")
    out += ["", verdict]
    return "\n".join(out)

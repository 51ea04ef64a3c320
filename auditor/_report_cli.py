"""`fedseal-audit report` and `fedseal-audit evidence-pack`: what an auditor hands on."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from attestation import Policy, collateral_fetcher
from fedseal.cliargs import file_in_the_way, output_file_problem
from fedseal.errors import FedSealError

from ._browser import BrowserUnavailableError, screenshot
from ._evidence import EvidencePackError, base_model_problem, build_evidence_pack, verify_evidence_pack
from ._html_report import render_report_html
from ._logfacts import read_log_facts
from ._mlbom import BomUnavailableError
from ._verify import audit_log

__all__ = ["add_report_commands", "policy_bytes", "run_evidence_pack", "run_evidence_verify", "run_report"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_REPORT_HELP = """\
Verify the log (as `verify` does) and write one self-contained HTML page: the verdict and
every finding, the rounds, participation per round and per site, the metrics the rounds
closed with (where the log carries them), DP epsilon spent against the budget (DP rounds),
refusals by reason, bytes per round and per site, log growth, and the enclave key chain
and attestation timeline. The page has no script and loads nothing (it opens offline).
With --png, also a PNG summary rendered by a headless Chromium. Exit code 1 when the log
has findings (the report is written all the same, and shows them).
"""


def add_report_commands(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    add_policy: Callable[[argparse.ArgumentParser], None],
    epilog: str,
) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    r = sub.add_parser(
        "report",
        help="write an HTML report (and a PNG summary)",
        description=_REPORT_HELP,
        epilog=epilog,
        formatter_class=raw,
    )
    r.add_argument("log", type=Path, help="the audit log file")
    add_policy(r)
    r.add_argument("--out", type=Path, required=True, metavar="HTML", help="the HTML file to write")
    r.add_argument(
        "--png", type=Path, metavar="PNG", help="also write a PNG summary, a .png file (needs Chromium)"
    )
    r.add_argument("--online", action="store_true", help="as for verify: fetch missing evidence collateral")

    e = sub.add_parser(
        "evidence-pack",
        help="write an evidence pack (datasheet, ML-BOMs, signed provenance, log)",
        description=_PACK_HELP,
        epilog=epilog,
        formatter_class=raw,
    )
    e.add_argument("log", type=Path, help="the audit log file")
    e.add_argument("out", type=Path, metavar="OUT", help="the folder to write (new or empty)")
    add_policy(e)
    e.add_argument(
        "--base-model",
        type=_base_model,
        help="the base model the adapters apply to (the log does not record it)",
    )
    e.add_argument("--online", action="store_true", help="as for verify: fetch missing evidence collateral")

    c = sub.add_parser(
        "evidence-verify",
        help="check an evidence pack against its log, under your policy",
        description=_PACK_HELP,
        epilog=epilog,
        formatter_class=raw,
    )
    c.add_argument("pack", type=Path, help="the evidence pack folder")
    add_policy(c)
    c.add_argument("--online", action="store_true", help="as for verify: fetch missing evidence collateral")


_PACK_HELP = """\
evidence-pack verifies the log (only a log without findings is packed) and writes: the log
and its verification report (Art. 12), the policy, a datasheet in the spirit of EU AI Act
Annex IV 2(d), and per released adapter a CycloneDX ML-BOM and the in-toto provenance
statement the enclave signed with its attested log key (a DSSE envelope), plus pack.json
with every file's SHA-256. evidence-verify rebuilds the pack from its audit.log under your
policy and compares every file byte for byte (exit 1 on any difference, or a damaged
pack.json; exit 2 if the pack or one of its files cannot be read).
"""


def _base_model(text: str) -> str:
    """argparse type: the datasheet and every ML-BOM quote it, so printable text only."""
    if (problem := base_model_problem(text)) is not None:
        raise argparse.ArgumentTypeError(f"{text[:64]!r} {problem}")
    return text


def _os_error(exc: OSError, fallback: Path, doing: str = "") -> str:
    """One line naming the file an OSError is about (the path given if it names none)."""
    return f"error: {doing}{exc.filename or fallback}: {exc.strerror or exc}"


def _pack_folder_problem(flag: str, path: Path) -> str | None:
    """Why `path` cannot take a new evidence pack (checked before any work), or None; the
    pack makes the folders it needs, but not under a file."""
    try:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            return f"{flag} {path} exists and is not an empty folder: an evidence pack is never merged"
    except OSError as exc:
        return f"{flag} {path}: {exc.strerror}"
    if (blocker := file_in_the_way(path)) is not None:
        return f"{flag} {path}: {blocker} is a file, not a folder"
    return None


def policy_bytes(args: argparse.Namespace) -> bytes:
    """The bytes of the policy the command runs under (its file, or the built-in's)."""
    if args.policy is not None:
        return Path(args.policy).read_bytes()
    return files("policies").joinpath(f"{args.builtin_policy or 'default'}.json").read_bytes()


def run_evidence_pack(args: argparse.Namespace, policy: Policy) -> int:
    if not args.log.is_file():
        print(f"error: {args.log} is not a readable file", file=sys.stderr)
        return EXIT_USAGE
    if (problem := _pack_folder_problem("OUT", args.out)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        pack = build_evidence_pack(
            args.log,
            args.out,
            policy,
            policy_bytes(args),
            base_model=args.base_model,
            fetcher=collateral_fetcher(policy.collateral, online=True if args.online else None),
        )
    except OSError as exc:
        print(_os_error(exc, args.out), file=sys.stderr)
        return EXIT_USAGE
    except (EvidencePackError, BomUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"evidence pack: {pack.folder} ({len(pack.files)} files, releases {list(pack.releases)})")
    return EXIT_OK


def run_evidence_verify(args: argparse.Namespace, policy: Policy) -> int:
    # An unreadable pack is a usage error; one that reads but differs does not verify (exit 1).
    if not args.pack.is_dir():
        print(f"error: {args.pack} is not a folder (an evidence pack)", file=sys.stderr)
        return EXIT_USAGE
    try:
        pack = verify_evidence_pack(
            args.pack,
            policy,
            policy_bytes(args),
            fetcher=collateral_fetcher(policy.collateral, online=True if args.online else None),
        )
    except OSError as exc:
        print(_os_error(exc, args.pack, "cannot read "), file=sys.stderr)
        return EXIT_USAGE
    except (EvidencePackError, BomUnavailableError) as exc:
        print(f"PACK DOES NOT VERIFY: {exc}")
        return EXIT_FAILED
    print(
        f"PACK VERIFIED: {len(pack.files)} files match what {args.pack / 'audit.log'} gives under this policy"
    )
    return EXIT_OK


def run_report(args: argparse.Namespace, policy: Policy) -> int:
    if not args.log.is_file():
        print(f"error: {args.log} is not a readable file", file=sys.stderr)
        return EXIT_USAGE
    # Checked before the audit: Chromium would fail only after the HTML is written, with its
    # own log line for a message.
    problem = output_file_problem("--out", args.out)
    if problem is None and args.png is not None:
        if args.png.suffix.lower() != ".png":
            problem = f"--png {args.png} does not end in .png (Chromium picks the format by the suffix)"
        elif args.png.resolve() == args.out.resolve():
            problem = f"--png {args.png} is the --out file; the PNG would replace the HTML"
        else:
            problem = output_file_problem("--png", args.png)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = audit_log(
            args.log,
            policy,
            fetcher=collateral_fetcher(policy.collateral, online=True if args.online else None),
        )
        facts = read_log_facts(args.log)
    except OSError as exc:
        print(f"error: cannot read {args.log}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        args.out.write_text(render_report_html(report, facts), encoding="utf-8")
        print(f"report: {args.out}")
        if args.png is not None:
            with tempfile.TemporaryDirectory(prefix="fedseal-report-") as tmp:
                page = Path(tmp) / "summary.html"
                page.write_text(render_report_html(report, facts, summary=True), encoding="utf-8")
                screenshot(page, args.png, height=1000)
            print(f"summary: {args.png}")
    except OSError as exc:
        print(f"error: cannot write the report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (BrowserUnavailableError, FedSealError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    verdict = "VERIFIED" if not report.findings else f"FAILED: {len(report.findings)} finding(s)"
    print(verdict)
    return EXIT_OK if not report.findings else EXIT_FAILED

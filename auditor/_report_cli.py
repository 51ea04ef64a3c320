"""`fedseal-audit report` and `fedseal-audit evidence-pack`: what an auditor hands on."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from attestation import Policy, collateral_fetcher
from fedseal.errors import FedSealError

from ._browser import BrowserUnavailableError, screenshot
from ._html_report import render_report_html
from ._logfacts import read_log_facts
from ._verify import audit_log

__all__ = ["add_report_commands", "run_report"]

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
    r.add_argument("--png", type=Path, metavar="PNG", help="also write a PNG summary (needs Chromium)")
    r.add_argument("--online", action="store_true", help="as for verify: fetch missing evidence collateral")


def run_report(args: argparse.Namespace, policy: Policy) -> int:
    if not args.log.is_file():
        print(f"error: {args.log} is not a readable file", file=sys.stderr)
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

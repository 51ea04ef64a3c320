"""`fedseal-audit report`: a self-contained HTML report, checked in a real headless Chromium.

The page of a demo-like log (tests/report_logs.py: three DP rounds, one gated, refusals)
loads offline with no console message, every chart is there with marks in it, and every
figure that is also one of `fedseal-audit verify --json` equals it there. The PNG summary
is a real screenshot. Chromium comes from the project's set-up (`make test` installs it).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from conftest import make_adapter, round_config, site_client
from logfiles import log_entries, resigned_log
from report_logs import make_report_log

from aggregator import RunningAggregator
from attestation import Policy, load_builtin_policy
from auditor._cli import main as audit_main
from fedseal.logformat import EntryKind

ROOT = Path(__file__).resolve().parents[1]
DEV = "dev-insecure-allow-simulated"
CHARTS = {
    "participation-rounds",
    "participation-sites",
    "metrics:accepted",
    "metrics:clipped",
    "metrics:rejected",
    "dp-epsilon",
    "rejections",
    "bytes-rounds",
    "bytes-sites",
    "log-growth",
    "timeline",
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditor", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _chromium() -> str:
    found = shutil.which("chromium")
    assert found, "Debian's chromium is not installed: `make test` installs it (apt-get install chromium)"
    return found


@pytest.fixture(scope="module")
def report_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_report_log(tmp_path_factory.mktemp("report-log"), load_builtin_policy(DEV))


def _at(obj: Any, path: str) -> Any:
    """The value at a data-fig path of verify --json (dots, list indices, `#len`)."""
    length = path.endswith("#len")
    for part in path.removesuffix("#len").split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    return len(obj) if length else obj


def test_report_renders_offline_in_chromium_and_its_figures_are_the_audits(
    report_log: Path, tmp_path: Path
) -> None:
    html = tmp_path / "report.html"
    made = _cli("report", str(report_log), "--builtin-policy", DEV, "--out", str(html))
    assert made.returncode == 0, made.stderr
    verified = _cli("verify", str(report_log), "--builtin-policy", DEV, "--json")
    assert verified.returncode == 0, verified.stderr
    audit = json.loads(verified.stdout)

    done = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no error, no blocked load, nothing at all
    dom = lxml.html.fromstring(done.stdout)

    # Nothing to load: no script, no src/href, and a policy that would block any.
    assert dom.xpath("//script") == [] and dom.xpath("//*[@src or @href]") == []
    (csp,) = dom.xpath('//meta[@http-equiv="Content-Security-Policy"]/@content')
    assert csp.startswith("default-src 'none'")

    charts = {svg.get("data-chart"): svg for svg in dom.xpath("//*[@data-chart]")}
    assert set(charts) == CHARTS
    for name, svg in charts.items():
        marks = svg.xpath(".//*[contains(concat(' ', @class, ' '), ' mark ')]")
        assert marks, f"chart {name} is empty"

    figures = dom.xpath("//*[@data-fig]")
    assert len(figures) > 60
    for element in figures:
        path = element.get("data-fig")
        assert json.loads(element.get("data-value")) == pytest.approx(_at(audit, path)), path
    paths = {e.get("data-fig") for e in figures}
    for i, r in enumerate(audit["rounds"]):
        for field in (
            "total_examples",
            "aggregate_size",
            "accepted#len",
            "rejected#len",
            "dp.spend.epsilon_spent",
        ):
            assert f"rounds.{i}.{field}" in paths
        assert f"bandwidth.rounds.{i}.bytes_up" in paths
        assert audit["bandwidth"]["rounds"][i]["bytes_up"] == sum(a["ciphertext_size"] for a in r["accepted"])
    assert {"verdict", "entries", "checkpoints_verified", "findings#len", "root_hash"} <= paths
    # Refusals by reason: the bars are the audit's counts.
    counts = Counter(x["reason"] for r in audit["rounds"] for x in r["rejected"])
    bars = charts["rejections"].xpath(".//*[@data-value]")
    assert sorted(json.loads(b.get("data-value")) for b in bars) == sorted(counts.values())
    assert counts == {"duplicate": 3}


def test_png_summary_is_a_screenshot(report_log: Path, tmp_path: Path) -> None:
    _chromium()
    png = tmp_path / "summary.png"
    made = _cli(
        "report",
        str(report_log),
        "--builtin-policy",
        DEV,
        "--out",
        str(tmp_path / "r.html"),
        "--png",
        str(png),
    )
    assert made.returncode == 0, made.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1000)
    assert len(data) > 20_000  # charts and text, not a blank page


def _one_round_log(running: RunningAggregator, policy: Policy) -> Path:
    running.rounds.open_round(round_config(1))
    for i in range(3):
        with site_client(running.endpoint, policy, f"site-{i}", timeout=20) as client:
            client.submit_update(make_adapter(i), round_id=1, num_examples=10)
    running.rounds.wait_closed(1, 10.0)
    return running.log.path


def test_sections_without_data_are_left_out_and_findings_are_shown(
    live_aggregator: RunningAggregator, dev_policy: Policy, tmp_path: Path
) -> None:
    path = _one_round_log(live_aggregator, dev_policy)
    html = tmp_path / "plain.html"
    assert _cli("report", str(path), "--builtin-policy", DEV, "--out", str(html)).returncode == 0
    page = html.read_text()
    # No DP, no metrics, no refusal in this log: no such chart.
    assert 'data-chart="dp-epsilon"' not in page and 'data-chart="metrics:' not in page
    assert "No update was refused in any round." in page and "No finding: every check passed." in page

    # A forged entry (re-signed by the real key): the report says FAILED and lists the finding.
    closed = next(e for e in log_entries(path) if e.kind is EntryKind.ROUND_CLOSED)
    forged = resigned_log(
        path,
        tmp_path / "forged.log",
        "fedseal.test/log",
        live_aggregator.keys.log_private_key,
        closed.index,
        {**closed.fields, "total_examples": 31},
    )
    bad = tmp_path / "forged.html"
    made = _cli("report", str(forged), "--builtin-policy", DEV, "--out", str(bad))
    assert made.returncode == 1 and "FAILED" in made.stdout
    page = bad.read_text()
    assert "FAILED: " in page and "inconsistent_round" in page and "total_examples" in page


def test_verify_prints_bytes_per_round(report_log: Path) -> None:
    out = _cli("verify", str(report_log), "--builtin-policy", DEV).stdout
    assert out.count("  bytes: up ") == 3 and "bytes per download" in out


def test_report_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    made = _cli(
        "report", str(tmp_path / "none.log"), "--builtin-policy", DEV, "--out", str(tmp_path / "x.html")
    )
    assert made.returncode == 2 and "is not a readable file" in made.stderr


def test_an_output_path_that_cannot_be_written_is_refused_before_the_audit(
    report_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    (tmp_path / "adir.png").mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("kept\n")
    html = tmp_path / "r.html"
    for flag, value, why in [
        ("--png", folder, "does not end in .png"),
        ("--png", tmp_path / "adir.png", "is a folder"),
        ("--png", notes / "x.png", f"{notes} is a file, not a folder"),
        ("--png", tmp_path / "none" / "x.png", "does not exist"),
        ("--out", folder, "is a folder"),
        ("--out", notes / "r.html", f"{notes} is a file, not a folder"),
    ]:
        out = value if flag == "--out" else html
        png = ["--png", str(value)] if flag == "--png" else []
        assert audit_main(["report", str(report_log), "--builtin-policy", DEV, "--out", str(out), *png]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"error: {flag} {value}") and why in captured.err, captured.err
        assert len(captured.err.splitlines()) == 1 and captured.out == ""  # refused before the audit
        assert not html.exists() and notes.read_text() == "kept\n"
    # The PNG over the HTML would lose the report.
    assert (
        audit_main(
            [
                "report",
                str(report_log),
                "--builtin-policy",
                DEV,
                "--out",
                str(tmp_path / "s.png"),
                "--png",
                str(tmp_path / "s.png"),
            ]
        )
        == 2
    )
    assert "--png" in capsys.readouterr().err and not (tmp_path / "s.png").exists()

"""`fedseal-audit report`: one self-contained HTML page of an audited log, with pictures.

The page is built from the audit (`AuditReport`, the same object `verify --json` prints)
and `LogFacts` (times, sizes, metrics). It holds no script and loads nothing: a Content
Security Policy of `default-src 'none'` (inline styles and data: images only) makes any
reference a blocked one, so it opens offline in any browser. Every figure that is also a
figure of `verify --json` carries its path there in `data-fig` and its exact value in
`data-value` (see auditor/_svg.py), which the browser test compares.

Sections: the verdict; the rounds table; participation per round and per site; the
metrics each round closed with (only where the log carries metrics); DP epsilon spent
against the budget (only for DP rounds); refusals by reason; bytes per round and per
site; log growth; the key chain and attestation timeline; every finding.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from ._logfacts import LogFacts, numeric_metrics
from ._report import AuditReport
from ._svg import PALETTE, Lane, Series, Span, bar_chart, grid_chart, line_chart, timeline

__all__ = ["CSP", "figure_value", "render_report_html"]

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1240px;color:#1a202c;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e2e8f0}
.verdict{padding:12px 16px;border-radius:6px;font-weight:600;font-size:18px;margin:12px 0}
.ok{background:#c6f6d5;color:#22543d}.failed{background:#fed7d7;color:#742a2a}
.warn{background:#fefcbf;color:#744210;padding:8px 12px;border-radius:6px;margin:8px 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #e2e8f0;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f7fafc}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}.fig{border:1px solid #e2e8f0;border-radius:6px;
padding:6px 12px;min-width:110px}.fig b{display:block;font-size:20px}.fig span{font-size:12px;color:#4a5568}
.charts{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;max-width:600px}
figcaption{font-size:13px;font-weight:600;margin:4px 0}
code{font-size:12px;word-break:break-all}.note{font-size:12px;color:#4a5568}
"""


def _v(
    value: object, text: str | None = None, fig: str | None = None, *, tag: str = "td", cls: str = ""
) -> str:
    """A table cell (or other element) showing `text`, carrying the exact `value` (and its path)."""
    shown = text if text is not None else ("" if value is None else str(value))
    figattr = f' data-fig="{escape(fig)}"' if fig else ""
    clsattr = f' class="{cls}"' if cls else ""
    data = escape(json.dumps(value, sort_keys=True))
    return f'<{tag}{clsattr} data-value="{data}"{figattr}>{escape(shown)}</{tag}>'


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _figure(caption: str, svg: str, note: str = "") -> str:
    extra = f'<div class="note">{escape(note)}</div>' if note else ""
    return f"<figure><figcaption>{escape(caption)}</figcaption>{svg}{extra}</figure>"


class _Page:
    def __init__(self, report: AuditReport, facts: LogFacts) -> None:
        self.report = report
        self.facts = facts
        self.rounds = report.rounds
        self.labels = [f"round {r.round_id}" for r in report.rounds]
        self.sites = sorted(
            {a["client_id"] for r in report.rounds for a in r.accepted}
            | {x["client_id"] for r in report.rounds for x in r.rejected if x["client_id"]}
        )

    # ------------------------------------------------------------------ header
    def header(self) -> str:
        r = self.report
        ok = not r.findings
        verdict = (
            f"VERIFIED: {r.entries} entries, {r.checkpoints_verified} checkpoints, "
            f"{len(r.keys)} enclave key(s)"
            if ok
            else f"FAILED: {len(r.findings)} finding(s)"
        )
        out = [
            "<h1>FedSeal audit report</h1>",
            f'<div class="note">log <code>{escape(r.log_origin)}</code> (file {escape(Path(r.path).name)}), '
            f"policy <code>{escape(r.policy_name)}</code>, audited at {escape(r.audited_at)}</div>",
            f'<div class="verdict {"ok" if ok else "failed"}" data-fig="verdict" '
            f'data-value="{escape(json.dumps("verified" if ok else "FAILED"))}">{escape(verdict)}</div>',
        ]
        if r.insecure_simulated:
            out.append(
                '<div class="warn">An enclave of this log used an INSECURE simulated TEE: nothing protected '
                "the data (development only).</div>"
            )
        bandwidth = r.to_json_obj()["bandwidth"]
        released = sum(1 for x in self.rounds if x.state == "closed")
        figs = [
            _v(r.entries, None, "entries", tag="b") + "<span>log entries</span>",
            _v(r.checkpoints_verified, None, "checkpoints_verified", tag="b")
            + "<span>checkpoints verified</span>",
            _v(len(r.keys), None, "keys#len", tag="b") + "<span>enclave keys</span>",
            _v(len(self.rounds), None, "rounds#len", tag="b") + "<span>rounds</span>",
            f"<b>{released}</b><span>rounds closed</span>",
            f"<b>{len(self.sites)}</b><span>sites seen</span>",
            _v(bandwidth["bytes_up"], _bytes(bandwidth["bytes_up"]), "bandwidth.bytes_up", tag="b")
            + "<span>uploaded (sealed)</span>",
            f"<b>{_bytes(self.facts.log_bytes)}</b><span>log size</span>",
            _v(len(r.findings), None, "findings#len", tag="b") + "<span>findings</span>",
        ]
        out.append('<div class="figs">' + "".join(f'<div class="fig">{f}</div>' for f in figs) + "</div>")
        root = base64.b64encode(r.root_hash).decode("ascii")
        out.append(
            f'<div class="note">root hash {_v(root, None, "root_hash", tag="code")} at size {r.entries}</div>'
        )
        return "".join(out)

    # ------------------------------------------------------------------ rounds table
    def rounds_table(self) -> str:
        head = (
            "<tr><th>round</th><th>state</th><th>strategy</th><th>participants</th><th>accepted</th>"
            "<th>refused</th><th>examples</th><th>bytes up</th><th>aggregate bytes</th><th>DP ε spent</th>"
            "<th>approval</th></tr>"
        )
        rows = []
        for i, r in enumerate(self.rounds):
            p = f"rounds.{i}"
            up = sum(int(a["ciphertext_size"]) for a in r.accepted)
            spent = (r.dp or {}).get("spend") or {}
            eps = spent.get("epsilon_spent")
            approval = (r.approval or {}).get("state")
            rows.append(
                "<tr>"
                + _v(r.round_id, None, f"{p}.round_id")
                + _v(r.state, None, f"{p}.state")
                + _v(r.strategy, None, f"{p}.strategy")
                + _v(len(r.participants), None, f"{p}.participants#len", cls="num")
                + _v(len(r.accepted), None, f"{p}.accepted#len", cls="num")
                + _v(len(r.rejected), None, f"{p}.rejected#len", cls="num")
                + _v(r.total_examples, None, f"{p}.total_examples", cls="num")
                + _v(up, f"{up:,}", f"bandwidth.rounds.{i}.bytes_up", cls="num")
                + _v(r.aggregate_size, f"{r.aggregate_size:,}", f"{p}.aggregate_size", cls="num")
                + (
                    _v(eps, f"{eps:.3f}", f"{p}.dp.spend.epsilon_spent", cls="num")
                    if eps is not None
                    else "<td>-</td>"
                )
                + (
                    _v(approval, None, f"{p}.approval.state")
                    if approval is not None
                    else "<td>not required</td>"
                )
                + "</tr>"
            )
        return "<h2>Rounds</h2><table>" + head + "".join(rows) + "</table>"

    # ------------------------------------------------------------------ charts
    def participation(self) -> str:
        return (
            '<h2>Participation</h2><div class="charts">'
            + self.participation_rounds()
            + self.participation_sites()
            + "</div>"
        )

    def participation_rounds(self) -> str:
        accepted = Series(
            "accepted",
            [len(r.accepted) for r in self.rounds],
            [f"rounds.{i}.accepted#len" for i in range(len(self.rounds))],
            PALETTE[2],
        )
        refused = Series(
            "refused",
            [len(r.rejected) for r in self.rounds],
            [f"rounds.{i}.rejected#len" for i in range(len(self.rounds))],
            "#e53e3e",
        )
        per_round = bar_chart(
            "participation-rounds", "updates per round", self.labels, [accepted, refused], integer=True
        )
        return _figure("Updates accepted and refused per round", per_round)

    def participation_sites(self) -> str:
        cells: dict[tuple[str, str], tuple[str, str, object]] = {}
        for r, label in zip(self.rounds, self.labels, strict=True):
            refused: dict[str, list[str]] = {}
            for x in r.rejected:
                if x["client_id"]:
                    refused.setdefault(x["client_id"], []).append(x["reason"])
            for site, reasons in refused.items():
                cells[(site, label)] = (
                    "refused",
                    f"{site}, {label}: refused ({', '.join(reasons)})",
                    reasons,
                )
            for a in r.accepted:
                site = a["client_id"]
                also = refused.get(site)
                cells[(site, label)] = (
                    "accepted, also refused" if also else "accepted",
                    f"{site}, {label}: accepted, {a['num_examples']} examples"
                    + (f"; also refused ({', '.join(also)})" if also else ""),
                    a["num_examples"],
                )
        grid = grid_chart(
            "participation-sites",
            "participation per site",
            self.sites,
            self.labels,
            cells,
            {"accepted": PALETTE[2], "accepted, also refused": "#9ae6b4", "refused": "#e53e3e"},
        )
        return _figure(
            "Per site and round",
            grid,
            "A blank cell: the site sent nothing that round (or nothing the log records).",
        )

    def metrics(self) -> str:
        per_round = {
            r.round_id: numeric_metrics(self.facts.round_metrics.get(r.round_id, {})) for r in self.rounds
        }
        keys = sorted({k for m in per_round.values() for k in m})
        if not keys:
            return ""
        charts = []
        for n, key in enumerate(keys):
            values = [per_round[r.round_id].get(key) for r in self.rounds]
            figs = [
                f"rounds.{i}.approval.metrics.{key}"
                if r.approval is not None and "." not in key and key in (r.approval.get("metrics") or {})
                else None
                for i, r in enumerate(self.rounds)
            ]
            svg = line_chart(
                f"metrics:{key}", key, self.labels, [Series(key, values, figs, PALETTE[n % len(PALETTE)])]
            )
            charts.append(_figure(key, svg))
        return (
            '<h2>Metrics the rounds closed with</h2><div class="note">As each round\'s round_closed entry '
            'records them (aggregated in the enclave).</div><div class="charts">' + "".join(charts) + "</div>"
        )

    def dp(self) -> str:
        chart = self.dp_chart()
        return "<h2>Differential privacy</h2>" + chart if chart else ""

    def dp_chart(self) -> str:
        spends = [((r.dp or {}).get("spend") or {}).get("epsilon_spent") for r in self.rounds]
        if all(s is None for s in spends):
            return ""
        budget = next(
            (float(r.dp["params"]["epsilon"]) for r in reversed(self.rounds) if r.dp and r.dp.get("params")),
            None,
        )
        svg = line_chart(
            "dp-epsilon",
            "DP epsilon spent",
            self.labels,
            [
                Series(
                    "ε spent after the round",
                    spends,
                    [f"rounds.{i}.dp.spend.epsilon_spent" for i in range(len(self.rounds))],
                    PALETTE[3],
                )
            ],
            reference=("budget ε", budget) if budget is not None else None,
            fmt=lambda v: f"{v:.3g}",
        )
        return _figure("DP: ε spent (cumulative) against the job's budget", svg)

    def rejections(self) -> str:
        counts = Counter(x["reason"] for r in self.rounds for x in r.rejected)
        orphans = len(self.facts.orphan_rejections)
        note = f" {orphans} more refusal(s) named a round that never opened." if orphans else ""
        if not counts:
            return f"<h2>Refusals</h2><p>No update was refused in any round.{escape(note)}</p>"
        reasons = sorted(counts)
        svg = bar_chart(
            "rejections",
            "refusals by reason",
            reasons,
            [Series("refusals", [counts[x] for x in reasons], (), "#e53e3e")],
            integer=True,
        )
        return "<h2>Refusals</h2>" + _figure(
            "Refused updates by the reason the log records", svg, note.strip()
        )

    def bandwidth(self) -> str:
        return '<h2>Bandwidth</h2><div class="charts">' + self.bytes_rounds() + self.bytes_sites() + "</div>"

    def bytes_rounds(self) -> str:
        bw = self.report.to_json_obj()["bandwidth"]
        up = Series(
            "up (sealed updates)",
            [x["bytes_up"] for x in bw["rounds"]],
            [f"bandwidth.rounds.{i}.bytes_up" for i in range(len(bw["rounds"]))],
            PALETTE[0],
        )
        down = Series(
            "aggregate (one download)",
            [x["aggregate_bytes"] for x in bw["rounds"]],
            [f"bandwidth.rounds.{i}.aggregate_bytes" for i in range(len(bw["rounds"]))],
            PALETTE[1],
        )
        per_round = bar_chart(
            "bytes-rounds", "bytes per round", self.labels, [up, down], fmt=_bytes, stacked=False
        )
        return _figure(
            "Bytes per round",
            per_round,
            "Up: the sealed bytes of the accepted updates. Down: what one download of the aggregate "
            "carries; downloads are not logged (the aggregator's metrics endpoint counts them).",
        )

    def bytes_sites(self) -> str:
        bw = self.report.to_json_obj()["bandwidth"]
        sites = [s["client_id"] for s in bw["sites"]]
        per_site = bar_chart(
            "bytes-sites",
            "bytes uploaded per site",
            sites,
            [
                Series(
                    "up (sealed updates)",
                    [s["bytes_up"] for s in bw["sites"]],
                    [f"bandwidth.sites.{i}.bytes_up" for i in range(len(sites))],
                    PALETTE[0],
                )
            ],
            fmt=_bytes,
        )
        return _figure("Bytes uploaded per site (accepted updates)", per_site)

    def growth(self) -> str:
        points: list[tuple[str, int]] = []
        ends = {r.round_id: self.facts.round_ended.get(r.round_id) for r in self.rounds}
        for r, label in zip(self.rounds, self.labels, strict=True):
            end = ends[r.round_id]
            if end is None:
                continue
            upto = [e.log_bytes for e in self.facts.entries if e.time <= end]
            if upto:
                points.append((label, max(upto)))
        points.append(("end", self.facts.log_bytes))
        svg = line_chart(
            "log-growth",
            "log size",
            [p[0] for p in points],
            [Series("log bytes", [float(p[1]) for p in points], (), PALETTE[5])],
            fmt=_bytes,
        )
        return "<h2>Log growth</h2>" + _figure(
            "The log's size after each round ended, and at the end",
            svg,
            f"{len(self.facts.entries)} entries and {self.facts.checkpoints} checkpoint lines in "
            f"{_bytes(self.facts.log_bytes)}.",
        )

    def key_chain(self) -> str:
        r = self.report
        start, end = self.facts.first_time, self.facts.last_time
        times = {e.index: e.timestamp() for e in self.facts.enclaves}
        rows = []
        for k, key in enumerate(r.keys):
            status = (
                "attested" + (" (INSECURE simulated)" if key.insecure else "")
                if key.attested
                else "NOT ATTESTED"
            )
            sizes = f"{key.first_size}..{key.last_size}" if key.first_size is not None else "none"
            when = times.get(key.entry_index)
            rows.append(
                "<tr>"
                + _v(key.entry_index, None, f"keys.{k}.entry_index")
                + f"<td>{escape(when.isoformat(timespec='seconds') if when else '-')}</td>"
                + _v(key.attested, status, f"keys.{k}.attested")
                + f"<td>{escape(', '.join(key.evidence_kinds) or '-')}</td>"
                + _v(key.checkpoints, None, f"keys.{k}.checkpoints", cls="num")
                + f"<td>{escape(sizes)}</td><td><code>{escape(key.verifier_key)}</code>"
                + (f"<br>{escape(key.failure)}" if key.failure else "")
                + "</td></tr>"
            )
        table = (
            "<table><tr><th>entry</th><th>started</th><th>attestation</th><th>evidence</th>"
            "<th>checkpoints</th><th>tree sizes</th><th>verifier key</th></tr>" + "".join(rows) + "</table>"
        )
        handovers = "".join(
            f"<li>handover at entry {h.entry_index}: key of entry {h.old_key_entry} (last size {h.old_size}) "
            f"to key of entry {h.new_key_entry} (first size {h.new_size}), consistency proof of "
            f"{len(h.consistency_proof)} hash(es) verified</li>"
            for h in r.handovers
        )
        out = "<h2>Enclave key chain and attestation</h2>" + table
        if handovers:
            out += f"<ul>{handovers}</ul>"
        if start is None or end is None:
            return out
        key_spans = [
            Span(
                times[key.entry_index],
                None,
                ("#dd6b20" if key.insecure else "#38a169") if key.attested else "#e53e3e",
                f"entry {key.entry_index}: {'attested' if key.attested else 'NOT attested'}"
                + (" (insecure simulated)" if key.insecure else ""),
                key.attested,
                f"keys.{k}.attested",
            )
            for k, key in enumerate(r.keys)
            if key.entry_index in times
        ]
        colours = {"closed": "#38a169", "open": "#3182ce", "failed": "#e53e3e", "abandoned": "#718096"}
        round_spans = [
            Span(
                self.facts.round_opened[x.round_id],
                self.facts.round_ended.get(x.round_id, end),
                colours.get(x.state, "#718096"),
                f"round {x.round_id}: {x.state}, {len(x.participants)} participant(s)",
                x.state,
                f"rounds.{i}.state",
            )
            for i, x in enumerate(self.rounds)
            if x.round_id in self.facts.round_opened
        ]
        svg = timeline(
            "timeline",
            "key chain and rounds over time",
            start,
            end,
            [Lane("enclave starts", key_spans), Lane("rounds", round_spans)],
        )
        return out + _figure(
            "Timeline: enclave starts (green attested, orange insecure simulated, red not attested) "
            "and rounds",
            svg,
        )

    def findings(self) -> str:
        r = self.report
        if not r.findings:
            return "<h2>Findings</h2><p>No finding: every check passed.</p>"
        rows = "".join(
            "<tr>"
            + _v(f.kind.value, None, f"findings.{i}.kind")
            + f"<td>{f.line or '-'}</td><td>{'-' if f.index is None else f.index}</td>"
            + _v(f.message, None, f"findings.{i}.message")
            + "</tr>"
            for i, f in enumerate(r.findings)
        )
        return (
            "<h2>Findings</h2><table><tr><th>kind</th><th>line</th><th>entry</th><th>message</th></tr>"
            + rows
            + "</table>"
        )


def _document(title: str, body: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "".join(body)
        + "</body></html>\n"
    )


def render_report_html(report: AuditReport, facts: LogFacts, *, summary: bool = False) -> str:
    """The report page; `summary`: the verdict, key figures and the main charts only (for a PNG)."""
    page = _Page(report, facts)
    title = f"FedSeal audit: {report.log_origin}"
    if summary:
        charts = [
            page.participation_rounds(),
            page.participation_sites(),
            page.bytes_rounds(),
            page.dp_chart(),
        ]
        return _document(title, [page.header(), '<div class="charts">', *charts, "</div>"])
    return _document(
        title,
        [
            page.header(),
            page.rounds_table(),
            page.participation(),
            page.metrics(),
            page.dp(),
            page.rejections(),
            page.bandwidth(),
            page.growth(),
            page.key_chain(),
            page.findings(),
        ],
    )


def figure_value(obj: Any, path: str) -> Any:
    """The value at a `data-fig` path of `verify --json` (`a.0.b`, `#len` for a list's length)."""
    want_len = path.endswith("#len")
    value = obj
    for part in path.removesuffix("#len").split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return len(value) if want_len else value

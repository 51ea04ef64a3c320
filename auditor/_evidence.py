"""`fedseal-audit evidence-pack`: what an auditor hands on, compiled from a verified log.

The pack (one folder) holds:

* `audit.log`: the log itself, byte for byte (EU AI Act Art. 12 record), and
  `verification.json`: its verification report (`verify --json`, the path made relative),
  under the policy in `policy.json` (the policy's own bytes);
* `datasheet.md`: a datasheet in the spirit of Annex IV 2(d): where the data came from
  (sites, rounds, example counts; the data cards the log carries, or that none were
  published), what selected and cleaned it as far as the log records (cohort bounds,
  refusals, DP clipping), the training process as rounds, the releases, the enclaves'
  attestation (evidence kinds and measurements as the policy appraised them);
* per released adapter, `releases/round-N/`: `bom.cdx.json`, a CycloneDX 1.6 ML-BOM
  validated against the schema (auditor/_mlbom.py); `provenance.dsse.json`, the in-toto
  statement the enclave signed with its attested log key when the round closed, verbatim
  from the log (fedseal/provenance.py), and `statement.json`, its payload for reading;
* `pack.json`: the format, what the pack was built from and with, and every file's SHA-256.

Only a log without findings is packed. Everything but the log is a deterministic function
of the log, the policy, the audit time and the base model name, so `evidence-verify`
rebuilds the pack from its own `audit.log` under the checker's policy and compares every
file byte for byte: one changed byte anywhere, a file added or taken away, fails. The
provenance signatures need no trust in whoever built the pack: they verify under the log
key that the log's `enclave_started` entry attests (checked again while building).
"""

from __future__ import annotations

import datetime as dt
import filecmp
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestation import AttestationError, CollateralFetcher, Policy, verify_bundle
from fedseal import strictjson
from fedseal.canonical import b64encode, canonical_json
from fedseal.errors import FedSealError
from fedseal.logschema import EnclaveStarted
from fedseal.provenance import DsseEnvelope, verify_statement
from fedseal.signed_request import key_id

from ._logfacts import LogFacts, read_log_facts
from ._mlbom import ReleasedRound, adapter_bom
from ._report import AuditReport, RoundSummary
from ._verify import audit_log

__all__ = [
    "MAX_BASE_MODEL_CHARS",
    "PACK_FORMAT",
    "EvidencePack",
    "EvidencePackError",
    "base_model_problem",
    "build_evidence_pack",
    "verify_evidence_pack",
]

PACK_FORMAT = "fedseal-evidence-pack/v1"
# A model name or a one-line description of it (the datasheet and every ML-BOM quote it).
MAX_BASE_MODEL_CHARS = 256
# The earliest audit time a pack may claim; the latest is the checker's clock plus this skew
# (a pack audited "in the future" would let future-dated checkpoints pass its rebuild).
_EARLIEST_AUDIT = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_AUDIT_SKEW = dt.timedelta(minutes=5)


class EvidencePackError(FedSealError):
    """The pack cannot be built (the log has findings, the folder is in use) or does not verify."""


@dataclass(frozen=True)
class EvidencePack:
    folder: Path
    files: tuple[str, ...]  # relative paths, sorted
    releases: tuple[int, ...]  # the released rounds with a BOM and a signed statement


def _released(r: RoundSummary) -> bool:
    return r.state == "closed" and (r.approval is None or r.approval.get("state") == "released")


def base_model_problem(name: str) -> str | None:
    """What is wrong with `name` as a base model's name, or None: printable text (no control
    characters, no undecodable bytes, which UTF-8 cannot write) of sane length."""
    if not name.strip():
        return "is empty"
    if len(name) > MAX_BASE_MODEL_CHARS:
        return f"is longer than {MAX_BASE_MODEL_CHARS} characters"
    if not name.isprintable():  # surrogates (undecodable argv bytes) are not printable either
        return "holds a control character or bytes that are not text"
    return None


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def build_evidence_pack(
    log: Path,
    out: Path,
    policy: Policy,
    policy_bytes: bytes,
    *,
    base_model: str | None = None,
    now: dt.datetime | None = None,
    fetcher: CollateralFetcher | None = None,
) -> EvidencePack:
    """Audit `log` under `policy` and write the pack into `out` (new or empty).

    Raises EvidencePackError (findings, a folder in use, a provenance that does not verify),
    BomUnavailableError (no cyclonedx-python-lib), OSError."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EvidencePackError(f"{out} exists and is not an empty folder: an evidence pack is never merged")
    if base_model is not None and (problem := base_model_problem(base_model)) is not None:
        raise EvidencePackError(f"the base model name {base_model[:64]!r} {problem}")
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(microsecond=0)
    report = audit_log(log, policy, now=moment, fetcher=fetcher)
    if report.findings:
        first = report.findings[0]
        raise EvidencePackError(
            f"{log} has {len(report.findings)} finding(s), first [{first.kind.value}] {first.message}: "
            "only a verified log is packed (run `fedseal-audit report` to see them)"
        )
    facts = read_log_facts(log)
    files: dict[str, bytes] = {
        "audit.log": log.read_bytes(),
        "policy.json": policy_bytes,
        "verification.json": _json({**report.to_json_obj(), "path": "audit.log"}),
    }
    releases = [r for r in report.rounds if _released(r)]
    statements: dict[int, dict[str, Any]] = {}
    for n, r in enumerate(releases):
        envelope = facts.provenance.get(r.round_id)
        closed = facts.closed_entries[r.round_id]
        folder = f"releases/round-{r.round_id}"
        files[f"{folder}/bom.cdx.json"] = adapter_bom(
            ReleasedRound(r, closed.timestamp()), releases[:n], report.log_origin, base_model=base_model
        ).encode("utf-8")
        if envelope is None:
            continue  # an enclave that signed no provenance; the datasheet says so
        log_key = _log_key_at(facts, closed.index)
        try:
            statement = verify_statement(DsseEnvelope.from_json_obj(envelope), log_key)
        except FedSealError as exc:
            raise EvidencePackError(f"round {r.round_id}'s provenance does not verify: {exc}") from exc
        statements[r.round_id] = statement
        files[f"{folder}/provenance.dsse.json"] = _json(dict(envelope))
        files[f"{folder}/statement.json"] = _json(statement)
    files["datasheet.md"] = _datasheet(report, facts, policy, releases, statements, base_model).encode(
        "utf-8"
    )
    index = {
        "format": PACK_FORMAT,
        "log_origin": report.log_origin,
        "policy": report.policy_name,
        "audited_at": report.audited_at,
        "base_model": base_model,
        "releases": [r.round_id for r in releases],
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    files["pack.json"] = _json(index)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(files.items()):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return EvidencePack(out, tuple(sorted(files)), tuple(r.round_id for r in releases))


def verify_evidence_pack(
    folder: Path, policy: Policy, policy_bytes: bytes, *, fetcher: CollateralFetcher | None = None
) -> EvidencePack:
    """Rebuild the pack from its `audit.log` under `policy` and compare every file; raise if any differs.

    EvidencePackError if it differs or its pack.json is damaged; OSError (naming the file) if
    the pack or one of its files cannot be read."""
    data = (folder / "pack.json").read_bytes()
    try:
        audited_at, base_model = _read_index(data)
    except (FedSealError, ValueError) as exc:
        raise EvidencePackError(f"{folder} is not a FedSeal evidence pack ({PACK_FORMAT}): {exc}") from None
    with tempfile.TemporaryDirectory(prefix="fedseal-pack-") as tmp:
        rebuilt = build_evidence_pack(
            folder / "audit.log",
            Path(tmp) / "pack",
            policy,
            policy_bytes,
            base_model=base_model,
            now=audited_at,
            fetcher=fetcher,
        )
        present = sorted(
            str(p.relative_to(folder)).replace(os.sep, "/") for p in folder.rglob("*") if not p.is_dir()
        )
        if present != list(rebuilt.files):
            extra = sorted(set(present) - set(rebuilt.files))
            missing = sorted(set(rebuilt.files) - set(present))
            raise EvidencePackError(f"the pack's files differ: extra {extra}, missing {missing}")
        changed = [
            name
            for name in rebuilt.files
            if not filecmp.cmp(folder / name, rebuilt.folder / name, shallow=False)
        ]
        if changed:
            raise EvidencePackError(
                f"the pack's {', '.join(changed)} differ(s) from what its audit.log and this policy give"
            )
        return EvidencePack(folder, rebuilt.files, rebuilt.releases)


def _read_index(data: bytes) -> tuple[dt.datetime, str | None]:
    """pack.json's audit time and base model; ValueError (or FormatError) names what is wrong."""
    index = strictjson.loads(data, what="pack.json")
    if not isinstance(index, dict):
        raise ValueError(f"pack.json holds {strictjson.json_type(index)}, not an object")
    if "format" not in index:
        raise ValueError("pack.json has no 'format'")
    if (found := index["format"]) != PACK_FORMAT:
        shown = repr(found[:64]) if isinstance(found, str) else strictjson.json_type(found)
        raise ValueError(f"pack.json's 'format' is {shown}, not {PACK_FORMAT!r}")
    for name in ("audited_at", "base_model"):
        if name not in index:
            raise ValueError(f"pack.json has no {name!r}")
    text = index["audited_at"]
    if not isinstance(text, str):
        raise ValueError(f"pack.json's 'audited_at' is {strictjson.json_type(text)}, not a date and time")
    try:
        audited_at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"pack.json's 'audited_at' {text[:64]!r} is not an ISO 8601 date and time") from None
    if audited_at.tzinfo is None:  # a naive time would be read in the checker's own time zone
        raise ValueError(f"pack.json's 'audited_at' {text[:64]!r} has no UTC offset")
    try:
        utc = audited_at.astimezone(dt.UTC)
    except OverflowError:
        utc = None
    if utc is None or not _EARLIEST_AUDIT <= utc <= dt.datetime.now(dt.UTC) + _MAX_AUDIT_SKEW:
        raise ValueError(f"pack.json's 'audited_at' {text[:64]!r} is before 1970 or in the future")
    base_model = index["base_model"]
    if base_model is not None:
        if not isinstance(base_model, str):
            raise ValueError(f"pack.json's 'base_model' is {strictjson.json_type(base_model)}, not a string")
        if (problem := base_model_problem(base_model)) is not None:
            raise ValueError(f"pack.json's 'base_model' {problem}")
    return utc, base_model


def _log_key_at(facts: LogFacts, index: int) -> bytes:
    """The log key of the enclave writing at entry `index` (the last one started before it)."""
    keys = [
        e.body.log_public_key
        for e in facts.enclaves
        if e.index < index and isinstance(e.body, EnclaveStarted)
    ]
    if not keys:
        raise EvidencePackError(f"no enclave_started entry precedes entry {index}")
    return keys[-1]


def _enclave_rows(facts: LogFacts, policy: Policy) -> list[str]:
    rows = []
    for entry in facts.enclaves:
        body = entry.body
        assert isinstance(body, EnclaveStarted)
        try:
            attested = verify_bundle(body.evidence_bundle, policy, body.challenge, now=entry.timestamp())
        except AttestationError as exc:  # the audit passed, so this cannot happen short of a policy race
            raise EvidencePackError(f"entry {entry.index}'s evidence no longer verifies: {exc}") from exc
        kinds = ", ".join(k.value for k in attested.evidence_kinds)
        measured = "; ".join(
            f"{c.name}: `{c.found}`" for c in attested.checks if "measurement" in c.name.lower() and c.passed
        )
        rows.append(
            f"| {entry.index} | {entry.time} | `{key_id(body.log_public_key)}` | {kinds}"
            f"{' (INSECURE simulated)' if attested.insecure else ''} | {measured or 'none reported'} | "
            f"`{b64encode(body.evidence_digest)}` |"
        )
    return rows


def _data_card_lines(facts: LogFacts) -> list[str]:
    """Section 2's data cards: each update's signed digest, then every published card in full."""
    carded = sorted(
        (u for u in facts.governance if u.data_card_digest is not None),
        key=lambda u: (u.round_id, u.client_id),
    )
    if not carded:
        return [
            "Data cards: none were published in this log, so the sites' data are described only by what "
            "the log records above (site, rounds, example counts) and by the digests of their sealed updates "
            "(`verification.json`, `rounds[].accepted[].ciphertext_digest`)."
        ]
    lines = [
        "Data cards (fedseal-data-card/v1): each site signed its card's SHA-256 in its update header and "
        "sealed the update under it; the auditor checked every published card against its digest "
        "(a mismatch is an `invalid_data_governance` finding, and this pack is made only from a verified "
        "log). A site may sign a digest and keep the card itself to be handed over separately.",
        "",
        "| round | site | data card SHA-256 (base64) | published in the log |",
        "|---|---|---|---|",
    ]
    cards: dict[str, Mapping[str, Any]] = {}
    for u in carded:
        digest = b64encode(u.data_card_digest or b"")
        if u.data_card is not None:
            cards.setdefault(digest, u.data_card)
        lines.append(
            f"| {u.round_id} | {_cell(u.client_id)} | `{digest}` | {'yes' if u.data_card else 'no'} |"
        )
    for digest, card in sorted(cards.items()):
        dates = card.get("date_range") or {}
        lines += [
            "",
            f"### Data card `{digest}`",
            "",
            f"- Source: {_cell(card.get('source'))}",
            f"- Licence or legal basis: {_cell(card.get('legal_basis'))}",
            f"- Date range: {_cell(dates.get('start'))} to {_cell(dates.get('end'))}",
            f"- Records: {_cell(card.get('record_count'))}",
            f"- Filtering: {'; '.join(_cell(x) for x in card.get('filtering') or ()) or 'none stated'}",
            "- De-identification: "
            + ("; ".join(_cell(x) for x in card.get("deidentification") or ()) or "none stated"),
            f"- Contact: {_cell(card.get('contact'))}",
            f"- Extensions: `{_cell(canonical_json(card.get('extensions') or {}).decode())}`",
        ]
    return lines


def _validation_lines(facts: LogFacts) -> list[str]:
    """Section 3's local data validations, as the sites' signed summaries record them."""
    checked = sorted(
        (u for u in facts.governance if u.validation is not None), key=lambda u: (u.round_id, u.client_id)
    )
    if not checked:
        return ["Local data validation: none recorded in this log."]
    lines = [
        "Local data validation (fedseal-validation-summary/v1, run by each site before training, signed in "
        "its update header; checks and counts only, never a record):",
        "",
        "| round | site | data | records | passed | checks (counts) |",
        "|---|---|---|---|---|---|",
    ]
    for u in checked:
        v = u.validation or {}
        checks = "; ".join(
            f"{c.get('name')} {'pass' if c.get('passed') else 'FAIL'} "
            + ", ".join(f"{k}={n}" for k, n in sorted((c.get("counts") or {}).items()))
            for c in v.get("checks") or ()
        )
        lines.append(
            f"| {u.round_id} | {_cell(u.client_id)} | {_cell(v.get('data_kind'))} | "
            f"{_cell(v.get('records'))} | {'yes' if v.get('passed') is True else 'NO'} | {_cell(checks)} |"
        )
    return lines


def _cell(value: object) -> str:
    # A site's free text in a Markdown table: no line breaks, no column separators.
    return " ".join(str(value).split()).replace("|", "\\|")


def _datasheet(
    report: AuditReport,
    facts: LogFacts,
    policy: Policy,
    releases: Sequence[RoundSummary],
    statements: dict[int, dict[str, Any]],
    base_model: str | None,
) -> str:
    r = report
    sites: dict[str, list[tuple[int, int]]] = {}
    for x in r.rounds:
        for a in x.accepted:
            sites.setdefault(a["client_id"], []).append((x.round_id, int(a["num_examples"])))
    refusals = Counter(x["reason"] for rnd in r.rounds for x in rnd.rejected)
    lines = [
        f"# Datasheet: the data and training behind the adapters of `{r.log_origin}`",
        "",
        f"Compiled by `fedseal-audit evidence-pack` on {r.audited_at} from the audit log in this folder "
        "(`audit.log`, the automatic record of EU AI Act Art. 12), in the spirit of Annex IV 2(d). Every "
        "statement below is what the verified log records; nothing is taken from elsewhere but the base "
        f"model's name ({base_model or 'not given'}).",
        "",
        "## 1. The record",
        "",
        f"- Verdict: **VERIFIED** under policy `{r.policy_name}`: {r.entries} entries, "
        f"{r.checkpoints_verified} checkpoints, {len(r.keys)} enclave key(s), root hash "
        f"`{b64encode(r.root_hash)}` (`verification.json`).",
        f"- {len(facts.entries)} entries from {facts.first_time} to {facts.last_time}.",
    ]
    if r.insecure_simulated:
        lines.append(
            "- **An enclave of this log used an INSECURE simulated TEE: nothing protected the data.**"
        )
    lines += [
        "",
        "Enclaves (each log key attested by its evidence, appraised under the policy):",
        "",
        "| entry | started | log key id | evidence | measurement | evidence digest |",
        "|---|---|---|---|---|---|",
        *_enclave_rows(facts, policy),
        "",
        "## 2. Data sources",
        "",
        "Each site trained on its own data, which never left it; the enclave saw only the sealed updates.",
        "",
        "| site | rounds | examples per round | examples in all |",
        "|---|---|---|---|",
    ]
    for site, rounds in sorted(sites.items()):
        lines.append(
            f"| {site} | {', '.join(str(rid) for rid, _ in rounds)} | "
            f"{', '.join(str(n) for _, n in rounds)} | {sum(n for _, n in rounds)} |"
        )
    lines += [
        "",
        *_data_card_lines(facts),
        "",
        "## 3. Selection and cleaning, as far as the log records them",
        "",
    ]
    lines += [*_validation_lines(facts), ""]
    for x in r.rounds:
        params = x.parameters
        spend = (x.dp or {}).get("spend") or {}
        dp = (
            f"DP: clip norm {spend.get('clip_norm')}, {spend.get('clipped')} of {spend.get('updates')} "
            f"update(s) clipped, noise multiplier {spend.get('noise_multiplier')}"
            if spend
            else "no DP"
        )
        lines.append(
            f"- Round {x.round_id}: cohort {x.min_clients}..{x.max_clients} site(s), strategy {x.strategy}, "
            f"deadline {params.get('deadline_ms')} ms; {len(x.rejected)} refusal(s); {dp}."
        )
    lines.append(
        "- Refusals by reason: "
        + (", ".join(f"{k} {v}" for k, v in sorted(refusals.items())) or "none")
        + "."
    )
    lines += [
        "",
        "## 4. Training process",
        "",
        "| round | state | strategy | participants | examples | aggregate SHA-256 (base64) "
        "| DP ε spent | approval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in r.rounds:
        spent = ((x.dp or {}).get("spend") or {}).get("epsilon_spent")
        lines.append(
            f"| {x.round_id} | {x.state} | {x.strategy} | {', '.join(x.participants) or '-'} | "
            f"{x.total_examples} | `{x.aggregate_digest or '-'}` | "
            f"{'-' if spent is None else f'{spent:.4g}'} | "
            f"{(x.approval or {}).get('state', 'not required')} |"
        )
    lines += ["", "## 5. Releases", ""]
    if not releases:
        lines.append("No aggregate was released.")
    for x in releases:
        folder = f"releases/round-{x.round_id}"
        statement = statements.get(x.round_id)
        signed = (
            f"provenance signed by the enclave's attested log key (`{folder}/provenance.dsse.json`, "
            f"statement `{folder}/statement.json`, predicate `{statement['predicateType']}`)"
            if statement is not None
            else "**no enclave-signed provenance** (its enclave did not record one)"
        )
        lines.append(
            f"- Round {x.round_id}: aggregate `{x.aggregate_digest}`; ML-BOM `{folder}/bom.cdx.json`; "
            f"{signed}."
        )
    lines += [
        "",
        "## 6. Checking this pack",
        "",
        "`fedseal-audit evidence-verify <this folder> --policy <your policy>` re-verifies `audit.log` under "
        "your policy, rebuilds every other file from it and compares them byte for byte. Each "
        "`provenance.dsse.json` is a DSSE envelope (Ed25519) that any DSSE implementation verifies under "
        "the log key of the `enclave_started` entry before the round (section 1).",
        "",
    ]
    return "\n".join(lines)

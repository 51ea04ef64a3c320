"""`fedseal-audit evidence-pack` / `evidence-verify`: what an auditor hands on, and its check.

On a demo-like log (tests/report_logs.py): the ML-BOMs validate against the CycloneDX 1.6
schema with the library's own validator; each release's in-toto statement verifies, with an
independent DSSE implementation, under the log key that the log's evidence attests; and
the pack verifies as built, while one changed byte in any of its files, or a file added or
taken away, makes `evidence-verify` fail.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from conftest import make_adapter, round_config, site_client
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from logfiles import log_entries
from report_logs import make_report_log
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]  # exported without __all__
from test_data_governance import card

from aggregator import RunningAggregator
from attestation import Policy, load_builtin_policy
from auditor import attest_enclave_entry
from auditor._cli import main as audit_main
from auditor._evidence import PACK_FORMAT, EvidencePackError, build_evidence_pack, verify_evidence_pack
from client_sdk.validation import validate_text
from fedseal.logformat import EntryKind
from fedseal.provenance import PREDICATE_TYPE

ROOT = Path(__file__).resolve().parents[1]
DEV = "dev-insecure-allow-simulated"
POLICY = load_builtin_policy(DEV)
POLICY_BYTES = files("policies").joinpath(f"{DEV}.json").read_bytes()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auditor", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = make_report_log(tmp_path_factory.mktemp("pack-log"), POLICY)
    out = tmp_path_factory.mktemp("pack") / "evidence"
    made = _cli(
        "evidence-pack", str(log), str(out), "--builtin-policy", DEV, "--base-model", "demo/tiny-llama"
    )
    assert made.returncode == 0, made.stderr
    assert f"evidence pack: {out}" in made.stdout
    return out


def test_pack_holds_the_log_its_verification_and_a_datasheet(pack: Path) -> None:
    names = sorted(str(p.relative_to(pack)) for p in pack.rglob("*") if p.is_file())
    releases = [
        f"releases/round-{r}/{f}"
        for r in (1, 2, 3)
        for f in ("bom.cdx.json", "provenance.dsse.json", "statement.json")
    ]
    assert names == sorted(
        ["audit.log", "datasheet.md", "pack.json", "policy.json", "verification.json", *releases]
    )
    verification = json.loads((pack / "verification.json").read_text())
    assert verification["verdict"] == "verified" and verification["path"] == "audit.log"
    assert (pack / "policy.json").read_bytes() == POLICY_BYTES
    sheet = (pack / "datasheet.md").read_text()
    assert "Annex IV 2(d)" in sheet and "Data cards: none were published in this log" in sheet
    for site in ("site-0", "site-1", "site-2", "site-3"):
        assert f"| {site} |" in sheet
    assert "simulated-insecure-tee measurement" in sheet  # the appraised enclave measurement


def test_boms_validate_and_describe_each_release(pack: Path) -> None:
    verification = json.loads((pack / "verification.json").read_text())
    validator = JsonStrictValidator(SchemaVersion.V1_6)
    for n, r in enumerate(verification["rounds"]):
        text = (pack / f"releases/round-{r['round_id']}/bom.cdx.json").read_text()
        assert validator.validate_str(text) is None
        bom = json.loads(text)
        subject = bom["metadata"]["component"]
        assert subject["type"] == "machine-learning-model"
        assert subject["hashes"] == [
            {"alg": "SHA-256", "content": base64.b64decode(r["aggregate_digest"]).hex()}
        ]
        ancestors = subject["pedigree"]["ancestors"]
        # (CycloneDX keeps components as a set: the round order is in each one's version)
        assert sorted(a["name"] for a in ancestors) == sorted(
            ["demo/tiny-llama", *(f"round-{i}-aggregate" for i in range(1, n + 1))]
        )
        data = {c["name"] for c in bom["components"] if c["type"] == "data"}
        seen = {a["client_id"] for x in verification["rounds"][: n + 1] for a in x["accepted"]}
        assert data == {f"{s} training data" for s in seen}
    broken = json.loads((pack / "releases/round-1/bom.cdx.json").read_text())
    broken["metadata"]["component"]["type"] = "not-a-type"
    assert validator.validate_str(json.dumps(broken)) is not None  # the validator does refuse


def test_provenance_verifies_under_the_attested_log_key(pack: Path) -> None:
    entries = log_entries(pack / "audit.log")
    started = next(e for e in entries if e.kind is EntryKind.ENCLAVE_STARTED)
    attested = attest_enclave_entry(started, POLICY)  # the key the log's evidence attests
    verification = json.loads((pack / "verification.json").read_text())
    for r in verification["rounds"]:
        folder = pack / f"releases/round-{r['round_id']}"
        envelope = json.loads((folder / "provenance.dsse.json").read_text())
        key = SSlibKey(
            envelope["signatures"][0]["keyid"],
            "ed25519",
            "ed25519",
            {"public": attested.log_public_key.hex()},
        )
        Envelope.from_dict(envelope).verify([key], 1)
        statement = json.loads(base64.b64decode(envelope["payload"]))
        assert statement == json.loads((folder / "statement.json").read_text())
        assert statement["predicateType"] == PREDICATE_TYPE
        predicate = statement["predicate"]
        assert predicate["participants"] == r["participants"]
        assert predicate["aggregate_digest"] == r["aggregate_digest"]
        assert predicate["round_config_digest"] == r["config_digest"]
        assert predicate["dp"]["epsilon_spent"] == r["dp"]["spend"]["epsilon_spent"]


def test_pack_verifies_and_any_changed_byte_fails(pack: Path, tmp_path: Path) -> None:
    checked = _cli("evidence-verify", str(pack), "--builtin-policy", DEV)
    assert checked.returncode == 0 and "PACK VERIFIED" in checked.stdout, checked.stdout + checked.stderr
    for file in sorted(p for p in pack.rglob("*") if p.is_file()):
        name = str(file.relative_to(pack))
        copy = tmp_path / name.replace("/", "_")
        shutil.copytree(pack, copy)
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(EvidencePackError):
            verify_evidence_pack(copy, POLICY, POLICY_BYTES)
    extra = tmp_path / "extra"
    shutil.copytree(pack, extra)
    (extra / "notes.txt").write_text("added later\n")
    with pytest.raises(EvidencePackError, match="extra"):
        verify_evidence_pack(extra, POLICY, POLICY_BYTES)
    fewer = tmp_path / "fewer"
    shutil.copytree(pack, fewer)
    (fewer / "releases/round-2/provenance.dsse.json").unlink()
    with pytest.raises(EvidencePackError, match="missing"):
        verify_evidence_pack(fewer, POLICY, POLICY_BYTES)
    # Under another policy (the production default refuses simulated evidence): no pack.
    refused = _cli("evidence-verify", str(pack))
    assert refused.returncode == 1 and "PACK DOES NOT VERIFY" in refused.stdout


def test_a_log_with_findings_is_not_packed(pack: Path, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    data = bytearray((pack / "audit.log").read_bytes())
    data[len(data) // 3] ^= 0x01
    log.write_bytes(bytes(data))
    out = tmp_path / "never"
    made = _cli("evidence-pack", str(log), str(out), "--builtin-policy", DEV)
    assert made.returncode == 1 and "only a verified log is packed" in made.stderr
    assert not out.exists()
    again = _cli("evidence-pack", str(pack / "audit.log"), str(pack), "--builtin-policy", DEV)
    assert again.returncode == 2 and "not an empty folder" in again.stderr  # a usage error


def test_datasheet_and_bom_list_the_data_cards_and_validations(
    live_aggregator: RunningAggregator, dev_policy: Policy, tmp_path: Path
) -> None:
    """A log whose updates carry data cards (one published, one digest only) and validation
    summaries: the datasheet lists every digest, prints the published card, and tabulates
    the validations; each site's ML-BOM data component names its signed card digests."""
    live_aggregator.rounds.open_round(round_config(1))
    summary = validate_text([f"note {i}" for i in range(12)])
    for i in range(3):
        site = f"site-{i}"
        with site_client(live_aggregator.endpoint, dev_policy, site, timeout=20) as client:
            client.submit_update(
                make_adapter(i),
                round_id=1,
                num_examples=10 * (i + 1),
                data_card=card(site) if i < 2 else None,
                publish_data_card=i == 0,
                validation=summary if i != 1 else None,
            )
    live_aggregator.rounds.wait_closed(1, 10.0)
    built = build_evidence_pack(live_aggregator.log.path, tmp_path / "pack", dev_policy, POLICY_BYTES)
    sheet = (built.folder / "datasheet.md").read_text()
    digests = {site: base64.b64encode(card(site).digest()).decode() for site in ("site-0", "site-1")}
    assert f"| 1 | site-0 | `{digests['site-0']}` | yes |" in sheet
    assert f"| 1 | site-1 | `{digests['site-1']}` | no |" in sheet
    assert f"### Data card `{digests['site-0']}`" in sheet
    assert f"### Data card `{digests['site-1']}`" not in sheet  # never published
    assert "- Source: site-0: discharge notes, cardiology ward" in sheet
    assert "- Date range: 2021-01-01 to 2023-12-31" in sheet and "- Records: 1200" in sheet
    assert "Data cards: none were published" not in sheet
    assert "| 1 | site-0 | text | 12 | yes | records pass" in sheet
    assert "| 1 | site-2 | text | 12 | yes |" in sheet and "| 1 | site-1 | text" not in sheet
    assert "Local data validation: none recorded" not in sheet
    bom = json.loads((built.folder / "releases/round-1/bom.cdx.json").read_text())
    props = {c["name"]: {p["name"]: p["value"] for p in c.get("properties", [])} for c in bom["components"]}
    assert props["site-0 training data"]["fedseal:data-cards"] == f"1:{digests['site-0']}"
    assert "fedseal:data-cards" not in props["site-2 training data"]
    assert verify_evidence_pack(built.folder, dev_policy, POLICY_BYTES).files == built.files


def _index(**fields: object) -> bytes:
    return json.dumps(
        {"format": PACK_FORMAT, "audited_at": "2026-01-02T03:04:05+00:00", "base_model": None, **fields}
    ).encode()


@pytest.mark.parametrize(
    ("damaged", "named"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 32 levels"),
        (_index(base_model="\udcff"), "'base_model'"),
        (_index(base_model=7), "'base_model' is a number"),
        (_index(audited_at="9999-12-31T23:59:59-14:00"), "'audited_at'"),
        (_index(audited_at="2999-01-01T00:00:00+00:00"), "in the future"),
        (_index(audited_at="2026-01-02T03:04:05"), "has no UTC offset"),
        (_index(audited_at="yesterday"), "'audited_at' 'yesterday'"),
        (b'{"format":1}', "'format' is a number"),
        (json.dumps({"format": PACK_FORMAT}).encode(), "has no 'audited_at'"),
        (b"[]", "holds an array"),
        (b"\xff", "not valid UTF-8"),
    ],
    ids=[
        "nested",
        "surrogate-base-model",
        "number-base-model",
        "overflowing-time",
        "future-time",
        "naive-time",
        "not-a-time",
        "format-1",
        "no-audited-at",
        "array",
        "not-utf8",
    ],
)
def test_a_damaged_pack_json_does_not_verify_and_names_the_field(
    pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damaged: bytes, named: str
) -> None:
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    (copy / "pack.json").write_bytes(damaged)
    assert audit_main(["evidence-verify", str(copy), "--builtin-policy", DEV]) == 1  # fails closed
    out = capsys.readouterr().out
    assert out.startswith(f"PACK DOES NOT VERIFY: {copy} is not a FedSeal evidence pack"), out
    assert named in out and len(out.splitlines()) == 1, out


def test_a_missing_pack_or_file_and_an_existing_out_are_usage_errors(
    pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing-folder"
    assert audit_main(["evidence-verify", str(missing), "--builtin-policy", DEV]) == 2
    assert f"error: {missing} is not a folder" in capsys.readouterr().err
    for name in ("audit.log", "pack.json"):
        copy = tmp_path / f"no-{name}"
        shutil.copytree(pack, copy)
        (copy / name).unlink()
        assert audit_main(["evidence-verify", str(copy), "--builtin-policy", DEV]) == 2
        captured = capsys.readouterr()
        assert captured.err == f"error: cannot read {copy / name}: No such file or directory\n"
        assert "PACK" not in captured.out
    # Into a folder already in use, or below a file: refused before the audit, nothing written.
    notes = tmp_path / "notes.txt"
    notes.write_text("kept\n")
    for out, why in [(pack, "exists and is not an empty folder"), (notes / "x", f"{notes} is a file")]:
        before = sorted(pack.rglob("*"))
        assert audit_main(["evidence-pack", str(pack / "audit.log"), str(out), "--builtin-policy", DEV]) == 2
        assert f"error: OUT {out}" in (err := capsys.readouterr().err) and why in err, err
        assert sorted(pack.rglob("*")) == before and notes.read_text() == "kept\n"


def test_a_base_model_that_is_not_printable_text_is_a_usage_error(
    pack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The undecodable byte of the audit's report, as a shell passes it (bytes, not text).
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "auditor",
            "evidence-pack",
            str(pack / "audit.log"),
            str(tmp_path / "a"),
            "--builtin-policy",
            DEV,
            "--base-model",
            b"a\xff",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert made.returncode == 2 and "argument --base-model" in made.stderr, made.stderr
    assert "Traceback" not in made.stderr and not (tmp_path / "a").exists()
    for bad in ("a\udcff", "line\nbreak", "", "x" * 257):
        with pytest.raises(SystemExit) as refused:
            audit_main(
                [
                    "evidence-pack",
                    str(pack / "audit.log"),
                    str(tmp_path / "b"),
                    "--builtin-policy",
                    DEV,
                    "--base-model",
                    bad,
                ]
            )
        assert refused.value.code == 2 and "argument --base-model" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()

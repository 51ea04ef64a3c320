"""Data cards, local data validation and site metrics, end to end over real gRPC.

Must show (issue 17): a data card's digest is bound end to end (a changed card, a changed
digest, or a card missing where the round requires one is refused by name, and the auditor
checks each logged digest against the published card); a required failing validation is
refused, and no record content reaches the header, the log or the receipt; the logged
per-round aggregate of the sites' metrics equals the example-weighted mean of what they sent.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pandas
import pytest
import safetensors.torch
from conftest import adapter_spec, make_adapter, round_config, site_client
from identities import site_identity

from aggregator import RunningAggregator
from attestation import Policy
from auditor import audit_log
from client_sdk import FedSealClient, SealedSubmission, UpdateRejectedError
from client_sdk.validation import validate_tabular, validate_text
from fedseal.canonical import canonical_json
from fedseal.datacard import (
    MAX_DATA_CARD_SIZE,
    DataCard,
    DataCardError,
    DataCardMismatchError,
    check_published_card,
    load_data_card,
    parse_data_card,
)
from fedseal.logformat import LogEntry, RejectReason, decode_record
from fedseal.logschema import RoundClosed, UpdateAccepted, UpdateRejected
from fedseal.sitemetrics import SiteMetricsError, check_site_metrics
from fedseal.validation import ValidationSummaryError, parse_validation_summary
from fedseal.wire import header_to_proto

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "data-card.schema.json"


def card(site: str = "site-0", **changes: object) -> DataCard:
    base = DataCard(
        source=f"{site}: discharge notes, cardiology ward",
        legal_basis="GDPR Art. 6(1)(e) and 9(2)(j); ethics approval 2024-17",
        date_start=dt.date(2021, 1, 1),
        date_end=dt.date(2023, 12, 31),
        record_count=1200,
        filtering=("adults only", "notes longer than 20 words"),
        deidentification=("names and dates removed (Philter)",),
        contact="dpo@example.org",
        extensions={"language": "de"},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _entries(path: Path) -> list[LogEntry]:
    out = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        record = decode_record(line, line_number=number)
        if record.entry is not None:
            out.append(record.entry)
    return out


def _send(
    endpoint: str, policy: Policy, sub: SealedSubmission, *, resign: bool = True, **changes: object
) -> str:
    header = dataclasses.replace(sub.header, **changes)  # type: ignore[arg-type]
    identity = site_identity(header.client_id)
    if resign:
        header = header.sign(identity.signing_key)
    with FedSealClient(endpoint, policy, identity=identity, timeout=10) as client:
        client.attest()
        return client._connection.submit(header, sub.chunks, timeout=10)


def _refused(
    reason: RejectReason,
    endpoint: str,
    policy: Policy,
    sub: SealedSubmission,
    *,
    resign: bool = True,
    **changes: object,
) -> None:
    with pytest.raises(UpdateRejectedError) as info:
        _send(endpoint, policy, sub, resign=resign, **changes)
    assert info.value.reason is reason, str(info.value)


# ------------------------------------------------------------------ the formats


def test_data_card_parses_strictly_and_matches_its_published_schema(tmp_path: Path) -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    good = card().to_json_obj()
    jsonschema.validate(good, schema)
    assert parse_data_card(json.dumps(good, indent=2)) == card()
    path = tmp_path / "card.json"
    path.write_text(json.dumps(good))
    assert load_data_card(path).digest() == hashlib.sha256(canonical_json(good)).digest()
    # (the field the DataCardError must name, the bad card)
    bad_cards: dict[str, tuple[str, dict[str, object]]] = {
        "unknown field": ("notes", good | {"notes": "x"}),
        "missing field": ("contact", {k: v for k, v in good.items() if k != "contact"}),
        "empty source": ("source", good | {"source": " "}),
        "reversed dates": (
            "date_range",
            good | {"date_range": {"start": "2024-01-01", "end": "2023-01-01"}},
        ),
        "not a date": (
            "date_range.start",
            good | {"date_range": {"start": "2024-13-01", "end": "2024-12-01"}},
        ),
        "zero records": ("record_count", good | {"record_count": 0}),
        "boolean count": ("record_count", good | {"record_count": True}),
        "extensions not an object": ("extensions", good | {"extensions": []}),
    }
    for what, (name, obj) in bad_cards.items():
        # docs/data-card.md: "a DataCardError naming the field".
        with pytest.raises(DataCardError, match=re.escape(name)):
            DataCard.from_json_obj(obj)
        with pytest.raises(DataCardError, match=re.escape(name)):
            parse_data_card(json.dumps(obj))
        if what not in ("reversed dates", "not a date"):  # what JSON Schema does not assert
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(obj, schema)
    with pytest.raises(DataCardError, match="duplicate"):
        parse_data_card('{"source": "a", "source": "b"}')
    with pytest.raises(DataCardError, match="cannot be read"):
        load_data_card(tmp_path / "absent.json")


def _padded_card(size: int) -> bytes:
    """The canonical JSON of a valid card exactly `size` bytes long (padded in extensions)."""
    base = card(extensions={"pad": ""}).to_json_obj()
    pad = "x" * (size - len(canonical_json(base)))
    padded = canonical_json(base | {"extensions": {"pad": pad}})
    assert len(padded) == size
    return padded


def test_data_card_over_16_kib_of_canonical_json_is_refused() -> None:
    """docs/data-card.md: more than 16 KiB of canonical JSON is a DataCardError."""
    assert MAX_DATA_CARD_SIZE == 16 * 1024
    at_limit = _padded_card(MAX_DATA_CARD_SIZE)
    assert parse_data_card(at_limit).canonical_bytes() == at_limit
    just_under = _padded_card(MAX_DATA_CARD_SIZE - 1)
    assert parse_data_card(just_under).canonical_bytes() == just_under
    just_over = _padded_card(MAX_DATA_CARD_SIZE + 1)
    with pytest.raises(DataCardError, match=f"longer than {MAX_DATA_CARD_SIZE} bytes"):
        parse_data_card(just_over)
    with pytest.raises(DataCardError, match=f"longer than {MAX_DATA_CARD_SIZE} bytes"):
        card(extensions=json.loads(just_over)["extensions"])
    # Spacing does not count: a card whose pretty-printed text is over the limit but whose
    # canonical JSON is not is accepted.
    spaced = json.dumps(json.loads(at_limit), indent=8)
    assert len(spaced.encode()) > MAX_DATA_CARD_SIZE
    assert parse_data_card(spaced).canonical_bytes() == at_limit


def _nested(levels: int, *, lists: bool = False) -> dict[str, object]:
    """`levels` nested JSON containers, the outermost an object and the innermost holding a
    string: {"a": {"a": ... {"a": "v"}}}; with `lists`, every other level is a list."""
    value: object = "v"
    for i in range(levels - 1):
        value = [value] if lists and i % 2 == 0 else {"a": value}
    return {"a": value}


def test_data_card_extensions_are_at_most_8_levels_deep() -> None:
    """docs/data-card.md: extensions "at most 8 levels deep" (the extensions object is level
    1, so {"language": "de"} is 1 level deep; a list is a level as an object is)."""
    for lists in (False, True):
        eight = card().to_json_obj() | {"extensions": _nested(8, lists=lists)}
        nine = card().to_json_obj() | {"extensions": _nested(9, lists=lists)}
        assert parse_data_card(json.dumps(eight)).extensions == eight["extensions"]
        assert card(extensions=_nested(8, lists=lists)).extensions == eight["extensions"]
        with pytest.raises(DataCardError, match=r"'extensions.*' nests deeper than 8 levels"):
            parse_data_card(json.dumps(nine))
        with pytest.raises(DataCardError, match="nests deeper than 8 levels"):
            card(extensions=_nested(9, lists=lists))


def test_site_metrics_are_bounded() -> None:
    assert check_site_metrics({"train_loss": 1, "eval.loss": 0.5}) == {"train_loss": 1.0, "eval.loss": 0.5}
    for bad in (
        {"loss": math.nan},
        {"loss": math.inf},
        {"loss": True},
        {"loss": "0.1"},
        {"1loss": 0.1},
        {"x" * 65: 0.1},
        {f"m{i}": 0.0 for i in range(33)},
    ):
        with pytest.raises(SiteMetricsError):
            check_site_metrics(bad)


def test_validation_helpers_count_and_never_carry_records() -> None:
    marker = "MARKER-5f0c2d-private-record"
    rows = [{"age": 40 + i % 7, "note": f"{marker} {i}"} for i in range(50)]
    rows.append(dict(rows[0]))  # one duplicate
    rows.append({"age": 900, "note": marker})  # an outlier
    rows.append({"age": None, "note": "x"})  # a missing value
    schema = {
        "type": "object",
        "properties": {"age": {"type": ["integer", "null"]}, "note": {"type": "string"}},
        "required": ["age", "note"],
    }
    summary = validate_tabular(rows, schema=schema)
    checks = {c.name: c for c in summary.checks}
    assert summary.records == 53
    assert checks["schema"].passed and checks["schema"].counts["invalid_records"] == 0
    assert not checks["duplicates"].passed and checks["duplicates"].counts["duplicates"] == 1
    assert not checks["missing"].passed and checks["missing"].counts["missing_values"] == 1
    assert checks["outliers"].counts["outliers"] == 1
    assert not summary.passed
    assert marker.encode() not in summary.canonical_bytes()
    strict = validate_tabular(rows, schema=schema | {"properties": {"age": {"type": "integer"}}})
    assert {c.name: c for c in strict.checks}["schema"].counts["invalid_records"] == 1

    # The same records as a pandas DataFrame (docs/data-card.md): the same summary, its NaN
    # the missing value.
    frame = pandas.DataFrame(rows)
    assert frame["age"].isna().sum() == 1
    assert validate_tabular(frame, schema=schema).canonical_bytes() == summary.canonical_bytes()

    texts = [f"{marker} sentence number {i}" for i in range(20)] + ["", "x" * 5000]
    text_summary = validate_text(texts, max_length=1000)
    tchecks = {c.name: c for c in text_summary.checks}
    assert not tchecks["empty"].passed and tchecks["length"].counts["too_long"] == 1
    assert tchecks["length"].counts["max_length"] == 5000
    assert marker.encode() not in text_summary.canonical_bytes()
    clean = validate_text([f"record {i}" for i in range(10)])
    assert clean.passed

    # The format itself refuses strings: a forged summary cannot smuggle a record.
    forged = json.loads(clean.canonical_bytes())
    forged["checks"][0]["counts"]["records"] = marker
    with pytest.raises(ValidationSummaryError):
        parse_validation_summary(canonical_json(forged))
    forged = json.loads(clean.canonical_bytes())
    forged["checks"][0]["name"] = marker
    with pytest.raises(ValidationSummaryError):
        parse_validation_summary(canonical_json(forged))
    lying = json.loads(summary.canonical_bytes()) | {"passed": True}
    with pytest.raises(ValidationSummaryError, match="contradicts"):
        parse_validation_summary(canonical_json(lying))


def _with_score(score: float) -> list[float]:
    """15 values with median 0 and median absolute deviation 1 (also with the extra value),
    plus one value whose modified z-score (0.6745 * |x - median| / MAD) is `score`."""
    return [-1.0] * 5 + [0.0] * 5 + [1.0] * 5 + [score / 0.6745]


def test_numeric_outliers_are_a_modified_z_score_above_3_5() -> None:
    """docs/data-card.md: numeric outliers (modified z-score above 3.5)."""
    counts: dict[float, int] = {}
    for score in (3.4, 3.6):
        rows = [{"value": v, "id": n} for n, v in enumerate(_with_score(score))]
        checks = {c.name: c for c in validate_tabular(rows).checks}
        counts[score] = checks["outliers"].counts["outliers"]
        assert checks["outliers"].counts["numeric_columns"] == 2
    assert counts == {3.4: 0, 3.6: 1}
    # The threshold is the default of both helpers, and applies to text lengths as well.
    for score, flagged in ((3.4, 0), (3.6, 1)):
        # Lengths 10, 20, 30 (five each) and one more: median 20, MAD 10, and the last
        # length's score 3.37 (3.4) or 3.57 (3.6).
        texts = ["t" * round(10 * (v + 2)) for v in _with_score(score)]
        tchecks = {c.name: c for c in validate_text(texts).checks}
        assert tchecks["length_outliers"].counts["outliers"] == flagged
        assert tchecks["length_outliers"].passed is (flagged == 0)


def test_text_validation_counts_types_and_length_outliers() -> None:
    """docs/data-card.md: validate_text counts types (non-strings) and length outliers."""
    records: list[Any] = ["first record", 42, "second record", None, "third record"]
    summary = validate_text(records)
    checks = {c.name: c for c in summary.checks}
    assert summary.records == 5
    assert not checks["types"].passed and checks["types"].counts["not_strings"] == 2
    assert not summary.passed and "types" in summary.failed_checks()
    assert {c.name: c for c in validate_text(["a", "b"]).checks}["types"].passed

    texts = [f"record {i:02d}" + "x" * (i % 3) for i in range(30)] + ["y" * 2000]
    checks = {c.name: c for c in validate_text(texts).checks}
    assert checks["length_outliers"].counts["outliers"] == 1
    assert not checks["length_outliers"].passed
    assert checks["length"].passed  # no max_length: only the outlier check sees it
    assert validate_text(texts[:-1]).passed


def test_a_forged_summary_with_a_negative_count_is_refused() -> None:
    """docs/data-card.md: the summary's format refuses anything but non-negative integers."""
    clean = validate_text([f"record {i}" for i in range(10)])
    assert parse_validation_summary(clean.canonical_bytes()) == clean
    for where in ("count", "records"):
        forged = json.loads(clean.canonical_bytes())
        if where == "count":
            forged["checks"][0]["counts"]["records"] = -1
        else:
            forged["records"] = -1
        with pytest.raises(ValidationSummaryError, match="non-negative integer"):
            parse_validation_summary(canonical_json(forged))
    forged = json.loads(clean.canonical_bytes())
    forged["checks"][0]["counts"]["records"] = 0.5
    with pytest.raises(ValidationSummaryError, match="non-negative integer"):
        parse_validation_summary(canonical_json(forged))


# ------------------------------------------------------------------ end to end


def test_data_card_bound_end_to_end(live_aggregator: RunningAggregator, dev_policy: Policy) -> None:
    endpoint = live_aggregator.endpoint
    live_aggregator.rounds.open_round(round_config(1, require_data_card=True, min_clients=2))
    with site_client(endpoint, dev_policy, "site-0", timeout=20) as client:
        sub = client.seal_update(make_adapter(0), round_id=1, num_examples=10, data_card=card())
        bare = client.seal_update(make_adapter(0), round_id=1, num_examples=10)
    other = card(record_count=999).canonical_bytes()
    # Missing where required (a card-less update, honestly signed).
    _refused(RejectReason.DATA_CARD_MISSING, endpoint, dev_policy, bare)
    # Changed card: another card published under the signed digest.
    _refused(RejectReason.DATA_CARD_MISMATCH, endpoint, dev_policy, sub, data_card=other)
    # A card that does not parse.
    _refused(RejectReason.DATA_CARD_INVALID, endpoint, dev_policy, sub, data_card=b'{"format": 1}')
    # Changed digest (and card) after sealing, re-signed by the site: the envelope was sealed
    # for the first digest, so the data key does not open.
    _refused(
        RejectReason.UNWRAP_FAILED,
        endpoint,
        dev_policy,
        sub,
        data_card=other,
        data_card_digest=hashlib.sha256(other).digest(),
    )
    # Changed digest in transit, not re-signed: the signature no longer covers it.
    _refused(
        RejectReason.BAD_SIGNATURE,
        endpoint,
        dev_policy,
        sub,
        resign=False,
        data_card=b"",
        data_card_digest=hashlib.sha256(other).digest(),
    )
    receipt = _send(endpoint, dev_policy, sub, resign=False)
    assert receipt
    # A site may keep its card private and sign its digest only.
    with site_client(endpoint, dev_policy, "site-1", timeout=20) as client:
        client.submit_update(
            make_adapter(1), round_id=1, num_examples=30, data_card=card("site-1"), publish_data_card=False
        )

    log = live_aggregator.log.path
    accepted = {e.body.client_id: e.body for e in _entries(log) if isinstance(e.body, UpdateAccepted)}
    assert accepted["site-0"].data_card_digest == card().digest()
    assert accepted["site-0"].data_card == card().to_json_obj()
    assert accepted["site-1"].data_card_digest == card("site-1").digest()
    assert accepted["site-1"].data_card is None
    # Handed over later, the private card checks against the logged digest; another does not.
    assert check_published_card(card("site-1").canonical_bytes(), accepted["site-1"].data_card_digest)
    with pytest.raises(DataCardMismatchError):
        check_published_card(card("site-2").canonical_bytes(), accepted["site-1"].data_card_digest)
    rejected = [e.body.reason for e in _entries(log) if isinstance(e.body, UpdateRejected)]
    assert RejectReason.DATA_CARD_MISSING in rejected and RejectReason.DATA_CARD_MISMATCH in rejected
    assert audit_log(log, dev_policy).findings == ()

    # The auditor checks each logged digest against the published card: swap the published
    # card in the log (re-signing the log is out of an attacker's reach; the auditor's data
    # governance rule is what is tested, so the entry is rewritten in place and the log's own
    # damage findings come with it).
    text = log.read_text()
    logged_card = canonical_json(card().to_json_obj()).decode()
    assert logged_card in text
    tampered = log.with_name("tampered.log")
    tampered.write_text(
        text.replace(logged_card, canonical_json(card(record_count=7).to_json_obj()).decode())
    )
    kinds = {f.kind.value for f in audit_log(tampered, dev_policy).findings}
    assert "invalid_data_governance" in kinds


def test_required_validation_and_no_record_reaches_header_log_or_receipt(
    live_aggregator: RunningAggregator, dev_policy: Policy, tmp_path: Path
) -> None:
    endpoint = live_aggregator.endpoint
    marker = "MARKER-9c41e7-patient-record"
    live_aggregator.rounds.open_round(round_config(1, require_validation=True, min_clients=1, max_clients=2))
    good_texts = [f"{marker} visit {i}" for i in range(30)]
    passing = validate_text(good_texts)
    failing = validate_text([*good_texts, good_texts[0], ""])
    assert passing.passed and not failing.passed
    with site_client(endpoint, dev_policy, "site-0", timeout=20) as client:
        bad = client.seal_update(make_adapter(0), round_id=1, num_examples=10, validation=failing)
        none = client.seal_update(make_adapter(0), round_id=1, num_examples=10)
    _refused(RejectReason.VALIDATION_FAILED, endpoint, dev_policy, bad, resign=False)
    _refused(RejectReason.VALIDATION_MISSING, endpoint, dev_policy, none, resign=False)
    # A summary changed after signing breaks the signature; re-signed, the envelope (sealed
    # for the first summary) does not open.
    _refused(
        RejectReason.BAD_SIGNATURE,
        endpoint,
        dev_policy,
        bad,
        resign=False,
        validation_summary=passing.canonical_bytes(),
    )
    _refused(
        RejectReason.UNWRAP_FAILED, endpoint, dev_policy, bad, validation_summary=passing.canonical_bytes()
    )
    with site_client(endpoint, dev_policy, "site-1", timeout=20, receipts=tmp_path / "receipts") as client:
        sub = client.seal_update(make_adapter(1), round_id=1, num_examples=30, validation=passing)
        receipt = client.send(sub)
    header_bytes = header_to_proto(sub.header).SerializeToString()
    assert passing.canonical_bytes() in header_bytes
    body = receipt.entry.body
    assert isinstance(body, UpdateAccepted) and body.validation == passing.to_json_obj()
    for blob in (
        header_bytes,
        header_to_proto(bad.header).SerializeToString(),
        live_aggregator.log.path.read_bytes(),
        receipt.text.encode(),
        *(p.read_bytes() for p in (tmp_path / "receipts").rglob("*") if p.is_file()),
    ):
        assert marker.encode() not in blob
        assert base64.b64encode(marker.encode())[:16] not in blob
    assert audit_log(live_aggregator.log.path, dev_policy).findings == ()


def test_logged_metrics_are_the_example_weighted_mean(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    endpoint = live_aggregator.endpoint
    live_aggregator.rounds.open_round(round_config(1))
    sent = {
        "site-0": (10, {"train_loss": 2.5, "eval_loss": 2.75, "eval_examples": 4}),
        "site-1": (30, {"train_loss": 1.25, "eval_loss": 1.5, "eval_examples": 12}),
        "site-2": (60, {"train_loss": 0.625, "eval_examples": 20, "accuracy": 0.8125}),
    }
    for i, (site, (n, metrics)) in enumerate(sent.items()):
        with site_client(endpoint, dev_policy, site, timeout=20) as client:
            client.submit_update(make_adapter(i), round_id=1, num_examples=n, metrics=metrics)
    with site_client(endpoint, dev_policy, "site-0", timeout=20) as client:
        aggregate = client.fetch_aggregate(1, wait_seconds=10)

    expected: dict[str, float] = {}
    for name in ("train_loss", "eval_loss", "eval_examples", "accuracy"):
        pairs = [(n, m[name]) for n, m in sent.values() if name in m]
        expected[name] = sum(n * v for n, v in pairs) / sum(n for n, _ in pairs)
    (closed,) = [e.body for e in _entries(live_aggregator.log.path) if isinstance(e.body, RoundClosed)]
    assert closed.metrics is not None
    assert closed.metrics["client"] == pytest.approx(expected, rel=1e-12)
    assert closed.metrics["client_reports"] == 3
    # The SDK hands the same numbers back with the aggregate, under the enclave's signature.
    assert dict(aggregate.metrics) == closed.metrics["client"]
    # No single site's value is in the log (site-0's eval loss, site-1's train loss).
    log_bytes = live_aggregator.log.path.read_bytes()
    assert b":2.75" not in log_bytes and b":1.25" not in log_bytes
    assert audit_log(live_aggregator.log.path, dev_policy).findings == ()


def test_malformed_site_metrics_are_refused(live_aggregator: RunningAggregator, dev_policy: Policy) -> None:
    live_aggregator.rounds.open_round(round_config(1))
    payload = safetensors.torch.save(make_adapter(0), metadata={"fedseal.metrics": '{"loss": "high"}'})
    spec_digest = adapter_spec().digest()
    with (
        site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=20) as client,
        pytest.raises(UpdateRejectedError) as info,
    ):
        client.send(
            client.seal_payload(
                payload, round_id=1, num_examples=5, adapter_spec_digest=spec_digest, chunk_size=4096
            )
        )
    assert info.value.reason is RejectReason.MALFORMED
    assert "site metrics" in info.value.detail

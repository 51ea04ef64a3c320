"""Every parser of untrusted JSON refuses deep nesting with a named error (issue 18, item 3).

CPython's json recurses once per level: a thousand `[` raise RecursionError, which is not
a ValueError and escaped the enclave's refusal path (the client saw gRPC UNKNOWN and
nothing was logged). `fedseal.strictjson` checks the depth first; these tests run each
parser of outside input on a deep document and on the same shapes just inside the limit.
"""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
import torch
from conftest import round_config, site_client

from aggregator import RunningAggregator
from aggregator._config import JobConfig
from aggregator.enclave._receive import _parse_and_validate
from attestation import Policy
from attestation._bundle import EvidenceBundle
from attestation._errors import BundleFormatError, PolicyError
from client_sdk import UpdateRejectedError
from fedseal.canonical import parse_canonical
from fedseal.enrolment import Enrolment, EnrolmentError
from fedseal.errors import FormatError
from fedseal.logformat import EntryKind, RejectReason, decode_record
from fedseal.roundconfig import ConfigError
from fedseal.spec import AdapterSpec, WireDtype
from fedseal.strictjson import MAX_JSON_DEPTH, JsonDepthError, check_depth, loads
from fedseal.wire import UpdateRejectedError as WireRejectedError

REPO = Path(__file__).resolve().parent.parent
DEEP = "[" * 1000 + "]" * 1000
DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000
# Many small tensors: the spec's header allowance (about 10 KB) fits a thousand levels.
WIDE_SPEC = AdapterSpec.from_tensors(
    {f"layers.{i}.q_proj.lora_A.weight": torch.zeros(2, 2) for i in range(64)}, dtype=WireDtype.FLOAT32
)


def _deep_payload(header_text: str) -> bytes:
    header = header_text.encode() + b" " * (-len(header_text) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(WIDE_SPEC.data_bytes)


def test_the_limit_is_exact_and_strings_do_not_count() -> None:
    assert loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, what="x") is not None
    with pytest.raises(JsonDepthError, match=f"doc nests JSON deeper than {MAX_JSON_DEPTH} levels"):
        loads("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), what="doc")
    # Brackets inside strings (escaped quotes included) are text, not nesting.
    text = '["' + "[{" * 100 + '\\"' + "[" * 50 + '"]'
    assert loads(text, what="x") == ["[{" * 100 + '"' + "[" * 50]
    for deep in (DEEP, DEEP_OBJECT, DEEP.encode()):
        with pytest.raises(JsonDepthError):
            loads(deep, what="x")


def test_the_scan_is_linear_on_hostile_strings() -> None:
    import time

    hostile = b'"\\' * 400_000 + b"[" * 40  # unterminated strings, escapes, then brackets
    start = time.perf_counter()
    with pytest.raises(FormatError):
        loads(hostile, what="x")
    check_depth(b"[" * 10, what="x")
    assert time.perf_counter() - start < 2.0


def test_enclave_header_parser_refuses_deep_nesting_as_malformed() -> None:
    for deep in (DEEP, '{"__metadata__":' + DEEP + "}"):
        with pytest.raises(WireRejectedError) as info:
            _parse_and_validate(memoryview(bytearray(_deep_payload(deep))), WIDE_SPEC)
        assert info.value.reason is RejectReason.MALFORMED
        assert f"deeper than {MAX_JSON_DEPTH}" in info.value.detail


def test_a_sealed_deep_header_is_a_logged_malformed_rejection(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    """End to end: an enrolled site seals a deeply nested header; the client gets a named
    rejection (not gRPC UNKNOWN) and the log records it."""
    live_aggregator.rounds.open_round(round_config(1, adapter_spec=WIDE_SPEC))
    with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=20) as client:
        sealed = client.seal_payload(
            _deep_payload(DEEP),
            round_id=1,
            num_examples=1,
            adapter_spec_digest=WIDE_SPEC.digest(),
            chunk_size=4096,
        )
        with pytest.raises(UpdateRejectedError) as info:
            client.send(sealed)
    assert info.value.reason is RejectReason.MALFORMED
    rejected = []
    for number, line in enumerate(live_aggregator.log.path.read_bytes().splitlines(), start=1):
        entry = decode_record(line, line_number=number).entry
        if entry is not None and entry.kind is EntryKind.UPDATE_REJECTED:
            rejected.append(entry.fields)
    assert [(r["client_id"], r["reason"]) for r in rejected] == [("site-0", "malformed")]


def test_documents_from_outside_refuse_deep_nesting(tmp_path: Path) -> None:
    deep_file = tmp_path / "deep.json"
    deep_file.write_text('{"version": 1, "sites": ' + DEEP + "}")
    with pytest.raises(EnrolmentError, match="deeper than"):
        Enrolment.from_file(deep_file)
    with pytest.raises(ConfigError, match="deeper than"):
        JobConfig.from_file(deep_file)
    with pytest.raises(PolicyError, match="deeper than"):
        Policy.from_file(deep_file)
    with pytest.raises(BundleFormatError, match="deeper than"):
        EvidenceBundle.from_bytes(deep_file.read_bytes())
    with pytest.raises(FormatError, match="deeper than"):
        parse_canonical(DEEP.encode(), what="signed request")
    # A log line nested just past the limit but canonical and short (the fast path).
    line = ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)).encode()
    with pytest.raises(FormatError, match="deeper than"):
        decode_record(line, line_number=1)


def test_no_parser_bypasses_the_depth_limit() -> None:
    """json.loads appears only in strictjson (and the enclave's check of its own output)."""
    allowed = {Path("fedseal/strictjson.py"), Path("aggregator/enclave/_serialize.py")}
    offenders = []
    for package in ("fedseal", "aggregator", "client_sdk", "attestation", "policies"):
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO)
            if rel in allowed or "_proto" in rel.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in ("loads", "load")
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "json"
                ):
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


def test_site_metrics_sealed_in_an_update_cannot_recurse() -> None:
    """The enclave reads a site's metrics from the update's metadata: nesting within the
    size bound is a named refusal, not a RecursionError escaping the refusal path."""
    from fedseal.sitemetrics import METRICS_METADATA_ALLOWANCE, SiteMetricsError, decode_site_metrics

    deep = "[" * (METRICS_METADATA_ALLOWANCE // 2) + "]" * (METRICS_METADATA_ALLOWANCE // 2)
    with pytest.raises(SiteMetricsError):
        decode_site_metrics(deep)


def _reference_depth_ok(raw: bytes, max_depth: int) -> bool:
    """The scan as specified, token by token: strings skipped, brackets counted."""
    depth = 0
    position = 0
    while position < len(raw):
        byte = raw[position]
        if byte == ord('"'):
            position += 1
            while position < len(raw) and raw[position] != ord('"'):
                position += 2 if raw[position] == ord("\\") else 1
        elif byte in b"[{":
            depth += 1
            if depth > max_depth:
                return False
        elif byte in b"]}":
            depth -= 1
        position += 1
    return True


def test_the_fast_scan_agrees_with_the_token_by_token_scan() -> None:
    import random

    # Short documents over the bytes that matter (quotes, escapes, brackets) hit every
    # interplay of strings and nesting; the fast scan must give the same verdict.
    rnd = random.Random(18)
    alphabet = b'[]{}"\\a, '
    for _ in range(20_000):
        raw = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24)))
        limit = rnd.randint(0, 4)
        try:
            check_depth(raw, what="x", max_depth=limit)
            verdict = True
        except JsonDepthError:
            verdict = False
        assert verdict == _reference_depth_ok(raw, limit), (raw, limit)

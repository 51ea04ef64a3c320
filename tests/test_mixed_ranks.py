"""Clients at different LoRA ranks in one lora-exact round (issue 5, "Exact LoRA aggregation").

The round spec is the output spec (rank 8 here); `client_ranks` lists the ranks a client may
train at, each with its derived spec (`AdapterSpec.with_lora_rank`) and digest. Checked
here: the derivation, the round config, the spool and the strategy on their own, then one
round over the real gRPC service with clients at ranks 4, 8 and 16 whose aggregate must be
the optimal rank-8 truncated SVD of Σ pᵢ BᵢAᵢ computed independently on the dense matrices.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import access_config, round_config, simulated_collector, site_client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from identities import site_identity
from logfiles import log_entries, resigned_log

import aggregator.enclave.lora_exact as enclave_lora
from aggregator import start_aggregator
from aggregator.enclave._spool import SpoolError, UpdateSpool
from aggregator.enclave.strategies import AggregationError, LoraExact, make_strategy
from attestation import load_builtin_policy
from auditor import FindingKind, audit_log
from auditor._cli import main as audit_main
from client_sdk import AdapterMismatchError, UpdateRejectedError
from fedseal.logformat import (
    EntryKind,
    RejectReason,
)
from fedseal.roundconfig import (
    MAX_CLIENT_RANKS,
    ConfigError,
    FedAvgParams,
    LoraExactParams,
    RoundConfig,
    parse_strategy_params,
)
from fedseal.spec import (
    MAX_LORA_RANK,
    AdapterSpec,
    LoraFactorError,
    TensorSpec,
    WireDtype,
    pair_lora_names,
)
from fedseal.wire import update_signature_message

DEV = "dev-insecure-allow-simulated"
ORIGIN = "fedseal.test/mixed-ranks"
F32 = WireDtype.FLOAT32

# Output rank 8; d = k = 64 for q, d = 48, k = 64 for v; plus one non-LoRA tensor.
OUTPUT_SHAPES = {
    "layers.0.mlp.norm.weight": (64,),
    "layers.0.q_proj.lora_A.weight": (8, 64),
    "layers.0.q_proj.lora_B.weight": (64, 8),
    "layers.0.v_proj.lora_A.weight": (8, 64),
    "layers.0.v_proj.lora_B.weight": (48, 8),
}
SPEC = AdapterSpec.of([TensorSpec(name, shape, F32) for name, shape in OUTPUT_SHAPES.items()])
MODULES = (
    ("layers.0.q_proj.lora_A.weight", "layers.0.q_proj.lora_B.weight"),
    ("layers.0.v_proj.lora_A.weight", "layers.0.v_proj.lora_B.weight"),
)
NORM = "layers.0.mlp.norm.weight"
CLIENT_RANKS = (4, 8, 16)


def adapter(rank: int, seed: int, spec: AdapterSpec = SPEC) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = spec.with_lora_rank(rank).shapes()
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def dense_optimum(
    updates: list[dict[str, torch.Tensor]], weights: list[float], rank: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Per module (by A's name): the rank-`rank` truncated SVD of Σ pᵢ BᵢAᵢ formed densely in
    float64, ΔW's singular values, and the relative residual — independent of the code under test."""
    total = math.fsum(weights)
    out = {}
    for a_name, b_name in MODULES:
        delta = sum(
            (w / total) * (u[b_name].double() @ u[a_name].double())
            for u, w in zip(updates, weights, strict=True)
        )
        assert isinstance(delta, torch.Tensor)
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        truncated = u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]
        residual = math.sqrt(float((s[rank:] ** 2).sum()) / float((s**2).sum()))
        out[a_name] = (truncated, s, residual)
    return out


def lora_config(round_id: int = 1, ranks: tuple[int, ...] = CLIENT_RANKS, **overrides: object) -> RoundConfig:
    fields: dict[str, object] = {
        "adapter_spec": SPEC,
        "strategy": "lora-exact",
        "strategy_params": LoraExactParams(client_ranks=ranks),
    }
    fields.update(overrides)
    return round_config(round_id, **fields)


# ----------------------------------------------------------------------------- derivation


def test_with_lora_rank_changes_only_the_factor_ranks() -> None:
    for rank in (1, 4, 16, MAX_LORA_RANK):
        derived = SPEC.with_lora_rank(rank)
        shapes = derived.shapes()
        assert shapes["layers.0.q_proj.lora_A.weight"] == (rank, 64)
        assert shapes["layers.0.q_proj.lora_B.weight"] == (64, rank)
        assert shapes["layers.0.v_proj.lora_A.weight"] == (rank, 64)
        assert shapes["layers.0.v_proj.lora_B.weight"] == (48, rank)
        assert shapes[NORM] == (64,)
        assert [t.name for t in derived.tensors] == [t.name for t in SPEC.tensors]
        assert derived.lora_ranks() == (rank,)
    # The spec's own rank derives the spec itself; every other rank has its own digest.
    assert SPEC.with_lora_rank(8) == SPEC and SPEC.with_lora_rank(8).digest() == SPEC.digest()
    digests = {SPEC.with_lora_rank(r).digest() for r in range(1, 33)}
    assert len(digests) == 32
    # Wire dtypes are kept, tensor by tensor.
    mixed = AdapterSpec.of(
        [
            TensorSpec("m.lora_A.weight", (8, 16), WireDtype.BFLOAT16),
            TensorSpec("m.lora_B.weight", (32, 8), WireDtype.FLOAT16),
            TensorSpec("m.bias", (32,), F32),
        ]
    )
    assert [t.dtype for t in mixed.with_lora_rank(2).tensors] == [t.dtype for t in mixed.tensors]
    assert mixed.with_lora_rank(2).by_name()["m.bias"] == mixed.by_name()["m.bias"]


def test_with_lora_rank_refuses_bad_ranks_and_specs() -> None:
    for bad in (0, -1, MAX_LORA_RANK + 1, True, 2.0, "4"):
        with pytest.raises(LoraFactorError, match="LoRA rank must be an integer"):
            SPEC.with_lora_rank(bad)  # type: ignore[arg-type]
    with pytest.raises(LoraFactorError, match="no LoRA factor pair"):
        AdapterSpec.of([TensorSpec("w", (4, 4), F32)]).with_lora_rank(2)
    with pytest.raises(LoraFactorError, match="has no lora_B factor"):
        AdapterSpec.of([TensorSpec("m.lora_A.weight", (4, 4), F32)]).with_lora_rank(2)
    unchained = AdapterSpec.of(
        [TensorSpec("m.lora_A.weight", (4, 16), F32), TensorSpec("m.lora_B.weight", (16, 5), F32)]
    )
    with pytest.raises(LoraFactorError, match="do not chain"):
        unchained.with_lora_rank(2)


def test_the_naming_rule_moved_to_fedseal_and_is_re_exported() -> None:
    assert enclave_lora.pair_lora_names is pair_lora_names
    assert enclave_lora.LoraFactorError is LoraFactorError
    pairs, others = pair_lora_names(OUTPUT_SHAPES)
    assert [p.module for p in pairs] == ["layers.0.q_proj", "layers.0.v_proj"] and others == (NORM,)


# ----------------------------------------------------------------------------- round config


def test_client_ranks_in_the_round_config() -> None:
    config = lora_config()
    allowed = config.update_specs
    assert list(allowed.values()) == [SPEC, SPEC.with_lora_rank(4), SPEC.with_lora_rank(16)]
    assert list(allowed) == [s.digest() for s in allowed.values()]
    assert config.allowed_lora_ranks == (4, 8, 16)
    assert config.update_spec(SPEC.with_lora_rank(16).digest()) == SPEC.with_lora_rank(16)
    assert config.update_spec(SPEC.with_lora_rank(6).digest()) is None
    assert config.spec_for_lora_rank(8) == SPEC and config.spec_for_lora_rank(6) is None
    # Recorded in the config's JSON, so clients and auditors derive the same digests.
    obj = config.to_json_obj()
    assert obj["strategy_params"] == {"client_ranks": [4, 8, 16]}
    again = RoundConfig.from_json_obj(obj)
    assert again == config and again.digest() == config.digest() and list(again.update_specs) == list(allowed)
    # Without client_ranks: only the round spec, and the JSON is what it always was.
    plain = lora_config(strategy_params=None)
    assert list(plain.update_specs) == [SPEC.digest()] and "strategy_params" not in plain.to_json_obj()
    assert plain.spec_for_lora_rank(8) == SPEC and plain.spec_for_lora_rank(4) is None


@pytest.mark.parametrize(
    ("ranks", "match"),
    [
        ([8, 4], "ascending without repeats"),
        ([4, 4], "ascending without repeats"),
        ([0, 4], r"each in \[1, 4096\]"),
        ([4, MAX_LORA_RANK + 1], r"each in \[1, 4096\]"),
        (list(range(1, MAX_CLIENT_RANKS + 2)), f"at most {MAX_CLIENT_RANKS}"),
        ([True], "list of integers"),
        ([4.0], "list of integers"),
        ([], "non-empty list"),
        (4, "non-empty list"),
    ],
)
def test_bad_client_ranks_are_refused(ranks: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_strategy_params(LoraExactParams.strategies[0], {"client_ranks": ranks})


def test_client_ranks_belong_to_lora_exact_and_to_a_lora_spec() -> None:
    with pytest.raises(ConfigError, match="unknown strategy_params field"):
        parse_strategy_params(FedAvgParams.strategies[0], {"client_ranks": [4]})
    with pytest.raises(ConfigError, match="unknown strategy_params field"):
        parse_strategy_params(LoraExactParams.strategies[0], {"client_rank": [4]})
    with pytest.raises(ConfigError, match=r"client_ranks.*no LoRA factor pair"):
        lora_config(adapter_spec=AdapterSpec.of([TensorSpec("w", (4, 4), F32)]))


# ----------------------------------------------------------------------------- spool and strategy


def test_the_spool_lays_out_each_update_by_its_own_spec(tmp_path: Path) -> None:
    variants = [SPEC.with_lora_rank(4), SPEC.with_lora_rank(16)]
    spool = UpdateSpool(SPEC, directory=tmp_path, piece_elements=48, variants=variants)
    ups = [adapter(4, 1), adapter(16, 2), adapter(8, 3)]
    assert [spool.add(ups[0], spec=variants[0]), spool.add(ups[1], spec=variants[1]), spool.add(ups[2])] == [
        0,
        1,
        2,
    ]
    assert [spool.spec_of(i) for i in range(3)] == [variants[0], variants[1], SPEC]
    assert spool.spooled_bytes == sum(
        4 * s.num_parameters + 16 * len(_pieces(s, 48)) for s in [*variants, SPEC]
    )
    reader = spool.reader()
    for slot, update in enumerate(ups):
        got = dict(reader.iter_update(slot))
        assert got.keys() == update.keys()
        for name, value in update.items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=0)
        # A tensor shared by every spec reads by the spool spec's pieces, at this update's offsets.
        for piece in spool.pieces_of(NORM):
            out = torch.empty(piece.numel)
            reader.read_piece(slot, piece, out)
            torch.testing.assert_close(out, update[NORM][piece.start : piece.stop], rtol=0, atol=0)
    # A LoRA factor of another rank does not: it must be read whole.
    with pytest.raises(SpoolError, match="another shape"):
        reader.read_piece(1, spool.pieces_of("layers.0.q_proj.lora_A.weight")[0], torch.empty(48))
    with pytest.raises(SpoolError, match="neither the spool's spec nor one of its variants"):
        spool.add(adapter(6, 4), spec=SPEC.with_lora_rank(6))
    with pytest.raises(SpoolError, match="not the spec's"):
        spool.add({k: v.reshape(-1) for k, v in adapter(4, 5).items()}, spec=variants[0])
    spool.erase()


def _pieces(spec: AdapterSpec, size: int) -> list[int]:
    return [start for t in spec.tensors for start in range(0, t.numel, size)]


def test_the_strategy_aggregates_mixed_ranks_exactly(tmp_path: Path) -> None:
    config = lora_config()
    ranks, examples = [4, 16, 8, 4], [10, 20, 30, 40]
    updates = [adapter(r, 10 + i) for i, r in enumerate(ranks)]
    strategy = make_strategy("lora-exact", SPEC, config.params, spool_dir=tmp_path, piece_elements=40)
    assert isinstance(strategy, LoraExact)
    for update, n in zip(updates, examples, strict=True):
        strategy.accumulate(update, n)
    # Defence in depth: shapes of no allowed spec are refused even if the caller let them through.
    with pytest.raises(AggregationError, match="match neither"):
        strategy.accumulate(adapter(6, 99), 5)
    out = strategy.finalize()
    assert {k: tuple(v.shape) for k, v in out.items()} == OUTPUT_SHAPES
    expected = dense_optimum(updates, [float(n) for n in examples], 8)
    for (a_name, b_name), report in zip(MODULES, strategy.report, strict=True):
        truncated, _, residual = expected[a_name]
        got = out[b_name].double() @ out[a_name].double()
        assert float(torch.linalg.norm(got - truncated) / torch.linalg.norm(truncated)) < 1e-5
        assert report.rank == 8 and report.stacked_rank == sum(ranks)
        assert report.residual == pytest.approx(residual, rel=1e-4)
    norm = sum(n * u[NORM] for n, u in zip(examples, updates, strict=True)) / sum(examples)
    torch.testing.assert_close(out[NORM], norm, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- over gRPC


@dataclass
class MixedRound:
    log: Path
    log_key: Ed25519PrivateKey
    updates: list[dict[str, torch.Tensor]]
    examples: list[int]
    aggregate: dict[str, torch.Tensor]
    report: tuple[enclave_lora.ModuleResidual, ...]
    sdk_refusal: str
    forced: list[UpdateRejectedError] = field(default_factory=list)
    entries_before_sdk_refusal: int = 0
    entries_after_sdk_refusal: int = 0
    fedavg_sdk_refusal: str = ""
    fedavg_forced: UpdateRejectedError | None = None


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> MixedRound:
    tmp = tmp_path_factory.mktemp("mixed")
    policy = load_builtin_policy(DEV)
    spool = tmp / "spool"
    spool.mkdir()
    running = start_aggregator(
        log_path=tmp / "audit.log",
        log_origin=ORIGIN,
        collectors=[simulated_collector()],
        access=access_config(),
        spool_dir=spool,
    )
    try:
        running.rounds.open_round(lora_config(1))
        ranks, examples = [4, 8, 16], [10, 20, 30]
        updates = [adapter(r, 100 + i) for i, r in enumerate(ranks)]
        with site_client(running.endpoint, policy, "site-3", timeout=20) as client:
            # An unlisted rank: the SDK refuses before anything is sealed or sent.
            before = len(log_entries(running.log.path))
            with pytest.raises(AdapterMismatchError) as refused:
                client.submit_update(adapter(6, 7), round_id=1, num_examples=5)
            after = len(log_entries(running.log.path))
            # Forced past the SDK: the enclave refuses the spec its header names; for an allowed
            # digest it bounds the size by, and validates against, that spec (rank 4 here).
            forced = []
            four = SPEC.with_lora_rank(4).digest()
            for digest, payload_rank in ((SPEC.with_lora_rank(6).digest(), 6), (four, 2), (four, 16)):
                payload = _safetensors(adapter(payload_rank, 8))
                submission = client.seal_payload(
                    payload, round_id=1, num_examples=5, adapter_spec_digest=digest, chunk_size=4096
                )
                with pytest.raises(UpdateRejectedError) as rejected:
                    client.send(submission)
                forced.append(rejected.value)
        for i, (update, n) in enumerate(zip(updates, examples, strict=True)):
            with site_client(running.endpoint, policy, f"site-{i}", timeout=20) as client:
                receipt = client.submit_update(update, round_id=1, num_examples=n)
                expected = SPEC.with_lora_rank(ranks[i]).digest()
                assert receipt.entry.fields["adapter_spec_digest"] == base64.b64encode(expected).decode()
        with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
            aggregate = client.fetch_aggregate(1, wait_seconds=20).tensors()
        strategy = running.rounds._book.rounds[1].aggregator.strategy
        assert isinstance(strategy, LoraExact)
        result = MixedRound(
            tmp / "audit.log",
            running.keys.log_private_key,
            updates,
            examples,
            aggregate,
            strategy.report,
            str(refused.value),
            forced,
            before,
            after,
        )
        # A FedAvg round (no client_ranks possible) still refuses another rank.
        running.rounds.open_round(round_config(2, adapter_spec=SPEC, min_clients=1, max_clients=1))
        with site_client(running.endpoint, policy, "site-4", timeout=20) as client:
            with pytest.raises(AdapterMismatchError) as fedavg_refused:
                client.submit_update(adapter(4, 9), round_id=2, num_examples=5)
            result.fedavg_sdk_refusal = str(fedavg_refused.value)
            submission = client.seal_payload(
                _safetensors(adapter(4, 9)),
                round_id=2,
                num_examples=5,
                adapter_spec_digest=SPEC.with_lora_rank(4).digest(),
                chunk_size=4096,
            )
            with pytest.raises(UpdateRejectedError) as fedavg_forced:
                client.send(submission)
            result.fedavg_forced = fedavg_forced.value
            client.submit_update(adapter(8, 9), round_id=2, num_examples=5)
            client.fetch_aggregate(2, wait_seconds=20)
        return result
    finally:
        running.stop(grace=0.5)


def _safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    return bytes(safetensors.torch.save(tensors))


def test_a_mixed_rank_round_releases_the_optimal_rank_r_aggregate(mixed: MixedRound) -> None:
    assert {k: tuple(v.shape) for k, v in mixed.aggregate.items()} == OUTPUT_SHAPES
    weights = [float(n) for n in mixed.examples]
    expected = dense_optimum(mixed.updates, weights, 8)
    for (a_name, b_name), report in zip(MODULES, mixed.report, strict=True):
        truncated, singular, residual = expected[a_name]
        got = mixed.aggregate[b_name].double() @ mixed.aggregate[a_name].double()
        assert float(torch.linalg.norm(got - truncated) / torch.linalg.norm(truncated)) < 1e-5
        # B' carries the singular values; A' keeps orthonormal rows.
        a = mixed.aggregate[a_name].double()
        torch.testing.assert_close(a @ a.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-5)
        torch.testing.assert_close(
            torch.linalg.norm(mixed.aggregate[b_name].double(), dim=0), singular[:8], rtol=1e-5, atol=1e-6
        )
        assert (report.rank, report.stacked_rank) == (8, 4 + 8 + 16)
        assert report.residual == pytest.approx(residual, rel=1e-4) and report.residual > 0.1
    norm = sum(n * u[NORM] for n, u in zip(mixed.examples, mixed.updates, strict=True)) / sum(mixed.examples)
    torch.testing.assert_close(mixed.aggregate[NORM], norm, rtol=1e-6, atol=1e-6)


def test_an_unlisted_rank_is_refused_by_the_sdk_and_by_the_enclave(mixed: MixedRound) -> None:
    assert "adapter has LoRA rank(s) [6]" in mixed.sdk_refusal
    assert "accepts LoRA ranks [4, 8, 16]" in mixed.sdk_refusal and "nothing was sent" in mixed.sdk_refusal
    assert mixed.entries_after_sdk_refusal == mixed.entries_before_sdk_refusal  # no entry: nothing sent
    unlisted, smaller, larger = mixed.forced
    assert unlisted.reason is RejectReason.SPEC_MISMATCH
    assert "LoRA ranks [4, 8, 16]" in unlisted.detail
    assert smaller.reason is RejectReason.SPEC_MISMATCH
    assert "shape (2, 64), the spec says (4, 64)" in smaller.detail
    # Larger than the named spec allows: refused from the header, before any decryption.
    assert larger.reason is RejectReason.OVERSIZE and "exceeds the round's limit" in larger.detail
    entries = log_entries(mixed.log)
    refusals = [e for e in entries if e.kind is EntryKind.UPDATE_REJECTED and e.fields["round_id"] == 1]
    assert [(e.fields["client_id"], e.fields["reason"]) for e in refusals] == [
        ("site-3", "spec_mismatch"),
        ("site-3", "spec_mismatch"),
        ("site-3", "oversize"),
    ]
    (closed,) = [e for e in entries if e.kind is EntryKind.ROUND_CLOSED and e.fields["round_id"] == 1]
    assert closed.fields["participants"] == ["site-0", "site-1", "site-2"]
    assert closed.fields["strategy_params"] == {"client_ranks": [4, 8, 16]}


def test_a_fedavg_round_still_refuses_another_rank(mixed: MixedRound) -> None:
    assert "has shape (4, 64), the round's spec says (8, 64)" in mixed.fedavg_sdk_refusal
    assert mixed.fedavg_forced is not None and mixed.fedavg_forced.reason is RejectReason.SPEC_MISMATCH
    assert "LoRA ranks" not in mixed.fedavg_forced.detail  # no other rank to offer
    kinds = [(e.kind, e.fields.get("round_id")) for e in log_entries(mixed.log)]
    assert (EntryKind.ROUND_CLOSED, 2) in kinds


def test_the_audit_verifies_and_shows_each_update_rank(
    mixed: MixedRound, capsys: pytest.CaptureFixture[str]
) -> None:
    report = audit_log(mixed.log, load_builtin_policy(DEV))
    assert report.findings == ()
    first = report.rounds[0]
    assert [(a["client_id"], a["lora_ranks"]) for a in first.accepted] == [
        ("site-0", [4]),
        ("site-1", [8]),
        ("site-2", [16]),
    ]
    assert audit_main(["verify", str(mixed.log), "--builtin-policy", DEV]) == 0
    out = capsys.readouterr().out
    assert "lora_ranks=[16]" in out and "client_ranks=[4, 8, 16]" in out
    # The residual report is published in the log and shown by the auditor.
    assert first.lora_residuals is not None
    published = [(m["module"], m["rank"], m["stacked_rank"], m["residual"]) for m in first.lora_residuals]
    assert published == [(r.module, r.rank, r.stacked_rank, r.residual) for r in mixed.report]
    worst = max(r.residual for r in mixed.report)
    assert f"largest residual {worst:.3g}" in out


@pytest.mark.parametrize(
    ("residuals", "kind", "why"),
    [
        (None, FindingKind.INCONSISTENT_ROUND, "records no valid lora_residuals"),
        ([], FindingKind.INCONSISTENT_ROUND, "records no valid lora_residuals"),
        # Out of [0, 1]: the entry does not even decode under the log schema.
        (
            [{"module": "m", "rank": 8, "stacked_rank": 28, "residual": 1.5}],
            FindingKind.MALFORMED_ENTRY,
            "'lora_residuals' item 0 field 'residual' must be in [0.0, 1.0]",
        ),
        (
            [{"module": "m", "rank": 30, "stacked_rank": 28, "residual": 0.1}],
            FindingKind.INCONSISTENT_ROUND,
            "records no valid",
        ),
    ],
)
def test_the_audit_refuses_a_lora_exact_close_without_a_sound_residual_report(
    mixed: MixedRound, tmp_path: Path, residuals: object, kind: FindingKind, why: str
) -> None:
    closed = next(
        e for e in log_entries(mixed.log) if e.kind is EntryKind.ROUND_CLOSED and e.fields["round_id"] == 1
    )
    fields = {k: v for k, v in closed.fields.items() if k != "lora_residuals"}
    if residuals is not None:
        fields["lora_residuals"] = residuals
    edited = resigned_log(mixed.log, tmp_path / "edited.log", ORIGIN, mixed.log_key, closed.index, fields)
    findings = audit_log(edited, load_builtin_policy(DEV)).findings
    assert [(f.kind, f.index) for f in findings][:1] == [(kind, closed.index)]
    assert why in findings[0].message
    if kind is FindingKind.INCONSISTENT_ROUND:
        assert len(findings) == 1


def test_the_audit_names_an_accepted_update_of_an_unlisted_rank(mixed: MixedRound, tmp_path: Path) -> None:
    """A subverted enclave that accepted a rank-6 update, signed by its site and under valid
    checkpoints: only the comparison with the round's allowed specs catches it."""
    target = next(
        e
        for e in log_entries(mixed.log)
        if e.kind is EntryKind.UPDATE_ACCEPTED and e.fields["client_id"] == "site-2"
    )
    digest = SPEC.with_lora_rank(6).digest()
    f = {**target.fields, "adapter_spec_digest": base64.b64encode(digest).decode()}
    message = update_signature_message(
        protocol_version=int(f["protocol_version"]),
        round_id=int(f["round_id"]),
        base_round_id=int(f["base_round_id"]),
        client_id=str(f["client_id"]),
        key_id=str(f["key_id"]),
        adapter_spec_digest=digest,
        num_examples=int(f["num_examples"]),
        suite_wire_id=int(f["hpke_suite"]),
        idempotency_key_digest=base64.b64decode(f["idempotency_key_digest"]),
        challenge=base64.b64decode(f["challenge"]),
        chunk_size=int(f["chunk_size"]),
        ciphertext_size=int(f["ciphertext_size"]),
        ciphertext_digest=base64.b64decode(f["ciphertext_digest"]),
    )
    f["signature"] = base64.b64encode(site_identity("site-2").signing_key.sign(message)).decode()
    edited = resigned_log(mixed.log, tmp_path / "edited.log", ORIGIN, mixed.log_key, target.index, f)
    report = audit_log(edited, load_builtin_policy(DEV))
    assert [(x.kind, x.index) for x in report.findings] == [(FindingKind.INCONSISTENT_ROUND, target.index)]
    assert (
        "neither round 1's nor one of its client ranks' (LoRA ranks [4, 8, 16])" in report.findings[0].message
    )
    assert report.rounds[0].accepted[2]["lora_ranks"] == []

"""Async (staleness-weighted) updates on the wire: the base round each update names, signed and
bound into its envelope; the staleness the enclave derives from it; and the auditor's check.

The job: four async FedAvg rounds (alpha 0.5, max_staleness 2) over real gRPC (attested TLS)
where sites train from older globals. Every aggregate must equal the alpha**staleness-weighted
mean computed here from the seeds, the example counts and the bases alone; a too-stale update
and one from a global that does not exist are refused by name (by the client before it
sends, and by the enclave when sent anyway) while the rounds complete on the others; a base
rewritten on the way (after signing, by a TLS-terminating gRPC proxy, or re-signed) is
refused; and the auditor recomputes the log's staleness and names an edited one.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
import torch
from conftest import (
    ADAPTER_SHAPES,
    access_config,
    make_adapter,
    round_config,
    simulated_collector,
    site_client,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from identities import site_identity
from logfiles import log_entries, resigned_log
from relay import self_signed_certificate

from aggregator import RunningAggregator, start_aggregator
from attestation import Policy, load_builtin_policy
from auditor import FindingKind, audit_log
from auditor._cli import main as audit_main
from client_sdk import (
    ChannelSecurity,
    FedSealClient,
    Receipt,
    SealedSubmission,
    StaleBaseError,
    UpdateRejectedError,
)
from client_sdk._client import _serialize, _verified_round_key
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.canonical import b64encode
from fedseal.envelope import DEFAULT_SUITE
from fedseal.errors import FormatError, SignatureError
from fedseal.logformat import (
    EntryKind,
    LogEntry,
    RejectReason,
    released_round,
)
from fedseal.roundconfig import FedAvgParams, StalenessParams
from fedseal.tls import pinned_channel, probe_server_certificate
from fedseal.wire import (
    CALL_AUTH_METADATA_KEY,
    PROTOCOL_VERSION,
    UpdateHeader,
    header_from_proto,
    header_to_proto,
    update_staleness,
)

T = TypeVar("T")
DEV = "dev-insecure-allow-simulated"
ORIGIN = "fedseal.test/async"
ALPHA = 0.5
MAX_STALENESS = 2
ASYNC = FedAvgParams(staleness=StalenessParams(alpha=ALPHA, max_staleness=MAX_STALENESS))

# Per round, what each honest site sends: (site, adapter seed, num_examples, base round).
# Every round releases its aggregate, so a base b in round r is r - 1 - b releases old.
JOB: dict[int, list[tuple[str, int, int, int]]] = {
    1: [("site-0", 0, 10, 0), ("site-1", 1, 20, 0), ("site-2", 2, 30, 0)],
    2: [("site-0", 3, 10, 1), ("site-1", 4, 20, 0), ("site-2", 5, 30, 1)],
    3: [("site-2", 8, 30, 0), ("site-0", 6, 10, 2), ("site-1", 7, 20, 1)],
    4: [("site-0", 9, 10, 3), ("site-1", 10, 20, 2), ("site-2", 11, 30, 1)],
}


# ----------------------------------------------------------------------------- the rule


def test_staleness_counts_releases_after_the_base_in_release_order() -> None:
    # Round 2 awaited approval while round 3 closed, then was released: the globals in
    # release order are 0 (the initial adapter), 1, 3, 2; round 4 failed and released nothing.
    released = [1, 3, 2]
    assert [update_staleness(b, 5, released, 3) for b in (2, 3, 1, 0)] == [0, 1, 2, 3]
    with pytest.raises(StaleBaseError) as failed:
        update_staleness(4, 5, released, 3)
    assert failed.value.reason is RejectReason.UNKNOWN_BASE and "names no released" in failed.value.detail
    for future in (5, 6):
        with pytest.raises(StaleBaseError, match="not before round 5") as info:
            update_staleness(future, 5, released, 3)
        assert info.value.reason is RejectReason.UNKNOWN_BASE
    with pytest.raises(StaleBaseError, match=r"3 release\(s\) ago") as old:
        update_staleness(0, 5, released, 2)
    assert old.value.reason is RejectReason.STALE_UPDATE
    # Nothing released yet: the initial adapter is the current global, in any round.
    assert update_staleness(0, 1, [], None) == 0
    assert update_staleness(0, 7, [], 0) == 0


def test_a_synchronous_round_accepts_only_the_current_global() -> None:
    assert update_staleness(2, 5, [1, 3, 2], None) == 0
    for base in (0, 1, 3):
        with pytest.raises(StaleBaseError, match="round 2's aggregate is the current global") as info:
            update_staleness(base, 5, [1, 3, 2], None)
        assert info.value.reason is RejectReason.STALE_UPDATE


def test_the_latest_releases_decide_as_the_whole_history_does() -> None:
    """What a RoundInfo carries (the last max_staleness + 1 releases) gives the client the
    enclave's answer for every base; a base it cannot see is refused either way."""
    history = list(range(1, 11))  # ten rounds, all released; round 11 is open
    for limit in (None, 0, 1, 3):
        window = history[-(1 + (limit or 0)) :]
        for base in range(0, 13):
            expected = _outcome(base, history, limit, complete=True)
            got = _outcome(base, window, limit, complete=False)
            # Older than the window, or never released: the client cannot tell; both refused.
            assert got == expected or (got, expected) == (
                RejectReason.STALE_UPDATE,
                RejectReason.UNKNOWN_BASE,
            )
    # A list shorter than max_staleness + 1 is the whole history.
    assert update_staleness(0, 3, [1, 2], 3, complete=False) == 2


def _outcome(base: int, released: list[int], limit: int | None, *, complete: bool) -> int | RejectReason:
    try:
        return update_staleness(base, 11, released, limit, complete=complete)
    except StaleBaseError as exc:
        return exc.reason


def test_the_base_is_signed_bound_round_tripped_and_range_checked() -> None:
    identity = site_identity("site-0")
    public = identity.signing_key.public_key().public_bytes_raw()
    header = UpdateHeader(
        protocol_version=PROTOCOL_VERSION,
        round_id=5,
        client_id="site-0",
        adapter_spec_digest=bytes(32),
        num_examples=10,
        suite=DEFAULT_SUITE,
        wrapped_key=bytes(80),
        idempotency_key=bytes(16),
        challenge=bytes(32),
        chunk_size=4096,
        ciphertext_size=100,
        key_id=identity.key_id,
        ciphertext_digest=bytes(32),
        base_round_id=3,
    ).sign(identity.signing_key)
    header.verify_signature(public)
    assert header_from_proto(header_to_proto(header)) == header
    moved = dataclasses.replace(header, base_round_id=4)
    with pytest.raises(SignatureError):
        moved.verify_signature(public)
    binding = bytes(range(32))
    round_key = bytes(range(32, 64))
    assert moved.seal_context(binding, round_key).aad() != header.seal_context(binding, round_key).aad()
    for bad in (-1, 2**64, True):
        with pytest.raises(FormatError, match="base_round_id"):
            dataclasses.replace(header, base_round_id=bad)


def test_released_round_names_the_entries_that_make_a_global() -> None:
    def entry(kind: EntryKind, **fields: object) -> LogEntry:
        base = {"round_id": 4, "aggregate_digest": b64encode(bytes(32))}
        if kind is EntryKind.ROUND_CLOSED:
            base |= {"strategy": "fedavg", "participants": [], "total_examples": 1, "aggregate_size": 1}
        if kind is EntryKind.AGGREGATE_RELEASED:
            base |= {"approvals": []}
        return LogEntry.of(0, "2026-01-01T00:00:00.000Z", kind, base | fields)

    assert released_round(entry(EntryKind.ROUND_CLOSED)) == 4
    assert released_round(entry(EntryKind.ROUND_CLOSED, approval_required=True)) is None
    assert released_round(entry(EntryKind.AGGREGATE_RELEASED)) == 4
    failed = LogEntry.of(
        0, "2026-01-01T00:00:00.000Z", EntryKind.ROUND_FAILED, {"round_id": 4, "reason": "", "accepted": 0}
    )
    assert released_round(failed) is None


# ----------------------------------------------------------------------------- the async job


class RewritingProxy(pb_grpc.AggregatorServicer):
    """A TLS-terminating gRPC proxy in front of the enclave (a load balancer, for clients using
    ChannelSecurity.TERMINATED_TLS): it forwards calls with their call tokens and, when
    `rewrite` is set, changes an update header's base_round_id on the way."""

    def __init__(self, upstream: str, directory: Path) -> None:
        cert, key, self.ca_pem = self_signed_certificate(directory)
        self.rewrite: int | None = None
        self._channel = pinned_channel(upstream, probe_server_certificate(upstream))
        self._stub = pb_grpc.AggregatorStub(self._channel)  # type: ignore[no-untyped-call]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_AggregatorServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        self.endpoint = f"127.0.0.1:{self._server.add_secure_port('127.0.0.1:0', credentials)}"
        self._server.start()

    def close(self) -> None:
        self._server.stop(0.5)
        self._channel.close()

    def GetAttestation(
        self, request: pb.AttestationRequest, context: grpc.ServicerContext
    ) -> pb.AttestationResponse:
        reply: pb.AttestationResponse = _forward(context, lambda: self._stub.GetAttestation(request))
        return reply

    def GetRound(self, request: pb.GetRoundRequest, context: grpc.ServicerContext) -> pb.RoundInfo:
        reply: pb.RoundInfo = _forward(
            context, lambda: self._stub.GetRound(request, metadata=_call_token(context))
        )
        return reply

    def SubmitUpdate(
        self, request_iterator: Iterator[pb.SubmitUpdateRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SubmitUpdateResponse]:
        def rewritten() -> Iterator[pb.SubmitUpdateRequest]:
            for message in request_iterator:
                if message.WhichOneof("part") == "header" and self.rewrite is not None:
                    message.header.base_round_id = self.rewrite
                yield message

        # Both directions relayed as they come (send_chunks, then the receipt).
        upstream = self._stub.SubmitUpdate(rewritten(), metadata=_call_token(context))
        while True:
            reply: pb.SubmitUpdateResponse | None = _forward(context, lambda: next(upstream, None))
            if reply is None:
                return
            yield reply


def _forward(context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    """The upstream's answer, or its refusal with its status, details and trailing reason."""
    try:
        return call()
    except grpc.RpcError as exc:
        if not isinstance(exc, grpc.Call):
            raise
        context.set_trailing_metadata(exc.trailing_metadata() or ())
        context.abort(exc.code(), exc.details() or "")


def _call_token(context: grpc.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((k, v) for k, v in context.invocation_metadata() if k == CALL_AUTH_METADATA_KEY)


def _seal_unchecked(
    client: FedSealClient,
    adapter: dict[str, torch.Tensor],
    *,
    round_id: int,
    base_round_id: int,
    num_examples: int,
) -> SealedSubmission:
    """Seal as the SDK does, minus its own staleness check: what the enclave alone decides."""
    attested = client.attest()
    info = client._connection.get_round(round_id)
    spec = info.config.adapter_spec
    return client._seal(
        _serialize(adapter, spec),
        attested,
        _verified_round_key(attested, info, round_id),
        round_id=round_id,
        base_round_id=base_round_id,
        client_id=None,
        num_examples=num_examples,
        adapter_spec_digest=spec.digest(),
        idempotency_key=None,
        chunk_size=4096,
        suite=DEFAULT_SUITE,
    )


def _weighted_mean(parts: list[tuple[int, float]]) -> dict[str, torch.Tensor]:
    """sum(w * adapter(seed)) / sum(w), in float64."""
    total = sum(w for _, w in parts)
    out = {name: torch.zeros(shape, dtype=torch.float64) for name, shape in ADAPTER_SHAPES.items()}
    for seed, weight in parts:
        for name, value in make_adapter(seed).items():
            out[name] += value.to(torch.float64) * weight
    return {name: value / total for name, value in out.items()}


@dataclass
class AsyncJob:
    log: Path
    log_key: Ed25519PrivateKey
    aggregates: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    aggregate_rounds: dict[int, int] = field(default_factory=dict)
    receipts: dict[tuple[int, str], Receipt] = field(default_factory=dict)
    refusals: list[tuple[str, RejectReason]] = field(default_factory=list)
    client_refusals: list[tuple[str, RejectReason]] = field(default_factory=list)
    released_seen: tuple[int, ...] = ()
    entries_before_client_refusals: int = 0
    entries_after_client_refusals: int = 0


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> AsyncJob:
    tmp = tmp_path_factory.mktemp("async")
    policy = load_builtin_policy(DEV)
    running = start_aggregator(
        log_path=tmp / "audit.log",
        log_origin=ORIGIN,
        collectors=[simulated_collector()],
        access=access_config(),
    )
    result = AsyncJob(tmp / "audit.log", running.keys.log_private_key)
    proxy = RewritingProxy(running.endpoint, tmp)
    try:
        with contextlib.ExitStack() as stack:
            sites = {
                name: stack.enter_context(site_client(running.endpoint, policy, name, timeout=20))
                for name in ("site-0", "site-1", "site-2", "site-3")
            }
            for rid, plan in JOB.items():
                running.rounds.open_round(round_config(rid, strategy_params=ASYNC))
                if rid == 3:
                    _tamper_with_the_base(result, running, proxy, sites, policy)
                if rid == 4:
                    _refuse_bad_bases(result, running, sites["site-3"])
                for site, seed, n, base in plan:
                    if rid == 3 and site == "site-2":
                        # Through the proxy, untouched: accepted (the tampering above was refused).
                        options = {
                            "security": ChannelSecurity.TERMINATED_TLS,
                            "root_certificates": proxy.ca_pem,
                        }
                        with site_client(proxy.endpoint, policy, site, timeout=20, **options) as via_proxy:
                            receipt = via_proxy.submit_update(
                                make_adapter(seed), round_id=rid, num_examples=n, base_round_id=base
                            )
                    else:
                        receipt = sites[site].submit_update(
                            make_adapter(seed), round_id=rid, num_examples=n, base_round_id=base
                        )
                    result.receipts[(rid, site)] = receipt
                aggregate = sites["site-0"].fetch_aggregate(rid, wait_seconds=10)
                result.aggregates[rid] = aggregate.tensors()
                result.aggregate_rounds[rid] = aggregate.round_id
    finally:
        proxy.close()
        running.stop(grace=0.5)
    return result


def _tamper_with_the_base(
    result: AsyncJob,
    running: RunningAggregator,
    proxy: RewritingProxy,
    sites: dict[str, FedSealClient],
    policy: Policy,
) -> None:
    """Round 3: site-2 trained from the initial adapter (2 releases old, weight alpha**2).
    Claiming round 2's aggregate instead (staleness 0) would quadruple its weight."""
    client = sites["site-2"]
    sealed = client.seal_update(make_adapter(8), round_id=3, num_examples=30, base_round_id=0)
    # Changed after signing, on this side of the channel.
    moved = dataclasses.replace(sealed.header, base_round_id=2)
    with pytest.raises(UpdateRejectedError) as after_signing:
        client._connection.submit(moved, sealed.chunks, timeout=10)
    result.refusals.append(("changed after signing", after_signing.value.reason))
    # Changed by a TLS-terminating proxy on the way.
    proxy.rewrite = 2
    options = {"security": ChannelSecurity.TERMINATED_TLS, "root_certificates": proxy.ca_pem}
    with (
        site_client(proxy.endpoint, policy, "site-2", timeout=20, **options) as via_proxy,
        pytest.raises(UpdateRejectedError) as by_proxy,
    ):
        via_proxy.submit_update(make_adapter(8), round_id=3, num_examples=30, base_round_id=0)
    proxy.rewrite = None
    result.refusals.append(("changed by a proxy", by_proxy.value.reason))
    # Re-signed by the site's own key: the envelope was sealed for base 0 and does not open.
    resigned = moved.sign(site_identity("site-2").signing_key)
    with pytest.raises(UpdateRejectedError) as re_signed:
        client._connection.submit(resigned, sealed.chunks, timeout=10)
    result.refusals.append(("re-signed", re_signed.value.reason))
    assert running.rounds.snapshot(3).accepted == 0


def _refuse_bad_bases(result: AsyncJob, running: RunningAggregator, client: FedSealClient) -> None:
    """Round 4, after rounds 1-3 released: the initial adapter is 3 releases old (max 2), and
    round 4's own aggregate does not exist yet. The client refuses both before sending; sent
    anyway, the enclave refuses them by name."""
    result.released_seen = client.round_info(4).released_round_ids
    result.entries_before_client_refusals = running.log.size
    for label, base in (("initial adapter", 0), ("own round", 4), ("future round", 9)):
        with pytest.raises(StaleBaseError, match="nothing was sent") as early:
            client.submit_update(make_adapter(12), round_id=4, num_examples=40, base_round_id=base)
        result.client_refusals.append((label, early.value.reason))
    result.entries_after_client_refusals = running.log.size
    for label, base in (("initial adapter", 0), ("own round", 4)):
        sealed = _seal_unchecked(client, make_adapter(12), round_id=4, base_round_id=base, num_examples=40)
        with pytest.raises(UpdateRejectedError) as refused:
            client.send(sealed)
        result.refusals.append((label, refused.value.reason))


def _expected_aggregate(rid: int) -> dict[str, torch.Tensor]:
    return _weighted_mean([(seed, n * ALPHA ** (rid - 1 - base)) for _, seed, n, base in JOB[rid]])


def test_async_aggregates_are_the_staleness_weighted_means(job: AsyncJob) -> None:
    for rid in JOB:
        expected = _expected_aggregate(rid)
        for name, value in expected.items():
            torch.testing.assert_close(
                job.aggregates[rid][name].to(torch.float64), value, rtol=1e-5, atol=1e-6
            )
        assert job.aggregate_rounds[rid] == rid  # what a site names as its base next
    # The weighting is not a no-op: round 3's plain example-weighted mean is elsewhere.
    plain = _weighted_mean([(seed, n) for _, seed, n, _ in JOB[3]])
    assert any(not torch.allclose(job.aggregates[3][k].to(torch.float64), plain[k], atol=1e-3) for k in plain)


def test_each_receipt_records_the_signed_base_and_its_staleness(job: AsyncJob) -> None:
    for rid, plan in JOB.items():
        for site, _, _, base in plan:
            fields = job.receipts[(rid, site)].entry.fields
            assert (fields["base_round_id"], fields["staleness"]) == (base, rid - 1 - base)


def test_bad_bases_are_refused_by_name_and_the_rounds_go_on(job: AsyncJob) -> None:
    assert job.released_seen == (1, 2, 3)  # the last max_staleness + 1 releases
    assert job.client_refusals == [
        ("initial adapter", RejectReason.STALE_UPDATE),
        ("own round", RejectReason.UNKNOWN_BASE),
        ("future round", RejectReason.UNKNOWN_BASE),
    ]
    # Refused in the client: nothing reached the aggregator, so nothing was logged.
    assert job.entries_after_client_refusals == job.entries_before_client_refusals
    assert job.refusals == [
        ("changed after signing", RejectReason.BAD_SIGNATURE),
        ("changed by a proxy", RejectReason.BAD_SIGNATURE),
        ("re-signed", RejectReason.UNWRAP_FAILED),
        ("initial adapter", RejectReason.STALE_UPDATE),
        ("own round", RejectReason.UNKNOWN_BASE),
    ]
    entries = log_entries(job.log)
    rejected = [
        (e.fields["round_id"], e.fields["reason"]) for e in entries if e.kind is EntryKind.UPDATE_REJECTED
    ]
    assert rejected == [
        (3, "bad_signature"),
        (3, "bad_signature"),
        (3, "unwrap_failed"),
        (4, "stale_update"),
        (4, "unknown_base"),
    ]
    closed = [e.fields["round_id"] for e in entries if e.kind is EntryKind.ROUND_CLOSED]
    assert closed == [1, 2, 3, 4]


def test_the_audit_recomputes_every_staleness(job: AsyncJob, capsys: pytest.CaptureFixture[str]) -> None:
    report = audit_log(job.log, load_builtin_policy(DEV))
    assert report.findings == ()
    for summary in report.rounds:
        staleness = {a["client_id"]: a["staleness"] for a in summary.accepted}
        assert staleness == {site: summary.round_id - 1 - base for site, _, _, base in JOB[summary.round_id]}
    assert audit_main(["verify", str(job.log), "--builtin-policy", DEV]) == 0
    assert "base=round 0 staleness=2" in capsys.readouterr().out


def test_an_edited_staleness_is_a_named_finding_even_under_valid_checkpoints(
    job: AsyncJob, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The enclave's key re-signs every checkpoint over the edited entry (a buggy or
    subverted enclave): only the recomputation from the earlier entries catches it."""
    target = job.receipts[(3, "site-2")].entry  # base 0, two releases old
    edited = _rewrite(job, tmp_path / "edited.log", target.index, staleness=0)
    report = audit_log(edited, load_builtin_policy(DEV))
    assert [(f.kind, f.index) for f in report.findings] == [(FindingKind.WRONG_STALENESS, target.index)]
    assert "records staleness 0, but 2 aggregate(s) were released" in report.findings[0].message
    assert audit_main(["verify", str(edited), "--builtin-policy", DEV]) == 1
    assert "[wrong_staleness]" in capsys.readouterr().out

    # The base itself is the site's signed claim: moving it breaks the site's signature.
    moved = _rewrite(job, tmp_path / "moved.log", target.index, base_round_id=2)
    kinds = {(f.kind, f.index) for f in audit_log(moved, load_builtin_policy(DEV)).findings}
    assert (FindingKind.BAD_UPDATE_SIGNATURE, target.index) in kinds
    assert (FindingKind.WRONG_STALENESS, target.index) in kinds  # staleness 2 for base 2, too


def _rewrite(job: AsyncJob, out: Path, index: int, **changes: object) -> Path:
    entry = next(e for e in log_entries(job.log) if e.index == index)
    return resigned_log(job.log, out, ORIGIN, job.log_key, index, {**entry.fields, **changes})


# ----------------------------------------------------------------------------- synchronous rounds


def test_a_synchronous_round_refuses_a_stale_base(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    rounds = live_aggregator.rounds
    rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    with site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=20) as client:
        first = client.submit_update(make_adapter(0), round_id=1, num_examples=5)
        assert (first.entry.fields["base_round_id"], first.entry.fields["staleness"]) == (0, 0)
        assert client.fetch_aggregate(1, wait_seconds=10).round_id == 1
        rounds.open_round(round_config(2, min_clients=1, max_clients=1))
        info = client.round_info(2)
        assert (info.released_round_ids, info.global_round_id) == ((1,), 1)

        size = live_aggregator.log.size
        with pytest.raises(StaleBaseError, match="synchronous") as early:
            client.submit_update(make_adapter(1), round_id=2, num_examples=5, base_round_id=0)
        assert early.value.reason is RejectReason.STALE_UPDATE
        assert live_aggregator.log.size == size  # nothing was sent
        sealed = _seal_unchecked(client, make_adapter(1), round_id=2, base_round_id=0, num_examples=5)
        with pytest.raises(UpdateRejectedError, match="synchronous") as refused:
            client.send(sealed)
        assert refused.value.reason is RejectReason.STALE_UPDATE
        assert rounds.snapshot(2).accepted == 0

        # Without a base, the client names the current global: staleness 0.
        second = client.submit_update(make_adapter(1), round_id=2, num_examples=5)
        assert (second.entry.fields["base_round_id"], second.entry.fields["staleness"]) == (1, 0)
        expected = make_adapter(1)
        got = client.fetch_aggregate(2, wait_seconds=10).tensors()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value)
    assert audit_log(live_aggregator.log.path, dev_policy).findings == ()


def test_a_resumed_enclave_counts_the_releases_of_the_one_before(tmp_path: Path, dev_policy: Policy) -> None:
    """Staleness is defined over the whole log: a restarted enclave reads back the releases."""
    path = tmp_path / "audit.log"

    def start() -> RunningAggregator:
        return start_aggregator(
            log_path=path, log_origin=ORIGIN, collectors=[simulated_collector()], access=access_config()
        )

    first = start()
    try:
        first.rounds.open_round(round_config(1, min_clients=1, max_clients=1, strategy_params=ASYNC))
        with site_client(first.endpoint, dev_policy, "site-0", timeout=20) as client:
            client.submit_update(make_adapter(0), round_id=1, num_examples=5)
            client.fetch_aggregate(1, wait_seconds=10)
    finally:
        first.stop(grace=0.5)
    second = start()
    try:
        second.rounds.open_round(round_config(2, min_clients=2, max_clients=2, strategy_params=ASYNC))
        with site_client(second.endpoint, dev_policy, "site-0", timeout=20) as client:
            assert client.round_info(2).released_round_ids == (1,)
            stale = client.submit_update(make_adapter(1), round_id=2, num_examples=5, base_round_id=0)
            assert stale.entry.fields["staleness"] == 1
        with site_client(second.endpoint, dev_policy, "site-1", timeout=20) as client:
            fresh = client.submit_update(make_adapter(2), round_id=2, num_examples=5)
            assert (fresh.entry.fields["base_round_id"], fresh.entry.fields["staleness"]) == (1, 0)
            got = client.fetch_aggregate(2, wait_seconds=10).tensors()
    finally:
        second.stop(grace=0.5)
    expected = _weighted_mean([(1, 5 * ALPHA), (2, 5.0)])
    for name, value in expected.items():
        torch.testing.assert_close(got[name].to(torch.float64), value, rtol=1e-5, atol=1e-6)
    report = audit_log(path, dev_policy)
    assert report.findings == () and len(report.handovers) == 1

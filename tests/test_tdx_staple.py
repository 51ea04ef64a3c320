"""Intel TDX collateral stapled beside the quote: the bundle's per-item ``collateral``.

The real TDX quote and its real Intel PCS collateral (tests/vectors/cpu-tee/tdx/) stand in
for what a TDX host collects and what Intel PCS serves; the PCS stand-in is a
CollateralFetcher answering exactly PCS's bodies and headers. The quote's REPORTDATA is
fixed, so a bundle around it fails the report-data check and nothing else: that is what the
bundle-level tests assert (every collateral check passing), and verify_tdx_quote shows the
stapled quote verifying outright.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field

import pytest
from coco_agent import agent_tdx_document, fake_agent
from test_cpu_tee import OUTDATED, TDX, UP_TO_DATE, TdxSample, failing, tdx_policy

from attestation import (
    AttestationError,
    BundleFormatError,
    CollateralCache,
    CollateralRequest,
    CollateralUnavailableError,
    DuplicateEvidenceError,
    Evidence,
    EvidenceBundle,
    EvidenceFormatError,
    EvidenceKind,
    OfflineFetcher,
    Policy,
    StapledCollateralExpiredError,
    load_builtin_policy,
    verify_bundle,
)
from attestation._collateral_policy import CollateralPolicy, CollateralSource, collateral_fetcher
from attestation._hardware import CpuTee, GpuCollector, hardware_collectors
from attestation._stapled import (
    STAPLED_COLLATERAL_FORMAT,
    StapledFirstFetcher,
    decode_stapled,
    encode_stapled,
)
from attestation._templates import load_policy_template
from attestation.cpu import (
    CpuReportDataMismatchError,
    TdxCollateralError,
    TdxCollateralStapler,
    TdxTcbStatus,
    parse_tdx_quote,
    tdx_collateral_requests,
    tdx_collateral_staples,
    verify_tdx_quote,
)
from fedseal.binding import compute_binding

KEYS = (os.urandom(32), os.urandom(32))


@dataclass
class Pcs:
    """Intel PCS for one sample: its collateral as PCS serves it, or down."""

    sample: TdxSample
    down: bool = False
    requests: list[CollateralRequest] = field(default_factory=list)

    def fetch(self, request: CollateralRequest) -> bytes:
        self.requests.append(request)
        if self.down:
            raise CollateralUnavailableError(f"test PCS is down: {request.url}")
        return self.sample.fetcher().fetch(request)


@dataclass
class FixedQuote:
    """A TDX collector that can only give the sample's quote (its REPORTDATA is fixed)."""

    quote: bytes

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.INTEL_TDX

    def collect(self, binding: bytes) -> Evidence:
        return Evidence(EvidenceKind.INTEL_TDX, self.quote)


@dataclass
class Clock:
    now: datetime.datetime

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def pcs() -> Pcs:
    return Pcs(UP_TO_DATE)


@pytest.fixture
def clock() -> Clock:
    return Clock(UP_TO_DATE.now)


@pytest.fixture
def stapler(pcs: Pcs, clock: Clock) -> TdxCollateralStapler:
    return TdxCollateralStapler(FixedQuote(UP_TO_DATE.quote_bytes()), CollateralCache(pcs, clock=clock))


def bundle_of(*evidence: Evidence, challenge: bytes = bytes(32)) -> EvidenceBundle:
    return EvidenceBundle(
        hpke_public_key=KEYS[0],
        log_public_key=KEYS[1],
        challenge=challenge,
        binding=compute_binding(KEYS[0], KEYS[1], challenge),
        evidence=evidence,
    )


POLICY = Policy(name="tdx", required_evidence=(EvidenceKind.INTEL_TDX,), intel_tdx=tdx_policy(UP_TO_DATE))


def verify(evidence: Evidence, **kwargs: object) -> list[str]:
    """The names of the failing checks of a bundle around ``evidence`` (stapled-only unless a
    fetcher is given); the report data always fails (see the module docstring)."""
    options: dict[str, object] = {"now": UP_TO_DATE.now}
    options.update(kwargs)
    bundle = bundle_of(evidence)
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle.to_bytes(), POLICY, bytes(32), **options)  # type: ignore[arg-type]
    return failing(info.value)


ONLY_REPORT_DATA = ["evidence[0] intel-tdx report data"]


# --------------------------------------------------------------------------- offline


def test_stapled_collateral_verifies_the_real_quote_offline(stapler: TdxCollateralStapler, pcs: Pcs) -> None:
    evidence = stapler.collect(bytes(64))
    assert evidence.payload == UP_TO_DATE.quote_bytes()
    assert evidence.collateral is not None
    stapled = decode_stapled(evidence.collateral)
    quote = parse_tdx_quote(evidence.payload)
    assert set(stapled) == {r.staple_key() for r in tdx_collateral_requests(quote).all()}
    assert len(pcs.requests) == 7
    # The quote itself verifies from the staples alone, with no network behind them.
    verified = verify_tdx_quote(
        evidence.payload,
        expected_report_data=quote.report_data,
        policy=tdx_policy(UP_TO_DATE),
        now=UP_TO_DATE.now,
        fetcher=StapledFirstFetcher(stapled, OfflineFetcher()),
    )
    assert verified.tcb_status is TdxTcbStatus.UP_TO_DATE
    # In a bundle, stapled-only (the default): every check but the fixed report data passes.
    assert verify(evidence) == ONLY_REPORT_DATA
    # The same quote without its staples cannot be verified offline, by name.
    unstapled = verify(Evidence(EvidenceKind.INTEL_TDX, evidence.payload))
    assert "evidence[0] intel-tdx collateral" in unstapled
    # A second collection is served from the cache: PCS is not asked again.
    stapler.collect(bytes(64))
    assert len(pcs.requests) == 7


@pytest.mark.parametrize("item", range(7))
def test_a_missing_stapled_item_is_refused_by_name(stapler: TdxCollateralStapler, item: int) -> None:
    evidence = stapler.collect(bytes(64))
    assert evidence.collateral is not None
    stapled = decode_stapled(evidence.collateral)
    missing = sorted(stapled)[item]
    del stapled[missing]
    partial = Evidence(EvidenceKind.INTEL_TDX, evidence.payload, encode_stapled(stapled))
    bundle = bundle_of(partial)
    with pytest.raises(CollateralUnavailableError) as info:
        verify_bundle(bundle, POLICY, bytes(32), now=UP_TO_DATE.now)
    assert "evidence[0] intel-tdx collateral" in failing(info.value)
    assert missing in str(info.value)


def test_expired_or_foreign_stapled_collateral_is_refused(stapler: TdxCollateralStapler) -> None:
    evidence = stapler.collect(bytes(64))
    later = UP_TO_DATE.now + datetime.timedelta(days=60)
    bundle = bundle_of(evidence)
    with pytest.raises(TdxCollateralError):
        verify_bundle(bundle, POLICY, bytes(32), now=later)
    # Another platform's genuine Intel collateral under this quote's keys: refused too.
    quote = parse_tdx_quote(evidence.payload)
    foreign = tdx_collateral_staples(quote, (TDX / OUTDATED.collateral).read_text())
    swapped = Evidence(EvidenceKind.INTEL_TDX, evidence.payload, encode_stapled(foreign))
    failures = verify(swapped, now=OUTDATED.now)
    assert "evidence[0] intel-tdx quote signature and chain" in failures


def test_tcb_info_age_limit_applies_to_stapled_collateral(stapler: TdxCollateralStapler) -> None:
    evidence = stapler.collect(bytes(64))
    strict = Policy(
        name="tdx",
        required_evidence=(EvidenceKind.INTEL_TDX,),
        intel_tdx=tdx_policy(UP_TO_DATE),
        collateral=CollateralPolicy(max_tcb_info_age=datetime.timedelta(seconds=1)),
    )
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle_of(evidence), strict, bytes(32), now=UP_TO_DATE.now)
    assert "evidence[0] intel-tdx TCB info age" in failing(info.value)


# --------------------------------------------------------------------------- online


def test_online_fetches_what_is_not_stapled(stapler: TdxCollateralStapler) -> None:
    evidence = stapler.collect(bytes(64))
    assert evidence.collateral is not None
    stapled = decode_stapled(evidence.collateral)
    qe = [key for key in stapled if "/qe/identity" in key]
    for key in qe:
        del stapled[key]
    partial = Evidence(EvidenceKind.INTEL_TDX, evidence.payload, encode_stapled(stapled))
    online = Pcs(UP_TO_DATE)
    fetcher = collateral_fetcher(CollateralPolicy(source=CollateralSource.ONLINE), fetcher=online)
    assert verify(partial, fetcher=fetcher) == ONLY_REPORT_DATA
    assert sorted(r.staple_key() for r in online.requests) == sorted(qe)  # only the missing ones
    # Nothing stapled at all: online verification fetches everything.
    assert (
        verify(Evidence(EvidenceKind.INTEL_TDX, evidence.payload), fetcher=Pcs(UP_TO_DATE))
        == ONLY_REPORT_DATA
    )


def test_a_stapled_answer_the_verifier_cannot_use_is_asked_anew_first() -> None:
    """StapledFirstFetcher: an answer named in ``refetch`` goes to the fallback first; the
    stapled copy is served only when the fallback has none (so the refusal names it)."""
    stale, good = (
        CollateralRequest(url="https://pcs.test/stale"),
        CollateralRequest(url="https://pcs.test/good"),
    )
    network = {"up": True}
    asked: list[str] = []

    class Network:
        def fetch(self, request: CollateralRequest) -> bytes:
            asked.append(request.url)
            if not network["up"]:
                raise CollateralUnavailableError("test network is down")
            return b"fresh"

    stapled = {stale.staple_key(): b"expired", good.staple_key(): b"valid"}
    fetcher = StapledFirstFetcher(stapled, Network(), refetch={stale.staple_key()})
    assert fetcher.fetch(good) == b"valid" and asked == []  # a usable staple: no network
    assert fetcher.fetch(stale) == b"fresh" and asked == [stale.url]
    network["up"] = False
    assert fetcher.fetch(stale) == b"expired"  # nothing better: the stapled one, to be refused
    with pytest.raises(CollateralUnavailableError, match="not stapled, and test network is down"):
        fetcher.fetch(CollateralRequest(url="https://pcs.test/missing"))


# --------------------------------------------------------------------------- the aggregator side


def test_the_stapler_serves_the_cache_through_an_outage_until_expiry(
    stapler: TdxCollateralStapler, pcs: Pcs, clock: Clock
) -> None:
    """The sample's collateral is near its nextUpdate at the sample's time, so this starts
    ten days earlier (the stapler reads nextUpdate; it does not verify). Recovery after an
    expiry is the cache's generic behaviour (tests/test_hardware_path.py)."""
    clock.now = UP_TO_DATE.now - datetime.timedelta(days=10)
    pcs.down = True
    with pytest.raises(StapledCollateralExpiredError, match="nothing is cached"):
        stapler.collect(bytes(64))
    pcs.down = False
    clock.now += datetime.timedelta(minutes=2)  # past the retry pause after a failure
    first = stapler.collect(bytes(64))
    asked = len(pcs.requests)
    pcs.down = True
    clock.now += datetime.timedelta(hours=2)  # before the daily refresh: cached, PCS not asked
    assert stapler.collect(bytes(64)).collateral == first.collateral
    assert len(pcs.requests) == asked
    clock.now += datetime.timedelta(days=2)  # refresh due, PCS down: the cached copy is served
    assert stapler.collect(bytes(64)).collateral == first.collateral
    assert len(pcs.requests) > asked
    clock.now = UP_TO_DATE.now + datetime.timedelta(hours=1)  # past the TCB info's nextUpdate
    with pytest.raises(StapledCollateralExpiredError, match=r"TCB info.*expired"):
        stapler.collect(bytes(64))


def test_the_stapler_wraps_only_tdx_and_refuses_a_non_quote(pcs: Pcs, clock: Clock) -> None:
    from attestation import EvidenceCollectionError

    cache = CollateralCache(pcs, clock=clock)

    class Snp(FixedQuote):
        @property
        def kind(self) -> EvidenceKind:
            return EvidenceKind.AMD_SEV_SNP

    with pytest.raises(EvidenceCollectionError, match="wraps an intel-tdx collector"):
        TdxCollateralStapler(Snp(b"x"), cache)
    with pytest.raises(EvidenceCollectionError, match="does not parse"):
        TdxCollateralStapler(FixedQuote(b"not a quote"), cache).collect(bytes(64))


def test_coco_tdx_collector_is_stapled_by_the_hardware_choice(pcs: Pcs, clock: Clock) -> None:
    quote = UP_TO_DATE.quote_bytes()
    report_data = parse_tdx_quote(quote).report_data
    body = json.dumps(agent_tdx_document(quote)).encode()
    with (
        fake_agent(lambda data: (200, body) if data == report_data else (500, b"")) as agent,
        hardware_collectors(
            GpuCollector.NONE,
            CpuTee.COCO_TDX,
            coco_agent_url=agent.url,
            collateral=CollateralCache(pcs, clock=clock),
        ) as collectors,
    ):
        (collector,) = collectors
        assert isinstance(collector, TdxCollateralStapler)
        evidence = collector.collect(report_data)
    assert evidence.payload == quote and evidence.collateral is not None
    assert verify(evidence) == ONLY_REPORT_DATA


# --------------------------------------------------------------------------- the bundle format


def test_bundle_format_carries_collateral_canonically(stapler: TdxCollateralStapler) -> None:
    evidence = stapler.collect(bytes(64))
    bundle = bundle_of(evidence)
    data = bundle.to_bytes()
    assert EvidenceBundle.from_bytes(data) == bundle
    document = json.loads(data)
    assert set(document["evidence"][0]) == {"collateral", "kind", "payload"}
    # Collateral is in the bundle's bytes, so its digest (what the log records) names it.
    bare = bundle_of(Evidence(EvidenceKind.INTEL_TDX, evidence.payload))
    assert bare.digest() != bundle.digest()
    assert set(json.loads(bare.to_bytes())["evidence"][0]) == {"kind", "payload"}  # as before
    # The same quote twice is a duplicate whatever is stapled to it.
    with pytest.raises(DuplicateEvidenceError):
        bundle_of(evidence, Evidence(EvidenceKind.INTEL_TDX, evidence.payload))


def test_collateral_is_refused_where_it_does_not_belong() -> None:
    with pytest.raises(BundleFormatError, match="carries its collateral in its payload"):
        Evidence(EvidenceKind.AMD_SEV_SNP, b"report", b"collateral")
    with pytest.raises(BundleFormatError, match="non-empty"):
        Evidence(EvidenceKind.INTEL_TDX, b"quote", b"")
    document = json.loads(bundle_of(Evidence(EvidenceKind.NVIDIA_GPU, b"report")).to_bytes())
    document["evidence"][0]["collateral"] = "eA=="
    import rfc8785

    with pytest.raises(BundleFormatError) as info:
        EvidenceBundle.from_bytes(rfc8785.dumps(document))
    assert info.value.field == "evidence[0].collateral"
    document["evidence"][0] = {"kind": "intel-tdx", "payload": "eA==", "collateral": ""}
    with pytest.raises(BundleFormatError, match=r"evidence\[0\].collateral is empty"):
        EvidenceBundle.from_bytes(rfc8785.dumps(document))


FORMAT = STAPLED_COLLATERAL_FORMAT.encode()


@pytest.mark.parametrize(
    ("document", "named"),
    [
        (b"[]", "must be a JSON object"),
        (b'{"format":"other","items":[]}', "format must be"),
        (b'{"format":"' + FORMAT + b'","items":[]}', "1 to 32"),
        (
            b'{"format":"' + FORMAT + b'","items":[{"data":"eA==","key":"http://x"}]}',
            "https URL",
        ),
        (
            b'{"format":"' + FORMAT + b'","items":[{"data":"eA","key":"https://x"}]}',
            "items[0].data",
        ),
        (
            b'{"items":[{"data":"eA==","key":"https://x"}],"format":"' + FORMAT + b'"}',
            "canonical form",
        ),
        (
            b'{"format":"'
            + FORMAT
            + b'","items":[{"data":"eA==","key":"https://x"},{"data":"eA==","key":"https://x"}]}',
            "repeats",
        ),
    ],
)
def test_malformed_stapled_collateral_is_refused_by_name(document: bytes, named: str) -> None:
    with pytest.raises(EvidenceFormatError, match=named.replace("[", r"\[").replace("]", r"\]")):
        decode_stapled(document)
    failures = verify(Evidence(EvidenceKind.INTEL_TDX, UP_TO_DATE.quote_bytes(), document))
    assert "evidence[0] intel-tdx stapled collateral" in failures


def test_the_production_tdx_template_is_stapled_only() -> None:
    document, _ = load_policy_template("production-tdx-gpu")
    assert document["collateral"] == {
        "source": "stapled",
        "max_ocsp_age_seconds": 604800,
        "max_tcb_info_age_seconds": 2592000,
    }
    assert load_builtin_policy("default").collateral.source is CollateralSource.STAPLED


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may reach a real vendor: the default HTTPS fetcher is disabled."""
    import attestation._fetch

    def refuse(self: object, request: CollateralRequest) -> bytes:
        raise AssertionError(f"a test tried the network: {request.url}")

    monkeypatch.setattr(attestation._fetch.HttpFetcher, "fetch", refuse)


def test_stapled_report_data_is_the_only_failure_with_a_real_binding(stapler: TdxCollateralStapler) -> None:
    """The composite failure is the report data, never the collateral, under a fresh challenge."""
    challenge = os.urandom(32)
    bundle = bundle_of(stapler.collect(bytes(64)), challenge=challenge)
    with pytest.raises(CpuReportDataMismatchError) as info:
        verify_bundle(bundle, POLICY, challenge, now=UP_TO_DATE.now)
    assert failing(info.value) == ONLY_REPORT_DATA

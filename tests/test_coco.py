"""The Confidential Containers collector against a local stand-in for the attestation agent.

The stand-in (tests/coco_agent.py) serves real SEV-SNP reports and a real TDX quote from
tests/vectors/cpu-tee/ in the agent's JSON form on 127.0.0.1. The collector must rebuild
exactly the vendor's bytes, which then verify as configfs-tsm evidence does; a document the
real agent produced (trustee's end-to-end evidence) must rebuild into a report that verifies
to AMD's pinned Genoa ARK; with the test AMD PKI signing reports over any report data, a
bundle collected through the agent verifies end to end; malformed answers are refused by name.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from amd_pki import MEASUREMENT, AmdPki
from coco_agent import FakeAgent, agent_snp_document, agent_tdx_document, fake_agent
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from test_cpu_tee import SNP_SAMPLES, TDX, UP_TO_DATE, SnpSample, snp_policy, tdx_policy

from attestation import (
    AttestationError,
    CollateralCache,
    EvidenceBundle,
    EvidenceCollectionError,
    EvidenceKind,
    OfflineFetcher,
    Policy,
    build_bundle,
    verify_bundle,
)
from attestation._hardware import CpuTee, GpuCollector, hardware_collectors
from attestation.cpu import (
    CocoAgentError,
    CocoEvidenceCollector,
    CocoEvidenceFormatError,
    CocoSampleEvidenceError,
    CocoTeeMismatchError,
    CpuReportDataMismatchError,
    SevSnpCollateralStapler,
    SevSnpPolicy,
    SevSnpProduct,
    SnpCertGuid,
    parse_sev_snp_payload,
    parse_sev_snp_report,
    parse_tdx_quote,
    verify_sev_snp_report,
    verify_tdx_quote,
)
from fedseal.binding import BoundKeys

TRUSTEE_E2E = Path(__file__).parent / "vectors" / "cpu-tee" / "coco" / "trustee_e2e_snp_evidence.json"


def serving(documents: dict[bytes, object]) -> Callable[[bytes], tuple[int, bytes]]:
    """An agent that can report only over the report data it has samples for (as a fake TEE
    cannot sign), and over anything else answers what the real agent would not: a 500."""

    def answer(runtime_data: bytes) -> tuple[int, bytes]:
        if runtime_data in documents:
            document = documents[runtime_data]
            body = document if isinstance(document, bytes) else json.dumps(document).encode()
            return 200, body
        return 500, b"no sample for this report data"

    return answer


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    with fake_agent(serving({})) as running:
        yield running


def snp_table(sample: SnpSample, *, with_chain: bool) -> list[tuple[uuid.UUID, bytes]]:
    certs = sample.certificates()
    table = [(sample.guid(), certs[0])]
    if with_chain and len(certs) == 3:
        table += [(SnpCertGuid.ASK.value, certs[1]), (SnpCertGuid.ARK.value, certs[2])]
    return table


# --------------------------------------------------------------------------- real samples


@pytest.mark.parametrize("with_chain", [False, True], ids=["vcek", "chain"])
@pytest.mark.parametrize("sample", SNP_SAMPLES, ids=lambda s: s.name)
def test_every_snp_sample_comes_back_byte_identical_and_verifies(
    agent: FakeAgent, sample: SnpSample, with_chain: bool
) -> None:
    report_data = parse_sev_snp_report(sample.report_bytes()).report_data
    document = agent_snp_document(sample.report_bytes(), snp_table(sample, with_chain=with_chain))
    agent.answer = serving({report_data: document})
    evidence = CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url).collect(report_data)
    assert evidence.kind is EvidenceKind.AMD_SEV_SNP
    assert evidence.payload == sample.payload(with_chain=with_chain)
    verified = verify_sev_snp_report(
        evidence.payload, expected_report_data=report_data, policy=snp_policy(sample), now=sample.now
    )
    assert verified.product is sample.product


def test_the_agents_own_document_rebuilds_into_a_report_amd_signed(agent: FakeAgent) -> None:
    """trustee's end-to-end evidence was written by the real agent (sev crate serde): the
    rebuilt report verifies to the pinned Genoa ARK, and the stand-in writes the same document."""
    real = json.loads(TRUSTEE_E2E.read_bytes())
    report_data = bytes(real["attestation_report"]["report_data"])
    agent.answer = serving({report_data: TRUSTEE_E2E.read_bytes()})
    evidence = CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url).collect(report_data)
    report, table = parse_sev_snp_payload(evidence.payload)
    assert list(table) == [SnpCertGuid.VCEK.value]
    policy = SevSnpPolicy(measurements=(report.measurement,))
    now = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
    verified = verify_sev_snp_report(
        evidence.payload, expected_report_data=report_data, policy=policy, now=now
    )
    assert verified.product is SevSnpProduct.GENOA and verified.report.version == 3
    # The stand-in's serialiser agrees with the real one field for field (this older agent
    # predates the crate's mitigation-vector fields, which are null before version 5).
    ours = agent_snp_document(report.raw, list(table.items()))
    for name in ("launch_mit_vector", "current_mit_vector"):
        assert ours["attestation_report"].pop(name) is None
    assert ours == real


def test_tdx_quote_comes_back_byte_identical_and_verifies(agent: FakeAgent) -> None:
    quote = UP_TO_DATE.quote_bytes()
    report_data = parse_tdx_quote(quote).report_data
    agent.answer = serving({report_data: agent_tdx_document(quote, eventlog=b"\x01\x02 event log")})
    evidence = CocoEvidenceCollector(EvidenceKind.INTEL_TDX, url=agent.url).collect(report_data)
    assert evidence.payload == quote
    verified = verify_tdx_quote(
        evidence.payload,
        expected_report_data=report_data,
        policy=tdx_policy(UP_TO_DATE),
        now=UP_TO_DATE.now,
        fetcher=UP_TO_DATE.fetcher(),
    )
    assert verified.quote.report_data == report_data


# --------------------------------------------------------------------------- end to end


def _signing_over_the_asked_report_data(
    amd: AmdPki, *, reserved_0x4c: int = 0
) -> Callable[[bytes], tuple[int, bytes]]:
    """An agent answer as the real agent gives one: a report (signed by the test AMD PKI)
    over whatever report data it is asked for."""

    def sign(runtime_data: bytes) -> tuple[int, bytes]:
        report = bytearray(amd.report_template())
        report[0x50:0x90] = runtime_data.ljust(64, b"\0")
        report[0x4C] = reserved_0x4c
        return 200, json.dumps(agent_snp_document(amd.sign(bytes(report)), None)).encode()

    return sign


def _bound_keys() -> BoundKeys:
    return BoundKeys(
        hpke_public_key=X25519PrivateKey.generate().public_key().public_bytes_raw(),
        log_public_key=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
    )


def _collect_through(
    agent: FakeAgent, amd: AmdPki, keys: BoundKeys, challenge: bytes
) -> tuple[EvidenceBundle, list[Any]]:
    """A bundle built by the CoCo SEV-SNP collectors through `agent`, stapled offline."""
    cache = CollateralCache(OfflineFetcher(amd.kds_answers()))
    with hardware_collectors(
        GpuCollector.NONE, CpuTee.COCO_SEV_SNP, coco_agent_url=agent.url, collateral=cache
    ) as collectors:
        return build_bundle(keys, challenge, collectors), list(collectors)


def _test_pki_policy(amd: AmdPki) -> Policy:
    return Policy(
        name="coco",
        required_evidence=(EvidenceKind.AMD_SEV_SNP,),
        amd_sev_snp=SevSnpPolicy(measurements=(MEASUREMENT,), roots={SevSnpProduct.MILAN: amd.ark}),
    )


def test_a_bundle_collected_through_the_agent_verifies_end_to_end(agent: FakeAgent) -> None:
    """With the test AMD PKI the stand-in signs a report over whatever report data it is
    asked for, like the real agent; the SEV-SNP stapler adds the VCEK chain, the client
    verifies the bundle offline, and another client's challenge is refused."""
    amd = AmdPki()
    agent.answer = _signing_over_the_asked_report_data(amd)
    keys, challenge = _bound_keys(), os.urandom(32)
    bundle, collectors = _collect_through(agent, amd, keys, challenge)
    assert isinstance(collectors[0], SevSnpCollateralStapler)
    policy = _test_pki_policy(amd)
    result = verify_bundle(bundle.to_bytes(), policy, challenge)
    assert result.bundle_digest == bundle.digest()
    # The runtime data went out as URL-safe base64 without padding, marked as such.
    assert all("encoding=base64" in query and "%3D" not in query for query in agent.queries)
    other, _ = _collect_through(agent, amd, keys, os.urandom(32))
    with pytest.raises(CpuReportDataMismatchError):
        verify_bundle(
            bundle.__class__(
                hpke_public_key=other.hpke_public_key,
                log_public_key=other.log_public_key,
                challenge=challenge,
                binding=bundle.binding,
                evidence=other.evidence,
            ).to_bytes(),
            policy,
            challenge,
        )


# --------------------------------------------------------------------------- refusals


def _genoa_document() -> dict[str, Any]:
    sample = next(s for s in SNP_SAMPLES if s.name == "microsoft-genoa")
    return agent_snp_document(sample.report_bytes(), snp_table(sample, with_chain=False))


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for name in parents:
            target = target[int(name)] if name.isdigit() else target[name]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return change


_DELETE = object()
SNP_MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("missing report", _set("attestation_report", _DELETE), "attestation_report is missing"),
    ("unknown field", _set("extra", 1), "extra is not a field"),
    ("report field missing", _set("attestation_report.measurement", _DELETE), "measurement is missing"),
    ("report field unknown", _set("attestation_report.tcb", {}), "attestation_report.tcb is not a field"),
    ("version as text", _set("attestation_report.version", "3"), "attestation_report.version must be"),
    ("version unsupported", _set("attestation_report.version", 4), "attestation_report.version is 4"),
    ("boolean as integer", _set("attestation_report.vmpl", True), "attestation_report.vmpl must be"),
    ("negative integer", _set("attestation_report.guest_svn", -1), "attestation_report.guest_svn must be"),
    ("u32 overflow", _set("attestation_report.key_info", 1 << 32), "attestation_report.key_info must be"),
    ("byte out of range", _set("attestation_report.measurement.3", 256), "measurement[3] must be"),
    ("short array", _set("attestation_report.chip_id", [0] * 63), "chip_id must be an array of 64"),
    ("array as text", _set("attestation_report.report_data", "00" * 64), "report_data must be an array"),
    ("tcb field missing", _set("attestation_report.launch_tcb.snp", _DELETE), "launch_tcb.snp is missing"),
    ("mixed tcb layouts", _set("attestation_report.committed_tcb.fmc", 1), "mixes Turin and Milan/Genoa"),
    ("cpuid null in v3", _set("attestation_report.cpuid_fam_id", None), "cpuid_fam_id is missing"),
    ("mitigation in v3", _set("attestation_report.launch_mit_vector", 1), "launch_mit_vector must be null"),
    ("version object", _set("attestation_report.current.patch", 0), "current.patch is not a field"),
    ("signature short", _set("attestation_report.signature.r", [0] * 71), "signature.r must be an array"),
    ("chain not a list", _set("cert_chain", {"VCEK": []}), "cert_chain must be null or an array"),
    ("cert type unknown", _set("cert_chain.0.cert_type", "PCK"), "cert_chain[0].cert_type must be one of"),
    ("cert type bad uuid", _set("cert_chain.0.cert_type", {"OTHER": "x"}), "cert_type.OTHER is not a UUID"),
    ("cert data empty", _set("cert_chain.0.data", []), "cert_chain[0].data must be an array of 1"),
    ("cert data byte", _set("cert_chain.0.data.0", -1), "cert_chain[0].data[0] must be"),
]


@pytest.mark.parametrize(
    ("change", "named"), [case[1:] for case in SNP_MALFORMED], ids=[case[0] for case in SNP_MALFORMED]
)
def test_malformed_snp_documents_are_refused_by_name(
    agent: FakeAgent, change: Callable[[dict[str, Any]], None], named: str
) -> None:
    document = _genoa_document()
    report_data = bytes(document["attestation_report"]["report_data"])
    broken = copy.deepcopy(document)
    change(broken)
    agent.answer = serving({report_data: broken})
    with pytest.raises(CocoEvidenceFormatError) as info:
        CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url).collect(report_data)
    assert named in str(info.value)


def test_a_repeated_certificate_and_broken_json_are_refused(agent: FakeAgent) -> None:
    document = _genoa_document()
    report_data = bytes(document["attestation_report"]["report_data"])
    collector = CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url)
    document["cert_chain"].append(document["cert_chain"][0])
    text = json.dumps(document).encode()
    for body, named in (
        (text, "cert_chain[1].cert_type repeats 'VCEK'"),
        (text[:-1], "is not valid JSON"),
        (b'{"cert_chain": null, "cert_chain": null}', "duplicate key"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper than 32 levels"),
        (b"[]", "must be a JSON object"),
        ("{}".encode("utf-16"), "not valid UTF-8"),
    ):
        agent.answer = serving({report_data: body})
        with pytest.raises(CocoEvidenceFormatError, match=named.replace("[", r"\[").replace("]", r"\]")):
            collector.collect(report_data)


def test_a_report_the_verifier_cannot_parse_is_refused_at_collection(agent: FakeAgent) -> None:
    document = _genoa_document()
    report_data = bytes(document["attestation_report"]["report_data"])
    document["attestation_report"]["sig_algo"] = 2
    agent.answer = serving({report_data: document})
    with pytest.raises(CocoEvidenceFormatError, match="rebuilt report is malformed"):
        CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url).collect(report_data)


def test_malformed_tdx_documents_are_refused_by_name(agent: FakeAgent) -> None:
    quote = UP_TO_DATE.quote_bytes()
    report_data = parse_tdx_quote(quote).report_data
    collector = CocoEvidenceCollector(EvidenceKind.INTEL_TDX, url=agent.url)
    good = agent_tdx_document(quote)
    sgx = agent_tdx_document((TDX / "dcap-qvl/sgx_quote").read_bytes())
    for document, named in (
        ({**good, "quote": good["quote"].rstrip("=")}, "quote"),
        ({**good, "quote": ""}, "quote is empty"),
        ({**good, "quote": 7}, "quote must be a base64 string"),
        ({**good, "cc_eventlog": 1}, "cc_eventlog must be a base64 string or null"),
        ({"quote": good["quote"]}, "cc_eventlog is missing"),
        ({**good, "tdx": 1}, "tdx is not a field"),
        (sgx, "not a TDX quote"),
    ):
        agent.answer = serving({report_data: document})
        with pytest.raises(CocoEvidenceFormatError, match=named):
            collector.collect(report_data)


def test_another_tees_or_the_sample_attesters_evidence_is_refused_as_such(agent: FakeAgent) -> None:
    """A whole document of the other TEE, or the agent's sample fallback (no TEE found), is
    named for what it is, not for its first unexpected field."""
    snp = CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url)
    tdx = CocoEvidenceCollector(EvidenceKind.INTEL_TDX, url=agent.url)
    sample = {"svn": "1", "report_data": base64.b64encode(bytes(64)).decode()}
    for collector, document, refusal, found in (
        (snp, agent_tdx_document(UP_TO_DATE.quote_bytes()), CocoTeeMismatchError, "intel-tdx"),
        (tdx, _genoa_document(), CocoTeeMismatchError, "amd-sev-snp"),
        (snp, sample, CocoSampleEvidenceError, "sample"),
        (tdx, sample, CocoSampleEvidenceError, "sample"),
    ):
        agent.answer = serving({bytes(64): document})
        with pytest.raises(refusal) as info:
            collector.collect(bytes(64))
        assert type(info.value) is refusal and info.value.found == found
        assert isinstance(info.value, CocoEvidenceFormatError)


def test_evidence_over_other_report_data_is_refused(agent: FakeAgent) -> None:
    document = _genoa_document()
    agent.answer = lambda _: (200, json.dumps(document).encode())
    with pytest.raises(CocoAgentError, match="other report data") as info:
        CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url).collect(os.urandom(64))
    assert not isinstance(info.value, CocoEvidenceFormatError)


def test_agent_failures_are_named(agent: FakeAgent) -> None:
    collector = CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url)
    agent.answer = lambda _: (500, b"SNP Attester: Report data must be no more than 64 bytes")
    with pytest.raises(CocoAgentError, match=r"HTTP 500.*update guest-components"):
        collector.collect(bytes(64))
    agent.answer = lambda _: (503, b"x" * 5000)
    with pytest.raises(CocoAgentError, match="HTTP 503") as info:
        collector.collect(bytes(64))
    assert len(str(info.value)) < 400
    agent.answer = lambda _: (200, b" " * (4 * 1024 * 1024 + 1))
    with pytest.raises(CocoEvidenceFormatError, match="more than"):
        collector.collect(bytes(64))
    with pytest.raises(CocoAgentError, match="HTTP 404"):
        CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url + "/elsewhere").collect(bytes(64))


def test_an_agent_that_is_down_or_hangs_fails_within_the_timeout() -> None:
    with fake_agent(lambda _: (200, b"{}")) as gone:
        url = gone.url
    with pytest.raises(CocoAgentError, match="cannot reach the attestation agent"):
        CocoEvidenceCollector(EvidenceKind.INTEL_TDX, url=url).collect(bytes(64))

    def hang(_: bytes) -> tuple[int, bytes]:
        time.sleep(2)
        return 200, b"{}"

    with fake_agent(hang) as slow:
        started = time.monotonic()
        with pytest.raises(CocoAgentError, match="cannot reach the attestation agent"):
            CocoEvidenceCollector(EvidenceKind.INTEL_TDX, url=slow.url, timeout=0.3).collect(bytes(64))
        assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"kind": EvidenceKind.NVIDIA_GPU}, "CPU TEE evidence only"),
        ({"url": "https://127.0.0.1:8006"}, "must be http://"),
        ({"url": "http://10.0.0.8:8006"}, "loopback"),
        ({"url": "http://agent.example:8006"}, "loopback"),
        ({"url": "http://127.0.0.1:8006?x=1"}, "must be http://"),
        ({"url": "http://127.0.0.1:99999"}, "invalid port"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": True}, "timeout"),
    ],
)
def test_collector_arguments(kwargs: dict[str, Any], named: str) -> None:
    options: dict[str, Any] = {"kind": EvidenceKind.AMD_SEV_SNP, **kwargs}
    with pytest.raises(CocoAgentError, match=named):
        CocoEvidenceCollector(**options)


def test_collector_takes_only_cpu_report_data(agent: FakeAgent) -> None:
    collector = CocoEvidenceCollector(EvidenceKind.AMD_SEV_SNP, url=agent.url)
    assert collector.kind is EvidenceKind.AMD_SEV_SNP
    with pytest.raises(CocoAgentError, match="64 bytes"):
        collector.collect(bytes(32))
    assert agent.queries == []
    assert issubclass(CocoAgentError, EvidenceCollectionError)


def test_the_aggregator_cli_offers_the_coco_collectors() -> None:
    from aggregator._cli import _parser

    for choice in ("coco-sev-snp", "coco-tdx"):
        assert CpuTee(choice) in (CpuTee.COCO_SEV_SNP, CpuTee.COCO_TDX)
        args = _parser().parse_args(["--log", "log", "--enrolment", "e.json", "--cpu-tee", choice])
        assert args.cpu_tee == choice


def test_a_report_signed_with_non_zero_reserved_bytes_fails_its_signature(agent: FakeAgent) -> None:
    """docs/threat-model.md: the agent's JSON drops reserved bytes and the collector rebuilds
    them as zero (AMD's ABI): a report signed with non-zero ones fails, never passes."""
    amd = AmdPki()
    # Byte 0x4C is reserved (after the key-info word): zero in every report AMD makes.
    agent.answer = _signing_over_the_asked_report_data(amd, reserved_0x4c=1)
    challenge = os.urandom(32)
    bundle, _ = _collect_through(agent, amd, _bound_keys(), challenge)
    (evidence,) = bundle.evidence
    assert evidence.payload[0x4C] == 0  # rebuilt as zero
    with pytest.raises(AttestationError, match=r"(?i)signature"):
        verify_bundle(bundle.to_bytes(), _test_pki_policy(amd), challenge)

"""The hardware path end to end: a GPU + SEV-SNP aggregator whose evidence a client accepts.

Everything runs for real except the hardware and the vendors' services:

* the GPU: NVIDIA's nv-local-gpu-verifier and pynvml over ``FakeNvml`` (only libnvidia-ml
  is replaced), answering with reports the test NVIDIA PKI (``nvidia_pki``) signs over the
  nonce NVML was given;
* the CPU TEE: the configfs-tsm collector over a directory shaped like the kernel's,
  answering with reports the test AMD PKI (``amd_pki``) signs over the report data written;
* the network: ``Vendors``, standing in for NVIDIA's RIM service and OCSP responder and
  AMD KDS, behind the same ``CollateralFetcher`` interface the real HTTPS fetcher has.

The aggregator staples RIMs, OCSP answers and the VCEK chain through its collateral
cache; a client verifies offline (stapled only) under a policy equal to the shipped
``example-sev-snp`` template (with ``default``'s GPU section) except for the measurement
and the root pins, which name the test PKIs. Then every stapled item is taken away,
expired or revoked: a named refusal and nothing sent; with the online option the missing
item is fetched and the evidence accepted. The auditor verifies the same bundle from the
log, offline. GPU + TDX runs the same way in test_hardware_path_tdx.py, on the test Intel
PKI (``intel_pki``) with Intel's PCS collateral stapled.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import importlib.util
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from amd_pki import MEASUREMENT, AmdPki
from conftest import access_config, make_adapter, round_config
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from fake_nvml import FakeNvml, install_fake_nvml
from identities import site_identity
from intel_pki import IntelPki
from nvidia_pki import (
    DRIVER,
    VBIOS,
    NrasService,
    World,
    make_report,
    make_rim,
    make_rim_pki,
    make_world,
    ocsp_response,
    rim_urls,
)
from test_cpu_tee import FakeTsmEntry

from aggregator import RunningAggregator, start_aggregator
from aggregator._metrics import Metrics
from attestation import (
    AttestationError,
    CollateralCache,
    CollateralEvent,
    CollateralRequest,
    CollateralUnavailableError,
    CollateralValidity,
    Evidence,
    EvidenceCollector,
    EvidenceKind,
    Policy,
    PolicyError,
    StapledCollateralExpiredError,
    load_builtin_policy,
    verify_bundle,
)
from attestation.cpu import (
    ConfigfsTsmCollector,
    SevSnpCertificateChainError,
    SevSnpCollateralStapler,
    SnpCertGuid,
    encode_snp_cert_table,
    parse_sev_snp_payload,
)
from attestation.nvidia import (
    NVIDIA_OCSP_URL,
    GpuCertificateRevokedError,
    NrasTokenRequiredError,
    NrasTokenStapler,
    NvidiaCollateralStapler,
    NvidiaGpuCollector,
    NvidiaGpuEvidence,
    OcspResponseError,
    RimCertificateExpiredError,
    StapledRim,
    parse_nvidia_gpu_payload,
)
from auditor import audit_log
from auditor._cli import main as audit_main
from client_sdk import AggregatorUnavailableError, FedSealClient
from client_sdk._transport import AggregatorConnection

pytest.importorskip("pynvml")
if importlib.util.find_spec("verifier") is None:
    pytest.skip("nv-local-gpu-verifier is installed by the Makefile's set-up", allow_module_level=True)

HOUR = datetime.timedelta(hours=1)
_PEM = Encoding.PEM
CHALLENGE = bytes(range(32))


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --------------------------------------------------------------------------- fake hardware


class SigningNvml(FakeNvml):
    """libnvidia-ml whose GPU signs, with the test PKI, a report over the nonce it is given."""

    def __init__(self, world: World) -> None:
        super().__init__(
            [
                {
                    "driver_version": DRIVER,
                    "vbios_version": VBIOS,
                    "certificate": base64.b64encode(world.device.pem()).decode(),
                    "evidence": "",
                }
            ]
        )
        self.world = world

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: Any, report: Any) -> int:
        nonce = bytes(report._obj.nonce)
        self.nonces.append(nonce)
        data = make_report(
            self.world.device.leaf.key,
            nonce,
            measurements=self.world.measurements,
            fwid=self.world.device.fwid,
        )
        report._obj.attestationReportSize = len(data)
        ctypes.memmove(report._obj.attestationReport, data, len(data))
        return 0


class SigningTsmEntry(FakeTsmEntry):
    """A configfs-tsm entry whose SEV-SNP firmware signs each report with the test VCEK, and
    whose generation counts every new inblob (as the kernel's does)."""

    def __init__(self, path: Path, pki: AmdPki) -> None:
        self._pki = pki
        self._generation_count = 0
        self._seen: bytes | None = None
        super().__init__(
            path, provider="sev_guest", template=pki.report_template(), report_data_offset=0x50, auxblob=None
        )

    def _generation(self) -> bytes:
        inblob = self.inblob
        if inblob != self._seen:
            self._seen, self._generation_count = inblob, self._generation_count + 1
        return f"{self._generation_count}\n".encode()

    def _outblob(self) -> bytes:
        return self._pki.sign(super()._outblob())


@dataclass
class Clock:
    offset: datetime.timedelta = datetime.timedelta(0)

    def now(self) -> datetime.datetime:
        return utcnow() + self.offset


@dataclass
class Vendors:
    """NVIDIA's RIM service and OCSP responder, and AMD KDS or Intel PCS (with Intel's root
    CRL endpoint), as a CollateralFetcher."""

    world: World
    amd: AmdPki | None
    clock: Clock
    down: bool = False
    revoked: set[int] = field(default_factory=set)
    requests: list[CollateralRequest] = field(default_factory=list)
    intel: IntelPki | None = None
    #: NVIDIA's NRAS, for an aggregator run with --nras (it has its own ``down``).
    nras: NrasService | None = None

    def fetch(self, request: CollateralRequest) -> bytes:
        self.requests.append(request)
        if self.down:
            raise CollateralUnavailableError(f"test network is down: {request.url}")
        answer = self.nras.answer(request) if self.nras is not None else None
        if answer is not None:
            return answer
        if request.url == NVIDIA_OCSP_URL and request.body is not None:
            serial = ocsp.load_der_ocsp_request(request.body).serial_number
            for cert, issuer in self.world.all_chain_certs():
                if cert.serial_number == serial:
                    now = self.clock.now()
                    status = (
                        ocsp.OCSPCertStatus.REVOKED if serial in self.revoked else ocsp.OCSPCertStatus.GOOD
                    )
                    return ocsp_response(
                        cert, issuer, status=status, this_update=now - HOUR, next_update=now + 24 * HOUR
                    )
        if self.intel is not None and request.staple_key() in (pcs := self.intel.pcs_answers()):
            return pcs[request.staple_key()]
        answers = {**rim_urls(self.world), **(self.amd.kds_answers() if self.amd is not None else {})}
        if request.url in answers:
            return answers[request.url]
        raise CollateralUnavailableError(f"test vendors know nothing at {request.url}")

    def urls(self) -> list[str]:
        return [r.url for r in self.requests]


@dataclass
class Tamper:
    """What a broken aggregator does to its stapled collateral, before the CPU report covers it."""

    gpu: Callable[[NvidiaGpuEvidence], NvidiaGpuEvidence] | None = None
    snp: Callable[[bytes], bytes] | None = None


class Tampering:
    def __init__(self, inner: Any, tamper: Tamper) -> None:
        self._inner, self._tamper = inner, tamper

    @property
    def kind(self) -> EvidenceKind:
        kind: EvidenceKind = self._inner.kind
        return kind

    def collect(self, binding: bytes) -> Evidence:
        item: Evidence = self._inner.collect(binding)
        if self.kind is EvidenceKind.NVIDIA_GPU and self._tamper.gpu is not None:
            payload = self._tamper.gpu(parse_nvidia_gpu_payload(item.payload)).to_payload()
            return Evidence(kind=item.kind, payload=payload)
        if self.kind is EvidenceKind.AMD_SEV_SNP and self._tamper.snp is not None:
            return Evidence(kind=item.kind, payload=self._tamper.snp(item.payload))
        return item


@dataclass
class Host:
    aggregator: RunningAggregator
    world: World
    amd: AmdPki
    vendors: Vendors
    clock: Clock
    tamper: Tamper
    metrics: Metrics
    policy: Policy

    def client(self, site: str = "site-0", **options: Any) -> FedSealClient:
        return FedSealClient(
            self.aggregator.endpoint, self.policy, identity=site_identity(site), timeout=20, **options
        )

    def accepted(self, round_id: int = 1) -> int:
        return self.aggregator.rounds.snapshot(round_id).accepted


def production_like_policy(world: World, amd: AmdPki) -> Policy:
    return Policy.from_json(json.dumps(production_like_document(world, amd)), source="test")


def production_like_document(world: World, amd: AmdPki) -> dict[str, Any]:
    """The shipped ``example-sev-snp`` template with ``default``'s GPU section, except for the
    measurement (the test guest's) and the root pins (the test PKIs')."""
    document: dict[str, Any] = json.loads(files("policies").joinpath("example-sev-snp.json").read_text())
    default = json.loads(files("policies").joinpath("default.json").read_text())
    document["name"] = "hardware-path-test"
    document["amd_sev_snp"]["measurements"] = [MEASUREMENT.hex()]
    document["amd_sev_snp"]["roots"] = {"Milan": amd.ark_pem()}
    document["nvidia_gpu"] = {
        **default["nvidia_gpu"],
        "roots": {
            "device_identity_ca": world.device.root.cert.public_bytes(_PEM).decode(),
            "rim_signing_ca": world.rims.root.cert.public_bytes(_PEM).decode(),
        },
    }
    return document


@contextlib.contextmanager
def open_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, nras: bool = False) -> Iterator[Host]:
    """The GPU + SEV-SNP aggregator; with ``nras``, run as with ``--nras`` against a test NRAS."""
    world, amd, clock = make_world(), AmdPki(), Clock()
    install_fake_nvml(monkeypatch, SigningNvml(world))
    tsm_root = tmp_path / "tsm" / "report"
    entry = SigningTsmEntry(tsm_root / "fedseal", amd)
    vendors = Vendors(world, amd, clock, nras=NrasService(clock=clock.now) if nras else None)
    metrics = Metrics()
    cache = CollateralCache(vendors, clock=clock.now, on_event=metrics.collateral_event)
    tamper = Tamper()
    with contextlib.ExitStack() as stack:
        stack.callback(entry.close)
        gpu: EvidenceCollector = NvidiaCollateralStapler(
            stack.enter_context(NvidiaGpuCollector(timeout=60)), cache, anchors=world.anchors
        )
        if nras:
            gpu = NrasTokenStapler(
                gpu, cache, vendors, anchors=world.anchors, on_outcome=metrics.nras_outcome
            )
        collectors = [
            Tampering(gpu, tamper),
            Tampering(
                SevSnpCollateralStapler(
                    ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="fedseal"), cache
                ),
                tamper,
            ),
        ]
        aggregator = start_aggregator(
            log_path=tmp_path / "audit.log",
            log_origin="fedseal.test/hardware",
            collectors=collectors,
            access=access_config(),
            metrics=metrics,
        )
        stack.callback(aggregator.stop, 0.5)
        yield Host(
            aggregator, world, amd, vendors, clock, tamper, metrics, production_like_policy(world, amd)
        )


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    with open_host(tmp_path, monkeypatch) as opened:
        yield opened


# --------------------------------------------------------------------------- the positive path


def test_a_whole_round_on_stapled_evidence_offline(host: Host, tmp_path: Path) -> None:
    host.aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    host.vendors.requests.clear()
    with host.client() as client:
        attested = client.attest()
        assert attested.evidence_kinds == (EvidenceKind.NVIDIA_GPU, EvidenceKind.AMD_SEV_SNP)
        assert not attested.insecure and all(c.passed for c in attested.checks)
        names = {c.name: c for c in attested.checks}
        # Verified offline: every RIM and OCSP answer came from the bundle.
        assert "verified (stapled" in names["evidence[0] nvidia-gpu RIM NV_GPU_DRIVER_GH100_570.86.10"].found
        assert sum(1 for c in attested.checks if " OCSP " in c.name) == 6
        assert all("stapled" in c.found for c in attested.checks if " OCSP " in c.name)
        receipt = client.submit_update(make_adapter(1), round_id=1, num_examples=10)
        assert receipt.entry.fields["client_id"] == "site-0"
        aggregate = client.fetch_aggregate(1, wait_seconds=10)
    assert aggregate.manifest.participants == ("site-0",)
    # The stapled collateral was cached on the host: collections after start-up fetched nothing.
    assert host.vendors.requests == []

    # The auditor verifies the enclave's start-up bundle from the log, offline.
    report = audit_log(host.aggregator.log.path, host.policy)
    assert report.findings == ()
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(production_like_document(host.world, host.amd)))
    log = str(host.aggregator.log.path)
    assert audit_main(["verify", log, "--policy", str(policy_file), "--quiet"]) == 0
    # The shipped template itself (vendor root pins, its sample measurement) refuses the same log.
    assert audit_main(["verify", log, "--builtin-policy", "example-sev-snp", "--quiet"]) == 1


def test_a_round_under_a_policy_requiring_an_nras_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --nras, every bundle carries NRAS's token and key set: a stapled-only client whose
    policy requires a token (pinning NRAS's key) runs a whole round, and the auditor accepts
    the log under it. While NRAS is down the evidence comes without a token (counted), and
    that client refuses by name and sends nothing."""
    with open_host(tmp_path, monkeypatch, nras=True) as nras_host:
        tokens = _nras_tokens(nras_host)
        assert nras_host.vendors.nras is not None
        document = production_like_document(nras_host.world, nras_host.amd)
        document["nvidia_gpu"] |= {"nras": "required", "nras_key_pins": [nras_host.vendors.nras.issuer.pin()]}
        policy = Policy.from_json(json.dumps(document), source="test")
        nras_host.aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
        assert tokens("stapled") == 1  # the start-up evidence

        nras_host.vendors.nras.down = True
        with (
            FedSealClient(
                nras_host.aggregator.endpoint, policy, identity=site_identity("site-0"), timeout=20
            ) as c,
            pytest.raises(NrasTokenRequiredError),
        ):
            c.submit_update(make_adapter(1), round_id=1, num_examples=10)
        assert nras_host.accepted() == 0 and tokens("failed") == 1

        nras_host.vendors.nras.down = False
        nras_host.clock.offset = 2 * datetime.timedelta(minutes=1)  # past the stapler's retry pause
        with FedSealClient(
            nras_host.aggregator.endpoint, policy, identity=site_identity("site-0"), timeout=20
        ) as client:
            attested = client.attest()
            row = next(c for c in attested.checks if c.name.endswith("NRAS token"))
            assert row.passed and "key pinned by the policy" in row.found
            client.submit_update(make_adapter(1), round_id=1, num_examples=10)
            assert client.fetch_aggregate(1, wait_seconds=10).manifest.participants == ("site-0",)
        assert tokens("stapled") >= 2
        assert audit_log(nras_host.aggregator.log.path, policy).findings == ()


def _nras_tokens(host: Host) -> Callable[[str], float]:
    def count(outcome: str) -> float:
        value = host.metrics.registry.get_sample_value("fedseal_nras_tokens_total", {"outcome": outcome})
        return value or 0.0

    return count


def test_the_same_evidence_fails_the_vendor_root_pins(host: Host) -> None:
    """Only the policy's replaced roots make the test PKIs acceptable: under the shipped
    roots the same aggregator is refused for both chains."""
    pinned = Policy.from_json(
        json.dumps(
            {
                **json.loads(files("policies").joinpath("example-sev-snp.json").read_text()),
                "amd_sev_snp": {"measurements": [MEASUREMENT.hex()]},
            }
        ),
        source="test",
    )
    with (
        FedSealClient(
            host.aggregator.endpoint, pinned, identity=site_identity("site-0"), timeout=20
        ) as client,
        pytest.raises(AttestationError) as info,
    ):
        client.attest()
    failing = [c.name for c in info.value.checks if not c.passed]
    assert "evidence[0] nvidia-gpu GPU-0 certificate chain" in failing
    assert "evidence[1] amd-sev-snp certificate chain" in failing


# ---------------------------------------------------- stapled items missing, expired, revoked


def _drop_rims(evidence: NvidiaGpuEvidence) -> NvidiaGpuEvidence:
    return NvidiaGpuEvidence(gpus=evidence.gpus, ocsp_responses=evidence.ocsp_responses)


def _drop_ocsp(evidence: NvidiaGpuEvidence) -> NvidiaGpuEvidence:
    return NvidiaGpuEvidence(gpus=evidence.gpus, rims=evidence.rims)


def _replace_ocsp(
    host: Host, make: Callable[[Any, Any], bytes]
) -> Callable[[NvidiaGpuEvidence], NvidiaGpuEvidence]:
    """Replace the stapled answer for the GPU's provisioner CA with ``make(cert, issuer)``."""
    cert, issuer = next(
        (c, i) for c, i in host.world.all_chain_certs() if c == host.world.device.intermediates[1].cert
    )

    def tamper(evidence: NvidiaGpuEvidence) -> NvidiaGpuEvidence:
        kept = tuple(
            r
            for r in evidence.ocsp_responses
            if ocsp.load_der_ocsp_response(r).serial_number != cert.serial_number
        )
        return NvidiaGpuEvidence(
            gpus=evidence.gpus, rims=evidence.rims, ocsp_responses=(*kept, make(cert, issuer))
        )

    return tamper


def _expired_driver_rim(host: Host) -> Callable[[NvidiaGpuEvidence], NvidiaGpuEvidence]:
    expired_pki = make_rim_pki(host.world.rims.root, signer_not_after=utcnow() - 24 * HOUR)
    xml = make_rim(expired_pki, DRIVER, host.world.golden(0, 9))

    def tamper(evidence: NvidiaGpuEvidence) -> NvidiaGpuEvidence:
        rims = tuple(StapledRim(r.id, xml) if r.id.startswith("NV_GPU_DRIVER") else r for r in evidence.rims)
        return NvidiaGpuEvidence(gpus=evidence.gpus, rims=rims, ocsp_responses=evidence.ocsp_responses)

    return tamper


def _snp_table(host: Host, edit: Callable[[dict[Any, bytes]], None]) -> Callable[[bytes], bytes]:
    def tamper(payload: bytes) -> bytes:
        report, table = parse_sev_snp_payload(payload)
        edit(table)
        return report.raw + encode_snp_cert_table(table.items())

    return tamper


def _drop_vcek(table: dict[Any, bytes]) -> None:
    del table[SnpCertGuid.VCEK.value]


CASES: dict[str, tuple[Callable[[Host], Tamper], type[AttestationError], bool]] = {
    # name: (tamper, refusal offline, accepted online)
    "RIMs missing": (lambda h: Tamper(gpu=_drop_rims), CollateralUnavailableError, True),
    "RIM expired": (lambda h: Tamper(gpu=_expired_driver_rim(h)), RimCertificateExpiredError, True),
    "OCSP missing": (lambda h: Tamper(gpu=_drop_ocsp), CollateralUnavailableError, True),
    "OCSP expired": (
        lambda h: Tamper(
            gpu=_replace_ocsp(
                h,
                lambda c, i: ocsp_response(
                    c, i, this_update=utcnow() - 72 * HOUR, next_update=utcnow() - 48 * HOUR
                ),
            )
        ),
        OcspResponseError,
        True,
    ),
    "OCSP revoked": (
        lambda h: Tamper(
            gpu=_replace_ocsp(
                h,
                lambda c, i: ocsp_response(
                    c,
                    i,
                    status=ocsp.OCSPCertStatus.REVOKED,
                    this_update=utcnow() - HOUR,
                    next_update=utcnow() + 24 * HOUR,
                ),
            )
        ),
        GpuCertificateRevokedError,
        False,  # a revoked answer is authoritative: fetching does not overrule it
    ),
    "VCEK missing": (lambda h: Tamper(snp=_snp_table(h, _drop_vcek)), CollateralUnavailableError, True),
    "VCEK expired": (
        lambda h: Tamper(
            snp=_snp_table(
                h,
                lambda t: t.__setitem__(
                    SnpCertGuid.VCEK.value,
                    h.amd.make_vcek(not_after=utcnow() - 24 * HOUR).public_bytes(Encoding.DER),
                ),
            )
        ),
        SevSnpCertificateChainError,
        False,  # the table's VCEK is used as served: an expired one is refused, not replaced
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_stapled_item_missing_expired_or_revoked(host: Host, case: str) -> None:
    make_tamper, refusal, online_accepts = CASES[case]
    host.aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=2))
    tamper = make_tamper(host)
    host.tamper.gpu, host.tamper.snp = tamper.gpu, tamper.snp
    host.vendors.requests.clear()

    with host.client() as client, pytest.raises(refusal) as info:
        client.submit_update(make_adapter(1), round_id=1, num_examples=10)
    assert isinstance(info.value, AttestationError)
    assert host.accepted() == 0  # nothing was sent
    assert host.vendors.requests == []  # stapled only: the client fetched nothing

    with host.client(online=True, fetcher=host.vendors) as client:
        if online_accepts:
            attested = client.attest()
            assert all(c.passed for c in attested.checks)
            assert host.vendors.requests, "the missing item was fetched"
            client.submit_update(make_adapter(1), round_id=1, num_examples=10)
            assert host.accepted() == 1
        else:
            with pytest.raises(refusal):
                client.submit_update(make_adapter(1), round_id=1, num_examples=10)
            assert host.accepted() == 0


def test_a_policy_that_says_online_fetches_and_one_cannot_fetch_while_stapled_only(host: Host) -> None:
    host.tamper.gpu = _drop_rims
    online = Policy.from_json(
        json.dumps({**_policy_document(host), "collateral": {"source": "online"}}), source="test"
    )
    with FedSealClient(
        host.aggregator.endpoint, online, identity=site_identity("site-0"), timeout=20, fetcher=host.vendors
    ) as client:
        client.attest()
    # Stapled only (the default) with a fetcher is a contradiction, refused up front.
    with pytest.raises(PolicyError, match="stapled-only"):
        host.client(fetcher=host.vendors)
    # And online=False overrides an online policy back to stapled only.
    with (
        FedSealClient(
            host.aggregator.endpoint, online, identity=site_identity("site-0"), timeout=20, online=False
        ) as client,
        pytest.raises(CollateralUnavailableError),
    ):
        client.attest()


def _policy_document(host: Host) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(files("policies").joinpath("example-sev-snp.json").read_text())
    document["amd_sev_snp"]["measurements"] = [MEASUREMENT.hex()]
    document["amd_sev_snp"]["roots"] = {"Milan": host.amd.ark_pem()}
    document["nvidia_gpu"] = {
        "roots": {
            "device_identity_ca": host.world.device.root.cert.public_bytes(_PEM).decode(),
            "rim_signing_ca": host.world.rims.root.cert.public_bytes(_PEM).decode(),
        }
    }
    return document


def test_ocsp_freshness_limit_of_the_policy(host: Host) -> None:
    """An answer within its nextUpdate but older than the policy allows is refused."""
    host.tamper.gpu = _replace_ocsp(
        host, lambda c, i: ocsp_response(c, i, this_update=utcnow() - 10 * HOUR, next_update=utcnow() + HOUR)
    )
    strict = Policy.from_json(
        json.dumps({**_policy_document(host), "collateral": {"max_ocsp_age_seconds": 3600}}), source="test"
    )
    with (
        FedSealClient(
            host.aggregator.endpoint, strict, identity=site_identity("site-0"), timeout=20
        ) as client,
        pytest.raises(OcspResponseError, match="older than the policy's limit"),
    ):
        client.attest()
    with host.client() as client:  # no limit: the same answer is good
        client.attest()


# --------------------------------------------------------------------------- collateral refresh


def test_failed_refresh_serves_the_cache_until_expiry_then_fails_closed_then_recovers(host: Host) -> None:
    def bundle() -> bytes:
        # GetAttestation as a client sends it; the bundle is then checked at the moved clock.
        connection = AggregatorConnection(host.aggregator.endpoint, timeout=10)
        try:
            return connection.get_attestation(CHALLENGE)
        finally:
            connection.close()

    def events(event: CollateralEvent) -> float:
        return (
            host.metrics.registry.get_sample_value("fedseal_collateral_events_total", {"event": event.value})
            or 0.0
        )

    host.vendors.down = True
    host.clock.offset = 20 * HOUR  # past the OCSP answers' refresh time, before their expiry
    stale = events(CollateralEvent.SERVED_STALE)
    verify_bundle(bundle(), host.policy, CHALLENGE, now=host.clock.now())  # still served, still valid
    assert events(CollateralEvent.SERVED_STALE) > stale and events(CollateralEvent.REFRESH_FAILED) > 0

    host.clock.offset = 30 * HOUR  # past their nextUpdate: nothing valid is left
    with pytest.raises(AggregatorUnavailableError, match="StapledCollateralExpiredError") as info:
        bundle()
    assert "OCSP answer" in str(info.value)
    assert events(CollateralEvent.EXPIRED) > 0
    assert (
        host.metrics.registry.get_sample_value("fedseal_attestation_requests_total", {"outcome": "error"})
        == 1.0
    )

    host.vendors.down = False  # the service comes back: so does GetAttestation
    host.clock.offset = 31 * HOUR + 2 * datetime.timedelta(minutes=1)  # past the retry pause
    verify_bundle(bundle(), host.policy, CHALLENGE, now=host.clock.now())


def test_cache_unit_semantics() -> None:
    """The cache alone: refresh time, stale serving, the named failure and recovery."""
    clock = Clock()
    calls: list[str] = []
    state: dict[str, Any] = {"up": True, "value": b"v1"}

    class Net:
        def fetch(self, request: CollateralRequest) -> bytes:
            calls.append(request.url)
            if not state["up"]:
                raise CollateralUnavailableError("down")
            value: bytes = state["value"]
            return value

    seen: list[CollateralEvent] = []
    cache = CollateralCache(Net(), clock=clock.now, on_event=lambda e, _: seen.append(e))

    def appraise(data: bytes, now: datetime.datetime) -> CollateralValidity:
        if data == b"bad":
            raise ValueError("unusable")
        return CollateralValidity(refresh_at=now + 10 * HOUR, expires_at=now + 20 * HOUR)

    request = CollateralRequest(url="https://vendor.example/item")
    assert cache.get(request, appraise, what="item") == b"v1"
    assert cache.get(request, appraise, what="item") == b"v1" and len(calls) == 1  # cached
    clock.offset = 11 * HOUR
    state["up"] = False
    assert cache.get(request, appraise, what="item") == b"v1"  # refresh failed: served stale
    assert cache.get(request, appraise, what="item") == b"v1" and len(calls) == 2  # no retry yet
    state["up"], state["value"] = True, b"bad"
    clock.offset = 11 * HOUR + 2 * datetime.timedelta(minutes=1)
    assert cache.get(request, appraise, what="item") == b"v1"  # an unusable answer is a failure too
    clock.offset = 21 * HOUR
    state["up"] = False
    with pytest.raises(StapledCollateralExpiredError, match="cannot staple item"):
        cache.get(request, appraise, what="item")
    state["up"], state["value"] = True, b"v2"
    clock.offset = 22 * HOUR
    assert cache.get(request, appraise, what="item") == b"v2"  # recovered
    assert seen == [
        CollateralEvent.FETCHED,
        CollateralEvent.CACHED,
        CollateralEvent.REFRESH_FAILED,
        CollateralEvent.SERVED_STALE,
        CollateralEvent.SERVED_STALE,
        CollateralEvent.REFRESH_FAILED,
        CollateralEvent.SERVED_STALE,
        CollateralEvent.REFRESH_FAILED,
        CollateralEvent.EXPIRED,
        CollateralEvent.FETCHED,
    ]


def test_shipped_policies_never_replace_a_vendor_root() -> None:
    from attestation import builtin_policy_names

    for name in builtin_policy_names():
        policy = load_builtin_policy(name)
        assert policy.nvidia_gpu.device_root is None and policy.nvidia_gpu.rim_root is None, name
        assert policy.amd_sev_snp is None or policy.amd_sev_snp.roots is None, name
        assert policy.intel_tdx is None or policy.intel_tdx.sgx_root_ca is None, name
        assert policy.collateral.source.value == "stapled", name

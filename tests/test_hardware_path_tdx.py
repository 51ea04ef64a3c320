"""The hardware path end to end for Intel TDX: a GPU + TDX aggregator whose evidence a client accepts.

As test_hardware_path.py does for GPU + SEV-SNP, everything runs for real except the
hardware and the vendors' services:

* the GPU: nv-local-gpu-verifier and pynvml over ``FakeNvml``, signing with the test NVIDIA
  PKI (test_hardware_path's ``SigningNvml``);
* the CPU TEE: the configfs-tsm collector over a directory shaped like the kernel's, whose
  ``tdx_guest`` provider answers with TDX quotes the test Intel PKI (``intel_pki``) makes
  over the report data written to ``inblob``;
* the network: ``Vendors``, standing in for NVIDIA's RIM service and OCSP responder and for
  Intel PCS and Intel's root CRL endpoint, behind the ``CollateralFetcher`` interface.

The aggregator staples RIMs, OCSP answers and Intel's PCS collateral (TCB info, QE
identity, PCK CRL, root CA CRL, with their issuer chains) through its collateral cache; a
client verifies offline under the shipped ``production-tdx-gpu`` template filled with the
test TD's MRTD and RTMRs, with the test PKIs' roots pinned in place of the vendors'. Then
each stapled Intel item is taken away, expired or (a CRL) made to revoke: a named refusal
and nothing sent; with the online option the missing or expired item is fetched and the
evidence accepted, while a revocation stands. The auditor verifies the same bundle from
the log, offline.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asn1
import dcap_qvl
import pytest
from conftest import access_config, make_adapter, round_config
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fake_nvml import install_fake_nvml
from identities import site_identity
from intel_pki import CPUSVN, FMSPC, MRTD, PCESVN, RTMRS, SGX_EXTENSION_OID, IntelPki
from nvidia_pki import World, make_world
from test_cpu_tee import TDX as TDX_SAMPLES
from test_cpu_tee import FakeTsmEntry
from test_hardware_path import Clock, SigningNvml, Vendors

from aggregator import RunningAggregator, start_aggregator
from attestation import (
    AttestationError,
    CollateralCache,
    CollateralUnavailableError,
    Evidence,
    EvidenceCollector,
    EvidenceKind,
    OfflineFetcher,
    Policy,
)
from attestation._stapled import decode_stapled, encode_stapled
from attestation._templates import fill_policy_template, load_policy_template
from attestation.cpu import (
    ConfigfsTsmCollector,
    CpuTcbError,
    TdxCertificateChainError,
    TdxCollateralError,
    TdxCollateralStapler,
    TdxPolicy,
    TdxTcbStatus,
    parse_tdx_quote,
    tdx_collateral_requests,
    verify_tdx_quote,
)
from attestation.nvidia import NvidiaCollateralStapler, NvidiaGpuCollector
from auditor import audit_log
from auditor._cli import main as audit_main
from client_sdk import FedSealClient

pytest.importorskip("pynvml")

DAY = datetime.timedelta(days=1)
_PEM = Encoding.PEM


# --------------------------------------------------------------------------- fake hardware


class QuotingTsmEntry(FakeTsmEntry):
    """A configfs-tsm entry whose ``tdx_guest`` provider answers each read of ``outblob``
    with a TDX quote over the report data in ``inblob``, made with the test Intel PKI, and
    whose generation counts every new inblob (as the kernel's does)."""

    def __init__(self, path: Path, pki: IntelPki) -> None:
        self._pki = pki
        self._generation_count = 0
        self._seen: bytes | None = None
        super().__init__(path, provider="tdx_guest", template=b"", report_data_offset=0, auxblob=None)

    def _generation(self) -> bytes:
        inblob = self.inblob
        if inblob != self._seen:
            self._seen, self._generation_count = inblob, self._generation_count + 1
        return f"{self._generation_count}\n".encode()

    def _outblob(self) -> bytes:
        inblob = self.inblob
        return self._pki.quote(inblob) if len(inblob) == 64 else b""


# The stapled answers a test takes away, replaces or keeps, by what they are.
Staples = dict[str, bytes]


@dataclass
class TamperTdx:
    """What a broken aggregator does to the collateral it staples beside the quote."""

    inner: EvidenceCollector
    edit: Callable[[Staples], Staples] | None = None

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.INTEL_TDX

    def collect(self, binding: bytes) -> Evidence:
        item = self.inner.collect(binding)
        if self.edit is None or item.collateral is None:
            return item
        stapled = self.edit(decode_stapled(item.collateral))
        return Evidence(kind=item.kind, payload=item.payload, collateral=encode_stapled(stapled))


def open_tdx_collectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: contextlib.ExitStack, vendors: Vendors
) -> tuple[EvidenceCollector, EvidenceCollector]:
    """The GPU and TDX collectors of a GPU + TDX host, each wrapped in its stapler."""
    assert vendors.intel is not None
    install_fake_nvml(monkeypatch, SigningNvml(vendors.world))
    tsm_root = tmp_path / "tsm" / "report"
    entry = QuotingTsmEntry(tsm_root / "fedseal", vendors.intel)
    stack.callback(entry.close)
    cache = CollateralCache(vendors, clock=vendors.clock.now)
    gpu = stack.enter_context(NvidiaGpuCollector(timeout=60))
    return (
        NvidiaCollateralStapler(gpu, cache, anchors=vendors.world.anchors),
        TdxCollateralStapler(
            ConfigfsTsmCollector(EvidenceKind.INTEL_TDX, root=tsm_root, entry="fedseal"), cache
        ),
    )


def filled_tdx_template(world: World, intel: IntelPki, **collateral: int) -> dict[str, Any]:
    """The shipped production-tdx-gpu template filled with the test TD's MRTD and RTMRs, as
    `fedseal-attest measure tdx --policy-out` fills it, plus the test PKIs' root pins (the
    only other difference from what an operator deploys); ``collateral`` overrides limits."""
    document, source = load_policy_template("production-tdx-gpu")
    filled = fill_policy_template(
        document, source=source, tdx_mrtd=(MRTD,), tdx_rtmrs={i: (v,) for i, v in enumerate(RTMRS)}
    )
    result: dict[str, Any] = json.loads(filled.text)
    result["intel_tdx"]["roots"] = {"sgx_root_ca": intel.root_pem()}
    result["nvidia_gpu"]["roots"] = {
        "device_identity_ca": world.device.root.cert.public_bytes(_PEM).decode(),
        "rim_signing_ca": world.rims.root.cert.public_bytes(_PEM).decode(),
    }
    result["collateral"].update(collateral)
    return result


@dataclass
class Host:
    aggregator: RunningAggregator
    world: World
    intel: IntelPki
    vendors: Vendors
    tdx: TamperTdx
    document: dict[str, Any]

    @property
    def policy(self) -> Policy:
        return Policy.from_json(json.dumps(self.document), source="test")

    def client(self, site: str = "site-0", policy: Policy | None = None, **options: Any) -> FedSealClient:
        return FedSealClient(
            self.aggregator.endpoint,
            policy if policy is not None else self.policy,
            identity=site_identity(site),
            timeout=20,
            **options,
        )

    def accepted(self, round_id: int = 1) -> int:
        return self.aggregator.rounds.snapshot(round_id).accepted


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    world, intel, clock = make_world(), IntelPki(), Clock()
    vendors = Vendors(world, None, clock, intel=intel)
    with contextlib.ExitStack() as stack:
        gpu, tdx = open_tdx_collectors(tmp_path, monkeypatch, stack, vendors)
        tampering = TamperTdx(tdx)
        aggregator = start_aggregator(
            log_path=tmp_path / "audit.log",
            log_origin="fedseal.test/hardware-tdx",
            collectors=[gpu, tampering],
            access=access_config(),
        )
        stack.callback(aggregator.stop, 0.5)
        yield Host(aggregator, world, intel, vendors, tampering, filled_tdx_template(world, intel))


# --------------------------------------------------------------------------- the positive path


def test_a_whole_round_on_stapled_evidence_offline(host: Host, tmp_path: Path) -> None:
    host.aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=1))
    host.vendors.requests.clear()
    with host.client() as client:
        attested = client.attest()
        assert attested.evidence_kinds == (EvidenceKind.NVIDIA_GPU, EvidenceKind.INTEL_TDX)
        assert not attested.insecure and all(c.passed for c in attested.checks)
        names = {c.name: c for c in attested.checks}
        assert names["evidence[1] intel-tdx stapled collateral"].found == "7 stapled Intel PCS answers"
        assert names["evidence[1] intel-tdx TCB status"].found == "UpToDate"
        assert "replacement root" in names["evidence[1] intel-tdx quote signature and chain"].expected
        assert {f"evidence[1] intel-tdx {r}" for r in ("MRTD", "RTMR0", "RTMR3", "report data")} <= set(names)
        assert "verified (stapled" in names["evidence[0] nvidia-gpu RIM NV_GPU_DRIVER_GH100_570.86.10"].found
        receipt = client.submit_update(make_adapter(1), round_id=1, num_examples=10)
        assert receipt.entry.fields["client_id"] == "site-0"
        aggregate = client.fetch_aggregate(1, wait_seconds=10)
    assert aggregate.manifest.participants == ("site-0",)
    # Everything came from the bundle, and the host's cache served collections after start-up.
    assert host.vendors.requests == []

    # The auditor verifies the enclave's start-up bundle from the log, offline.
    assert audit_log(host.aggregator.log.path, host.policy).findings == ()
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(host.document))
    log = str(host.aggregator.log.path)
    assert audit_main(["verify", log, "--policy", str(policy_file), "--quiet"]) == 0
    # The shipped example (Intel's pinned root, another MRTD) refuses the same log.
    assert audit_main(["verify", log, "--builtin-policy", "example-tdx", "--quiet"]) == 1


def test_the_same_evidence_fails_the_vendor_root_pins(host: Host) -> None:
    """Only the policy's replaced roots make the test PKIs acceptable: under the pinned
    Intel SGX Root CA (and NVIDIA's roots) the same aggregator is refused for both."""
    document = json.loads(json.dumps(host.document))
    del document["intel_tdx"]["roots"], document["nvidia_gpu"]["roots"]
    pinned = Policy.from_json(json.dumps(document), source="test")
    with host.client(policy=pinned) as client, pytest.raises(AttestationError) as info:
        client.attest()
    failing = [c.name for c in info.value.checks if not c.passed]
    assert "evidence[0] nvidia-gpu GPU-0 certificate chain" in failing
    assert "evidence[1] intel-tdx quote signature and chain" in failing
    check = next(c for c in info.value.checks if c.name == "evidence[1] intel-tdx quote signature and chain")
    assert "pinned Intel SGX Root CA" in check.expected


def test_the_filled_template_differs_from_the_shipped_one_only_in_measurements_and_roots(host: Host) -> None:
    shipped: dict[str, Any] = load_policy_template("production-tdx-gpu")[0]
    filled = json.loads(json.dumps(host.document))
    for key in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "roots"):
        filled["intel_tdx"].pop(key)
    filled["nvidia_gpu"].pop("roots")
    del shipped["intel_tdx"]["mrtd"]
    assert filled == shipped


# ---------------------------------------------------- stapled items missing, expired, revoked


def _requests(host: Host) -> Any:
    return tdx_collateral_requests(parse_tdx_quote(host.intel.quote(bytes(64))))


def _drop(item: str) -> Callable[[Host], Callable[[Staples], Staples]]:
    def make(host: Host) -> Callable[[Staples], Staples]:
        key = getattr(_requests(host), item).staple_key()

        def edit(stapled: Staples) -> Staples:
            return {k: v for k, v in stapled.items() if k != key}

        return edit

    return make


def _replace(
    item: str, collateral: Callable[[IntelPki], str]
) -> Callable[[Host], Callable[[Staples], Staples]]:
    """Staple ``item`` from the collateral document ``collateral(pki)`` instead."""

    def make(host: Host) -> Callable[[Staples], Staples]:
        key = getattr(_requests(host), item).staple_key()
        replacement = host.intel.pcs_answers(collateral(host.intel))[key]

        def edit(stapled: Staples) -> Staples:
            return {**stapled, key: replacement}

        return edit

    return make


_PAST = 40 * DAY  # issued this long ago: a 30-day item expired 10 days ago

CASES: dict[str, tuple[Callable[[Host], Callable[[Staples], Staples]], type[AttestationError], bool]] = {
    # name: (edit of the stapled answers, refusal offline, accepted online)
    "TCB info missing": (_drop("tcb_info"), CollateralUnavailableError, True),
    "TCB info expired": (
        _replace("tcb_info", lambda p: p.collateral_json(tcb_info=p.tcb_info(issued=p.now - _PAST))),
        TdxCollateralError,
        True,
    ),
    "QE identity missing": (_drop("qe_identity"), CollateralUnavailableError, True),
    "QE identity expired": (
        _replace("qe_identity", lambda p: p.collateral_json(qe_identity=p.qe_identity(issued=p.now - _PAST))),
        TdxCollateralError,
        True,
    ),
    "PCK CRL missing": (_drop("pck_crl"), CollateralUnavailableError, True),
    "PCK CRL expired": (
        _replace(
            "pck_crl", lambda p: p.collateral_json(pck_crl=p.crl(p.platform_ca, this_update=p.now - _PAST))
        ),
        TdxCollateralError,
        True,
    ),
    "PCK CRL revokes the PCK certificate": (
        _replace(
            "pck_crl",
            lambda p: p.collateral_json(pck_crl=p.crl(p.platform_ca, revoked=[p.pck.serial_number])),
        ),
        TdxCertificateChainError,
        False,  # a valid CRL is authoritative: fetching does not overrule it
    ),
    "root CA CRL missing": (_drop("root_ca_crl"), CollateralUnavailableError, True),
    "root CA CRL expired": (
        _replace(
            "root_ca_crl", lambda p: p.collateral_json(root_ca_crl=p.crl(p.root, this_update=p.now - _PAST))
        ),
        TdxCollateralError,
        True,
    ),
    "root CA CRL revokes the Platform CA": (
        _replace(
            "root_ca_crl",
            lambda p: p.collateral_json(
                root_ca_crl=p.crl(p.root, revoked=[p.platform_ca.cert.serial_number])
            ),
        ),
        TdxCertificateChainError,
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_stapled_item_missing_expired_or_revoked(host: Host, case: str) -> None:
    make_edit, refusal, online_accepts = CASES[case]
    host.aggregator.rounds.open_round(round_config(1, min_clients=1, max_clients=2))
    host.tdx.edit = make_edit(host)
    host.vendors.requests.clear()

    with host.client() as client, pytest.raises(refusal) as info:
        client.submit_update(make_adapter(1), round_id=1, num_examples=10)
    assert isinstance(info.value, AttestationError)
    assert host.accepted() == 0  # nothing was sent
    assert host.vendors.requests == []  # stapled only: the client fetched nothing
    failing = [c.name for c in info.value.checks if not c.passed]
    assert failing and all(name.startswith("evidence[1] intel-tdx") for name in failing)

    with host.client(online=True, fetcher=host.vendors) as client:
        if online_accepts:
            attested = client.attest()
            assert all(c.passed for c in attested.checks)
            assert host.vendors.requests, "the missing or expired item was fetched"
            if "expired" in case:  # an expired staple is asked anew, not only a missing one
                stapled = next(
                    c for c in attested.checks if c.name == "evidence[1] intel-tdx stapled collateral"
                )
                assert "not valid at the verification time: Intel" in stapled.found
            client.submit_update(make_adapter(1), round_id=1, num_examples=10)
            assert host.accepted() == 1
        else:
            with pytest.raises(refusal):
                client.submit_update(make_adapter(1), round_id=1, num_examples=10)
            assert host.accepted() == 0


def test_tcb_info_freshness_limit_of_the_policy(host: Host) -> None:
    """TCB info within its nextUpdate but older than the policy allows is refused offline;
    online, a fresher one is fetched."""
    host.tdx.edit = _replace(
        "tcb_info", lambda p: p.collateral_json(tcb_info=p.tcb_info(issued=p.now - 10 * DAY))
    )(host)
    strict = Policy.from_json(
        json.dumps(filled_tdx_template(host.world, host.intel, max_tcb_info_age_seconds=86400)), source="test"
    )
    with host.client(policy=strict) as client, pytest.raises(TdxCollateralError, match="max_tcb_info_age"):
        client.attest()
    with host.client(policy=strict, online=True, fetcher=host.vendors) as client:
        client.attest()
    with host.client() as client:  # the template's 30 days: the same staple is good
        client.attest()


# --------------------------------------------------------------------------- Intel's TCB rating


@pytest.mark.parametrize(
    "status",
    [TdxTcbStatus.OUT_OF_DATE, TdxTcbStatus.SW_HARDENING_NEEDED, TdxTcbStatus.REVOKED],
    ids=lambda s: s.value,
)
def test_intels_tcb_rating_of_the_platform(status: TdxTcbStatus) -> None:
    """The test PCS rates the platform below UpToDate: the template (UpToDate only) refuses
    with the TCB error; a policy that allows the rating accepts it with Intel's advisory,
    except Revoked, which no policy can allow and dcap-qvl refuses outright."""
    intel = IntelPki()
    report_data = bytes(range(64))
    quote = intel.quote(report_data)
    rated = intel.pcs_answers(intel.collateral_json(tcb_info=intel.tcb_info(platform_status=status)))
    policy = TdxPolicy(mrtd=(MRTD,), sgx_root_ca=intel.root.cert)
    options: dict[str, Any] = {"expected_report_data": report_data, "fetcher": OfflineFetcher(rated)}
    with pytest.raises(CpuTcbError):
        verify_tdx_quote(quote, policy=policy, **options)
    if status is TdxTcbStatus.REVOKED:
        return
    allowing = TdxPolicy(mrtd=(MRTD,), sgx_root_ca=intel.root.cert, allowed_tcb_statuses=(status,))
    verified = verify_tdx_quote(quote, policy=allowing, **options)
    assert verified.tcb_status is status and verified.advisory_ids == ("INTEL-SA-00837",)
    # And the platform's own UpToDate collateral passes the strict policy.
    good = verify_tdx_quote(
        quote, policy=policy, **{**options, "fetcher": OfflineFetcher(intel.pcs_answers())}
    )
    assert good.tcb_status is TdxTcbStatus.UP_TO_DATE and good.advisory_ids == ()


# --------------------------------------------------------------------------- the test PKI itself


def _extension_shape(pem_chain: bytes) -> list[object]:
    """The SGX extension of a chain's leaf as its OIDs and value types, in order."""
    leaf = x509.load_pem_x509_certificates(pem_chain.rstrip(b"\0"))[0]
    value = leaf.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSION_OID)).value
    assert isinstance(value, x509.UnrecognizedExtension)
    decoder = asn1.Decoder()
    decoder.start(value.value)
    shape: list[object] = []

    def walk() -> None:
        while (tag := decoder.peek()) is not None:
            if tag.typ == asn1.Types.Constructed:
                decoder.enter()
                walk()
                decoder.leave()
            else:
                _, found = decoder.read()
                shape.append(found if tag.nr == asn1.Numbers.ObjectIdentifier else tag.nr)

    walk()
    return shape


def _layout(quote: bytes) -> tuple[object, ...]:
    """Header fields, certification data types and QE auth data size of a v4 quote."""
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    signature_data = 48 + 584 + 4
    outer_type, _ = struct.unpack_from("<HI", quote, signature_data + 128)
    qe_auth_at = signature_data + 128 + 6 + 384 + 64
    (auth_size,) = struct.unpack_from("<H", quote, qe_auth_at)
    inner_type, _ = struct.unpack_from("<HI", quote, qe_auth_at + 2 + auth_size)
    return version, key_type, tee_type, quote[12:28], outer_type, auth_size, inner_type


def test_the_test_quote_is_laid_out_like_the_real_sample() -> None:
    """The test PKI's quote and PCK certificate have the real sample's layout: the same
    header fields and certification data nesting, and an SGX extension with the same OIDs
    and value types in the same order; dcap-qvl reads the test values back."""
    real = (TDX_SAMPLES / "dcap-qvl" / "tdx_quote").read_bytes()
    intel = IntelPki()
    test = intel.quote(bytes(64))
    assert _layout(test) == _layout(real) == (4, 2, 0x81, _layout(real)[3], 6, 32, 5)
    parsed = dcap_qvl.parse_quote(test)
    assert _extension_shape(bytes(parsed.cert_chain_pem_bytes())) == _extension_shape(
        bytes(dcap_qvl.parse_quote(real).cert_chain_pem_bytes())
    )
    extension = parsed.pck_extension()
    assert (bytes(extension.fmspc), bytes(extension.cpu_svn), extension.pce_svn) == (FMSPC, CPUSVN, PCESVN)
    assert (parsed.ca(), bytes(extension.ppid)) == ("platform", intel.ppid)

"""NRAS tokens end to end at unit level: the aggregator's real ``NrasTokenStapler`` asks a
test NRAS (behind the CollateralFetcher interface, signing with a test key), verifies the
token and staples it with NRAS's key set; ``verify_bundle`` (what ``FedSealClient`` runs)
accepts or refuses it under the policy's ``nvidia_gpu.nras`` and ``nras_key_pins``.

The GPU evidence is the test NVIDIA PKI's (``nvidia_pki``), over the nonce derived from
each bundle's binding, with its RIMs and OCSP answers stapled, so everything but the NRAS
part passes offline; the policy replaces NVIDIA's roots with the test PKI's.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nvidia_pki import NOW, FakeFetcher, NrasIssuer, NrasService, World, make_world

from attestation import (
    AttestationError,
    CollateralCache,
    CollateralEvent,
    CollateralUnavailableError,
    Evidence,
    EvidenceBundle,
    EvidenceFormatError,
    EvidenceKind,
    OfflineFetcher,
    Policy,
    PolicyError,
    VerifiedAttestation,
    build_bundle,
    verify_bundle,
)
from attestation.nvidia import (
    NRAS_GPU_ATTEST_URL,
    NRAS_JWKS_URL,
    NrasNonceMismatchError,
    NrasStapleOutcome,
    NrasTokenError,
    NrasTokenRequiredError,
    NrasTokenStapler,
    NrasUntrustedKeyError,
    NvidiaGpuEvidence,
    nras_attest_request,
    nras_key_set_pins,
    parse_nvidia_gpu_payload,
    spdm_nonce_for_binding,
)
from fedseal.binding import BoundKeys

MINUTE = datetime.timedelta(minutes=1)


class GpuHost:
    """The GPU collector of a host with the test PKI's GPU, its RIMs and OCSP answers stapled."""

    kind = EvidenceKind.NVIDIA_GPU

    def __init__(self, world: World, gpus: int = 1) -> None:
        self.world, self.gpus = world, gpus

    def collect(self, binding: bytes) -> Evidence:
        evidence = self.world.evidence(
            spdm_nonce_for_binding(binding), gpus=self.gpus, ocsp_responses=self.world.good_ocsp()
        )
        return Evidence(kind=EvidenceKind.NVIDIA_GPU, payload=evidence.to_payload())


@dataclass
class Clock:
    now: datetime.datetime = NOW

    def __call__(self) -> datetime.datetime:
        return self.now


@dataclass
class Aggregator:
    """The NVIDIA part of an aggregator host with ``--nras``: the real stapler over test NRAS."""

    world: World
    nras: NrasService
    clock: Clock
    stapler: NrasTokenStapler
    cache_events: list[tuple[CollateralEvent, str]]
    outcomes: list[tuple[NrasStapleOutcome, str]] = field(default_factory=list)

    def bundle(self, challenge: bytes | None = None) -> tuple[EvidenceBundle, bytes]:
        challenge = challenge if challenge is not None else os.urandom(32)
        keys = BoundKeys(
            hpke_public_key=X25519PrivateKey.generate().public_key().public_bytes_raw(),
            log_public_key=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
        )
        return build_bundle(keys, challenge, [self.stapler]), challenge

    def gpu_evidence(self, bundle: EvidenceBundle) -> NvidiaGpuEvidence:
        return parse_nvidia_gpu_payload(bundle.evidence[0].payload)


def _aggregator(world: World, *, gpus: int = 1, issuer: NrasIssuer | None = None) -> Aggregator:
    clock = Clock()
    nras = NrasService(issuer or NrasIssuer(), clock=clock)
    events: list[tuple[CollateralEvent, str]] = []
    cache = CollateralCache(nras, clock=clock, on_event=lambda e, what: events.append((e, what)))
    outcomes: list[tuple[NrasStapleOutcome, str]] = []
    stapler = NrasTokenStapler(
        GpuHost(world, gpus),
        cache,
        nras,
        anchors=world.anchors,
        on_outcome=lambda o, reason: outcomes.append((o, reason)),
    )
    return Aggregator(world, nras, clock, stapler, events, outcomes)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world()


@pytest.fixture
def host(world: World) -> Aggregator:
    return _aggregator(world)


def _policy(world: World, **gpu: Any) -> Policy:
    collateral = gpu.pop("collateral", None)
    document: dict[str, Any] = {
        "schema": "fedseal-policy/v1",
        "name": "nras-test",
        "required_evidence": ["nvidia-gpu"],
        "nvidia_gpu": {
            "roots": {
                "device_identity_ca": world.device.root.cert.public_bytes(Encoding.PEM).decode(),
                "rim_signing_ca": world.rims.root.cert.public_bytes(Encoding.PEM).decode(),
            },
            **gpu,
        },
    }
    if collateral is not None:
        document["collateral"] = collateral
    return Policy.from_json(json.dumps(document), source="test")


def _pinned(host: Aggregator) -> Policy:
    return _policy(host.world, nras="required", nras_key_pins=[host.nras.issuer.pin()])


def _nras_row(attested: VerifiedAttestation) -> str:
    return next(c.found for c in attested.checks if c.name.endswith("NRAS token"))


def _refusal(bundle: EvidenceBundle, policy: Policy, challenge: bytes, **options: Any) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        verify_bundle(bundle, policy, challenge, now=NOW, **options)
    return info.value


def _restaple(bundle: EvidenceBundle, **changes: Any) -> EvidenceBundle:
    """What a broken or malicious aggregator serves: the same bundle with its NRAS part changed."""
    evidence = parse_nvidia_gpu_payload(bundle.evidence[0].payload)
    fields = {
        "gpus": evidence.gpus,
        "rims": evidence.rims,
        "ocsp_responses": evidence.ocsp_responses,
        "nras_token": evidence.nras_token,
        "nras_jwks": evidence.nras_jwks,
        **changes,
    }
    item = Evidence(kind=EvidenceKind.NVIDIA_GPU, payload=NvidiaGpuEvidence(**fields).to_payload())
    return EvidenceBundle(
        hpke_public_key=bundle.hpke_public_key,
        log_public_key=bundle.log_public_key,
        challenge=bundle.challenge,
        binding=bundle.binding,
        evidence=(item,),
        tls_certificate_sha256=bundle.tls_certificate_sha256,
    )


# --------------------------------------------------------------------------- the positive path


def test_a_stapled_token_is_accepted_offline_under_a_policy_requiring_it(host: Aggregator) -> None:
    bundle, challenge = host.bundle()
    stapled = host.gpu_evidence(bundle)
    assert stapled.nras_token is not None and stapled.nras_jwks == host.nras.issuer.jwks()
    assert host.outcomes == [(NrasStapleOutcome.STAPLED, "")]
    # What the stapler sent NRAS: the reports and chains, for the SPDM nonce of this binding.
    sent = [r for r in host.nras.requests if r.url == NRAS_GPU_ATTEST_URL]
    assert len(sent) == 1 and sent[0].body is not None
    body = json.loads(sent[0].body)
    assert body["nonce"] == spdm_nonce_for_binding(bundle.binding).hex()
    assert body["claims_version"] == "3.0" and body["arch"] == "HOPPER"

    attested = verify_bundle(bundle, _pinned(host), challenge, now=NOW)  # stapled only: no fetcher
    assert "key pinned by the policy" in _nras_row(attested)
    assert all(c.passed for c in attested.checks)


def test_the_request_is_the_one_nvidias_sdk_sends(world: World) -> None:
    """Chains go to NRAS as nv-local-gpu-verifier sends them: the device's certificates with
    their self-signed root replaced by the (pinned) NVIDIA root; reports as collected."""
    nonce = os.urandom(32)
    evidence = world.evidence(nonce, gpus=2)
    request = nras_attest_request(evidence, nonce, anchors=world.anchors)
    assert request.url == NRAS_GPU_ATTEST_URL and request.content_type == "application/json"
    assert request.body is not None
    body = json.loads(request.body)
    assert sorted(body) == ["arch", "claims_version", "evidence_list", "nonce"]
    assert len(body["evidence_list"]) == 2
    entry = body["evidence_list"][0]
    assert base64.b64decode(entry["evidence"]) == evidence.gpus[0].attestation_report
    chain = x509.load_pem_x509_certificates(base64.b64decode(entry["certificate"]))
    assert chain[-1] == world.anchors.device_root and chain[0] == world.device.leaf.cert
    assert len(chain) == len(x509.load_pem_x509_certificates(evidence.gpus[0].certificate_chain))


def test_the_key_set_is_cached_and_the_token_is_not(host: Aggregator) -> None:
    for _ in range(3):
        host.bundle()
    urls = [r.url for r in host.nras.requests]
    assert urls.count(NRAS_GPU_ATTEST_URL) == 3  # one token per challenge
    assert urls.count(NRAS_JWKS_URL) == 1  # the key set came from the cache after the first
    assert [e for e, what in host.cache_events if what == "NRAS key set"] == [
        CollateralEvent.FETCHED,
        CollateralEvent.CACHED,
        CollateralEvent.CACHED,
    ]
    host.clock.now += datetime.timedelta(hours=1, minutes=1)  # past its refresh time: fetched anew
    host.bundle()
    assert [r.url for r in host.nras.requests].count(NRAS_JWKS_URL) == 2


def test_online_the_verifier_fetches_the_key_set_itself(host: Aggregator) -> None:
    bundle, challenge = host.bundle()
    online = _policy(host.world, nras="required", collateral={"source": "online"})
    network = FakeFetcher(host.nras.issuer.fetcher_answers())
    attested = verify_bundle(bundle, online, challenge, now=NOW, fetcher=network)
    assert "key set fetched by this verifier" in _nras_row(attested)
    assert [r.url for r in network.requests] == [NRAS_JWKS_URL]
    # The same policy forced offline has only the aggregator's word for the key set.
    refusal = _refusal(bundle, online, challenge, fetcher=OfflineFetcher())
    assert type(refusal) is NrasUntrustedKeyError and "aggregator's staple" in str(refusal)


def test_if_present_accepts_a_stapled_key_set_and_says_it_is_the_aggregators(host: Aggregator) -> None:
    bundle, challenge = host.bundle()
    attested = verify_bundle(bundle, _policy(host.world), challenge, now=NOW)
    assert "key set stapled by the aggregator, not pinned" in _nras_row(attested)
    # Without a token, if-present passes on the local checks alone; required refuses by name.
    bare = _restaple(bundle, nras_token=None, nras_jwks=None)
    verify_bundle(bare, _policy(host.world), challenge, now=NOW)
    refusal = _refusal(bare, _pinned(host), challenge)
    assert type(refusal) is NrasTokenRequiredError


# --------------------------------------------------------------------------- NRAS down


def test_nras_down_serves_evidence_without_a_token_and_a_requiring_client_refuses(
    host: Aggregator, caplog: pytest.LogCaptureFixture
) -> None:
    host.nras.down = True
    with caplog.at_level(logging.WARNING, logger="attestation.nvidia._nras_staple"):
        bundle, challenge = host.bundle()
    assert host.gpu_evidence(bundle).nras_token is None
    assert host.gpu_evidence(bundle).rims, "the rest of the evidence is served as collected"
    assert [o for o, _ in host.outcomes] == [NrasStapleOutcome.FAILED]
    (record,) = [r for r in caplog.records if "NRAS token not stapled" in r.getMessage()]
    assert "\n" not in record.getMessage() and "CollateralUnavailableError" in record.getMessage()

    refusal = _refusal(bundle, _pinned(host), challenge)
    assert type(refusal) is NrasTokenRequiredError
    assert [c.name for c in refusal.checks if not c.passed] == ["evidence[0] nvidia-gpu NRAS token"]
    verify_bundle(bundle, _policy(host.world), challenge, now=NOW)  # if-present: still accepted

    # Within the retry pause NRAS is not asked again; after it, and back up, tokens return.
    asked = len(host.nras.requests)
    host.bundle()
    assert len(host.nras.requests) == asked
    host.nras.down = False
    host.clock.now += 2 * MINUTE
    bundle, challenge = host.bundle()
    assert [o for o, _ in host.outcomes[-2:]] == [NrasStapleOutcome.SKIPPED, NrasStapleOutcome.STAPLED]
    verify_bundle(bundle, _pinned(host), challenge, now=NOW + 2 * MINUTE)


def test_after_a_failure_nras_is_not_asked_again_for_a_minute(host: Aggregator) -> None:
    """The pause is a minute, not merely "some while": NRAS (back up at once) is left alone
    at 59 s after the failure and asked again at 61 s."""
    host.nras.down = True
    failed_at = host.clock.now
    host.bundle()
    assert [o for o, _ in host.outcomes] == [NrasStapleOutcome.FAILED]
    host.nras.down = False
    asked = len(host.nras.requests)

    host.clock.now = failed_at + datetime.timedelta(seconds=59)
    bundle, _ = host.bundle()
    assert len(host.nras.requests) == asked, "NRAS was asked again within the minute"
    assert host.gpu_evidence(bundle).nras_token is None
    assert host.outcomes[-1][0] is NrasStapleOutcome.SKIPPED

    host.clock.now = failed_at + datetime.timedelta(seconds=61)
    bundle, challenge = host.bundle()
    assert [r.url for r in host.nras.requests[asked:]].count(NRAS_GPU_ATTEST_URL) == 1
    assert host.outcomes[-1] == (NrasStapleOutcome.STAPLED, "")
    verify_bundle(bundle, _pinned(host), challenge, now=host.clock.now)


@pytest.mark.parametrize(
    ("misbehaviour", "why"),
    [
        pytest.param({"key": ec.generate_private_key(ec.SECP384R1())}, "signature", id="wrong-key"),
        pytest.param({"gpus": 2}, "covers 2 GPU", id="gpu-count"),
        pytest.param({"gpu_claims": {"measres": "fail"}}, "measurement result", id="measres"),
        pytest.param({"gpu_claims": {"eat_nonce": "00" * 32}}, "eat_nonce", id="wrong-nonce"),
    ],
)
def test_the_aggregator_never_staples_a_token_that_does_not_verify(
    host: Aggregator, misbehaviour: dict[str, object], why: str
) -> None:
    host.nras.token_args = misbehaviour
    bundle, _ = host.bundle()
    assert host.gpu_evidence(bundle).nras_token is None
    (outcome, reason) = host.outcomes[-1]
    assert outcome is NrasStapleOutcome.FAILED and why in reason


def test_an_expired_key_set_is_not_stapled(world: World) -> None:
    host = _aggregator(world, issuer=NrasIssuer(not_after=NOW - MINUTE))  # its x5c has expired
    bundle, _ = host.bundle()
    assert host.gpu_evidence(bundle).nras_token is None
    assert host.outcomes[-1][0] is NrasStapleOutcome.FAILED
    assert "StapledCollateralExpiredError" in host.outcomes[-1][1]


# --------------------------------------------------------------------------- client refusals


def _other_token(host: Aggregator, bundle: EvidenceBundle, **token_args: Any) -> str:
    nonce = spdm_nonce_for_binding(bundle.binding)
    return host.nras.issuer.token(
        token_args.pop("nonce", nonce), now=token_args.pop("now", NOW), **token_args
    )


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("wrong nonce", NrasNonceMismatchError),
        ("wrong key", NrasTokenError),
        ("expired", NrasTokenError),
        ("key set of the aggregator's own key", NrasUntrustedKeyError),
        ("key set missing", CollateralUnavailableError),
    ],
)
def test_a_bad_stapled_token_is_refused_by_name(
    host: Aggregator, case: str, error: type[AttestationError]
) -> None:
    """What a malicious aggregator could staple, verified by a stapled-only client that pins NRAS's key."""
    bundle, challenge = host.bundle()
    forger = NrasIssuer(kid=host.nras.issuer.kid)  # same key id, the aggregator's own key
    cases: dict[str, dict[str, Any]] = {
        "wrong nonce": {"nras_token": _other_token(host, bundle, nonce=os.urandom(32))},
        "wrong key": {"nras_token": _other_token(host, bundle, key=forger.key)},
        "expired": {"nras_token": _other_token(host, bundle, now=NOW - datetime.timedelta(hours=3))},
        "key set of the aggregator's own key": {
            "nras_token": forger.token(spdm_nonce_for_binding(bundle.binding)),
            "nras_jwks": forger.jwks(),
        },
        "key set missing": {"nras_jwks": None},
    }
    refusal = _refusal(_restaple(bundle, **cases[case]), _pinned(host), challenge)
    assert type(refusal) is error, f"{type(refusal).__name__}: {refusal}"
    assert [c.name for c in refusal.checks if not c.passed] == ["evidence[0] nvidia-gpu NRAS token"]
    if case == "key set missing":
        assert NRAS_JWKS_URL in str(refusal)


def test_a_pinned_policy_refuses_another_key_even_from_nras_itself(host: Aggregator) -> None:
    """With pins, only pinned keys count, whatever the key set's source: stapled or fetched."""
    stapled, challenge = host.bundle()
    other = NrasIssuer()
    network = FakeFetcher(host.nras.issuer.fetcher_answers())
    for bundle, collateral, options in (
        (stapled, {"source": "stapled"}, {}),
        (_restaple(stapled, nras_jwks=None), {"source": "online"}, {"fetcher": network}),
    ):
        pinned_other = _policy(
            host.world, nras="if-present", nras_key_pins=[other.pin()], collateral=collateral
        )
        refusal = _refusal(bundle, pinned_other, challenge, **options)
        assert type(refusal) is NrasUntrustedKeyError and host.nras.issuer.pin() in str(refusal)
    assert [r.url for r in network.requests] == [NRAS_JWKS_URL]


def test_policy_keys_parse_strictly(world: World) -> None:
    issuer = NrasIssuer()
    assert _policy(world).nvidia_gpu.nras.value == "if-present"
    pinned = _policy(world, nras="required", nras_key_pins=[issuer.pin()])
    assert pinned.nvidia_gpu.nras_key_pins == frozenset({bytes.fromhex(issuer.pin())})
    assert nras_key_set_pins(issuer.jwks()) == {issuer.kid: bytes.fromhex(issuer.pin())}
    # The pin is what policies/README.md says: SHA-256 of the x5c certificate's public key.
    (key,) = json.loads(issuer.jwks())["keys"]
    certificate = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert hashlib.sha256(spki).hexdigest() == issuer.pin()
    bad: list[tuple[dict[str, Any], str]] = [
        ({"nras": "if_present"}, "'nvidia_gpu.nras' must be one of 'if-present', 'required'"),
        ({"nras": True}, "'nvidia_gpu.nras' must be one of"),
        ({"nras_key_pins": []}, "array of 1 to 32 pins"),
        ({"nras_key_pins": [issuer.pin().upper()]}, "64 lower-case hex digits"),
        ({"nras_key_pins": [issuer.pin()[:-2]]}, "64 lower-case hex digits"),
        ({"nras_key_pins": [issuer.pin(), issuer.pin()]}, "repeats a pin"),
        ({"nras": "required"}, "no bundle could pass: pin NVIDIA's NRAS keys or verify online"),
    ]
    for gpu, message in bad:
        with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
            _policy(world, **gpu)
    # Required without pins is coherent for a client that verifies online.
    assert (
        _policy(world, nras="required", collateral={"source": "online"}).nvidia_gpu.nras.value == "required"
    )


def test_the_payload_carries_a_key_set_only_beside_a_token(world: World) -> None:
    evidence = world.evidence(os.urandom(32))
    with pytest.raises(EvidenceFormatError, match="only beside an nras_token"):
        NvidiaGpuEvidence(gpus=evidence.gpus, nras_jwks=b"{}")
    stapled = NvidiaGpuEvidence(gpus=evidence.gpus, nras_token="t", nras_jwks=b'{"keys": []}')
    assert parse_nvidia_gpu_payload(stapled.to_payload()) == stapled

"""Evidence bundle format, simulated collector, and verify_bundle."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import attestation
from attestation import (
    MAX_BUNDLE_SIZE,
    AttestationError,
    BindingMismatchError,
    BundleFormatError,
    DuplicateEvidenceError,
    Evidence,
    EvidenceBundle,
    EvidenceCollectionError,
    EvidenceFormatError,
    EvidenceKind,
    EvidenceSignatureError,
    InsecureSimulatedTeeCollector,
    Policy,
    PolicyViolationError,
    SimulatedEvidenceRefusedError,
    VerifiedAttestation,
    build_bundle,
    load_builtin_policy,
    simulated_measurement,
    verify_bundle,
)
from attestation.cpu import SevSnpPolicy, TdxPolicy
from fedseal.binding import BoundKeys, compute_binding
from fedseal.errors import FedSealError, FormatError, SignatureError

JsonObject = dict[str, object]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _new_keys() -> BoundKeys:
    return BoundKeys(
        hpke_public_key=X25519PrivateKey.generate().public_key().public_bytes_raw(),
        log_public_key=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
    )


@pytest.fixture
def keys() -> BoundKeys:
    return _new_keys()


@pytest.fixture
def challenge() -> bytes:
    return os.urandom(32)


@pytest.fixture
def collector() -> InsecureSimulatedTeeCollector:
    return InsecureSimulatedTeeCollector("fedseal-aggregator test build")


@pytest.fixture
def bundle(keys: BoundKeys, challenge: bytes, collector: InsecureSimulatedTeeCollector) -> EvidenceBundle:
    return build_bundle(keys, challenge, [collector])


@pytest.fixture
def dev_policy() -> Policy:
    return load_builtin_policy("dev-insecure-allow-simulated")


@pytest.fixture
def default_policy() -> Policy:
    return load_builtin_policy("default")


def _document(bundle: EvidenceBundle) -> JsonObject:
    document = json.loads(bundle.to_bytes())
    assert isinstance(document, dict)
    return document


def _encode(document: JsonObject) -> bytes:
    # Re-encode canonically so that each malformed case trips exactly the check it targets.
    return rfc8785.dumps(document)  # type: ignore[arg-type]


def _evidence_items(document: JsonObject) -> list[JsonObject]:
    items = document["evidence"]
    assert isinstance(items, list)
    return items


def _payload_of(bundle: EvidenceBundle) -> JsonObject:
    payload = json.loads(bundle.evidence[0].payload)
    assert isinstance(payload, dict)
    return payload


def _with_payload(bundle: EvidenceBundle, payload: bytes) -> EvidenceBundle:
    return dataclasses.replace(bundle, evidence=(Evidence(EvidenceKind.SIMULATED_INSECURE, payload),))


# --- bundle format -------------------------------------------------------------------


def test_bundle_round_trip(bundle: EvidenceBundle) -> None:
    data = bundle.to_bytes()
    assert EvidenceBundle.from_bytes(data) == bundle
    assert bundle.digest() == hashlib.sha256(data).digest()
    assert rfc8785.dumps(json.loads(data)) == data  # canonical JSON
    document = _document(bundle)
    assert document["format"] == "fedseal-evidence-bundle/v1"
    assert document["hpke_public_key"] == _b64(bundle.hpke_public_key)
    assert _evidence_items(document)[0]["kind"] == "simulated-insecure-tee"
    assert bundle.version == 1


def test_bundle_binding_is_the_shared_binding(
    bundle: EvidenceBundle, keys: BoundKeys, challenge: bytes
) -> None:
    assert bundle.binding == compute_binding(keys.hpke_public_key, keys.log_public_key, challenge)
    assert bundle.challenge == challenge


Mutation = Callable[[JsonObject], None]


def _drop(key: str) -> Mutation:
    def mutate(document: JsonObject) -> None:
        del document[key]

    return mutate


def _set(key: str, value: object) -> Mutation:
    def mutate(document: JsonObject) -> None:
        document[key] = value

    return mutate


def _set_item(key: str, value: object) -> Mutation:
    def mutate(document: JsonObject) -> None:
        _evidence_items(document)[0][key] = value

    return mutate


def _drop_item(key: str) -> Mutation:
    def mutate(document: JsonObject) -> None:
        del _evidence_items(document)[0][key]

    return mutate


# A 32-byte value in base64 ends in one pad char; "A=" -> "B=" sets a non-zero trailing bit.
_NON_CANONICAL_B64 = _b64(bytes(32))[:-2] + "B="

STRICT_PARSE_CASES: list[tuple[str, Mutation, str]] = [
    *[
        (f"missing {k}", _drop(k), k)
        for k in ("format", "hpke_public_key", "log_public_key", "challenge", "binding", "evidence")
    ],
    ("unknown field", _set("extra", "x"), "extra"),
    ("short hpke key", _set("hpke_public_key", _b64(bytes(31))), "hpke_public_key"),
    ("long log key", _set("log_public_key", _b64(bytes(33))), "log_public_key"),
    ("short challenge", _set("challenge", _b64(bytes(16))), "challenge"),
    ("short binding", _set("binding", _b64(bytes(31))), "binding"),
    ("bad base64", _set("binding", "!!!not base64!!!"), "binding"),
    ("unpadded base64", _set("challenge", _b64(bytes(32)).rstrip("=")), "challenge"),
    ("non-canonical base64", _set("challenge", _NON_CANONICAL_B64), "challenge"),
    ("url-safe base64", _set("challenge", _b64(b"\xfb" * 32).replace("+", "-")), "challenge"),
    ("number instead of base64", _set("binding", 7), "binding"),
    ("newer version", _set("format", "fedseal-evidence-bundle/v3"), "format"),
    ("v2 without the TLS digest", _set("format", "fedseal-evidence-bundle/v2"), "tls_certificate_sha256"),
    ("not a bundle", _set("format", "something-else"), "format"),
    ("evidence not a list", _set("evidence", {"kind": "x"}), "evidence"),
    ("evidence empty", _set("evidence", []), "evidence"),
    ("evidence item not an object", _set("evidence", ["x"]), "evidence[0]"),
    ("unknown evidence kind", _set_item("kind", "quantum-tee"), "evidence[0].kind"),
    ("evidence kind not a string", _set_item("kind", 3), "evidence[0].kind"),
    ("evidence payload missing", _drop_item("payload"), "evidence[0].payload"),
    ("evidence payload empty", _set_item("payload", ""), "evidence[0].payload"),
    ("evidence payload bad base64", _set_item("payload", "%%"), "evidence[0].payload"),
    ("evidence unknown field", _set_item("note", "hi"), "evidence[0].note"),
]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [pytest.param(m, f, id=name) for name, m, f in STRICT_PARSE_CASES],
)
def test_strict_parse_names_the_field(bundle: EvidenceBundle, mutate: Mutation, field: str) -> None:
    document = _document(bundle)
    mutate(document)
    with pytest.raises(BundleFormatError) as info:
        EvidenceBundle.from_bytes(_encode(document))
    assert info.value.field == field
    assert field.split(".")[-1].split("[")[0] in str(info.value)


def test_too_many_evidence_items(bundle: EvidenceBundle) -> None:
    document = _document(bundle)
    document["evidence"] = _evidence_items(document) * 65
    with pytest.raises(BundleFormatError, match="1 to 64"):
        EvidenceBundle.from_bytes(_encode(document))


def test_the_same_evidence_item_twice_is_refused_by_name(bundle: EvidenceBundle) -> None:
    document = _document(bundle)
    document["evidence"] = _evidence_items(document) * 2
    with pytest.raises(DuplicateEvidenceError, match=r"evidence\[1\] repeats evidence\[0\]") as info:
        EvidenceBundle.from_bytes(_encode(document))
    assert info.value.field == "evidence[1]"
    with pytest.raises(DuplicateEvidenceError):
        dataclasses.replace(bundle, evidence=(*bundle.evidence, bundle.evidence[0]))
    # the same kind with another payload is a different item (several GPUs, several reports)
    other = Evidence(bundle.evidence[0].kind, bundle.evidence[0].payload + b" ")
    assert len(dataclasses.replace(bundle, evidence=(*bundle.evidence, other)).evidence) == 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\xff\xfe{}", "UTF-8", id="not-utf8"),
        pytest.param(b"{not json", "not valid JSON", id="not-json"),
        pytest.param(b"[]", "JSON object", id="not-object"),
        pytest.param(b'{"a":1,"a":2}', "duplicate key", id="duplicate-key"),
        pytest.param(b'{"a":NaN}', "NaN", id="nan"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nests JSON deeper than 32 levels", id="deep"),
    ],
)
def test_parse_rejects_non_json(data: bytes, message: str) -> None:
    with pytest.raises(BundleFormatError, match=message):
        EvidenceBundle.from_bytes(data)


def test_parse_rejects_non_canonical_json(bundle: EvidenceBundle) -> None:
    pretty = json.dumps(_document(bundle), indent=2).encode()
    with pytest.raises(BundleFormatError, match="canonical"):
        EvidenceBundle.from_bytes(pretty)
    reordered = json.dumps(dict(reversed(list(_document(bundle).items())))).encode()
    with pytest.raises(BundleFormatError, match="canonical"):
        EvidenceBundle.from_bytes(reordered)


def test_parse_bounds_input_size() -> None:
    with pytest.raises(BundleFormatError, match="more than"):
        EvidenceBundle.from_bytes(b" " * (MAX_BUNDLE_SIZE + 1))


def test_bundle_format_error_is_a_format_error(bundle: EvidenceBundle) -> None:
    with pytest.raises(FormatError):
        EvidenceBundle.from_bytes(b"{}")
    with pytest.raises(ValueError, match="missing"):
        EvidenceBundle.from_bytes(b"{}")


def test_constructor_checks_shape(bundle: EvidenceBundle) -> None:
    with pytest.raises(BundleFormatError, match="hpke_public_key"):
        dataclasses.replace(bundle, hpke_public_key=b"short")
    with pytest.raises(BundleFormatError, match="evidence"):
        dataclasses.replace(bundle, evidence=())
    with pytest.raises(BundleFormatError, match="tls_certificate_sha256"):
        dataclasses.replace(bundle, tls_certificate_sha256=b"short")
    assert bundle.version == 1 and dataclasses.replace(bundle, tls_certificate_sha256=bytes(32)).version == 2
    with pytest.raises(BundleFormatError):
        Evidence(EvidenceKind.NVIDIA_GPU, b"")


def test_evidence_kind_values() -> None:
    assert {k.value for k in EvidenceKind} == {
        "simulated-insecure-tee",
        "nvidia-gpu",
        "amd-sev-snp",
        "intel-tdx",
    }


# --- simulated collector -------------------------------------------------------------


def test_simulated_payload_format(bundle: EvidenceBundle, collector: InsecureSimulatedTeeCollector) -> None:
    payload = _payload_of(bundle)
    assert set(payload) == {
        "type",
        "warning",
        "report_data",
        "measurement",
        "signing_key",
        "signature",
    }
    assert payload["type"] == "fedseal-INSECURE-simulated-tee/v1"
    assert payload["warning"] == "SIMULATED TEE: NO HARDWARE PROTECTION, FOR DEVELOPMENT ONLY"
    assert payload["report_data"] == bundle.binding.hex()
    expected_measurement = hashlib.sha256(b"fedseal-aggregator test build").digest()
    assert payload["measurement"] == expected_measurement.hex()
    assert collector.measurement == expected_measurement
    assert simulated_measurement("fedseal-aggregator test build") == expected_measurement
    assert rfc8785.dumps(payload) == bundle.evidence[0].payload  # type: ignore[arg-type]
    # The signature covers the canonical JSON of every other field.
    signature = base64.b64decode(str(payload.pop("signature")))
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(str(payload["signing_key"])))
    key.verify(signature, rfc8785.dumps(payload))  # type: ignore[arg-type]


def test_each_collector_has_its_own_throwaway_key(keys: BoundKeys, challenge: bytes) -> None:
    first = build_bundle(keys, challenge, [InsecureSimulatedTeeCollector("x")])
    second = build_bundle(keys, challenge, [InsecureSimulatedTeeCollector("x")])
    assert _payload_of(first)["signing_key"] != _payload_of(second)["signing_key"]


def test_collector_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        collector = InsecureSimulatedTeeCollector("dev")
    assert "INSECURE" in caplog.text
    assert "NO hardware protection" in caplog.text
    assert collector.measurement.hex() in repr(collector)
    assert collector.kind is EvidenceKind.SIMULATED_INSECURE


def test_collector_refuses_bad_binding(collector: InsecureSimulatedTeeCollector) -> None:
    with pytest.raises(EvidenceCollectionError):
        collector.collect(b"short")


def test_collector_satisfies_protocol(collector: InsecureSimulatedTeeCollector) -> None:
    assert isinstance(collector, attestation.EvidenceCollector)


def test_build_bundle_needs_a_collector(keys: BoundKeys, challenge: bytes) -> None:
    with pytest.raises(EvidenceCollectionError, match="no evidence collector"):
        build_bundle(keys, challenge, [])


def test_build_bundle_refuses_collector_of_wrong_kind(keys: BoundKeys, challenge: bytes) -> None:
    class Liar:
        kind = EvidenceKind.NVIDIA_GPU

        def collect(self, binding: bytes) -> Evidence:
            return InsecureSimulatedTeeCollector("liar").collect(binding)

    with pytest.raises(EvidenceCollectionError, match="another kind"):
        build_bundle(keys, challenge, [Liar()])


def test_build_bundle_refuses_bad_challenge(keys: BoundKeys) -> None:
    with pytest.raises(FormatError, match="challenge"):
        build_bundle(keys, b"short", [InsecureSimulatedTeeCollector("x")])


# --- verification --------------------------------------------------------------------


def test_dev_policy_accepts_simulated_evidence(
    bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes, keys: BoundKeys
) -> None:
    verified = verify_bundle(bundle.to_bytes(), dev_policy, challenge)
    assert isinstance(verified, VerifiedAttestation)
    assert verified.insecure is True
    assert verified.hpke_public_key == keys.hpke_public_key
    assert verified.log_public_key == keys.log_public_key
    assert verified.challenge == challenge
    assert verified.binding == bundle.binding
    assert verified.bundle_digest == bundle.digest()
    assert verified.evidence_kinds == (EvidenceKind.SIMULATED_INSECURE,)
    assert verified.policy_name == "dev-insecure-allow-simulated"
    assert verified.checks
    assert all(check.passed for check in verified.checks)
    assert verified.hpke_public_key_obj().public_bytes_raw() == keys.hpke_public_key
    assert verified.log_public_key_obj().public_bytes_raw() == keys.log_public_key


def test_verify_accepts_parsed_bundle_too(
    bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes
) -> None:
    assert verify_bundle(bundle, dev_policy, challenge).bundle_digest == bundle.digest()


def test_default_policy_refuses_simulated_evidence(
    bundle: EvidenceBundle, default_policy: Policy, challenge: bytes
) -> None:
    with pytest.raises(SimulatedEvidenceRefusedError) as info:
        verify_bundle(bundle.to_bytes(), default_policy, challenge)
    failing = {check.name for check in info.value.failures}
    # Every reason is reported: simulated refused *and* the required GPU evidence missing.
    assert "evidence[0] simulated-insecure-tee allowed by policy" in failing
    assert "required evidence nvidia-gpu" in failing


def test_bundle_for_another_challenge_is_refused(bundle: EvidenceBundle, dev_policy: Policy) -> None:
    with pytest.raises(BindingMismatchError, match="another challenge"):
        verify_bundle(bundle, dev_policy, os.urandom(32))


def test_replay_with_rewritten_challenge_is_refused(
    keys: BoundKeys, collector: InsecureSimulatedTeeCollector, dev_policy: Policy
) -> None:
    old = build_bundle(keys, os.urandom(32), [collector])
    mine = os.urandom(32)
    # The operator rewrites the challenge field to mine but cannot redo the evidence.
    forged = dataclasses.replace(old, challenge=mine)
    with pytest.raises(BindingMismatchError) as info:
        verify_bundle(forged, dev_policy, mine)
    names = {check.name for check in info.value.failures}
    assert names == {"binding", "evidence[0] simulated-insecure-tee report data"}


def test_swapped_hpke_key_is_refused(bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes) -> None:
    attacker_key = _new_keys().hpke_public_key
    swapped = dataclasses.replace(bundle, hpke_public_key=attacker_key)
    with pytest.raises(BindingMismatchError, match="binding"):
        verify_bundle(swapped.to_bytes(), dev_policy, challenge)


def test_swapped_key_with_recomputed_bundle_binding_is_refused(
    bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes
) -> None:
    # Recomputing the bundle's binding field is easy; the evidence still names the old one.
    attacker = _new_keys()
    forged = dataclasses.replace(
        bundle,
        hpke_public_key=attacker.hpke_public_key,
        binding=compute_binding(attacker.hpke_public_key, bundle.log_public_key, challenge),
    )
    with pytest.raises(BindingMismatchError, match="report data"):
        verify_bundle(forged, dev_policy, challenge)


def test_swapped_log_key_is_refused(bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes) -> None:
    swapped = dataclasses.replace(bundle, log_public_key=_new_keys().log_public_key)
    with pytest.raises(BindingMismatchError):
        verify_bundle(swapped, dev_policy, challenge)


def test_tampered_simulated_payload_is_refused(
    bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes
) -> None:
    payload = _payload_of(bundle)
    payload["measurement"] = hashlib.sha256(b"some other build").hexdigest()
    tampered = _with_payload(bundle, rfc8785.dumps(payload))  # type: ignore[arg-type]
    with pytest.raises(EvidenceSignatureError) as info:
        verify_bundle(tampered.to_bytes(), dev_policy, challenge)
    assert isinstance(info.value, SignatureError)
    assert [c.name for c in info.value.failures] == ["evidence[0] simulated-insecure-tee signature"]


def test_malformed_simulated_payload_is_refused(
    bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes
) -> None:
    payload = _payload_of(bundle)
    payload["warning"] = "all good, trust me"
    malformed = _with_payload(bundle, rfc8785.dumps(payload))  # type: ignore[arg-type]
    with pytest.raises(EvidenceFormatError, match="warning"):
        verify_bundle(malformed, dev_policy, challenge)
    with pytest.raises(EvidenceFormatError, match="JSON"):
        verify_bundle(_with_payload(bundle, b"not json"), dev_policy, challenge)


# Every hardware kind has a verifier now (NVIDIA GPU: tests/test_nvidia_verify.py; AMD
# SEV-SNP and Intel TDX: tests/test_cpu_tee.py); an opaque blob in place of the vendor's
# evidence fails closed as malformed.
@pytest.mark.parametrize("kind", [EvidenceKind.NVIDIA_GPU])
def test_opaque_hardware_evidence_is_refused(keys: BoundKeys, challenge: bytes, kind: EvidenceKind) -> None:
    binding = keys.binding_for(challenge)
    bundle = EvidenceBundle(
        hpke_public_key=keys.hpke_public_key,
        log_public_key=keys.log_public_key,
        challenge=challenge,
        binding=binding,
        evidence=(Evidence(kind, b"opaque vendor report"),),
    )
    policy = Policy(name="needs-hw", required_evidence=(kind,))
    with pytest.raises(EvidenceFormatError, match=kind.value):
        verify_bundle(bundle.to_bytes(), policy, challenge)


def test_unverifiable_extra_evidence_is_refused(
    bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes
) -> None:
    # The dev policy does not require GPU evidence, but evidence that is present must verify.
    extra = dataclasses.replace(bundle, evidence=(*bundle.evidence, Evidence(EvidenceKind.NVIDIA_GPU, b"x")))
    with pytest.raises(EvidenceFormatError, match="nvidia-gpu"):
        verify_bundle(extra, dev_policy, challenge)


def test_measurement_allow_list(
    keys: BoundKeys, challenge: bytes, collector: InsecureSimulatedTeeCollector
) -> None:
    bundle = build_bundle(keys, challenge, [collector])
    allowing = Policy(
        name="pinned",
        required_evidence=(EvidenceKind.SIMULATED_INSECURE,),
        allow_insecure_simulated_evidence=True,
        simulated_measurements=(collector.measurement,),
    )
    assert verify_bundle(bundle, allowing, challenge).insecure
    other = dataclasses.replace(allowing, simulated_measurements=(simulated_measurement("x"),))
    with pytest.raises(PolicyViolationError, match="measurement"):
        verify_bundle(bundle, other, challenge)


def test_policy_violation_lists_every_failing_check(
    bundle: EvidenceBundle, challenge: bytes, collector: InsecureSimulatedTeeCollector
) -> None:
    policy = Policy(
        name="strict",
        required_evidence=(
            EvidenceKind.SIMULATED_INSECURE,
            EvidenceKind.AMD_SEV_SNP,
            EvidenceKind.INTEL_TDX,
        ),
        allow_insecure_simulated_evidence=True,
        simulated_measurements=(simulated_measurement("a build nobody runs"),),
        # A policy that requires CPU TEE evidence must say how to appraise it.
        amd_sev_snp=SevSnpPolicy(measurements=(bytes(48),)),
        intel_tdx=TdxPolicy(mrtd=(bytes(48),)),
    )
    with pytest.raises(PolicyViolationError) as info:
        verify_bundle(bundle, policy, challenge)
    failures = info.value.failures
    assert [f.name for f in failures] == [
        "evidence[0] simulated-insecure-tee measurement",
        "required evidence amd-sev-snp",
        "required evidence intel-tdx",
    ]
    assert failures[0].expected == "one of 1 allow-listed"
    assert failures[0].found == collector.measurement.hex()
    assert failures[1].expected == "present"
    assert failures[1].found == "absent"
    assert "2 more failing" in str(info.value)
    # Passing checks are kept too, for the report table.
    assert len(info.value.checks) > len(failures)


def test_verify_rejects_bad_client_challenge(bundle: EvidenceBundle, dev_policy: Policy) -> None:
    with pytest.raises(FormatError, match="32 bytes"):
        verify_bundle(bundle, dev_policy, b"short")


def test_verify_parses_bytes_strictly(dev_policy: Policy, challenge: bytes) -> None:
    with pytest.raises(BundleFormatError):
        verify_bundle(b"{}", dev_policy, challenge)


def test_verified_attestation_cannot_be_constructed_directly(
    bundle: EvidenceBundle, dev_policy: Policy, challenge: bytes
) -> None:
    fields: dict[str, object] = dict(
        hpke_public_key=bundle.hpke_public_key,
        log_public_key=bundle.log_public_key,
        binding=bundle.binding,
        challenge=challenge,
        bundle_digest=bundle.digest(),
        evidence_kinds=(EvidenceKind.NVIDIA_GPU,),
        policy_name="default",
        insecure=False,
        checks=(),
    )
    with pytest.raises(TypeError, match="verify_bundle"):
        VerifiedAttestation(object(), **fields)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        VerifiedAttestation(**fields)  # type: ignore[arg-type]
    verified = verify_bundle(bundle, dev_policy, challenge)
    with pytest.raises((TypeError, ValueError)):
        dataclasses.replace(verified, insecure=False)  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.insecure = False  # type: ignore[misc]


def test_every_error_is_a_fedseal_error() -> None:
    for name in attestation.__all__:
        value = getattr(attestation, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, AttestationError), name
            assert issubclass(value, FedSealError), name


def test_public_api_is_complete() -> None:
    for name in attestation.__all__:
        assert hasattr(attestation, name), name

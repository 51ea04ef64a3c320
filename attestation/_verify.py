"""Client side: verify an evidence bundle against a policy and the client's own challenge.

:func:`verify_bundle` is the only way to obtain a :class:`VerifiedAttestation`, and the
client SDK encrypts updates only to the keys of one. Every check is recorded as a
:class:`~attestation.CheckResult`; on any failure the error raised is the one named by
the first failing check and carries *all* the checks, so a report can list every reason.

Order of the checks:

1. the bundle parses (strict format, see ``_bundle.py``);
2. the bundle's challenge is the client's own;
3. the binding recomputed from the bundle's two public keys (v2: and its TLS certificate
   digest) and the *client's* challenge equals the bundle's binding (constant-time comparison);
4. every evidence item verifies with the verifier for its kind, and its report data is
   the recomputed binding; a kind with no verifier in this version fails;
5. every kind the policy requires is present.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from fedseal.binding import CHALLENGE_SIZE, compute_binding
from fedseal.errors import FormatError

from ._bundle import Evidence, EvidenceBundle, EvidenceKind
from ._checks import Checklist, CheckResult
from ._errors import (
    BindingMismatchError,
    EvidenceFormatError,
    EvidenceSignatureError,
    PolicyViolationError,
    SimulatedEvidenceRefusedError,
    UnsupportedEvidenceError,
)
from ._fetch import CollateralFetcher, OfflineFetcher
from ._policy import Policy
from ._simulated import parse_simulated_payload
from .cpu import verify_sev_snp_evidence, verify_tdx_evidence
from .nvidia._verify import verify_nvidia_gpu

__all__ = ["VerificationContext", "VerifiedAttestation", "verify_bundle"]

# Only this module holds the token, so only verify_bundle can make a VerifiedAttestation.
# It is an immutable object() compared by identity; nothing about it is secret.
_CONSTRUCTION_TOKEN = object()


@dataclass(frozen=True)
class VerifiedAttestation:
    """The result of a successful :func:`verify_bundle`: keys a client may encrypt to.

    Only :func:`verify_bundle` can construct one (the constructor needs a token private to
    its module and raises :class:`TypeError` otherwise), so a function that takes a
    ``VerifiedAttestation`` knows the keys in it went through verification. This guards
    against mistakes, not against code in the same process that sets out to cheat.

    ``insecure`` is True when simulated evidence was accepted: nothing then protects the
    data, and callers should say so wherever they report the attestation.

    ``tls_certificate_sha256`` is the SHA-256 of the DER certificate the enclave's TLS
    endpoint presents (binding v2), or None for evidence made without one (binding v1). A
    client that pins it knows its TLS channel ends inside the attested enclave.
    """

    _token: InitVar[object]
    hpke_public_key: bytes
    log_public_key: bytes
    binding: bytes
    challenge: bytes
    bundle_digest: bytes
    evidence_kinds: tuple[EvidenceKind, ...]
    policy_name: str
    insecure: bool
    checks: tuple[CheckResult, ...]
    tls_certificate_sha256: bytes | None = None

    def __post_init__(self, _token: object) -> None:
        if _token is not _CONSTRUCTION_TOKEN:
            raise TypeError("VerifiedAttestation is created only by attestation.verify_bundle()")

    def hpke_public_key_obj(self) -> X25519PublicKey:
        """The X25519 key the binding format carries. Updates are not sealed to it: the
        enclave keeps no private half; they go to each round's key, which the attested log
        key signs (fedseal/roundkey.py)."""
        return X25519PublicKey.from_public_bytes(self.hpke_public_key)

    def log_public_key_obj(self) -> Ed25519PublicKey:
        """The attested log key, which signs checkpoints, receipts and aggregates."""
        return Ed25519PublicKey.from_public_bytes(self.log_public_key)


@dataclass(frozen=True)
class VerificationContext:
    """What every evidence verifier may use besides the evidence item itself.

    `binding` is recomputed from the client's own challenge (never taken from the bundle);
    `now` is the verification time (pinned in tests and for replaying old evidence, and
    always stated in reports); `fetcher` is the only way to the network.
    """

    binding: bytes
    bundle: EvidenceBundle
    policy: Policy
    checks: Checklist
    now: datetime.datetime
    fetcher: CollateralFetcher


# A verifier checks one evidence item: its signature/chain, that its report data is bound
# to `ctx.binding`, and whatever the policy says about its kind. It records every check
# in `ctx.checks` (and never raises for a failed check: verify_bundle raises at the end).
_EvidenceVerifier = Callable[[str, Evidence, VerificationContext], None]


def _verify_simulated(label: str, evidence: Evidence, ctx: VerificationContext) -> None:
    """Check simulated-TEE evidence. Even when every check passes this proves NOTHING about
    hardware: the signing key travels inside the evidence, so anyone can make a valid one.
    It is refused unless the policy explicitly allows insecure simulated evidence.
    """
    binding, policy, checks = ctx.binding, ctx.policy, ctx.checks
    checks.record(
        f"{label} allowed by policy",
        expected="policy allows insecure simulated evidence",
        found=(
            "allowed (INSECURE, development only)"
            if policy.allow_insecure_simulated_evidence
            else f"policy {policy.name!r} refuses simulated evidence"
        ),
        passed=policy.allow_insecure_simulated_evidence,
        error=SimulatedEvidenceRefusedError,
        message=(
            f"{label} is simulated-TEE evidence, which proves nothing about hardware, and "
            f"policy {policy.name!r} does not allow it"
        ),
    )
    try:
        report = parse_simulated_payload(evidence.payload, field=f"{label}.payload")
    except EvidenceFormatError as exc:
        checks.record(
            f"{label} payload format",
            expected="fedseal-INSECURE-simulated-tee/v1",
            found="malformed",
            passed=False,
            error=EvidenceFormatError,
            message=str(exc),
        )
        return
    try:
        report.verify_signature()
        signature_ok = True
    except EvidenceSignatureError:
        signature_ok = False
    checks.record(
        f"{label} signature",
        expected="valid Ed25519 signature by the embedded key",
        found="valid" if signature_ok else "INVALID",
        passed=signature_ok,
        error=EvidenceSignatureError,
        message=f"{label} signature does not verify under its embedded key (payload altered)",
    )
    checks.record(
        f"{label} report data",
        expected=binding.hex(),
        found=report.report_data.hex(),
        passed=hmac.compare_digest(report.report_data, binding),
        error=BindingMismatchError,
        message=f"{label} report data is not the binding of these keys to your challenge",
    )
    allowed = policy.simulated_measurements
    checks.record(
        f"{label} measurement",
        expected="any" if allowed is None else f"one of {len(allowed)} allow-listed",
        found=report.measurement.hex(),
        passed=allowed is None or report.measurement in allowed,
        error=PolicyViolationError,
        message=f"{label} measurement is not in the policy's simulated_measurements",
    )


# Kinds absent here have no verifier yet; verify_bundle fails on them (never trusts them).
# Hardware verifiers live in their own modules and are listed here explicitly (no import-time
# registration side effects): see _verifiers() below.
def _verifiers() -> Mapping[EvidenceKind, _EvidenceVerifier]:
    return MappingProxyType(
        {
            EvidenceKind.SIMULATED_INSECURE: _verify_simulated,
            EvidenceKind.NVIDIA_GPU: verify_nvidia_gpu,
            EvidenceKind.AMD_SEV_SNP: verify_sev_snp_evidence,
            EvidenceKind.INTEL_TDX: verify_tdx_evidence,
        }
    )


def verify_bundle(
    bundle: EvidenceBundle | bytes,
    policy: Policy,
    challenge: bytes,
    *,
    now: datetime.datetime | None = None,
    fetcher: CollateralFetcher | None = None,
) -> VerifiedAttestation:
    """Verify ``bundle`` against ``policy`` and the 32-byte ``challenge`` this client sent.

    Returns a :class:`VerifiedAttestation` or raises an :class:`~attestation.AttestationError`
    subclass: :class:`~attestation.BundleFormatError`,
    :class:`~attestation.BindingMismatchError`,
    :class:`~attestation.SimulatedEvidenceRefusedError`,
    :class:`~attestation.EvidenceSignatureError`,
    :class:`~attestation.UnsupportedEvidenceError` or
    :class:`~attestation.PolicyViolationError`. A challenge that is not 32 bytes is the
    caller's mistake and raises :class:`~fedseal.errors.FormatError`.

    ``now`` (timezone-aware; default: the current time) is when certificates and
    collateral must be valid. ``fetcher`` is used for any collateral the evidence does not
    carry (default: :class:`~attestation.OfflineFetcher`, i.e. no network at all).
    """
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_SIZE:
        raise FormatError(f"the client's challenge must be {CHALLENGE_SIZE} bytes")
    if not isinstance(policy, Policy):
        raise TypeError("policy must be an attestation.Policy")
    if isinstance(bundle, bytes):
        bundle = EvidenceBundle.from_bytes(bundle)
    elif not isinstance(bundle, EvidenceBundle):
        raise TypeError("bundle must be an EvidenceBundle or its bytes")

    checks = Checklist()
    checks.record(
        "challenge",
        expected=challenge.hex(),
        found=bundle.challenge.hex(),
        passed=hmac.compare_digest(bundle.challenge, challenge),
        error=BindingMismatchError,
        message="the bundle answers another challenge than yours (stale or replayed)",
    )
    # Recompute from the client's own challenge, not the bundle's: the bundle's challenge
    # and binding are claims, and a replayed bundle would carry consistent ones.
    binding = compute_binding(
        bundle.hpke_public_key, bundle.log_public_key, challenge, bundle.tls_certificate_sha256
    )
    checks.record(
        "binding",
        expected=binding.hex(),
        found=bundle.binding.hex(),
        passed=hmac.compare_digest(bundle.binding, binding),
        error=BindingMismatchError,
        message=(
            "the bundle's binding is not SHA-256 of its public keys (and TLS certificate "
            "digest) and your challenge "
            "(keys swapped or bundle made for someone else)"
        ),
    )

    ctx = VerificationContext(
        binding=binding,
        bundle=bundle,
        policy=policy,
        checks=checks,
        now=now if now is not None else datetime.datetime.now(datetime.UTC),
        fetcher=fetcher if fetcher is not None else OfflineFetcher(),
    )
    if ctx.now.tzinfo is None:
        raise FormatError("verification time must be timezone-aware (e.g. datetime.UTC)")
    for index, item in enumerate(bundle.evidence):
        label = f"evidence[{index}] {item.kind.value}"
        verifier = _verifiers().get(item.kind)
        if verifier is None:
            checks.record(
                f"{label} verifier",
                expected="a verifier for this evidence kind",
                found="none in this version of FedSeal",
                passed=False,
                error=UnsupportedEvidenceError,
                message=(
                    f"{label}: this version of FedSeal cannot verify {item.kind.value!r} "
                    "evidence, and unverifiable evidence is never accepted"
                ),
            )
            continue
        verifier(label, item, ctx)

    present = {item.kind for item in bundle.evidence}
    for kind in policy.required_evidence:
        checks.record(
            f"required evidence {kind.value}",
            expected="present",
            found="present" if kind in present else "absent",
            passed=kind in present,
            error=PolicyViolationError,
            message=f"policy {policy.name!r} requires {kind.value!r} evidence; the bundle has none",
        )

    checks.raise_if_failed()

    kinds = tuple(dict.fromkeys(item.kind for item in bundle.evidence))
    return VerifiedAttestation(
        _CONSTRUCTION_TOKEN,
        hpke_public_key=bundle.hpke_public_key,
        log_public_key=bundle.log_public_key,
        binding=binding,
        challenge=challenge,
        bundle_digest=hashlib.sha256(bundle.to_bytes()).digest(),
        evidence_kinds=kinds,
        policy_name=policy.name,
        insecure=EvidenceKind.SIMULATED_INSECURE in kinds,
        checks=tuple(checks.results),
        tls_certificate_sha256=bundle.tls_certificate_sha256,
    )

"""The self-attestation gate: the aggregator verifies its own evidence before it serves.

start_aggregator() builds the evidence bundle of its fresh keys once; with a gate it hands
that bundle to :meth:`SelfAttestationGate.open`, which verifies it under the operator's
policy with :func:`attestation.verify_bundle` (as any client would) and then lets the
preflight set the GPU ready state. Only after both pass is the bundle written to the log
and the server started, so an enclave that cannot prove itself leaves no trace in the log
and never listens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aggregator._preflight import GpuRelease, Preflight, PreflightReport, SelfAttestationError
from attestation import (
    AttestationError,
    CollateralFetcher,
    EvidenceBundle,
    OfflineFetcher,
    Policy,
    VerifiedAttestation,
    verify_bundle,
)
from fedseal.binding import BoundKeys

__all__ = ["SelfAttestation", "SelfAttestationGate"]


@dataclass(frozen=True)
class SelfAttestation:
    """What the gate established: the verified evidence and the GPU release it justified."""

    verified: VerifiedAttestation
    release: GpuRelease


@dataclass(frozen=True)
class SelfAttestationGate:
    """Verify our own bundle under ``policy``, then release the GPUs via ``preflight``.

    ``report`` is what ``preflight.check()`` returned. ``fetcher`` supplies collateral the
    evidence does not carry (NVIDIA RIMs, OCSP); the default fetches nothing.
    """

    preflight: Preflight
    report: PreflightReport
    policy: Policy
    fetcher: CollateralFetcher = field(default_factory=OfflineFetcher)

    def open(self, bundle: EvidenceBundle, challenge: bytes, keys: BoundKeys) -> SelfAttestation:
        """Raise SelfAttestationError (or a PreflightError from the release) unless both pass."""
        try:
            verified = verify_bundle(bundle, self.policy, challenge, fetcher=self.fetcher)
        except AttestationError as exc:
            raise SelfAttestationError(
                f"the aggregator's own evidence fails policy {self.policy.name!r}: {exc}",
                checks=exc.checks,
            ) from exc
        release = self.preflight.release_gpus(self.report, verified, keys)
        return SelfAttestation(verified=verified, release=release)

"""Errors raised by attestation collection, bundle parsing, policy loading and verification.

Every error here descends from :class:`AttestationError`, itself a
:class:`fedseal.errors.FedSealError`. Verification never answers with a bool: it returns a
:class:`~attestation.VerifiedAttestation` or raises one of these.

Errors raised by :func:`~attestation.verify_bundle` carry ``checks``: every check that was
evaluated, passed or not, so that a caller (the ``fedseal-attest`` report table, a log line)
can show *all* the reasons for a refusal, not only the first. The exception's class is that
of the first failing check, so ``except BindingMismatchError`` keeps meaning what it says.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedseal.errors import FedSealError, FormatError, SignatureError

from ._checks import CheckResult

__all__ = [
    "AttestationError",
    "BindingMismatchError",
    "BundleFormatError",
    "CollateralUnavailableError",
    "DuplicateEvidenceError",
    "EndpointError",
    "EvidenceCollectionError",
    "EvidenceFormatError",
    "EvidenceSignatureError",
    "PolicyError",
    "PolicyViolationError",
    "SimulatedEvidenceRefusedError",
    "UnsupportedEvidenceError",
]


class AttestationError(FedSealError):
    """Root of every attestation error.

    ``checks`` holds the checks evaluated before the refusal (empty when the failure came
    before any check, e.g. an unparseable bundle); ``failures`` is the failing subset.
    """

    def __init__(self, message: str, *, checks: Sequence[CheckResult] = ()) -> None:
        super().__init__(message)
        self.checks: tuple[CheckResult, ...] = tuple(checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The checks that did not pass, in evaluation order."""
        return tuple(check for check in self.checks if not check.passed)


class BundleFormatError(AttestationError, FormatError):
    """An evidence bundle does not follow the documented format.

    ``field`` names the offending field (e.g. ``"hpke_public_key"``, ``"evidence[0].kind"``)
    when one can be named.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        checks: Sequence[CheckResult] = (),
    ) -> None:
        super().__init__(message, checks=checks)
        self.field = field


class DuplicateEvidenceError(BundleFormatError):
    """A bundle lists the same evidence item (kind and payload) more than once."""


class EvidenceFormatError(BundleFormatError):
    """The payload of one evidence item does not follow its kind's format."""


class BindingMismatchError(AttestationError):
    """The evidence is not bound to these keys and this client's challenge.

    Raised when the bundle's challenge is not the client's, when the bundle's binding is not
    the one recomputed from the bundle's public keys and the client's own challenge, or when
    an evidence item's report data does not carry that recomputed binding. Either the
    bundle was made for someone else (a replay) or its keys were swapped.
    """


class SimulatedEvidenceRefusedError(AttestationError):
    """The bundle carries simulated-TEE evidence and the policy does not allow it.

    Simulated evidence proves nothing about hardware; only a development policy accepts it.
    """


class EvidenceSignatureError(AttestationError, SignatureError):
    """An evidence item's signature does not verify."""


class UnsupportedEvidenceError(AttestationError):
    """An evidence item is of a kind this version of FedSeal cannot verify.

    Verification fails closed: evidence that cannot be checked is never taken on trust.
    """


class PolicyError(AttestationError):
    """A policy file is malformed: bad JSON, unknown or missing key, wrong type or value."""


class PolicyViolationError(AttestationError):
    """The evidence verified but does not satisfy the policy.

    ``failures`` lists every failing check (name, expected, found), not only the first.
    """


class EvidenceCollectionError(AttestationError):
    """The enclave side could not produce evidence (no collector, a collector misbehaved)."""


class EndpointError(AttestationError):
    """An aggregator endpoint could not be reached or did not answer GetAttestation."""


class CollateralUnavailableError(AttestationError):
    """Verification material (RIM, OCSP response, certificate, collateral) could not be obtained."""

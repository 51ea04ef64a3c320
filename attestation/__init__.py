"""FedSeal attestation: prove to a client which keys live inside the aggregator's TEE.

Aggregator side, for each GetAttestation call::

    bundle = build_bundle(BoundKeys(hpke_pk, log_pk), challenge, collectors)
    response = bundle.to_bytes()

Client side::

    challenge = os.urandom(32)
    attestation = verify_bundle(bundle_bytes, load_builtin_policy("default"), challenge)
    # raises an AttestationError subclass on any failure; never returns False

NVIDIA GPU evidence is collected and verified by :mod:`attestation.nvidia` (its verifier is
registered for ``nvidia-gpu``; its named errors and collectors are exported there), AMD
SEV-SNP and Intel TDX evidence by :mod:`attestation.cpu` (likewise, for ``amd-sev-snp`` and
``intel-tdx``). The INSECURE simulated TEE (development only, refused by the default
policy) remains for machines without a TEE. A kind with no verifier fails with
:class:`UnsupportedEvidenceError`.

Everything public is re-exported here; the ``_``-modules are internal.
"""

from ._bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_V2,
    MAX_BUNDLE_SIZE,
    Evidence,
    EvidenceBundle,
    EvidenceKind,
)
from ._checks import CheckResult
from ._collateral import (
    CollateralCache,
    CollateralEvent,
    CollateralRefresher,
    CollateralValidity,
    StapledCollateralExpiredError,
)
from ._collateral_policy import CollateralPolicy, CollateralSource, collateral_fetcher
from ._collect import EvidenceCollector, build_bundle
from ._errors import (
    AttestationError,
    BindingMismatchError,
    BundleFormatError,
    CollateralUnavailableError,
    DuplicateEvidenceError,
    EndpointError,
    EvidenceCollectionError,
    EvidenceFormatError,
    EvidenceSignatureError,
    PolicyError,
    PolicyViolationError,
    SimulatedEvidenceRefusedError,
    UnsupportedEvidenceError,
)
from ._fetch import CachingFetcher, CollateralFetcher, CollateralRequest, HttpFetcher, OfflineFetcher
from ._policy import POLICY_SCHEMA, Policy, builtin_policy_names, load_builtin_policy
from ._simulated import InsecureSimulatedTeeCollector, simulated_measurement
from ._verify import VerificationContext, VerifiedAttestation, verify_bundle
from ._witness_policy import WitnessPolicy

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_FORMAT_V2",
    "MAX_BUNDLE_SIZE",
    "POLICY_SCHEMA",
    "AttestationError",
    "BindingMismatchError",
    "BundleFormatError",
    "CachingFetcher",
    "CheckResult",
    "CollateralCache",
    "CollateralEvent",
    "CollateralFetcher",
    "CollateralPolicy",
    "CollateralRefresher",
    "CollateralRequest",
    "CollateralSource",
    "CollateralUnavailableError",
    "CollateralValidity",
    "DuplicateEvidenceError",
    "EndpointError",
    "Evidence",
    "EvidenceBundle",
    "EvidenceCollectionError",
    "EvidenceCollector",
    "EvidenceFormatError",
    "EvidenceKind",
    "EvidenceSignatureError",
    "HttpFetcher",
    "InsecureSimulatedTeeCollector",
    "OfflineFetcher",
    "Policy",
    "PolicyError",
    "PolicyViolationError",
    "SimulatedEvidenceRefusedError",
    "StapledCollateralExpiredError",
    "UnsupportedEvidenceError",
    "VerificationContext",
    "VerifiedAttestation",
    "WitnessPolicy",
    "build_bundle",
    "builtin_policy_names",
    "collateral_fetcher",
    "load_builtin_policy",
    "simulated_measurement",
    "verify_bundle",
]

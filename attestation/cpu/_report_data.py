"""The 64 bytes a CPU TEE report must carry: one client challenge covers the whole bundle.

A CPU TEE report (SEV-SNP REPORT_DATA, TDX REPORTDATA) has room for 64 bytes of user data.
FedSeal puts there a hash of the binding (the client's challenge and the aggregator's two
public keys) and of every *other* evidence item in the same bundle, the GPU evidence above
all. One signed CPU report thus vouches for the keys, the challenge and the exact GPU
evidence that came with it: swapping in GPU evidence from another run breaks the CPU report.

    report_data = SHA-512( "fedseal/cpu-report-data/v1"
                           || binding                          (32 bytes)
                           || other_evidence_digest )          (32 bytes)

    other_evidence_digest = 32 zero bytes if the bundle has no evidence other than CPU TEE
                            evidence, else SHA-256 over, for each such item in bundle order,
                            lp(kind as ASCII) || lp(payload)

where lp(x) is x preceded by its 4-byte big-endian length (:func:`fedseal.binding.length_prefixed`).
Every field has a fixed length or a length prefix, so no two inputs share an encoding.
:func:`cpu_report_data` is the only implementation: the collector side
(:func:`attestation.build_bundle`) and the verifier side both call it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from fedseal.binding import length_prefixed
from fedseal.errors import FormatError

from .._bundle import Evidence, EvidenceKind

__all__ = ["CPU_REPORT_DATA_SIZE", "CPU_TEE_KINDS", "cpu_report_data"]

CPU_REPORT_DATA_SIZE = 64
#: Evidence kinds whose report carries :func:`cpu_report_data` instead of the bare binding.
CPU_TEE_KINDS = frozenset({EvidenceKind.AMD_SEV_SNP, EvidenceKind.INTEL_TDX})

_DOMAIN = b"fedseal/cpu-report-data/v1"
_BINDING_SIZE = 32


def cpu_report_data(binding: bytes, evidence: Iterable[Evidence]) -> bytes:
    """The 64-byte report data for CPU TEE evidence bound to ``binding``.

    ``evidence`` is the bundle's evidence (or, while collecting, what was collected so far);
    CPU TEE items in it are skipped, so the verifier can pass the whole bundle.
    """
    if not isinstance(binding, bytes) or len(binding) != _BINDING_SIZE:
        raise FormatError(f"binding must be {_BINDING_SIZE} bytes")
    others = [item for item in evidence if item.kind not in CPU_TEE_KINDS]
    if others:
        digest = hashlib.sha256()
        for item in others:
            digest.update(length_prefixed(item.kind.value.encode("ascii"), item.payload))
        other_digest = digest.digest()
    else:
        other_digest = bytes(32)
    return hashlib.sha512(_DOMAIN + binding + other_digest).digest()

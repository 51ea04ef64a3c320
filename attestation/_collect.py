"""Aggregator side: collectors produce evidence, :func:`build_bundle` assembles the bundle.

A collector talks to one kind of TEE and turns a 32-byte binding into an
:class:`~attestation.Evidence` whose report data carries it (CPU TEE collectors get the
64-byte report data derived from the binding and the other evidence, see build_bundle).
Hardware collectors import their vendor libraries (NVML, configfs-tsm) inside their own
modules, so this module, and every client that verifies, never needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from fedseal.binding import BoundKeys

from ._bundle import MAX_EVIDENCE_ITEMS, Evidence, EvidenceBundle, EvidenceKind
from ._errors import EvidenceCollectionError
from .cpu._report_data import CPU_TEE_KINDS, cpu_report_data

__all__ = ["EvidenceCollector", "build_bundle"]


@runtime_checkable
class EvidenceCollector(Protocol):
    """Produces evidence of one kind, bound to a given 32-byte binding."""

    @property
    def kind(self) -> EvidenceKind:
        """The kind of evidence :meth:`collect` returns."""
        ...

    def collect(self, binding: bytes) -> Evidence:
        """Return fresh evidence whose report data is ``binding``.

        ``binding`` is the 32-byte binding, except for CPU TEE kinds (``amd-sev-snp``,
        ``intel-tdx``), which get the 64-byte :func:`attestation.cpu.cpu_report_data`.
        Raise :class:`~attestation.EvidenceCollectionError` when the TEE cannot answer.
        """
        ...


def build_bundle(
    keys: BoundKeys, challenge: bytes, collectors: Sequence[EvidenceCollector]
) -> EvidenceBundle:
    """Bind ``keys`` to the client's ``challenge`` and ask every collector for evidence.

    Raises :class:`~fedseal.errors.FormatError` for a challenge of the wrong length and
    :class:`~attestation.EvidenceCollectionError` when there is no collector or one returns
    evidence of a kind other than its own.
    """
    if not collectors:
        # A bundle without evidence could only ever be refused; say so where it is made.
        raise EvidenceCollectionError("no evidence collector configured")
    if len(collectors) > MAX_EVIDENCE_ITEMS:
        raise EvidenceCollectionError(f"at most {MAX_EVIDENCE_ITEMS} collectors are supported")
    binding = keys.binding_for(challenge)  # v2 when the keys name a TLS certificate
    # Other evidence (the GPU's) first; then CPU TEE reports over a hash of the binding and
    # of that evidence, so one signed CPU report covers the whole bundle. The bundle keeps
    # the collectors' order.
    collected: dict[int, Evidence] = {}
    for cpu_pass in (False, True):
        for index, collector in enumerate(collectors):
            if (collector.kind in CPU_TEE_KINDS) is not cpu_pass:
                continue
            report_data = cpu_report_data(binding, collected.values()) if cpu_pass else binding
            item = collector.collect(report_data)
            if not isinstance(item, Evidence) or item.kind is not collector.kind:
                raise EvidenceCollectionError(
                    f"collector for {collector.kind.value!r} returned evidence of another kind"
                )
            collected[index] = item
    return EvidenceBundle(
        hpke_public_key=keys.hpke_public_key,
        log_public_key=keys.log_public_key,
        challenge=challenge,
        binding=binding,
        evidence=tuple(collected[index] for index in range(len(collectors))),
        tls_certificate_sha256=keys.tls_certificate_sha256,
    )

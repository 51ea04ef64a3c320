"""Aggregator side: collectors produce evidence, :func:`build_bundle` assembles the bundle.

A collector talks to one kind of TEE (the simulated one today; NVIDIA GPU, SEV-SNP and TDX
later) and turns a 32-byte binding into an :class:`~attestation.Evidence` whose report
data carries it. Hardware collectors will import their vendor libraries (NVML, configfs-tsm)
inside their own modules, so this module, and every client that verifies, never needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from fedseal.binding import BoundKeys, compute_binding

from ._bundle import MAX_EVIDENCE_ITEMS, Evidence, EvidenceBundle, EvidenceKind
from ._errors import EvidenceCollectionError

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
    binding = compute_binding(keys.hpke_public_key, keys.log_public_key, challenge)
    evidence: list[Evidence] = []
    for collector in collectors:
        item = collector.collect(binding)
        if not isinstance(item, Evidence) or item.kind is not collector.kind:
            raise EvidenceCollectionError(
                f"collector for {collector.kind.value!r} returned evidence of another kind"
            )
        evidence.append(item)
    return EvidenceBundle(
        hpke_public_key=keys.hpke_public_key,
        log_public_key=keys.log_public_key,
        challenge=challenge,
        binding=binding,
        evidence=tuple(evidence),
    )

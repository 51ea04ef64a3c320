"""The shipped production template, filled with the operator's measurement, accepts the
GPU + SEV-SNP bundle of the hardware path and refuses a bundle missing either part, or one
whose CPU report does not cover the GPU evidence it travels with.

The bundles come from the real collectors and staplers over the fake device trees
(``hardware_rig``); the policy is the template filled by the same code as
``fedseal-attest measure snp --policy-out``, differing only in the test PKIs' root pins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hardware_rig import Rig, filled_template_document, open_rig, shipped_template

from attestation import (
    BindingMismatchError,
    EvidenceBundle,
    EvidenceKind,
    Policy,
    PolicyViolationError,
    build_bundle,
    verify_bundle,
)
from fedseal.binding import BoundKeys


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with open_rig(tmp_path, monkeypatch) as opened:
        yield opened


def _keys() -> BoundKeys:
    return BoundKeys(hpke_public_key=os.urandom(32), log_public_key=os.urandom(32))


def _policy(rig: Rig) -> Policy:
    return Policy.from_json(json.dumps(filled_template_document(rig)), source="filled template")


def test_the_filled_template_differs_from_the_shipped_one_only_in_measurement_and_roots(rig: Rig) -> None:
    filled = filled_template_document(rig)
    shipped = shipped_template()

    def without(document: dict[str, Any]) -> dict[str, Any]:
        copy: dict[str, Any] = json.loads(json.dumps(document))
        copy["amd_sev_snp"].pop("measurements")
        copy["amd_sev_snp"].pop("roots", None)
        copy["nvidia_gpu"].pop("roots", None)
        return copy

    assert without(filled) == without(shipped)


def test_the_filled_template_accepts_the_gpu_and_snp_bundle_offline(rig: Rig) -> None:
    challenge = os.urandom(32)
    bundle = build_bundle(_keys(), challenge, rig.collectors)
    rig.vendors.requests.clear()
    verified = verify_bundle(bundle, _policy(rig), challenge)  # no fetcher: stapled only
    assert verified.evidence_kinds == (EvidenceKind.NVIDIA_GPU, EvidenceKind.AMD_SEV_SNP)
    assert not verified.insecure and rig.vendors.requests == []
    names = [c.name for c in verified.checks]
    assert "evidence[1] amd-sev-snp report data" in names
    assert any(" OCSP " in n for n in names) and any(" RIM " in n for n in names)


@pytest.mark.parametrize("kept", [EvidenceKind.NVIDIA_GPU, EvidenceKind.AMD_SEV_SNP])
def test_a_bundle_missing_either_part_is_refused(rig: Rig, kept: EvidenceKind) -> None:
    challenge = os.urandom(32)
    collectors = [c for c in rig.collectors if c.kind is kept]
    bundle = build_bundle(_keys(), challenge, collectors)
    with pytest.raises(PolicyViolationError) as info:
        verify_bundle(bundle, _policy(rig), challenge)
    missing = EvidenceKind.AMD_SEV_SNP if kept is EvidenceKind.NVIDIA_GPU else EvidenceKind.NVIDIA_GPU
    failing = [c.name for c in info.value.checks if not c.passed]
    assert failing == [f"required evidence {missing.value}"]


def test_gpu_evidence_from_another_collection_breaks_the_cpu_report(rig: Rig) -> None:
    """The SEV-SNP report covers the GPU evidence: swapping in the GPU evidence of another
    collection (same keys, same challenge, a valid GPU report of its own) is refused."""
    keys, challenge = _keys(), os.urandom(32)
    first = build_bundle(keys, challenge, rig.collectors)
    second = build_bundle(keys, challenge, rig.collectors)
    mixed = EvidenceBundle(
        hpke_public_key=first.hpke_public_key,
        log_public_key=first.log_public_key,
        challenge=challenge,
        binding=first.binding,
        evidence=(second.evidence[0], first.evidence[1]),
    )
    with pytest.raises(BindingMismatchError) as info:
        verify_bundle(mixed, _policy(rig), challenge)
    failing = [c.name for c in info.value.checks if not c.passed]
    assert failing == ["evidence[1] amd-sev-snp report data"]

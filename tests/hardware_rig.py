"""The GPU + SEV-SNP host of test_hardware_path.py without the gRPC server: the real
collectors and staplers over the fake NVML and configfs-tsm trees, the test NVIDIA and AMD
PKIs, and the test vendors' services behind the CollateralFetcher interface."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from amd_pki import MEASUREMENT, AmdPki
from cryptography.hazmat.primitives.serialization import Encoding
from fake_nvml import install_fake_nvml
from nvidia_pki import NrasService, World, make_world
from test_hardware_path import Clock, SigningNvml, SigningTsmEntry, Vendors

from attestation import CollateralCache, EvidenceCollector, EvidenceKind
from attestation._templates import fill_policy_template, load_policy_template
from attestation.cpu import ConfigfsTsmCollector, SevSnpCollateralStapler
from attestation.nvidia import NrasTokenStapler, NvidiaCollateralStapler, NvidiaGpuCollector

__all__ = ["Rig", "filled_template_document", "open_rig"]


@dataclass
class Rig:
    world: World
    amd: AmdPki
    vendors: Vendors
    clock: Clock
    gpu: EvidenceCollector
    snp: EvidenceCollector

    @property
    def collectors(self) -> list[EvidenceCollector]:
        return [self.gpu, self.snp]


@contextlib.contextmanager
def open_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, nras: bool = False) -> Iterator[Rig]:
    """The rig; with ``nras``, its GPU evidence also gets NRAS tokens (as with ``--nras``)."""
    world, amd, clock = make_world(), AmdPki(), Clock()
    install_fake_nvml(monkeypatch, SigningNvml(world))
    tsm_root = tmp_path / "tsm" / "report"
    entry = SigningTsmEntry(tsm_root / "fedseal", amd)
    vendors = Vendors(world, amd, clock, nras=NrasService(clock=clock.now) if nras else None)
    cache = CollateralCache(vendors, clock=clock.now)
    with contextlib.ExitStack() as stack:
        stack.callback(entry.close)
        gpu: EvidenceCollector = NvidiaCollateralStapler(
            stack.enter_context(NvidiaGpuCollector(timeout=60)), cache, anchors=world.anchors
        )
        if nras:
            gpu = NrasTokenStapler(gpu, cache, vendors, anchors=world.anchors)
        yield Rig(
            world,
            amd,
            vendors,
            clock,
            gpu,
            SevSnpCollateralStapler(
                ConfigfsTsmCollector(EvidenceKind.AMD_SEV_SNP, root=tsm_root, entry="fedseal"), cache
            ),
        )


def filled_template_document(rig: Rig) -> dict[str, Any]:
    """The shipped production-sev-snp-gpu template filled with the test guest's measurement,
    exactly as `fedseal-attest measure snp --policy-out` fills it, plus the test PKIs' root
    pins (the only difference from what an operator deploys)."""
    document, source = load_policy_template("production-sev-snp-gpu")
    filled = fill_policy_template(document, source=source, snp_measurements=(MEASUREMENT,))
    result: dict[str, Any] = json.loads(filled.text)
    result["amd_sev_snp"]["roots"] = {"Milan": rig.amd.ark_pem()}
    result["nvidia_gpu"]["roots"] = {
        "device_identity_ca": rig.world.device.root.cert.public_bytes(Encoding.PEM).decode(),
        "rim_signing_ca": rig.world.rims.root.cert.public_bytes(Encoding.PEM).decode(),
    }
    return result


def shipped_template() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        files("policies").joinpath("templates", "production-sev-snp-gpu.json").read_text()
    )
    return document

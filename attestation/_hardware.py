"""Choosing the hardware evidence collectors of a confidential VM, for both CLIs.

`fedseal-aggregator` and `fedseal-attest collect` both build their collectors here, so an
operator names the hardware the same way everywhere:

* GPU: ``nv-local-gpu-verifier`` (NVIDIA's Python package over NVML), ``nvattest``
  (NVIDIA's successor CLI) or ``none``;
* CPU TEE: ``sev-snp`` or ``tdx`` (both through Linux configfs-tsm), ``coco-sev-snp`` or
  ``coco-tdx`` (inside a Confidential Containers pod: the attestation agent's API server on
  the pod's loopback), or ``none``.

GPU evidence is collected first; the CPU report then covers it (see
:func:`attestation.cpu.cpu_report_data`), so one client challenge covers both. The NVIDIA
packages are imported only when a GPU collector is asked for.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ._bundle import EvidenceKind
from ._collateral import CollateralCache
from ._collect import EvidenceCollector
from ._errors import EvidenceCollectionError
from ._fetch import CollateralFetcher

if TYPE_CHECKING:
    from .nvidia import NrasStapleOutcome

__all__ = ["CpuTee", "GpuCollector", "hardware_collectors"]


class GpuCollector(enum.Enum):
    NV_LOCAL_GPU_VERIFIER = "nv-local-gpu-verifier"
    NVATTEST = "nvattest"
    NONE = "none"


class CpuTee(enum.Enum):
    SEV_SNP = "sev-snp"
    TDX = "tdx"
    COCO_SEV_SNP = "coco-sev-snp"
    COCO_TDX = "coco-tdx"
    NONE = "none"


_CPU_KINDS = {
    CpuTee.SEV_SNP: EvidenceKind.AMD_SEV_SNP,
    CpuTee.TDX: EvidenceKind.INTEL_TDX,
    CpuTee.COCO_SEV_SNP: EvidenceKind.AMD_SEV_SNP,
    CpuTee.COCO_TDX: EvidenceKind.INTEL_TDX,
}


@contextlib.contextmanager
def hardware_collectors(
    gpu: GpuCollector,
    cpu: CpuTee,
    *,
    nvattest: str = "nvattest",
    configfs_tsm_root: Path | None = None,
    coco_agent_url: str | None = None,
    collateral: CollateralCache | None = None,
    nras: CollateralFetcher | None = None,
    on_nras: Callable[[NrasStapleOutcome, str], None] | None = None,
) -> Iterator[list[EvidenceCollector]]:
    """The collectors for this VM, closed on exit. Raises EvidenceCollectionError if none is chosen.

    With ``collateral``, the GPU, SEV-SNP and TDX collectors staple what an offline verifier
    needs (RIMs, OCSP answers, AMD certificates, Intel PCS collateral), fetched and cached
    through it. With ``nras`` as well (the fetcher that reaches NVIDIA's NRAS), the GPU
    evidence also gets an NRAS token and its key set (``NrasTokenStapler``), each outcome
    reported to ``on_nras``.
    """
    if gpu is GpuCollector.NONE and cpu is CpuTee.NONE:
        raise EvidenceCollectionError(
            "no evidence collector chosen: name the GPU collector and/or the CPU TEE of this VM"
        )
    if nras is not None and (collateral is None or gpu is GpuCollector.NONE):
        raise EvidenceCollectionError("NRAS tokens are stapled to GPU evidence, with the collateral cache")
    with contextlib.ExitStack() as stack:
        collectors: list[EvidenceCollector] = []
        if gpu is GpuCollector.NV_LOCAL_GPU_VERIFIER:
            from .nvidia import NvidiaGpuCollector

            collectors.append(stack.enter_context(NvidiaGpuCollector()))
        elif gpu is GpuCollector.NVATTEST:
            from .nvidia import NvattestCollector

            collectors.append(NvattestCollector(executable=nvattest))
        if collectors and collateral is not None:
            from .nvidia import NvidiaCollateralStapler

            collectors[0] = NvidiaCollateralStapler(collectors[0], collateral)
            if nras is not None:
                from .nvidia import NrasTokenStapler

                collectors[0] = NrasTokenStapler(collectors[0], collateral, nras, on_outcome=on_nras)
        if cpu is not CpuTee.NONE:
            from .cpu import CocoEvidenceCollector, ConfigfsTsmCollector

            kind = _CPU_KINDS[cpu]
            tsm: EvidenceCollector
            if cpu in (CpuTee.COCO_SEV_SNP, CpuTee.COCO_TDX):
                tsm = (
                    CocoEvidenceCollector(kind)
                    if coco_agent_url is None
                    else CocoEvidenceCollector(kind, url=coco_agent_url)
                )
            elif configfs_tsm_root is None:
                tsm = ConfigfsTsmCollector(kind)
            else:
                tsm = ConfigfsTsmCollector(kind, root=configfs_tsm_root)
            if kind is EvidenceKind.AMD_SEV_SNP and collateral is not None:
                from .cpu import SevSnpCollateralStapler

                tsm = SevSnpCollateralStapler(tsm, collateral)
            elif collateral is not None:
                from .cpu import TdxCollateralStapler

                tsm = TdxCollateralStapler(tsm, collateral)
            collectors.append(tsm)
        yield collectors

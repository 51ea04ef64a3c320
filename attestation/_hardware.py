"""Choosing the hardware evidence collectors of a confidential VM, for both CLIs.

`fedseal-aggregator` and `fedseal-attest collect` both build their collectors here, so an
operator names the hardware the same way everywhere:

* GPU: ``nv-local-gpu-verifier`` (NVIDIA's Python package over NVML), ``nvattest``
  (NVIDIA's successor CLI) or ``none``;
* CPU TEE: ``sev-snp`` or ``tdx`` (both through Linux configfs-tsm) or ``none``.

GPU evidence is collected first; the CPU report then covers it (see
:func:`attestation.cpu.cpu_report_data`), so one client challenge covers both. The NVIDIA
packages are imported only when a GPU collector is asked for.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from pathlib import Path

from ._bundle import EvidenceKind
from ._collateral import CollateralCache
from ._collect import EvidenceCollector
from ._errors import EvidenceCollectionError

__all__ = ["CpuTee", "GpuCollector", "hardware_collectors"]


class GpuCollector(enum.Enum):
    NV_LOCAL_GPU_VERIFIER = "nv-local-gpu-verifier"
    NVATTEST = "nvattest"
    NONE = "none"


class CpuTee(enum.Enum):
    SEV_SNP = "sev-snp"
    TDX = "tdx"
    NONE = "none"


@contextlib.contextmanager
def hardware_collectors(
    gpu: GpuCollector,
    cpu: CpuTee,
    *,
    nvattest: str = "nvattest",
    configfs_tsm_root: Path | None = None,
    collateral: CollateralCache | None = None,
) -> Iterator[list[EvidenceCollector]]:
    """The collectors for this VM, closed on exit. Raises EvidenceCollectionError if none is chosen.

    With ``collateral``, the GPU and SEV-SNP collectors staple what an offline verifier
    needs (RIMs, OCSP answers, AMD certificates), fetched and cached through it.
    """
    if gpu is GpuCollector.NONE and cpu is CpuTee.NONE:
        raise EvidenceCollectionError(
            "no evidence collector chosen: name the GPU collector and/or the CPU TEE of this VM"
        )
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
        if cpu is not CpuTee.NONE:
            from .cpu import ConfigfsTsmCollector

            kind = EvidenceKind.AMD_SEV_SNP if cpu is CpuTee.SEV_SNP else EvidenceKind.INTEL_TDX
            tsm: EvidenceCollector = (
                ConfigfsTsmCollector(kind)
                if configfs_tsm_root is None
                else ConfigfsTsmCollector(kind, root=configfs_tsm_root)
            )
            if kind is EvidenceKind.AMD_SEV_SNP and collateral is not None:
                from .cpu import SevSnpCollateralStapler

                tsm = SevSnpCollateralStapler(tsm, collateral)
            collectors.append(tsm)
        yield collectors

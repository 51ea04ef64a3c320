"""Expected launch measurements: what a policy's allow-list must hold for the operator's VM.

A client accepts CPU TEE evidence only if its launch measurement is one the policy lists
(``amd_sev_snp.measurements``, ``intel_tdx.mrtd``). The operator computes it from the very
files the VM boots, never from a running VM (which would pin whatever it happens to run):

* **AMD SEV-SNP**: :func:`snp_launch_measurement` runs the maintained ``sev-snp-measure``
  package (virtee), which replays the firmware's page-by-page launch digest over the OVMF
  image, the kernel/initrd/command-line hash table (measured direct boot), the secrets,
  CPUID and VMSA pages of every vCPU. The inputs must be exactly those the VMM gets: the
  same OVMF build, vCPU count and type, guest features, and VMM flavour (QEMU, or a cloud's
  VMM: ``ec2``, ``gce``).
* **Intel TDX**: MRTD and RTMR0..2 depend on the TD's firmware (TDVF) layout and on the
  VMM's TD HOB and ACPI tables, and no maintained Python package computes them. The tools
  that do are Rust programs outside FedSeal's dependencies: ``dstack-mr`` of the dstack
  project and its fork ``tdx-measure`` (for Canonical's TDX boot chains). The operator
  runs one, or reads the values from a TD booted from the reviewed image, and passes them
  to ``fedseal-attest measure tdx --mrtd HEX``, which checks and writes them.

``sev-snp-measure`` is the ``measure`` extra (``pip install 'fedseal[measure]'``) and is
imported only here, when a measurement is asked for.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseal.errors import FedSealError

from .cpu._policy import SNP_MEASUREMENT_SIZE

__all__ = ["MeasurementError", "SnpLaunch", "SnpVmm", "snp_launch_measurement", "snp_vcpu_types"]

# AMD's guest-features default in sev-snp-measure and QEMU: SNPActive only.
DEFAULT_GUEST_FEATURES = 0x1
_MAX_VCPUS = 512


class MeasurementError(FedSealError):
    """The launch measurement cannot be computed from these inputs (a missing or unreadable
    file, an OVMF image without SEV-SNP metadata, a kernel for an OVMF that cannot measure
    it, or ``sev-snp-measure`` not installed)."""


class SnpVmm(enum.Enum):
    """The VMM that launches the guest: each builds the VMSA and CPUID pages its own way."""

    QEMU = "qemu"
    EC2 = "ec2"
    GCE = "gce"


@dataclass(frozen=True)
class SnpLaunch:
    """What the VMM launches: the inputs of the SEV-SNP launch digest.

    ``vcpu_type`` is a QEMU CPU model name (``EPYC-v4``, ``EPYC-Milan``... see
    :func:`snp_vcpu_types`); ``vcpu_sig`` the raw CPUID signature instead. QEMU needs one of
    them; GCE's VMM ignores it. ``kernel``, ``initrd`` and ``append`` are for measured direct
    boot (the OVMF must be an ``AmdSevX64`` build with a kernel-hashes table).
    """

    ovmf: Path
    vcpus: int
    vcpu_type: str | None = None
    vcpu_sig: int | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    guest_features: int = DEFAULT_GUEST_FEATURES
    vmm: SnpVmm = SnpVmm.QEMU

    def __post_init__(self) -> None:
        vcpus = self.vcpus
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= _MAX_VCPUS:
            raise MeasurementError(f"the vCPU count must be 1..{_MAX_VCPUS}")
        if self.vcpu_type is not None and self.vcpu_sig is not None:
            raise MeasurementError("give the vCPU type or its signature, not both")
        if self.vcpu_type is not None and self.vcpu_type not in snp_vcpu_types():
            raise MeasurementError(
                f"unknown vCPU type {self.vcpu_type!r} (known: {', '.join(snp_vcpu_types())})"
            )
        if self.vcpu_sig is not None and not 0 <= self.vcpu_sig <= 0xFFFFFFFF:
            raise MeasurementError("the vCPU signature must be a 32-bit value")
        if self.vmm is not SnpVmm.GCE and self.vcpu_type is None and self.vcpu_sig is None:
            raise MeasurementError(f"the {self.vmm.value} VMM needs the vCPU type (or signature)")
        if (self.initrd is not None or self.append is not None) and self.kernel is None:
            raise MeasurementError("an initrd or a kernel command line is measured only with a kernel")
        if not 0 <= self.guest_features <= 0xFFFFFFFFFFFFFFFF:
            raise MeasurementError("guest features must be a 64-bit value")
        if self.append is not None and "\x00" in self.append:
            raise MeasurementError("the kernel command line (--append) must not contain NUL")
        if self.append is not None:
            # sev-snp-measure hashes it as UTF-8; an argv byte the locale could not decode would
            # otherwise fail there, reported as a bad OVMF.
            try:
                self.append.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise MeasurementError(
                    f"the kernel command line (--append) is not UTF-8 text (character {exc.start + 1})"
                ) from None


# sev-snp-measure's VMMType member names.
_VMM_NAMES = {SnpVmm.QEMU: "QEMU", SnpVmm.EC2: "ec2", SnpVmm.GCE: "gce"}


def snp_vcpu_types() -> tuple[str, ...]:
    """QEMU CPU model names sev-snp-measure knows the signature of."""
    return tuple(_library().vcpu_types.CPU_SIGS)


def snp_launch_measurement(launch: SnpLaunch) -> bytes:
    """The 48-byte SEV-SNP launch MEASUREMENT of ``launch``; raise :class:`MeasurementError`."""
    library = _library()
    for path in (launch.ovmf, launch.kernel, launch.initrd):
        if path is not None and not os.path.isfile(path):
            raise MeasurementError(f"{path} is not a readable file")
    vcpu_sig = launch.vcpu_sig
    if launch.vcpu_type is not None:
        vcpu_sig = library.vcpu_types.CPU_SIGS[launch.vcpu_type]
    try:
        digest = library.guest.calc_launch_digest(
            library.SevMode.SEV_SNP,
            launch.vcpus,
            vcpu_sig,
            str(launch.ovmf),
            None if launch.kernel is None else str(launch.kernel),
            None if launch.initrd is None else str(launch.initrd),
            launch.append,
            launch.guest_features,
            vmm_type=library.VMMType[_VMM_NAMES[launch.vmm]],
        )
    except (RuntimeError, ValueError, IndexError, KeyError, struct.error) as exc:
        # The package reports a malformed OVMF (no SEV metadata or footer table) this way.
        raise MeasurementError(f"cannot measure {launch.ovmf}: {exc}") from exc
    except AssertionError:
        # ... and a file of another size than whole 4 KiB pages with a bare assert.
        raise MeasurementError(
            f"cannot measure {launch.ovmf}: not an OVMF image (sev-snp-measure's layout checks fail)"
        ) from None
    except OSError as exc:
        raise MeasurementError(f"cannot read the launch inputs: {exc.strerror or exc}") from exc
    if not isinstance(digest, bytes) or len(digest) != SNP_MEASUREMENT_SIZE:
        raise MeasurementError("sev-snp-measure returned a digest of the wrong size")
    return digest


def _library() -> _SevSnpMeasure:
    try:
        from sevsnpmeasure import guest, vcpu_types, vmm_types
        from sevsnpmeasure.sev_mode import SevMode
    except ImportError as exc:
        raise MeasurementError(
            "computing a SEV-SNP measurement needs the sev-snp-measure package: "
            "pip install 'fedseal[measure]'"
        ) from exc
    return _SevSnpMeasure(guest, vcpu_types, SevMode, vmm_types.VMMType)


class _SevSnpMeasure:
    """The parts of sev-snp-measure used here (an untyped package)."""

    def __init__(self, guest: object, vcpu_types: object, sev_mode: object, vmm_type: object) -> None:
        self.guest: Any = guest
        self.vcpu_types: Any = vcpu_types
        self.SevMode: Any = sev_mode
        self.VMMType: Any = vmm_type

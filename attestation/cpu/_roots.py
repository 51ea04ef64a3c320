"""The pinned vendor roots shipped with FedSeal (``attestation/cpu/roots/``, see SOURCE.txt there).

Loaded from package data on each call: a handful of small certificates, parsed in
microseconds, and no process-wide cache to reason about.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from cryptography import x509

from ._policy import SevSnpProduct

__all__ = ["AmdRoots", "amd_roots", "intel_sgx_root_ca_der"]


@dataclass(frozen=True)
class AmdRoots:
    """One product's AMD keys: the ARK (the trust anchor) and its two intermediates."""

    product: SevSnpProduct
    #: AMD Root Key: self-signed, the only certificate trusted as such.
    ark: x509.Certificate
    #: AMD SEV Key: signs VCEKs. Used when the evidence carries no ASK of its own.
    ask: x509.Certificate
    #: AMD SEV VLEK Key: signs VLEKs. Used when the evidence carries no ASVK of its own.
    asvk: x509.Certificate


def _read(name: str) -> bytes:
    return files("attestation.cpu").joinpath("roots", name).read_bytes()


def amd_roots(product: SevSnpProduct) -> AmdRoots:
    """The pinned ARK, ASK and ASVK of ``product``."""
    stem = f"amd-{product.value.lower()}"
    return AmdRoots(
        product=product,
        ark=x509.load_pem_x509_certificate(_read(f"{stem}-ark.pem")),
        ask=x509.load_pem_x509_certificate(_read(f"{stem}-ask.pem")),
        asvk=x509.load_pem_x509_certificate(_read(f"{stem}-asvk.pem")),
    )


def intel_sgx_root_ca_der() -> bytes:
    """The pinned Intel SGX Root CA (DER), the trust anchor of every DCAP (TDX) quote."""
    return _read("intel-sgx-root-ca.der")

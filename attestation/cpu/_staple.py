"""Aggregator side: staple the AMD certificates an offline verifier needs to SEV-SNP evidence.

:class:`SevSnpCollateralStapler` wraps the configfs-tsm collector. A report is signed by
the chip's VCEK (or a cloud's VLEK), which chains through the ASK (ASVK) to AMD's ARK.
The host usually supplies them in the extended report's certificate table (configfs-tsm's
``auxblob``); what it does not, the stapler fetches from AMD KDS through a
:class:`~attestation.CollateralCache` (the VCEK per chip and TCB, the ASK and ARK per
product) and writes into the table, so a client needs no network. A VLEK cannot be fetched
by chip id: it must come from the host. Stapled certificates are verified by the client
like any other (chain to the pinned ARK, TCB and chip id against the report).
"""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .._bundle import Evidence, EvidenceKind
from .._collateral import CollateralCache, CollateralValidity, refresh_before
from .._errors import EvidenceCollectionError, EvidenceFormatError
from .._fetch import CollateralRequest
from ._policy import SevSnpProduct
from ._snp import (
    AMD_KDS_BASE_URL,
    SNP_REPORT_SIZE,
    SnpCertGuid,
    SnpSigningKey,
    encode_snp_cert_table,
    parse_sev_snp_payload,
    vcek_kds_url,
)

if TYPE_CHECKING:  # a runtime import would be circular (_collect imports this package)
    from .._collect import EvidenceCollector

__all__ = ["SevSnpCollateralStapler", "amd_cert_chain_url"]

# AMD certificates live for years; refresh a month before expiry, and look weekly anyway.
_MARGIN = datetime.timedelta(days=30)
_AT_MOST = datetime.timedelta(days=7)


def amd_cert_chain_url(product: SevSnpProduct, signing_key: SnpSigningKey) -> str:
    """AMD KDS URL of the ASK+ARK (VCEK) or ASVK+ARK (VLEK) chain of ``product`` (PEM)."""
    kind = "vcek" if signing_key is SnpSigningKey.VCEK else "vlek"
    return f"{AMD_KDS_BASE_URL}/{kind}/v1/{product.value}/cert_chain"


def _validity(certs: list[x509.Certificate], now: datetime.datetime) -> CollateralValidity:
    return refresh_before(min(c.not_valid_after_utc for c in certs), now, margin=_MARGIN, at_most=_AT_MOST)


class SevSnpCollateralStapler:
    """An ``amd-sev-snp`` collector whose certificate table always holds the endorsement
    key and its intermediate and root (see the module docstring)."""

    def __init__(self, inner: EvidenceCollector, cache: CollateralCache) -> None:
        if inner.kind is not EvidenceKind.AMD_SEV_SNP:
            raise EvidenceCollectionError("the SEV-SNP stapler wraps an amd-sev-snp collector")
        self._inner = inner
        self._cache = cache

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.AMD_SEV_SNP

    def collect(self, binding: bytes) -> Evidence:
        item = self._inner.collect(binding)
        try:
            report, table = parse_sev_snp_payload(item.payload)
        except EvidenceFormatError as exc:
            raise EvidenceCollectionError(f"the SEV-SNP evidence does not parse: {exc}") from None
        certs: dict[uuid.UUID, bytes] = dict(table)
        product = report.product_from_cpuid()
        vcek = report.signing_key is SnpSigningKey.VCEK
        leaf_guid = (SnpCertGuid.VCEK if vcek else SnpCertGuid.VLEK).value
        if leaf_guid not in certs:
            if not vcek:
                raise EvidenceCollectionError(
                    "the report is signed by a VLEK and the host supplied none: a VLEK cannot be "
                    "fetched from AMD KDS, so configure the host to provide it (certificate table)"
                )
            if product is None or report.chip_id == bytes(len(report.chip_id)):
                raise EvidenceCollectionError(
                    "the host supplied no VCEK and the report names no product or chip id to fetch it "
                    "with: configure the host to provide the certificate table"
                )
            url = vcek_kds_url(product, report.chip_id, report.tcb(product))
            certs[leaf_guid] = self._cache.get(
                CollateralRequest(url=url),
                lambda body, now: _validity([x509.load_der_x509_certificate(body)], now),
                what=f"AMD VCEK ({product.value}, TCB {report.tcb(product)})",
            )
        if SnpCertGuid.ASK.value not in certs and product is not None:
            pem = self._cache.get(
                CollateralRequest(url=amd_cert_chain_url(product, report.signing_key)),
                lambda body, now: _validity(_two_certs(body), now),
                what=f"AMD {'ASK' if vcek else 'ASVK'} and ARK ({product.value})",
            )
            intermediate, root = _two_certs(pem)
            certs[SnpCertGuid.ASK.value] = intermediate.public_bytes(serialization.Encoding.DER)
            certs.setdefault(SnpCertGuid.ARK.value, root.public_bytes(serialization.Encoding.DER))
        if certs == table:
            return item  # the host's table is complete: ship it as the host made it
        payload = report.raw[:SNP_REPORT_SIZE] + encode_snp_cert_table(certs.items())
        return Evidence(kind=EvidenceKind.AMD_SEV_SNP, payload=payload)


def _two_certs(pem: bytes) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(pem)
    if len(certs) != 2:
        raise ValueError(f"AMD KDS cert_chain should hold 2 certificates, got {len(certs)}")
    return certs

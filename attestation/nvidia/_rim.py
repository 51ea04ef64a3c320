"""NVIDIA Reference Integrity Manifests (RIMs): locate, verify, read golden measurements.

A RIM is a TCG/ISO SWID tag (XML) signed with an enveloped XML signature whose
``ds:X509Data`` carries the signing chain. Verification here:

1. the chain in the RIM (its own root dropped) must verify up to the PINNED NVIDIA CoRIM
   signing root at the verification time (link by link with ``cryptography``'s
   ``verify_directly_issued_by``: see ``_pki.verify_chain_links`` for why not its path
   validator);
2. the XML signature must verify under that chain's leaf with ``signxml`` (current 5.x;
   NVIDIA's ``verifier.rim`` needs signxml 3.2, which no longer imports next to current
   ``cryptography``). ``signxml`` checks the signing certificate's validity itself; it is
   given the same pinned verification time through ``SignatureConfiguration(
   verification_time=...)``, so an expired sample RIM verifies when, and only when, the
   caller pins a time inside its certificates' validity;
3. golden measurements are read from the element ``signxml`` returns as signed, never
   from the document as received.

``signxml`` and ``lxml`` are imported lazily: they come with ``fedseal[nvidia]``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from cryptography import x509

from fedseal import strictjson

from .._errors import EvidenceFormatError
from ._errors import (
    NvidiaVerifierUnavailableError,
    RimCertificateChainError,
    RimCertificateExpiredError,
    RimDigestMismatchError,
    RimSignatureError,
)
from ._pki import ChainFailure, common_name, verify_chain_links
from ._spdm import OpaqueField, SpdmReport

if TYPE_CHECKING:
    from lxml import etree

__all__ = [
    "RIM_SERVICE_URL",
    "GoldenMeasurement",
    "RimKind",
    "VerifiedRim",
    "driver_rim_id",
    "parse_rim_service_answer",
    "rim_signing_chain",
    "vbios_rim_id",
    "verify_rim",
]

#: NVIDIA's RIM service; GET <this><file id> answers JSON with the RIM base64 in "rim".
RIM_SERVICE_URL = "https://rim.attestation.nvidia.com/v1/rim/"

_NS = {
    "swid": "http://standards.iso.org/iso/19770/-2/2015/schema.xsd",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
}
_SHA384_NS = "{http://www.w3.org/2001/04/xmlenc#sha384}"
_MAX_ALTERNATIVES = 16


class RimKind(enum.Enum):
    DRIVER = "driver"
    VBIOS = "VBIOS"


@dataclass(frozen=True)
class GoldenMeasurement:
    """One RIM resource: the SHA-384 values block ``index + 1`` of the report may take."""

    index: int
    values: tuple[bytes, ...]
    size: int
    active: bool


@dataclass(frozen=True)
class VerifiedRim:
    """A RIM whose chain and signature verified; every field comes from the signed XML."""

    file_id: str
    version: str
    golden: Mapping[int, GoldenMeasurement]
    signer: str
    #: The verified signing chain, leaf first, pinned root last (for revocation checks).
    path: tuple[x509.Certificate, ...]


def driver_rim_id(driver_version: str) -> str:
    """The RIM service id of a Hopper driver's RIM (NVIDIA: ``NV_GPU_DRIVER_GH100_<version>``)."""
    return f"NV_GPU_DRIVER_GH100_{driver_version}"


def vbios_rim_id(report: SpdmReport) -> str | None:
    """The RIM service id of the report's VBIOS RIM, or None when the report lacks the fields."""
    parts = [
        report.opaque_text(f) for f in (OpaqueField.PROJECT, OpaqueField.PROJECT_SKU, OpaqueField.CHIP_SKU)
    ]
    vbios = report.vbios_version
    if vbios is None or any(not p for p in parts):
        return None
    project, project_sku, chip_sku = (str(p).upper() for p in parts)
    return f"NV_GPU_VBIOS_{project}_{project_sku}_{chip_sku}_{vbios.replace('.', '').upper()}"


def parse_rim_service_answer(body: bytes, file_id: str) -> bytes:
    """The RIM XML out of the RIM service's JSON answer ``{"id": ..., "rim": "<base64>"}``."""
    try:
        document = strictjson.loads(body, what="RIM service answer")
        return base64.b64decode(document["rim"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise EvidenceFormatError(f"the RIM service's answer for {file_id} is not a RIM") from None


def verify_rim(xml: bytes, *, file_id: str, root: x509.Certificate, now: datetime.datetime) -> VerifiedRim:
    """Verify a RIM (see the module docstring) and return its signed content.

    Raises :class:`RimCertificateChainError` / :class:`RimCertificateExpiredError` (chain),
    :class:`RimSignatureError` / :class:`RimDigestMismatchError` (XML signature),
    :class:`~attestation.EvidenceFormatError` (malformed) or
    :class:`NvidiaVerifierUnavailableError` (``signxml``/``lxml`` missing).
    """
    try:
        from signxml.algorithms import DigestAlgorithm, SignatureMethod
        from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature
        from signxml.verifier import SignatureConfiguration, XMLVerifier
    except ImportError as exc:
        raise NvidiaVerifierUnavailableError(
            f"RIM verification needs signxml and lxml (pip install 'fedseal[nvidia]'): {exc}"
        ) from None

    document = _parse_rim_xml(xml, file_id)
    chain = _embedded_chain(document, file_id)
    outcome = verify_chain_links(chain, root, now)
    if outcome.path is None:
        error = (
            RimCertificateExpiredError
            if outcome.failure is ChainFailure.VALIDITY
            else RimCertificateChainError
        )
        raise error(
            f"RIM {file_id}: signing chain does not verify to the pinned NVIDIA RIM root: {outcome.detail}"
        )
    leaf = outcome.path[0]

    config = SignatureConfiguration(
        require_x509=True,
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=now,
    )
    try:
        result = XMLVerifier().verify(xml, x509_cert=leaf, expect_config=config)
    except InvalidDigest:
        raise RimDigestMismatchError(
            f"RIM {file_id}: content differs from what was signed (its digest does not match): "
            "the golden measurements were altered after signing"
        ) from None
    except InvalidCertificate as exc:
        raise RimCertificateExpiredError(
            f"RIM {file_id}: signing certificate not valid at {now:%Y-%m-%d}: {exc}"
        ) from None
    except InvalidSignature:
        raise RimSignatureError(
            f"RIM {file_id}: XML signature does not verify under its signing certificate"
        ) from None
    except InvalidInput as exc:
        raise EvidenceFormatError(f"RIM {file_id}: unusable XML signature: {exc}") from None
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None:
        raise EvidenceFormatError(f"RIM {file_id}: signature does not cover an XML element")
    version, golden = _read_signed(signed, file_id)
    return VerifiedRim(
        file_id=file_id,
        version=version,
        golden=MappingProxyType(golden),
        signer=common_name(leaf),
        path=outcome.path,
    )


def rim_signing_chain(xml: bytes, file_id: str) -> list[x509.Certificate]:
    """The signing chain a RIM carries (leaf first), parsed but NOT verified: for the
    aggregator's stapler, which must know which certificates need OCSP answers."""
    return _embedded_chain(_parse_rim_xml(xml, file_id), file_id)


def _parse_rim_xml(xml: bytes, file_id: str) -> etree._Element:
    """The RIM's XML tree, parsed without entities, DTDs or network (the one parser setting
    both the verifier and the stapler use)."""
    try:
        from lxml import etree
    except ImportError as exc:
        raise NvidiaVerifierUnavailableError(
            f"reading a RIM needs lxml (pip install 'fedseal[nvidia]'): {exc}"
        ) from None
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
    try:
        return etree.fromstring(xml, parser=parser)
    except etree.XMLSyntaxError:
        raise EvidenceFormatError(f"RIM {file_id} is not well-formed XML") from None


def _embedded_chain(document: etree._Element, file_id: str) -> list[x509.Certificate]:
    texts = document.findall("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", _NS)
    if not texts or len(texts) > 8:
        raise EvidenceFormatError(f"RIM {file_id} carries no usable ds:X509Certificate chain")
    chain = []
    for element in texts:
        try:
            der = base64.b64decode("".join((element.text or "").split()), validate=True)
            chain.append(x509.load_der_x509_certificate(der))
        except (ValueError, binascii.Error):
            raise EvidenceFormatError(f"RIM {file_id} carries a certificate that does not parse") from None
    return chain


def _read_signed(signed: Any, file_id: str) -> tuple[str, dict[int, GoldenMeasurement]]:
    meta = signed.find("swid:Meta", _NS)
    payload = signed.find("swid:Payload", _NS)
    if meta is None or payload is None or not meta.get("colloquialVersion"):
        raise EvidenceFormatError(f"RIM {file_id} lacks Meta/colloquialVersion or Payload")
    golden: dict[int, GoldenMeasurement] = {}
    for resource in payload.findall("swid:Resource", _NS):
        try:
            index = int(resource.get("index", ""))
            alternatives = int(resource.get("alternatives", ""))
            size = int(resource.get("size", ""))
            active = {"True": True, "False": False}[resource.get("active", "")]
            if not 1 <= alternatives <= _MAX_ALTERNATIVES or not 0 <= index < 256:
                raise ValueError
            values = tuple(
                bytes.fromhex(resource.get(f"{_SHA384_NS}Hash{i}", "")) for i in range(alternatives)
            )
        except (ValueError, KeyError):
            raise EvidenceFormatError(f"RIM {file_id} has a malformed measurement resource") from None
        if index in golden:
            raise EvidenceFormatError(f"RIM {file_id} lists measurement index {index} twice")
        golden[index] = GoldenMeasurement(index=index, values=values, size=size, active=active)
    if not any(m.active for m in golden.values()):
        raise EvidenceFormatError(f"RIM {file_id} has no active golden measurement")
    return str(meta.get("colloquialVersion")), golden

"""A test PKI that imitates NVIDIA's: device chain, SPDM reports, signed RIMs, OCSP, NRAS.

Real NVIDIA reports cannot carry a nonce derived from a FedSeal binding (nobody but a GPU
can sign one), and nothing here can sign as NVIDIA. So tests that need a *positive*
end-to-end path, or revocation answers, build evidence with this PKI, whose layout follows
the real samples (5-certificate chain with a TCG DICE FWID extension, SPDM 1.1 report with
NVIDIA's opaque fields, SWID RIMs signed with XML-DSig ECDSA-SHA384). The verifier is
pointed at these roots through ``TrustAnchors`` (only the test seam accepts them), and the
same evidence sent through ``verify_bundle`` fails the NVIDIA root pin.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner

from attestation import CollateralRequest, CollateralUnavailableError
from attestation.nvidia import (
    NRAS_GPU_ATTEST_URL,
    NRAS_ISSUER,
    NRAS_JWKS_URL,
    NVIDIA_OCSP_URL,
    RIM_SERVICE_URL,
    CcMode,
    GpuEvidence,
    NvidiaGpuEvidence,
    StapledRim,
    TrustAnchors,
    parse_attestation_report,
)

T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
FAR = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
DRIVER = "570.86.10"
VBIOS = "96.00.AF.00.01"
VBIOS_FIELD = bytes.fromhex("00af009601000000")
FWID_OID = x509.ObjectIdentifier("2.23.133.5.4.1")
DRIVER_RIM_ID = f"NV_GPU_DRIVER_GH100_{DRIVER}"
VBIOS_RIM_ID = "NV_GPU_VBIOS_G520_0200_885_9600AF0001"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedSeal Test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class Ca:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_cert(
    cn: str,
    issuer: Ca | None,
    *,
    ca: bool,
    not_before: datetime.datetime = T0,
    not_after: datetime.datetime = FAR,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Ca:
    key = key or ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    signer = issuer.key if issuer else key
    return Ca(cn, key, builder.sign(signer, hashes.SHA384()))


def fwid_extension(fwid: bytes) -> x509.UnrecognizedExtension:
    # A TcbInfo-shaped DER blob whose last field is the 48-byte FWID, as on Hopper.
    inner = bytes.fromhex("0609608648016503040202") + b"\x04\x30" + fwid
    value = (
        b"\x30"
        + bytes([len(inner) + 4])
        + b"\xa6"
        + bytes([len(inner) + 2])
        + b"\x30"
        + bytes([len(inner)])
        + inner
    )
    return x509.UnrecognizedExtension(FWID_OID, value)


@dataclass
class DeviceChain:
    root: Ca
    intermediates: list[Ca]
    leaf: Ca
    fwid: bytes

    def pem(self, *, with_root: bool = True) -> bytes:
        certs = [self.leaf.cert, *[c.cert for c in reversed(self.intermediates)]]
        if with_root:
            certs.append(self.root.cert)
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def issuer_of(self, cert: x509.Certificate) -> Ca:
        for ca in [self.root, *self.intermediates]:
            if ca.cert.subject == cert.issuer:
                return ca
        raise KeyError(cert.subject)


def make_device_chain(
    root: Ca | None = None, *, expired_intermediate: bool = False, fwid: bytes | None = None
) -> DeviceChain:
    root = root or make_cert("Test Device Identity CA", None, ca=True)
    identity = make_cert("Test GH100 Identity", root, ca=True)
    provisioner = make_cert(
        "Test GH100 Provisioner ICA 1",
        identity,
        ca=True,
        not_after=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) if expired_intermediate else FAR,
    )
    brom = make_cert("Test GH100 A01 GSP BROM", provisioner, ca=True)
    fwid = fwid or hashlib.sha384(b"fmc firmware").digest()
    leaf = make_cert("Test GH100 A01 GSP FMC LF", brom, ca=False, extensions=[(fwid_extension(fwid), False)])
    return DeviceChain(root, [identity, provisioner, brom], leaf, fwid)


def measurement_values(count: int = 64, seed: bytes = b"gpu") -> dict[int, bytes]:
    """SPDM block index (1-based) -> 48-byte value."""
    return {i: hashlib.sha384(seed + bytes([i])).digest() for i in range(1, count + 1)}


def make_report(
    signer: ec.EllipticCurvePrivateKey,
    nonce: bytes,
    *,
    measurements: Mapping[int, bytes] | None = None,
    driver: str = DRIVER,
    vbios_field: bytes = VBIOS_FIELD,
    fwid: bytes | None = None,
    extra_opaque: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    measurements = measurements if measurements is not None else measurement_values()
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    record = b""
    for index, value in sorted(measurements.items()):
        dmtf = b"\x01" + struct.pack("<H", len(value)) + value
        record += bytes([index, 0x01]) + struct.pack("<H", len(dmtf)) + dmtf
    fields = [
        (3, driver.encode() + b"\0"),
        (6, vbios_field),
        (15, b"885\0\0\0\0\0\0"),
        (17, b"G520\0"),
        (18, b"0200\0"),
    ]
    if fwid is not None:
        fields.append((20, fwid))
    fields.extend(extra_opaque)
    opaque = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in fields)
    response = (
        bytes([0x11, 0x60, 0x00, 0x00, len(measurements)])
        + len(record).to_bytes(3, "little")
        + record
        + hashlib.sha256(b"responder").digest()
        + struct.pack("<H", len(opaque))
        + opaque
    )
    signed = request + response
    r, s = utils.decode_dss_signature(signer.sign(signed, ec.ECDSA(hashes.SHA384())))
    return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big")


@dataclass
class RimPki:
    root: Ca
    ca: Ca
    l3: Ca
    signer: Ca


def make_rim_pki(root: Ca | None = None, *, signer_not_after: datetime.datetime = FAR) -> RimPki:
    root = root or make_cert("Test CoRIM signing Root CA", None, ca=True)
    ca = make_cert("Test Reference Value GH100 CA", root, ca=True)
    l3 = make_cert("Test Reference Value L3 GH100", ca, ca=True)
    signer = make_cert("Test HCC RIM L4 Signer", l3, ca=False, not_after=signer_not_after)
    return RimPki(root, ca, l3, signer)


_SWID = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
_SHA384 = "http://www.w3.org/2001/04/xmlenc#sha384"


def make_rim(
    pki: RimPki, version: str, golden: Mapping[int, bytes], *, inactive: Sequence[int] = ()
) -> bytes:
    """A SWID RIM signed like NVIDIA's: golden RIM index -> value (RIM index i = SPDM block i + 1)."""
    nsmap = {None: _SWID, "ns0": _SWID, "ns2": _SHA384}
    root = etree.Element(
        f"{{{_SWID}}}SoftwareIdentity", nsmap=nsmap, name="GH100", tagId="test", version="1.0"
    )
    etree.SubElement(root, f"{{{_SWID}}}Meta", colloquialVersion=version, product="GH100")
    payload = etree.SubElement(root, f"{{{_SWID}}}Payload")
    for index in sorted({*golden, *inactive}):
        value = golden.get(index, bytes(48))
        etree.SubElement(
            payload,
            f"{{{_SWID}}}Resource",
            {
                "type": "Measurement",
                "index": str(index),
                "active": "False" if index in inactive else "True",
                "alternatives": "1",
                f"{{{_SHA384}}}Hash0": value.hex(),
                "name": f"Measurement_{index}",
                "size": "48",
            },
        )
    signer = XMLSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA384, digest_algorithm=DigestAlgorithm.SHA384
    )
    certs = [
        c.cert.public_bytes(serialization.Encoding.PEM).decode()
        for c in (pki.signer, pki.l3, pki.ca, pki.root)
    ]
    signed = signer.sign(root, key=pki.signer.key, cert=certs)
    return bytes(etree.tostring(signed))


def ocsp_response(
    cert: x509.Certificate,
    issuer: Ca,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    this_update: datetime.datetime = NOW - datetime.timedelta(hours=1),
    next_update: datetime.datetime | None = NOW + datetime.timedelta(days=1),
    responder: Ca | None = None,
) -> bytes:
    """A DER OCSP response for ``cert``, signed by ``issuer`` (or a delegated ``responder``)."""
    signer = responder or issuer
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert,
        issuer=issuer.cert,
        algorithm=hashes.SHA384(),
        cert_status=status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=this_update if status is ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=x509.ReasonFlags.key_compromise if status is ocsp.OCSPCertStatus.REVOKED else None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
    if responder is not None:
        builder = builder.certificates([responder.cert])
    response = builder.sign(signer.key, hashes.SHA384())
    return response.public_bytes(serialization.Encoding.DER)


def delegated_responder(issuer: Ca, *, eku: bool = True) -> Ca:
    extensions: list[tuple[x509.ExtensionType, bool]] = []
    if eku:
        extensions.append((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False))
    return make_cert(f"{issuer.name} OCSP responder", issuer, ca=False, extensions=extensions)


@dataclass
class World:
    """One GPU (or several) with its chain, RIMs and everything needed to answer fetches."""

    device: DeviceChain
    rims: RimPki
    measurements: dict[int, bytes] = field(default_factory=measurement_values)

    @property
    def anchors(self) -> TrustAnchors:
        return TrustAnchors(device_root=self.device.root.cert, rim_root=self.rims.root.cert)

    def golden(self, first: int, last: int) -> dict[int, bytes]:
        """RIM-indexed golden values matching the report's blocks ``first + 1 .. last + 1``."""
        return {i: self.measurements[i + 1] for i in range(first, last + 1)}

    def driver_rim(self) -> bytes:
        return make_rim(self.rims, DRIVER, self.golden(0, 9))

    def vbios_rim(self) -> bytes:
        return make_rim(self.rims, VBIOS, self.golden(10, 19))

    def gpu(self, nonce: bytes, **report_args: object) -> GpuEvidence:
        report = make_report(
            self.device.leaf.key,
            nonce,
            measurements=self.measurements,
            fwid=self.device.fwid,
            **report_args,  # type: ignore[arg-type]
        )
        return GpuEvidence(
            architecture="HOPPER",
            attestation_report=report,
            certificate_chain=self.device.pem(),
            driver_version=DRIVER,
            vbios_version=VBIOS,
            cc_mode=CcMode.ON,
        )

    def evidence(
        self, nonce: bytes, *, gpus: int = 1, staple: bool = True, **kwargs: object
    ) -> NvidiaGpuEvidence:
        rims = (
            (StapledRim(DRIVER_RIM_ID, self.driver_rim()), StapledRim(VBIOS_RIM_ID, self.vbios_rim()))
            if staple
            else ()
        )
        return NvidiaGpuEvidence(gpus=tuple(self.gpu(nonce) for _ in range(gpus)), rims=rims, **kwargs)  # type: ignore[arg-type]

    def all_chain_certs(self) -> list[tuple[x509.Certificate, Ca]]:
        """(certificate, issuer) for every certificate the verifier checks by OCSP."""
        device = [(ca.cert, self.device.issuer_of(ca.cert)) for ca in self.device.intermediates]
        rim = [
            (self.rims.signer.cert, self.rims.l3),
            (self.rims.l3.cert, self.rims.ca),
            (self.rims.ca.cert, self.rims.root),
        ]
        return device + rim

    def good_ocsp(self) -> tuple[bytes, ...]:
        return tuple(ocsp_response(cert, issuer) for cert, issuer in self.all_chain_certs())


def make_world() -> World:
    return World(device=make_device_chain(), rims=make_rim_pki())


class FakeFetcher:
    """Stands in for the network (the only thing tests replace): answers by URL or by a handler."""

    def __init__(
        self,
        answers: Mapping[str, bytes] | None = None,
        *,
        ocsp: Callable[[ocsp.OCSPRequest], bytes | None] | None = None,
    ) -> None:
        self.answers = dict(answers or {})
        self.ocsp = ocsp
        self.requests: list[CollateralRequest] = []

    def fetch(self, request: CollateralRequest) -> bytes:
        self.requests.append(request)
        if request.url == NVIDIA_OCSP_URL and request.body is not None and self.ocsp is not None:
            answer = self.ocsp(ocsp.load_der_ocsp_request(request.body))
            if answer is not None:
                return answer
        elif request.url in self.answers:
            return self.answers[request.url]
        raise CollateralUnavailableError(f"test fetcher: nothing for {request.url}")


def ocsp_responder_for(
    world: World, status: Callable[[x509.Certificate], ocsp.OCSPCertStatus]
) -> Callable[[ocsp.OCSPRequest], bytes | None]:
    """An OCSP "server" answering for the world's certificates with ``status(cert)``."""
    by_serial = {cert.serial_number: (cert, issuer) for cert, issuer in world.all_chain_certs()}

    def answer(request: ocsp.OCSPRequest) -> bytes | None:
        entry = by_serial.get(request.serial_number)
        if entry is None:
            return None
        cert, issuer = entry
        return ocsp_response(cert, issuer, status=status(cert))

    return answer


def rim_service_answer(xml: bytes, file_id: str) -> bytes:
    return json.dumps({"id": file_id, "rim": base64.b64encode(xml).decode()}).encode()


def rim_urls(world: World) -> dict[str, bytes]:
    return {
        RIM_SERVICE_URL + DRIVER_RIM_ID: rim_service_answer(world.driver_rim(), DRIVER_RIM_ID),
        RIM_SERVICE_URL + VBIOS_RIM_ID: rim_service_answer(world.vbios_rim(), VBIOS_RIM_ID),
    }


@dataclass
class NrasIssuer:
    """NRAS's token signer: an ES384 key published in a JWKS with an ``x5c`` certificate
    (as NVIDIA publishes its keys), valid from T0 until ``not_after``."""

    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    kid: str = "test-nras-key"
    not_after: datetime.datetime = FAR

    @functools.cached_property
    def certificate(self) -> x509.Certificate:
        return make_cert("NRAS token signing", None, ca=False, key=self.key, not_after=self.not_after).cert

    def jwks(self) -> bytes:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        jwk.update({"kid": self.kid, "alg": "ES384", "use": "sig", "x5c": [base64.b64encode(der).decode()]})
        return json.dumps({"keys": [jwk]}).encode()

    def pin(self) -> str:
        """The key's pin as a policy's ``nvidia_gpu.nras_key_pins`` lists it."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(der).hexdigest()

    def token(
        self,
        nonce: bytes,
        gpus: int = 1,
        *,
        now: datetime.datetime = NOW,
        gpu_claims: Mapping[str, object] | None = None,
        overall_claims: Mapping[str, object] | None = None,
        algorithm: str = "ES384",
        key: ec.EllipticCurvePrivateKey | bytes | None = None,
    ) -> str:
        iat = int(now.timestamp()) - 60
        base = {"iss": NRAS_ISSUER, "iat": iat, "nbf": iat, "exp": iat + 3600, "eat_nonce": nonce.hex()}
        signing_key = key if key is not None else self.key
        detached = {}
        for index in range(gpus):
            claims = {
                **base,
                "measres": "success",
                "x-nvidia-gpu-driver-version": DRIVER,
                **(gpu_claims or {}),
            }
            detached[f"GPU-{index}"] = jwt.encode(
                claims, signing_key, algorithm=algorithm, headers={"kid": self.kid}
            )
        submods = {
            name: ["DIGEST", ["SHA-256", hashlib.sha256(tok.encode()).hexdigest()]]
            for name, tok in detached.items()
        }
        overall = {**base, "x-nvidia-overall-att-result": True, "submods": submods, **(overall_claims or {})}
        top = jwt.encode(overall, signing_key, algorithm=algorithm, headers={"kid": self.kid})
        return json.dumps([["JWT", top], detached])

    def fetcher_answers(self) -> dict[str, bytes]:
        return {NRAS_JWKS_URL: self.jwks()}


@dataclass
class NrasService:
    """NVIDIA's NRAS behind the CollateralFetcher interface: its key set, and its GPU
    attestation API, which checks a request as NRAS receives it (the fields
    nv-attestation-sdk sends, every report's SPDM nonce equal to the request's, a PEM chain
    per GPU) and answers a detached EAT for that nonce and GPU count, signed by ``issuer``.

    ``down`` makes both fail like an unreachable service; ``token_args`` are passed to
    :meth:`NrasIssuer.token` (a misbehaving NRAS: another key, another nonce, old tokens).
    """

    issuer: NrasIssuer = field(default_factory=NrasIssuer)
    clock: Callable[[], datetime.datetime] = lambda: NOW
    down: bool = False
    token_args: dict[str, object] = field(default_factory=dict)
    requests: list[CollateralRequest] = field(default_factory=list)

    def answer(self, request: CollateralRequest) -> bytes | None:
        """NRAS's answer to ``request``, or None when it is not addressed to NRAS."""
        if request.url not in (NRAS_GPU_ATTEST_URL, NRAS_JWKS_URL):
            return None
        self.requests.append(request)
        if self.down:
            raise CollateralUnavailableError(f"test NRAS is down: {request.url}")
        if request.url == NRAS_JWKS_URL:
            return self.issuer.jwks()
        if request.content_type != "application/json" or request.body is None:
            raise CollateralUnavailableError("test NRAS: HTTP 415, a JSON body is expected")
        body = json.loads(request.body)
        if set(body) != {"arch", "claims_version", "evidence_list", "nonce"} or body["arch"] != "HOPPER":
            raise CollateralUnavailableError(f"test NRAS: HTTP 400, unexpected request fields {sorted(body)}")
        nonce = bytes.fromhex(body["nonce"])
        for entry in body["evidence_list"]:
            report = parse_attestation_report(base64.b64decode(entry["evidence"], validate=True))
            chain = x509.load_pem_x509_certificates(base64.b64decode(entry["certificate"], validate=True))
            if report.request_nonce != nonce or len(chain) < 2:
                raise CollateralUnavailableError("test NRAS: HTTP 400, the report is not for this nonce")
        token_args: dict[str, Any] = {
            "now": self.clock(),
            "gpus": len(body["evidence_list"]),
            **self.token_args,
        }
        return self.issuer.token(nonce, **token_args).encode()

    def fetch(self, request: CollateralRequest) -> bytes:
        answer = self.answer(request)
        if answer is None:
            raise CollateralUnavailableError(f"test NRAS knows nothing at {request.url}")
        return answer

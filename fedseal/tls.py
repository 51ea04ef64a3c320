"""Attested TLS, client side: learn the server's certificate, then pin it.

The aggregator's TLS key is made in enclave memory at every start, with a self-signed
certificate that nobody vouches for: the trust comes from attestation, whose binding (v2,
fedseal/binding.py) covers the SHA-256 of that certificate. gRPC's Python API cannot hand
a client the certificate it saw, so a client:

1. probes: one TLS handshake with the standard library, without verifying anything, to
   read the certificate the endpoint presents (`probe_server_certificate`);
2. opens a gRPC channel whose only trust anchor is exactly that certificate
   (`pinned_channel`): any other certificate fails the handshake, and only the holder of
   that certificate's key can complete it;
3. fetches the evidence over that channel, verifies it, and sends nothing else unless the
   attested certificate digest equals the probed one (client_sdk does this).

A proxy that terminates TLS presents its own certificate, which the probe sees and the
attestation does not name: the client refuses to send (step 3). A TCP load balancer that
passes TLS through changes nothing. Where TLS must terminate at a load balancer, the
client can opt in to a channel verified against the load balancer's CA instead
(`ca_channel`); the envelope then still protects every update end to end, but the channel
no longer proves it reaches the enclave (see deploy/README.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from fedseal.errors import FedSealError, FormatError

__all__ = [
    "ENCLAVE_TLS_NAME",
    "ClientTlsCredentials",
    "ServerCertificate",
    "TlsProbeError",
    "ca_channel",
    "pinned_channel",
    "probe_server_certificate",
    "refuse_private_key_in",
    "split_endpoint",
]

# The DNS name in every enclave certificate. `.invalid` (RFC 6761) never resolves: the name
# is not what a client checks, the pinned certificate is. (The operator may add the
# service's public names, `fedseal-aggregator --tls-name`, for load balancers that route
# TLS by server name: clients then send and check that name.)
ENCLAVE_TLS_NAME = "attested.fedseal.invalid"

ChannelOptions = Sequence[tuple[str, int | str]]


class TlsProbeError(FedSealError):
    """The endpoint could not be reached, or did not complete a TLS handshake."""


@dataclass(frozen=True)
class ServerCertificate:
    """The certificate an endpoint presented in a TLS handshake (DER)."""

    der: bytes

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.der).digest()

    @property
    def pem(self) -> bytes:
        return ssl.DER_cert_to_PEM_cert(self.der).encode("ascii")

    def tls_name(self, host: str | None = None) -> str:
        """The name gRPC must send and check: `host` when the certificate names it, else the
        certificate's first DNS name, else its CN."""
        try:
            cert = x509.load_der_x509_certificate(self.der)
        except ValueError as exc:
            raise TlsProbeError(f"the server's certificate cannot be parsed: {exc}") from None
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = names.get_values_for_type(x509.DNSName)
            if host is not None and host in dns:
                return host
            if dns:
                return dns[0]
        except x509.ExtensionNotFound:
            pass
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if common:
            return str(common[0].value)
        raise TlsProbeError("the server's certificate names no DNS name and no common name")


def refuse_private_key_in(pem: bytes, what: str) -> None:
    """FormatError if `pem`, meant to hold certificates only, holds a private key: a combined
    cert-and-key file (as some web servers take) would carry it wherever the certificates go."""
    if b"PRIVATE KEY-----" in pem:
        raise FormatError(
            f"{what} holds a private key block: give the certificates alone (nothing of the key is shown)"
        )


@dataclass(frozen=True)
class ClientTlsCredentials:
    """A TLS client certificate (chain, PEM) and its private key (PEM), for mutual TLS."""

    certificate_chain_pem: bytes = field(repr=False)  # a combined PEM would carry the key
    private_key_pem: bytes = field(repr=False)

    def __post_init__(self) -> None:
        refuse_private_key_in(self.certificate_chain_pem, "client certificate chain")
        try:
            x509.load_pem_x509_certificates(self.certificate_chain_pem)
        except ValueError as exc:
            raise FormatError(f"client certificate chain is not PEM: {exc}") from None

    @property
    def certificate_sha256(self) -> bytes:
        """SHA-256 of the leaf certificate's DER (what an enrolment may pin)."""
        leaf = x509.load_pem_x509_certificates(self.certificate_chain_pem)[0]
        return hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest()


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); FormatError if it is neither."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FormatError(f"endpoint {endpoint!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def probe_server_certificate(endpoint: str, *, timeout: float = 10.0) -> ServerCertificate:
    """One TLS handshake to `endpoint`; the certificate it presented, NOT verified.

    The result means nothing until attestation names it (module docstring). The probe
    offers no client certificate: with TLS 1.3 the server's certificate arrives before the
    server asks for the client's, so this works on a mutual-TLS port too.
    """
    host, port = split_endpoint(endpoint)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Deliberately unverified: what is learned here is checked against the attestation.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=_server_name(host)) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise TlsProbeError(f"no TLS handshake with {endpoint}: {exc}") from None
    if not der:
        raise TlsProbeError(f"{endpoint} presented no certificate")
    return ServerCertificate(der)


def pinned_channel(
    endpoint: str,
    certificate: ServerCertificate,
    *,
    client: ClientTlsCredentials | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """A gRPC channel that completes its handshake only with the holder of `certificate`'s key."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificate.pem,
        private_key=client.private_key_pem if client is not None else None,
        certificate_chain=client.certificate_chain_pem if client is not None else None,
    )
    host, _ = split_endpoint(endpoint)
    return grpc.secure_channel(
        endpoint,
        credentials,
        options=[*options, ("grpc.ssl_target_name_override", certificate.tls_name(host))],
    )


def ca_channel(
    endpoint: str,
    *,
    root_certificates: bytes | None = None,
    client: ClientTlsCredentials | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """A gRPC channel verified the usual way: the endpoint's name against `root_certificates`
    (None: the system's roots). For a load balancer that terminates TLS; it proves nothing
    about the enclave behind it."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=client.private_key_pem if client is not None else None,
        certificate_chain=client.certificate_chain_pem if client is not None else None,
    )
    return grpc.secure_channel(endpoint, credentials, options=list(options))


def _server_name(host: str) -> str:
    """The name to send in the handshake (SNI): the endpoint's host name; an IP address is
    not a name, so the enclave's own name stands in."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return ENCLAVE_TLS_NAME

"""A loopback TCP relay for tests: passes TLS through, or terminates it like a proxy would.

Terminating, it presents its own certificate to the client, opens its own TLS connection
to the upstream (verifying nothing, as a careless load balancer might), and copies the
plaintext both ways. It parses the client's HTTP/2 frames to count the streams (calls) the
client opened, which is how a test proves that a client sent nothing but GetAttestation.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import select
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HEADERS = 0x1


def self_signed_certificate(directory: Path, name: str = "proxy.fedseal.invalid") -> tuple[Path, Path, bytes]:
    """(certificate file, key file, certificate PEM) of a self-signed loopback server certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(Encoding.PEM)
    cert_file, key_file = directory / "proxy.crt", directory / "proxy.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert_file, key_file, pem


class Relay:
    """Listens on 127.0.0.1 and relays to `upstream`; `terminate=(cert file, key file)` makes
    it a TLS-terminating proxy. Use as a context manager."""

    def __init__(self, upstream: str, *, terminate: tuple[Path, Path] | None = None) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._server_tls: ssl.SSLContext | None = None
        self._client_tls: ssl.SSLContext | None = None
        if terminate is not None:
            self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server_tls.load_cert_chain(*terminate)
            self._server_tls.set_alpn_protocols(["h2"])
            self._client_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self._client_tls.check_hostname = False
            self._client_tls.verify_mode = ssl.CERT_NONE
            self._client_tls.set_alpn_protocols(["h2"])
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._streams: set[int] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def client_streams(self) -> int:
        """HTTP/2 streams (gRPC calls) the clients opened through a terminating relay."""
        with self._lock:
            return len(self._streams)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, []
        for sock in [self._listener, *sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream, timeout=10)
            upstream.settimeout(None)
            if self._server_tls is not None and self._client_tls is not None:
                client = self._server_tls.wrap_socket(client, server_side=True)
                upstream = self._client_tls.wrap_socket(upstream, server_hostname="upstream.invalid")
        except (OSError, ssl.SSLError):
            client.close()
            return
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._sockets += [client, upstream]
        threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        # One thread per connection: an SSL socket must not be read and written from two
        # threads at once, so both directions are served here with select().
        peers = {client: upstream, upstream: client}
        buffer = b""
        try:
            for sock in peers:
                sock.setblocking(False)
            while True:
                ready: list[socket.socket] = [
                    s for s in peers if isinstance(s, ssl.SSLSocket) and s.pending()
                ]
                if not ready:
                    ready, _, _ = select.select(list(peers), [], [], 1.0)
                for source in ready:
                    try:
                        data = source.recv(65536)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        continue
                    if not data:
                        return
                    _send_all(peers[source], data)
                    if source is client and self._server_tls is not None:
                        buffer = self._count(buffer + data)
        except (OSError, ValueError):
            return  # closed under us (close()), or a peer went away
        finally:
            for sock in peers:
                with contextlib.suppress(OSError):
                    sock.close()

    def _count(self, buffer: bytes) -> bytes:
        if buffer.startswith(_PREFACE):
            buffer = buffer[len(_PREFACE) :]
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[0:3], "big")
            if len(buffer) < 9 + length:
                break
            frame_type = buffer[3]
            stream = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            if frame_type == _HEADERS and stream:
                with self._lock:
                    self._streams.add(stream)
            buffer = buffer[9 + length :]
        return buffer


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            select.select([], [sock], [], 1.0)
            continue
        view = view[sent:]

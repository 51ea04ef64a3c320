"""Who this client is to the aggregator: an enrolled site, or a principal of the job config.

An identity is an Ed25519 key (the one the enrolment or the job config lists) and,
optionally, a TLS client certificate from the consortium CA with its key (for the
aggregator's mutual-TLS port). The Ed25519 key signs every update header, every call
token and every operator request; the certificate authenticates the TLS connection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from client_sdk._errors import ClientError
from fedseal.signed_request import CALL_ACTION, key_id, sign_request
from fedseal.tls import ClientTlsCredentials

__all__ = ["ClientIdentity", "IdentityError", "write_signing_key"]


class IdentityError(ClientError):
    """An identity's key or certificate files cannot be used (the message names the file)."""


@dataclass(frozen=True)
class ClientIdentity:
    """`name`: the site id (as enrolled) or the principal name; `signing_key`: its Ed25519
    key; `tls`: its TLS client certificate and key, for mutual TLS."""

    name: str
    signing_key: Ed25519PrivateKey = field(repr=False)
    tls: ClientTlsCredentials | None = None

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key: what the enrolment (or the job config) lists."""
        return self.signing_key.public_key().public_bytes_raw()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def call_token(self, method: str, audience: bytes) -> bytes:
        """A one-time proof of this key for one call (`method`) to the enclave `audience`."""
        return sign_request(self.signing_key, CALL_ACTION, {"method": method}, audience=audience)

    def sign_request(self, action: str, params: dict[str, Any], audience: bytes) -> bytes:
        """An operator-surface request for `action`, signed by this identity's key."""
        return sign_request(self.signing_key, action, params, audience=audience)

    @classmethod
    def from_files(
        cls,
        name: str,
        key_file: Path,
        *,
        certificate_file: Path | None = None,
        tls_key_file: Path | None = None,
    ) -> ClientIdentity:
        """Load an Ed25519 key (PEM, PKCS#8: `openssl genpkey -algorithm ed25519`) and,
        optionally, a TLS client certificate chain and its key (PEM)."""
        key = _load_key(key_file)
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{key_file} holds a {type(key).__name__}, not an Ed25519 private key")
        if (certificate_file is None) != (tls_key_file is None):
            raise IdentityError("a TLS client certificate needs its key, and the other way round")
        tls = None
        if certificate_file is not None and tls_key_file is not None:
            try:
                tls = ClientTlsCredentials(certificate_file.read_bytes(), tls_key_file.read_bytes())
            except OSError as exc:
                raise IdentityError(f"cannot read {exc.filename}: {exc.strerror}") from None
            _load_key(tls_key_file)  # fail here, not in the TLS handshake, if it is not a key
        return cls(name, key, tls)


def write_signing_key(path: Path) -> bytes:
    """Make a new Ed25519 key, write it to `path` (PEM, PKCS#8, readable by the owner only;
    an existing file is never overwritten) and return its raw public key, which is what an
    enrolment or a job config lists."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise IdentityError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key.public_key().public_bytes_raw()


def _load_key(path: Path) -> object:
    try:
        return load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not an unencrypted PEM private key: {exc}") from None

"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A signed note is UTF-8 text with no ASCII control characters other than newline::

    <text, ending in "\\n">
    <blank line>
    — <key name> base64(key ID[4] || signature)
    ...

The text is everything up to and including the newline before the *last* blank line.
Key names are non-empty and contain no Unicode spaces and no "+" (signed-note "Format").

Signature types supported (signed-note "Signature types"):

* ``0x01`` Ed25519 over the note text (signed-note "Ed25519 signatures").
* ``0x04`` timestamped Ed25519 cosignatures (https://c2sp.org/tlog-cosignature, "Format"
  and "Ed25519 signed message"): the signature field is ``u64 BE timestamp || Ed25519
  signature`` over ``"cosignature/v1\\ntime <timestamp>\\n" || text``.

Key ID = SHA-256(name || 0x0A || type || 32-byte public key)[:4]; a verifier key string
("vkey") is ``name+hex(key ID)+base64(type || public key)``.

Opening a note (signed-note "Signatures"): lines from unknown (name, key ID) pairs are
ignored; a line from a known key must verify or the whole note is rejected; at least one
known key must have signed. Two lines from the same known key also reject the note (the
spec leaves this open; refusing is the conservative reading). Everything malformed raises
:class:`~fedseal.errors.NoteError`; a bad verifier key string raises
:class:`~fedseal.errors.FormatError`; :meth:`NoteVerifier.verify` on its own raises
:class:`~fedseal.errors.SignatureError`.

Base64 is standard RFC 4648 §4 with padding and is decoded strictly: the text must be
the canonical encoding of the bytes (no stray bits, no whitespace), so signatures are not
malleable at the encoding layer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedseal.canonical import b64decode_canonical
from fedseal.errors import FormatError, NoteError, SignatureError

__all__ = [
    "COSIGNATURE_V1_HEADER",
    "MAX_SIGNATURES",
    "SIG_TYPE_COSIGNATURE_V1",
    "SIG_TYPE_ED25519",
    "CosignatureSigner",
    "NoteSigner",
    "NoteVerifier",
    "SignatureLine",
    "VerifiedNote",
    "VerifiedSignature",
    "b64decode_strict",
    "compute_key_id",
    "cosignature_message",
    "format_signature_line",
    "open_note",
    "parse_signature_line",
    "split_note",
    "unverified_signatures",
    "validate_key_name",
]

SIG_TYPE_ED25519 = 0x01
SIG_TYPE_COSIGNATURE_V1 = 0x04
COSIGNATURE_V1_HEADER = "cosignature/v1"

# The spec requires accepting at least 16 signatures and asks for a limit; this matches
# Go's golang.org/x/mod/sumdb/note.
MAX_SIGNATURES = 100

_ED25519_KEY_SIZE = 32
_ED25519_SIG_SIZE = 64
_TIMESTAMP_SIZE = 8
_MAX_TIMESTAMP = 2**63 - 1  # tlog-cosignature: the timestamp MUST NOT exceed 2^63 - 1
_SIG_PREFIX = "\u2014 "  # em dash, space
_SUPPORTED_TYPES = (SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1)
_CONTROL_CHARS = re.compile("[\x00-\x09\x0b-\x1f]")
_KEY_ID_HEX = re.compile("[0-9a-f]{8}")


def b64decode_strict(text: str, what: str) -> bytes:
    """Decode canonical standard base64 (RFC 4648 §4, padded); raise FormatError naming ``what``."""
    return b64decode_canonical(text, what=what)


def validate_key_name(name: str) -> None:
    """Raise FormatError unless ``name`` is a valid signed-note key name."""
    if not name:
        raise FormatError("key name is empty")
    if "+" in name:
        raise FormatError(f"key name {name!r} contains '+'")
    if any(c.isspace() for c in name):
        raise FormatError(f"key name {name!r} contains a space character")
    if _CONTROL_CHARS.search(name):
        raise FormatError(f"key name {name!r} contains a control character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"key name {name!r} is not valid UTF-8") from None


def compute_key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """Key ID = SHA-256(name || 0x0A || sig_type || public_key)[:4] (signed-note "Signatures")."""
    if not 0 <= sig_type <= 0xFF:
        raise FormatError(f"signature type {sig_type} is not one byte")
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key)
    return digest.digest()[:4]


def cosignature_message(text: str, timestamp: int) -> bytes:
    """The bytes an Ed25519 cosignature (type 0x04) signs: header, time line, then ``text``."""
    _check_timestamp(timestamp)
    return f"{COSIGNATURE_V1_HEADER}\ntime {timestamp}\n{text}".encode()


def _check_timestamp(timestamp: int) -> None:
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise FormatError(f"cosignature timestamp {timestamp} is outside 0..2^63-1")


def _check_text(text: str) -> None:
    """Note text rules (signed-note "Format"): non-empty, ends in newline, no controls."""
    if not text.endswith("\n"):
        raise NoteError("note text must be non-empty and end in a newline")
    if _CONTROL_CHARS.search(text):
        raise NoteError("note text contains an ASCII control character other than newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note text is not valid UTF-8") from None


def _raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class SignatureLine:
    """One parsed signature line: key name, 4-byte key ID and the signature field."""

    name: str
    key_id: bytes
    signature: bytes


def format_signature_line(name: str, key_id: bytes, signature: bytes) -> str:
    """Format ``— name base64(key_id || signature)`` followed by a newline."""
    validate_key_name(name)
    if len(key_id) != 4:
        raise FormatError(f"key ID is {len(key_id)} bytes, expected 4")
    return f"{_SIG_PREFIX}{name} {base64.b64encode(key_id + signature).decode('ascii')}\n"


def parse_signature_line(line: str) -> SignatureLine:
    """Parse one signature line (with or without its final newline); raise FormatError."""
    if line.endswith("\n"):
        line = line[:-1]
    if "\n" in line:
        raise FormatError("signature line contains a newline")
    if not line.startswith(_SIG_PREFIX):
        raise FormatError("signature line does not start with an em dash and a space")
    name, sep, encoded = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not encoded:
        raise FormatError("signature line has no signature after the key name")
    validate_key_name(name)
    raw = b64decode_strict(encoded, f"signature from {name!r}")
    # A key ID plus at least one signature byte, as Go's note package requires.
    if len(raw) < 5:
        raise FormatError(f"signature from {name!r} is {len(raw)} bytes, too short")
    return SignatureLine(name=name, key_id=raw[:4], signature=raw[4:])


@dataclass(frozen=True)
class VerifiedSignature:
    """A signature that verified: who signed, and for cosignatures, when."""

    name: str
    key_id: bytes
    sig_type: int
    timestamp: int | None = None  # set for type 0x04 cosignatures only


@dataclass(frozen=True)
class VerifiedNote:
    """A note whose signatures from known keys all verified (at least one did)."""

    text: str
    signatures: tuple[VerifiedSignature, ...]

    @property
    def signer_names(self) -> tuple[str, ...]:
        """Names of the keys whose signatures verified, in note order."""
        return tuple(s.name for s in self.signatures)


class NoteVerifier:
    """A known public key: a name, a signature type (0x01 or 0x04) and an Ed25519 key."""

    __slots__ = ("_key", "_key_id", "_name", "_public_bytes", "_sig_type")

    def __init__(
        self,
        name: str,
        public_key: bytes | Ed25519PublicKey,
        *,
        sig_type: int = SIG_TYPE_ED25519,
    ) -> None:
        validate_key_name(name)
        if sig_type not in _SUPPORTED_TYPES:
            raise FormatError(f"unsupported signature type 0x{sig_type:02x}")
        if isinstance(public_key, Ed25519PublicKey):
            raw = _raw_public_key(public_key)
            key = public_key
        else:
            raw = bytes(public_key)
            if len(raw) != _ED25519_KEY_SIZE:
                raise FormatError(f"Ed25519 public key is {len(raw)} bytes, expected 32")
            try:
                key = Ed25519PublicKey.from_public_bytes(raw)
            except ValueError:
                raise FormatError("Ed25519 public key is not a valid key") from None
        self._name = name
        self._sig_type = sig_type
        self._public_bytes = raw
        self._key = key
        self._key_id = compute_key_id(name, sig_type, raw)

    @classmethod
    def from_key_string(cls, vkey: str) -> NoteVerifier:
        """Parse ``name+hex(key ID)+base64(type || public key)``; raise FormatError."""
        # The base64 part may itself contain '+', so split at most twice.
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise FormatError("verifier key must have the form name+keyid+key")
        name, key_id_hex, encoded = parts
        validate_key_name(name)
        if not _KEY_ID_HEX.fullmatch(key_id_hex):
            raise FormatError(f"verifier key ID {key_id_hex!r} is not 8 lowercase hex digits")
        raw = b64decode_strict(encoded, "verifier key material")
        if not raw:
            raise FormatError("verifier key material is empty")
        sig_type, public_key = raw[0], raw[1:]
        verifier = cls(name, public_key, sig_type=sig_type)
        if verifier.key_id.hex() != key_id_hex:
            raise FormatError(
                f"verifier key ID {key_id_hex} does not match the key (computed {verifier.key_id.hex()})"
            )
        return verifier

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID."""
        return self._key_id

    @property
    def sig_type(self) -> int:
        return self._sig_type

    @property
    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_bytes

    def key_string(self) -> str:
        """The verifier key string ``name+hex(key ID)+base64(type || public key)``."""
        material = base64.b64encode(bytes([self._sig_type]) + self._public_bytes).decode("ascii")
        return f"{self._name}+{self._key_id.hex()}+{material}"

    def same_key(self, other: NoteVerifier) -> bool:
        """Whether ``other`` is the same name, type and public key."""
        return (
            self._name == other._name
            and self._sig_type == other._sig_type
            and hmac.compare_digest(self._public_bytes, other._public_bytes)
        )

    def verify(self, text: str, signature: bytes) -> VerifiedSignature:
        """Verify a signature field (without key ID) over note ``text``.

        Returns the verified signature; raises SignatureError naming the key otherwise.
        """
        if self._sig_type == SIG_TYPE_ED25519:
            if len(signature) != _ED25519_SIG_SIZE:
                raise SignatureError(f"signature from {self._name!r} is {len(signature)} bytes, expected 64")
            message, sig, timestamp = text.encode("utf-8"), signature, None
        else:
            if len(signature) != _TIMESTAMP_SIZE + _ED25519_SIG_SIZE:
                raise SignatureError(
                    f"cosignature from {self._name!r} is {len(signature)} bytes, expected 72"
                )
            timestamp = int.from_bytes(signature[:_TIMESTAMP_SIZE], "big")
            if timestamp > _MAX_TIMESTAMP:
                raise SignatureError(
                    f"cosignature from {self._name!r} has timestamp {timestamp} above 2^63-1"
                )
            message = cosignature_message(text, timestamp)
            sig = signature[_TIMESTAMP_SIZE:]
        try:
            self._key.verify(sig, message)
        except InvalidSignature:
            raise SignatureError(f"signature from key {self._name!r} does not verify") from None
        return VerifiedSignature(self._name, self._key_id, self._sig_type, timestamp)

    def __repr__(self) -> str:
        return f"NoteVerifier({self.key_string()!r})"


class _Ed25519KeyHolder:
    """Shared parts of the two signers: name, private key, public key, key ID."""

    __slots__ = ("_key_id", "_name", "_private_key", "_public_bytes")

    _sig_type: int = SIG_TYPE_ED25519

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        validate_key_name(name)
        self._name = name
        self._private_key = private_key
        self._public_bytes = _raw_public_key(private_key.public_key())
        self._key_id = compute_key_id(name, self._sig_type, self._public_bytes)

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID."""
        return self._key_id

    @property
    def public_key_bytes(self) -> bytes:
        return self._public_bytes

    def verifier(self) -> NoteVerifier:
        """The matching verifier."""
        return NoteVerifier(self._name, self._public_bytes, sig_type=self._sig_type)

    def verifier_key_string(self) -> str:
        """The verifier key string ``name+hex(key ID)+base64(type || public key)``."""
        return self.verifier().key_string()

    def __repr__(self) -> str:  # never show the private key
        return f"{type(self).__name__}({self.verifier_key_string()!r})"


class NoteSigner(_Ed25519KeyHolder):
    """Signs note text with Ed25519, signature type 0x01."""

    __slots__ = ()
    _sig_type = SIG_TYPE_ED25519

    def signature_line(self, text: str) -> str:
        """The signature line for ``text``, ending in a newline."""
        _check_text(text)
        signature = self._private_key.sign(text.encode("utf-8"))
        return format_signature_line(self._name, self._key_id, signature)

    def sign(self, text: str) -> str:
        """Return the signed note: ``text``, a blank line, this key's signature line."""
        return f"{text}\n{self.signature_line(text)}"


class CosignatureSigner(_Ed25519KeyHolder):
    """Makes timestamped Ed25519 cosignatures, signature type 0x04 (tlog-cosignature).

    Per tlog-cosignature, the Ed25519 message does not commit to the cosigner's name, so
    one key must serve only one cosigner.
    """

    __slots__ = ()
    _sig_type = SIG_TYPE_COSIGNATURE_V1

    def signature_line(self, text: str, timestamp: int) -> str:
        """The cosignature line over note ``text`` at ``timestamp``, ending in a newline."""
        _check_text(text)
        signature = self._private_key.sign(cosignature_message(text, timestamp))
        field = timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + signature
        return format_signature_line(self._name, self._key_id, field)


def split_note(note: str) -> tuple[str, tuple[str, ...]]:
    """Split a signed note at its last blank line into the signed text (ending in a newline)
    and its signature lines, neither verified nor parsed.

    The one place a note is taken apart: NoteError if it is not shaped like a signed note
    (no blank line, no signature lines, no final newline, a control character, too many
    signatures). `open_note` verifies; this only splits.
    """
    if _CONTROL_CHARS.search(note):
        raise NoteError("note contains an ASCII control character other than newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines")
    if not block.endswith("\n"):
        raise NoteError("note does not end in a newline")
    lines = tuple(block[:-1].split("\n"))
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}")
    return text, lines


def unverified_signatures(note: str) -> tuple[SignatureLine, ...]:
    """The well-formed signature lines of a note, unverified: what a verifier uses to pick
    the keys to try. Lines that do not parse are skipped here (`open_note` refuses them);
    a note that is not shaped like one raises NoteError (see `split_note`)."""
    parsed = []
    for line in split_note(note)[1]:
        try:
            parsed.append(parse_signature_line(line))
        except FormatError:
            continue
    return tuple(parsed)


def open_note(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> VerifiedNote:
    """Verify a signed note against known keys and return its text and verified signers.

    Raises NoteError if the note is malformed, if any signature from a known key fails, if
    a known key signed twice, or if no known key signed.
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise NoteError("note is not valid UTF-8") from None
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note is not valid UTF-8") from None

    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        existing = known.setdefault((v.name, v.key_id), v)
        if not existing.same_key(v):
            raise NoteError(f"two different verifier keys share name {v.name!r} and key ID")

    text, lines = split_note(note)
    verified: list[VerifiedSignature] = []
    seen: set[tuple[str, bytes]] = set()
    for line in lines:
        try:
            parsed = parse_signature_line(line)
        except FormatError as exc:
            raise NoteError(f"malformed signature line: {exc}") from None
        ident = (parsed.name, parsed.key_id)
        verifier = known.get(ident)
        if verifier is None:
            continue  # unknown keys MUST be ignored (signed-note "Signatures")
        if ident in seen:
            raise NoteError(f"key {parsed.name!r} signed the note more than once")
        seen.add(ident)
        try:
            verified.append(verifier.verify(text, parsed.signature))
        except SignatureError as exc:
            raise NoteError(f"note rejected: {exc}") from exc
    if not verified:
        raise NoteError("note has no signature from a known key")
    return VerifiedNote(text=text, signatures=tuple(verified))

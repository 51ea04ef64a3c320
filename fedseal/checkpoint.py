"""C2SP transparency-log checkpoints, Ed25519 cosignatures and tlog-proof bundles.

* https://c2sp.org/tlog-checkpoint ("Note text"): a checkpoint is a signed note whose text
  is the origin line, the tree size in decimal without leading zeros, the base64 RFC 6962
  root hash, then optional non-empty extension lines, each ending in a newline.
* https://c2sp.org/tlog-cosignature ("Format", "Ed25519 signed message"): a cosigner signs
  ``"cosignature/v1\\ntime <unix seconds>\\n" || checkpoint body`` with Ed25519; the
  signature field is ``u64 BE timestamp || signature`` under key type 0x04. The message
  does not commit to the cosigner's name, so each cosigner needs its own key.
* https://c2sp.org/tlog-proof ("Format")::

      c2sp.org/tlog-proof@v1
      extra <base64>          (optional, unauthenticated)
      index <N>
      <base64 hash>           (zero or more: RFC 6962 §2.1.1 audit path, leaf side first)
      <blank line>
      <signed checkpoint note, verbatim>

Parsing is strict and raises :class:`~fedseal.errors.FormatError` naming the problem;
signature problems raise :class:`~fedseal.errors.NoteError` (via :func:`fedseal.note.open_note`)
or :class:`~fedseal.errors.SignatureError` (a single cosignature); a failing inclusion
proof raises :class:`~fedseal.errors.ProofError`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedseal.errors import FormatError, NoteError, SignatureError
from fedseal.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from fedseal.note import (
    SIG_TYPE_COSIGNATURE_V1,
    CosignatureSigner,
    NoteSigner,
    NoteVerifier,
    VerifiedNote,
    VerifiedSignature,
    b64decode_strict,
    open_note,
    parse_signature_line,
)

__all__ = [
    "MAX_PROOF_HASHES",
    "TLOG_PROOF_HEADER",
    "Checkpoint",
    "TlogProof",
    "VerifiedCheckpoint",
    "check_log_origin",
    "cosign_checkpoint",
    "open_checkpoint",
    "sign_checkpoint",
    "verify_cosignature",
    "verify_tlog_proof",
]

# What FedSeal accepts as a log origin (the checkpoint's first line): the aggregator's
# --log-origin and a witness's alike, so a witness is never set up for an origin no
# aggregator could have.
_LOG_ORIGIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def check_log_origin(origin: str) -> str:
    """`origin` if it is 1-128 letters, digits, '.', '_', '/', '-' starting with a letter or
    digit; FormatError otherwise."""
    if not _LOG_ORIGIN.fullmatch(origin):
        raise FormatError(
            f"log origin {origin[:64]!r} is not 1-128 characters of letters, digits, '.', '_', "
            "'/', '-' (starting with a letter or digit)"
        )
    return origin


TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
# An index below 2^64 has an audit path of at most 64 hashes; more cannot be valid.
MAX_PROOF_HASHES = 64

_MAX_UINT64 = 2**64 - 1
_DECIMAL = re.compile("0|[1-9][0-9]*")  # ASCII only, no sign, no leading zeros
_CONTROL_CHARS = re.compile("[\x00-\x1f]")


def _parse_decimal(text: str, what: str) -> int:
    # int() alone would accept "+1", "01", "1_000" and non-ASCII digits.
    if not _DECIMAL.fullmatch(text):
        raise FormatError(f"{what} {text!r} is not a decimal number without leading zeros")
    value = int(text)
    if value > _MAX_UINT64:
        raise FormatError(f"{what} {text} does not fit in 64 bits")
    return value


@dataclass(frozen=True)
class Checkpoint:
    """The note text of a checkpoint (tlog-checkpoint "Note text")."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin:
            raise FormatError("checkpoint origin is empty")
        if _CONTROL_CHARS.search(self.origin):
            raise FormatError("checkpoint origin contains a newline or control character")
        if not 0 <= self.size <= _MAX_UINT64:
            raise FormatError(f"checkpoint size {self.size} is outside 0..2^64-1")
        if len(self.root_hash) != HASH_SIZE:
            raise FormatError(f"checkpoint root hash is {len(self.root_hash)} bytes, expected 32")
        if not isinstance(self.extensions, tuple):
            raise FormatError("checkpoint extensions must be a tuple of strings")
        for i, line in enumerate(self.extensions):
            if not line:
                raise FormatError(f"checkpoint extension line {i} is empty")
            if _CONTROL_CHARS.search(line):
                raise FormatError(f"checkpoint extension line {i} contains a newline or control character")

    def body(self) -> str:
        """The note text: origin, size, base64 root, extension lines, each ending in newline."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode("ascii")]
        lines.extend(self.extensions)
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse_body(cls, text: str) -> Checkpoint:
        """Parse checkpoint note text strictly; raise FormatError naming the problem."""
        if not text.endswith("\n"):
            raise FormatError("checkpoint body does not end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise FormatError(f"checkpoint body has {len(lines)} lines, expected at least 3")
        origin, size_line, root_line, *extensions = lines
        if not origin:
            raise FormatError("checkpoint origin line is empty")
        size = _parse_decimal(size_line, "checkpoint tree size")
        root = b64decode_strict(root_line, "checkpoint root hash")
        return cls(origin=origin, size=size, root_hash=root, extensions=tuple(extensions))


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose note verified, with the log's signatures and any cosignatures."""

    checkpoint: Checkpoint
    signatures: tuple[VerifiedSignature, ...]

    @property
    def log_signatures(self) -> tuple[VerifiedSignature, ...]:
        """Verified signatures that are not cosignatures."""
        return tuple(s for s in self.signatures if s.sig_type != SIG_TYPE_COSIGNATURE_V1)

    @property
    def cosignatures(self) -> tuple[VerifiedSignature, ...]:
        """Verified type 0x04 cosignatures (each with its timestamp)."""
        return tuple(s for s in self.signatures if s.sig_type == SIG_TYPE_COSIGNATURE_V1)

    def cosignature_time(self, cosigner_name: str) -> int:
        """The timestamp of ``cosigner_name``'s verified cosignature; NoteError if absent."""
        for s in self.cosignatures:
            if s.name == cosigner_name and s.timestamp is not None:
                return s.timestamp
        raise NoteError(f"checkpoint has no verified cosignature from {cosigner_name!r}")


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """Return the signed checkpoint note."""
    return signer.sign(cp.body())


def open_checkpoint(
    note_text: str | bytes,
    verifiers: Sequence[NoteVerifier],
    expected_origin: str,
) -> VerifiedCheckpoint:
    """Verify a signed checkpoint note and parse its body.

    ``verifiers`` holds the log's key(s) and any cosigner keys to check. At least one
    non-cosignature (the log's) signature must verify; every known key's signature must
    verify (NoteError otherwise). The body must parse (FormatError) and its origin must
    equal ``expected_origin`` (NoteError).
    """
    note: VerifiedNote = open_note(note_text, verifiers)
    cp = Checkpoint.parse_body(note.text)
    if cp.origin != expected_origin:
        raise NoteError(f"checkpoint origin {cp.origin!r} does not match expected origin {expected_origin!r}")
    verified = VerifiedCheckpoint(checkpoint=cp, signatures=note.signatures)
    if not verified.log_signatures:
        # A cosignature alone says a witness saw the tree head, not that the log signed it.
        raise NoteError("checkpoint has no verified log signature, only cosignatures")
    return verified


def cosign_checkpoint(cp: Checkpoint, cosigner_name: str, key: Ed25519PrivateKey, timestamp: int) -> str:
    """Return the tlog-cosignature line (type 0x04, ending in newline) for ``cp``.

    Append it to the signed checkpoint note to add the cosignature.
    """
    return CosignatureSigner(cosigner_name, key).signature_line(cp.body(), timestamp)


def verify_cosignature(cp: Checkpoint, signature_line: str, cosigner: NoteVerifier) -> int:
    """Verify one cosignature line over ``cp`` and return its timestamp.

    Raises FormatError for a malformed line or a non-cosigner key, SignatureError if the
    line is from another key or does not verify.
    """
    if cosigner.sig_type != SIG_TYPE_COSIGNATURE_V1:
        raise FormatError(
            f"verifier {cosigner.name!r} is type 0x{cosigner.sig_type:02x}, not a cosignature key (0x04)"
        )
    parsed = parse_signature_line(signature_line)
    if parsed.name != cosigner.name or parsed.key_id != cosigner.key_id:
        raise SignatureError(
            f"signature line is from key {parsed.name!r}/{parsed.key_id.hex()}, "
            f"not cosigner {cosigner.name!r}/{cosigner.key_id.hex()}"
        )
    result = cosigner.verify(cp.body(), parsed.signature)
    if result.timestamp is None:  # pragma: no cover - type 0x04 always yields a timestamp
        raise SignatureError("cosignature carries no timestamp")
    return result.timestamp


@dataclass(frozen=True)
class TlogProof:
    """A C2SP tlog-proof: optional extra data, leaf index, audit path, signed checkpoint."""

    extra: bytes | None
    index: int
    proof: tuple[bytes, ...]
    checkpoint_note: str

    def __post_init__(self) -> None:
        if not isinstance(self.proof, tuple):
            raise FormatError("tlog-proof hashes must be a tuple of bytes")
        if not 0 <= self.index <= _MAX_UINT64:
            raise FormatError(f"tlog-proof index {self.index} is outside 0..2^64-1")
        if len(self.proof) > MAX_PROOF_HASHES:
            raise FormatError(f"tlog-proof has {len(self.proof)} hashes, more than {MAX_PROOF_HASHES}")
        for i, h in enumerate(self.proof):
            if len(h) != HASH_SIZE:
                raise FormatError(f"tlog-proof hash {i} is {len(h)} bytes, expected 32")
        if not self.checkpoint_note:
            raise FormatError("tlog-proof checkpoint is empty")

    def to_text(self) -> str:
        """Serialise in the tlog-proof text format."""
        out = [TLOG_PROOF_HEADER + "\n"]
        if self.extra is not None:
            out.append(f"extra {base64.b64encode(self.extra).decode('ascii')}\n")
        out.append(f"index {self.index}\n")
        out.extend(base64.b64encode(h).decode("ascii") + "\n" for h in self.proof)
        out.append("\n")
        out.append(self.checkpoint_note)
        return "".join(out)

    @classmethod
    def parse(cls, text: str | bytes) -> TlogProof:
        """Parse the tlog-proof text format strictly; raise FormatError naming the problem."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError("tlog-proof is not valid UTF-8") from None
        header, sep, rest = text.partition("\n")
        if not sep or header != TLOG_PROOF_HEADER:
            raise FormatError(f"tlog-proof does not start with the line {TLOG_PROOF_HEADER!r}")

        line, sep, rest = rest.partition("\n")
        extra: bytes | None = None
        if line.startswith("extra "):
            extra = b64decode_strict(line[len("extra ") :], "tlog-proof extra data")
            line, sep, rest = rest.partition("\n")
        if not sep or not line.startswith("index "):
            raise FormatError("tlog-proof is missing its 'index N' line")
        index = _parse_decimal(line[len("index ") :], "tlog-proof index")

        hashes: list[bytes] = []
        while True:
            line, sep, rest = rest.partition("\n")
            if not sep:
                raise FormatError("tlog-proof has no blank line before the checkpoint")
            if not line:
                break
            if len(hashes) == MAX_PROOF_HASHES:
                raise FormatError(f"tlog-proof has more than {MAX_PROOF_HASHES} hashes")
            h = b64decode_strict(line, f"tlog-proof hash {len(hashes)}")
            if len(h) != HASH_SIZE:
                raise FormatError(f"tlog-proof hash {len(hashes)} is {len(h)} bytes, expected {HASH_SIZE}")
            hashes.append(h)
        if not rest:
            raise FormatError("tlog-proof has no checkpoint after the blank line")
        return cls(extra=extra, index=index, proof=tuple(hashes), checkpoint_note=rest)


def verify_tlog_proof(
    proof: TlogProof,
    leaf: bytes,
    verifiers: Sequence[NoteVerifier],
    origin: str,
    *,
    leaf_is_hash: bool = False,
) -> VerifiedCheckpoint:
    """Open the proof's checkpoint and check that ``leaf`` is at ``proof.index`` in it.

    ``leaf`` is the entry's data (hashed here as an RFC 9162 leaf) unless ``leaf_is_hash``
    says it already is the 32-byte leaf hash. Raises NoteError/FormatError for the
    checkpoint and ProofError for the inclusion proof. ``proof.extra`` is not looked at:
    it is unauthenticated.
    """
    verified = open_checkpoint(proof.checkpoint_note, verifiers, origin)
    cp = verified.checkpoint
    h = leaf if leaf_is_hash else leaf_hash(leaf)
    verify_inclusion(h, proof.index, cp.size, proof.proof, cp.root_hash)
    return verified

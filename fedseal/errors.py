"""One root error for everything FedSeal raises, with one subclass per kind of failure.

A verification either returns a typed result or raises one of these (or a subclass
defined next to the code that raises it); no verdict is a bare bool a caller could ignore.
Messages name what is wrong and never include key material or plaintext.
"""

from __future__ import annotations

__all__ = [
    "CanonicalJSONError",
    "EnvelopeAuthenticationError",
    "EnvelopeError",
    "EnvelopeSizeError",
    "EnvelopeTruncatedError",
    "EnvelopeUnwrapError",
    "FedSealError",
    "FormatError",
    "NoteError",
    "ProofError",
    "ReceiptError",
    "SignatureError",
]


class FedSealError(Exception):
    """Root of every error FedSeal raises on purpose."""


class FormatError(FedSealError, ValueError):
    """Input does not follow the documented format (bad length, bad encoding, unknown field)."""


class CanonicalJSONError(FormatError):
    """A JSON document is not in RFC 8785 canonical form where canonical form is required."""


class ProofError(FedSealError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162)."""


class SignatureError(FedSealError):
    """A signature does not verify under the expected key."""


class NoteError(FedSealError):
    """A signed note (C2SP signed-note) is malformed or not signed by a required key."""


class EnvelopeError(FedSealError):
    """A sealed update cannot be opened: wrong key, wrong context, tampered, truncated or reordered."""


class EnvelopeUnwrapError(EnvelopeError):
    """The data key does not open: wrong recipient key, differing context, or tampered wrapped key."""


class EnvelopeSizeError(EnvelopeError):
    """A declared size or a chunk exceeds what the context allows (refused before allocating)."""


class EnvelopeTruncatedError(EnvelopeError):
    """The stream ended before a final chunk authenticated, or carried less than declared."""


class EnvelopeAuthenticationError(EnvelopeError):
    """A chunk failed to authenticate or broke the STREAM framing (tampered, reordered,
    duplicated, spliced, or data after the final chunk)."""


class ReceiptError(FedSealError):
    """A receipt does not prove that the submitted update is in the log."""

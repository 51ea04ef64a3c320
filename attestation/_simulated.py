"""The INSECURE simulated TEE: evidence for development on machines without a TEE.

THIS PROVIDES NO SECURITY. It exists so that the whole FedSeal protocol (challenge, binding,
bundle, policy, verification) can run on a laptop or in CI. Anyone can produce valid
simulated evidence for any keys: the signing key is generated on the spot and shipped
inside the evidence itself, so the signature proves only that the payload was not altered
after it was made, never who made it or on what hardware. The default policy refuses it.

Payload format (``fedseal-INSECURE-simulated-tee/v1``)
------------------------------------------------------

The evidence payload is one RFC 8785 canonical JSON object::

    {
      "measurement": "<hex SHA-256 of the description given to the collector>",
      "report_data": "<hex, the 32-byte binding>",
      "signature":   "<base64 Ed25519 signature, 64 bytes>",
      "signing_key": "<base64 raw Ed25519 public key, 32 bytes>",
      "type":        "fedseal-INSECURE-simulated-tee/v1",
      "warning":     "SIMULATED TEE: NO HARDWARE PROTECTION, FOR DEVELOPMENT ONLY"
    }

``signature`` is made over the canonical JSON of the object *without* ``signature`` (the
other five fields). ``measurement`` stands in for a hardware launch measurement, so that
policies can already practise allow-listing what code they accept.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ._bundle import Evidence, EvidenceKind
from ._encoding import (
    DecodeError,
    b64decode_strict,
    b64encode,
    canonical_json,
    hexdecode_strict,
    load_json_object,
)
from ._errors import EvidenceCollectionError, EvidenceFormatError, EvidenceSignatureError

__all__ = [
    "SIMULATED_EVIDENCE_TYPE",
    "SIMULATED_EVIDENCE_WARNING",
    "InsecureSimulatedTeeCollector",
    "SimulatedReport",
    "parse_simulated_payload",
    "simulated_measurement",
]

SIMULATED_EVIDENCE_TYPE = "fedseal-INSECURE-simulated-tee/v1"
SIMULATED_EVIDENCE_WARNING = "SIMULATED TEE: NO HARDWARE PROTECTION, FOR DEVELOPMENT ONLY"

_REPORT_DATA_SIZE = 32
_MEASUREMENT_SIZE = 32
_ED25519_PUBLIC_KEY_SIZE = 32
_ED25519_SIGNATURE_SIZE = 64
_PAYLOAD_FIELDS = frozenset({"measurement", "report_data", "signature", "signing_key", "type", "warning"})


def simulated_measurement(description: str) -> bytes:
    """The simulated "launch measurement" for a description: SHA-256 of its UTF-8 bytes.

    Policy authors use this to fill ``simulated_measurements``:
    ``simulated_measurement("fedseal-aggregator dev").hex()``.
    """
    return hashlib.sha256(description.encode("utf-8")).digest()


@dataclass(frozen=True)
class SimulatedReport:
    """A decoded simulated-TEE payload. Decoding checks the format, not the signature."""

    report_data: bytes
    measurement: bytes
    signing_key: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers: canonical JSON of every field but it."""
        return _signed_bytes(self.report_data, self.measurement, self.signing_key)

    def to_payload(self) -> bytes:
        """The canonical payload bytes of this report (what goes in ``Evidence.payload``)."""
        return _payload_bytes(self)

    def verify_signature(self) -> None:
        """Check that ``signature`` verifies under the embedded ``signing_key``, or raise
        :class:`EvidenceSignatureError`.

        Passing proves only that the payload is intact since it was signed. The key
        travels with the payload, so anyone can make a report that passes this check.
        """
        try:
            Ed25519PublicKey.from_public_bytes(self.signing_key).verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            raise EvidenceSignatureError(
                "simulated report signature does not verify under its embedded key (payload altered)"
            ) from None


def parse_simulated_payload(payload: bytes, *, field: str = "payload") -> SimulatedReport:
    """Decode a simulated-TEE payload strictly; raise :class:`EvidenceFormatError` naming the field.

    ``field`` prefixes the field names in errors (e.g. ``"evidence[0].payload"``).
    """
    try:
        document = load_json_object(payload)
    except DecodeError as exc:
        raise EvidenceFormatError(f"{field} {exc}", field=field) from exc
    missing = sorted(_PAYLOAD_FIELDS - document.keys())
    if missing:
        raise EvidenceFormatError(f"{field} is missing field {missing[0]!r}", field=f"{field}.{missing[0]}")
    unknown = sorted(document.keys() - _PAYLOAD_FIELDS)
    if unknown:
        raise EvidenceFormatError(f"{field} has unknown field {unknown[0]!r}", field=f"{field}.{unknown[0]}")
    if document["type"] != SIMULATED_EVIDENCE_TYPE:
        raise EvidenceFormatError(f"{field}.type must be {SIMULATED_EVIDENCE_TYPE!r}", field=f"{field}.type")
    # The warning is part of the format on purpose: whoever reads a raw payload (in a log,
    # in a saved bundle) sees at once that it is worthless as security evidence.
    if document["warning"] != SIMULATED_EVIDENCE_WARNING:
        raise EvidenceFormatError(
            f"{field}.warning must be {SIMULATED_EVIDENCE_WARNING!r}", field=f"{field}.warning"
        )
    try:
        name = "report_data"
        report_data = hexdecode_strict(document[name], size=_REPORT_DATA_SIZE)
        name = "measurement"
        measurement = hexdecode_strict(document[name], size=_MEASUREMENT_SIZE)
        name = "signing_key"
        signing_key = b64decode_strict(document[name], size=_ED25519_PUBLIC_KEY_SIZE)
        name = "signature"
        signature = b64decode_strict(document[name], size=_ED25519_SIGNATURE_SIZE)
    except DecodeError as exc:
        raise EvidenceFormatError(f"{field}.{name} {exc}", field=f"{field}.{name}") from exc
    report = SimulatedReport(
        report_data=report_data,
        measurement=measurement,
        signing_key=signing_key,
        signature=signature,
    )
    # One payload, one encoding (as for the bundle): refuse reordered or re-spaced JSON.
    if report.to_payload() != payload:
        raise EvidenceFormatError(f"{field} is not in RFC 8785 canonical JSON form", field=field)
    return report


def _signed_bytes(report_data: bytes, measurement: bytes, signing_key: bytes) -> bytes:
    return canonical_json(
        {
            "measurement": measurement.hex(),
            "report_data": report_data.hex(),
            "signing_key": b64encode(signing_key),
            "type": SIMULATED_EVIDENCE_TYPE,
            "warning": SIMULATED_EVIDENCE_WARNING,
        }
    )


def _payload_bytes(report: SimulatedReport) -> bytes:
    return canonical_json(
        {
            "measurement": report.measurement.hex(),
            "report_data": report.report_data.hex(),
            "signature": b64encode(report.signature),
            "signing_key": b64encode(report.signing_key),
            "type": SIMULATED_EVIDENCE_TYPE,
            "warning": SIMULATED_EVIDENCE_WARNING,
        }
    )


class InsecureSimulatedTeeCollector:
    """INSECURE: produces simulated-TEE evidence with a throwaway key. Development only.

    A fresh Ed25519 key is generated in memory when the collector is made and is never
    written anywhere; it dies with the process. ``description`` names what is "running"
    (e.g. ``"fedseal-aggregator dev"``); its SHA-256 becomes the simulated measurement.

    Every construction logs a warning, so a production deployment that wires this in by
    mistake says so loudly in its logs (and the default client policy refuses it anyway).
    """

    def __init__(self, description: str) -> None:
        if not isinstance(description, str) or not description:
            raise EvidenceCollectionError("simulated TEE description must be a non-empty string")
        self._signing_key = Ed25519PrivateKey.generate()
        self._measurement = simulated_measurement(description)
        logging.getLogger(__name__).warning(
            "INSECURE simulated TEE collector in use (measurement %s): evidence it produces "
            "offers NO hardware protection and is for development only",
            self._measurement.hex(),
        )

    @property
    def kind(self) -> EvidenceKind:
        """Always :attr:`EvidenceKind.SIMULATED_INSECURE`."""
        return EvidenceKind.SIMULATED_INSECURE

    @property
    def measurement(self) -> bytes:
        """The simulated measurement (SHA-256 of the description) this collector reports."""
        return self._measurement

    def collect(self, binding: bytes) -> Evidence:
        """Make simulated evidence whose report data is ``binding``."""
        if not isinstance(binding, bytes) or len(binding) != _REPORT_DATA_SIZE:
            raise EvidenceCollectionError(f"binding must be {_REPORT_DATA_SIZE} bytes")
        signing_key = self._signing_key.public_key().public_bytes_raw()
        signature = self._signing_key.sign(_signed_bytes(binding, self._measurement, signing_key))
        report = SimulatedReport(
            report_data=binding,
            measurement=self._measurement,
            signing_key=signing_key,
            signature=signature,
        )
        return Evidence(kind=EvidenceKind.SIMULATED_INSECURE, payload=report.to_payload())

    def __repr__(self) -> str:
        return f"InsecureSimulatedTeeCollector(measurement={self._measurement.hex()})"

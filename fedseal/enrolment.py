"""The job's enrolment: which sites may submit, and by which keys and certificates.

The operator gives the aggregator a JSON file (``fedseal-aggregator --enrolment FILE``);
the aggregator records its canonical form and digest in the audit log when it starts and
on every change (a signed `rotate_enrolment` request), so an auditor checks every
update's signature against the enrolment in force when it was accepted. Format::

    {
      "format": "fedseal-enrolment/v1",
      "version": 3,
      "sites": [
        {
          "id": "hospital-a",
          "keys": ["<base64 of the raw 32-byte Ed25519 public key>"],
          "certificate_sha256": ["<hex SHA-256 of the DER client certificate>"],
          "certificate_subject": "CN=hospital-a,O=Example Consortium"
        }
      ]
    }

- `version` (1..2**53-1) numbers the enrolment; a rotation must raise it.
- `id`: the site's client id, as the log and the aggregate's participants name it:
  1..128 characters of letters, digits and ``. _ -``, starting with a letter or digit.
- `keys` (1..8): the site's Ed25519 keys. Every update is signed by one of them, and a
  caller on a read call proves one (fedseal/signed_request.py). A key belongs to one site.
- `certificate_sha256` and/or `certificate_subject` (optional): the site's TLS client
  certificates, issued by the consortium CA the aggregator is given (``--client-ca``).
  A certificate identifies the site when its SHA-256 is listed, or when its subject, as
  an RFC 4514 string (``openssl x509 -noout -subject -nameopt RFC2253``), equals
  `certificate_subject`. A site with either field must call over mutual TLS with such a
  certificate: its key alone is not enough.

Removing a site (or a key, or a certificate) revokes it from the next call on.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedseal import strictjson
from fedseal.canonical import b64decode_canonical, b64encode, canonical_json
from fedseal.errors import FormatError
from fedseal.signed_request import key_id

__all__ = [
    "ENROLMENT_FORMAT",
    "SITE_ID_PATTERN",
    "EnrolledSite",
    "Enrolment",
    "EnrolmentError",
]

ENROLMENT_FORMAT = "fedseal-enrolment/v1"
SITE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_SITES = 10_000
MAX_KEYS_PER_SITE = 8
MAX_CERTIFICATES_PER_SITE = 8
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_SITE_FIELDS = frozenset({"id", "keys", "certificate_sha256", "certificate_subject"})


class EnrolmentError(FormatError):
    """An enrolment file is invalid; the message names the site and field."""


@dataclass(frozen=True)
class EnrolledSite:
    """One enrolled site: its id, its Ed25519 keys, and its TLS client certificate identity."""

    site_id: str
    keys: tuple[bytes, ...]  # raw Ed25519 public keys
    certificate_sha256: frozenset[bytes] = frozenset()
    certificate_subject: str | None = None

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(key_id(k) for k in self.keys)

    @property
    def requires_certificate(self) -> bool:
        """A site with a certificate identity must present one (mutual TLS) on every call."""
        return bool(self.certificate_sha256) or self.certificate_subject is not None

    def matches_certificate(self, sha256: bytes, subject: str) -> bool:
        return sha256 in self.certificate_sha256 or (
            self.certificate_subject is not None and subject == self.certificate_subject
        )

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": self.site_id, "keys": [b64encode(k) for k in self.keys]}
        if self.certificate_sha256:
            obj["certificate_sha256"] = sorted(d.hex() for d in self.certificate_sha256)
        if self.certificate_subject is not None:
            obj["certificate_subject"] = self.certificate_subject
        return obj


@dataclass(frozen=True)
class Enrolment:
    """A parsed, validated enrolment (see the module docstring). Lookups are by site id,
    key id and certificate."""

    version: int
    sites: tuple[EnrolledSite, ...]
    _by_id: Mapping[str, EnrolledSite] = field(init=False, repr=False, compare=False)
    _by_key: Mapping[str, EnrolledSite] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.version < 2**53:
            raise EnrolmentError("enrolment: 'version' must be an integer in [1, 2**53)")
        if len(self.sites) > MAX_SITES:
            raise EnrolmentError(f"enrolment: at most {MAX_SITES} sites")
        seen_ids: set[str] = set()
        seen_keys: dict[str, str] = {}
        seen_certs: dict[bytes, str] = {}
        seen_subjects: dict[str, str] = {}
        for site in self.sites:
            where = f"enrolment site {site.site_id!r}"
            if not SITE_ID_PATTERN.fullmatch(site.site_id):
                raise EnrolmentError(
                    f"enrolment: site id {site.site_id[:40]!r} must be 1-128 letters, digits, '.', '_', '-' "
                    "(starting with a letter or digit)"
                )
            if site.site_id in seen_ids:
                raise EnrolmentError(f"{where}: enrolled twice")
            seen_ids.add(site.site_id)
            if not 1 <= len(site.keys) <= MAX_KEYS_PER_SITE:
                raise EnrolmentError(f"{where}: 'keys' must list 1 to {MAX_KEYS_PER_SITE} Ed25519 keys")
            for kid in site.key_ids:
                if kid in seen_keys:
                    raise EnrolmentError(f"{where}: key {kid} is already enrolled for {seen_keys[kid]!r}")
                seen_keys[kid] = site.site_id
            if len(site.certificate_sha256) > MAX_CERTIFICATES_PER_SITE:
                raise EnrolmentError(f"{where}: at most {MAX_CERTIFICATES_PER_SITE} certificate digests")
            for digest in site.certificate_sha256:
                if digest in seen_certs:
                    raise EnrolmentError(
                        f"{where}: certificate {digest.hex()[:16]}... is already enrolled for "
                        f"{seen_certs[digest]!r}"
                    )
                seen_certs[digest] = site.site_id
            subject = site.certificate_subject
            if subject is not None:
                if not 0 < len(subject) <= 1024:
                    raise EnrolmentError(f"{where}: 'certificate_subject' must be 1-1024 characters")
                if subject in seen_subjects:
                    raise EnrolmentError(
                        f"{where}: certificate subject is already enrolled for {seen_subjects[subject]!r}"
                    )
                seen_subjects[subject] = site.site_id
        object.__setattr__(self, "_by_id", {s.site_id: s for s in self.sites})
        object.__setattr__(self, "_by_key", {kid: s for s in self.sites for kid in s.key_ids})

    def site(self, site_id: str) -> EnrolledSite | None:
        return self._by_id.get(site_id)

    def site_for_key(self, kid: str) -> EnrolledSite | None:
        return self._by_key.get(kid)

    def site_for_certificate(self, sha256: bytes, subject: str) -> EnrolledSite | None:
        for site in self.sites:
            if site.matches_certificate(sha256, subject):
                return site
        return None

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": ENROLMENT_FORMAT,
            "version": self.version,
            "sites": [s.to_json_obj() for s in self.sites],
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_json_obj())

    def digest(self) -> bytes:
        """SHA-256 of the canonical JSON: the enrolment's identity in the log."""
        return hashlib.sha256(self.canonical_bytes()).digest()

    @classmethod
    def from_json_obj(cls, obj: object) -> Enrolment:
        if not isinstance(obj, dict):
            raise EnrolmentError("enrolment must be a JSON object")
        unknown = sorted(set(obj) - {"format", "version", "sites"})
        if unknown:
            raise EnrolmentError(f"enrolment: unknown field(s) {unknown}")
        if obj.get("format") != ENROLMENT_FORMAT:
            raise EnrolmentError(f"enrolment: 'format' must be {ENROLMENT_FORMAT!r}")
        version = obj.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise EnrolmentError("enrolment: 'version' must be an integer in [1, 2**53)")
        sites = obj.get("sites")
        if not isinstance(sites, list):
            raise EnrolmentError("enrolment: 'sites' must be a list")
        return cls(version, tuple(_site(item, n) for n, item in enumerate(sites)))

    @classmethod
    def from_file(cls, path: Path) -> Enrolment:
        try:
            obj = strictjson.loads(path.read_bytes(), what=f"enrolment file {path}")
        except OSError as exc:
            raise EnrolmentError(f"cannot read enrolment file {path}: {exc.strerror}") from exc
        except FormatError as exc:
            raise EnrolmentError(str(exc)) from None
        try:
            return cls.from_json_obj(obj)
        except EnrolmentError as exc:
            raise EnrolmentError(f"{path}: {exc}") from None


def _site(item: object, n: int) -> EnrolledSite:
    if not isinstance(item, dict):
        raise EnrolmentError(f"enrolment: sites[{n}] must be an object")
    site_id = item.get("id")
    if not isinstance(site_id, str):
        raise EnrolmentError(f"enrolment: sites[{n}] needs an 'id' string")
    where = f"enrolment site {site_id[:40]!r}"
    unknown = sorted(set(item) - _SITE_FIELDS)
    if unknown:
        raise EnrolmentError(f"{where}: unknown field(s) {unknown}")
    keys = item.get("keys")
    if not isinstance(keys, list):
        raise EnrolmentError(f"{where}: 'keys' must be a list of base64 Ed25519 public keys")
    try:
        raw_keys = tuple(
            b64decode_canonical(k, what=f"{where} keys[{i}]", size=32) for i, k in enumerate(keys)
        )
    except FormatError as exc:
        raise EnrolmentError(str(exc)) from None
    digests = item.get("certificate_sha256", [])
    if not isinstance(digests, list) or not all(
        isinstance(d, str) and _HEX_SHA256.fullmatch(d) for d in digests
    ):
        raise EnrolmentError(f"{where}: 'certificate_sha256' must list lowercase hex SHA-256 digests")
    if len(set(digests)) != len(digests):
        raise EnrolmentError(f"{where}: 'certificate_sha256' lists a digest twice")
    subject = item.get("certificate_subject")
    if subject is not None and not isinstance(subject, str):
        raise EnrolmentError(f"{where}: 'certificate_subject' must be a string")
    if len(set(raw_keys)) != len(raw_keys):
        raise EnrolmentError(f"{where}: 'keys' lists a key twice")
    return EnrolledSite(site_id, raw_keys, frozenset(bytes.fromhex(d) for d in digests), subject)

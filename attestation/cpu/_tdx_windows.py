"""When each Intel PCS answer of a TDX quote's collateral is valid.

One reading of each answer's dates serves three readers: the aggregator's stapler caches an
answer until shortly before it expires (``_tdx_staple.py``), a verifier whose policy is
online fetches anew a stapled answer that is not valid at the verification time
(``_tdx.py``), and the hardware checklist prints each stapled answer's age.

* TCB info and QE identity (the PCS body ``{"tcbInfo"|"enclaveIdentity": {...}, "signature":
  ...}``): from ``issueDate`` to ``nextUpdate``;
* a CRL (DER): from ``thisUpdate`` to ``nextUpdate``;
* an issuer chain (the URL-encoded PEM response header): from the latest ``notBefore`` to
  the earliest ``notAfter`` of its certificates.

Every function raises ValueError for an answer it cannot read: an unreadable answer has no
validity, never a default one.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from fedseal import strictjson

__all__ = ["CollateralWindow", "chain_window", "crl_window", "signed_document_window"]


@dataclass(frozen=True)
class CollateralWindow:
    """The time an answer is valid: from ``issued`` to ``expires`` (both aware, UTC)."""

    issued: datetime.datetime
    expires: datetime.datetime

    def covers(self, moment: datetime.datetime) -> bool:
        return self.issued <= moment <= self.expires


def _pcs_time(value: object, what: str) -> datetime.datetime:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a date string")
    moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{what} has no time zone")
    return moment


def signed_document_window(member: str) -> Callable[[bytes], CollateralWindow]:
    """The window of a signed PCS JSON body whose document is ``member`` (``tcbInfo`` or
    ``enclaveIdentity``)."""

    def window(body: bytes) -> CollateralWindow:
        document = strictjson.loads(body, what=f"Intel {member}")
        inner = document.get(member) if isinstance(document, dict) else None
        if not isinstance(inner, dict):
            raise ValueError(f"the PCS answer has no {member!r} object")
        return CollateralWindow(
            issued=_pcs_time(inner.get("issueDate"), f"{member}.issueDate"),
            expires=_pcs_time(inner.get("nextUpdate"), f"{member}.nextUpdate"),
        )

    return window


def crl_window(body: bytes) -> CollateralWindow:
    crl = x509.load_der_x509_crl(body)
    if crl.next_update_utc is None:
        raise ValueError("the CRL has no nextUpdate")
    return CollateralWindow(issued=crl.last_update_utc, expires=crl.next_update_utc)


def chain_window(header: bytes) -> CollateralWindow:
    try:
        pem = urllib.parse.unquote(header.decode("ascii"), errors="strict").encode("ascii")
    except UnicodeError:
        raise ValueError("the issuer chain header is not URL-encoded ASCII") from None
    certificates = x509.load_pem_x509_certificates(pem)
    return CollateralWindow(
        issued=max(certificate.not_valid_before_utc for certificate in certificates),
        expires=min(certificate.not_valid_after_utc for certificate in certificates),
    )

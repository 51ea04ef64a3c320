"""Aggregator side: staple Intel's PCS collateral beside each TDX quote.

:class:`TdxCollateralStapler` wraps a TDX collector (configfs-tsm or the CoCo agent). For
each quote it gets, through a :class:`~attestation.CollateralCache`, the answers Intel PCS
gives for the quote's FMSPC and PCK CA: the TCB info and the QE identity (with their
issuer chains), the PCK CRL (with its chain) and the root CA's CRL, exactly as served, and
puts them in the evidence item's ``collateral`` (``attestation/_stapled.py``). A client
then verifies the quote offline against the pinned Intel SGX Root CA.

Each answer is cached until shortly before its own ``nextUpdate`` (the JSON documents'
field, the CRLs' ``nextUpdate``, the chains' earliest ``notAfter``), and re-fetched at
least daily so that a TCB recovery Intel publishes reaches clients within a day (at most
hourly when an item is close to its ``nextUpdate``). A failed
refresh serves the cached answer until it expires, then collection fails closed with
:class:`~attestation.StapledCollateralExpiredError` (see ``attestation/_collateral.py``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING

from .._bundle import Evidence, EvidenceKind
from .._collateral import Appraiser, CollateralCache, CollateralValidity
from .._errors import EvidenceCollectionError, EvidenceFormatError
from .._stapled import encode_stapled
from ._tdx import parse_tdx_quote, tdx_collateral_requests
from ._tdx_windows import CollateralWindow

if TYPE_CHECKING:  # a runtime import would be circular (_collect imports this package)
    from .._collect import EvidenceCollector

__all__ = ["TdxCollateralStapler"]

_MARGIN = datetime.timedelta(days=7)
_AT_MOST = datetime.timedelta(days=1)
# Close to an item's nextUpdate, ask PCS at most hourly (not on every GetAttestation).
_AT_LEAST = datetime.timedelta(hours=1)


def _validity(expires: datetime.datetime, now: datetime.datetime) -> CollateralValidity:
    """Refresh a week before ``expires``, at least daily, at most hourly, never after it."""
    refresh = min(max(now + _AT_LEAST, expires - _MARGIN), now + _AT_MOST, expires)
    return CollateralValidity(refresh_at=refresh, expires_at=expires)


def _appraiser(window: Callable[[bytes], CollateralWindow]) -> Appraiser:
    return lambda body, now: _validity(window(body).expires, now)


class TdxCollateralStapler:
    """An ``intel-tdx`` collector whose evidence carries Intel's PCS collateral (see the
    module docstring)."""

    def __init__(self, inner: EvidenceCollector, cache: CollateralCache) -> None:
        if inner.kind is not EvidenceKind.INTEL_TDX:
            raise EvidenceCollectionError("the TDX stapler wraps an intel-tdx collector")
        self._inner = inner
        self._cache = cache

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.INTEL_TDX

    def collect(self, binding: bytes) -> Evidence:
        item = self._inner.collect(binding)
        try:
            quote = parse_tdx_quote(item.payload)
        except EvidenceFormatError as exc:
            raise EvidenceCollectionError(f"the TDX evidence does not parse: {exc}") from None
        answers = {
            item.request.staple_key(): self._cache.get(item.request, _appraiser(item.window), what=item.what)
            for item in tdx_collateral_requests(quote).items()
        }
        return Evidence(kind=EvidenceKind.INTEL_TDX, payload=item.payload, collateral=encode_stapled(answers))

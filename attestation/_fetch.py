"""The one door to the network for verification: collateral fetches behind an interface.

Verifying hardware evidence can need material from vendor services: NVIDIA RIMs and OCSP
responses and NRAS tokens, AMD KDS certificates, Intel PCS collateral. Every such fetch
goes through a :class:`CollateralFetcher`, so that

* a client can run fully offline from material stapled into the bundle
  (:class:`OfflineFetcher`), and the policy decides whether missing material fails;
* online fetches are cached (:class:`CachingFetcher`) and bounded in size and time;
* tests replace exactly these fetches and nothing else.

A fetcher returns bytes or raises :class:`CollateralUnavailableError`; it never returns a
partial or default answer.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ._errors import CollateralUnavailableError

__all__ = [
    "MAX_COLLATERAL_BYTES",
    "CachingFetcher",
    "CollateralFetcher",
    "CollateralRequest",
    "HttpFetcher",
    "OfflineFetcher",
]

MAX_COLLATERAL_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class CollateralRequest:
    """One fetch: `url`, an optional POST body (OCSP, NRAS), and a content type for it.

    With `response_header` set, the answer is that response header's value (as sent, not
    decoded) instead of the body: Intel PCS sends the issuer chains of its collateral in
    headers.
    """

    url: str
    body: bytes | None = None
    content_type: str | None = None
    response_header: str | None = None

    def cache_key(self) -> str:
        h = hashlib.sha256(self.url.encode())
        if self.body is not None:
            h.update(b"\0" + self.body)
        if self.response_header is not None:
            h.update(b"\1" + self.response_header.lower().encode())
        return h.hexdigest()

    def staple_key(self) -> str:
        """The key stapled material has in an OfflineFetcher: the URL, or for a header request
        ``URL#header=<lower-case name>`` (a fragment never reaches a server, so no clash)."""
        if self.response_header is None:
            return self.url
        return f"{self.url}#header={self.response_header.lower()}"


class CollateralFetcher(Protocol):
    def fetch(self, request: CollateralRequest) -> bytes:
        """Return the response body or raise CollateralUnavailableError naming the URL."""
        ...


class OfflineFetcher:
    """Serves only what it was given (stapled material keyed by ``request.staple_key()``,
    which is the URL for a body); fetches nothing."""

    def __init__(self, stapled: Mapping[str, bytes] | None = None) -> None:
        self._stapled = dict(stapled or {})

    def fetch(self, request: CollateralRequest) -> bytes:
        try:
            return self._stapled[request.staple_key()]
        except KeyError:
            raise CollateralUnavailableError(
                f"offline: no stapled collateral for {request.staple_key()}"
            ) from None


class HttpFetcher:
    """Plain HTTPS GET/POST with a timeout and a size bound (urllib, certificate-checked)."""

    def __init__(self, timeout: float = 10.0, max_bytes: int = MAX_COLLATERAL_BYTES) -> None:
        self._timeout = timeout
        self._max_bytes = max_bytes

    def fetch(self, request: CollateralRequest) -> bytes:
        if not request.url.startswith("https://"):
            raise CollateralUnavailableError(f"refusing to fetch collateral over non-HTTPS URL {request.url}")
        headers = {"Content-Type": request.content_type} if request.content_type else {}
        req = urllib.request.Request(  # noqa: S310 - scheme checked above
            request.url, data=request.body, headers=headers, method="POST" if request.body else "GET"
        )
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as response:  # noqa: S310
                if request.response_header is not None:
                    header = response.headers.get(request.response_header)
                    if header is None:
                        raise CollateralUnavailableError(
                            f"{request.url} sent no {request.response_header} header"
                        )
                    # http.client decodes header bytes as Latin-1; this gives back the bytes sent.
                    return str(header).encode("latin-1")
                data: bytes = response.read(self._max_bytes + 1)
        except OSError as exc:
            raise CollateralUnavailableError(f"cannot fetch {request.url}: {exc}") from None
        if len(data) > self._max_bytes:
            raise CollateralUnavailableError(f"{request.url} answered more than {self._max_bytes} bytes")
        return data


class CachingFetcher:
    """Wraps another fetcher with an in-memory cache and, optionally, a directory cache.

    Cached answers are re-verified by the caller like fresh ones (signatures, validity
    windows), so a stale or poisoned cache entry can make verification fail but never pass.
    """

    def __init__(self, inner: CollateralFetcher, cache_dir: Path | None = None) -> None:
        self._inner = inner
        self._cache_dir = cache_dir
        self._memory: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def fetch(self, request: CollateralRequest) -> bytes:
        key = request.cache_key()
        with self._lock:
            if key in self._memory:
                return self._memory[key]
        path = self._cache_dir / key if self._cache_dir is not None else None
        if path is not None and path.is_file():
            data = path.read_bytes()
        else:
            data = self._inner.fetch(request)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
        with self._lock:
            self._memory[key] = data
        return data

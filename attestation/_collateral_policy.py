"""The ``collateral`` section of a policy: where a verifier gets vendor collateral, and how old it may be.

::

    "collateral": {
      "source": "stapled",
      "max_ocsp_age_seconds": 604800,
      "max_tcb_info_age_seconds": 2592000
    }

* ``source``: ``"stapled"`` (the default) verifies offline, from what the aggregator
  stapled into the bundle (RIMs, OCSP answers, the VCEK chain), against the pinned roots;
  nothing is fetched. ``"online"`` fetches what is missing (or stapled but unusable) from
  the vendors' services. A client or auditor may override it explicitly
  (``FedSealClient(online=...)``, ``fedseal-audit verify --online``).
* ``max_ocsp_age_seconds``: the oldest OCSP answer accepted (by its ``thisUpdate``), on top
  of its own ``nextUpdate``. Absent: only ``nextUpdate`` bounds it.
* ``max_tcb_info_age_seconds``: the oldest Intel TCB info accepted (by its ``issueDate``),
  on top of its ``nextUpdate``. Absent: only ``nextUpdate`` bounds it.

There is no evidence-age limit: freshness comes from the client's challenge, which every
report must carry. RIMs carry no issue date; their signing chain's validity and OCSP
status are what bound them.
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass

from ._encoding import json_type
from ._errors import PolicyError
from ._fetch import CachingFetcher, CollateralFetcher, HttpFetcher, OfflineFetcher

__all__ = ["CollateralPolicy", "CollateralSource", "collateral_fetcher"]

_KEYS = frozenset({"source", "max_ocsp_age_seconds", "max_tcb_info_age_seconds"})


class CollateralSource(enum.Enum):
    #: Only what the bundle carries; no network (the default).
    STAPLED = "stapled"
    #: Fetch what the bundle lacks from the vendors' services.
    ONLINE = "online"


@dataclass(frozen=True)
class CollateralPolicy:
    source: CollateralSource = CollateralSource.STAPLED
    max_ocsp_age: datetime.timedelta | None = None
    max_tcb_info_age: datetime.timedelta | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.source, CollateralSource):
            raise PolicyError("collateral.source must be a CollateralSource")
        for name in ("max_ocsp_age", "max_tcb_info_age"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, datetime.timedelta) or value <= datetime.timedelta(0)
            ):
                raise PolicyError(f"collateral.{name} must be a positive duration")

    @classmethod
    def from_json_value(cls, value: object, *, where: str) -> CollateralPolicy:
        if not isinstance(value, dict):
            raise PolicyError(f"{where}: key 'collateral' must be an object, got {json_type(value)}")
        unknown = sorted(value.keys() - _KEYS)
        if unknown:
            raise PolicyError(
                f"{where}: unknown key 'collateral.{unknown[0]}' (known: {', '.join(sorted(_KEYS))})"
            )
        fields: dict[str, object] = {}
        if "source" in value:
            try:
                fields["source"] = CollateralSource(value["source"])
            except (ValueError, TypeError):
                known = ", ".join(repr(s.value) for s in CollateralSource)
                raise PolicyError(f"{where}: key 'collateral.source' must be one of {known}") from None
        for key, name in (
            ("max_ocsp_age_seconds", "max_ocsp_age"),
            ("max_tcb_info_age_seconds", "max_tcb_info_age"),
        ):
            if key in value:
                seconds = value[key]
                if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
                    raise PolicyError(f"{where}: key 'collateral.{key}' must be a positive integer")
                fields[name] = datetime.timedelta(seconds=seconds)
        return cls(**fields)  # type: ignore[arg-type]


def collateral_fetcher(
    policy: CollateralPolicy, *, online: bool | None = None, fetcher: CollateralFetcher | None = None
) -> CollateralFetcher:
    """The fetcher a verifier uses under ``policy``: none at all (stapled only) or the network.

    ``online`` overrides the policy's ``source`` (True: fetch what is missing; False: stapled
    only). ``fetcher`` is the network to use when online (default: HTTPS, cached in memory);
    passing one without going online is a mistake and raises PolicyError, so a caller never
    believes it fetched when it did not.
    """
    use_network = policy.source is CollateralSource.ONLINE if online is None else online
    if not use_network:
        if fetcher is not None:
            raise PolicyError(
                "a collateral fetcher was given but verification is stapled-only "
                "(the policy's collateral.source is 'stapled'; pass online=True to fetch)"
            )
        return OfflineFetcher()
    return fetcher if fetcher is not None else CachingFetcher(HttpFetcher())

"""Bytes per round and per site, from what the log records.

Up: each accepted update's `ciphertext_size` (the sealed bytes the site sent). Down: a
round's `aggregate_size` is what one download of its aggregate carries; the log does not
record downloads (the aggregator's metrics endpoint counts the bytes it serves). Refused
uploads record no size, so they are not counted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._report import RoundSummary

__all__ = ["bandwidth_summary"]


def bandwidth_summary(rounds: Sequence[RoundSummary]) -> dict[str, Any]:
    """{"rounds": [...], "sites": [...], "bytes_up": total} (the `bandwidth` of the JSON report)."""
    sites: dict[str, dict[str, Any]] = {}
    per_round = []
    for r in rounds:
        up = sum(int(a["ciphertext_size"]) for a in r.accepted)
        per_round.append(
            {
                "round_id": r.round_id,
                "updates": len(r.accepted),
                "bytes_up": up,
                "aggregate_bytes": r.aggregate_size,
            }
        )
        for a in r.accepted:
            site = sites.setdefault(
                a["client_id"], {"client_id": a["client_id"], "updates": 0, "bytes_up": 0}
            )
            site["updates"] += 1
            site["bytes_up"] += int(a["ciphertext_size"])
    return {
        "rounds": per_round,
        "sites": [sites[name] for name in sorted(sites)],
        "bytes_up": sum(r["bytes_up"] for r in per_round),
    }

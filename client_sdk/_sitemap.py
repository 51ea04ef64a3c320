"""Site identities for simulated Flower nodes: a folder the operator command writes.

Simulated nodes (Flower's Simulation Engine) have no node config of their own, only
``partition-id`` and ``num-partitions``. For them, a *site map* folder says which enrolled
site each partition is, and holds that site's key::

    sites/
      sites.json        {"format": "fedseal-site-map/v1", "policy": "dev-insecure-allow-simulated",
                         "partitions": {"0": "hospital-a", "1": "hospital-b", ...}}
      hospital-a.key    the site's Ed25519 key (PEM), enrolled with the aggregator
      ...

``fedseal-job init --site-map DIR`` writes it; a Flower run names it in its run config
(``fedseal-sites``). It holds every site's private key, so it is for simulations on the
operator's own machine only: a real site's SuperNode names its own key in its node config,
which always takes precedence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from client_sdk._errors import ClientError
from fedseal import strictjson
from fedseal.errors import FormatError

__all__ = ["SITE_MAP_FILE", "SITE_MAP_FORMAT", "SiteMap", "SiteMapError"]

SITE_MAP_FORMAT = "fedseal-site-map/v1"
SITE_MAP_FILE = "sites.json"


class SiteMapError(ClientError):
    """A site-map folder is missing, malformed, or has no site for a partition."""


@dataclass(frozen=True)
class SiteMap:
    folder: Path
    policy: str
    partitions: Mapping[int, str]

    def site(self, partition_id: int) -> str:
        name = self.partitions.get(partition_id)
        if name is None:
            raise SiteMapError(
                f"site map {self.folder} has no site for partition {partition_id} (it maps "
                f"{sorted(self.partitions)}): make one site per simulated node"
            )
        return name

    def key_file(self, site: str) -> Path:
        return self.folder / f"{site}.key"

    def to_json_obj(self) -> dict[str, object]:
        return {
            "format": SITE_MAP_FORMAT,
            "policy": self.policy,
            "partitions": {str(p): s for p, s in sorted(self.partitions.items())},
        }

    def write(self) -> Path:
        path = self.folder / SITE_MAP_FILE
        path.write_text(json.dumps(self.to_json_obj(), indent=2) + "\n")
        return path

    @classmethod
    def of_sites(cls, folder: Path, policy: str, sites: Sequence[str]) -> SiteMap:
        """Partition i is site i."""
        return cls(folder, policy, dict(enumerate(sites)))

    @classmethod
    def load(cls, folder: Path) -> SiteMap:
        path = folder / SITE_MAP_FILE
        try:
            obj = strictjson.loads(path.read_bytes(), what=f"site map {path}")
        except OSError as exc:
            raise SiteMapError(f"cannot read site map {path}: {exc.strerror}") from None
        except FormatError as exc:
            raise SiteMapError(str(exc)) from None
        if (
            not isinstance(obj, dict)
            or set(obj) != {"format", "policy", "partitions"}
            or obj["format"] != SITE_MAP_FORMAT
        ):
            raise SiteMapError(
                f"site map {path}: need exactly 'format' ({SITE_MAP_FORMAT}), 'policy', 'partitions'"
            )
        policy, raw = obj["policy"], obj["partitions"]
        if not isinstance(policy, str) or not policy:
            raise SiteMapError(f"site map {path}: 'policy' must be a builtin policy name or a file")
        if not isinstance(raw, dict) or not raw:
            raise SiteMapError(f"site map {path}: 'partitions' must map partition ids to site names")
        partitions: dict[int, str] = {}
        for key, site in raw.items():
            if not key.isdigit() or not isinstance(site, str) or not site:
                raise SiteMapError(f"site map {path}: partition {key!r} -> {site!r} is not id -> site name")
            partitions[int(key)] = site
        return cls(folder, policy, partitions)

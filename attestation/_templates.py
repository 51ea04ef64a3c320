"""Policy templates: a production policy less the operator's launch measurement.

A template (``policies/templates/<name>.json``) is a ``fedseal-policy/v1`` document whose
CPU TEE allow-list is empty (``amd_sev_snp.measurements``, ``intel_tdx.mrtd``). It is not
a policy: an empty allow-list fails to load, so a template can never be used by mistake
as if it pinned something. :func:`fill_policy_template` puts the operator's values in and
returns the text only once it loads as a :class:`~attestation.Policy`.

Any policy document can be filled the same way: with ``add=True`` the values join the
allow-list already there (a rolling image upgrade accepts the old and the new image for a
while), otherwise they replace it.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files

from ._encoding import DecodeError, load_json_object
from ._errors import PolicyError
from ._policy import MAX_POLICY_SIZE, Policy
from .cpu._policy import SNP_MEASUREMENT_SIZE, TDX_MEASUREMENT_SIZE

__all__ = ["FilledPolicy", "fill_policy_template", "load_policy_template", "policy_template_names"]

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_RTMRS = ("rtmr0", "rtmr1", "rtmr2", "rtmr3")


@dataclass(frozen=True)
class FilledPolicy:
    """A filled template: the JSON text to write and the policy it loads as."""

    text: str
    policy: Policy


def policy_template_names() -> tuple[str, ...]:
    """Names of the templates shipped in ``policies/templates``, sorted."""
    folder = files("policies").joinpath("templates")
    entries = [e.name for e in folder.iterdir() if e.is_file()]
    return tuple(sorted(n.removesuffix(".json") for n in entries if n.endswith(".json")))


def load_policy_template(name_or_path: str) -> tuple[dict[str, object], str]:
    """A shipped template by name, or any policy/template file by path: (document, source)."""
    if _NAME.fullmatch(name_or_path) and name_or_path in policy_template_names():
        resource = files("policies").joinpath("templates", f"{name_or_path}.json")
        return _document(resource.read_bytes(), f"template:{name_or_path}"), f"template:{name_or_path}"
    if not os.path.isfile(name_or_path):
        raise PolicyError(
            f"{name_or_path!r} is neither a shipped template ({', '.join(policy_template_names())}) "
            "nor a policy file"
        )
    try:
        with open(name_or_path, "rb") as handle:
            data = handle.read(MAX_POLICY_SIZE + 1)
    except OSError as exc:
        raise PolicyError(f"cannot read {name_or_path}: {exc.strerror or exc}") from exc
    return _document(data, name_or_path), name_or_path


def fill_policy_template(
    document: Mapping[str, object],
    *,
    source: str,
    snp_measurements: Sequence[bytes] = (),
    tdx_mrtd: Sequence[bytes] = (),
    tdx_rtmrs: Mapping[int, Sequence[bytes]] | None = None,
    name: str | None = None,
    add: bool = False,
) -> FilledPolicy:
    """Put the operator's values into ``document``; raise PolicyError unless it then loads.

    Values for a CPU TEE the document has no section for are refused (they would be lost),
    and so is a document whose sections are left without values.
    """
    filled: dict[str, object] = copy.deepcopy(dict(document))
    for key, values, size in (
        ("amd_sev_snp", snp_measurements, SNP_MEASUREMENT_SIZE),
        ("intel_tdx", tdx_mrtd, TDX_MEASUREMENT_SIZE),
    ):
        if not values:
            continue
        section = filled.get(key)
        if not isinstance(section, dict):
            raise PolicyError(f"{source} has no {key!r} section to put the measurement in")
        list_key = "measurements" if key == "amd_sev_snp" else "mrtd"
        section[list_key] = _merged(section.get(list_key), values, size, f"{key}.{list_key}", add)
    for index, values in sorted((tdx_rtmrs or {}).items()):
        if index not in range(len(_RTMRS)):
            raise PolicyError(f"there is no RTMR{index} (RTMR0..RTMR3)")
        section = filled.get("intel_tdx")
        if not isinstance(section, dict):
            raise PolicyError(f"{source} has no 'intel_tdx' section to put RTMR{index} in")
        section[_RTMRS[index]] = _merged(
            section.get(_RTMRS[index]), values, TDX_MEASUREMENT_SIZE, f"intel_tdx.{_RTMRS[index]}", add
        )
    if name is not None:
        if not _NAME.fullmatch(name):
            raise PolicyError(f"policy name {name!r}: use 1-64 lowercase letters, digits and '-'")
        filled["name"] = name
    for key, list_key in (("amd_sev_snp", "measurements"), ("intel_tdx", "mrtd")):
        section = filled.get(key)
        if isinstance(section, dict) and section.get(list_key) == []:
            command = "measure snp" if key == "amd_sev_snp" else "measure tdx --mrtd"
            raise PolicyError(
                f"{source}: '{key}.{list_key}' is still empty: give the launch measurement "
                f"(fedseal-attest {command})"
            )
    text = json.dumps(filled, indent=2) + "\n"
    return FilledPolicy(text=text, policy=Policy.from_json(text, source=f"{source} (filled)"))


def _merged(current: object, values: Sequence[bytes], size: int, key: str, add: bool) -> list[str]:
    for value in values:
        if not isinstance(value, bytes) or len(value) != size:
            raise PolicyError(f"{key}: a value must be {size} bytes")
    kept: list[str] = []
    if add:
        if not isinstance(current, list) or not all(isinstance(v, str) for v in current):
            raise PolicyError(f"{key}: the existing allow-list is not an array of hex strings")
        kept = list(current)
    for value in values:
        if value.hex() not in kept:
            kept.append(value.hex())
    return kept


def _document(data: bytes, source: str) -> dict[str, object]:
    if len(data) > MAX_POLICY_SIZE:
        raise PolicyError(f"{source}: larger than {MAX_POLICY_SIZE} bytes")
    try:
        return load_json_object(data)
    except DecodeError as exc:
        raise PolicyError(f"{source}: {exc}") from exc

"""Verification policies: what a client requires of an aggregator's evidence.

A policy is a small JSON file (schema ``fedseal-policy/v1``, documented in
``policies/README.md``) loaded into an immutable :class:`Policy`::

    {
      "schema": "fedseal-policy/v1",
      "name": "default",
      "description": "Production: a verified NVIDIA GPU attestation is required.",
      "allow_insecure_simulated_evidence": false,
      "required_evidence": ["nvidia-gpu"]
    }

Unknown keys are refused. A later FedSeal will add keys (allowed firmware versions,
CPU measurements, certificate revocation settings...); a policy that uses one of them
must *fail to load* in an older verifier instead of being silently read as a weaker
policy without it. The same holds for a ``schema`` other than ``fedseal-policy/v1``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib.resources import files

from ._bundle import EvidenceKind
from ._collateral_policy import CollateralPolicy, CollateralSource
from ._encoding import DecodeError, hexdecode_strict, json_type, load_json_object
from ._errors import PolicyError
from ._witness_policy import WitnessPolicy
from .cpu._policy import SevSnpPolicy, TdxPolicy
from .nvidia._policy import NrasMode, NvidiaGpuPolicy

__all__ = [
    "MAX_POLICY_SIZE",
    "POLICY_SCHEMA",
    "Policy",
    "builtin_policy_names",
    "load_builtin_policy",
]

POLICY_SCHEMA = "fedseal-policy/v1"
_SCHEMA_PREFIX = "fedseal-policy/v"
# Policies are a few hundred bytes; the bound only keeps a wrong path (a disk image, a
# device file) from being read whole into memory.
MAX_POLICY_SIZE = 1024 * 1024
_MEASUREMENT_SIZE = 32

_REQUIRED_KEYS = frozenset({"schema", "name", "required_evidence"})
_OPTIONAL_KEYS = frozenset(
    {
        "allow_insecure_simulated_evidence",
        "simulated_measurements",
        "description",
        "nvidia_gpu",
        "amd_sev_snp",
        "intel_tdx",
        "witnesses",
        "require_dp",
        "collateral",
    }
)
_KNOWN_KEYS = _REQUIRED_KEYS | _OPTIONAL_KEYS
# Builtin names are file stems inside the package; anything else (slashes, dots) could
# walk out of it.
_BUILTIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


@dataclass(frozen=True)
class DpRequirement:
    """A policy's `require_dp` section: the weakest central DP a client accepts."""

    max_epsilon: float
    max_delta: float

    @classmethod
    def from_json_value(cls, value: object, where: str) -> DpRequirement:
        if not isinstance(value, dict) or set(value) != {"max_epsilon", "max_delta"}:
            raise PolicyError(f"{where}: 'require_dp' must be an object with 'max_epsilon' and 'max_delta'")
        bounds = []
        for key in ("max_epsilon", "max_delta"):
            number = value[key]
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or not 0 < number < float("inf")
            ):
                raise PolicyError(f"{where}: 'require_dp.{key}' must be a positive number")
            bounds.append(float(number))
        return cls(bounds[0], bounds[1])


@dataclass(frozen=True)
class Policy:
    """An immutable verification policy. Load one with :meth:`from_json`, :meth:`from_file`
    or :func:`load_builtin_policy`; construct one directly only in code and tests.

    * ``required_evidence``: every listed kind must be present in the bundle and verify.
      Evidence of other kinds may also be present; it must verify too.
    * ``allow_insecure_simulated_evidence``: accept simulated-TEE evidence (development only).
    * ``simulated_measurements``: if set, simulated evidence must report one of these
      measurements; ``None`` accepts any.
    """

    name: str
    required_evidence: tuple[EvidenceKind, ...]
    allow_insecure_simulated_evidence: bool = False
    simulated_measurements: tuple[bytes, ...] | None = None
    description: str = ""
    #: How ``nvidia-gpu`` evidence is appraised; absent from the file: the strict defaults.
    nvidia_gpu: NvidiaGpuPolicy = field(default_factory=NvidiaGpuPolicy)
    #: How ``amd-sev-snp`` / ``intel-tdx`` evidence is appraised. No defaults: without the
    #: section (and its measurement allow-list) such evidence is refused.
    amd_sev_snp: SevSnpPolicy | None = None
    intel_tdx: TdxPolicy | None = None
    #: Witness cosignatures required on receipts (see ``_witness_policy.py``); None: none.
    witnesses: WitnessPolicy | None = None
    #: ``{"max_epsilon": X, "max_delta": Y}``: send updates only to rounds whose config has
    #: central DP with epsilon <= X and delta <= Y (the client SDK checks before sealing).
    require_dp: DpRequirement | None = None
    #: Where collateral comes from (stapled only, or online) and how old it may be.
    collateral: CollateralPolicy = field(default_factory=CollateralPolicy)
    #: Where the policy came from ("builtin:default", a file path), for messages only.
    source: str = field(default="<in memory>", compare=False)

    def __post_init__(self) -> None:
        where = f"policy {self.source}"
        if not isinstance(self.name, str) or not self.name:
            raise PolicyError(f"{where}: 'name' must be a non-empty string")
        if not isinstance(self.required_evidence, tuple) or not self.required_evidence:
            # An empty list would make a bundle with any verifying evidence, however weak,
            # acceptable; a policy must say what it needs.
            raise PolicyError(f"{where}: 'required_evidence' must list at least one kind")
        for kind in self.required_evidence:
            if not isinstance(kind, EvidenceKind):
                raise PolicyError(f"{where}: 'required_evidence' entries must be EvidenceKind")
        if len(set(self.required_evidence)) != len(self.required_evidence):
            raise PolicyError(f"{where}: 'required_evidence' lists a kind twice")
        if not isinstance(self.allow_insecure_simulated_evidence, bool):
            raise PolicyError(f"{where}: 'allow_insecure_simulated_evidence' must be a boolean")
        if (
            EvidenceKind.SIMULATED_INSECURE in self.required_evidence
            and not self.allow_insecure_simulated_evidence
        ):
            raise PolicyError(
                f"{where}: 'required_evidence' requires {EvidenceKind.SIMULATED_INSECURE.value!r} "
                "but 'allow_insecure_simulated_evidence' is false; no bundle could pass"
            )
        if self.simulated_measurements is not None:
            if not isinstance(self.simulated_measurements, tuple) or not all(
                isinstance(m, bytes) and len(m) == _MEASUREMENT_SIZE for m in self.simulated_measurements
            ):
                raise PolicyError(
                    f"{where}: 'simulated_measurements' must be {_MEASUREMENT_SIZE}-byte values"
                )
            if not self.simulated_measurements:
                raise PolicyError(
                    f"{where}: 'simulated_measurements' is empty; omit it to accept any simulated measurement"
                )
        if not isinstance(self.description, str):
            raise PolicyError(f"{where}: 'description' must be a string")
        if not isinstance(self.collateral, CollateralPolicy):
            raise PolicyError(f"{where}: 'collateral' must be a CollateralPolicy")
        if not isinstance(self.nvidia_gpu, NvidiaGpuPolicy):
            raise PolicyError(f"{where}: 'nvidia_gpu' must be an NvidiaGpuPolicy")
        if (
            self.nvidia_gpu.nras is NrasMode.REQUIRED
            and not self.nvidia_gpu.nras_key_pins
            and self.collateral.source is CollateralSource.STAPLED
        ):
            # Offline, the only NRAS key set is the one the aggregator stapled: its word.
            raise PolicyError(
                f"{where}: 'nvidia_gpu.nras' is 'required' but the policy pins no NRAS key "
                "('nvidia_gpu.nras_key_pins') and verifies stapled-only ('collateral.source'); "
                "no bundle could pass: pin NVIDIA's NRAS keys or verify online"
            )
        if self.witnesses is not None and not isinstance(self.witnesses, WitnessPolicy):
            raise PolicyError(f"{where}: 'witnesses' must be a WitnessPolicy")
        for key, kind, section_type in (
            ("amd_sev_snp", EvidenceKind.AMD_SEV_SNP, SevSnpPolicy),
            ("intel_tdx", EvidenceKind.INTEL_TDX, TdxPolicy),
        ):
            section = getattr(self, key)
            if section is not None and not isinstance(section, section_type):
                raise PolicyError(f"{where}: {key!r} must be a {section_type.__name__}")
            if section is None and kind in self.required_evidence:
                raise PolicyError(
                    f"{where}: 'required_evidence' requires {kind.value!r} but there is no {key!r} "
                    "section (with its measurement allow-list); no bundle could pass"
                )

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str) -> Policy:
        """Parse a policy document; raise :class:`PolicyError` naming the offending key.

        ``source`` says where the text came from and appears in error messages.
        """
        where = f"policy {source}"
        if len(text) > MAX_POLICY_SIZE:
            raise PolicyError(f"{where}: larger than {MAX_POLICY_SIZE} bytes")
        try:
            document = load_json_object(text)
        except DecodeError as exc:
            raise PolicyError(f"{where}: {exc}") from exc

        unknown = sorted(document.keys() - _KNOWN_KEYS)
        if unknown:
            raise PolicyError(
                f"{where}: unknown key {unknown[0]!r}; unknown keys are refused so that a "
                "policy written for a newer FedSeal fails closed instead of being read as a "
                f"weaker one (known keys: {', '.join(sorted(_KNOWN_KEYS))})"
            )
        missing = sorted(_REQUIRED_KEYS - document.keys())
        if missing:
            raise PolicyError(f"{where}: missing required key {missing[0]!r}")

        schema = document["schema"]
        if schema != POLICY_SCHEMA:
            newer = isinstance(schema, str) and schema.startswith(_SCHEMA_PREFIX)
            hint = " (written for another FedSeal version?)" if newer else ""
            raise PolicyError(f"{where}: key 'schema' must be {POLICY_SCHEMA!r}{hint}")

        name = _string(document["name"], "name", where)
        description = _string(document.get("description", ""), "description", where)
        allow = document.get("allow_insecure_simulated_evidence", False)
        if not isinstance(allow, bool):
            raise PolicyError(
                f"{where}: key 'allow_insecure_simulated_evidence' must be true or false, "
                f"got {json_type(allow)}"
            )
        required = _evidence_kinds(document["required_evidence"], where)
        measurements = None
        nvidia_gpu = NvidiaGpuPolicy()
        if "nvidia_gpu" in document:
            nvidia_gpu = NvidiaGpuPolicy.from_json_value(document["nvidia_gpu"], where=where)
        amd_sev_snp = None
        if "amd_sev_snp" in document:
            amd_sev_snp = SevSnpPolicy.from_json_value(document["amd_sev_snp"], where=where)
        intel_tdx = None
        if "intel_tdx" in document:
            intel_tdx = TdxPolicy.from_json_value(document["intel_tdx"], where=where)
        if "simulated_measurements" in document:
            measurements = _measurements(document["simulated_measurements"], where)
        return cls(
            name=name,
            required_evidence=required,
            allow_insecure_simulated_evidence=allow,
            simulated_measurements=measurements,
            nvidia_gpu=nvidia_gpu,
            amd_sev_snp=amd_sev_snp,
            intel_tdx=intel_tdx,
            description=description,
            witnesses=(
                WitnessPolicy.from_json_value(document["witnesses"], where=where)
                if "witnesses" in document
                else None
            ),
            require_dp=DpRequirement.from_json_value(document["require_dp"], where)
            if "require_dp" in document
            else None,
            collateral=CollateralPolicy.from_json_value(document["collateral"], where=where)
            if "collateral" in document
            else CollateralPolicy(),
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Policy:
        """Read and parse a policy file; an unreadable file is a :class:`PolicyError` too."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_POLICY_SIZE + 1)
        except OSError as exc:
            raise PolicyError(f"cannot read policy file {os.fspath(path)!s}: {exc.strerror or exc}") from exc
        return cls.from_json(data, source=os.fspath(path))


def builtin_policy_names() -> tuple[str, ...]:
    """Names accepted by :func:`load_builtin_policy`, sorted."""
    return tuple(
        sorted(
            entry.name.removesuffix(".json")
            for entry in files("policies").iterdir()
            if entry.is_file() and entry.name.endswith(".json")
        )
    )


def load_builtin_policy(name: str) -> Policy:
    """Load ``policies/<name>.json`` shipped with FedSeal (``"default"`` for production)."""
    if not isinstance(name, str) or not _BUILTIN_NAME.fullmatch(name):
        raise PolicyError(f"{name!r} is not a builtin policy name")
    resource = files("policies").joinpath(f"{name}.json")
    if not resource.is_file():
        raise PolicyError(f"no builtin policy named {name!r} (builtin: {', '.join(builtin_policy_names())})")
    policy = Policy.from_json(resource.read_bytes(), source=f"builtin:{name}")
    if policy.name != name:
        # Reports and receipts name the policy; a file whose name lies would mislead them.
        raise PolicyError(f"builtin policy file {name}.json declares name {policy.name!r}")
    return policy


def _string(value: object, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"{where}: key {key!r} must be a string, got {json_type(value)}")
    return value


def _evidence_kinds(value: object, where: str) -> tuple[EvidenceKind, ...]:
    if not isinstance(value, list):
        raise PolicyError(f"{where}: key 'required_evidence' must be an array, got {json_type(value)}")
    kinds: list[EvidenceKind] = []
    for index, entry in enumerate(value):
        try:
            kind = EvidenceKind(entry)
        except (ValueError, TypeError):
            known = ", ".join(k.value for k in EvidenceKind)
            raise PolicyError(
                f"{where}: key 'required_evidence[{index}]' is not a known evidence kind (known: {known})"
            ) from None
        if kind in kinds:
            raise PolicyError(f"{where}: key 'required_evidence[{index}]' repeats {kind.value!r}")
        kinds.append(kind)
    return tuple(kinds)


def _measurements(value: object, where: str) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise PolicyError(f"{where}: key 'simulated_measurements' must be an array, got {json_type(value)}")
    result: list[bytes] = []
    for index, entry in enumerate(value):
        try:
            result.append(hexdecode_strict(entry, size=_MEASUREMENT_SIZE))
        except DecodeError as exc:
            raise PolicyError(f"{where}: key 'simulated_measurements[{index}]' {exc}") from exc
    return tuple(result)

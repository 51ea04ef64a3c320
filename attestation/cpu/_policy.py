"""The ``amd_sev_snp`` and ``intel_tdx`` sections of a policy: what a client requires of a
confidential VM's CPU evidence.

::

    "amd_sev_snp": {
      "measurements": ["<96 lowercase hex digits: a 48-byte launch measurement>", ...],
      "allowed_products": ["Milan", "Genoa", "Turin"],
      "allow_debug": false,
      "minimum_tcb": {
        "Milan": {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115},
        "Turin": {"fmc": 0, "bootloader": 1, "tee": 0, "snp": 3, "microcode": 9}
      }
    }

    "intel_tdx": {
      "mrtd": ["<96 lowercase hex digits: a 48-byte MRTD>", ...],
      "rtmr0": [...], "rtmr1": [...], "rtmr2": [...], "rtmr3": [...],
      "allow_debug": false,
      "allowed_tcb_statuses": ["UpToDate"]
    }

``measurements`` (SEV-SNP) and ``mrtd`` (TDX) are required and non-empty: CPU evidence that
proves only "some confidential VM" says nothing about the code that holds the keys.
Everything else is optional with the strict default shown (all products; debug refused; no
TCB minimum; Intel status ``UpToDate`` only; RTMRs not checked). Unknown keys are refused,
as everywhere in a policy.

``minimum_tcb`` is per product because AMD numbers firmware per product: a Milan microcode
level means nothing on Genoa. When it is present, a report from a product it does not list
fails. ``fmc`` exists on Turin only (and is required there).

``roots`` (SEV-SNP, ``{"Milan": "<PEM ARK>", ...}``) REPLACES the AMD root key FedSeal pins
for those products; the ASK (ASVK) must then travel in the evidence's certificate table.
``roots`` (TDX, ``{"sgx_root_ca": "<PEM>"}``) REPLACES the pinned Intel SGX Root CA: the
quote's PCK chain and every collateral signer must then chain to it. Both exist for a
private test PKI standing in for the vendor's; a production policy never carries them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from cryptography import x509

from .._encoding import DecodeError, hexdecode_strict, json_type
from .._errors import PolicyError

__all__ = [
    "SNP_MEASUREMENT_SIZE",
    "TDX_MEASUREMENT_SIZE",
    "SevSnpPolicy",
    "SevSnpProduct",
    "SnpTcb",
    "TdxPolicy",
    "TdxTcbStatus",
]

_E = TypeVar("_E", bound=enum.Enum)

SNP_MEASUREMENT_SIZE = 48
TDX_MEASUREMENT_SIZE = 48
_TCB_COMPONENT_MAX = 255


class SevSnpProduct(enum.Enum):
    """AMD EPYC generations with SEV-SNP; each has its own ARK (root key) and TCB numbering."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class TdxTcbStatus(enum.Enum):
    """Intel's verdicts on a platform's TCB level (TCB info ``tcbStatus``), Intel's spelling."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


@dataclass(frozen=True)
class SnpTcb:
    """SEV-SNP TCB component security versions (SPLs), each 0..255.

    ``fmc`` is Turin's first-mutable-code SPL: set for Turin, ``None`` for Milan and Genoa.
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def __post_init__(self) -> None:
        for name in ("bootloader", "tee", "snp", "microcode", "fmc"):
            value = getattr(self, name)
            if value is None and name == "fmc":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _TCB_COMPONENT_MAX:
                raise PolicyError(f"TCB component {name!r} must be an integer 0..{_TCB_COMPONENT_MAX}")

    def components(self) -> tuple[tuple[str, int], ...]:
        """(name, value) pairs in AMD's order, ``fmc`` first when present."""
        fmc = (("fmc", self.fmc),) if self.fmc is not None else ()
        return (
            *fmc,
            ("bootloader", self.bootloader),
            ("tee", self.tee),
            ("snp", self.snp),
            ("microcode", self.microcode),
        )

    def shortfalls(self, found: SnpTcb) -> tuple[str, ...]:
        """Names of the components where ``found`` is below this minimum."""
        found_values = dict(found.components())
        return tuple(name for name, minimum in self.components() if found_values.get(name, -1) < minimum)

    def __str__(self) -> str:
        return " ".join(f"{name}={value}" for name, value in self.components())


_SNP_KEYS = frozenset({"measurements", "allowed_products", "allow_debug", "minimum_tcb", "roots"})
_TCB_KEYS = frozenset({"bootloader", "tee", "snp", "microcode", "fmc"})
_TDX_RTMRS = ("rtmr0", "rtmr1", "rtmr2", "rtmr3")
_TDX_KEYS = frozenset({"mrtd", *_TDX_RTMRS, "allow_debug", "allowed_tcb_statuses", "roots"})
_TDX_ROOT_KEYS = frozenset({"sgx_root_ca"})


@dataclass(frozen=True)
class SevSnpPolicy:
    """Appraisal settings for ``amd-sev-snp`` evidence (see the module docstring)."""

    measurements: tuple[bytes, ...]
    allowed_products: tuple[SevSnpProduct, ...] = tuple(SevSnpProduct)
    allow_debug: bool = False
    minimum_tcb: Mapping[SevSnpProduct, SnpTcb] | None = None
    #: Replacement ARKs by product (a private test PKI only); None: AMD's pinned ARKs.
    roots: Mapping[SevSnpProduct, x509.Certificate] | None = None

    def __post_init__(self) -> None:
        _check_measurements(self.measurements, "amd_sev_snp.measurements", SNP_MEASUREMENT_SIZE)
        if self.roots is not None:
            if not isinstance(self.roots, Mapping) or not self.roots:
                raise PolicyError("amd_sev_snp.roots must map at least one product to an ARK")
            if not all(
                isinstance(p, SevSnpProduct) and isinstance(c, x509.Certificate)
                for p, c in self.roots.items()
            ):
                raise PolicyError("amd_sev_snp.roots must map SevSnpProduct to an X.509 certificate")
            object.__setattr__(self, "roots", MappingProxyType(dict(self.roots)))
        if not isinstance(self.allowed_products, tuple) or not self.allowed_products:
            raise PolicyError("amd_sev_snp.allowed_products must list at least one product")
        if not all(isinstance(p, SevSnpProduct) for p in self.allowed_products):
            raise PolicyError("amd_sev_snp.allowed_products entries must be SevSnpProduct")
        if len(set(self.allowed_products)) != len(self.allowed_products):
            raise PolicyError("amd_sev_snp.allowed_products lists a product twice")
        if not isinstance(self.allow_debug, bool):
            raise PolicyError("amd_sev_snp.allow_debug must be a boolean")
        if self.minimum_tcb is not None:
            if not isinstance(self.minimum_tcb, Mapping) or not self.minimum_tcb:
                raise PolicyError("amd_sev_snp.minimum_tcb must map at least one product to a TCB")
            for product, tcb in self.minimum_tcb.items():
                if not isinstance(product, SevSnpProduct) or not isinstance(tcb, SnpTcb):
                    raise PolicyError("amd_sev_snp.minimum_tcb must map SevSnpProduct to SnpTcb")
                if (tcb.fmc is not None) != (product is SevSnpProduct.TURIN):
                    raise PolicyError(
                        f"amd_sev_snp.minimum_tcb.{product.value}: 'fmc' is required for Turin "
                        "and does not exist on Milan or Genoa"
                    )
            # Frozen means frozen: a caller's dict must not change the policy afterwards.
            object.__setattr__(self, "minimum_tcb", MappingProxyType(dict(self.minimum_tcb)))

    def __hash__(self) -> int:
        # Mappings do not hash; a policy (like every other Policy part) should.
        tcb = None if self.minimum_tcb is None else tuple(sorted(self.minimum_tcb.items(), key=_by_value))
        roots = None if self.roots is None else tuple(sorted(self.roots.items(), key=_by_value))
        return hash((self.measurements, self.allowed_products, self.allow_debug, tcb, roots))

    @classmethod
    def from_json_value(cls, value: object, *, where: str) -> SevSnpPolicy:
        """Parse the decoded ``amd_sev_snp`` object; raise PolicyError naming the key."""
        document = _section(value, "amd_sev_snp", _SNP_KEYS, where)
        if "measurements" not in document:
            raise PolicyError(f"{where}: missing required key 'amd_sev_snp.measurements'")
        fields: dict[str, object] = {
            "measurements": _hex_list(
                document["measurements"], "amd_sev_snp.measurements", SNP_MEASUREMENT_SIZE, where
            )
        }
        if "allowed_products" in document:
            fields["allowed_products"] = _enum_list(
                document["allowed_products"], SevSnpProduct, "amd_sev_snp.allowed_products", where
            )
        if "allow_debug" in document:
            fields["allow_debug"] = _bool(document["allow_debug"], "amd_sev_snp.allow_debug", where)
        if "minimum_tcb" in document:
            fields["minimum_tcb"] = _minimum_tcb(document["minimum_tcb"], where)
        if "roots" in document:
            fields["roots"] = _roots(document["roots"], where)
        try:
            return cls(**fields)  # type: ignore[arg-type]
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class TdxPolicy:
    """Appraisal settings for ``intel-tdx`` evidence (see the module docstring).

    ``rtmrs`` holds the allow-lists for RTMR0..3 by index; an index that is absent is not
    checked (RTMRs are extended at run time, so a policy pins only those it can predict).
    """

    mrtd: tuple[bytes, ...]
    rtmrs: Mapping[int, tuple[bytes, ...]] = field(default_factory=lambda: MappingProxyType({}))
    allow_debug: bool = False
    allowed_tcb_statuses: tuple[TdxTcbStatus, ...] = (TdxTcbStatus.UP_TO_DATE,)
    #: Replacement Intel SGX Root CA (a private test PKI only); None: Intel's pinned root.
    sgx_root_ca: x509.Certificate | None = None

    def __post_init__(self) -> None:
        _check_measurements(self.mrtd, "intel_tdx.mrtd", TDX_MEASUREMENT_SIZE)
        if self.sgx_root_ca is not None and not isinstance(self.sgx_root_ca, x509.Certificate):
            raise PolicyError("intel_tdx.roots.sgx_root_ca must be an X.509 certificate")
        if not isinstance(self.rtmrs, Mapping):
            raise PolicyError("intel_tdx RTMR allow-lists must be a mapping of index to values")
        for index, values in self.rtmrs.items():
            if index not in range(len(_TDX_RTMRS)):
                raise PolicyError(f"intel_tdx: there is no RTMR{index!r} (RTMR0..RTMR3)")
            _check_measurements(values, f"intel_tdx.rtmr{index}", TDX_MEASUREMENT_SIZE)
        object.__setattr__(self, "rtmrs", MappingProxyType(dict(self.rtmrs)))
        if not isinstance(self.allow_debug, bool):
            raise PolicyError("intel_tdx.allow_debug must be a boolean")
        statuses = self.allowed_tcb_statuses
        if not isinstance(statuses, tuple) or not statuses:
            raise PolicyError("intel_tdx.allowed_tcb_statuses must list at least one status")
        if not all(isinstance(s, TdxTcbStatus) for s in statuses):
            raise PolicyError("intel_tdx.allowed_tcb_statuses entries must be TdxTcbStatus")
        if len(set(statuses)) != len(statuses):
            raise PolicyError("intel_tdx.allowed_tcb_statuses lists a status twice")
        if TdxTcbStatus.REVOKED in statuses:
            # Intel revoked the platform's keys: no policy can sensibly accept that.
            raise PolicyError("intel_tdx.allowed_tcb_statuses must not allow 'Revoked'")

    def __hash__(self) -> int:
        return hash(
            (
                self.mrtd,
                tuple(sorted(self.rtmrs.items())),
                self.allow_debug,
                self.allowed_tcb_statuses,
                self.sgx_root_ca,
            )
        )

    @classmethod
    def from_json_value(cls, value: object, *, where: str) -> TdxPolicy:
        """Parse the decoded ``intel_tdx`` object; raise PolicyError naming the key."""
        document = _section(value, "intel_tdx", _TDX_KEYS, where)
        if "mrtd" not in document:
            raise PolicyError(f"{where}: missing required key 'intel_tdx.mrtd'")
        fields: dict[str, object] = {
            "mrtd": _hex_list(document["mrtd"], "intel_tdx.mrtd", TDX_MEASUREMENT_SIZE, where)
        }
        rtmrs = {
            index: _hex_list(document[name], f"intel_tdx.{name}", TDX_MEASUREMENT_SIZE, where)
            for index, name in enumerate(_TDX_RTMRS)
            if name in document
        }
        if rtmrs:
            fields["rtmrs"] = rtmrs
        if "allow_debug" in document:
            fields["allow_debug"] = _bool(document["allow_debug"], "intel_tdx.allow_debug", where)
        if "allowed_tcb_statuses" in document:
            fields["allowed_tcb_statuses"] = _enum_list(
                document["allowed_tcb_statuses"], TdxTcbStatus, "intel_tdx.allowed_tcb_statuses", where
            )
        if "roots" in document:
            fields["sgx_root_ca"] = _tdx_root(document["roots"], where)
        try:
            return cls(**fields)  # type: ignore[arg-type]
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None


def _by_value(item: tuple[SevSnpProduct, object]) -> str:
    return item[0].value


def _check_measurements(values: object, key: str, size: int) -> None:
    if not isinstance(values, tuple) or not values:
        raise PolicyError(f"{key} must list at least one {size}-byte value")
    if not all(isinstance(v, bytes) and len(v) == size for v in values):
        raise PolicyError(f"{key} entries must be {size}-byte values")


def _section(value: object, name: str, known: frozenset[str], where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: key {name!r} must be an object, got {json_type(value)}")
    unknown = sorted(value.keys() - known)
    if unknown:
        raise PolicyError(f"{where}: unknown key '{name}.{unknown[0]}' (known: {', '.join(sorted(known))})")
    return value


def _bool(value: object, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{where}: key {key!r} must be true or false, got {json_type(value)}")
    return value


def _hex_list(value: object, key: str, size: int, where: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: key {key!r} must be a non-empty array of {2 * size} hex digits")
    result: list[bytes] = []
    for index, entry in enumerate(value):
        try:
            decoded = hexdecode_strict(entry, size=size)
        except DecodeError as exc:
            raise PolicyError(f"{where}: key '{key}[{index}]' {exc}") from exc
        if decoded in result:
            raise PolicyError(f"{where}: key '{key}[{index}]' repeats an earlier value")
        result.append(decoded)
    return tuple(result)


def _enum_list(value: object, kind: type[_E], key: str, where: str) -> tuple[_E, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: key {key!r} must be a non-empty array")
    result: list[_E] = []
    for index, entry in enumerate(value):
        try:
            member = kind(entry)
        except (ValueError, TypeError):
            known = ", ".join(str(m.value) for m in kind)
            raise PolicyError(f"{where}: key '{key}[{index}]' is not one of {known}") from None
        if member in result:
            raise PolicyError(f"{where}: key '{key}[{index}]' repeats {entry!r}")
        result.append(member)
    return tuple(result)


def _minimum_tcb(value: object, where: str) -> dict[SevSnpProduct, SnpTcb]:
    if not isinstance(value, dict) or not value:
        raise PolicyError(f"{where}: key 'amd_sev_snp.minimum_tcb' must be a non-empty object")
    result: dict[SevSnpProduct, SnpTcb] = {}
    for product_name, tcb in value.items():
        key = f"amd_sev_snp.minimum_tcb.{product_name}"
        try:
            product = SevSnpProduct(product_name)
        except ValueError:
            known = ", ".join(p.value for p in SevSnpProduct)
            raise PolicyError(f"{where}: key {key!r} is not a product ({known})") from None
        if not isinstance(tcb, dict):
            raise PolicyError(f"{where}: key {key!r} must be an object, got {json_type(tcb)}")
        unknown = sorted(tcb.keys() - _TCB_KEYS)
        if unknown:
            raise PolicyError(
                f"{where}: unknown key '{key}.{unknown[0]}' (known: {', '.join(sorted(_TCB_KEYS))})"
            )
        required = {"bootloader", "tee", "snp", "microcode"} | (
            {"fmc"} if product is SevSnpProduct.TURIN else set()
        )
        missing = sorted(required - tcb.keys())
        if missing:
            raise PolicyError(f"{where}: missing required key '{key}.{missing[0]}'")
        components: dict[str, object] = {}
        for name, component in tcb.items():
            if not isinstance(component, int) or isinstance(component, bool) or not 0 <= component <= 255:
                raise PolicyError(f"{where}: key '{key}.{name}' must be an integer 0..255")
            components[name] = component
        try:
            result[product] = SnpTcb(**components)  # type: ignore[arg-type]
        except PolicyError as exc:
            raise PolicyError(f"{where}: {key}: {exc}") from None
    return result


def _roots(value: object, where: str) -> dict[SevSnpProduct, x509.Certificate]:
    from ..nvidia._policy import pem_certificate  # one PEM reader for every section

    if not isinstance(value, dict) or not value:
        raise PolicyError(f"{where}: key 'amd_sev_snp.roots' must be a non-empty object")
    result: dict[SevSnpProduct, x509.Certificate] = {}
    for name, pem in value.items():
        try:
            product = SevSnpProduct(name)
        except ValueError:
            known = ", ".join(p.value for p in SevSnpProduct)
            raise PolicyError(f"{where}: key 'amd_sev_snp.roots.{name}' is not a product ({known})") from None
        result[product] = pem_certificate(pem, f"{where}: key 'amd_sev_snp.roots.{name}'")
    return result


def _tdx_root(value: object, where: str) -> x509.Certificate:
    from ..nvidia._policy import pem_certificate  # one PEM reader for every section

    if not isinstance(value, dict) or set(value) != _TDX_ROOT_KEYS:
        raise PolicyError(f"{where}: key 'intel_tdx.roots' must be an object with exactly 'sgx_root_ca'")
    return pem_certificate(value["sgx_root_ca"], f"{where}: key 'intel_tdx.roots.sgx_root_ca'")

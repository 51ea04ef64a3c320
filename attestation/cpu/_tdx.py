"""Intel TDX evidence: a DCAP quote verified with ``dcap-qvl`` against Intel collateral.

Evidence payload (``intel-tdx``)
--------------------------------

The raw TDX quote (version 4 or 5), as configfs-tsm's ``outblob`` gives it. The quote
carries its PCK certificate chain; the rest of the collateral comes from Intel PCS.

Collateral
----------

Through the verification context's fetcher, one request per item (Intel PCS API v4; the
issuer chains arrive in response headers, URL-encoded)::

    TCB info      {PCS}/tdx/certification/v4/tcb?fmspc=<FMSPC>   header TCB-Info-Issuer-Chain
    QE identity   {PCS}/tdx/certification/v4/qe/identity         header SGX-Enclave-Identity-Issuer-Chain
    PCK CRL       {PCS}/sgx/certification/v4/pckcrl?ca=<platform|processor>&encoding=der
                                                                 header SGX-PCK-CRL-Issuer-Chain
    root CA CRL   the CRL distribution point of the pinned Intel SGX Root CA

An :class:`~attestation.OfflineFetcher` serves stapled copies of the same answers (a header
answer is keyed ``URL#header=<lower-case name>``, see ``CollateralRequest.staple_key``);
:func:`tdx_collateral_staples` turns a dcap-qvl ``QuoteCollateralV3`` JSON into them.
The aggregator's :class:`~attestation.cpu.TdxCollateralStapler` staples them beside the
quote (the evidence item's ``collateral``, see ``attestation/_stapled.py``); the verifier
serves those first and fetches only what is missing or not valid at the verification time
(``_tdx_windows.py``), and only when the policy is online.

Verification
------------

``dcap_qvl.verify_with_root_ca`` checks the quote, the QE report, the PCK chain, the CRLs,
the TCB info and the QE identity against the pinned Intel SGX Root CA (or the policy's
``intel_tdx.roots`` replacement, for a private test PKI) at the verification time, and
rates the platform's TCB. FedSeal then checks, from the quote's TD report, the
TCB status against the policy, REPORTDATA against the expected report data, the DEBUG TD
attribute, MRTD and the RTMRs against the policy's allow-lists.
"""

from __future__ import annotations

import datetime
import hmac
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import InitVar, dataclass
from typing import TYPE_CHECKING, Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedseal import strictjson

from .._bundle import Evidence, EvidenceKind
from .._checks import Checklist
from .._encoding import DecodeError, load_json_object
from .._errors import (
    AttestationError,
    CollateralUnavailableError,
    EvidenceFormatError,
    PolicyViolationError,
)
from .._fetch import CollateralFetcher, CollateralRequest, OfflineFetcher
from .._stapled import STAPLED_COLLATERAL_FORMAT, StapledFirstFetcher, decode_stapled
from ._common import CheckRecorder, resolve_now, shorten
from ._errors import (
    CpuDebugModeError,
    CpuMeasurementError,
    CpuReportDataMismatchError,
    CpuTcbError,
    TdxCertificateChainError,
    TdxCollateralError,
    TdxQuoteSignatureError,
)
from ._policy import TdxPolicy, TdxTcbStatus
from ._report_data import CPU_REPORT_DATA_SIZE, cpu_report_data
from ._roots import intel_sgx_root_ca_der
from ._tdx_windows import CollateralWindow, chain_window, crl_window, signed_document_window

if TYPE_CHECKING:
    from .._verify import VerificationContext

__all__ = [
    "INTEL_PCS_BASE_URL",
    "TdxCollateralItem",
    "TdxCollateralRequests",
    "TdxQuote",
    "VerifiedTdxQuote",
    "parse_tdx_quote",
    "tdx_collateral_requests",
    "tdx_collateral_staples",
    "verify_tdx_evidence",
    "verify_tdx_quote",
]

INTEL_PCS_BASE_URL = "https://api.trustedservices.intel.com"

_TEE_TYPE_TDX = 0x81
_TDX_QUOTE_VERSIONS = (4, 5)
_TD_ATTRIBUTES_DEBUG = 0x01  # TUD.DEBUG: bit 0 of TDATTRIBUTES (byte 0)
_MAX_QUOTE_SIZE = 64 * 1024
_HEADER_TCB_CHAIN = "TCB-Info-Issuer-Chain"
_HEADER_QE_CHAIN = "SGX-Enclave-Identity-Issuer-Chain"
_HEADER_PCK_CRL_CHAIN = "SGX-PCK-CRL-Issuer-Chain"


@dataclass(frozen=True)
class TdxQuote:
    """The fields FedSeal appraises from a TDX quote (parsed by dcap-qvl; not yet verified)."""

    raw: bytes
    version: int
    fmspc: str
    #: Which PCK CA issued the quote's PCK certificate: "platform" or "processor".
    pck_ca: str
    mr_td: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    td_attributes: bytes
    report_data: bytes

    @property
    def debug(self) -> bool:
        """The DEBUG TD attribute: the host can read and change the TD's state."""
        return bool(self.td_attributes[0] & _TD_ATTRIBUTES_DEBUG)


def parse_tdx_quote(data: bytes, *, field: str = "quote") -> TdxQuote:
    """Parse a TDX quote; raise :class:`EvidenceFormatError` for anything else (an SGX
    quote included: it proves an enclave, not a confidential VM)."""
    if not isinstance(data, bytes) or not data:
        raise EvidenceFormatError(f"{field} must be non-empty bytes", field=field)
    if len(data) > _MAX_QUOTE_SIZE:
        raise EvidenceFormatError(f"{field} is larger than {_MAX_QUOTE_SIZE} bytes", field=field)
    try:
        quote: Any = dcap_qvl.parse_quote(data)
    except ValueError as exc:
        raise EvidenceFormatError(
            f"{field} is not a DCAP quote: {shorten(str(exc), 160)}", field=field
        ) from None
    header = quote.header
    if int(header.tee_type) != _TEE_TYPE_TDX or not quote.is_tdx():
        raise EvidenceFormatError(
            f"{field} is an {quote.quote_type()} quote (TEE type {int(header.tee_type):#x}), not a TDX quote",
            field=f"{field}.tee_type",
        )
    version = int(header.version)
    if version not in _TDX_QUOTE_VERSIONS:
        raise EvidenceFormatError(
            f"{field} has version {version}; TDX quotes are version 4 or 5", field=field
        )
    report = quote.report
    try:
        fmspc = str(quote.fmspc()).upper()
        pck_ca = str(quote.ca())
    except ValueError as exc:
        raise EvidenceFormatError(
            f"{field} carries no usable PCK certificate: {shorten(str(exc), 160)}", field=field
        ) from None
    if pck_ca not in ("platform", "processor") or not re.fullmatch(r"[0-9A-F]{12}", fmspc):
        raise EvidenceFormatError(f"{field} names an unknown PCK CA or a malformed FMSPC", field=field)
    return TdxQuote(
        raw=data,
        version=version,
        fmspc=fmspc,
        pck_ca=pck_ca,
        mr_td=bytes(report.mr_td),
        rtmrs=(bytes(report.rt_mr0), bytes(report.rt_mr1), bytes(report.rt_mr2), bytes(report.rt_mr3)),
        td_attributes=bytes(report.td_attributes),
        report_data=bytes(report.report_data),
    )


@dataclass(frozen=True)
class TdxCollateralItem:
    """One Intel PCS answer of a quote's collateral: what it is, how it is fetched, and
    when an answer is valid (``window`` raises ValueError for an unreadable one)."""

    what: str
    request: CollateralRequest
    window: Callable[[bytes], CollateralWindow]


@dataclass(frozen=True)
class TdxCollateralRequests:
    """The fetches that make up a TDX quote's collateral (see the module docstring)."""

    fmspc: str
    pck_ca: str
    tcb_info: CollateralRequest
    tcb_info_chain: CollateralRequest
    qe_identity: CollateralRequest
    qe_identity_chain: CollateralRequest
    pck_crl: CollateralRequest
    pck_crl_chain: CollateralRequest
    root_ca_crl: CollateralRequest

    def all(self) -> tuple[CollateralRequest, ...]:
        """Every request, in a fixed order."""
        return (
            self.tcb_info,
            self.tcb_info_chain,
            self.qe_identity,
            self.qe_identity_chain,
            self.pck_crl,
            self.pck_crl_chain,
            self.root_ca_crl,
        )

    def items(self) -> tuple[TdxCollateralItem, ...]:
        """Every request with its name and validity reading, in the order of :meth:`all`."""
        return tuple(
            TdxCollateralItem(what, request, window)
            for request, (what, window) in zip(
                self.all(),
                (
                    (f"Intel TCB info (FMSPC {self.fmspc})", signed_document_window("tcbInfo")),
                    ("Intel TCB info issuer chain", chain_window),
                    ("Intel QE identity", signed_document_window("enclaveIdentity")),
                    ("Intel QE identity issuer chain", chain_window),
                    (f"Intel PCK CRL ({self.pck_ca} CA)", crl_window),
                    ("Intel PCK CRL issuer chain", chain_window),
                    ("Intel SGX Root CA CRL", crl_window),
                ),
                strict=True,
            )
        )


def _root_ca_crl_url() -> str:
    root = x509.load_der_x509_certificate(intel_sgx_root_ca_der())
    points = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier):
                return name.value
    raise TdxCollateralError("the pinned Intel SGX Root CA names no CRL distribution point")


def tdx_collateral_requests(quote: TdxQuote) -> TdxCollateralRequests:
    """The fetches that make up the collateral of ``quote`` (see the module docstring)."""
    tcb = f"{INTEL_PCS_BASE_URL}/tdx/certification/v4/tcb?fmspc={quote.fmspc}"
    qe = f"{INTEL_PCS_BASE_URL}/tdx/certification/v4/qe/identity"
    crl = f"{INTEL_PCS_BASE_URL}/sgx/certification/v4/pckcrl?ca={quote.pck_ca}&encoding=der"
    return TdxCollateralRequests(
        fmspc=quote.fmspc,
        pck_ca=quote.pck_ca,
        tcb_info=CollateralRequest(url=tcb),
        tcb_info_chain=CollateralRequest(url=tcb, response_header=_HEADER_TCB_CHAIN),
        qe_identity=CollateralRequest(url=qe),
        qe_identity_chain=CollateralRequest(url=qe, response_header=_HEADER_QE_CHAIN),
        pck_crl=CollateralRequest(url=crl),
        pck_crl_chain=CollateralRequest(url=crl, response_header=_HEADER_PCK_CRL_CHAIN),
        root_ca_crl=CollateralRequest(url=_root_ca_crl_url()),
    )


def tdx_collateral_staples(quote: TdxQuote, collateral_json: str | bytes) -> dict[str, bytes]:
    """Stapled fetcher answers for ``quote`` from a dcap-qvl ``QuoteCollateralV3`` JSON
    document (what ``dcap_qvl.get_collateral(...).to_json()`` writes), for an
    :class:`~attestation.OfflineFetcher`: each item in the exact form Intel PCS serves it."""
    try:
        document = load_json_object(collateral_json)
        text: dict[str, str] = {}
        for name in (
            "pck_crl_issuer_chain",
            "root_ca_crl",
            "pck_crl",
            "tcb_info_issuer_chain",
            "tcb_info",
            "tcb_info_signature",
            "qe_identity_issuer_chain",
            "qe_identity",
            "qe_identity_signature",
        ):
            value = document[name]
            if not isinstance(value, str):
                raise DecodeError(f"field {name!r} must be a string")
            text[name] = value
        root_ca_crl = bytes.fromhex(text["root_ca_crl"])
        pck_crl = bytes.fromhex(text["pck_crl"])
    except (DecodeError, KeyError, ValueError) as exc:
        raise TdxCollateralError(f"not a dcap-qvl QuoteCollateralV3 JSON document: {exc}") from None
    requests = tdx_collateral_requests(quote)

    def header(pem: str) -> bytes:
        return urllib.parse.quote(pem, safe="").encode("ascii")

    tcb_body = (
        '{"tcbInfo":' + text["tcb_info"] + ',"signature":' + json.dumps(text["tcb_info_signature"]) + "}"
    )
    qe_body = (
        '{"enclaveIdentity":'
        + text["qe_identity"]
        + ',"signature":'
        + json.dumps(text["qe_identity_signature"])
        + "}"
    )
    return {
        requests.tcb_info.staple_key(): tcb_body.encode("utf-8"),
        requests.tcb_info_chain.staple_key(): header(text["tcb_info_issuer_chain"]),
        requests.qe_identity.staple_key(): qe_body.encode("utf-8"),
        requests.qe_identity_chain.staple_key(): header(text["qe_identity_issuer_chain"]),
        requests.pck_crl.staple_key(): pck_crl,
        requests.pck_crl_chain.staple_key(): header(text["pck_crl_issuer_chain"]),
        requests.root_ca_crl.staple_key(): root_ca_crl,
    }


def _skip_whitespace(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\n\r":
        index += 1
    return index


def _raw_members(body: bytes, what: str) -> dict[str, str]:
    """The top-level members of a JSON object as their exact source text.

    Intel signs the bytes of ``tcbInfo`` / ``enclaveIdentity`` as served, so they are cut
    out of the body rather than parsed and re-serialised.
    """
    try:
        load_json_object(body)  # strict: a valid UTF-8 JSON object without duplicate keys
        text = body.decode("utf-8")
    except (DecodeError, UnicodeDecodeError) as exc:
        raise TdxCollateralError(f"{what} is not a JSON object: {exc}") from None
    # The document is known to be a valid object, so this walk cannot run off its end.
    decoder = json.JSONDecoder()
    members: dict[str, str] = {}
    index = _skip_whitespace(text, 0) + 1  # past "{"
    while True:
        index = _skip_whitespace(text, index)
        if text[index] == "}":
            return members
        key, index = decoder.raw_decode(text, index)
        index = _skip_whitespace(text, _skip_whitespace(text, index) + 1)  # past ":"
        start = index
        _, index = decoder.raw_decode(text, index)
        members[key] = text[start:index]
        index = _skip_whitespace(text, index)
        if text[index] == ",":
            index += 1


def _signed_json(body: bytes, member: str, what: str) -> tuple[str, bytes]:
    members = _raw_members(body, what)
    if member not in members or "signature" not in members:
        raise TdxCollateralError(f"{what} lacks {member!r} or 'signature'")
    try:
        signature = bytes.fromhex(strictjson.loads(members["signature"], what=what))
    except (ValueError, TypeError):
        raise TdxCollateralError(f"{what} signature is not a hex string") from None
    return members[member], signature


def _chain(value: bytes, what: str) -> str:
    try:
        pem = urllib.parse.unquote(value.decode("ascii"), errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise TdxCollateralError(f"{what} is not a URL-encoded PEM chain") from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise TdxCollateralError(f"{what} holds no PEM certificate")
    return pem


def _fetch_collateral(quote: TdxQuote, fetcher: CollateralFetcher) -> Any:
    requests = tdx_collateral_requests(quote)
    answers = {request.staple_key(): fetcher.fetch(request) for request in requests.all()}
    tcb_info, tcb_signature = _signed_json(answers[requests.tcb_info.staple_key()], "tcbInfo", "TCB info")
    qe_identity, qe_signature = _signed_json(
        answers[requests.qe_identity.staple_key()], "enclaveIdentity", "QE identity"
    )
    return dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=_chain(answers[requests.pck_crl_chain.staple_key()], _HEADER_PCK_CRL_CHAIN),
        root_ca_crl=answers[requests.root_ca_crl.staple_key()],
        pck_crl=answers[requests.pck_crl.staple_key()],
        tcb_info_issuer_chain=_chain(answers[requests.tcb_info_chain.staple_key()], _HEADER_TCB_CHAIN),
        tcb_info=tcb_info,
        tcb_info_signature=tcb_signature,
        qe_identity_issuer_chain=_chain(answers[requests.qe_identity_chain.staple_key()], _HEADER_QE_CHAIN),
        qe_identity=qe_identity,
        qe_identity_signature=qe_signature,
    )


# dcap-qvl reports every failure as ValueError with a message; map the message to the
# named error (first match wins, case-insensitive). Pinned to dcap-qvl 0.7.x (see
# pyproject.toml): a message this table does not know falls back to the signature error,
# so an unknown failure is still a failure.
_DCAP_FAILURES: tuple[tuple[tuple[str, ...], type[AttestationError]], ...] = (
    (("no matching tcb level", "tcb status is invalid", "tcb level mismatch"), CpuTcbError),
    (("debug mode",), CpuDebugModeError),
    (("certexpired", "certificate expired", "certnotvalidyet", "revoked"), TdxCertificateChainError),
    (
        ("expired", "in the future", "fmspc mismatch", "tcb info", "qe identity", "collateral"),
        TdxCollateralError,
    ),
    (("crl", "certificate", "issuer", "root ca"), TdxCertificateChainError),
)


def _classify_dcap_failure(message: str) -> type[AttestationError]:
    lowered = message.lower()
    for needles, error in _DCAP_FAILURES:
        if any(needle in lowered for needle in needles):
            return error
    return TdxQuoteSignatureError


# Only this module holds the token, so only verify_tdx_quote can make the result.
_CONSTRUCTION_TOKEN = object()


@dataclass(frozen=True)
class VerifiedTdxQuote:
    """A TDX quote that passed every check of :func:`verify_tdx_quote`."""

    _token: InitVar[object]
    quote: TdxQuote
    tcb_status: TdxTcbStatus
    advisory_ids: tuple[str, ...]

    def __post_init__(self, _token: object) -> None:
        if _token is not _CONSTRUCTION_TOKEN:
            raise TypeError("VerifiedTdxQuote is created only by verify_tdx_quote()")


@dataclass(frozen=True)
class _Appraisal:
    quote: TdxQuote
    status: TdxTcbStatus | None
    advisory_ids: tuple[str, ...]


def _appraise(
    label: str,
    payload: bytes,
    *,
    expected_report_data: bytes,
    policy: TdxPolicy | None,
    now: datetime.datetime,
    fetcher: CollateralFetcher,
    checks: CheckRecorder,
    max_tcb_info_age: datetime.timedelta | None = None,
) -> _Appraisal | None:
    """Record every check of one TDX payload in ``checks`` (never raises for a failed check)."""
    try:
        quote = parse_tdx_quote(payload, field=f"{label}.payload")
    except EvidenceFormatError as exc:
        checks.record(
            f"{label} quote format",
            expected="TDX quote (version 4 or 5)",
            found="not a TDX quote",
            passed=False,
            error=EvidenceFormatError,
            message=str(exc),
        )
        return None
    checks.record(
        f"{label} quote format",
        expected="TDX quote (version 4 or 5)",
        found=f"TDX quote version {quote.version}, FMSPC {quote.fmspc}",
        passed=True,
        error=EvidenceFormatError,
        message="",
    )
    checks.record(
        f"{label} policy section",
        expected="policy has an 'intel_tdx' section",
        found="present" if policy is not None else "absent",
        passed=policy is not None,
        error=PolicyViolationError,
        message=f"{label}: the policy has no 'intel_tdx' section, so TDX evidence cannot be appraised",
    )

    collateral: Any = None
    try:
        collateral = _fetch_collateral(quote, fetcher)
    except CollateralUnavailableError as exc:
        checks.record(
            f"{label} collateral",
            expected="Intel PCS collateral (fetched or stapled)",
            found="unavailable",
            passed=False,
            error=type(exc),
            message=f"{label}: {exc}",
        )
    else:
        checks.record(
            f"{label} collateral",
            expected="Intel PCS collateral (fetched or stapled)",
            found="TCB info, QE identity, PCK CRL, root CA CRL",
            passed=True,
            error=CollateralUnavailableError,
            message="",
        )
        if max_tcb_info_age is not None:
            issued = _tcb_info_issue_date(str(collateral.tcb_info))
            checks.record(
                f"{label} TCB info age",
                expected=f"issued at most {int(max_tcb_info_age.total_seconds())} s before {_when(now)}",
                found=f"issued {issued:%Y-%m-%dT%H:%M:%SZ}" if issued is not None else "no issueDate",
                passed=issued is not None and now - issued <= max_tcb_info_age,
                error=TdxCollateralError,
                message=f"{label}: Intel's TCB info is older than the policy's max_tcb_info_age_seconds",
            )

    status: TdxTcbStatus | None = None
    advisories: tuple[str, ...] = ()
    replaced = policy.sgx_root_ca if policy is not None else None
    verify_name = f"{label} quote signature and chain"
    anchor = (
        "the pinned Intel SGX Root CA"
        if replaced is None
        else f"the policy's replacement root ({replaced.subject.rfc4514_string()})"
    )
    verify_expected = f"verifies to {anchor} at {now:%Y-%m-%d %H:%M} UTC"
    if collateral is None:
        checks.record(
            verify_name,
            expected=verify_expected,
            found="not checked: no collateral",
            passed=False,
            error=TdxQuoteSignatureError,
            message=f"{label}: the quote cannot be verified without its collateral",
        )
    else:
        try:
            root_der = (
                intel_sgx_root_ca_der()
                if replaced is None
                else replaced.public_bytes(serialization.Encoding.DER)
            )
            result: Any = dcap_qvl.verify_with_root_ca(quote.raw, collateral, root_der, int(now.timestamp()))
        except ValueError as exc:
            reason = shorten(str(exc).removeprefix("Verification failed: "))
            checks.record(
                verify_name,
                expected=verify_expected,
                found=f"refused: {reason}",
                passed=False,
                error=_classify_dcap_failure(reason),
                message=f"{label}: dcap-qvl refused the quote: {reason}",
            )
        else:
            checks.record(
                verify_name,
                expected=verify_expected,
                found="verifies",
                passed=True,
                error=TdxQuoteSignatureError,
                message="",
            )
            advisories = tuple(str(a) for a in result.advisory_ids)
            try:
                status = TdxTcbStatus(str(result.status))
            except ValueError:
                status = None
            allowed = policy.allowed_tcb_statuses if policy is not None else (TdxTcbStatus.UP_TO_DATE,)
            checks.record(
                f"{label} TCB status",
                expected=f"one of {', '.join(s.value for s in allowed)}",
                found=str(result.status) + (f" ({', '.join(advisories)})" if advisories else ""),
                passed=status is not None and status in allowed,
                error=CpuTcbError,
                message=(
                    f"{label}: Intel rates this platform's TCB {result.status!s}, "
                    "which the policy does not allow"
                ),
            )

    checks.record(
        f"{label} report data",
        expected=expected_report_data.hex(),
        found=quote.report_data.hex(),
        passed=hmac.compare_digest(quote.report_data, expected_report_data),
        error=CpuReportDataMismatchError,
        message=(
            f"{label} REPORTDATA is not the report data derived from your challenge, the "
            "bundle's keys and its other evidence (replayed, or made for someone else)"
        ),
    )
    if policy is not None:
        _check_policy(label, quote, policy, checks)
    return _Appraisal(quote=quote, status=status, advisory_ids=advisories)


def _when(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _tcb_info_issue_date(tcb_info: str) -> datetime.datetime | None:
    """The ``issueDate`` of Intel's TCB info JSON, or None when it has none (or a bad one)."""
    try:
        value = strictjson.loads(tcb_info, what="Intel TCB info").get("issueDate")
        issued = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return issued if issued.tzinfo is not None else None


def _check_policy(label: str, quote: TdxQuote, policy: TdxPolicy, checks: CheckRecorder) -> None:
    checks.record(
        f"{label} debug",
        expected="DEBUG TD attribute clear" if not policy.allow_debug else "any",
        found="DEBUG SET" if quote.debug else "clear",
        passed=policy.allow_debug or not quote.debug,
        error=CpuDebugModeError,
        message=f"{label}: the TD runs in debug mode; the host can read its memory",
    )
    allowed: Mapping[str, tuple[bytes, ...]] = {
        "MRTD": policy.mrtd,
        **{f"RTMR{index}": values for index, values in sorted(policy.rtmrs.items())},
    }
    found_values = {"MRTD": quote.mr_td, **{f"RTMR{i}": value for i, value in enumerate(quote.rtmrs)}}
    for name, values in allowed.items():
        value = found_values[name]
        checks.record(
            f"{label} {name}",
            expected=f"one of {len(values)} allow-listed",
            found=value.hex(),
            passed=any(hmac.compare_digest(value, v) for v in values),
            error=CpuMeasurementError,
            message=f"{label}: {name} is not in the policy's intel_tdx.{name.lower()} allow-list",
        )


def _stale_staples(
    payload: bytes,
    stapled: Mapping[str, bytes],
    now: datetime.datetime,
    max_tcb_info_age: datetime.timedelta | None,
) -> dict[str, str]:
    """The stapled answers that are not valid at ``now`` (unreadable, not yet issued,
    expired, or TCB info older than the policy allows): staple key -> what it is.

    The verifier asks its fetcher for these first, as the NVIDIA verifier does for an
    unusable stapled RIM or OCSP answer; offline, dcap-qvl then refuses the stapled one
    and names what is wrong with it.
    """
    try:
        quote = parse_tdx_quote(payload)
    except EvidenceFormatError:
        return {}  # _appraise records the format failure
    requests = tdx_collateral_requests(quote)
    stale: dict[str, str] = {}
    for item in requests.items():
        key = item.request.staple_key()
        if key not in stapled:
            continue
        try:
            window = item.window(stapled[key])
        except ValueError:
            stale[key] = item.what
            continue
        too_old = (
            item.request == requests.tcb_info
            and max_tcb_info_age is not None
            and now - window.issued > max_tcb_info_age
        )
        if too_old or not window.covers(now):
            stale[key] = item.what
    return stale


def verify_tdx_evidence(label: str, evidence: Evidence, ctx: VerificationContext) -> None:
    """The ``intel-tdx`` verifier of :func:`attestation.verify_bundle`.

    REPORTDATA must be :func:`~attestation.cpu.cpu_report_data` of the binding and the
    bundle's other evidence; the policy's ``intel_tdx`` section is applied.
    """
    if evidence.kind is not EvidenceKind.INTEL_TDX:
        raise TypeError("verify_tdx_evidence needs intel-tdx evidence")
    fetcher = ctx.fetcher
    if evidence.collateral is not None:
        # Stapled PCS answers first; the context's fetcher (offline or online, as the
        # policy says) only for what the aggregator did not staple.
        try:
            stapled = decode_stapled(evidence.collateral, field=f"{label}.collateral")
        except EvidenceFormatError as exc:
            ctx.checks.record(
                f"{label} stapled collateral",
                expected=f"a {STAPLED_COLLATERAL_FORMAT} document",
                found="malformed",
                passed=False,
                error=EvidenceFormatError,
                message=str(exc),
            )
        else:
            stale = _stale_staples(evidence.payload, stapled, ctx.now, ctx.policy.collateral.max_tcb_info_age)
            ctx.checks.record(
                f"{label} stapled collateral",
                expected=f"a {STAPLED_COLLATERAL_FORMAT} document",
                found=f"{len(stapled)} stapled Intel PCS answers"
                + (f"; not valid at the verification time: {', '.join(stale.values())}" if stale else ""),
                passed=True,
                error=EvidenceFormatError,
                message="",
            )
            fetcher = StapledFirstFetcher(stapled, ctx.fetcher, refetch=stale.keys())
    _appraise(
        label,
        evidence.payload,
        expected_report_data=cpu_report_data(ctx.binding, ctx.bundle.evidence),
        policy=ctx.policy.intel_tdx,
        now=ctx.now,
        fetcher=fetcher,
        checks=ctx.checks,
        max_tcb_info_age=ctx.policy.collateral.max_tcb_info_age,
    )


def verify_tdx_quote(
    quote: bytes,
    *,
    expected_report_data: bytes,
    policy: TdxPolicy,
    now: datetime.datetime | None = None,
    fetcher: CollateralFetcher | None = None,
) -> VerifiedTdxQuote:
    """Verify one TDX quote on its own, outside a bundle.

    Runs exactly the checks :func:`attestation.verify_bundle` runs, with REPORTDATA
    compared to ``expected_report_data`` (64 bytes). Returns a :class:`VerifiedTdxQuote`
    or raises the error of the first failing check, carrying every check (``.checks``).
    """
    if not isinstance(expected_report_data, bytes) or len(expected_report_data) != CPU_REPORT_DATA_SIZE:
        raise TypeError(f"expected_report_data must be {CPU_REPORT_DATA_SIZE} bytes")
    if not isinstance(policy, TdxPolicy):
        raise TypeError("policy must be a TdxPolicy")
    checks = Checklist()
    appraisal = _appraise(
        "intel-tdx",
        quote,
        expected_report_data=expected_report_data,
        policy=policy,
        now=resolve_now(now),
        fetcher=fetcher if fetcher is not None else OfflineFetcher(),
        checks=checks,
    )
    checks.raise_if_failed()
    if appraisal is None or appraisal.status is None:
        # Unreachable when every check passed; kept so a logic slip cannot return a result.
        raise AttestationError("TDX verification ended without a verified quote")
    return VerifiedTdxQuote(
        _CONSTRUCTION_TOKEN,
        quote=appraisal.quote,
        tcb_status=appraisal.status,
        advisory_ids=appraisal.advisory_ids,
    )

"""Aggregator side: CPU TEE evidence from inside a Confidential Containers (Kata) pod.

In a CoCo pod the guest kernel's configfs-tsm belongs to the pod VM's agent, not to the
container; the container asks the attestation agent instead, through guest-components'
API server on the pod's loopback (``api-server-rest``, ``http://127.0.0.1:8006``)::

    GET /aa/evidence?runtime_data=<URL-safe base64, no padding>&encoding=base64
    GET /info        (the agent's TEE type: "snp", "tdx", ... or "sample" when it found none)

The agent writes the 64 runtime-data bytes into the report as they are (SEV-SNP
REPORT_DATA, TDX REPORTDATA) and answers its own JSON document, which
:mod:`attestation.cpu._coco_format` turns back into the raw report (SEV-SNP, with the
certificate table when the host supplied certificates) or quote (TDX): the payload a
configfs-tsm collector gives, verified by clients exactly the same way. The
``encoding=base64`` parameter exists in the agent since May 2026; an older agent takes the
parameter as raw text, is asked for evidence over 86 bytes, and refuses.

``/info`` (since March 2026, so in every agent that understands ``encoding=base64``)
answers ``{"version", "tee", "additional_tees", "feature"}``; ``tee`` is the name the
agent's ``kbs-types`` give the TEE it attests with, absent when the API server runs without
the attestation agent. The start-up preflight reads it (:meth:`CocoEvidenceCollector.agent_tee`).

Plain HTTP is accepted only to a loopback address: the API server is in the pod, and
nothing else should be trusted to relay the evidence request. Proxies are not consulted.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import logging
import urllib.parse

from .._bundle import Evidence, EvidenceKind
from .._encoding import DecodeError, json_type, load_json_object
from .._errors import EvidenceFormatError
from ._coco_format import snp_payload_from_agent, tdx_quote_from_agent
from ._common import shorten
from ._errors import CocoAgentError, CocoAgentUnavailableError, CocoEvidenceFormatError
from ._report_data import CPU_REPORT_DATA_SIZE
from ._snp import parse_sev_snp_payload
from ._tdx import parse_tdx_quote

__all__ = ["DEFAULT_COCO_AGENT_URL", "CocoEvidenceCollector"]

DEFAULT_COCO_AGENT_URL = "http://127.0.0.1:8006"
_EVIDENCE_PATH = "/aa/evidence"
_INFO_PATH = "/info"
_MAX_INFO = 64 * 1024
# A SEV-SNP document with a VCEK, ASK and ARK in JSON number arrays is about 30 KiB; a TDX
# quote with an event log a few hundred KiB at most.
_MAX_ANSWER = 4 * 1024 * 1024
_KINDS = (EvidenceKind.AMD_SEV_SNP, EvidenceKind.INTEL_TDX)


def _loopback_endpoint(url: str) -> tuple[str, int, str]:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise CocoAgentError(
            f"attestation agent URL is malformed ({exc}): {shorten(repr(url), 80)}"
        ) from None
    if parts.scheme != "http" or parts.hostname is None or parts.query or parts.fragment:
        raise CocoAgentError(f"attestation agent URL must be http://<loopback address>:<port>, got {url!r}")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise CocoAgentError(
            "attestation agent URL must name a loopback address (the agent's API server is in "
            f"the pod), got {host!r}"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise CocoAgentError(f"attestation agent URL has an invalid port: {url!r}") from None
    # http.client sends the path as it is: only printable ASCII without spaces can be sent.
    if not all("!" <= char <= "~" for char in parts.path):
        raise CocoAgentError(
            "attestation agent URL path must be printable ASCII without spaces (percent-encode "
            f"the rest), got {shorten(repr(parts.path), 80)}"
        )
    return host, port, parts.path.rstrip("/")


class CocoEvidenceCollector:
    """Collects ``amd-sev-snp`` or ``intel-tdx`` evidence from the CoCo attestation agent.

    ``kind`` says which TEE the pod's VM is (the Kata runtime class: ``kata-qemu-snp`` and
    ``kata-qemu-nvidia-gpu-snp`` are SEV-SNP, the ``-tdx`` ones TDX). ``url`` is the API
    server's address (loopback only); ``timeout`` bounds each request in seconds.
    :meth:`collect` takes the 64-byte CPU report data, like the configfs-tsm collector.
    """

    def __init__(
        self, kind: EvidenceKind, *, url: str = DEFAULT_COCO_AGENT_URL, timeout: float = 30.0
    ) -> None:
        if kind not in _KINDS:
            raise CocoAgentError(
                f"the attestation agent collector gives CPU TEE evidence only, not {kind.value!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise CocoAgentError("attestation agent timeout must be a positive number of seconds")
        self._kind = kind
        self._host, self._port, self._path = _loopback_endpoint(url)
        self._timeout = float(timeout)

    @property
    def kind(self) -> EvidenceKind:
        return self._kind

    def collect(self, binding: bytes) -> Evidence:
        """Fresh evidence whose report data is ``binding`` (the 64-byte CPU report data).

        Raises :class:`~attestation.cpu.CocoAgentUnavailableError` when the agent cannot
        answer, :class:`~attestation.cpu.CocoAgentError` when it answers evidence over other
        report data, :class:`~attestation.cpu.CocoEvidenceFormatError` when its answer is
        malformed (:class:`~attestation.cpu.CocoTeeMismatchError` when it is another TEE's
        evidence, :class:`~attestation.cpu.CocoSampleEvidenceError` its sample evidence).
        """
        if not isinstance(binding, bytes) or len(binding) != CPU_REPORT_DATA_SIZE:
            raise CocoAgentError(
                f"CPU TEE report data must be {CPU_REPORT_DATA_SIZE} bytes (use attestation.build_bundle, "
                "which derives it from the binding and the other evidence)"
            )
        body = self._get(binding)
        if self._kind is EvidenceKind.AMD_SEV_SNP:
            payload = snp_payload_from_agent(body)
            try:
                report, _ = parse_sev_snp_payload(payload)
            except EvidenceFormatError as exc:
                raise CocoEvidenceFormatError(
                    f"attestation agent evidence: the rebuilt report is malformed: {exc}"
                ) from None
            report_data = report.report_data
        else:
            payload = tdx_quote_from_agent(body)
            try:
                report_data = parse_tdx_quote(payload).report_data
            except EvidenceFormatError as exc:
                raise CocoEvidenceFormatError(
                    f"attestation agent evidence: quote is not a TDX quote: {exc}"
                ) from None
        if report_data != binding:
            raise CocoAgentError(
                "the attestation agent returned evidence over other report data than we asked for "
                "(an agent that does not understand encoding=base64, or another caller's evidence)"
            )
        logging.getLogger(__name__).info(
            "collected %s evidence from the attestation agent (%d bytes, report %s)",
            self._kind.value,
            len(payload),
            "rebuilt from its JSON" if self._kind is EvidenceKind.AMD_SEV_SNP else "as quoted",
        )
        return Evidence(kind=self._kind, payload=payload)

    def agent_tee(self) -> str:
        """The TEE the agent says it attests with (``GET /info``'s ``tee``: ``snp``, ``tdx``,
        ``sample``, ...). Raises :class:`~attestation.cpu.CocoAgentUnavailableError` when
        the API server does not answer or has no attestation agent behind it,
        :class:`~attestation.cpu.CocoEvidenceFormatError` when the answer is malformed."""
        body = self._request(f"{self._path}{_INFO_PATH}", _MAX_INFO)
        try:
            info = load_json_object(body)
        except DecodeError as exc:
            raise CocoEvidenceFormatError(f"attestation agent /info: the answer {exc}") from None
        tee = info.get("tee")
        if tee is None:
            raise CocoAgentUnavailableError(
                f"the API server at {self._host}:{self._port} names no TEE in /info: it runs without "
                "the attestation agent (its features must include attestation; in Kata, the kernel "
                "parameter agent.guest_components_rest_api=attestation or all)"
            )
        if not isinstance(tee, str) or not tee.isascii() or not tee.isprintable() or len(tee) > 64:
            raise CocoEvidenceFormatError(
                f"attestation agent /info: tee must be a short ASCII name, got {json_type(tee)}"
            )
        return tee

    def _get(self, runtime_data: bytes) -> bytes:
        query = urllib.parse.urlencode(
            {
                "runtime_data": base64.urlsafe_b64encode(runtime_data).rstrip(b"=").decode("ascii"),
                "encoding": "base64",
            }
        )
        return self._request(f"{self._path}{_EVIDENCE_PATH}?{query}", _MAX_ANSWER)

    def _request(self, target: str, limit: int) -> bytes:
        where = f"attestation agent at {self._host}:{self._port}"
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            connection.request("GET", target, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise CocoAgentUnavailableError(
                f"cannot reach the {where}: {shorten(str(exc) or type(exc).__name__)}"
            ) from None
        finally:
            connection.close()
        if response.status != 200:
            text = shorten(body[:400].decode("utf-8", "replace"))
            raise CocoAgentUnavailableError(
                f"the {where} answered HTTP {response.status}: {text} (an agent from before May 2026 "
                "cannot take binary runtime data: update guest-components)"
                if response.status == 500 and "64 bytes" in text
                else f"the {where} answered HTTP {response.status} to {target.partition('?')[0]}: {text}"
            )
        if len(body) > limit:
            raise CocoEvidenceFormatError(f"the {where} answered more than {limit} bytes")
        return body

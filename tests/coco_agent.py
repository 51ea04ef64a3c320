"""A stand-in for the Confidential Containers attestation agent's API server in a pod.

It serves ``GET /aa/evidence?runtime_data=…&encoding=base64`` on 127.0.0.1 as
guest-components' api-server-rest does (URL-safe base64 without padding, decoded strictly;
at most 64 bytes; the JSON document of the agent's attester). What it answers is up to the
test: ``answer(runtime_data)`` returns (HTTP status, body). ``GET /info`` answers
``info()``, by default what the API server writes for an agent attesting SEV-SNP
(:func:`agent_info`: its ``VersionInfo``, serde skipping an absent TEE and empty lists).

:func:`agent_snp_document` writes a raw SEV-SNP report the way the agent does: the sev
crate's ``AttestationReport::from_bytes`` (6.x; generation from CHIP_ID for version 2, from
CPUID otherwise) serialised by serde_json. test_coco.py checks it against a document the
real agent produced (trustee's end-to-end test evidence).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import struct
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from attestation.cpu import SnpCertGuid

__all__ = ["FakeAgent", "agent_info", "agent_snp_document", "agent_tdx_document", "fake_agent"]

Answer = Callable[[bytes], tuple[int, bytes]]
Info = Callable[[], tuple[int, bytes]]

_CERT_NAMES = {
    SnpCertGuid.VCEK.value: "VCEK",
    SnpCertGuid.VLEK.value: "VLEK",
    SnpCertGuid.ASK.value: "ASK",
    SnpCertGuid.ARK.value: "ARK",
    uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"): "CRL",
}


def _tcb(raw: bytes, turin: bool) -> dict[str, Any]:
    if turin:
        return {"fmc": raw[0], "bootloader": raw[1], "tee": raw[2], "snp": raw[3], "microcode": raw[7]}
    return {"fmc": None, "bootloader": raw[0], "tee": raw[1], "snp": raw[6], "microcode": raw[7]}


def _version(raw: bytes) -> dict[str, int]:
    return {"major": raw[2], "minor": raw[1], "build": raw[0]}


def agent_snp_document(report: bytes, certificates: list[tuple[uuid.UUID, bytes]] | None) -> dict[str, Any]:
    """The agent's SEV-SNP evidence document for a raw report and certificate table."""
    version, guest_svn, policy = struct.unpack_from("<IIQ", report, 0)
    # Version 2: the crate's "Turin-like" CHIP_ID (zero after 8 bytes); later: CPUID family 1Ah.
    turin = report[0x1A8:0x1E0] == bytes(56) if version == 2 else report[0x188] == 0x1A
    vmpl, sig_algo = struct.unpack_from("<II", report, 0x30)
    plat_info, key_info = struct.unpack_from("<QI", report, 0x40)
    mit = struct.unpack_from("<QQ", report, 0x1F8) if version >= 5 else (None, None)

    def array(start: int, end: int) -> list[int]:
        return list(report[start:end])

    document = {
        "version": version,
        "guest_svn": guest_svn,
        "policy": policy,
        "family_id": array(0x10, 0x20),
        "image_id": array(0x20, 0x30),
        "vmpl": vmpl,
        "sig_algo": sig_algo,
        "current_tcb": _tcb(report[0x38:0x40], turin),
        "plat_info": plat_info,
        "key_info": key_info,
        "report_data": array(0x50, 0x90),
        "measurement": array(0x90, 0xC0),
        "host_data": array(0xC0, 0xE0),
        "id_key_digest": array(0xE0, 0x110),
        "author_key_digest": array(0x110, 0x140),
        "report_id": array(0x140, 0x160),
        "report_id_ma": array(0x160, 0x180),
        "reported_tcb": _tcb(report[0x180:0x188], turin),
        "cpuid_fam_id": report[0x188] if version >= 3 else None,
        "cpuid_mod_id": report[0x189] if version >= 3 else None,
        "cpuid_step": report[0x18A] if version >= 3 else None,
        "chip_id": array(0x1A0, 0x1E0),
        "committed_tcb": _tcb(report[0x1E0:0x1E8], turin),
        "current": _version(report[0x1E8:0x1EB]),
        "committed": _version(report[0x1EC:0x1EF]),
        "launch_tcb": _tcb(report[0x1F0:0x1F8], turin),
        "launch_mit_vector": mit[0],
        "current_mit_vector": mit[1],
        "signature": {"r": array(0x2A0, 0x2E8), "s": array(0x2E8, 0x330)},
    }
    chain = None
    if certificates is not None:
        chain = [
            {"cert_type": _CERT_NAMES.get(guid, {"OTHER": str(guid)}), "data": list(data)}
            for guid, data in certificates
        ]
    return {"attestation_report": document, "cert_chain": chain}


def agent_tdx_document(quote: bytes, eventlog: bytes | None = None) -> dict[str, Any]:
    """The agent's TDX evidence document."""
    return {
        "cc_eventlog": None if eventlog is None else base64.b64encode(eventlog).decode(),
        "quote": base64.b64encode(quote).decode(),
    }


def agent_info(tee: str | None, additional_tees: tuple[str, ...] = ()) -> Info:
    """``GET /info`` of the API server: with an agent attesting ``tee``, or without an agent."""
    info: dict[str, Any] = {"version": "v0.18.0"}
    if tee is not None:
        info["tee"] = tee
    if additional_tees:
        info["additional_tees"] = list(additional_tees)
    info["feature"] = "all"
    body = json.dumps(info, separators=(",", ":")).encode()
    return lambda: (200, body)


def _decode_url_safe_no_pad(text: str) -> bytes | None:
    """The Rust base64 crate's URL_SAFE_NO_PAD: no padding, canonical trailing bits."""
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    if "=" in text or base64.urlsafe_b64encode(data).rstrip(b"=").decode() != text:
        return None
    return data


@dataclass
class FakeAgent:
    url: str
    answer: Answer
    info: Info = field(default_factory=lambda: agent_info("snp"))
    queries: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@contextmanager
def fake_agent(answer: Answer, info: Info | None = None) -> Iterator[FakeAgent]:
    """An agent API server on 127.0.0.1 (a free port) answering with ``answer`` (and ``info``)."""
    agent = FakeAgent(url="", answer=answer)
    if info is not None:
        agent.info = info

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            agent.paths.append(path)
            if path == "/info":
                self._reply(*agent.info())
                return
            agent.queries.append(query)
            params = urllib.parse.parse_qs(query)
            runtime = params.get("runtime_data", [None])[0]
            if path != "/aa/evidence" or runtime is None:
                self._reply(404, b"not found")
                return
            if params.get("encoding") != ["base64"]:
                data: bytes | None = runtime.encode()  # the agent's legacy behaviour
            else:
                data = _decode_url_safe_no_pad(runtime)
            if data is None:
                self._reply(400, b"bad request")
                return
            if len(data) > 64:
                self._reply(500, b"SNP Attester: Report data must be no more than 64 bytes")
                return
            self._reply(*agent.answer(data))

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The collector may have given up (its timeout): then there is no one to answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    agent.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

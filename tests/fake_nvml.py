"""A fake libnvidia-ml: the C entry points pynvml calls, answering with NVIDIA's samples.

Installed with ``install_fake_nvml``, which puts it where pynvml keeps the loaded library,
so pynvml and everything above it (NVIDIA's nv-local-gpu-verifier, FedSeal's collectors)
run unchanged. Only the hardware is missing.
"""

from __future__ import annotations

import base64
import ctypes
import time
from typing import Any

import pytest

NVML_SUCCESS = 0
HOPPER = 9


def _store(buffer: Any, data: bytes) -> None:
    ctypes.memmove(buffer, data, len(data))


class FakeNvml:
    """libnvidia-ml's C entry points as pynvml calls them, answering with NVIDIA's samples."""

    def __init__(self, gpus: list[dict[str, str]], *, cc: int = 1, devtools: int = 0) -> None:
        self.gpus = gpus
        self.cc, self.devtools = cc, devtools
        self.nonces: list[bytes] = []
        self.inits = 0
        self.shutdowns = 0
        self.busy = False
        self.overlapped = False

    def _index(self, handle: Any) -> int:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0) - 1

    def nvmlInitWithFlags(self, flags: int) -> int:
        self.inits += 1
        return NVML_SUCCESS

    def nvmlShutdown(self) -> int:
        self.shutdowns += 1
        return NVML_SUCCESS

    def nvmlSystemGetConfComputeState(self, state: Any) -> int:
        state._obj.ccFeature = self.cc
        state._obj.devToolsMode = self.devtools
        state._obj.environment = 1
        return NVML_SUCCESS

    def nvmlSystemGetConfComputeSettings(self, settings: Any) -> int:
        settings._obj.ccFeature = self.cc
        settings._obj.devToolsMode = self.devtools
        settings._obj.multiGpuMode = 0
        return NVML_SUCCESS

    def nvmlDeviceGetCount_v2(self, count: Any) -> int:
        count._obj.value = len(self.gpus)
        return NVML_SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, device: Any) -> int:
        slot = ctypes.cast(ctypes.pointer(device._obj), ctypes.POINTER(ctypes.c_void_p))
        slot.contents.value = index.value + 1
        return NVML_SUCCESS

    def nvmlSystemGetDriverVersion(self, buffer: Any, size: Any) -> int:
        _store(buffer, self.gpus[0]["driver_version"].encode() + b"\0")
        return NVML_SUCCESS

    def nvmlDeviceGetBoardId(self, handle: Any, board: Any) -> int:
        board._obj.value = 0x100 + self._index(handle)
        return NVML_SUCCESS

    def nvmlDeviceGetUUID(self, handle: Any, buffer: Any, size: Any) -> int:
        _store(buffer, f"GPU-fake-{self._index(handle)}".encode() + b"\0")
        return NVML_SUCCESS

    def nvmlDeviceGetArchitecture(self, handle: Any, arch: Any) -> int:
        arch._obj.value = HOPPER
        return NVML_SUCCESS

    def nvmlDeviceGetVbiosVersion(self, handle: Any, buffer: Any, size: Any) -> int:
        _store(buffer, self.gpus[self._index(handle)]["vbios_version"].encode() + b"\0")
        return NVML_SUCCESS

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: Any, cert: Any) -> int:
        chain = base64.b64decode(self.gpus[self._index(handle)]["certificate"])
        cert._obj.attestationCertChainSize = len(chain)
        _store(cert._obj.attestationCertChain, chain)
        return NVML_SUCCESS

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: Any, report: Any) -> int:
        if self.busy:  # another collection is inside NVML at the same time
            self.overlapped = True
        self.busy = True
        try:
            self.nonces.append(bytes(report._obj.nonce))
            time.sleep(0.01)
            data = base64.b64decode(self.gpus[self._index(handle)]["evidence"])
            report._obj.attestationReportSize = len(data)
            _store(report._obj.attestationReport, data)
            return NVML_SUCCESS
        finally:
            self.busy = False


def install_fake_nvml(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> FakeNvml:
    """Make pynvml use ``fake`` as the loaded libnvidia-ml for the rest of the test."""
    import pynvml

    monkeypatch.setattr(pynvml, "nvmlLib", fake)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)
    return fake

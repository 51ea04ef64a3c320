"""Aggregator side: collect NVIDIA GPU evidence inside the confidential VM.

Two collectors, both :class:`~attestation.EvidenceCollector`\\ s of kind ``nvidia-gpu``:

:class:`NvidiaGpuCollector`
    through NVIDIA's ``nv-local-gpu-verifier`` 2.7.3 (``verifier.cc_admin.collect_gpu_evidence``,
    NVML via ``nvidia-ml-py`` underneath), for every GPU of the VM. Not through
    nv-attestation-sdk's ``Attestation`` class: that one is a process-wide singleton whose
    ``get_evidence`` logs any failure and returns an empty list.

    The package keeps its settings in class attributes (``BaseSettings``,
    ``NvmlHandler.Handles``) and writes log files on import, so it is wrapped:

    * every call runs on the collector's single worker thread while holding a process-wide
      lock (the package's state is process-wide, so its guard must be too), and the
      package's class-level state is snapshotted before and restored after each call, so
      nothing leaks between calls, collectors or threads;
    * it is imported once, at construction (aggregator start-up, before serving), with the
      working directory switched to a private temporary directory: its ``verifier.log`` /
      ``attestation_sdk.log`` land there and are deleted with it; its file and stdout
      handlers are then closed and removed and its loggers silenced (some of its log calls
      are malformed; every failure reaches the caller as this module's exception instead);
    * NVML is initialised and the CC mode read through ``pynvml`` directly, not through the
      package's wrappers, which log an NVML error and then let the caller wait out a 30 s
      timeout instead of raising it.

:class:`NvattestCollector`
    through NVIDIA's successor CLI (NVAT), run as::

        nvattest collect-evidence --device gpu --nonce <64 hex digits> --format json

    whose standard output is ``{"evidences": [{"arch", "nonce", "evidence", "certificate",
    "driver_version", "vbios_version", ...}], "result_code": 0, "result_message": "Ok"}``.
    The CC mode is read from NVML (``nvidia-ml-py``) before collecting.

Both refuse unless the CC mode is on (not off, not developer-tools mode), check that every
report carries the nonce they asked for, and report all GPUs or fail.
"""

from __future__ import annotations

import base64
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from fedseal import strictjson

from .._bundle import Evidence, EvidenceKind
from .._errors import EvidenceCollectionError, EvidenceFormatError
from ._errors import GpuCollectorUnavailableError, GpuConfidentialComputeOffError
from ._format import CcMode, GpuEvidence, NvidiaGpuEvidence, evidence_from_nvidia_json, spdm_nonce_for_binding
from ._spdm import parse_attestation_report

__all__ = ["NVATTEST_ARGUMENTS", "NvattestCollector", "NvidiaGpuCollector", "nvml_cc_mode"]

_T = TypeVar("_T")
_LOG = logging.getLogger(__name__)
# The SDK's state (class attributes, NVML handles) is process-wide; so is this guard.
_SDK_LOCK = threading.Lock()
_SDK_LOGGERS = ("gpu-verifier-info", "gpu-verifier-event", "sdk-logger", "nv-attestation-sdk")
_BINDING_SIZE = 32
#: ``nvattest`` arguments before the nonce value, and after it.
NVATTEST_ARGUMENTS = (("collect-evidence", "--device", "gpu", "--nonce"), ("--format", "json"))


def nvml_cc_mode(pynvml: Any) -> CcMode:
    """The system's CC mode from an initialised NVML binding (``pynvml`` module API)."""
    state = pynvml.nvmlSystemGetConfComputeState()
    if state.devToolsMode:
        return CcMode.DEVTOOLS
    return CcMode.ON if state.ccFeature else CcMode.OFF


def _require_cc_on(mode: CcMode) -> None:
    if mode is not CcMode.ON:
        raise GpuConfidentialComputeOffError(
            f"GPU confidential-computing mode is {mode.value!r}; evidence is only collected with CC mode on "
            "(enable it with NVIDIA's gpu-admin-tools and reboot the CVM)"
        )


def _check_reports(evidence: NvidiaGpuEvidence, nonce: bytes) -> None:
    """Refuse reports that do not carry our nonce: a broken or lying tool, caught at the source."""
    for index, gpu in enumerate(evidence.gpus):
        try:
            report = parse_attestation_report(gpu.attestation_report)
        except EvidenceFormatError as exc:
            raise EvidenceCollectionError(f"GPU {index}: the collected report does not parse: {exc}") from exc
        if report.request_nonce != nonce:
            raise EvidenceCollectionError(
                f"GPU {index}: the collected report carries another nonce than requested"
            )


@dataclass(frozen=True)
class _Sdk:
    cc_admin: ModuleType
    nvml: ModuleType
    cert_chains: ModuleType
    config: ModuleType
    pynvml: Any


class NvidiaGpuCollector:
    """Collect every GPU's evidence through ``nv-local-gpu-verifier`` (see the module docstring).

    Construct it on the aggregator at start-up; it raises
    :class:`GpuCollectorUnavailableError` when the NVIDIA package is not installed.
    ``timeout`` bounds one collection (the package itself times NVML calls out at 30 s).
    Call :meth:`close` (or use it as a context manager) to stop its worker thread.
    """

    def __init__(self, *, timeout: float = 120.0) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._timeout = timeout
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedseal-nvidia-sdk")
        try:
            self._sdk = self._run(_import_sdk)
        except BaseException:
            self._worker.shutdown(wait=False)
            raise

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.NVIDIA_GPU

    def collect(self, binding: bytes) -> Evidence:
        """Evidence for every GPU, each report carrying :func:`spdm_nonce_for_binding` (``binding``)."""
        if not isinstance(binding, bytes) or len(binding) != _BINDING_SIZE:
            raise EvidenceCollectionError(f"binding must be {_BINDING_SIZE} bytes")
        return self.collect_for_nonce(spdm_nonce_for_binding(binding))

    def collect_for_nonce(self, nonce: bytes) -> Evidence:
        """Collect with an explicit SPDM nonce. :meth:`collect` is what bundles use; this is for
        tools that replay a nonce (and tests): it proves nothing about freshness by itself."""
        if not isinstance(nonce, bytes) or len(nonce) != 32:
            raise EvidenceCollectionError("SPDM nonce must be 32 bytes")
        sdk = self._sdk
        evidence = self._run(lambda: _collect_with_sdk(sdk, nonce))
        _check_reports(evidence, nonce)
        return Evidence(kind=EvidenceKind.NVIDIA_GPU, payload=evidence.to_payload())

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def __enter__(self) -> NvidiaGpuCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, job: Callable[[], _T]) -> _T:
        future = self._worker.submit(_locked, job)
        try:
            return future.result(timeout=self._timeout)
        except FutureTimeout:
            raise EvidenceCollectionError(
                f"GPU evidence collection took more than {self._timeout:g} s"
            ) from None


def _locked(job: Callable[[], _T]) -> _T:
    with _SDK_LOCK:
        return job()


def _import_sdk() -> _Sdk:
    """Import nv-local-gpu-verifier with its log files kept out of our working directory."""
    names = (
        "verifier.cc_admin",
        "verifier.nvml",
        "verifier.nvml.gpu_cert_chains",
        "verifier.config",
        "pynvml",
    )
    try:
        if "verifier.config" in sys.modules:  # imported before (by us, or by the application)
            modules = [importlib.import_module(name) for name in names]
            _detach_sdk_logging()
        else:
            with tempfile.TemporaryDirectory(prefix="fedseal-nvidia-sdk-") as scratch:
                previous = os.getcwd()
                # The package opens ./verifier.log (deleting any existing one) at import time.
                # Switching the process's working directory is only safe because this runs at
                # collector construction, before the aggregator serves, under _SDK_LOCK.
                os.chdir(scratch)
                try:
                    modules = [importlib.import_module(name) for name in names]
                finally:
                    os.chdir(previous)
                    _detach_sdk_logging()
    except ImportError as exc:
        raise GpuCollectorUnavailableError(
            "the NVIDIA GPU collector needs nv-local-gpu-verifier 2.7.3 and nvidia-ml-py "
            f"(see deploy/README.md, 'NVIDIA GPU'): {exc}"
        ) from None
    return _Sdk(
        cc_admin=modules[0], nvml=modules[1], cert_chains=modules[2], config=modules[3], pynvml=modules[4]
    )


def _detach_sdk_logging() -> None:
    for name in _SDK_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        # Silenced: some of its calls are malformed format strings, and what matters comes
        # back as the exception this module raises.
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


@contextmanager
def _class_state_restored(classes: Sequence[type]) -> Iterator[None]:
    """Snapshot the data attributes of ``classes`` and put them back afterwards."""
    saved = [(cls, {k: v for k, v in vars(cls).items() if not k.startswith("__")}) for cls in classes]
    try:
        yield
    finally:
        for cls, attributes in saved:
            for key in [k for k in vars(cls) if not k.startswith("__") and k not in attributes]:
                delattr(cls, key)
            for key, value in attributes.items():
                if vars(cls).get(key, _MISSING) is not value:
                    setattr(cls, key, value)


_MISSING = object()


def _collect_with_sdk(sdk: _Sdk, nonce: bytes) -> NvidiaGpuEvidence:
    config, handler = sdk.config, sdk.nvml.NvmlHandler
    pynvml = sdk.pynvml
    with _class_state_restored([config.BaseSettings, config.HopperSettings, handler]):
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise GpuCollectorUnavailableError(
                f"NVML is not available (no NVIDIA driver or GPU): {exc}"
            ) from None
        try:
            try:
                mode = nvml_cc_mode(pynvml)
            except pynvml.NVMLError as exc:
                raise EvidenceCollectionError(f"NVML cannot report the CC mode: {exc}") from None
            _require_cc_on(mode)
            try:
                handlers = sdk.cc_admin.collect_gpu_evidence(nonce.hex(), no_gpu_mode=False, ppcie_mode=False)
            except Exception as exc:  # the package wraps every failure in a bare Exception
                cause = exc.__cause__ or exc
                raise EvidenceCollectionError(
                    f"nv-local-gpu-verifier could not collect GPU evidence: {cause}"
                ) from exc
            try:
                gpus = tuple(_gpu_from_handler(sdk, h, mode) for h in handlers)
            finally:
                pynvml.nvmlShutdown()  # collect_gpu_evidence initialised NVML once more
        finally:
            pynvml.nvmlShutdown()
    if not gpus:
        raise EvidenceCollectionError("NVML reports no GPU")
    return NvidiaGpuEvidence(gpus=gpus)


def _gpu_from_handler(sdk: _Sdk, handler: Any, mode: CcMode) -> GpuEvidence:
    # A defaultdict in the package: unknown architectures map to None rather than raising.
    settings = sdk.config.GPU_ARCHITECTURE_MAP.get(handler.get_gpu_architecture())
    if settings is None:
        raise EvidenceCollectionError(f"unknown GPU architecture {handler.get_gpu_architecture()!r}")
    chain = sdk.cert_chains.GpuCertificateChains.extract_gpu_cert_chain_base64(
        handler.get_attestation_cert_chain()
    )
    return GpuEvidence(
        architecture=str(settings.GPU_ARCH_NAME),
        attestation_report=bytes(handler.get_attestation_report()),
        certificate_chain=base64.b64decode(chain),
        driver_version=_text(handler.get_driver_version()),
        vbios_version=_text(handler.get_vbios_version()).upper(),
        cc_mode=mode,
    )


def _text(value: object) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


class NvattestCollector:
    """Collect every GPU's evidence with NVIDIA's ``nvattest`` CLI (see the module docstring).

    ``executable`` is found on ``PATH`` (or given as a path) at construction:
    :class:`GpuCollectorUnavailableError` when it is not there. ``cc_mode`` reads the
    system's CC mode; by default from NVML through ``nvidia-ml-py``.
    """

    def __init__(
        self,
        *,
        executable: str | os.PathLike[str] = "nvattest",
        timeout: float = 120.0,
        cc_mode: Callable[[], CcMode] | None = None,
    ) -> None:
        found = shutil.which(os.fspath(executable))
        if found is None:
            raise GpuCollectorUnavailableError(
                f"{os.fspath(executable)!r} (NVIDIA's nvattest CLI) is not installed"
            )
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._executable = found
        self._timeout = timeout
        self._cc_mode = cc_mode if cc_mode is not None else _cc_mode_from_nvml

    @property
    def kind(self) -> EvidenceKind:
        return EvidenceKind.NVIDIA_GPU

    def collect(self, binding: bytes) -> Evidence:
        if not isinstance(binding, bytes) or len(binding) != _BINDING_SIZE:
            raise EvidenceCollectionError(f"binding must be {_BINDING_SIZE} bytes")
        return self.collect_for_nonce(spdm_nonce_for_binding(binding))

    def collect_for_nonce(self, nonce: bytes) -> Evidence:
        """As :meth:`NvidiaGpuCollector.collect_for_nonce`."""
        if not isinstance(nonce, bytes) or len(nonce) != 32:
            raise EvidenceCollectionError("SPDM nonce must be 32 bytes")
        mode = self._cc_mode()
        _require_cc_on(mode)
        before, after = NVATTEST_ARGUMENTS
        command = [self._executable, *before, nonce.hex(), *after]
        try:
            result = subprocess.run(  # noqa: S603 - fixed argument list, no shell
                command, capture_output=True, timeout=self._timeout, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise EvidenceCollectionError(f"nvattest took more than {self._timeout:g} s") from None
        except OSError as exc:
            raise GpuCollectorUnavailableError(f"cannot run nvattest: {exc.strerror or exc}") from None
        evidence = _parse_nvattest_output(result.returncode, result.stdout, result.stderr, nonce, mode)
        _check_reports(evidence, nonce)
        return Evidence(kind=EvidenceKind.NVIDIA_GPU, payload=evidence.to_payload())


def _parse_nvattest_output(
    returncode: int, stdout: bytes, stderr: bytes, nonce: bytes, mode: CcMode
) -> NvidiaGpuEvidence:
    try:
        document = strictjson.loads(stdout, what="nvattest output")
    except ValueError:
        tail = stderr.decode("utf-8", "replace").strip()[-300:]
        raise EvidenceCollectionError(
            f"nvattest exited with status {returncode} without JSON output: {tail or 'no message'}"
        ) from None
    if not isinstance(document, dict):
        raise EvidenceCollectionError("nvattest output is not a JSON object")
    if returncode != 0 or document.get("result_code") != 0:
        raise EvidenceCollectionError(
            f"nvattest failed (status {returncode}, result_code {document.get('result_code')!r}): "
            f"{str(document.get('result_message'))[:200]}"
        )
    entries = document.get("evidences")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, Mapping) for e in entries):
        raise EvidenceCollectionError("nvattest output has no evidences")
    for index, entry in enumerate(entries):
        if entry.get("nonce") not in (None, nonce.hex()):
            raise EvidenceCollectionError(f"nvattest evidence {index} declares another nonce than requested")
    try:
        return evidence_from_nvidia_json(entries, cc_mode=mode)
    except EvidenceFormatError as exc:
        raise EvidenceCollectionError(f"nvattest output is not GPU evidence: {exc}") from exc


def _cc_mode_from_nvml() -> CcMode:
    try:
        import pynvml
    except ImportError:
        raise GpuCollectorUnavailableError("reading the CC mode needs nvidia-ml-py") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise GpuCollectorUnavailableError(
            f"NVML is not available (no NVIDIA driver or GPU): {exc}"
        ) from None
    try:
        return nvml_cc_mode(pynvml)
    except pynvml.NVMLError as exc:
        raise EvidenceCollectionError(f"NVML cannot report the CC mode: {exc}") from None
    finally:
        pynvml.nvmlShutdown()

"""The aggregator starts in a Confidential Containers pod, and on a host without GPUs.

In a CoCo pod the container sees neither ``/dev/sev-guest`` nor configfs-tsm: the CPU TEE's
sign is the pod's attestation agent (guest-components' API server), stood in for by
``tests/coco_agent.py``. The stand-in signs, with the test AMD PKI (``tests/amd_pki.py``), a
report over whatever report data it is asked for and staples the VCEK chain, as the real
agent on an SEV-SNP host does. Everything else is real: the preflight, the collector, the
stapler, the self-attestation gate, the command itself (a subprocess), the client.

The preflight asks the agent's ``/info`` which TEE it attests with, then asks for evidence
over a fresh random nonce, and refuses by name an agent that is absent, answers an error,
attests another TEE, falls back to its insecure sample attester, or answers garbage. A host
without GPUs is accepted only when the operator says so (``--gpu-collector none``): then no
GPU is probed or attested, a client whose policy requires GPUs refuses, and one whose policy
requires the CPU TEE only accepts.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from amd_pki import MEASUREMENT, AmdPki
from coco_agent import FakeAgent, agent_info, agent_snp_document, agent_tdx_document, fake_agent
from cryptography.hazmat.primitives.serialization import Encoding
from identities import site_identity, write_enrolment
from test_cpu_tee import SNP_SAMPLES, UP_TO_DATE
from test_preflight import FakeNvml, _snp_root, _tree

from aggregator._checklist import run as check_hardware
from aggregator._cli import main, run
from aggregator._preflight import (
    AttestationAgentEvidenceError,
    AttestationAgentTeeMismatchError,
    AttestationAgentUnavailableError,
    CocoAgent,
    CpuTee,
    GpuRequirement,
    GpuStateError,
    InsecureAttestationAgentError,
    NoConfidentialVmError,
    NvmlUnavailableError,
    Preflight,
    PreflightError,
    PreflightMode,
    SelfAttestationError,
)
from aggregator.enclave._keys import EnclaveKeys
from attestation import (
    CollateralCache,
    EvidenceKind,
    OfflineFetcher,
    Policy,
    PolicyViolationError,
    build_bundle,
    verify_bundle,
)
from attestation._hardware import CpuTee as Collector
from attestation._hardware import GpuCollector, hardware_collectors
from attestation._templates import fill_policy_template, load_policy_template
from attestation.cpu import SnpCertGuid, parse_tdx_quote
from auditor import audit_log
from client_sdk import FedSealClient

ROOT = Path(__file__).resolve().parents[1]
Answer = Callable[[bytes], tuple[int, bytes]]


# --------------------------------------------------------------------------- the pod


def signing_agent(amd: AmdPki) -> Answer:
    """The agent on an SEV-SNP host: a report over the runtime data, signed by the chip's
    (test) VCEK, with the host's certificate table (VCEK, ASK, ARK) in cert_chain."""
    table = [
        (SnpCertGuid.VCEK.value, amd.vcek.public_bytes(Encoding.DER)),
        (SnpCertGuid.ASK.value, amd.ask.public_bytes(Encoding.DER)),
        (SnpCertGuid.ARK.value, amd.ark.public_bytes(Encoding.DER)),
    ]

    def answer(runtime_data: bytes) -> tuple[int, bytes]:
        report = bytearray(amd.report_template())
        report[0x50:0x90] = runtime_data.ljust(64, b"\0")
        return 200, json.dumps(agent_snp_document(amd.sign(bytes(report)), table)).encode()

    return answer


def cpu_only_document(amd: AmdPki) -> dict[str, Any]:
    """The shipped production-sev-snp-cpu template, filled with the test guest's measurement,
    with the test AMD root in place of AMD's (the only change)."""
    document, source = load_policy_template("production-sev-snp-cpu")
    filled = fill_policy_template(document, source=source, snp_measurements=(MEASUREMENT,), name="coco-cpu")
    result: dict[str, Any] = json.loads(filled.text)
    result["amd_sev_snp"]["roots"] = {"Milan": amd.ark_pem()}
    return result


def gpu_document(amd: AmdPki) -> dict[str, Any]:
    """The same policy, but also requiring the GPUs (as production-sev-snp-gpu does)."""
    document, _ = load_policy_template("production-sev-snp-gpu")
    result = cpu_only_document(amd)
    result["name"] = "coco-gpu"
    result["required_evidence"] = ["nvidia-gpu", "amd-sev-snp"]
    result["nvidia_gpu"] = document["nvidia_gpu"]
    return result


def policy(document: dict[str, Any]) -> Policy:
    return Policy.from_json(json.dumps(document), source="test")


@pytest.fixture
def amd() -> AmdPki:
    return AmdPki()


@pytest.fixture
def agent(amd: AmdPki) -> Iterator[FakeAgent]:
    with fake_agent(signing_agent(amd)) as running:
        yield running


def coco_preflight(agent: FakeAgent, tmp_path: Path, nvml: FakeNvml | None = None) -> Preflight:
    """The preflight of a GPU-less CoCo pod: an empty root (no device, no configfs-tsm)."""
    return Preflight(
        PreflightMode.HARDWARE,
        root=_tree(tmp_path / "pod"),
        nvml=nvml or FakeNvml(),
        gpus=GpuRequirement.NONE,
        coco_agent=CocoAgent(CpuTee.AMD_SEV_SNP, url=agent.url),
    )


# --------------------------------------------------------------------------- preflight: passes


def test_the_agent_is_the_cpu_tees_sign_in_a_pod_without_gpus(agent: FakeAgent, tmp_path: Path) -> None:
    nvml = FakeNvml()
    report = coco_preflight(agent, tmp_path, nvml).check()
    assert report.cvm is not None and report.cvm.tee is CpuTee.AMD_SEV_SNP
    assert report.cvm.signs == (f"attestation agent at {agent.url} (TEE 'snp')",)
    assert report.gpus == () and report.ready_at_start is None
    assert report.gpu_requirement is GpuRequirement.NONE
    assert all(c.passed for c in report.checks)
    assert nvml.calls == []  # a declared GPU-less host: NVML is not touched
    # /info, then evidence over a nonce of the preflight's own: 64 random bytes, fresh each time.
    assert agent.paths == ["/info", "/aa/evidence"]
    coco_preflight(agent, tmp_path / "again", nvml).check()
    assert len(set(agent.queries)) == 2
    summary = report.to_json_obj()
    assert summary["cpu_tee"] == "amd-sev-snp" and summary["gpu_requirement"] == "none"


def test_a_tdx_pod_passes_on_a_quote_over_the_nonce(tmp_path: Path) -> None:
    """The preflight parses the quote and compares its report data with the nonce; the
    signature is the self-attestation's to check (this quote's no longer verifies)."""
    quote = UP_TO_DATE.quote_bytes()
    offset = quote.index(parse_tdx_quote(quote).report_data)

    def answer(runtime_data: bytes) -> tuple[int, bytes]:
        edited = quote[:offset] + runtime_data + quote[offset + 64 :]
        return 200, json.dumps(agent_tdx_document(edited)).encode()

    with fake_agent(answer, agent_info("tdx")) as tdx:
        report = Preflight(
            PreflightMode.HARDWARE,
            root=_tree(tmp_path / "pod"),
            gpus=GpuRequirement.NONE,
            coco_agent=CocoAgent(CpuTee.INTEL_TDX, url=tdx.url),
        ).check()
    assert report.cvm is not None and report.cvm.tee is CpuTee.INTEL_TDX


def test_a_cpu_only_cvm_passes_without_nvml_when_declared(tmp_path: Path) -> None:
    nvml = FakeNvml(architectures=())
    report = Preflight(
        PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml, gpus=GpuRequirement.NONE
    ).check()
    assert report.cvm is not None and report.gpus == () and nvml.calls == []


def test_without_the_declaration_a_missing_gpu_is_still_refused(agent: FakeAgent, tmp_path: Path) -> None:
    with pytest.raises(GpuStateError, match="GPUs visible"):
        Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=FakeNvml(architectures=())).check()
    # In a pod too: the agent shows the CPU TEE; the GPUs must still be there, in CC mode.
    nvml = FakeNvml(fail=frozenset({"nvmlInit"}))
    with pytest.raises(NvmlUnavailableError):
        Preflight(
            PreflightMode.HARDWARE,
            root=_tree(tmp_path / "pod"),
            nvml=nvml,
            coco_agent=CocoAgent(CpuTee.AMD_SEV_SNP, url=agent.url),
        ).check()
    assert agent.paths == ["/info", "/aa/evidence"]  # the agent passed first


# --------------------------------------------------------------------------- preflight: refusals


def _genoa_document() -> dict[str, Any]:
    sample = next(s for s in SNP_SAMPLES if s.name == "microsoft-genoa")
    return agent_snp_document(sample.report_bytes(), None)


def _answering(status: int, body: bytes) -> Answer:
    return lambda _: (status, body)


REFUSALS: dict[
    str, tuple[Answer | None, Callable[[], tuple[int, bytes]] | None, type[PreflightError], str]
] = {
    # name: (evidence answer, /info answer, refusal, in the message)
    "agent absent": (None, None, AttestationAgentUnavailableError, "is not usable (cannot reach"),
    "/info error": (
        None,
        lambda: (500, b"ttrpc: AA unreachable"),
        AttestationAgentUnavailableError,
        "HTTP 500",
    ),
    "no agent behind the API server": (
        None,
        agent_info(None),
        AttestationAgentUnavailableError,
        "names no TEE",
    ),
    "evidence error": (
        _answering(500, b"SNP Attester: get report failed"),
        None,
        AttestationAgentUnavailableError,
        "gave no evidence",
    ),
    "wrong TEE in /info": (None, agent_info("tdx"), AttestationAgentTeeMismatchError, "attests TEE 'tdx'"),
    "Azure vTPM TEE": (None, agent_info("azsnpvtpm"), AttestationAgentTeeMismatchError, "'azsnpvtpm'"),
    "sample TEE in /info": (None, agent_info("sample"), InsecureAttestationAgentError, "insecure 'sample'"),
    "sample evidence": (
        _answering(200, b'{"svn":"1","report_data":"' + b"A" * 88 + b'"}'),
        None,
        InsecureAttestationAgentError,
        "insecure sample evidence",
    ),
    "TDX evidence": (
        _answering(200, json.dumps(agent_tdx_document(UP_TO_DATE.quote_bytes())).encode()),
        None,
        AttestationAgentTeeMismatchError,
        "answered intel-tdx evidence",
    ),
    "garbage evidence": (_answering(200, b"\x00garbage"), None, AttestationAgentEvidenceError, "not valid"),
    "malformed report": (
        _answering(200, json.dumps({**_genoa_document(), "cert_chain": 7}).encode()),
        None,
        AttestationAgentEvidenceError,
        "cert_chain must be",
    ),
    "canned report": (
        _answering(200, json.dumps(_genoa_document()).encode()),
        None,
        AttestationAgentEvidenceError,
        "other report data",
    ),
    "garbage /info": (None, lambda: (200, b"<html>hello</html>"), AttestationAgentEvidenceError, "/info"),
}


@contextlib.contextmanager
def refusing_agent(case: str, amd: AmdPki) -> Iterator[str]:
    """The URL of an agent that answers as ``case`` says (nothing at all: a closed port)."""
    answer, info, _, _ = REFUSALS[case]
    if case == "agent absent":
        with fake_agent(signing_agent(amd)) as gone:
            url = gone.url
        yield url
        return
    with fake_agent(answer or signing_agent(amd), info) as running:
        yield running.url


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_bad_agent_is_a_named_one_line_refusal(case: str, amd: AmdPki, tmp_path: Path) -> None:
    _, _, refusal, named = REFUSALS[case]
    with refusing_agent(case, amd) as url, pytest.raises(refusal) as info:
        Preflight(
            PreflightMode.HARDWARE,
            root=_tree(tmp_path / "pod"),
            gpus=GpuRequirement.NONE,
            coco_agent=CocoAgent(CpuTee.AMD_SEV_SNP, url=url, timeout=5),
        ).check()
    assert type(info.value) is refusal  # not merely a subclass of it
    message = str(info.value)
    assert named in message and "\n" not in message
    assert message.startswith(f"the attestation agent at {url}")
    assert isinstance(info.value, NoConfidentialVmError)
    assert [c for c in info.value.checks if not c.passed]


@pytest.mark.parametrize("case", ["agent absent", "evidence error", "wrong TEE in /info", "garbage evidence"])
def test_the_command_refuses_a_bad_agent_at_start_without_a_traceback(
    case: str, amd: AmdPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(cpu_only_document(amd)))
    with refusing_agent(case, amd) as url:
        rc = main([*_coco_args(tmp_path, url, policy_file), "--listen", "127.0.0.1:0"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: the start-up preflight refused this host: the attestation agent at {url}")
    assert REFUSALS[case][3] in line
    assert not (tmp_path / "audit.log").exists() or (tmp_path / "audit.log").stat().st_size == 0


def test_the_agent_url_must_be_loopback_and_only_for_coco(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(cpu_only_document(AmdPki())))
    assert main(_coco_args(tmp_path, "http://10.0.0.8:8006", policy_file)) == 2
    assert "--coco-agent-url: attestation agent URL must name a loopback address" in capsys.readouterr().err
    args = _coco_args(tmp_path, "http://127.0.0.1:8006", policy_file)
    args[args.index("coco-sev-snp")] = "sev-snp"
    assert main(args) == 2
    assert "--coco-agent-url applies to --cpu-tee coco-sev-snp or coco-tdx only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://[::1", "attestation agent URL is malformed (Invalid IPv6 URL)"),
        ("http://127.0.0.1:1/\u00e9", "attestation agent URL path must be printable ASCII"),
    ],
)
def test_a_malformed_agent_url_is_a_one_line_usage_error(
    url: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # urlsplit raised ValueError on the first; http.client UnicodeEncodeError on the second.
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(cpu_only_document(AmdPki())))
    assert main(_coco_args(tmp_path, url, policy_file)) == 2
    options = ["--cpu-tee", "coco-tdx", "--gpu-collector", "none", "--coco-agent-url", url]
    assert check_hardware(options, network=OfflineFetcher()) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    start, checklist = captured.err.splitlines()
    assert start.startswith(f"error: --coco-agent-url: {named}")
    assert checklist.startswith(f"fedseal-aggregator check-hardware: error: --coco-agent-url: {named}")


# --------------------------------------------------------------------------- GPU-less: explicit only


def test_a_gpu_less_start_needs_a_policy_without_gpus_and_the_cpu_accumulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--log", str(tmp_path / "a.log"), "--enrolment", str(write_enrolment(tmp_path / "e.json"))]
    coco = [*base, "--cpu-tee", "coco-sev-snp", "--gpu-collector", "none"]
    # The builtin 'default' self-attestation policy requires GPUs: refused up front, said why.
    assert main(coco) == 2
    assert "--gpu-collector none: the self-attestation policy 'default' requires nvidia-gpu" in (
        capsys.readouterr().err
    )
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(cpu_only_document(AmdPki())))
    with_policy = [*coco, "--self-attestation-policy", str(policy_file)]
    assert main([*with_policy, "--accumulator-device", "cuda"]) == 2
    assert "--accumulator-device cuda with --gpu-collector none" in capsys.readouterr().err
    assert not (tmp_path / "a.log").exists()


def test_without_gpu_collector_none_the_pod_still_needs_its_gpus(
    agent: FakeAgent, amd: AmdPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[GpuRequirement] = []
    nvml = FakeNvml(architectures=())

    def preflights(
        mode: PreflightMode, /, *, gpus: GpuRequirement, coco_agent: CocoAgent | None
    ) -> Preflight:
        asked.append(gpus)
        return Preflight(mode, root=_tree(tmp_path / "pod"), nvml=nvml, gpus=gpus, coco_agent=coco_agent)

    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(gpu_document(amd)))
    args = _coco_args(tmp_path, agent.url, policy_file)
    args[args.index("--gpu-collector") : args.index("--gpu-collector") + 2] = []
    assert run(args, preflight_for=preflights) == 1
    assert asked == [GpuRequirement.CC_GPUS]
    err = capsys.readouterr().err
    assert "the GPUs are not in production confidential-computing mode: GPUs visible" in err
    assert "nvmlDeviceGetCount" in nvml.calls


# --------------------------------------------------------------------------- the self-attestation


def test_gpu_less_self_attestation_opens_nothing_and_needs_the_cpu_tee(
    agent: FakeAgent, amd: AmdPki, tmp_path: Path
) -> None:
    nvml = FakeNvml()
    preflight = coco_preflight(agent, tmp_path, nvml)
    report = preflight.check()
    keys = EnclaveKeys.generate().bound
    challenge = os.urandom(32)
    cache = CollateralCache(OfflineFetcher())  # the agent's table is complete: nothing to fetch
    with hardware_collectors(
        GpuCollector.NONE, Collector.COCO_SEV_SNP, coco_agent_url=agent.url, collateral=cache
    ) as collectors:
        bundle = build_bundle(keys, challenge, collectors)
    verified = verify_bundle(bundle, policy(cpu_only_document(amd)), challenge)
    assert verified.evidence_kinds == (EvidenceKind.AMD_SEV_SNP,) and not verified.insecure
    release = preflight.release_gpus(report, verified, keys)
    assert (
        not release.released and release.gpu_uuids == () and release.bundle_digest == verified.bundle_digest
    )
    assert nvml.calls == []
    with pytest.raises(SelfAttestationError, match="nothing is served: self-attestation is of this enclave"):
        preflight.release_gpus(report, verified, EnclaveKeys.generate().bound)
    # The report of a preflight that probed GPUs is not this one's.
    with pytest.raises(TypeError):
        Preflight(PreflightMode.HARDWARE, root=_snp_root(tmp_path), nvml=nvml).release_gpus(
            report, verified, keys
        )


# --------------------------------------------------------------------------- the command, end to end


def _coco_args(tmp_path: Path, url: str, policy_file: Path) -> list[str]:
    return [
        "--log",
        str(tmp_path / "audit.log"),
        "--enrolment",
        str(write_enrolment(tmp_path / "enrolment.json")),
        "--cpu-tee",
        "coco-sev-snp",
        "--gpu-collector",
        "none",
        "--coco-agent-url",
        url,
        "--self-attestation-policy",
        str(policy_file),
    ]


def _wait_for_port(path: Path, proc: subprocess.Popen[bytes], stderr: Path) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(
                f"the aggregator exited with {proc.returncode}: {stderr.read_text()[-3000:]}"
            )
        time.sleep(0.1)
    raise AssertionError("the aggregator did not start within 120 s")


def test_the_aggregator_serves_from_a_coco_pod_without_gpus(
    agent: FakeAgent, amd: AmdPki, tmp_path: Path
) -> None:
    """`fedseal-aggregator --cpu-tee coco-sev-snp --gpu-collector none` in a pod whose only TEE
    interface is the agent: it starts, serves CoCo-collected SEV-SNP evidence and no GPU
    evidence; a CPU-only client accepts it, a client that requires GPUs refuses it by name."""
    cpu_only, needs_gpus = cpu_only_document(amd), gpu_document(amd)
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(cpu_only))
    stderr = tmp_path / "aggregator.stderr"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aggregator",
            *_coco_args(tmp_path, agent.url, policy_file),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(tmp_path / "port"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("wb"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        port = _wait_for_port(tmp_path / "port", proc, stderr)
        with FedSealClient(
            f"127.0.0.1:{port}", policy(cpu_only), identity=site_identity("site-0"), timeout=30
        ) as c:
            attested = c.attest()
        assert attested.evidence_kinds == (EvidenceKind.AMD_SEV_SNP,) and not attested.insecure
        assert all(check.passed for check in attested.checks)
        with (
            FedSealClient(
                f"127.0.0.1:{port}", policy(needs_gpus), identity=site_identity("site-0"), timeout=30
            ) as c,
            pytest.raises(
                PolicyViolationError, match="requires 'nvidia-gpu' evidence; the bundle has none"
            ) as info,
        ):
            c.attest()
        assert [x.name for x in info.value.checks if not x.passed] == ["required evidence nvidia-gpu"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    log = stderr.read_text()
    assert '"event": "self_attestation_passed"' in log and '"gpus_released": []' in log
    # Preflight (/info, nonce), self-attestation, and each client's challenge: all through the agent.
    assert agent.paths[:2] == ["/info", "/aa/evidence"] and agent.paths.count("/aa/evidence") >= 4
    # The start-up bundle in the log: an auditor under the CPU-only policy finds nothing wrong;
    # under the GPU-requiring one it names the missing GPU evidence.
    assert audit_log(tmp_path / "audit.log", policy(cpu_only)).findings == ()
    assert audit_log(tmp_path / "audit.log", policy(needs_gpus)).findings
    started = [
        json.loads(line)
        for line in (tmp_path / "audit.log").read_text().splitlines()
        if "enclave_started" in line
    ]
    assert len(started) == 1


def test_the_operators_checklist_passes_in_the_pod_without_gpus(
    agent: FakeAgent, amd: AmdPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fedseal-aggregator check-hardware` with the same options as the service: every step
    passes under the CPU-only policy, the preflight saying the host has no GPU, as declared."""
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(cpu_only_document(amd)))
    options = ["--cpu-tee", "coco-sev-snp", "--gpu-collector", "none", "--coco-agent-url", agent.url]
    rc = check_hardware(["--policy", str(policy_file), *options, "--json"], network=OfflineFetcher())
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["passed"], report
    (preflight,) = [s for s in report["steps"] if s["name"] == "preflight"]
    assert preflight["summary"] == "CPU TEE amd-sev-snp, no GPU (a GPU-less host, as declared)"
    assert [m["pinned"] for m in report["measurements"]] == [True]
    # Under a policy that requires GPUs the same pod is not ready, and the report says why.
    policy_file.write_text(json.dumps(gpu_document(amd)))
    assert check_hardware(["--policy", str(policy_file), *options], network=OfflineFetcher()) == 1
    assert "requires 'nvidia-gpu' evidence" in capsys.readouterr().out

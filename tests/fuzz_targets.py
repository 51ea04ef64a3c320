"""Fuzz targets for every parser of outside input (issue 18), seeded from real inputs.

Each target takes bytes and must either accept them or raise a FedSealError (the named
errors the project promises); anything else (IndexError, struct.error, RecursionError, a
crash) is a bug. Differential targets also check that two parsers agree. Hypothesis
drives them: tests/test_fuzz_smoke.py runs each for a bounded smoke in CI, and
`make fuzz` (tests/fuzz.py) runs them long and prints inputs per second per target.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.message import DecodeError

from aggregator._log import AuditLog
from aggregator._server import _start_enclave
from aggregator._service import decode_submit_update_request
from aggregator.enclave._keys import EnclaveKeys
from aggregator.enclave._receive import _parse_and_validate
from attestation import InsecureSimulatedTeeCollector, Policy, build_bundle, load_builtin_policy
from attestation._bundle import EvidenceBundle
from attestation.cpu._snp import parse_sev_snp_report, parse_snp_cert_table
from attestation.cpu._tdx import parse_tdx_quote
from attestation.nvidia._spdm import parse_attestation_report
from auditor import audit_log
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal.checkpoint import TlogProof, open_checkpoint
from fedseal.envelope import SealContext, SealedUpdate, open_sealed, seal
from fedseal.errors import FedSealError
from fedseal.logformat import decode_record
from fedseal.logschema import RejectReason, UpdateRejected
from fedseal.note import NoteVerifier, open_note
from fedseal.receipt import verify_receipt
from fedseal.spec import AdapterSpec, WireDtype
from fedseal.wire import PROTOCOL_VERSION, UpdateRejectedError

__all__ = ["TARGETS", "Target"]

VECTORS = Path(__file__).resolve().parent / "vectors"
ORIGIN = "fedseal.fuzz/log"


@dataclass(frozen=True)
class Target:
    name: str
    seeds: Callable[[], Sequence[bytes]]
    run: Callable[[bytes], None]


def _refuses_by_name(parse: Callable[[bytes], object]) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        with contextlib.suppress(FedSealError):  # a named refusal is the promised outcome
            parse(data)

    return run


# ----------------------------------------------------------------------------- seeds


@functools.cache
def _log_material() -> tuple[list[bytes], list[str], list[str], bytes]:
    """(log lines, checkpoint notes, receipts, log public key) of a small real log."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = EnclaveKeys.generate()
        log = AuditLog.open(Path(tmp) / "audit.log", ORIGIN, keys.log_private_key)
        _start_enclave(log, keys, [InsecureSimulatedTeeCollector("fuzz")])
        receipts = []
        for n in range(3):
            result = log.append(
                UpdateRejected(
                    round_id=1, client_id=f"c{n}", reason=RejectReason.MALFORMED, detail="fuzz seed"
                )
            )
            receipts.append(result.receipt(log).to_text())
        log.close()
        lines = (Path(tmp) / "audit.log").read_bytes().splitlines()
    notes = [json.loads(line)["checkpoint"] for line in lines if line.startswith(b'{"checkpoint":')]
    return lines, notes, receipts, keys.bound.log_public_key


@functools.cache
def _bundle_seed() -> tuple[bytes, bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keys = EnclaveKeys.generate()
        challenge = bytes(range(32))
        bundle = build_bundle(keys.bound, challenge, [InsecureSimulatedTeeCollector("fuzz")])
    return bundle.to_bytes(), challenge


def _files(*patterns: str, hex_text: bool = False) -> list[bytes]:
    out = []
    for pattern in patterns:
        for path in sorted(VECTORS.glob(pattern)):
            data = path.read_bytes()
            out.append(bytes.fromhex(data.decode().replace("\n", "")) if hex_text else data)
    return out


def _spdm_seeds() -> list[bytes]:
    import base64

    document = json.loads((VECTORS / "nvidia" / "nvtrust_ppcie_gpu_evidence.json").read_bytes())
    entries = document if isinstance(document, list) else document.get("evidence_list", [])
    return [base64.b64decode(e["evidence"]) for e in entries[:2]]


SPEC = AdapterSpec.from_tensors(
    {f"l.{i}.lora_{ab}.weight": torch.zeros(4, 8) for i in range(2) for ab in "AB"}, dtype=WireDtype.FLOAT32
)


def _safetensors_seeds() -> list[bytes]:
    gen = torch.Generator().manual_seed(1)
    tensors = {name: torch.randn(shape, generator=gen) for name, shape in SPEC.shapes().items()}
    return [
        bytes(safetensors.torch.save(tensors)),
        bytes(safetensors.torch.save(tensors, metadata={"a": "b"})),
    ]


@functools.cache
def _sealed() -> tuple[SealedUpdate, X25519PrivateKey, SealContext]:
    round_key = X25519PrivateKey.generate()  # a round's key, as the enclave makes at open
    context = SealContext(
        protocol_version=PROTOCOL_VERSION,
        round_id=1,
        client_id="site-0",
        adapter_spec_digest=bytes(32),
        num_examples=1,
        binding=bytes(32),
        idempotency_key=bytes(32),
        round_public_key=round_key.public_key().public_bytes_raw(),
        chunk_size=1024,
    )
    return seal(os.urandom(3000), round_key.public_key(), context), round_key, context


def _submit_seeds() -> list[bytes]:
    return [
        pb.SubmitUpdateRequest(chunk=b"x" * 100).SerializeToString(),
        pb.SubmitUpdateRequest(chunk=b"").SerializeToString(),
        pb.SubmitUpdateRequest(chunk=os.urandom(300)).SerializeToString(),
        pb.SubmitUpdateRequest(header=pb.UpdateHeader(round_id=3, client_id="a")).SerializeToString(),
    ]


# ----------------------------------------------------------------------------- targets


def _bundle(data: bytes) -> None:
    with contextlib.suppress(FedSealError):
        EvidenceBundle.from_bytes(data)


def _envelope(data: bytes) -> None:
    """Mutated ciphertext: the first chunk and the wrapped key taken from the input."""
    sealed, round_key, context = _sealed()
    split = min(len(data), 32)
    wrapped = data[:split] + sealed.wrapped_key[split:] if data else sealed.wrapped_key
    chunks = (data[split:] or sealed.chunks[0], *sealed.chunks[1:])
    forged = SealedUpdate(wrapped, chunks, sealed.ciphertext_digest, sealed.ciphertext_size)
    try:
        open_sealed(forged, round_key, context, 1 << 16)
    except FedSealError:
        return
    # Opening succeeded: only possible if nothing was changed.
    assert (wrapped, chunks) == (sealed.wrapped_key, sealed.chunks), "a forged update opened"


def _submit_decoder(data: bytes) -> None:
    """The zero-copy decoder agrees with protobuf on every input."""
    try:
        expected = pb.SubmitUpdateRequest.FromString(data)
    except DecodeError:
        expected = None
    try:
        got = decode_submit_update_request(data)
    except DecodeError:
        assert expected is None, "the decoder refused what protobuf parses"
        return
    assert expected is not None, "the decoder accepted what protobuf refuses"
    if isinstance(got, memoryview):
        assert expected.WhichOneof("part") == "chunk" and expected.chunk == bytes(got)
    else:
        assert got == expected


def _strict_safetensors(data: bytes) -> None:
    """Whatever the strict receiver accepts, the safetensors library reads the same way."""
    try:
        parsed = _parse_and_validate(memoryview(bytearray(data)), SPEC)
    except UpdateRejectedError:
        return
    reference = safetensors.torch.load(data)
    assert set(reference) == set(parsed)
    for name, tensor in parsed.items():
        assert torch.equal(reference[name], tensor)


def _log_line(data: bytes) -> None:
    with contextlib.suppress(FedSealError):
        decode_record(data, line_number=1)


def _signed_note(data: bytes) -> None:
    vectors = json.loads((VECTORS / "signed-note" / "note_vectors.json").read_bytes())
    verifiers = [NoteVerifier.from_key_string(k) for k in vectors["verifier_keys"].values()]
    with contextlib.suppress(FedSealError):
        open_note(data, verifiers)


def _checkpoint(data: bytes) -> None:
    _, _, _, key = _log_material()
    with contextlib.suppress(FedSealError):
        open_checkpoint(data, [NoteVerifier(ORIGIN, key)], ORIGIN)


def _receipt(data: bytes) -> None:
    _, _, _, key = _log_material()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        TlogProof.parse(text)
        verify_receipt(text, key)
    except FedSealError:
        pass


@functools.cache
def _dev_policy() -> Policy:
    return load_builtin_policy("dev-insecure-allow-simulated")


def _audited_log(data: bytes) -> None:
    """A mutated log file: the auditor reports findings, it never raises or passes it off.

    Unchanged bytes must verify with no finding; changed bytes must give at least one
    (every byte of a log is covered by an entry's leaf hash or a signed checkpoint), but for
    a prefix that ends at a line: a shorter log is only caught against a trusted checkpoint."""
    seed = _log_file()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.log"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = audit_log(path, _dev_policy())
    if data == seed:
        assert report.findings == (), report.findings
    elif not (seed.startswith(data) and (not data or data.endswith(b"\n"))):
        assert report.findings, "a changed log verified with no finding"


def _log_file() -> bytes:
    return b"".join(line + b"\n" for line in _log_material()[0])


def _snp_report(data: bytes) -> None:
    with contextlib.suppress(FedSealError):
        parse_sev_snp_report(data)
    with contextlib.suppress(FedSealError):
        parse_snp_cert_table(data[1184:])


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("bundle", lambda: [_bundle_seed()[0]], _bundle),
        Target("spdm-report", _spdm_seeds, _refuses_by_name(parse_attestation_report)),
        Target(
            "snp-report+cert-table",
            lambda: _files("cpu-tee/sev-snp/*/*.bin") + _files("cpu-tee/sev-snp/*/*.hex", hex_text=True),
            _snp_report,
        ),
        Target(
            "tdx-quote",
            lambda: _files("cpu-tee/tdx/*/*.dat", "cpu-tee/tdx/dcap-qvl/tdx_quote*[!n]"),
            _refuses_by_name(parse_tdx_quote),
        ),
        Target("envelope-open", lambda: [_sealed()[0].wrapped_key + _sealed()[0].chunks[0]], _envelope),
        Target("submit-decoder-vs-protobuf", _submit_seeds, _submit_decoder),
        Target("strict-safetensors-vs-safetensors", _safetensors_seeds, _strict_safetensors),
        Target("log-entry", lambda: _log_material()[0], _log_line),
        Target(
            "signed-note",
            lambda: [
                json.loads((VECTORS / "signed-note" / "note_vectors.json").read_bytes())[k].encode()
                for k in ("signed_by_peter", "signed_by_peter_and_enoch")
            ],
            _signed_note,
        ),
        Target("checkpoint", lambda: [n.encode() for n in _log_material()[1]], _checkpoint),
        Target("receipt", lambda: [r.encode() for r in _log_material()[2]], _receipt),
        Target("auditor-mutated-log", lambda: [_log_file()], _audited_log),
    )
}

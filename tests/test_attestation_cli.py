"""fedseal-attest, run in-process through main([...])."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from aggregator import RunningAggregator
from aggregator._tls import EnclaveTlsIdentity
from attestation import (
    EndpointError,
    EvidenceBundle,
    InsecureSimulatedTeeCollector,
    build_bundle,
)
from attestation._cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    fetch_bundle,
    main,
    parse_endpoint,
)
from fedseal._proto.fedseal.v1 import fedseal_pb2, fedseal_pb2_grpc
from fedseal.binding import BoundKeys
from fedseal.errors import FormatError

DEV = ["--builtin-policy", "dev-insecure-allow-simulated"]


def _keys() -> BoundKeys:
    return BoundKeys(
        hpke_public_key=X25519PrivateKey.generate().public_key().public_bytes_raw(),
        log_public_key=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
    )


@pytest.fixture
def challenge() -> bytes:
    return os.urandom(32)


@pytest.fixture
def bundle_file(tmp_path: Path, challenge: bytes) -> Path:
    bundle = build_bundle(_keys(), challenge, [InsecureSimulatedTeeCollector("cli test")])
    path = tmp_path / "bundle.json"
    path.write_bytes(bundle.to_bytes())
    return path


def _verify_args(bundle_file: Path, challenge: bytes, *extra: str) -> list[str]:
    return ["verify", "--bundle", str(bundle_file), "--challenge", challenge.hex(), *extra]


def test_saved_bundle_verifies_under_dev_policy(
    bundle_file: Path, challenge: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_verify_args(bundle_file, challenge, *DEV)) == EXIT_OK
    out = capsys.readouterr().out
    assert "VERIFIED under policy 'dev-insecure-allow-simulated'" in out
    assert "INSECURE" in out
    for column in ("CHECK", "EXPECTED", "FOUND", "VERDICT"):
        assert column in out
    assert "FAIL" not in out
    assert "evidence[0] simulated-insecure-tee signature" in out


def test_saved_bundle_refused_under_default_policy(
    bundle_file: Path, challenge: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_verify_args(bundle_file, challenge)) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "NOT VERIFIED: SimulatedEvidenceRefusedError" in out
    assert "use --builtin-policy dev-insecure-allow-simulated" in out
    assert "local development only" in out
    assert "required evidence nvidia-gpu" in out
    assert out.count("FAIL") == 2


def test_json_report(bundle_file: Path, challenge: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_verify_args(bundle_file, challenge, "--json")) == EXIT_FAILED
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is False
    assert report["error"]["type"] == "SimulatedEvidenceRefusedError"
    assert "dev-insecure-allow-simulated" in report["error"]["hint"]
    assert report["policy"] == {"name": "default", "source": "builtin:default"}
    assert report["challenge"] == challenge.hex()
    assert [c["passed"] for c in report["checks"]].count(False) == 2

    assert main(_verify_args(bundle_file, challenge, "--json", *DEV)) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True
    assert report["insecure"] is True
    assert report["error"] is None
    assert report["evidence_kinds"] == ["simulated-insecure-tee"]
    assert report["bundle_sha256"] == EvidenceBundle.from_bytes(bundle_file.read_bytes()).digest().hex()


def test_policy_file(
    tmp_path: Path, bundle_file: Path, challenge: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "mine.json"
    policy.write_text(
        json.dumps(
            {
                "schema": "fedseal-policy/v1",
                "name": "mine",
                "allow_insecure_simulated_evidence": True,
                "required_evidence": ["simulated-insecure-tee"],
            }
        )
    )
    assert main(_verify_args(bundle_file, challenge, "--policy", str(policy))) == EXIT_OK
    assert "VERIFIED under policy 'mine'" in capsys.readouterr().out


def test_wrong_challenge_fails(bundle_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_verify_args(bundle_file, os.urandom(32), *DEV)) == EXIT_FAILED
    assert "NOT VERIFIED: BindingMismatchError" in capsys.readouterr().out


def test_malformed_bundle_fails_verification(
    tmp_path: Path, challenge: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"format":"fedseal-evidence-bundle/v9"}')
    assert main(_verify_args(path, challenge, *DEV)) == EXIT_FAILED
    assert "BundleFormatError" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["verify"], id="no-source"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param(["verify", "--bundle", "x", "--endpoint", "localhost:1"], id="two-sources"),
        pytest.param(["verify", "--endpoint", "localhost:1", "--timeout", "soon"], id="bad-timeout"),
        pytest.param(["verify", "--endpoint", "localhost:1", "--timeout", "0"], id="zero-timeout"),
        pytest.param(["verify", "--endpoint", "localhost"], id="no-port"),
        pytest.param(["verify", "--endpoint", "bad host:50051"], id="bad-host"),
        pytest.param(
            ["verify", "--endpoint", "localhost:1", "--challenge", "00" * 32],
            id="challenge-with-endpoint",
        ),
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" or "usage" in captured.out
    assert captured.err


def test_bundle_input_errors(
    tmp_path: Path, bundle_file: Path, challenge: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_policy = tmp_path / "bad-policy.json"
    bad_policy.write_text('{"schema": "fedseal-policy/v1", "colour": "blue"}')
    cases = [
        ["verify", "--bundle", str(bundle_file)],
        ["verify", "--bundle", str(bundle_file), "--challenge", "abc"],
        ["verify", "--bundle", str(bundle_file), "--challenge", "zz" * 32],
        _verify_args(tmp_path / "missing.json", challenge),
        _verify_args(bundle_file, challenge, "--policy", str(tmp_path / "missing.json")),
        _verify_args(bundle_file, challenge, "--builtin-policy", "nope"),
        _verify_args(bundle_file, challenge, "--policy", str(bad_policy), *DEV),
        _verify_args(bundle_file, challenge, "--save-bundle", str(tmp_path / "out.json")),
    ]
    for argv in cases:
        assert main(argv) == EXIT_USAGE, argv
    err = capsys.readouterr().err
    assert "--challenge" in err
    assert "cannot read bundle file" in err
    assert "no builtin policy named 'nope'" in err


@pytest.mark.parametrize("now", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_now_beyond_the_representable_range_is_a_usage_error(
    now: str, bundle_file: Path, challenge: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    # Valid ISO 8601, but its UTC time is past datetime's range: it overflowed at report time.
    assert main(_verify_args(bundle_file, challenge, *DEV, "--now", now)) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith(f"fedseal-attest: error: --now {now!r} is out of range")


def test_bad_policy_file_message_names_key(
    tmp_path: Path, bundle_file: Path, challenge: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_policy = tmp_path / "bad-policy.json"
    bad_policy.write_text('{"schema": "fedseal-policy/v1", "colour": "blue"}')
    assert main(_verify_args(bundle_file, challenge, "--policy", str(bad_policy))) == EXIT_USAGE
    assert "'colour'" in capsys.readouterr().err


def test_help_is_written_for_newcomers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert "exit status" in top
    assert main(["verify", "--help"]) == 0
    text = capsys.readouterr().out
    for needle in (
        "--endpoint",
        "--bundle",
        "--challenge",
        "--builtin-policy",
        "--json",
        "--save-bundle",
        "--timeout",
        "dev-insecure-allow-simulated",
        "0  verified",
        "1  verification failed",
        "2  usage",
        "3  cannot reach",
    ):
        assert needle in text, needle


# --- --endpoint, against an in-process stand-in for the aggregator ---------------------


class _FakeAggregator(fedseal_pb2_grpc.AggregatorServicer):
    """Answers GetAttestation like the real aggregator does: a simulated-TEE bundle that
    binds the TLS certificate it serves with."""

    def __init__(self, tls: EnclaveTlsIdentity) -> None:
        keys = _keys()
        self.keys = BoundKeys(keys.hpke_public_key, keys.log_public_key, tls.certificate_sha256)
        self.collector = InsecureSimulatedTeeCollector("fake aggregator")

    def GetAttestation(  # the gRPC method name, hence not snake_case
        self, request: fedseal_pb2.AttestationRequest, context: grpc.ServicerContext
    ) -> fedseal_pb2.AttestationResponse:
        bundle = build_bundle(self.keys, request.challenge, [self.collector])
        return fedseal_pb2.AttestationResponse(evidence_bundle=bundle.to_bytes())


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tls = EnclaveTlsIdentity.generate()
    fedseal_pb2_grpc.add_AggregatorServicer_to_server(  # type: ignore[no-untyped-call]
        _FakeAggregator(tls), server
    )
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_fetch_bundle(endpoint: str, challenge: bytes) -> None:
    bundle = fetch_bundle(endpoint, challenge, timeout=5.0)
    assert bundle.challenge == challenge


def test_fetch_bundle_unreachable(challenge: bytes) -> None:
    with pytest.raises(EndpointError, match="UNAVAILABLE"):
        fetch_bundle(f"127.0.0.1:{_free_port()}", challenge, timeout=5.0)


def test_endpoint_verify_and_save(endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "bundle.json"
    argv = ["verify", "--endpoint", endpoint, *DEV, "--save-bundle", str(saved)]
    assert main(argv) == EXIT_OK
    captured = capsys.readouterr()
    assert "VERIFIED" in captured.out
    assert "saved bundle" in captured.err
    challenge_hex = (tmp_path / "bundle.json.challenge").read_text().strip()
    # The saved pair re-verifies offline.
    assert main(["verify", "--bundle", str(saved), "--challenge", challenge_hex, *DEV]) == EXIT_OK


def test_endpoint_default_policy_refuses(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--endpoint", endpoint]) == EXIT_FAILED
    assert "SimulatedEvidenceRefusedError" in capsys.readouterr().out


def test_endpoint_unreachable_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["verify", "--endpoint", f"localhost:{_free_port()}", "--timeout", "5"]
    assert main(argv) == EXIT_UNREACHABLE
    assert "cannot get an attestation" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("localhost:50051", ("localhost", 50051)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("127.8.9.10:443", ("127.8.9.10", 443)),
        ("[::1]:50051", ("::1", 50051)),
        # Any host: the evidence is bound to the challenge and keys, whatever the channel.
        ("example.com:443", ("example.com", 443)),
        ("10.0.0.1:50051", ("10.0.0.1", 50051)),
        ("[2001:db8::1]:50051", ("2001:db8::1", 50051)),
        ("aggregator-1.hospital.example:50051", ("aggregator-1.hospital.example", 50051)),
    ],
)
def test_parse_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    "endpoint",
    [
        "localhost",
        ":50051",
        "localhost:0",
        "localhost:70000",
        "localhost:http",
        "bad host:1",
        "-leading.dash:1",
        "[not-v6]:1",
        "host/path:1",
    ],
)
def test_parse_endpoint_refuses(endpoint: str) -> None:
    with pytest.raises(FormatError):
        parse_endpoint(endpoint)


# --- --endpoint, against the real aggregator -------------------------------------------


def test_endpoint_verify_against_a_live_aggregator(
    live_aggregator: RunningAggregator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "live-bundle.json"
    argv = ["verify", "--endpoint", live_aggregator.endpoint, "--save-bundle", str(saved)]
    assert main([*argv, "--builtin-policy", "dev-insecure-allow-simulated"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "binding" in out
    # The saved bundle names exactly this enclave's keys, and re-verifies offline.
    bundle = EvidenceBundle.from_bytes(saved.read_bytes())
    assert bundle.log_public_key == live_aggregator.keys.bound.log_public_key
    challenge_hex = saved.with_name(saved.name + ".challenge").read_text().strip()
    assert (
        main(
            [
                "verify",
                "--bundle",
                str(saved),
                "--challenge",
                challenge_hex,
                "--builtin-policy",
                "dev-insecure-allow-simulated",
            ]
        )
        == EXIT_OK
    )
    # The production default refuses the simulated enclave.
    assert main(["verify", "--endpoint", live_aggregator.endpoint]) == EXIT_FAILED

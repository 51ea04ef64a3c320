"""Operations surface: Prometheus metrics of a live round, and the gRPC health service."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import make_adapter, round_config, site_client, start_test_aggregator
from grpc_health.v1 import health_pb2, health_pb2_grpc
from identities import ConsortiumPki, enrolment, principals
from prometheus_client.parser import text_string_to_metric_families

import aggregator._server
from aggregator import AccessConfig, JobConfig, RunningAggregator
from aggregator._cli import _parser
from aggregator._health import AGGREGATOR_SERVICE, HealthEndpoint
from aggregator._metrics import ListenAddress, Metrics, parse_listen_address
from aggregator._rounds import RoundManager
from attestation import Policy
from client_sdk import UpdateRejectedError
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.logformat import FailureCause, RejectReason
from fedseal.roundconfig import ConfigError
from fedseal.tls import ClientTlsCredentials, pinned_channel, probe_server_certificate

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LOOPBACK_ANY_PORT = ListenAddress("127.0.0.1", 0)


@pytest.fixture
def observed_aggregator(tmp_path: Path) -> Iterator[RunningAggregator]:
    """A live aggregator with /metrics and the plaintext health port on loopback."""
    running = start_test_aggregator(
        tmp_path, metrics_listen=LOOPBACK_ANY_PORT, health_listen=LOOPBACK_ANY_PORT
    )
    try:
        yield running
    finally:
        running.stop(grace=0.5)


def _scrape(running: RunningAggregator) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    assert running.metrics_server is not None
    url = f"http://127.0.0.1:{running.metrics_server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def _check(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)


def test_a_round_shows_in_the_metrics_endpoint(
    observed_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    running = observed_aggregator
    running.rounds.open_round(round_config(1, min_clients=2, max_clients=2))
    sizes = []
    with site_client(running.endpoint, dev_policy, "site-0", timeout=20) as client:
        receipt = client.submit_update(make_adapter(0), round_id=1, num_examples=5)
        sizes.append(receipt.entry.fields["ciphertext_size"])
        # A second, different update from the same site: refused as a duplicate.
        with pytest.raises(UpdateRejectedError) as info:
            client.submit_update(make_adapter(7), round_id=1, num_examples=5)
        assert info.value.reason is RejectReason.DUPLICATE
    with site_client(running.endpoint, dev_policy, "site-1", timeout=20) as client:
        receipt = client.submit_update(make_adapter(1), round_id=1, num_examples=5)
        sizes.append(receipt.entry.fields["ciphertext_size"])
    running.rounds.wait_closed(1, 10.0)  # the close follows the last receipt
    with site_client(running.endpoint, dev_policy, "site-0", timeout=20) as client:
        downloaded = len(client.fetch_aggregate(1, wait_seconds=10).data)

    text, samples = _scrape(running)
    # Bytes down: the aggregate's bytes, once per download (the log records only its size).
    assert samples[("fedseal_aggregate_sent_bytes_total", ())] == downloaded > 0
    assert samples[("fedseal_updates_accepted_total", ())] == 2
    assert samples[("fedseal_updates_rejected_total", (("reason", "duplicate"),))] == 1
    assert samples[("fedseal_updates_rejected_total", (("reason", "tampered"),))] == 0
    # The duplicate was refused before its chunks were read: only accepted ciphertext counts.
    assert samples[("fedseal_ciphertext_received_bytes_total", ())] == sum(sizes) > 0
    assert samples[("fedseal_rounds_opened_total", ())] == 1
    assert samples[("fedseal_rounds_closed_total", ())] == 1
    # The close's own CPU (finalize, serialize, hash, sign), counted once the round closed.
    assert 0 < samples[("fedseal_round_close_cpu_seconds_total", ())] < 30
    assert samples[("fedseal_round_id", ())] == 1
    assert samples[("fedseal_round_state", (("state", "closed"),))] == 1
    assert samples[("fedseal_round_state", (("state", "open"),))] == 0
    assert samples[("fedseal_submit_update_seconds_count", (("outcome", "accepted"),))] == 2
    assert samples[("fedseal_submit_update_seconds_count", (("outcome", "rejected"),))] == 1
    assert samples[("fedseal_attestation_requests_total", (("outcome", "ok"),))] >= 2  # one per client
    assert 0 <= samples[("fedseal_attestation_age_seconds", ())] < 600
    # Ids and reasons only: no client id, no key material.
    assert "site-0" not in text and "site-1" not in text
    assert running.keys.bound.hpke_public_key.hex() not in text


def test_a_failed_round_is_counted_by_cause() -> None:
    metrics = Metrics(clock=lambda: 100.0)
    before = metrics.registry.get_sample_value("fedseal_attestation_age_seconds")
    assert before is not None and math.isnan(before)  # no evidence yet
    metrics.evidence_made(at=40.0)
    assert metrics.registry.get_sample_value("fedseal_attestation_age_seconds") == 60.0
    metrics.round_opened(3)
    metrics.round_failed(3, FailureCause.QUORUM_NOT_REACHED)
    get = metrics.registry.get_sample_value
    assert get("fedseal_rounds_failed_total", {"cause": "quorum_not_reached"}) == 1
    assert get("fedseal_round_state", {"state": "failed"}) == 1
    assert get("fedseal_round_state", {"state": "open"}) == 0
    assert get("fedseal_round_id") == 3
    # Each Metrics has its own registry: another one starts from zero.
    assert Metrics().registry.get_sample_value("fedseal_rounds_opened_total") == 0


def test_the_health_port_reports_serving_and_serves_nothing_else(
    observed_aggregator: RunningAggregator,
) -> None:
    port = observed_aggregator.health.port
    assert port is not None and port != observed_aggregator.port
    assert _check(port) == SERVING
    assert _check(port, AGGREGATOR_SERVICE) == SERVING
    with pytest.raises(grpc.RpcError) as info:
        _check(port, "no.such.Service")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    # Plaintext carries the health service only: the aggregator's calls are TLS-only.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.AggregatorStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.GetAttestation(pb.AttestationRequest(challenge=bytes(32)), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def _tls_check(endpoint: str, service: str = "", client: ClientTlsCredentials | None = None) -> int:
    """Health/Check on an aggregator TLS port, as a client reaches it: probe, then pin."""
    certificate = probe_server_certificate(endpoint, timeout=5)
    with pinned_channel(endpoint, certificate, client=client) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)


def test_the_health_service_is_on_the_tls_ports_once_the_first_round_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deploy/README.md, Metrics and health: registered on the aggregator's TLS ports (both),
    # NOT_SERVING until start-up has finished (listeners up, the job's first round not yet
    # open), SERVING after, NOT_SERVING again as soon as shutdown begins.
    pki = ConsortiumPki()
    _, site_a = pki.issue("site-a")
    bound: list[int] = []
    real_bind = aggregator._server._bind

    def recording_bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials) -> int:
        bound.append(real_bind(server, address, credentials))
        return bound[-1]

    while_opening: list[int] = []
    real_start_job = RoundManager.start_job

    def probing_start_job(self: RoundManager) -> None:
        # The server listens on both ports already; the job's first round is not open yet.
        while_opening.extend(
            _tls_check(f"127.0.0.1:{bound[0]}", service) for service in ("", AGGREGATOR_SERVICE)
        )
        real_start_job(self)

    monkeypatch.setattr(aggregator._server, "_bind", recording_bind)
    monkeypatch.setattr(RoundManager, "start_job", probing_start_job)
    template = {k: v for k, v in round_config(1).to_json_obj().items() if k != "round_id"}
    running = start_test_aggregator(
        tmp_path,
        AccessConfig(
            enrolment(["site-a"], certificates={"site-a": pki.subject_of("site-a")}),
            principals(),
            client_ca_pem=pki.ca_pem,
        ),
        listen_mtls="127.0.0.1:0",
        job=JobConfig(rounds=1, round_template=template),
    )
    try:
        assert bound == [running.port, running.mtls_port]
        assert while_opening == [NOT_SERVING, NOT_SERVING]
        assert running.rounds.current_round_id() == 1  # the job's first round is open
        for service in ("", AGGREGATOR_SERVICE):
            assert _tls_check(running.endpoint, service) == SERVING
            assert _tls_check(running.mtls_endpoint, service, client=site_a) == SERVING
        certificate = probe_server_certificate(running.endpoint, timeout=5)
        with pinned_channel(running.endpoint, certificate) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watch = stub.Watch(health_pb2.HealthCheckRequest(service=AGGREGATOR_SERVICE), timeout=10)
            assert next(watch).status == SERVING
            running.stop(grace=0.5)
            assert next(watch).status == NOT_SERVING
    finally:
        running.stop(grace=0.5)


def test_stopping_turns_health_to_not_serving(tmp_path: Path) -> None:
    running = start_test_aggregator(tmp_path, health_listen=LOOPBACK_ANY_PORT)
    port = running.health.port
    assert port is not None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=AGGREGATOR_SERVICE), timeout=10)
        assert next(watch).status == SERVING
        running.stop(grace=0.5)
        assert next(watch).status == NOT_SERVING


def test_health_is_not_serving_until_told() -> None:
    endpoint = HealthEndpoint()
    port = endpoint.listen_plaintext(LOOPBACK_ANY_PORT)
    try:
        assert _check(port) == NOT_SERVING
        assert _check(port, AGGREGATOR_SERVICE) == NOT_SERVING
        endpoint.serving()
        assert _check(port) == SERVING
        endpoint.not_serving()
        assert _check(port) == NOT_SERVING
        endpoint.serving()  # after shutdown began, nothing turns it back on
        assert _check(port) == NOT_SERVING
    finally:
        endpoint.stop()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("9100", ListenAddress("127.0.0.1", 9100)),
        ("0.0.0.0:8081", ListenAddress("0.0.0.0", 8081)),
        ("metrics.internal:9100", ListenAddress("metrics.internal", 9100)),
        ("[::1]:9100", ListenAddress("::1", 9100)),
    ],
)
def test_listen_addresses_parse(text: str, expected: ListenAddress) -> None:
    assert parse_listen_address(text, "--metrics-listen") == expected


@pytest.mark.parametrize("text", ["", ":9100", "host:", "host:http", "host:70000", "::1:9100", "[nope]:1"])
def test_bad_listen_addresses_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="--health-listen"):
        parse_listen_address(text, "--health-listen")


def test_cli_takes_the_listen_flags(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--log", "a.log", "--enrolment", "e.json"]
    args = _parser().parse_args([*base, "--metrics-listen", "9100", "--health-listen", "0.0.0.0:8081"])
    assert args.metrics_listen == ListenAddress("127.0.0.1", 9100)
    assert args.health_listen == ListenAddress("0.0.0.0", 8081)
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([*base, "--metrics-listen", "host:port"])
    assert exit_info.value.code == 2
    assert "--metrics-listen" in capsys.readouterr().err

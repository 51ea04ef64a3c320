"""Prometheus metrics of one aggregator: rounds, updates, bytes, latency, attestation.

Every metric lives in a `CollectorRegistry` owned by the `Metrics` object (no global
registry), so several aggregators in one process (tests, embedding) never share counts.
Labels are bounded enums (reject reasons, failure causes, round states, outcomes): never a
client id, a key or anything derived from an update's content.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from attestation import CollateralEvent
from attestation.nvidia import NrasStapleOutcome
from fedseal.logformat import FailureCause, RejectReason
from fedseal.roundconfig import ConfigError
from fedseal.wire import RoundState

__all__ = ["ListenAddress", "Metrics", "MetricsServer", "parse_listen_address"]

# Upload latencies span a small adapter on loopback to a large one over a slow WAN.
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics:
    """The aggregator's metrics, in a registry of their own (`registry`)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._evidence_made: float | None = None
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds_opened = Counter("fedseal_rounds_opened", "Rounds opened", registry=r)
        self.rounds_closed = Counter(
            "fedseal_rounds_closed",
            "Rounds closed with an aggregate (released or awaiting approval)",
            registry=r,
        )
        self.rounds_failed = Counter("fedseal_rounds_failed", "Rounds failed", ["cause"], registry=r)
        self.round_close_cpu_seconds = Counter(
            "fedseal_round_close_cpu_seconds",
            "CPU seconds spent closing rounds with an aggregate (finalize, serialize, hash, sign, publish)",
            registry=r,
        )
        self.updates_accepted = Counter("fedseal_updates_accepted", "Updates accepted", registry=r)
        self.updates_rejected = Counter(
            "fedseal_updates_rejected",
            "Updates refused, by the reason the audit log records",
            ["reason"],
            registry=r,
        )
        self.ciphertext_bytes = Counter(
            "fedseal_ciphertext_received_bytes",
            "Ciphertext bytes received in SubmitUpdate chunks (accepted or not)",
            registry=r,
        )
        self.aggregate_bytes = Counter(
            "fedseal_aggregate_sent_bytes",
            "Aggregate bytes streamed to clients by GetAggregate (the downloads the log does not record)",
            registry=r,
        )
        self.uploads_deferred = Counter(
            "fedseal_uploads_deferred",
            "Uploads turned away with a retry hint because every decryption buffer was busy and "
            "the line for them full (the client sends them again; not refusals, the audit log "
            "does not record them)",
            registry=r,
        )
        self.uploads_in_line = Gauge(
            "fedseal_uploads_in_line",
            "Uploads waiting (header sent, nothing else) in line for the next decryption buffer to free",
            registry=r,
        )
        self.submit_streams = Gauge(
            "fedseal_submit_streams", "SubmitUpdate streams open now (admitted or being answered)", registry=r
        )
        self.submit_streams_max = Gauge(
            "fedseal_submit_streams_max", "Most SubmitUpdate streams open at once since start", registry=r
        )
        self._streams_open = self._streams_most = 0
        self.submit_seconds = Histogram(
            "fedseal_submit_update_seconds",
            "SubmitUpdate handling time, by outcome",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.attestation_requests = Counter(
            "fedseal_attestation_requests", "GetAttestation calls, by outcome", ["outcome"], registry=r
        )
        self.collateral_events = Counter(
            "fedseal_collateral_events",
            "Stapled-collateral cache outcomes (fetched, cached, refresh_failed, served_stale, expired)",
            ["event"],
            registry=r,
        )
        self.nras_tokens = Counter(
            "fedseal_nras_tokens",
            "NVIDIA NRAS tokens for GPU evidence (--nras): stapled, failed (served without), skipped",
            ["outcome"],
            registry=r,
        )
        age = Gauge(
            "fedseal_attestation_age_seconds",
            "Seconds since the evidence this enclave recorded at start-up was made (NaN before)",
            registry=r,
        )
        age.set_function(self._attestation_age)
        self.round_id = Gauge("fedseal_round_id", "Id of the latest round (0: none yet)", registry=r)
        self.round_state = Gauge(
            "fedseal_round_state", "1 for the latest round's state, 0 for the others", ["state"], registry=r
        )
        # Every label value shows from the first scrape, so rate() and alerts see a 0 first.
        for reason in RejectReason:
            self.updates_rejected.labels(reason.value)
        for cause in FailureCause:
            self.rounds_failed.labels(cause.value)
        for state in RoundState:
            self.round_state.labels(state.value).set(0)
        for outcome in ("accepted", "rejected", "deferred", "error"):
            self.submit_seconds.labels(outcome)
        for outcome in ("ok", "error"):
            self.attestation_requests.labels(outcome)
        for event in CollateralEvent:
            self.collateral_events.labels(event.value)
        for nras in NrasStapleOutcome:
            self.nras_tokens.labels(nras.value)

    # ------------------------------------------------------------------ events
    def round_opened(self, round_id: int) -> None:
        self.rounds_opened.inc()
        self._set_round(round_id, RoundState.OPEN)

    def round_closed(self, round_id: int) -> None:
        self.rounds_closed.inc()
        self._set_round(round_id, RoundState.CLOSED)

    def round_close_cpu(self, seconds: float) -> None:
        self.round_close_cpu_seconds.inc(max(0.0, seconds))

    def round_failed(self, round_id: int, cause: FailureCause) -> None:
        self.rounds_failed.labels(cause.value).inc()
        self._set_round(round_id, RoundState.FAILED)

    def update_accepted(self) -> None:
        self.updates_accepted.inc()

    def update_rejected(self, reason: RejectReason) -> None:
        self.updates_rejected.labels(reason.value).inc()

    def ciphertext_received(self, size: int) -> None:
        self.ciphertext_bytes.inc(size)

    def aggregate_sent(self, size: int) -> None:
        self.aggregate_bytes.inc(size)

    def submit_started(self) -> None:
        with self._lock:
            self._streams_open += 1
            self.submit_streams.set(self._streams_open)
            if self._streams_open > self._streams_most:
                self._streams_most = self._streams_open
                self.submit_streams_max.set(self._streams_most)

    def submit_finished(self, outcome: str, seconds: float) -> None:
        with self._lock:
            self._streams_open -= 1
            self.submit_streams.set(self._streams_open)
        self.submit_seconds.labels(outcome).observe(seconds)

    def upload_deferred(self) -> None:
        self.uploads_deferred.inc()

    def watch_line(self, waiting: Callable[[], int]) -> None:
        """Read the decryption buffers' waiting line when scraped."""
        self.uploads_in_line.set_function(waiting)

    def attestation_request(self, ok: bool) -> None:
        self.attestation_requests.labels("ok" if ok else "error").inc()

    def collateral_event(self, event: CollateralEvent, what: str) -> None:
        """A stapled-collateral cache outcome (``expired`` means GetAttestation now fails)."""
        self.collateral_events.labels(event.value).inc()

    def nras_outcome(self, outcome: NrasStapleOutcome, reason: str) -> None:
        """What the NRAS stapler did for one evidence item (the reason is logged, not labelled)."""
        self.nras_tokens.labels(outcome.value).inc()

    def evidence_made(self, at: float | None = None) -> None:
        """Record when the enclave's start-up evidence was made (now, by default)."""
        with self._lock:
            self._evidence_made = self._clock() if at is None else at

    # ------------------------------------------------------------------ internals
    def _attestation_age(self) -> float:
        with self._lock:
            made = self._evidence_made
        return float("nan") if made is None else max(0.0, self._clock() - made)

    def _set_round(self, round_id: int, state: RoundState) -> None:
        with self._lock:
            self.round_id.set(round_id)
            for s in RoundState:
                self.round_state.labels(s.value).set(1 if s is state else 0)


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def grpc_target(self) -> str:
        """`host:port` as gRPC's add_*_port takes it (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen_address(value: str, flag: str) -> ListenAddress:
    """`HOST:PORT`, `[IPV6]:PORT` or a bare `PORT` (then loopback only). ConfigError names `flag`."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{flag} {value[:64]!r}: {host[:48]!r} is not an IPv6 address") from None
    elif not host or ":" in host:
        raise ConfigError(f"{flag} {value[:64]!r} is not HOST:PORT, [IPV6]:PORT or PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{flag} {value[:64]!r}: the port must be a number from 0 to 65535")
    return ListenAddress(host, int(port_text))


class MetricsServer:
    """/metrics of `metrics` over plain HTTP (prometheus_client's server), until `stop`."""

    def __init__(self, metrics: Metrics, address: ListenAddress) -> None:
        try:
            server, thread = start_http_server(address.port, addr=address.host, registry=metrics.registry)
        except OSError as exc:
            where = address.grpc_target()
            raise OSError(f"cannot listen on {where} (--metrics-listen): {exc.strerror}") from None
        self._server: WSGIServer = server
        self._thread = thread
        self.port: int = server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

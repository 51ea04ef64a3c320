"""The standard gRPC health service (grpc.health.v1) for the aggregator.

One `HealthServicer` is registered on the aggregator's TLS server and, with
`--health-listen`, on a plaintext server of its own that serves nothing else: Kubernetes'
built-in gRPC probes cannot speak TLS. A status carries no data beyond SERVING or not.
It says NOT_SERVING until start-up (preflight, self-attestation, listeners, the job's first
round) has finished, SERVING after, and NOT_SERVING again from the moment `stop` begins.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator._metrics import ListenAddress

__all__ = ["AGGREGATOR_SERVICE", "HealthEndpoint"]

AGGREGATOR_SERVICE = "fedseal.v1.Aggregator"
# "" is the server as a whole: what a probe asks when it names no service.
_SERVICES = ("", AGGREGATOR_SERVICE)


class HealthEndpoint:
    def __init__(self) -> None:
        self._servicer = health.HealthServicer()
        self._server: grpc.Server | None = None
        self.port: int | None = None
        self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    def add_to(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def listen_plaintext(self, address: ListenAddress) -> int:
        """Serve only the health service, without TLS, on `address`; returns the bound port."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fedseal-health"),
            maximum_concurrent_rpcs=16,
            options=[("grpc.so_reuseport", 0)],  # a port in use is refused (aggregator/_server.py)
        )
        self.add_to(server)
        try:
            port = server.add_insecure_port(address.grpc_target())
        except RuntimeError:  # gRPC's way of saying it cannot bind
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {address.grpc_target()} (--health-listen): in use or not local")
        server.start()
        self._server, self.port = server, port
        return port

    def serving(self) -> None:
        self._set(health_pb2.HealthCheckResponse.SERVING)

    def not_serving(self) -> None:
        # Also ends open Watch streams with NOT_SERVING and ignores later `set` calls.
        self._servicer.enter_graceful_shutdown()

    def stop(self, grace: float = 0.5) -> None:
        self.not_serving()
        if self._server is not None:
            self._server.stop(grace).wait()

    def _set(self, status: int) -> None:
        for service in _SERVICES:
            self._servicer.set(service, status)

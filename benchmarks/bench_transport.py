"""Transport and identity costs: attested TLS, call tokens, update signatures.

    python benchmarks/bench_transport.py [--mib 64] [--calls 2000]

Measured in one run, each next to its peer:

* upload throughput of a client-streaming call (1 MiB chunks, the SubmitUpdate shape) over
  TLS with the enclave's in-memory certificate pinned, against the same call over plaintext
  gRPC (the transport FedSeal used before attested TLS) on the same loopback;
* connection set-up: probe the certificate + open the pinned channel + one call, against
  opening a channel verified the usual way (CA roots) + one call;
* per-call authentication: signing a call token (client) and verifying it with the nonce
  cache (server), against one bare Ed25519 sign and verify of the same size;
* the update header signature (sign, verify), against a bare Ed25519 sign and verify.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aggregator._tls import EnclaveTlsIdentity  # noqa: E402
from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb  # noqa: E402
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc  # noqa: E402
from fedseal.envelope import DEFAULT_SUITE  # noqa: E402
from fedseal.signed_request import (  # noqa: E402
    CALL_ACTION,
    NonceCache,
    Role,
    Signer,
    key_id,
    sign_request,
    verify_signed_request,
)
from fedseal.tls import pinned_channel, probe_server_certificate  # noqa: E402
from fedseal.wire import PROTOCOL_VERSION, UpdateHeader  # noqa: E402

CHUNK = 1024 * 1024
_OPTIONS = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]


class _Sink(pb_grpc.AggregatorServicer):
    """Consumes an upload and answers with its size: the transport, nothing else."""

    def SubmitUpdate(  # the gRPC method name
        self, request_iterator: Iterator[pb.SubmitUpdateRequest], context: grpc.ServicerContext
    ) -> pb.SubmitUpdateResponse:
        total = sum(len(m.chunk) for m in request_iterator)
        return pb.SubmitUpdateResponse(receipt=str(total).encode())

    def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointResponse:
        return pb.CheckpointResponse(checkpoint="x")


def _server(tls: EnclaveTlsIdentity | None) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_OPTIONS)
    pb_grpc.add_AggregatorServicer_to_server(_Sink(), server)  # type: ignore[no-untyped-call]
    port = (
        server.add_secure_port("127.0.0.1:0", tls.server_credentials())
        if tls is not None
        else server.add_insecure_port("127.0.0.1:0")
    )
    server.start()
    return server, f"127.0.0.1:{port}"


def _upload(channel: grpc.Channel, mib: int) -> float:
    chunk = os.urandom(CHUNK)
    stub = pb_grpc.AggregatorStub(channel)  # type: ignore[no-untyped-call]

    def requests() -> Iterator[pb.SubmitUpdateRequest]:
        for _ in range(mib):
            yield pb.SubmitUpdateRequest(chunk=chunk)

    stub.SubmitUpdate(requests(), timeout=120)  # warm the connection
    start = time.perf_counter()
    reply = stub.SubmitUpdate(requests(), timeout=120)
    elapsed = time.perf_counter() - start
    assert int(reply.receipt) == mib * CHUNK
    return mib * CHUNK / elapsed / 1e9


def bench_upload(mib: int) -> None:
    print(f"\nUpload of {mib} MiB in 1 MiB chunks over loopback (client-streaming call):")
    tls = EnclaveTlsIdentity.generate()
    for label, identity in (
        ("attested TLS (pinned enclave certificate)", tls),
        ("peer: plaintext gRPC", None),
    ):
        server, endpoint = _server(identity)
        try:
            if identity is not None:
                channel = pinned_channel(endpoint, probe_server_certificate(endpoint), options=_OPTIONS)
            else:
                channel = grpc.insecure_channel(endpoint, options=_OPTIONS)
            with channel:
                rates = [_upload(channel, mib) for _ in range(3)]
            print(f"  {label:<44} {max(rates):6.2f} GB/s (best of 3)")
        finally:
            server.stop(0)


def bench_connect(rounds: int = 20) -> None:
    print("\nConnection set-up + one call (loopback):")
    tls = EnclaveTlsIdentity.generate()
    server, endpoint = _server(tls)
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            with pinned_channel(endpoint, probe_server_certificate(endpoint)) as channel:
                pb_grpc.AggregatorStub(channel).GetCheckpoint(pb.GetCheckpointRequest(), timeout=10)  # type: ignore[no-untyped-call]
        pinned = (time.perf_counter() - start) / rounds
        credentials = grpc.ssl_channel_credentials(root_certificates=tls.certificate_pem)
        options = [("grpc.ssl_target_name_override", "attested.fedseal.invalid")]
        start = time.perf_counter()
        for _ in range(rounds):
            with grpc.secure_channel(endpoint, credentials, options=options) as channel:
                pb_grpc.AggregatorStub(channel).GetCheckpoint(pb.GetCheckpointRequest(), timeout=10)  # type: ignore[no-untyped-call]
        plain = (time.perf_counter() - start) / rounds
    finally:
        server.stop(0)
    print(f"  probe + pinned channel + call                {pinned * 1000:7.1f} ms")
    print(f"  peer: CA-verified channel + call             {plain * 1000:7.1f} ms")


def bench_tokens(calls: int) -> None:
    print(f"\nPer-call authentication ({calls} calls):")
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    signers = {key_id(public): Signer("hospital-a", Role.SITE, public)}
    audience = os.urandom(32)
    nonces = NonceCache()
    method = {"method": "/fedseal.v1.Aggregator/GetRound"}
    start = time.perf_counter()
    tokens = [sign_request(key, CALL_ACTION, method, audience=audience) for _ in range(calls)]
    signing = (time.perf_counter() - start) / calls
    actions = {CALL_ACTION: frozenset({Role.SITE})}
    start = time.perf_counter()
    for token in tokens:
        verify_signed_request(token, signers=signers, audience=audience, actions=actions, nonces=nonces)
    verifying = (time.perf_counter() - start) / calls
    sign_peer, verify_peer = _bare_ed25519(key, len(tokens[0]), calls)
    print(
        f"  call token: sign (client)                    {signing * 1e6:7.1f} us   ({len(tokens[0])} bytes)"
    )
    print(f"  call token: verify + nonce cache (server)    {verifying * 1e6:7.1f} us")
    print(
        f"  peer: bare Ed25519 sign / verify             {sign_peer * 1e6:7.1f} / {verify_peer * 1e6:.1f} us"
    )


def bench_header(calls: int) -> None:
    print(f"\nUpdate header signature ({calls} headers):")
    key = Ed25519PrivateKey.generate()
    header = UpdateHeader(
        protocol_version=PROTOCOL_VERSION,
        round_id=1,
        client_id="hospital-a",
        adapter_spec_digest=os.urandom(32),
        num_examples=1200,
        suite=DEFAULT_SUITE,
        wrapped_key=os.urandom(80),
        idempotency_key=os.urandom(32),
        challenge=os.urandom(32),
        chunk_size=CHUNK,
        ciphertext_size=67 * CHUNK,
        key_id=key_id(key.public_key().public_bytes_raw()),
        ciphertext_digest=os.urandom(32),
    )
    start = time.perf_counter()
    signed = [header.sign(key) for _ in range(calls)]
    signing = (time.perf_counter() - start) / calls
    public = key.public_key().public_bytes_raw()
    start = time.perf_counter()
    for h in signed:
        h.verify_signature(public)
    verifying = (time.perf_counter() - start) / calls
    sign_peer, verify_peer = _bare_ed25519(key, len(header.signed_message()), calls)
    print(f"  header sign / verify                         {signing * 1e6:7.1f} / {verifying * 1e6:.1f} us")
    print(
        f"  peer: bare Ed25519 sign / verify             {sign_peer * 1e6:7.1f} / {verify_peer * 1e6:.1f} us"
    )


def _bare_ed25519(key: Ed25519PrivateKey, size: int, calls: int) -> tuple[float, float]:
    message = os.urandom(size)
    start = time.perf_counter()
    signatures = [key.sign(message) for _ in range(calls)]
    sign = (time.perf_counter() - start) / calls
    public = key.public_key()
    start = time.perf_counter()
    for signature in signatures:
        public.verify(signature, message)
    return sign, (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=64, help="upload size in MiB (default: %(default)s)")
    p.add_argument(
        "--calls", type=int, default=2000, help="tokens and headers to time (default: %(default)s)"
    )
    args = p.parse_args(argv)
    cpu = platform.processor() or platform.machine()
    print(
        f"machine: {cpu}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
        f"grpcio {grpc.__version__}"
    )
    bench_upload(args.mib)
    bench_connect()
    bench_tokens(args.calls)
    bench_header(args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())

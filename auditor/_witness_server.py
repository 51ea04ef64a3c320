"""The witness over gRPC: the service behind `fedseal-audit witness serve`.

The mapping of refusals to gRPC status codes is fedseal/witness.py's, which the log's side
(aggregator/_witness.py) reads back.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import structlog

from fedseal._proto.fedseal.v1 import fedseal_pb2 as pb
from fedseal._proto.fedseal.v1 import fedseal_pb2_grpc as pb_grpc
from fedseal.errors import FedSealError
from fedseal.witness import AddCheckpointRequest, WitnessRefusedError, status_of

from ._witness import Witness

__all__ = ["serve_witness"]

_log = structlog.get_logger("fedseal.witness")


class _WitnessService(pb_grpc.WitnessServicer):
    def __init__(self, witness: Witness) -> None:
        self._witness = witness

    def AddCheckpoint(
        self, request: pb.AddCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.AddCheckpointResponse:
        try:
            line = self._witness.add_checkpoint(AddCheckpointRequest.from_proto(request))
        except OSError as exc:
            # The state could not be saved, so nothing was cosigned (the witness is unchanged);
            # the path and the cause stay in the witness's own log.
            _log.error("witness_state_not_saved", error=str(exc))
            context.abort(
                grpc.StatusCode.UNAVAILABLE, "the witness cannot save its state; nothing was cosigned"
            )
        except FedSealError as exc:
            if isinstance(exc, WitnessRefusedError):
                _log.warning("witness_refused", reason=str(exc))
            code, trailing = status_of(exc)
            if trailing:
                context.set_trailing_metadata(trailing)
            context.abort(code, str(exc))
        return pb.AddCheckpointResponse(cosignature=line)


def serve_witness(witness: Witness, listen: str, *, max_workers: int = 4) -> tuple[grpc.Server, int]:
    """Start serving `witness` on `listen`; returns the server and the bound port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedseal-witness"),
        # gRPC sets SO_REUSEPORT by default on Linux: a second witness on the same port would
        # take half the connections, each with its own state. A port in use is refused instead.
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_WitnessServicer_to_server(_WitnessService(witness), server)  # type: ignore[no-untyped-call]
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError:  # gRPC's way of saying it cannot bind
        port = 0
    if port == 0:
        raise OSError(
            f"cannot listen on {listen}: the port is in use or closed to this user, "
            "or the address is not this machine's"
        )
    server.start()
    return server, port

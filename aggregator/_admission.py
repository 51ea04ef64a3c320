"""Admission: a call holds a worker thread only briefly unless it is an enrolled caller's
(issue 18, items 1 and 2).

gRPC's synchronous server reads a unary call's request inside a worker thread, before any
handler code runs, and waits without limit: sixteen callers that open a call and never
send their request held all sixteen threads, and enrolled sites' submits timed out. This
interceptor turns every unary-request method into a request-streaming one, so that our
code runs first and decides:

- a call carrying credentials (a call token, or a client certificate on the mutual-TLS
  port) is authenticated *now*, before its request is read; a failure is refused at once
  (GetAttestation, being public, goes on as an anonymous call instead), a success is
  admitted with its caller (the handler takes it from `admitted_caller()`);
- a call without credentials must take one of a few anonymous slots (a quarter of the
  threads by default); when they are all taken it is refused at once (RESOURCE_EXHAUSTED,
  `fedseal-access-denied: rate_limited`), so anonymous calls can never hold the threads
  that enrolled callers need;
- either way the request must arrive within `receive_timeout` seconds, or the call is
  cancelled.

An enrolled site's GetAttestation is authenticated too (its token is bound to the
enclave's TLS certificate, which the client has pinned before it knows the enclave's log
key), so it draws from that site's own attestation budget, not from the public one that an
anonymous flood exhausts.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import structlog

from aggregator._deadlines import Deadlines
from aggregator._identity import AccessControl, Caller
from fedseal.wire import (
    ACCESS_DENIED_METADATA_KEY,
    CALL_AUTH_METADATA_KEY,
    STATUS_FOR_ACCESS,
    AccessDeniedError,
    AccessDeniedReason,
)

__all__ = ["DEFAULT_RECEIVE_TIMEOUT_SECONDS", "AdmissionInterceptor", "admitted_caller"]

DEFAULT_RECEIVE_TIMEOUT_SECONDS = 10.0

_log = structlog.get_logger("fedseal.aggregator.service")

_ADMITTED: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("fedseal_admitted", default=None)


def admitted_caller() -> Caller | None:
    """The caller this call was admitted as (authenticated before its request was read)."""
    return _ADMITTED.get()


class AdmissionInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        access: AccessControl,
        *,
        anonymous_slots: int,
        deadlines: Deadlines,
        receive_timeout: float = DEFAULT_RECEIVE_TIMEOUT_SECONDS,
    ) -> None:
        """`deadlines` cancels a call whose request is late (the server's own, shared)."""
        if anonymous_slots < 1:
            raise ValueError("anonymous_slots must be at least 1")
        self._access = access
        self._deadlines = deadlines
        self._slots = threading.BoundedSemaphore(anonymous_slots)
        self._receive_timeout = receive_timeout

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            # Streaming requests (SubmitUpdate) authenticate from metadata before reading,
            # then bound their own reads (aggregator/_service.py's watchdog).
            return handler
        method: str = handler_call_details.method
        if handler.response_streaming and handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is None:
            return handler
        return grpc.stream_unary_rpc_method_handler(
            self._unary(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, method: str, inner: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def behavior(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            with self._admit(method, context):
                return inner(self._receive(requests, context), context)

        return behavior

    def _streaming(
        self, method: str, inner: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
    ) -> Callable[..., Iterator[Any]]:
        def behavior(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            with self._admit(method, context):
                yield from inner(self._receive(requests, context), context)

        return behavior

    @contextlib.contextmanager
    def _admit(self, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        caller = None
        if _has_credentials(context):
            try:
                caller = self._access.authenticate(context, method)
            except AccessDeniedError as exc:
                # GetAttestation is public: a token that does not verify here (a client
                # behind a TLS-terminating proxy binds it to the proxy's certificate) only
                # forgoes the enrolled budget. Every other call is refused at once.
                if not method.endswith("/GetAttestation") or exc.reason is AccessDeniedReason.RATE_LIMITED:
                    _abort(context, method, exc)
        if caller is not None:
            token = _ADMITTED.set(caller)
            try:
                yield
            finally:
                _ADMITTED.reset(token)
            return
        if not self._slots.acquire(blocking=False):
            _abort(
                context,
                method,
                AccessDeniedError(
                    AccessDeniedReason.RATE_LIMITED,
                    "too many unauthenticated calls in progress; try again shortly",
                ),
            )
        try:
            yield
        finally:
            self._slots.release()

    def _receive(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        handle = self._deadlines.arm(self._receive_timeout, context.cancel)
        try:
            request = next(requests, None)
        except grpc.RpcError:  # cancelled by the deadline above (or by the client)
            request = None
        finally:
            self._deadlines.disarm(handle)
        if request is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request")
        return request


def _has_credentials(context: grpc.ServicerContext) -> bool:
    if any(key == CALL_AUTH_METADATA_KEY for key, _ in context.invocation_metadata() or ()):
        return True
    return bool(context.auth_context().get("x509_pem_cert"))


def _abort(context: grpc.ServicerContext, method: str, exc: AccessDeniedError) -> None:
    # As the service's own refusals (aggregator/_service.py): a service log line, not the audit log.
    _log.warning(
        "access_denied", method=method, reason=exc.reason.value, peer=context.peer(), detail=exc.detail
    )
    context.set_trailing_metadata(((ACCESS_DENIED_METADATA_KEY, exc.reason.value),))
    context.abort(STATUS_FOR_ACCESS[exc.reason], str(exc))

"""Errors the client SDK raises besides those of attestation, envelope and receipts."""

from __future__ import annotations

from attestation import AttestationError
from fedseal.errors import FedSealError

__all__ = [
    "AdapterMismatchError",
    "AggregatorUnavailableError",
    "ClientArgumentError",
    "ClientError",
    "DpRequirementError",
    "OperatorActionError",
    "RoundUnavailableError",
    "UnattestedChannelError",
]


class ClientError(FedSealError):
    """Root of client-side failures that are not verification failures."""


class ClientArgumentError(ClientError, ValueError):
    """An argument of an SDK call has the wrong type or value; the message names it. Raised
    before anything is sent."""


class AdapterMismatchError(ClientError):
    """The adapter given to submit_update() does not match the round's adapter spec."""


class AggregatorUnavailableError(ClientError):
    """The aggregator could not be reached or did not answer in time, or this client's
    connection is closed (after close(), or a reconnect() that could not reach it)."""


class DpRequirementError(ClientError):
    """The round does not promise the central DP the client's policy requires (`require_dp`);
    nothing was sent."""


class OperatorActionError(ClientError):
    """The aggregator accepted an operator request's signature but could not do the action
    (a bad round config, a round already open, an enrolment version not above the current)."""


class RoundUnavailableError(ClientError):
    """The round does not exist, failed, or has not closed within the wait."""


class UnattestedChannelError(AttestationError):
    """The TLS channel does not end in the attested enclave: the certificate this client saw
    is not the one the evidence names (a proxy that terminates TLS, or evidence without a
    TLS binding). Nothing but the attestation request was sent."""

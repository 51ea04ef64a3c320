"""Errors the client SDK raises besides those of attestation, envelope and receipts."""

from __future__ import annotations

from fedseal.errors import FedSealError

__all__ = [
    "AdapterMismatchError",
    "AggregatorUnavailableError",
    "ClientError",
    "RoundUnavailableError",
]


class ClientError(FedSealError):
    """Root of client-side failures that are not verification failures."""


class AdapterMismatchError(ClientError):
    """The adapter given to submit_update() does not match the round's adapter spec."""


class AggregatorUnavailableError(ClientError):
    """The aggregator could not be reached or did not answer in time."""


class RoundUnavailableError(ClientError):
    """The round does not exist, failed, or has not closed within the wait."""

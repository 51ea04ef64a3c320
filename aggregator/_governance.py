"""Data governance at admission: data cards and validation summaries, from the header alone.

Everything here is decided before a chunk is read (the client sends none before the
aggregator's go-ahead): a round that requires a data card refuses a header without one
(`data_card_missing`); a published card must parse (`data_card_invalid`) and hash to the
digest the header signs (`data_card_mismatch`); a round that requires a validation refuses
a header without a summary (`validation_missing`) or with a failed check
(`validation_failed`). The header's signature covers the digest and the summary, and the
envelope's seal context binds both (fedseal/wire.py, fedseal/envelope.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedseal.datacard import DataCardError, DataCardMismatchError, check_published_card
from fedseal.logschema import RejectReason
from fedseal.roundconfig import RoundConfig
from fedseal.wire import UpdateHeader, UpdateRejectedError

__all__ = ["Governance", "check_governance"]


@dataclass(frozen=True)
class Governance:
    """What an accepted update's log entry records of its data governance."""

    data_card_digest: bytes | None
    data_card: dict[str, Any] | None
    validation: dict[str, Any] | None


def check_governance(config: RoundConfig, header: UpdateHeader) -> Governance:
    """The header's data card and validation summary, or UpdateRejectedError naming the refusal."""
    card = None
    if header.data_card:
        if not header.data_card_digest:
            raise UpdateRejectedError(
                RejectReason.DATA_CARD_MISMATCH, "the header publishes a data card but signs no digest of it"
            )
        try:
            card = check_published_card(header.data_card, header.data_card_digest)
        except DataCardMismatchError as exc:
            raise UpdateRejectedError(RejectReason.DATA_CARD_MISMATCH, str(exc)) from None
        except DataCardError as exc:
            raise UpdateRejectedError(RejectReason.DATA_CARD_INVALID, str(exc)) from None
    if config.require_data_card and not header.data_card_digest:
        raise UpdateRejectedError(
            RejectReason.DATA_CARD_MISSING,
            f"round {config.round_id} requires a data card (require_data_card); the update names none",
        )
    summary = header.validation()  # parsed when the header was (a bad one is malformed)
    if config.require_validation:
        if summary is None:
            raise UpdateRejectedError(
                RejectReason.VALIDATION_MISSING,
                f"round {config.round_id} requires a passing local data validation "
                "(require_validation); the update carries no validation summary",
            )
        if not summary.passed:
            raise UpdateRejectedError(
                RejectReason.VALIDATION_FAILED,
                f"round {config.round_id} requires a passing local data validation; check(s) "
                f"{list(summary.failed_checks())} failed",
            )
    return Governance(
        data_card_digest=header.data_card_digest or None,
        data_card=card.to_json_obj() if card is not None else None,
        validation=summary.to_json_obj() if summary is not None else None,
    )

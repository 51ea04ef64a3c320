"""The auditor's own rules for data governance in `update_accepted` entries.

For each accepted update: a published data card must parse (fedseal/datacard.py) and hash
(SHA-256 of its canonical JSON) to the digest the site signed; a card without a digest is
wrong; a logged validation summary must parse (fedseal/validation.py); and a round whose
config requires a data card or a passing validation must not have accepted an update
without one. Every problem is an `invalid_data_governance` finding. The site signature
over the digest and the summary is checked with the others (auditor/_access.py).
"""

from __future__ import annotations

import hashlib

from fedseal.canonical import canonical_json
from fedseal.datacard import DataCard
from fedseal.errors import FormatError
from fedseal.logschema import UpdateAccepted
from fedseal.roundconfig import RoundConfig
from fedseal.validation import ValidationSummary

__all__ = ["governance_problems"]


def governance_problems(config: RoundConfig, body: UpdateAccepted) -> list[str]:
    """What is wrong with the data governance an accepted update's entry records."""
    problems: list[str] = []
    who = f"update from {body.client_id[:128]!r} in round {body.round_id}"
    if body.data_card is not None:
        if body.data_card_digest is None:
            problems.append(f"{who} publishes a data card but records no signed digest of it")
        else:
            try:
                card = DataCard.from_json_obj(dict(body.data_card))
            except FormatError as exc:
                problems.append(f"{who} publishes a data card that does not parse: {exc}")
            else:
                written = card.canonical_bytes()
                if written != canonical_json(dict(body.data_card)):
                    problems.append(f"{who} publishes a data card not in the form the enclave writes")
                elif hashlib.sha256(written).digest() != body.data_card_digest:
                    problems.append(f"{who}: the published data card does not hash to the signed digest")
    summary = None
    if body.validation is not None:
        try:
            summary = ValidationSummary.from_json_obj(dict(body.validation))
        except FormatError as exc:
            problems.append(f"{who} records a validation summary that does not parse: {exc}")
    if config.require_data_card and body.data_card_digest is None:
        problems.append(f"{who} was accepted without a data card; the round requires one")
    if config.require_validation and (summary is None or not summary.passed):
        state = "without a validation summary" if body.validation is None else "with a failed validation"
        problems.append(f"{who} was accepted {state}; the round requires a passing validation")
    return problems

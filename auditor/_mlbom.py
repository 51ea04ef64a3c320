"""A CycloneDX 1.6 ML-BOM for one released adapter, with cyclonedx-python-lib.

The adapter (the round's aggregate, its SHA-256) is the BOM's subject, a
`machine-learning-model` component. Its pedigree is the training process as rounds: the
earlier released aggregates, in order, each with its round's strategy, participants,
examples and DP spend; and the base model when the caller names one (the log does not
record it). Its data are the sites' contributions, one `data` component per site, with
the rounds and example counts the log records, and the SHA-256 digests of the data cards
the site signed (or the statement that the log records none). Properties use the
`fedseal:` namespace. The output is deterministic (serial number a UUIDv5 of the
aggregate, timestamp the round's close), so the pack can be rebuilt and compared.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from ._report import RoundSummary

__all__ = ["BomUnavailableError", "ReleasedRound", "adapter_bom", "validate_bom"]

try:  # the `audit` extra
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType, Pedigree
    from cyclonedx.output.json import JsonV1Dot6
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    _MISSING: str | None = None
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    _MISSING = str(exc)

from fedseal.canonical import b64decode_canonical
from fedseal.errors import FedSealError


class BomUnavailableError(FedSealError):
    """cyclonedx-python-lib is not installed, or the BOM it wrote does not validate."""


@dataclass(frozen=True)
class ReleasedRound:
    summary: RoundSummary
    closed_at: dt.datetime


def _need_library() -> None:
    if _MISSING is not None:
        raise BomUnavailableError(
            "the evidence pack's ML-BOM needs cyclonedx-python-lib (pip install 'fedseal[audit]'): "
            + _MISSING
        )


def _hex(b64: str) -> str:
    return b64decode_canonical(b64, what="aggregate digest", size=32).hex()


def _round_properties(r: RoundSummary) -> list[Property]:
    props = [
        Property(name="fedseal:round_id", value=str(r.round_id)),
        Property(name="fedseal:strategy", value=r.strategy),
        Property(name="fedseal:participants", value=",".join(r.participants)),
        Property(name="fedseal:total_examples", value=str(r.total_examples)),
        Property(name="fedseal:round_config_digest", value=r.config_digest),
        Property(name="fedseal:aggregate_size", value=str(r.aggregate_size)),
    ]
    spend = (r.dp or {}).get("spend") or {}
    if spend:
        props.append(Property(name="fedseal:dp.epsilon_spent", value=str(spend.get("epsilon_spent"))))
        props.append(Property(name="fedseal:dp.delta", value=str(spend.get("delta"))))
    if r.approval is not None:
        approvers = [d["key_id"] for d in r.approval.get("decisions", []) if d.get("valid")]
        props.append(Property(name="fedseal:approval.state", value=str(r.approval.get("state"))))
        props.append(Property(name="fedseal:approval.approvers", value=",".join(approvers)))
    return props


def _aggregate(r: RoundSummary, origin: str) -> Component:
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=f"round-{r.round_id}-aggregate",
        version=f"round-{r.round_id}",
        group=origin,
        bom_ref=f"aggregate-round-{r.round_id}",
        description=f"LoRA adapter aggregated in the attested enclave in round {r.round_id} ({r.strategy})",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=_hex(r.aggregate_digest))],
        properties=_round_properties(r),
    )


def adapter_bom(
    release: ReleasedRound,
    earlier: Sequence[RoundSummary],
    origin: str,
    *,
    base_model: str | None,
) -> str:
    """The ML-BOM (CycloneDX 1.6 JSON) of `release`'s adapter; `earlier`: the releases before it."""
    _need_library()
    r = release.summary
    ancestors = [_aggregate(e, origin) for e in earlier]
    if base_model is not None:
        ancestors.insert(
            0,
            Component(
                type=ComponentType.MACHINE_LEARNING_MODEL,
                name=base_model,
                bom_ref="base-model",
                description="the base model the adapter applies to (named by the evidence pack's caller)",
            ),
        )
    subject = _aggregate(r, origin)
    subject.pedigree = Pedigree(
        ancestors=ancestors,
        notes=(
            f"Trained over {len(earlier) + 1} released round(s) of federated LoRA fine-tuning; each "
            "round's aggregate is the global adapter the next round's sites train from. Base model: "
            + (base_model if base_model is not None else "not recorded in the log")
            + "."
        ),
    )
    sites: dict[str, list[tuple[int, int]]] = {}
    for x in (*earlier, r):
        for a in x.accepted:
            sites.setdefault(a["client_id"], []).append((x.round_id, int(a["num_examples"])))
    cards: dict[str, list[str]] = {}  # site -> "round:digest" of its signed data cards
    for x in (*earlier, r):
        for a in x.accepted:
            if a.get("data_card_digest"):
                cards.setdefault(a["client_id"], []).append(f"{x.round_id}:{a['data_card_digest']}")
    data = [
        Component(
            type=ComponentType.DATA,
            name=f"{site} training data",
            bom_ref=f"data-{site}",
            description=f"the local data site {site} trained on ("
            + (
                "described by the data cards whose SHA-256 digests the site signed, fedseal:data-cards; "
                "published cards are in the datasheet"
                if site in cards
                else "no data card was recorded in the log for this site's data"
            )
            + ")",
            properties=[
                Property(name="fedseal:site", value=site),
                Property(name="fedseal:rounds", value=",".join(str(rid) for rid, _ in rounds)),
                Property(name="fedseal:examples", value=",".join(str(n) for _, n in rounds)),
                *(
                    [Property(name="fedseal:data-cards", value=",".join(cards[site]))]
                    if site in cards
                    else []
                ),
            ],
        )
        for site, rounds in sorted(sites.items())
    ]
    bom = Bom(
        serial_number=uuid.uuid5(
            uuid.NAMESPACE_URL, f"fedseal:{origin}:round-{r.round_id}:{r.aggregate_digest}"
        ),
        metadata=BomMetaData(component=subject, timestamp=release.closed_at),
        components=data,
    )
    bom.register_dependency(subject, data)  # the adapter was trained on these data
    text = str(JsonV1Dot6(bom).output_as_string(indent=2))
    validate_bom(text)
    return text + "\n"


def validate_bom(text: str) -> None:
    """Validate against the CycloneDX 1.6 JSON schema (the library's validator); raise if not."""
    _need_library()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise BomUnavailableError(f"the ML-BOM does not validate against CycloneDX 1.6: {error}")

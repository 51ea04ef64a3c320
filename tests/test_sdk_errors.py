"""The SDK raises only named FedSeal errors, and a wrong argument is named (issue 18, items 4, 7).

A table of caller mistakes, each run against a live aggregator: every one must raise a
FedSealError subclass whose message names the argument (ClientArgumentError, or
AdapterInputError for a tensor), before anything is sent. And an aggregator that dies
mid-upload with the default retries ends in AggregatorUnavailableError, never grpc's bare
ValueError('Cannot invoke RPC on closed channel!').
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import (
    make_adapter,
    round_config,
    site_client,
    start_test_aggregator,
)

from aggregator import RunningAggregator
from attestation import Policy
from client_sdk import (
    AdapterInputError,
    AggregatorUnavailableError,
    ClientArgumentError,
    FedSealClient,
    SealedSubmission,
)
from fedseal.errors import FedSealError
from fedseal.logformat import EntryKind, decode_record

Call = Callable[[FedSealClient], object]


def _adapter_with(name_value: tuple[str, Any]) -> dict[str, Any]:
    adapter: dict[str, Any] = dict(make_adapter(0))
    name, value = name_value
    adapter[name] = value
    return adapter


_NAME = "layers.0.q_proj.lora_A.weight"

BAD_CALLS: list[tuple[str, Call, type[FedSealError], str]] = [
    (
        "round_id negative",
        lambda c: c.submit_update(make_adapter(0), round_id=-1, num_examples=1),
        ClientArgumentError,
        "round_id",
    ),
    (
        "round_id str",
        lambda c: c.submit_update(make_adapter(0), round_id="1", num_examples=1),  # type: ignore[arg-type]
        ClientArgumentError,
        "round_id",
    ),
    (
        "round_id bool",
        lambda c: c.submit_update(make_adapter(0), round_id=True, num_examples=1),
        ClientArgumentError,
        "round_id",
    ),
    (
        "retries negative",
        lambda c: c.submit_update(make_adapter(0), round_id=1, num_examples=1, retries=-1),
        ClientArgumentError,
        "retries",
    ),
    (
        "retries float",
        lambda c: c.submit_update(make_adapter(0), round_id=1, num_examples=1, retries=1.5),  # type: ignore[arg-type]
        ClientArgumentError,
        "retries",
    ),
    (
        "num_examples zero",
        lambda c: c.submit_update(make_adapter(0), round_id=1, num_examples=0),
        ClientArgumentError,
        "num_examples",
    ),
    (
        "chunk_size zero",
        lambda c: c.seal_update(make_adapter(0), round_id=1, num_examples=1, chunk_size=0),
        ClientArgumentError,
        "chunk_size",
    ),
    (
        "idempotency_key short",
        lambda c: c.seal_update(make_adapter(0), round_id=1, num_examples=1, idempotency_key=b"x"),
        ClientArgumentError,
        "idempotency_key",
    ),
    (
        "base_round_id negative",
        lambda c: c.seal_update(make_adapter(0), round_id=1, num_examples=1, base_round_id=-2),
        ClientArgumentError,
        "base_round_id",
    ),
    ("fetch round_id negative", lambda c: c.fetch_aggregate(-1), ClientArgumentError, "round_id"),
    (
        "fetch wait_seconds nan",
        lambda c: c.fetch_aggregate(1, wait_seconds=math.nan),
        ClientArgumentError,
        "wait_seconds",
    ),
    ("round_info str", lambda c: c.round_info("1"), ClientArgumentError, "round_id"),  # type: ignore[arg-type]
    (
        "seal_payload str",
        lambda c: c.seal_payload("x", round_id=1, num_examples=1, adapter_spec_digest=bytes(32)),  # type: ignore[arg-type]
        ClientArgumentError,
        "payload",
    ),
    (
        "meta tensor",
        lambda c: c.submit_update(
            _adapter_with((_NAME, torch.empty(8, 64, device="meta"))), round_id=1, num_examples=1
        ),
        AdapterInputError,
        "meta device",
    ),
    (
        "complex tensor",
        lambda c: c.submit_update(
            _adapter_with((_NAME, torch.zeros(8, 64, dtype=torch.complex64))), round_id=1, num_examples=1
        ),
        AdapterInputError,
        "complex64",
    ),
    (
        "complex numpy",
        lambda c: c.submit_update(
            _adapter_with((_NAME, np.zeros((8, 64), dtype=np.complex128))), round_id=1, num_examples=1
        ),
        AdapterInputError,
        "complex128",
    ),
    (
        "bool tensor",
        lambda c: c.submit_update(
            _adapter_with((_NAME, torch.zeros(8, 64, dtype=torch.bool))), round_id=1, num_examples=1
        ),
        AdapterInputError,
        "torch.bool",
    ),
    (
        "sparse tensor",
        lambda c: c.submit_update(
            _adapter_with((_NAME, torch.zeros(8, 64).to_sparse())), round_id=1, num_examples=1
        ),
        AdapterInputError,
        "dense",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "names"), [pytest.param(c, e, n, id=i) for i, c, e, n in BAD_CALLS]
)
def test_bad_arguments_are_named_errors(
    live_aggregator: RunningAggregator, dev_policy: Policy, call: Call, error: type[FedSealError], names: str
) -> None:
    live_aggregator.rounds.open_round(round_config(1))
    with (
        site_client(live_aggregator.endpoint, dev_policy, "site-0", timeout=10) as client,
        pytest.raises(FedSealError) as info,
    ):
        call(client)
    assert isinstance(info.value, error), repr(info.value)
    assert names in str(info.value)
    assert "\n" not in str(info.value)
    # Nothing reached the aggregator's round.
    kinds = {
        record.entry.kind
        for n, line in enumerate(live_aggregator.log.path.read_bytes().splitlines(), start=1)
        if (record := decode_record(line, line_number=n)).entry is not None
    }
    assert not kinds & {EntryKind.UPDATE_ACCEPTED, EntryKind.UPDATE_REJECTED}


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"timeout": -1}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"timeout": "10"}, "timeout"),
        ({"endpoint": ""}, "endpoint"),
        ({"endpoint": 5}, "endpoint"),
        ({"policy": "default"}, "policy"),
        ({"identity": "site-0"}, "identity"),
        ({"receipts": "receipts"}, "receipts"),
    ],
)
def test_bad_constructor_arguments_are_named(
    live_aggregator: RunningAggregator, dev_policy: Policy, options: dict[str, Any], names: str
) -> None:
    kwargs: dict[str, Any] = {"endpoint": live_aggregator.endpoint, "policy": dev_policy, **options}
    with pytest.raises(ClientArgumentError, match=names):
        FedSealClient(kwargs.pop("endpoint"), kwargs.pop("policy"), **kwargs)


def test_aggregator_dying_mid_upload_is_aggregator_unavailable(tmp_path: Path, dev_policy: Policy) -> None:
    running = start_test_aggregator(
        tmp_path,
    )
    running.rounds.open_round(round_config(1))
    client = site_client(running.endpoint, dev_policy, "site-0", timeout=5)
    send = client.send

    def die_then_send(submission: SealedSubmission) -> object:
        running.stop(grace=0)  # the aggregator dies while the upload starts
        return send(submission)

    client.send = die_then_send  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(AggregatorUnavailableError):
            client.submit_update(make_adapter(0), round_id=1, num_examples=1)  # default retries
        # The failed reconnect left the client closed; it says so rather than grpc's ValueError.
        with pytest.raises(AggregatorUnavailableError, match="closed"):
            client.round_info(1)
        with pytest.raises(AggregatorUnavailableError):
            client.reconnect()
    finally:
        client.close()

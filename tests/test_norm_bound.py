"""The norm bound (`max_update_norm` in the round config): outside DP, an update whose delta
against the round's global adapter is longer is refused by name (`norm_exceeded`, its norm
in the logged detail) while the round closes on the others, so one site cannot swing a
FedAvg round."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import (
    make_adapter,
    round_config,
    site_client,
    start_test_aggregator,
)
from logfiles import log_entries

from aggregator import RunningAggregator
from attestation import Policy
from auditor import audit_log
from client_sdk import UpdateRejectedError
from fedseal.logformat import EntryKind, RejectReason
from fedseal.roundconfig import ConfigError, RoundConfig

INITIAL = make_adapter(700)
BOUND = 5.0


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[RunningAggregator]:
    running = start_test_aggregator(
        tmp_path,
        initial_adapter=safetensors.torch.save(INITIAL),
    )
    try:
        yield running
    finally:
        running.stop(grace=0.5)


def _near(seed: int, norm: float) -> dict[str, torch.Tensor]:
    """The initial adapter plus a random delta of L2 norm `norm` (all tensors together)."""
    delta = make_adapter(seed)
    scale = norm / math.sqrt(sum(float(t.square().sum()) for t in delta.values()))
    return {k: INITIAL[k] + delta[k] * scale for k in INITIAL}


def test_an_oversized_update_is_refused_by_name_and_the_round_closes_on_the_others(
    bounded: RunningAggregator, dev_policy: Policy
) -> None:
    bounded.rounds.open_round(round_config(1, max_update_norm=BOUND))
    honest = [_near(i, 0.5 * BOUND) for i in range(3)]
    with site_client(bounded.endpoint, dev_policy, "site-9", timeout=20) as client:
        with pytest.raises(UpdateRejectedError) as refused:
            client.submit_update(_near(99, 40 * BOUND), round_id=1, num_examples=1000)
        assert refused.value.reason is RejectReason.NORM_EXCEEDED
    for i, adapter in enumerate(honest):
        with site_client(bounded.endpoint, dev_policy, f"site-{i}", timeout=20) as client:
            client.submit_update(adapter, round_id=1, num_examples=10)
    with site_client(bounded.endpoint, dev_policy, "site-0", timeout=20) as client:
        got = client.fetch_aggregate(1, wait_seconds=15).tensors()
    for name in INITIAL:  # the mean of the three honest updates only
        torch.testing.assert_close(got[name], torch.stack([h[name] for h in honest]).mean(0))

    entries = log_entries(bounded.log.path)
    opened = next(e for e in entries if e.kind is EntryKind.ROUND_OPENED)
    assert opened.fields["config"]["max_update_norm"] == BOUND  # logged with the config
    (rejected,) = [e for e in entries if e.kind is EntryKind.UPDATE_REJECTED]
    assert rejected.fields["reason"] == "norm_exceeded" and rejected.fields["client_id"] == "site-9"
    assert "has L2 norm 200" in rejected.fields["detail"] and "max_update_norm 5" in rejected.fields["detail"]
    (closed,) = [e for e in entries if e.kind is EntryKind.ROUND_CLOSED]
    assert closed.fields["participants"] == ["site-0", "site-1", "site-2"]
    assert audit_log(bounded.log.path, dev_policy).findings == ()


def test_the_bound_is_a_config_field_refused_with_dp_and_out_of_range() -> None:
    config = round_config(1, max_update_norm=2)
    assert config.max_update_norm == 2.0 and RoundConfig.from_json_obj(config.to_json_obj()) == config
    assert "max_update_norm" not in round_config(1).to_json_obj()  # absent: no bound, same digest
    with pytest.raises(ConfigError, match="max_update_norm"):
        round_config(1, max_update_norm=0)
    from test_dp import _params

    with pytest.raises(ConfigError, match="'max_update_norm' is for rounds without 'dp'"):
        round_config(1, max_update_norm=1.0, dp=_params())

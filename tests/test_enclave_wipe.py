"""Copies of plaintext that the enclave makes to fold an update in are zeroed before they
are dropped (issue 14): the DP path's float32 clip of every update, and a withheld
aggregate. What stays is what is published: the released aggregate and the global adapter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import safetensors.torch
import torch
from conftest import make_adapter, round_config
from test_dp import INITIAL, INITIAL_BYTES, _params

from aggregator._dp import DpLedger
from aggregator.enclave._aggregation import GlobalModel
from aggregator.enclave._receive import ValidatedUpdate
from fedseal.roundconfig import ApprovalParams
from fedseal.spec import AdapterSpec, WireDtype


def _update(tensors: dict[str, torch.Tensor]) -> ValidatedUpdate:
    # Only the tensors matter here; the receiver's header checks are tested elsewhere.
    return cast(ValidatedUpdate, type("Update", (), {"tensors": tensors})())


def test_the_dp_clip_of_an_update_is_zeroed_once_folded_in(tmp_path: Path) -> None:
    model = GlobalModel(INITIAL_BYTES)
    spec = AdapterSpec.from_tensors(INITIAL, dtype=WireDtype.BFLOAT16)
    config = round_config(1, adapter_spec=spec, min_clients=1, max_clients=1, dp=_params())
    plan = DpLedger.start(_params(), sum(t.numel() for t in INITIAL.values())).plan(config)
    aggregator = model.round(config, spool_dir=tmp_path, dp=plan)
    update = {n: t.to(torch.bfloat16) for n, t in make_adapter(1).items()}
    prepared = aggregator.prepare(_update(update), 7, same_spec=True, want_norm=False)
    copies = dict(prepared.take())
    assert prepared.weight == 1 and prepared.clipped  # equal weights; a random adapter is far off
    assert all(t.abs().sum() > 0 for t in copies.values())
    aggregator.accumulate(prepared, staleness=0)
    assert all(int(torch.count_nonzero(t)) == 0 for t in copies.values())
    # The update itself is the receiver's buffer (zeroed by the receiver), untouched here.
    assert all(torch.equal(update[n], make_adapter(1)[n].to(torch.bfloat16)) for n in update)
    closed = aggregator.close(wipeable=False)
    assert set(safetensors.torch.load(closed.publish())) == set(INITIAL)


def test_the_norm_of_a_bfloat16_delta_is_the_float32_norm(tmp_path: Path) -> None:
    model = GlobalModel(INITIAL_BYTES)
    spec = AdapterSpec.from_tensors(INITIAL, dtype=WireDtype.BFLOAT16)
    aggregator = model.round(round_config(1, adapter_spec=spec), spool_dir=tmp_path)
    update = {n: t.to(torch.bfloat16) for n, t in make_adapter(2).items()}
    prepared = aggregator.prepare(_update(update), 3, same_spec=True, want_norm=True)
    expected = math.sqrt(sum(float((update[n].float() - INITIAL[n]).square().sum()) for n in update))
    assert prepared.norm is not None and math.isclose(prepared.norm, expected, rel_tol=1e-5)
    assert prepared.weight == 3 and not prepared.clipped


def test_a_withheld_aggregate_is_zeroed(tmp_path: Path) -> None:
    model = GlobalModel(INITIAL_BYTES)
    approval = ApprovalParams(approvers=(bytes(range(32)),), min_approvals=1)
    config = round_config(1, min_clients=1, max_clients=1, approval=approval)
    aggregator = model.round(config, spool_dir=tmp_path)
    aggregator.accumulate(
        aggregator.prepare(_update(make_adapter(3)), 5, same_spec=True, want_norm=True), staleness=0
    )
    closed = aggregator.close(wipeable=True)
    data = closed._data  # internal: the serialized aggregate, kept zeroable for a gated round
    tensors = dict(closed._tensors or {})
    assert isinstance(data, bytearray) and any(data) and tensors
    closed.wipe()
    assert not any(data)
    assert all(int(torch.count_nonzero(t)) == 0 for t in tensors.values())

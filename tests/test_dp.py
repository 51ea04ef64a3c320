"""Central DP in the enclave: the noise matches the accountant, clipping, the budget ledger
in the log, the refusal of a round over budget, and the client's `require_dp` check."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import dp_accounting
import pytest
import safetensors.torch
import torch
from conftest import access_config, make_adapter, round_config, simulated_collector, site_client
from logfiles import log_entries

from aggregator import RunningAggregator
from aggregator._dp import DpLedger, calibrate_noise_multiplier, epsilon_after
from aggregator._server import start_aggregator
from aggregator.enclave._dp import add_noise, clip_update
from attestation import Policy
from attestation._policy import DpRequirement
from auditor import audit_log
from auditor._cli import main as audit_main
from client_sdk import DpRequirementError
from fedseal.logformat import EntryKind
from fedseal.roundconfig import ConfigError, DpParams, KrumParams

INITIAL = make_adapter(500)
INITIAL_BYTES = safetensors.torch.save(INITIAL)


def _params(**overrides: object) -> DpParams:
    fields: dict[str, object] = {
        "epsilon": 8.0,
        "delta": 1e-5,
        "clip_norm": 1.0,
        "rounds": 1,
        "initial_adapter_digest": hashlib.sha256(INITIAL_BYTES).digest(),
    }
    fields.update(overrides)
    return DpParams(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("epsilon", "delta", "rounds"), [(8.0, 1e-5, 10), (3.0, 1e-5, 20)])
def test_noise_multiplier_matches_the_accountant(epsilon: float, delta: float, rounds: int) -> None:
    params = _params(epsilon=epsilon, delta=delta, rounds=rounds)
    sigma = calibrate_noise_multiplier(params)

    # Independently: Google's PLD accountant at its default (finer) discretisation gives the
    # target epsilon for that sigma, and a 5% smaller sigma overspends.
    def eps(s: float) -> float:
        accountant = dp_accounting.pld.PLDAccountant()
        accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(s), rounds))
        return float(accountant.get_epsilon(delta))

    assert eps(sigma) == pytest.approx(epsilon, rel=5e-3)
    assert eps(sigma * 0.95) > epsilon
    assert epsilon_after(params, sigma, rounds) == pytest.approx(epsilon, rel=5e-3)
    assert epsilon_after(params, sigma, 1) < epsilon


def test_known_value_sigma_one_twenty_rounds() -> None:
    """NOTES: sigma=1, q=1, T=20, delta=1e-5 -> epsilon 28.37 (exact analytic value)."""
    params = _params(epsilon=20.0, rounds=20)
    assert epsilon_after(params, 1.0, 20) == pytest.approx(28.37, abs=0.05)


def test_added_noise_has_the_calibrated_scale() -> None:
    n, stddev = 4, 3.0
    mean = {"w": torch.zeros(400_000)}
    add_noise(mean, stddev, n)
    assert float(mean["w"].std()) == pytest.approx(stddev / n, rel=0.01)
    assert abs(float(mean["w"].mean())) < 0.01
    other = {"w": torch.zeros(400_000)}
    add_noise(other, stddev, n)
    assert not torch.equal(mean["w"], other["w"])  # fresh OS entropy each time


def test_clipping_bounds_the_delta_against_the_global_adapter() -> None:
    glob = {"a": torch.ones(3, 4), "b": torch.zeros(5)}
    update = {"a": torch.ones(3, 4) + 3.0, "b": torch.full((5,), 4.0)}
    clipped = clip_update(update, glob, 2.0)
    delta = torch.cat([(clipped.tensors[k] - glob[k]).reshape(-1) for k in glob])
    assert clipped.clipped and clipped.norm == pytest.approx(math.sqrt(12 * 9 + 5 * 16))
    assert float(delta.norm()) == pytest.approx(2.0, rel=1e-6)
    small = clip_update({"a": glob["a"] + 0.01, "b": glob["b"]}, glob, 2.0)
    assert not small.clipped
    torch.testing.assert_close(small.tensors["a"], glob["a"] + 0.01)


def test_ledger_refuses_the_round_after_the_budget() -> None:
    params = _params(rounds=2)
    ledger = DpLedger.start(params)
    first, second = ledger.charge(0), ledger.charge(1)
    assert first.epsilon_spent < second.epsilon_spent == pytest.approx(8.0, rel=5e-3)
    from aggregator._dp import DpBudgetExhaustedError, DpMismatchError

    with pytest.raises(DpBudgetExhaustedError):
        ledger.check_round(params)
    with pytest.raises(DpMismatchError):
        DpLedger.start(params).check_round(_params(rounds=2, epsilon=3.0))


def test_round_config_refuses_dp_with_robust_strategies() -> None:
    with pytest.raises(ConfigError, match="'dp' works with strategies"):
        round_config(
            1, min_clients=5, max_clients=5, strategy="krum", strategy_params=KrumParams(f=1), dp=_params()
        )


@pytest.fixture
def dp_aggregator(tmp_path: Path) -> Iterator[RunningAggregator]:
    from aggregator._config import JobConfig

    template = round_config(1, dp=_params(rounds=1)).to_json_obj()
    del template["round_id"]
    job = JobConfig.from_json_obj({"format": "fedseal-job/v1", "rounds": 2, "round_template": template})
    running = start_aggregator(
        log_path=tmp_path / "audit.log",
        log_origin="fedseal.test/log",
        collectors=[simulated_collector()],
        access=access_config(),
        job=job,
        initial_adapter=INITIAL_BYTES,
    )
    try:
        yield running
    finally:
        running.stop(grace=0.5)


def test_dp_round_over_grpc_logs_budget_and_spend_and_refuses_the_next(
    dp_aggregator: RunningAggregator, dev_policy: Policy, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two updates far from the initial adapter (clipped), one close to it (not clipped).
    adapters = [make_adapter(1), make_adapter(2), {k: v + 1e-4 for k, v in INITIAL.items()}]
    for i, adapter in enumerate(adapters):
        with site_client(dp_aggregator.endpoint, dev_policy, f"site-{i}", timeout=20) as client:
            client.submit_update(adapter, round_id=1, num_examples=100 * (i + 1))
    with site_client(dp_aggregator.endpoint, dev_policy, "site-0", timeout=20) as client:
        got = client.fetch_aggregate(1, wait_seconds=15).tensors()

    entries = log_entries(dp_aggregator.log.path)
    (budget,) = [e for e in entries if e.kind is EntryKind.DP_BUDGET]
    sigma = budget.fields["budget"]["noise_multiplier"]
    assert sigma == pytest.approx(calibrate_noise_multiplier(_params(rounds=1)), rel=1e-6)
    (closed,) = [e for e in entries if e.kind is EntryKind.ROUND_CLOSED]
    spend = closed.fields["dp"]
    assert spend["rounds_spent"] == 1 and spend["clipped"] == 2 and spend["updates"] == 3
    assert spend["epsilon_spent"] == pytest.approx(8.0, rel=5e-3)
    # The second round of the job would exceed the one-round budget: refused and logged.
    (refused,) = [e for e in entries if e.kind is EntryKind.DP_ROUND_REFUSED]
    assert refused.fields["round_id"] == 2 and "all spent" in refused.fields["reason"]
    assert not [e for e in entries if e.kind is EntryKind.ROUND_OPENED and e.fields["round_id"] == 2]

    # The aggregate is the initial adapter plus the mean clipped delta plus noise of std
    # sigma·C/n: the residual has that scale (equal weights, whatever the example counts).
    clipped = [clip_update(a, INITIAL, 1.0).tensors for a in adapters]
    expected = {k: torch.stack([c[k] for c in clipped]).mean(0) for k in INITIAL}
    residual = torch.cat([(got[k] - expected[k]).reshape(-1) for k in INITIAL])
    assert float(residual.std()) == pytest.approx(sigma * 1.0 / 3, rel=0.15)

    report = audit_log(dp_aggregator.log.path, dev_policy)
    assert report.findings == ()
    dp = report.rounds[0].dp
    assert dp is not None and dp["spend"]["epsilon_spent"] == spend["epsilon_spent"]
    assert (
        audit_main(
            ["verify", str(dp_aggregator.log.path), "--builtin-policy", "dev-insecure-allow-simulated"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "DP: budget epsilon=8 delta=1e-05 over 1 round(s)" in out and "spent after this round" in out


def test_client_policy_require_dp_is_checked_before_sending(
    dp_aggregator: RunningAggregator, dev_policy: Policy, tmp_path: Path
) -> None:
    import dataclasses

    strict = dataclasses.replace(dev_policy, require_dp=DpRequirement(max_epsilon=3.0, max_delta=1e-5))
    with (
        site_client(dp_aggregator.endpoint, strict, "site-0", timeout=20) as client,
        pytest.raises(DpRequirementError, match="epsilon=8"),
    ):
        client.submit_update(make_adapter(1), round_id=1, num_examples=1)
    assert not [e for e in log_entries(dp_aggregator.log.path) if e.kind is EntryKind.UPDATE_ACCEPTED]
    loose = dataclasses.replace(dev_policy, require_dp=DpRequirement(max_epsilon=8.0, max_delta=1e-5))
    with site_client(dp_aggregator.endpoint, loose, "site-0", timeout=20) as client:
        client.submit_update(make_adapter(1), round_id=1, num_examples=1)


def test_require_dp_refuses_a_round_without_dp(
    live_aggregator: RunningAggregator, dev_policy: Policy
) -> None:
    import dataclasses

    live_aggregator.rounds.open_round(round_config(1))
    strict = dataclasses.replace(dev_policy, require_dp=DpRequirement(max_epsilon=8.0, max_delta=1e-5))
    with (
        site_client(live_aggregator.endpoint, strict, "site-0", timeout=20) as client,
        pytest.raises(DpRequirementError, match="has no central DP"),
    ):
        client.submit_update(make_adapter(1), round_id=1, num_examples=1)


def test_policy_file_require_dp_section() -> None:
    text = (
        '{"schema": "fedseal-policy/v1", "name": "p", "required_evidence": ["nvidia-gpu"], '
        '"require_dp": {"max_epsilon": 8, "max_delta": 1e-5}}'
    )
    policy = Policy.from_json(text, source="test")
    assert policy.require_dp == DpRequirement(8.0, 1e-5)
    from attestation import PolicyError

    with pytest.raises(PolicyError, match="require_dp"):
        Policy.from_json(text.replace('"max_delta": 1e-5', '"max_delta": -1'), source="test")


def test_dp_round_without_the_named_initial_adapter_is_refused(
    tmp_path: Path, live_aggregator: RunningAggregator
) -> None:
    from aggregator._dp import DpError

    with pytest.raises(DpError, match="initial_adapter_digest"):
        live_aggregator.rounds.open_round(round_config(1, dp=_params()))
    kinds = [e.kind for e in log_entries(tmp_path / "audit.log")]
    assert EntryKind.DP_ROUND_REFUSED in kinds and EntryKind.ROUND_OPENED not in kinds

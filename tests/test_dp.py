"""Central DP in the enclave: the noise matches the accountant, clipping, the budget ledger
in the log, the refusal of a round over budget, and the client's `require_dp` check."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import dp_accounting
import pytest
import safetensors.torch
import torch
from conftest import (
    access_config,
    make_adapter,
    round_config,
    simulated_collector,
    site_client,
    start_test_aggregator,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from logfiles import log_entries, resigned_log

from aggregator import RunningAggregator
from aggregator._dp import DpBudget, DpBudgetExhaustedError, DpLedger, DpMismatchError, epsilon_after
from aggregator._server import start_aggregator
from aggregator.enclave._dp import DpNoisePlan, DpSum, clip_delta
from aggregator.enclave._noise import calibrate_secure_noise, grid_step, secure_epsilon_after
from attestation import Policy, load_builtin_policy
from attestation._policy import DpRequirement
from auditor import FindingKind, audit_log
from auditor._cli import main as audit_main
from client_sdk import DpRequirementError
from fedseal.logformat import EntryKind
from fedseal.roundconfig import AdaptiveClipParams, ConfigError, DpParams, KrumParams
from fedseal.spec import AdapterSpec

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


DIMENSION = sum(t.numel() for t in INITIAL.values())


@pytest.mark.parametrize(("epsilon", "delta", "rounds"), [(8.0, 1e-5, 10), (3.0, 1e-5, 20)])
def test_budget_is_the_secure_mechanism_calibrated_to_spend_the_budget(
    epsilon: float, delta: float, rounds: int
) -> None:
    params = _params(epsilon=epsilon, delta=delta, rounds=rounds)
    budget = DpBudget.calibrate(params, DIMENSION)
    gamma = grid_step(params.clip_norm, DIMENSION)
    calibration = calibrate_secure_noise(params, dimension=DIMENSION, gamma=gamma)
    # A fixed clip: the model noise is the whole calibrated multiplier, accounted as the
    # enclave's noise module accounts it.
    assert budget.noise_multiplier == calibration.noise_multiplier
    spent = epsilon_after(budget, rounds)
    assert spent == pytest.approx(secure_epsilon_after(params, calibration, rounds), rel=1e-12)
    assert spent <= epsilon and spent == pytest.approx(epsilon, rel=1e-3)
    assert epsilon_after(budget, 1) < epsilon
    # Independently: rounds of ½(1/z)²-zCDP, by the RDP accountant; 5% less noise overspends.
    for z, over in ((budget.noise_multiplier, False), (budget.noise_multiplier * 0.95, True)):
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.ZCDpEvent(0.5 / z**2), rounds))
        assert (float(accountant.get_epsilon(delta)) > epsilon) is over
    plan = budget.plan(params.clip_norm, 5)
    assert plan.grid_step == pytest.approx(0.01 * params.clip_norm / math.sqrt(DIMENSION))
    assert plan.noise_stddev == pytest.approx(budget.noise_multiplier * 1.01 * params.clip_norm)
    # The log names what runs: no PLD, no continuous Gaussian.
    logged = budget.to_json_obj()
    assert logged["mechanism"] == "discrete-gaussian-cks20-grid-on-sum-of-clipped-deltas"
    assert logged["accountant"] == "zcdp-rdp-dp_accounting"
    assert logged["denominator"] == "max_clients" and logged["dimension"] == DIMENSION
    assert DpBudget.from_logged(logged) == budget


def test_noise_on_the_sum_has_the_calibrated_scale_and_a_fixed_denominator() -> None:
    """DpSum over zero deltas: what is left is the noise on the sum over D, on the grid/D."""
    glob = {"w": torch.zeros(400_000)}
    spec = AdapterSpec.from_tensors(glob)
    plan = DpNoisePlan(
        clip_norm=1.0, noise_stddev=3.0, grid_step=0.01, denominator=4, count_noise_stddev=None
    )
    results = []
    for _ in range(2):
        acc = DpSum(spec, glob, plan)
        for _ in range(3):  # three updates arrived, D is 4
            acc.accumulate({"w": torch.zeros(400_000)}, 1)
        out = acc.finalize()["w"]
        assert float(out.std()) == pytest.approx(3.0 / 4, rel=0.01)
        assert abs(float(out.mean())) < 0.01
        grid = out.double() * 4 / 0.01
        assert float((grid - grid.round()).abs().max()) < 1e-3  # gamma·integer, then / D
        results.append(out)
    assert not torch.equal(results[0], results[1])  # fresh OS entropy each time


def test_clipping_bounds_the_delta_against_the_global_adapter() -> None:
    glob = {"a": torch.ones(3, 4), "b": torch.zeros(5)}
    update = {"a": torch.ones(3, 4) + 3.0, "b": torch.full((5,), 4.0)}
    clipped = clip_delta(update, glob, 2.0)
    delta = torch.cat([clipped.tensors[k].reshape(-1) for k in glob])
    assert clipped.clipped and clipped.norm == pytest.approx(math.sqrt(12 * 9 + 5 * 16))
    assert float(delta.norm()) == pytest.approx(2.0, rel=1e-6)
    small = clip_delta({"a": glob["a"] + 0.01, "b": glob["b"]}, glob, 2.0)
    assert not small.clipped
    torch.testing.assert_close(small.tensors["a"], torch.full((3, 4), 0.01))


def test_ledger_refuses_the_round_after_the_budget() -> None:
    params = _params(rounds=2)
    ledger = DpLedger.start(params, DIMENSION)
    plan = ledger.plan(round_config(1, dp=params))
    first = ledger.charge(plan, clipped=0, updates=3, noised_unclipped=None)
    second = ledger.charge(plan, clipped=1, updates=3, noised_unclipped=None)
    assert first.epsilon_spent < second.epsilon_spent == pytest.approx(8.0, rel=1e-3)
    with pytest.raises(DpBudgetExhaustedError):
        ledger.check_round(params, DIMENSION)
    with pytest.raises(DpMismatchError):
        DpLedger.start(params, DIMENSION).check_round(_params(rounds=2, epsilon=3.0), DIMENSION)
    with pytest.raises(DpMismatchError):
        DpLedger.start(params, DIMENSION).check_round(params, DIMENSION + 1)


def test_round_config_refuses_dp_with_robust_strategies() -> None:
    with pytest.raises(ConfigError, match="'dp' works with strategies"):
        round_config(
            1, min_clients=5, max_clients=5, strategy="krum", strategy_params=KrumParams(f=1), dp=_params()
        )


def _one_dp_round_job() -> object:
    from aggregator._config import JobConfig

    # D = max_clients = 4; three updates arrive and the round closes at its deadline.
    template = round_config(1, dp=_params(rounds=1), max_clients=4, deadline_seconds=6.0).to_json_obj()
    del template["round_id"]
    return JobConfig.from_json_obj({"format": "fedseal-job/v1", "rounds": 2, "round_template": template})


@pytest.fixture
def dp_aggregator(tmp_path: Path) -> Iterator[RunningAggregator]:
    running = start_test_aggregator(
        tmp_path,
        job=_one_dp_round_job(),
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
    expected_budget = DpBudget.calibrate(_params(rounds=1), DIMENSION)
    assert budget.fields["budget"] == expected_budget.to_json_obj()
    (closed,) = [e for e in entries if e.kind is EntryKind.ROUND_CLOSED]
    spend = closed.fields["dp"]
    assert spend["rounds_spent"] == 1 and spend["clipped"] == 2 and spend["updates"] == 3
    assert spend["denominator"] == 4 and spend["clip_norm"] == 1.0
    assert spend["epsilon_spent"] == pytest.approx(8.0, rel=1e-3) and spend["epsilon_spent"] <= 8.0
    plan = expected_budget.plan(1.0, 4)
    assert spend["noise_stddev"] == plan.noise_stddev and spend["grid_step"] == plan.grid_step
    # The second round of the job would exceed the one-round budget: refused and logged.
    (refused,) = [e for e in entries if e.kind is EntryKind.DP_ROUND_REFUSED]
    assert refused.fields["round_id"] == 2 and "all spent" in refused.fields["reason"]
    assert not [e for e in entries if e.kind is EntryKind.ROUND_OPENED and e.fields["round_id"] == 2]

    # The aggregate is the initial adapter plus the SUM of clipped deltas over D = 4 (not
    # over the 3 that arrived) plus noise of std sigma/D, whatever the example counts.
    clipped = [clip_delta(a, INITIAL, 1.0).tensors for a in adapters]
    expected = {k: INITIAL[k] + torch.stack([c[k] for c in clipped]).sum(0) / 4 for k in INITIAL}
    residual = torch.cat([(got[k] - expected[k]).reshape(-1) for k in INITIAL])
    # (Dividing by the 3 that arrived would give noise of std sigma/3: a third more.)
    assert float(residual.std()) == pytest.approx(plan.noise_stddev / 4, rel=0.12)

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
    assert "discrete-gaussian-cks20" in out


@dataclasses.dataclass(frozen=True)
class DpLog:
    """A DP job's finished log and what re-signs it: the enclave's key, a forger's only tool."""

    path: Path
    origin: str
    log_key: Ed25519PrivateKey


@pytest.fixture(scope="module")
def fixed_clip_log(tmp_path_factory: pytest.TempPathFactory) -> DpLog:
    """dp_aggregator's round, once for the module: three updates, all clipped, D = 4."""
    policy = load_builtin_policy("dev-insecure-allow-simulated")
    running = start_test_aggregator(
        tmp_path_factory.mktemp("dp-fixed"), job=_one_dp_round_job(), initial_adapter=INITIAL_BYTES
    )
    try:
        for i in range(3):
            with site_client(running.endpoint, policy, f"site-{i}", timeout=20) as client:
                client.submit_update(make_adapter(i + 1), round_id=1, num_examples=1)
        with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
            client.fetch_aggregate(1, wait_seconds=15)
        log = DpLog(running.log.path, running.log.origin, running.keys.log_private_key)
    finally:
        running.stop(grace=0.5)
    assert audit_log(log.path, policy).findings == ()
    (spend,) = [e.fields["dp"] for e in log_entries(log.path) if e.kind is EntryKind.ROUND_CLOSED]
    assert (spend["updates"], spend["clipped"], spend["denominator"]) == (3, 3, 4)
    return log


def _dp_findings_in_edited_log(
    log: DpLog, out: Path, kind: EntryKind, change: dict[str, object], nth: int = 0
) -> list[str]:
    """The auditor's invalid_dp_spend messages once the `nth` entry of `kind` has `change`
    in its DP figures (`round_closed.dp` or `dp_budget.budget`), the log re-signed."""
    entry = [e for e in log_entries(log.path) if e.kind is kind][nth]
    key = "dp" if kind is EntryKind.ROUND_CLOSED else "budget"
    # Compared as JSON: `true` is another value than 1.
    assert all(json.dumps(entry.fields[key].get(k)) != json.dumps(v) for k, v in change.items()), (
        "an edit must change a figure"
    )
    fields = {**entry.fields, key: {**entry.fields[key], **change}}
    edited = resigned_log(log.path, out, log.origin, log.log_key, entry.index, fields)
    report = audit_log(edited, load_builtin_policy("dev-insecure-allow-simulated"))
    return [f.message for f in report.findings if f.kind is FindingKind.INVALID_DP_SPEND]


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        (EntryKind.ROUND_CLOSED, {"epsilon_spent": 1.5}, "epsilon_spent 1.5, recomputed"),
        (EntryKind.ROUND_CLOSED, {"denominator": 3}, "is not the round's max_clients 4"),
        (EntryKind.ROUND_CLOSED, {"noise_stddev": 0.01}, "noise_stddev 0.01, recomputed"),
        (EntryKind.ROUND_CLOSED, {"clip_norm": 5.5}, "but the round had to use 1.0"),
        (EntryKind.ROUND_CLOSED, {"grid_step": 0.0003}, "round 1's DP spend: grid_step 0.0003, recomputed"),
        (
            EntryKind.ROUND_CLOSED,
            {"rounds_spent": 2},
            "round 1's DP spend: rounds_spent 2, but it is DP round 1",
        ),
        (EntryKind.ROUND_CLOSED, {"epsilon_budget": 8.5}, "epsilon_budget 8.5 is not the budget's 8.0"),
        (EntryKind.ROUND_CLOSED, {"delta": 0.001}, "delta 0.001 is not the budget's 1e-05"),
        (EntryKind.ROUND_CLOSED, {"noise_multiplier": 0.05}, "noise_multiplier 0.05 is not the budget's"),
        (EntryKind.ROUND_CLOSED, {"updates": 2}, "updates 2 / clipped 3 for 3 participant(s)"),
        (EntryKind.ROUND_CLOSED, {"clipped": 4}, "updates 3 / clipped 4 for 3 participant(s)"),
        (EntryKind.ROUND_CLOSED, {"clipped": -1}, "updates 3 / clipped -1 for 3 participant(s)"),
        # JSON's true is no count, though Python would compare it equal to 1.
        (EntryKind.ROUND_CLOSED, {"clipped": True}, "updates 3 / clipped True for 3 participant(s)"),
        (EntryKind.ROUND_CLOSED, {"rounds_spent": True}, "rounds_spent True, but it is DP round 1"),
        (EntryKind.ROUND_CLOSED, {"next_clip_norm": 1.0}, "a fixed-clip round records an adaptive clip's"),
        (EntryKind.DP_BUDGET, {"noise_multiplier": 0.1}, "more than the budget's 8"),
        (EntryKind.DP_BUDGET, {"accountant": "pld"}, "re-derives"),
        (EntryKind.DP_BUDGET, {"zcdp_rho_per_round": 0.25}, "dp_budget: zcdp_rho_per_round 0.25 is not"),
        (EntryKind.DP_BUDGET, {"epsilon_planned": 7.5}, "dp_budget: epsilon_planned 7.5 is not"),
        (EntryKind.DP_BUDGET, {"denominator": "updates"}, "dp_budget: denominator 'updates' is not"),
        (EntryKind.DP_BUDGET, {"count_noise_stddev": 5.5}, "dp_budget: count noise 5.5"),
    ],
)
def test_the_auditor_re_derives_every_dp_figure_even_under_valid_checkpoints(
    fixed_clip_log: DpLog,
    tmp_path: Path,
    kind: EntryKind,
    change: dict[str, object],
    message: str,
) -> None:
    """An enclave whose key re-signs the log over an edited DP figure (a buggy or subverted
    one): the auditor's own re-derivation from the other logged numbers catches it."""
    findings = _dp_findings_in_edited_log(fixed_clip_log, tmp_path / "edited.log", kind, change)
    assert any(message in f for f in findings), findings


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


def _dp_job(rounds: int, dp_rounds: int) -> object:
    from aggregator._config import JobConfig

    template = round_config(1, dp=_params(rounds=dp_rounds), min_clients=1, max_clients=1).to_json_obj()
    del template["round_id"]
    return JobConfig.from_json_obj({"format": "fedseal-job/v1", "rounds": rounds, "round_template": template})


def _start_on(log: Path, job: object) -> RunningAggregator:
    return start_aggregator(
        log_path=log,
        log_origin="fedseal.test/log",
        collectors=[simulated_collector()],
        access=access_config(),
        job=job,  # type: ignore[arg-type]
        initial_adapter=INITIAL_BYTES,
    )


def _submit_and_fetch(running: RunningAggregator, policy: Policy, round_id: int) -> None:
    with site_client(running.endpoint, policy, f"site-{round_id}", timeout=20) as client:
        client.submit_update(make_adapter(round_id), round_id=round_id, num_examples=1)
        client.fetch_aggregate(round_id, wait_seconds=15)


def test_a_dp_job_keeps_its_spent_budget_across_restarts(tmp_path: Path, dev_policy: Policy) -> None:
    """The ledger is read back from the log by the restarted enclave: the spend goes on from
    where it was (no second dp_budget, no reset), and a round over the budget is refused."""
    log = tmp_path / "audit.log"
    first = _start_on(log, _dp_job(rounds=3, dp_rounds=2))
    try:
        _submit_and_fetch(first, dev_policy, 1)  # DP round 1 of 2; round 2 opens
        assert first.rounds.snapshot(2).state.value == "open"
    finally:
        first.stop(grace=0.5)  # round 2 is left open: the next enclave records it abandoned

    second = _start_on(log, _dp_job(rounds=3, dp_rounds=2))
    try:
        _submit_and_fetch(second, dev_policy, 3)  # DP round 2 of 2, in a new enclave
    finally:
        second.stop(grace=0.5)

    # A job that asks for more: its next round (4) would be DP round 3 of 2. Refused (and
    # logged) when the restarted enclave opens it, so the aggregator does not start serving it.
    with pytest.raises(DpBudgetExhaustedError, match="covers 2 round"):
        _start_on(log, _dp_job(rounds=5, dp_rounds=2))

    entries = log_entries(log)
    assert len([e for e in entries if e.kind is EntryKind.ENCLAVE_STARTED]) == 3
    assert len([e for e in entries if e.kind is EntryKind.DP_BUDGET]) == 1  # the ledger never restarts
    spends = [e.fields["dp"] for e in entries if e.kind is EntryKind.ROUND_CLOSED]
    assert [s["rounds_spent"] for s in spends] == [1, 2]
    budget = DpBudget.calibrate(_params(rounds=2), DIMENSION)
    assert spends[0]["epsilon_spent"] == pytest.approx(epsilon_after(budget, 1))
    assert spends[1]["epsilon_spent"] == pytest.approx(epsilon_after(budget, 2))
    assert spends[1]["epsilon_spent"] <= 8.0
    (refused,) = [e for e in entries if e.kind is EntryKind.DP_ROUND_REFUSED]
    assert refused.fields["round_id"] == 4 and "all spent" in refused.fields["reason"]
    report = audit_log(log, dev_policy)
    assert report.findings == ()


def test_a_dp_log_that_does_not_chain_refuses_dp_rounds_after_a_restart() -> None:
    """Fail closed: a budget or spend the restarted enclave cannot read back opens no DP round."""
    from aggregator._dp import DpError

    budget = DpBudget.calibrate(_params(rounds=3), DIMENSION)
    logged = budget.to_json_obj()
    plan = budget.plan(1.0, 1)
    spend = DpLedger(budget).charge(plan, clipped=0, updates=1, noised_unclipped=None).to_json_obj(budget)
    ledger = DpLedger.resume(logged, [spend])
    assert ledger.rounds_spent == 1
    with pytest.raises(DpError, match="does not chain"):
        DpLedger.resume(logged, [spend, spend])
    with pytest.raises(DpError, match="not one this enclave writes"):
        DpLedger.resume({**logged, "accountant": "pld"}, [])
    with pytest.raises(DpError, match="not one this enclave writes"):
        DpLedger.resume({**logged, "noise_multiplier": 0.05}, [])  # figures that do not follow
    with pytest.raises(DpError, match="exceed its own epsilon"):  # consistent, but over budget
        DpLedger.resume(DpBudget(_params(rounds=3), DIMENSION, 0.05).to_json_obj(), [])


# ----------------------------------------------------------------------------- adaptive clipping


def _adaptive(**overrides: float) -> DpParams:
    clip = {"target_quantile": 0.5, "learning_rate": 0.5, "clipped_count_stddev": 5.0, **overrides}
    return _params(rounds=3, adaptive_clip=AdaptiveClipParams(**clip))


def test_adaptive_clip_config_reads_back_and_refuses_what_it_cannot_run() -> None:
    params = _adaptive()
    obj = params.to_json_obj()
    assert "clip_norm" not in obj
    assert obj["clip"] == {
        "mode": "adaptive",
        "target_quantile": 0.5,
        "learning_rate": 0.5,
        "clipped_count_stddev": 5.0,
        "initial_clip": 1.0,
    }
    assert DpParams.from_json_obj(obj) == params
    assert DpParams.from_json_obj(_params().to_json_obj()).adaptive_clip is None  # fixed: the default
    for bad, match in (
        ({**obj, "clip_norm": 1.0}, "one of 'clip_norm'"),
        ({**obj, "clip": {**obj["clip"], "mode": "fixed"}}, "'mode': 'adaptive'"),
        ({**obj, "clip": {**obj["clip"], "target_quantile": 1.0}}, "target_quantile"),
        ({**obj, "clip": {**obj["clip"], "clipped_count_stddev": 0}}, "clipped_count_stddev"),
    ):
        with pytest.raises(ConfigError, match=match):
            DpParams.from_json_obj(bad)


def test_adaptive_clip_accounts_both_releases() -> None:
    """The count's noise and the model's compose (zCDP adds): together they spend what the
    calibrated total multiplier alone would, and more than the model noise alone."""
    params = _adaptive()
    budget = DpBudget.calibrate(params, DIMENSION)
    total = calibrate_secure_noise(params, dimension=DIMENSION, gamma=grid_step(1.0, DIMENSION))
    assert budget.noise_multiplier > total.noise_multiplier  # the model gets less than all of it
    rho_model, rho_count = budget.rho_per_round
    assert rho_model == pytest.approx(0.5 / budget.noise_multiplier**2) and rho_count == pytest.approx(
        0.5 / 25
    )
    assert rho_model + rho_count == pytest.approx(0.5 / total.noise_multiplier**2, rel=1e-9)
    spent = epsilon_after(budget, 3)
    assert spent == pytest.approx(secure_epsilon_after(params, total, 3), rel=1e-9) and spent <= 8.0
    model_only = DpBudget.calibrate(_params(rounds=3), DIMENSION)
    assert epsilon_after(DpBudget(model_only.params, DIMENSION, budget.noise_multiplier), 3) < spent
    logged = budget.to_json_obj()
    assert logged["count_mechanism"] == "discrete-gaussian-cks20-on-unclipped-count"
    assert logged["count_noise_stddev"] == 5.0
    from aggregator._dp import DpError

    with pytest.raises(DpError, match="must exceed the job's total noise multiplier"):
        DpBudget.calibrate(_adaptive(clipped_count_stddev=0.5), DIMENSION)


def test_the_released_unclipped_count_has_the_configured_noise() -> None:
    glob = {"w": torch.zeros(4)}
    spec = AdapterSpec.from_tensors(glob)
    plan = DpNoisePlan(
        clip_norm=1.0, noise_stddev=1.0, grid_step=0.01, denominator=10, count_noise_stddev=4.0
    )
    counts = []
    for _ in range(400):
        acc = DpSum(spec, glob, plan)
        for clipped in (True, False, False):
            acc.accumulate({"w": torch.zeros(4)}, 1)
            acc.note(clipped=clipped)
        acc.finalize()
        assert acc.noised_unclipped_count is not None
        counts.append(acc.noised_unclipped_count)
    sample = torch.tensor(counts, dtype=torch.float64)
    assert abs(float(sample.mean()) - 2.0) < 5 * 4.0 / math.sqrt(400)
    assert float(sample.std()) == pytest.approx(4.0, rel=0.15)


def test_adaptive_clip_over_grpc_logs_each_rounds_clip_and_spend(tmp_path: Path, dev_policy: Policy) -> None:
    from aggregator._config import JobConfig

    params = _adaptive()
    template = round_config(1, dp=params, min_clients=2, max_clients=2).to_json_obj()
    del template["round_id"]
    job = JobConfig.from_json_obj({"format": "fedseal-job/v1", "rounds": 3, "round_template": template})
    running = _start_on(tmp_path / "audit.log", job)
    try:
        for rid in (1, 2, 3):
            for i in range(2):
                with site_client(running.endpoint, dev_policy, f"site-{i}", timeout=20) as client:
                    client.submit_update(make_adapter(10 * rid + i), round_id=rid, num_examples=1)
            with site_client(running.endpoint, dev_policy, "site-0", timeout=20) as client:
                client.fetch_aggregate(rid, wait_seconds=15)
    finally:
        running.stop(grace=0.5)
    entries = log_entries(tmp_path / "audit.log")
    spends = [e.fields["dp"] for e in entries if e.kind is EntryKind.ROUND_CLOSED]
    budget = DpBudget.calibrate(params, DIMENSION)
    clip = 1.0
    for t, spend in enumerate(spends, start=1):
        assert spend["clip_norm"] == pytest.approx(clip)  # the clip each round used, logged
        assert spend["epsilon_spent"] == pytest.approx(epsilon_after(budget, t))  # both releases
        following = clip * math.exp(-0.5 * (spend["noised_unclipped_count"] / 2 - 0.5))
        assert spend["next_clip_norm"] == pytest.approx(following)
        assert spend["noise_stddev"] == pytest.approx(budget.plan(clip, 2).noise_stddev)
        clip = following
    assert [s["rounds_spent"] for s in spends] == [1, 2, 3] and spends[-1]["epsilon_spent"] <= 8.0
    assert audit_log(tmp_path / "audit.log", dev_policy).findings == ()


@pytest.fixture(scope="module")
def adaptive_clip_log(tmp_path_factory: pytest.TempPathFactory) -> DpLog:
    """Two rounds of an adaptive clip (the budget covers three), two updates each, D = 2."""
    from aggregator._config import JobConfig

    policy = load_builtin_policy("dev-insecure-allow-simulated")
    template = round_config(1, dp=_adaptive(), min_clients=2, max_clients=2).to_json_obj()
    del template["round_id"]
    job = JobConfig.from_json_obj({"format": "fedseal-job/v1", "rounds": 2, "round_template": template})
    running = _start_on(tmp_path_factory.mktemp("dp-adaptive") / "audit.log", job)
    try:
        for rid in (1, 2):
            for i in range(2):
                with site_client(running.endpoint, policy, f"site-{i}", timeout=20) as client:
                    client.submit_update(make_adapter(10 * rid + i), round_id=rid, num_examples=1)
            with site_client(running.endpoint, policy, "site-0", timeout=20) as client:
                client.fetch_aggregate(rid, wait_seconds=15)
        log = DpLog(running.log.path, running.log.origin, running.keys.log_private_key)
    finally:
        running.stop(grace=0.5)
    assert audit_log(log.path, policy).findings == ()
    spends = [e.fields["dp"] for e in log_entries(log.path) if e.kind is EntryKind.ROUND_CLOSED]
    assert len(spends) == 2 and spends[1]["clip_norm"] == spends[0]["next_clip_norm"]
    return log


# An adaptive clip is always C·exp(-0.5·(count/2 - 0.5)) for an integer count: never 0.123.
@pytest.mark.parametrize(
    ("kind", "nth", "change", "message"),
    [
        (
            EntryKind.ROUND_CLOSED,
            0,
            {"next_clip_norm": 0.123},
            "round 1's DP spend: next_clip_norm 0.123, recomputed",
        ),
        (
            EntryKind.ROUND_CLOSED,
            1,
            {"next_clip_norm": 0.123},
            "round 2's DP spend: next_clip_norm 0.123, recomputed",
        ),
        (
            EntryKind.ROUND_CLOSED,
            1,
            {"clip_norm": 0.123},
            "round 2's DP spend: clip_norm 0.123, but the round had to use",
        ),
        (
            EntryKind.ROUND_CLOSED,
            0,
            {"noised_unclipped_count": 1.5},
            "round 1's DP spend: an adaptive clip round without",
        ),
        (EntryKind.DP_BUDGET, 0, {"count_noise_stddev": 4.5}, "dp_budget: count noise 4.5"),
    ],
)
def test_the_auditor_re_derives_every_adaptive_clip_figure_even_under_valid_checkpoints(
    adaptive_clip_log: DpLog,
    tmp_path: Path,
    kind: EntryKind,
    nth: int,
    change: dict[str, object],
    message: str,
) -> None:
    """The adaptive clip's chain, re-derived: each round's next clip from its released count,
    and the clip the following round had to use, even in a log the enclave's key re-signed."""
    findings = _dp_findings_in_edited_log(adaptive_clip_log, tmp_path / "edited.log", kind, change, nth)
    assert any(message in f for f in findings), findings


def test_a_restarted_enclave_clips_against_its_initial_adapter(tmp_path: Path, dev_policy: Policy) -> None:
    """docs/threat-model.md: until its next release, a restarted enclave clips DP rounds
    against its --initial-adapter (the globals released before the restart are not in its
    memory). Round 1's release, sent back unchanged in the next enclave's round, is no step
    from that release but far from the initial adapter: it is clipped."""
    log = tmp_path / "audit.log"
    first = _start_on(log, _dp_job(rounds=3, dp_rounds=2))
    try:
        with site_client(first.endpoint, dev_policy, "site-1", timeout=20) as client:
            client.submit_update(make_adapter(1), round_id=1, num_examples=1)
            released = safetensors.torch.load(bytes(client.fetch_aggregate(1, wait_seconds=15).data))
    finally:
        first.stop(grace=0.5)
    step = math.sqrt(sum(float((released[k] - INITIAL[k]).pow(2).sum()) for k in INITIAL))
    assert step > 1.0  # the clip norm: clipped against the initial adapter, not against the release

    second = _start_on(log, _dp_job(rounds=3, dp_rounds=2))
    try:
        with site_client(second.endpoint, dev_policy, "site-3", timeout=20) as client:
            client.submit_update(released, round_id=3, num_examples=1)
            client.fetch_aggregate(3, wait_seconds=15)
    finally:
        second.stop(grace=0.5)
    spends = {
        e.fields["round_id"]: e.fields["dp"] for e in log_entries(log) if e.kind is EntryKind.ROUND_CLOSED
    }
    assert spends[3]["clipped"] == 1 and spends[3]["updates"] == 1

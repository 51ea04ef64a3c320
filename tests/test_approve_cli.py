"""`fedseal-approve` in-process against a live gated round: the brief shows the numbers the
log carries (participants, the sites' aggregated metrics, data cards, refusals; a DP round's
spend and budget; a lora-exact round's residuals, worst first), and the approver's signed
decision goes through SubmitApproval and is logged."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from conftest import make_adapter, round_config, serving_aggregator, site_client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from log_samples import sample_bodies
from logfiles import log_entries
from test_approval import APPROVERS, GATE, running  # noqa: F401  (the live aggregator fixture)
from test_data_governance import _send, card
from test_dp import DIMENSION, _dp_job, _params, _start_on, _submit_and_fetch
from test_mixed_ranks import MODULES, adapter, lora_config

from aggregator import RunningAggregator
from aggregator._dp import DpBudget, epsilon_after
from aggregator._log import AuditLog
from attestation import Policy
from auditor import audit_log
from client_sdk import UpdateRejectedError, _approve
from client_sdk._approve import main, read_approval_brief
from client_sdk.validation import validate_text
from fedseal.logformat import MAX_RECORD_BYTES, EntryKind
from fedseal.logschema import DpBudgetRecorded, EnclaveStarted, RoundClosed

POLICY = "dev-insecure-allow-simulated"
SENT = {"site-0": (10, 2.0), "site-1": (30, 1.0), "site-2": (60, 0.5)}


def _pem(tmp_path: Path, key: Ed25519PrivateKey, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return path


@pytest.fixture
def gated(running: RunningAggregator, dev_policy: Policy) -> RunningAggregator:  # noqa: F811
    running.rounds.open_round(round_config(1, approval=GATE))
    with site_client(running.endpoint, dev_policy, "site-3", timeout=20) as client:
        sub = client.seal_update(make_adapter(3), round_id=1, num_examples=5, data_card=card("site-3"))
    with pytest.raises(UpdateRejectedError):
        _send(running.endpoint, dev_policy, sub, data_card=card("site-9").canonical_bytes())
    for i, (site, (n, loss)) in enumerate(SENT.items()):
        with site_client(running.endpoint, dev_policy, site, timeout=20) as client:
            client.submit_update(
                make_adapter(i),
                round_id=1,
                num_examples=n,
                metrics={"train_loss": loss},
                data_card=card(site),
            )
    running.rounds.wait_closed(1, 10.0)
    return running


def _run(argv: list[str], stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    return main(argv, stdin=io.StringIO(stdin), stdout=out), out.getvalue()


def test_brief_shows_the_numbers_and_decisions_are_signed_and_logged(
    gated: RunningAggregator, dev_policy: Policy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = gated.log.path
    brief = read_approval_brief(log, 1)
    expected_loss = sum(n * v for n, v in SENT.values()) / sum(n for n, _ in SENT.values())
    assert brief.metrics["client.train_loss"] == pytest.approx(expected_loss)
    assert [s.client_id for s in brief.sites] == ["site-0", "site-1", "site-2"]
    assert [s.num_examples for s in brief.sites] == [10, 30, 60]
    assert all(s.data_card_digest for s in brief.sites)
    assert brief.rejections == {"data_card_mismatch": 1}
    (closed,) = [e.body for e in log_entries(log) if isinstance(e.body, RoundClosed)]
    assert brief.aggregate_digest == closed.aggregate_digest

    code, text = _run(["show", str(log), "--round", "1"])
    assert code == 0
    assert closed.aggregate_digest.hex() in text
    assert f"client.train_loss: {expected_loss:.6g}" in text
    assert "data_card_mismatch 1" in text and "site-1: 30 examples" in text

    key0 = _pem(tmp_path, APPROVERS[0], "a0.pem")
    common = ["--round", "1", "--endpoint", gated.endpoint, "--policy", POLICY]
    # Not confirmed on the terminal: nothing signed or sent.
    code, _ = _run(["approve", str(log), "--key", str(key0), *common], stdin="no\n")
    assert code == 2
    assert not [e for e in log_entries(log) if e.kind is EntryKind.APPROVAL_RECORDED]
    # An approver the round does not list is refused by the aggregator (exit 1).
    stranger = _pem(tmp_path, Ed25519PrivateKey.from_private_bytes(b"\x05" * 32), "x.pem")
    code, _ = _run(["approve", str(log), "--key", str(stranger), *common, "--yes"])
    assert code == 1
    assert "refused the decision (unknown_approver)" in capsys.readouterr().err
    code, text = _run(["approve", str(log), "--key", str(key0), *common], stdin="approve\n")
    assert code == 0 and "pending (1 of 2 approvals)" in text
    code, text = _run(
        ["approve", str(log), "--key", str(_pem(tmp_path, APPROVERS[1], "a1.pem")), *common, "--yes"]
    )
    assert code == 0 and "released" in text
    code, text = _run(["show", str(log), "--round", "1"])
    assert "approve" in text.split("Decisions so far:")[1]
    with site_client(gated.endpoint, dev_policy, "site-0", timeout=20) as client:
        assert client.fetch_aggregate(1, wait_seconds=5).metrics == {
            "train_loss": pytest.approx(expected_loss)
        }
    assert audit_log(log, dev_policy).findings == ()


def test_show_prints_validation_results_and_metrics_beside_earlier_rounds(
    running: RunningAggregator,  # noqa: F811
    dev_policy: Policy,
) -> None:
    """docs/data-card.md: `show` prints the sites' validation results and the aggregated
    metrics beside earlier rounds'."""
    first = {"site-0": (10, 4.0), "site-1": (30, 3.0), "site-2": (60, 2.0)}
    running.rounds.open_round(round_config(1))
    for i, (site, (n, loss)) in enumerate(first.items()):
        with site_client(running.endpoint, dev_policy, site, timeout=20) as client:
            client.submit_update(make_adapter(i), round_id=1, num_examples=n, metrics={"train_loss": loss})
    running.rounds.wait_closed(1, 10.0)

    passing = validate_text([f"record {i}" for i in range(20)])
    failing = validate_text(["record", "record", ""])
    assert passing.passed and not failing.passed
    validations = {"site-0": passing, "site-1": failing, "site-2": None}
    running.rounds.open_round(round_config(2, approval=GATE))
    for i, (site, (n, loss)) in enumerate(SENT.items()):
        with site_client(running.endpoint, dev_policy, site, timeout=20) as client:
            client.submit_update(
                make_adapter(i),
                round_id=2,
                num_examples=n,
                metrics={"train_loss": loss},
                validation=validations[site],
            )
    running.rounds.wait_closed(2, 10.0)

    def mean(sent: dict[str, tuple[int, float]]) -> float:
        return sum(n * v for n, v in sent.values()) / sum(n for n, _ in sent.values())

    code, text = _run(["show", str(running.log.path), "--round", "2"])
    assert code == 0
    lines = text.splitlines()
    site_lines = {line.split(":")[0].strip(): line for line in lines if ": " in line and "examples," in line}
    assert site_lines["site-0"].endswith(", validation passed")
    assert site_lines["site-1"].endswith(", validation FAILED")
    assert site_lines["site-2"].endswith(", no validation")
    assert f"  client.train_loss: {mean(SENT):.6g}   (r1={mean(first):.6g})" in lines
    assert "  client_reports: 3   (r1=3)" in lines
    # Round 1's own brief has no earlier round to show beside it.
    code, text = _run(["show", str(running.log.path), "--round", "1"])
    assert code == 0 and f"  client.train_loss: {mean(first):.6g}" in text.splitlines()
    assert "(r" not in text


def test_refuse_and_bad_input(
    gated: RunningAggregator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = gated.log.path
    common = ["--round", "1", "--endpoint", gated.endpoint, "--policy", POLICY, "--yes"]
    assert _run(["show", str(log), "--round", "9"])[0] == 2
    assert "no round_closed entry for round 9" in capsys.readouterr().err
    assert _run(["show", str(tmp_path / "absent.log"), "--round", "1"])[0] == 2
    not_a_key = tmp_path / "k.pem"
    not_a_key.write_text("nope")
    assert _run(["refuse", str(log), "--key", str(not_a_key), *common])[0] == 2
    assert "not an unencrypted PEM private key" in capsys.readouterr().err
    code, text = _run(["refuse", str(log), "--key", str(_pem(tmp_path, APPROVERS[2], "a2.pem")), *common])
    assert code == 0 and "withheld" in text
    kinds = [e.kind for e in log_entries(log)]
    assert EntryKind.AGGREGATE_WITHHELD in kinds


def test_a_dp_rounds_brief_shows_the_logged_spend_budget_and_remainder(
    tmp_path: Path, dev_policy: Policy
) -> None:
    """A DP job of two rounds under epsilon 8: after round 1 the brief shows what the log says
    was spent, of what budget, and what is left for the rest of the job."""
    log = tmp_path / "audit.log"
    live = _start_on(log, _dp_job(rounds=2, dp_rounds=2))
    try:
        _submit_and_fetch(live, dev_policy, 1)
    finally:
        live.stop(grace=0.5)
    (budget,) = [e.body for e in log_entries(log) if isinstance(e.body, DpBudgetRecorded)]
    (closed,) = [e.body for e in log_entries(log) if isinstance(e.body, RoundClosed)]
    assert closed.dp is not None
    spent = closed.dp["epsilon_spent"]
    # The logged figures are the job's own: not zero, not the whole budget.
    assert budget.budget["params"]["epsilon"] == 8.0
    assert spent == pytest.approx(epsilon_after(DpBudget.calibrate(_params(rounds=2), DIMENSION), 1))
    assert 0 < spent < 8.0 and closed.dp["clipped"] == 1  # make_adapter(1) is far from INITIAL

    brief = read_approval_brief(log, 1)
    assert brief.dp == closed.dp
    assert brief.epsilon_budget == 8.0
    assert brief.epsilon_remaining == pytest.approx(8.0 - spent)

    code, text = _run(["show", str(log), "--round", "1"])
    assert code == 0
    dp_section = text.split("Differential privacy:\n")[1].splitlines()[0]
    assert dp_section == (
        f"  epsilon spent {spent:.6g} of 8 (remaining {8.0 - spent:.6g}), delta 1e-05, clipped 1 of 1 updates"
    )


def _low_rank_q(update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`update` with its q_proj factors cut to rank 2: three sites sum to rank 6 or less,
    which the output rank 8 holds exactly (residual 0); v_proj keeps its full ranks."""
    (q_a, q_b), _ = MODULES
    out = dict(update)
    out[q_a] = update[q_a].clone()
    out[q_a][2:] = 0
    out[q_b] = update[q_b].clone()
    out[q_b][:, 2:] = 0
    return out


def test_a_lora_exact_rounds_brief_shows_the_logged_residuals_worst_first(
    tmp_path: Path, dev_policy: Policy
) -> None:
    with serving_aggregator(tmp_path) as live:
        live.rounds.open_round(lora_config(1))
        for i, rank in enumerate((4, 8, 16)):
            with site_client(live.endpoint, dev_policy, f"site-{i}", timeout=20) as client:
                client.submit_update(
                    _low_rank_q(adapter(rank, 200 + i)), round_id=1, num_examples=10 * (i + 1)
                )
        live.rounds.wait_closed(1, 20.0)
        log = live.log.path
    (closed,) = [e.body for e in log_entries(log) if isinstance(e.body, RoundClosed)]
    assert closed.strategy == "lora-exact" and closed.lora_residuals is not None
    logged = {r.module: r.residual for r in closed.lora_residuals}
    q, v = (r.module for r in closed.lora_residuals)  # the log lists q_proj first ...
    assert "q_proj" in q and "v_proj" in v
    assert logged[q] < 1e-4 and logged[v] > 0.1  # ... but v_proj is the worse one

    brief = read_approval_brief(log, 1)
    assert brief.lora_residuals == ((v, logged[v]), (q, logged[q]))
    assert brief.dp is None and brief.epsilon_remaining is None

    code, text = _run(["show", str(log), "--round", "1"])
    assert code == 0
    assert f"Exact LoRA residuals (worst of 2): {v} {logged[v]:.4f}, {q} {logged[q]:.4f}\n" in text
    assert "Differential privacy:\n  none (this round adds no noise)\n" in text


@pytest.fixture
def closed_log(tmp_path: Path) -> Path:
    """A log holding one closed, gated round (round 2), from the aggregator's log writer:
    enough for a brief, with no aggregator running."""
    bodies = sample_bodies()
    started = bodies[EntryKind.ENCLAVE_STARTED]
    assert isinstance(started, EnclaveStarted)
    log = AuditLog.open(tmp_path / "audit.log", started.log_origin, Ed25519PrivateKey.generate())
    try:
        log.start_enclave(started)
        log.append(bodies[EntryKind.ROUND_CLOSED])
    finally:
        log.close()
    return log.path


@pytest.mark.parametrize("command", ["approve", "refuse"])
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--endpoint", "nothost"),
        ("--endpoint", "host:abc"),
        ("--endpoint", "127.0.0.1:99999"),
        ("--endpoint", "127.0.0.1:0"),
        ("--endpoint", "127.0.0.1:-1"),
        ("--endpoint", "a" * 100 + ":1"),
        ("--endpoint", "h\udcff:1"),  # a non-UTF-8 byte in argv
        ("--timeout", "nan"),
        ("--timeout", "0"),
    ],
)
def test_a_bad_endpoint_or_timeout_is_a_usage_error_before_anything_is_signed(
    closed_log: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    flag: str,
    value: str,
) -> None:
    done: list[str] = []
    monkeypatch.setattr(_approve, "sign_approval", lambda *a, **k: done.append("signed"))
    monkeypatch.setattr(_approve, "FedSealClient", lambda *a, **k: done.append("sent"))
    options = {"--endpoint": "127.0.0.1:1", "--timeout": "5", flag: value}
    argv = [command, str(closed_log), "--round", "2", "--key", str(_pem(tmp_path, APPROVERS[0], "a0.pem"))]
    argv += ["--policy", POLICY, "--yes", *(x for kv in options.items() for x in kv)]
    with pytest.raises(SystemExit) as stop:
        _run(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: " in err and "Traceback" not in err
    assert done == []  # nothing signed, nothing sent


def test_a_line_longer_than_any_log_record_is_refused_without_reading_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As /dev/zero reads: no newline within a record's maximum length."""
    log = tmp_path / "endless.log"
    log.write_bytes(b"\0" * (MAX_RECORD_BYTES + 1))
    code, text = _run(["show", str(log), "--round", "1"])
    assert code == 2 and text == ""
    err = capsys.readouterr().err
    assert f"endless.log line 1 is longer than a log record ({MAX_RECORD_BYTES} bytes)" in err
    assert err.count("\n") == 1 and "Traceback" not in err

"""Policy loading: builtin policies, strict schema, errors that name the key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from attestation import (
    POLICY_SCHEMA,
    EvidenceKind,
    Policy,
    PolicyError,
    builtin_policy_names,
    load_builtin_policy,
    simulated_measurement,
)
from attestation._policy import _KNOWN_KEYS

MEASUREMENT = simulated_measurement("fedseal-aggregator dev")
# Marks a key to leave out of the generated policy document.
_ABSENT = object()


def _policy_json(**overrides: object) -> str:
    document: dict[str, object] = {
        "schema": POLICY_SCHEMA,
        "name": "test",
        "required_evidence": ["simulated-insecure-tee"],
        "allow_insecure_simulated_evidence": True,
    }
    document.update(overrides)
    return json.dumps({k: v for k, v in document.items() if v is not _ABSENT})


def test_default_policy_is_production() -> None:
    policy = load_builtin_policy("default")
    assert policy.name == "default"
    assert policy.allow_insecure_simulated_evidence is False
    assert policy.required_evidence == (EvidenceKind.NVIDIA_GPU,)
    assert policy.simulated_measurements is None
    assert policy.source == "builtin:default"
    assert policy.description


def test_dev_policy_allows_simulated() -> None:
    policy = load_builtin_policy("dev-insecure-allow-simulated")
    assert policy.allow_insecure_simulated_evidence is True
    assert policy.required_evidence == (EvidenceKind.SIMULATED_INSECURE,)
    assert "INSECURE" in policy.description


def test_builtin_names() -> None:
    assert builtin_policy_names() == (
        "default",
        "dev-insecure-allow-simulated",
        "example-sev-snp",
        "example-tdx",
    )
    for name in builtin_policy_names():
        assert load_builtin_policy(name).name == name


@pytest.mark.parametrize("name", ["nope", "../pyproject", "default.json", "", "Default"])
def test_unknown_or_unsafe_builtin_name(name: str) -> None:
    with pytest.raises(PolicyError):
        load_builtin_policy(name)


def test_full_policy_parses() -> None:
    text = _policy_json(
        description="for tests",
        simulated_measurements=[MEASUREMENT.hex()],
        required_evidence=["simulated-insecure-tee", "nvidia-gpu"],
    )
    policy = Policy.from_json(text, source="t.json")
    assert policy == Policy(
        name="test",
        required_evidence=(EvidenceKind.SIMULATED_INSECURE, EvidenceKind.NVIDIA_GPU),
        allow_insecure_simulated_evidence=True,
        simulated_measurements=(MEASUREMENT,),
        description="for tests",
    )
    assert policy.source == "t.json"
    assert Policy.from_json(text.encode(), source="bytes") == policy


def test_allow_defaults_to_false() -> None:
    text = _policy_json(required_evidence=["nvidia-gpu"], allow_insecure_simulated_evidence=_ABSENT)
    assert Policy.from_json(text, source="t").allow_insecure_simulated_evidence is False


def test_unknown_key_is_refused_and_named() -> None:
    with pytest.raises(PolicyError, match="'allowed_gpu_drivers'") as info:
        Policy.from_json(_policy_json(allowed_gpu_drivers=["550"]), source="new.json")
    assert "new.json" in str(info.value)
    assert "fails closed" in str(info.value)


@pytest.mark.parametrize("key", ["schema", "name", "required_evidence"])
def test_missing_required_key_is_named(key: str) -> None:
    with pytest.raises(PolicyError, match=f"missing required key '{key}'"):
        Policy.from_json(_policy_json(**{key: _ABSENT}), source="t")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param({"schema": "fedseal-policy/v2"}, "'schema'", id="newer-schema"),
        pytest.param({"schema": "something"}, "'schema'", id="other-schema"),
        pytest.param({"name": ""}, "'name'", id="empty-name"),
        pytest.param({"name": 3}, "'name'", id="name-not-string"),
        pytest.param({"description": ["x"]}, "'description'", id="description-not-string"),
        pytest.param(
            {"allow_insecure_simulated_evidence": "true"},
            "'allow_insecure_simulated_evidence'",
            id="allow-string",
        ),
        pytest.param(
            {"allow_insecure_simulated_evidence": 1},
            "'allow_insecure_simulated_evidence'",
            id="allow-number",
        ),
        pytest.param({"required_evidence": "nvidia-gpu"}, "'required_evidence'", id="not-list"),
        pytest.param({"required_evidence": []}, "'required_evidence'", id="empty-list"),
        pytest.param(
            {"required_evidence": ["simulated-insecure-tee", "tpm"]},
            "'required_evidence[1]'",
            id="unknown-kind",
        ),
        pytest.param(
            {"required_evidence": ["nvidia-gpu", "nvidia-gpu"]},
            "'required_evidence[1]'",
            id="duplicate-kind",
        ),
        pytest.param({"simulated_measurements": ["abc"]}, "'simulated_measurements[0]'", id="short-hex"),
        pytest.param(
            {"simulated_measurements": [MEASUREMENT.hex().upper()]},
            "'simulated_measurements[0]'",
            id="uppercase-hex",
        ),
        pytest.param({"simulated_measurements": ["zz" * 32]}, "'simulated_measurements[0]'", id="not-hex"),
        pytest.param({"simulated_measurements": []}, "'simulated_measurements'", id="empty"),
        pytest.param(
            {"simulated_measurements": MEASUREMENT.hex()},
            "'simulated_measurements'",
            id="not-list",
        ),
        pytest.param(
            {"allow_insecure_simulated_evidence": False},
            "'allow_insecure_simulated_evidence'",
            id="requires-simulated-but-refuses-it",
        ),
    ],
)
def test_bad_values_name_the_key(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(PolicyError, match=named.replace("[", r"\[").replace("]", r"\]")):
        Policy.from_json(_policy_json(**overrides), source="t")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("{not json", "not valid JSON", id="invalid"),
        pytest.param("[]", "JSON object", id="array"),
        pytest.param('{"name": "a", "name": "b"}', "duplicate key 'name'", id="duplicate"),
        pytest.param('{"x": NaN}', "NaN", id="nan"),
        pytest.param(" " * (1024 * 1024 + 1), "larger than", id="too-large"),
    ],
)
def test_malformed_documents(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.from_json(text, source="t")


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(_policy_json())
    policy = Policy.from_file(path)
    assert policy.name == "test"
    assert policy.source == str(path)


def test_from_file_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        Policy.from_file(tmp_path / "missing.json")


def test_from_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(_policy_json(colour="blue"))
    with pytest.raises(PolicyError, match=r"bad\.json.*'colour'"):
        Policy.from_file(path)


def test_policy_is_frozen() -> None:
    policy = load_builtin_policy("default")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.allow_insecure_simulated_evidence = True  # type: ignore[misc]


def test_direct_construction_is_validated() -> None:
    with pytest.raises(PolicyError, match="required_evidence"):
        Policy(name="x", required_evidence=())
    with pytest.raises(PolicyError, match="allow_insecure_simulated_evidence"):
        Policy(name="x", required_evidence=(EvidenceKind.SIMULATED_INSECURE,))
    with pytest.raises(PolicyError, match="simulated_measurements"):
        Policy(
            name="x",
            required_evidence=(EvidenceKind.NVIDIA_GPU,),
            simulated_measurements=(b"short",),
        )


def test_readme_documents_every_key() -> None:
    # The README is documentation, not package data: read it from the source tree.
    readme = (Path(__file__).parents[1] / "policies" / "README.md").read_text(encoding="utf-8")
    for key in _KNOWN_KEYS:
        assert f"`{key}`" in readme, key
    for kind in EvidenceKind:
        assert f"`{kind.value}`" in readme, kind

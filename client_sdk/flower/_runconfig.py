"""A FedSeal strategy from a Flower run config (``[tool.flwr.app.config]``, ``--run-config``).

Keys, all optional except the first four (a ``fedseal-*`` key not listed here is an
error, so a typo cannot silently drop a setting):

==============================  =============================================================
``fedseal-endpoint``            the aggregator, ``host:port``
``fedseal-policy``              the policy the server attests it under: a builtin name or a file
``fedseal-identity``            the operator principal's name in the job config
``fedseal-key-file``            that principal's Ed25519 key (PEM)
``fedseal-strategy``            a FedSeal strategy (``fedavg``, ``fedprox``, ``fedadam``, ...)
``fedseal-strategy-params``     its parameters, a JSON object (``'{"proximal_mu": 0.01}'``)
``fedseal-round-deadline-s``    each round's deadline in seconds, from its opening
``fedseal-min-clients``         each round's minimum (default: Flower's ``min_train_nodes``)
``fedseal-dp-epsilon``          FedSeal's central DP over the run: epsilon, delta and clip norm,
``fedseal-dp-delta``            all three or none; with them ``fedseal-initial-adapter``, the
``fedseal-dp-clip-norm``        safetensors file the aggregator was started with
``fedseal-initial-adapter``
``fedseal-sites``               (client side, simulation only) see ``client_sdk.flower.SiteMap``
==============================  =============================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attestation import Policy, builtin_policy_names, load_builtin_policy
from client_sdk._identity import ClientIdentity
from client_sdk.flower._records import FlowerIntegrationError
from client_sdk.flower._rounds import FedSealDp
from client_sdk.flower._strategy import FedSealStrategy
from fedseal import strictjson
from fedseal.errors import FormatError

__all__ = ["RUN_CONFIG_KEYS", "fedseal_strategy", "load_policy"]

_REQUIRED = ("fedseal-endpoint", "fedseal-policy", "fedseal-identity", "fedseal-key-file")
_DP = ("fedseal-dp-epsilon", "fedseal-dp-delta", "fedseal-dp-clip-norm")
RUN_CONFIG_KEYS = frozenset(
    {
        *_REQUIRED,
        *_DP,
        "fedseal-strategy",
        "fedseal-strategy-params",
        "fedseal-round-deadline-s",
        "fedseal-min-clients",
        "fedseal-initial-adapter",
        "fedseal-sites",
    }
)

UserConfig = Mapping[str, bool | float | int | str]


def load_policy(ref: str) -> Policy:
    """A builtin policy name, or the path of a policy file."""
    if ref in builtin_policy_names():
        return load_builtin_policy(ref)
    return Policy.from_file(Path(ref))


def fedseal_strategy(run_config: UserConfig, **flower_options: Any) -> FedSealStrategy:
    """The FedSeal strategy the run config describes; `flower_options` go to Flower's FedAvg."""
    unknown = sorted(k for k in run_config if k.startswith("fedseal-") and k not in RUN_CONFIG_KEYS)
    if unknown:
        raise FlowerIntegrationError(
            f"unknown run-config key(s) {unknown}; FedSeal reads {sorted(RUN_CONFIG_KEYS)}"
        )
    missing = [k for k in _REQUIRED if k not in run_config]
    if missing:
        raise FlowerIntegrationError(f"the run config needs {', '.join(missing)} (FedSeal's server settings)")
    endpoint, policy, name, key_file = (_text(run_config, k) for k in _REQUIRED)
    options: dict[str, Any] = {}
    if "fedseal-strategy" in run_config:
        options["strategy"] = _text(run_config, "fedseal-strategy")
    if "fedseal-strategy-params" in run_config:
        options["strategy_params"] = _json_object(run_config, "fedseal-strategy-params")
    if "fedseal-round-deadline-s" in run_config:
        options["round_deadline_seconds"] = _number(run_config, "fedseal-round-deadline-s")
    if "fedseal-min-clients" in run_config:
        value = run_config["fedseal-min-clients"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise FlowerIntegrationError(
                f"run config 'fedseal-min-clients' must be an integer, got {value!r}"
            )
        options["min_clients"] = value
    given = [k for k in _DP if k in run_config]
    if given and len(given) != len(_DP):
        raise FlowerIntegrationError(
            f"FedSeal's DP needs all of {', '.join(_DP)}; the run config has {given}"
        )
    if given:
        if "fedseal-initial-adapter" not in run_config:
            raise FlowerIntegrationError(
                "FedSeal's DP needs 'fedseal-initial-adapter': the adapter file the aggregator was "
                "started with (--initial-adapter)"
            )
        epsilon, delta, clip = (_number(run_config, k) for k in _DP)
        options["dp"] = FedSealDp(epsilon, delta, clip, Path(_text(run_config, "fedseal-initial-adapter")))
    identity = ClientIdentity.from_files(name, Path(key_file))
    return FedSealStrategy(endpoint, load_policy(policy), identity=identity, **options, **flower_options)


def _text(config: UserConfig, key: str) -> str:
    value = config[key]
    if not isinstance(value, str) or not value:
        raise FlowerIntegrationError(f"run config {key!r} must be a non-empty string, got {value!r}")
    return value


def _number(config: UserConfig, key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FlowerIntegrationError(f"run config {key!r} must be a number, got {value!r}")
    return float(value)


def _json_object(config: UserConfig, key: str) -> dict[str, Any]:
    text = _text(config, key)
    try:
        value = strictjson.loads(text, what=f"run config {key!r}")
    except FormatError as exc:
        raise FlowerIntegrationError(str(exc)) from None
    if not isinstance(value, dict):
        raise FlowerIntegrationError(f"run config {key!r} must be a JSON object, got {text!r}")
    return value

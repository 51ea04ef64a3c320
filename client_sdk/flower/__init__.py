"""FedSeal for Flower (flwr >= 1.42): a Flower LoRA job's rounds are FedSeal rounds.

Client side, one line in the ClientApp (a site sets endpoint, policy, client id and key in
its SuperNode's node config; simulated nodes take theirs from a site-map folder)::

    from client_sdk.flower import fedseal_mod
    app = ClientApp(mods=[fedseal_mod()])

Server side, the strategy, from the run config or from arguments::

    from client_sdk.flower import fedseal_strategy
    strategy = fedseal_strategy(context.run_config, fraction_train=1.0, ...)

The mod attests the aggregator, seals the adapter the train function returns and submits
it directly to the enclave, and replies to Flower with the metrics and the signed receipt;
it also checks that the global arrays Flower delivers are the enclave's signed aggregate.
The strategy opens each FedSeal round for the nodes Flower sampled, ends it once Flower
has all replies, verifies receipts and takes the round's aggregate from the enclave (or
raises the aggregator's reason). Flower's server never sees an individual update. See
examples/flower_lora/README.md.

This package imports flwr; ``client_sdk`` itself never does.
"""

from client_sdk._sitemap import SiteMap, SiteMapError
from client_sdk.flower._mod import (
    CLIENT_ID_KEY,
    ENDPOINT_KEY,
    KEY_FILE_KEY,
    POLICY_KEY,
    SITES_KEY,
    TLS_CERTIFICATE_KEY,
    TLS_KEY_KEY,
    FedSealMod,
    fedseal_mod,
)
from client_sdk.flower._proximal import ProximalTerm, proximal_mu
from client_sdk.flower._records import (
    GLOBAL_ROUND_KEY,
    PROXIMAL_MU_KEY,
    RECEIPT_RECORD,
    ROUND_KEY,
    FedSealRoundFailedError,
    FlowerIntegrationError,
    GlobalModelMismatchError,
    WrappedStrategyError,
    arrays_to_tensors,
    tensors_to_arrays,
)
from client_sdk.flower._rounds import FedSealDp
from client_sdk.flower._runconfig import RUN_CONFIG_KEYS, fedseal_strategy
from client_sdk.flower._strategy import FedSealFedAvg, FedSealStrategy

__all__ = [
    "CLIENT_ID_KEY",
    "ENDPOINT_KEY",
    "GLOBAL_ROUND_KEY",
    "KEY_FILE_KEY",
    "POLICY_KEY",
    "PROXIMAL_MU_KEY",
    "RECEIPT_RECORD",
    "ROUND_KEY",
    "RUN_CONFIG_KEYS",
    "SITES_KEY",
    "TLS_CERTIFICATE_KEY",
    "TLS_KEY_KEY",
    "FedSealDp",
    "FedSealFedAvg",
    "FedSealMod",
    "FedSealRoundFailedError",
    "FedSealStrategy",
    "FlowerIntegrationError",
    "GlobalModelMismatchError",
    "ProximalTerm",
    "SiteMap",
    "SiteMapError",
    "WrappedStrategyError",
    "arrays_to_tensors",
    "fedseal_mod",
    "fedseal_strategy",
    "proximal_mu",
    "tensors_to_arrays",
]

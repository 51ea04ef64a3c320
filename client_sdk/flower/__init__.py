"""FedSeal for Flower (flwr >= 1.42): a Flower LoRA job's updates go to the attested enclave.

Client side, one line in the ClientApp (the site sets endpoint, policy and client id in its
SuperNode's node config)::

    from client_sdk.flower import fedseal_mod
    app = ClientApp(mods=[fedseal_mod()])

Server side, the strategy::

    from client_sdk.flower import FedSealFedAvg
    strategy = FedSealFedAvg(endpoint, policy, fraction_train=1.0, ...)

The mod attests the aggregator, seals the adapter the train function returns and submits
it directly to the enclave, and replies to Flower with the metrics and the signed receipt;
it also checks that the global arrays Flower delivers are the enclave's signed aggregate.
The strategy verifies receipts and takes the round's aggregate from the enclave. Flower's
server never sees an individual update. See examples/flower_lora/README.md.

This package imports flwr; ``client_sdk`` itself never does.
"""

from client_sdk.flower._mod import (
    CLIENT_ID_KEY,
    ENDPOINT_KEY,
    KEY_FILE_KEY,
    POLICY_KEY,
    TLS_CERTIFICATE_KEY,
    TLS_KEY_KEY,
    FedSealMod,
    fedseal_mod,
)
from client_sdk.flower._records import (
    GLOBAL_ROUND_KEY,
    RECEIPT_RECORD,
    ROUND_KEY,
    FlowerIntegrationError,
    GlobalModelMismatchError,
)
from client_sdk.flower._strategy import FedSealFedAvg

__all__ = [
    "CLIENT_ID_KEY",
    "ENDPOINT_KEY",
    "GLOBAL_ROUND_KEY",
    "KEY_FILE_KEY",
    "POLICY_KEY",
    "RECEIPT_RECORD",
    "ROUND_KEY",
    "TLS_CERTIFICATE_KEY",
    "TLS_KEY_KEY",
    "FedSealFedAvg",
    "FedSealMod",
    "FlowerIntegrationError",
    "GlobalModelMismatchError",
    "fedseal_mod",
]

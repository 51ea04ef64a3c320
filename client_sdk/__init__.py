"""FedSeal client SDK: submit a LoRA update to an attested aggregator and get a verifiable receipt.

    from attestation import load_builtin_policy
    from client_sdk import submit_update

    receipt = submit_update("aggregator.example:50051", adapter_tensors,
                            policy=load_builtin_policy("default"),
                            round_id=1, client_id="hospital-a", num_examples=1200)

Nothing is sent before the aggregator's attestation verifies under the policy.
"""

from client_sdk._adapters import AdapterInputError, adapter_tensors
from client_sdk._client import (
    Aggregate,
    FedSealClient,
    SealedSubmission,
    fetch_aggregate,
    submit_update,
)
from client_sdk._errors import (
    AdapterMismatchError,
    AggregatorUnavailableError,
    ClientError,
    RoundUnavailableError,
)
from client_sdk._peft import write_peft_adapter
from client_sdk._receipts import ReceiptStore, ReceiptStoreError
from fedseal.receipt import Receipt
from fedseal.wire import UpdateRejectedError

__all__ = [
    "AdapterInputError",
    "AdapterMismatchError",
    "Aggregate",
    "AggregatorUnavailableError",
    "ClientError",
    "FedSealClient",
    "Receipt",
    "ReceiptStore",
    "ReceiptStoreError",
    "RoundUnavailableError",
    "SealedSubmission",
    "UpdateRejectedError",
    "adapter_tensors",
    "fetch_aggregate",
    "submit_update",
    "write_peft_adapter",
]

"""FedSeal client SDK: submit a LoRA update to an attested aggregator and get a verifiable receipt.

    from attestation import load_builtin_policy
    from client_sdk import ClientIdentity, submit_update

    identity = ClientIdentity.from_files("hospital-a", Path("hospital-a.key"))
    receipt = submit_update("aggregator.example:50051", adapter_tensors,
                            policy=load_builtin_policy("default"), identity=identity,
                            round_id=1, num_examples=1200)

Nothing is sent before the aggregator's attestation verifies under the policy and the TLS
channel is shown to end at the attested enclave.
"""

from client_sdk._adapters import AdapterInputError, adapter_tensors
from client_sdk._client import (
    Aggregate,
    FedSealClient,
    RoundOutcome,
    SealedSubmission,
    fetch_aggregate,
    submit_update,
)
from client_sdk._errors import (
    AdapterMismatchError,
    AggregatorUnavailableError,
    ClientArgumentError,
    ClientError,
    DpRequirementError,
    OperatorActionError,
    RoundUnavailableError,
    UnattestedChannelError,
)
from client_sdk._identity import ClientIdentity, IdentityError, write_signing_key
from client_sdk._peft import write_peft_adapter
from client_sdk._receipts import ReceiptStore, ReceiptStoreError
from client_sdk._transport import ApprovalResult, ChannelSecurity, OperatorResult
from fedseal.errors import SignatureError
from fedseal.receipt import Receipt
from fedseal.roundkey import ForeignRoundKeyError, MissingRoundKeyError, RoundKeyError
from fedseal.wire import AccessDeniedError, AccessDeniedReason, StaleBaseError, UpdateRejectedError

__all__ = [
    "AccessDeniedError",
    "AccessDeniedReason",
    "AdapterInputError",
    "AdapterMismatchError",
    "Aggregate",
    "AggregatorUnavailableError",
    "ApprovalResult",
    "ChannelSecurity",
    "ClientArgumentError",
    "ClientError",
    "ClientIdentity",
    "DpRequirementError",
    "FedSealClient",
    "ForeignRoundKeyError",
    "IdentityError",
    "MissingRoundKeyError",
    "OperatorActionError",
    "OperatorResult",
    "Receipt",
    "ReceiptStore",
    "ReceiptStoreError",
    "RoundKeyError",
    "RoundOutcome",
    "RoundUnavailableError",
    "SealedSubmission",
    "SignatureError",
    "StaleBaseError",
    "UnattestedChannelError",
    "UpdateRejectedError",
    "adapter_tensors",
    "fetch_aggregate",
    "submit_update",
    "write_peft_adapter",
    "write_signing_key",
]

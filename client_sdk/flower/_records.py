"""What FedSeal adds to Flower's messages, and the conversions between records and tensors.

Server → client (in the train/evaluate message's ConfigRecord, FedAvg's ``"config"``):

- ``fedseal.round-id`` (int): the FedSeal round this client's update goes to;
- ``fedseal.global-round`` (int): the FedSeal round whose signed aggregate the message's
  arrays are (0: the job's initial arrays, which FedSeal has not signed).

Client → server (the train reply): the user's MetricRecord(s), unchanged, and a
ConfigRecord ``fedseal`` holding ``receipt`` (the signed tlog-proof text), ``client-id``
and ``round-id``. No ArrayRecord: the update went to the enclave, sealed, not to Flower.

These values are public (ids, digests inside the receipt); none is a secret.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from client_sdk._errors import ClientError

__all__ = [
    "GLOBAL_ROUND_KEY",
    "RECEIPT_RECORD",
    "ROUND_KEY",
    "FlowerIntegrationError",
    "GlobalModelMismatchError",
    "arrays_to_tensors",
    "config_int",
    "single_array_record",
    "tensors_to_arrays",
]

ROUND_KEY = "fedseal.round-id"
GLOBAL_ROUND_KEY = "fedseal.global-round"
RECEIPT_RECORD = "fedseal"


class FlowerIntegrationError(ClientError):
    """A Flower message or reply is not what the FedSeal integration needs; the message says what."""


class GlobalModelMismatchError(FlowerIntegrationError):
    """The Flower server sent global arrays that are not the enclave's signed aggregate."""


def config_int(config: ConfigRecord, key: str, *, default: int | None = None) -> int:
    """An int from a ConfigRecord, or ``default``; anything else is a FlowerIntegrationError."""
    value = config.get(key, default)
    if value is None:
        raise FlowerIntegrationError(
            f"the Flower message carries no {key!r}: run the server side with "
            "client_sdk.flower.FedSealFedAvg (or set it in the train config)"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FlowerIntegrationError(f"{key!r} must be a non-negative int, got {value!r}")
    return value


def single_array_record(content: RecordDict, *, what: str) -> tuple[str, ArrayRecord]:
    """The one ArrayRecord of a message (FedSeal sends one adapter per message)."""
    records = content.array_records
    if len(records) != 1:
        raise FlowerIntegrationError(
            f"{what} must carry exactly one ArrayRecord (the LoRA adapter), it carries {sorted(records)}"
        )
    ((key, record),) = records.items()
    return key, record


def arrays_to_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu") for name, tensor in record.to_torch_state_dict().items()}


def tensors_to_arrays(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of float32 copies: Flower's arrays are numpy, which has no bfloat16,
    and float32 holds every bfloat16/float16 value exactly."""
    return ArrayRecord(
        torch_state_dict={name: tensor.detach().to("cpu", torch.float32) for name, tensor in tensors.items()}
    )

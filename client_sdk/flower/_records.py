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

from collections.abc import Mapping

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client_sdk._errors import ClientError

__all__ = [
    "GLOBAL_ROUND_KEY",
    "PROXIMAL_MU_KEY",
    "RAW_STYPE",
    "RECEIPT_RECORD",
    "ROUND_KEY",
    "FedSealRoundFailedError",
    "FlowerIntegrationError",
    "GlobalModelMismatchError",
    "WrappedStrategyError",
    "arrays_to_tensors",
    "config_int",
    "single_array_record",
    "tensors_to_arrays",
]

ROUND_KEY = "fedseal.round-id"
PROXIMAL_MU_KEY = "proximal-mu"  # Flower's FedProx sends mu under this key too
RAW_STYPE = "fedseal.torch-raw"  # little-endian raw bytes of a dtype numpy lacks
_RAW_NAMES = {torch.bfloat16: "bfloat16"}
_RAW_DTYPES = {name: dtype for dtype, name in _RAW_NAMES.items()}
GLOBAL_ROUND_KEY = "fedseal.global-round"
RECEIPT_RECORD = "fedseal"


class FlowerIntegrationError(ClientError):
    """A Flower message or reply is not what the FedSeal integration needs; the message says what."""


class GlobalModelMismatchError(FlowerIntegrationError):
    """The Flower server sent global arrays that are not the enclave's signed aggregate."""


class FedSealRoundFailedError(FlowerIntegrationError):
    """A FedSeal round published no aggregate; the message carries the aggregator's reason."""


class WrappedStrategyError(FlowerIntegrationError):
    """A FedSeal strategy was started by another strategy wrapped around it (e.g. one of
    Flower's DP wrappers), which would change the enclave's signed aggregate."""


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
    """The record's tensors, each in the dtype it was sent in (bfloat16 included)."""
    out: dict[str, torch.Tensor] = {}
    for name, array in record.items():
        if array.stype == RAW_STYPE:
            dtype = _RAW_DTYPES.get(array.dtype)
            if dtype is None:
                raise FlowerIntegrationError(f"array {name!r}: unknown raw dtype {array.dtype!r}")
            tensor = torch.frombuffer(bytearray(array.data), dtype=dtype)
            out[name] = tensor.reshape(tuple(array.shape))
        else:
            out[name] = torch.from_numpy(array.numpy().copy())
    return out


def tensors_to_arrays(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord of the tensors in their own dtypes. numpy has no bfloat16, so a
    bfloat16 tensor travels as its raw bytes (stype ``fedseal.torch-raw``) rather than as a
    float32 copy; `arrays_to_tensors` reads both forms back."""
    record = ArrayRecord()
    for name, tensor in tensors.items():
        value = tensor.detach().to("cpu").contiguous()
        if value.dtype in _RAW_NAMES:
            record[name] = Array(
                dtype=_RAW_NAMES[value.dtype],
                shape=tuple(value.shape),
                stype=RAW_STYPE,
                data=value.view(torch.uint8).numpy().tobytes() if value.numel() else b"",
            )
        else:
            record[name] = Array(value.numpy())
    return record

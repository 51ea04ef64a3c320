"""Writing a verified aggregate as a PEFT adapter folder.

PEFT loads an adapter from `adapter_model.safetensors` plus `adapter_config.json`. The
aggregate's tensor names are those the clients submitted; when they come from
`peft.get_peft_model_state_dict`, the folder loads with `PeftModel.from_pretrained`.
PEFT itself is not needed to write the folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client_sdk._client import Aggregate
from fedseal._atomicfile import replace_durably

__all__ = ["write_peft_adapter"]


def write_peft_adapter(aggregate: Aggregate, directory: Path, adapter_config: Mapping[str, Any]) -> Path:
    """Write the aggregate (already verified) and its LoRA config; return the folder.

    `adapter_config` is the `LoraConfig` as a dict (e.g. `peft_model.peft_config["default"].to_dict()`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "adapter_model.safetensors"
    replace_durably(weights, aggregate.data, mode=0o644)
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in adapter_config.items()}
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    return directory

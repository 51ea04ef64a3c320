"""Which device the enclave's accumulator can use (torch is imported in the enclave package only)."""

from __future__ import annotations

import torch

__all__ = ["cuda_available"]


def cuda_available() -> bool:
    """Whether this build of torch sees a CUDA GPU (inside the CVM: the enclave's GPU)."""
    return bool(torch.cuda.is_available())

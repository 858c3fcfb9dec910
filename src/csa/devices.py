"""Which torch device a device setting names: one rule for ``csa train`` and inference alike."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .errors import CsaError


def resolve_device(device: Union[str, torch.device], *, setting: str = "--device ",
                   local_rank: Optional[int] = None) -> torch.device:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` (or another torch device type) as a ``torch.device``.

    ``auto`` is CUDA where there is one, else the CPU; asking for CUDA where there is none
    is a :class:`CsaError`. ``setting`` is how the user wrote the choice (``--device `` or
    ``train.device=``), for the error lines. ``local_rank``: a distributed run's process,
    which gets the GPU torchrun's LOCAL_RANK names (one GPU per process).
    """
    name = str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CsaError(f"{setting}{device} asked for, but CUDA is not available here: use {setting}cpu")
        if local_rank is not None:
            return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise CsaError(f"unknown device {setting}{device}: use auto, cpu, cuda or cuda:N") from None

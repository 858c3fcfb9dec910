"""A training run's processes: joining torchrun's process group, agreeing on stopping, and
the data order (seeded, sharded over the ranks, resumable mid-epoch)."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from .errors import CsaError


@dataclasses.dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def gpu_index(self) -> Optional[int]:
        """The GPU of this process when distributed (torchrun's LOCAL_RANK); None alone."""
        return self.local_rank if self.enabled else None


def init_distributed(device_pref: str) -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK), if any.

    gloo on CPU, NCCL on CUDA. Without those variables: a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_available():
        raise CsaError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        cuda = _wants_cuda(device_pref)
        if cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return info


def _wants_cuda(device_pref: str) -> bool:
    if device_pref == "auto":
        return torch.cuda.is_available()
    return device_pref.startswith("cuda")


def agree(info: DistInfo, device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Each flag, true when it is true on any rank: one small all-reduce (every rank stops or fails together)."""
    if not info.enabled:
        return flags
    values = torch.tensor([float(f) for f in flags], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v.item()) for v in values)


def parameter_digest(modules: Sequence[Optional[nn.Module]]) -> str:
    """sha256 of every tensor of the modules (None skipped), in order: equal on every rank after a good run."""
    h = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for key, value in module.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


class EpochBatches(Sampler[list[int]]):
    """Seeded, sharded, resumable batches: a DistributedSampler that can start mid-epoch.

    Epoch ``e`` shuffles with ``numpy.random.default_rng([seed, e])``, pads the order to a
    multiple of the world size (repeating its start, like DistributedSampler), gives rank
    ``r`` every ``world``-th index from ``r``, and cuts that into full batches (the last
    partial batch is dropped, so every step has ``batch_size`` samples on every rank).
    :meth:`set_position` selects the epoch and the number of batches already done.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = math.ceil(n / world_size)
        self.batches_per_epoch = self.per_rank // batch_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        total = self.per_rank * self.world_size
        order = np.concatenate([order, order[: total - self.n]]) if total > self.n else order
        mine = order[self.rank : total : self.world_size].tolist()
        b = self.batch_size
        return [mine[i * b : (i + 1) * b] for i in range(self.batches_per_epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

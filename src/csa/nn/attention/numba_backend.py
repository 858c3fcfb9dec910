"""The fast layer's numba backend: compiled kernels (:mod:`csa.nn._csa_numba`) on CPU float32 / float64.

The kernels plan the holes, gather queries and keys, run the recurrence and its reverse;
torch does the search matmuls. The kernel module is imported on first use (importing
numba costs ~0.3 s); a missing or broken numba makes :func:`numba_available` false and
``implementation="auto"`` falls back to the torch backend.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

import torch
from torch import Tensor

from ...errors import CsaError
from .fast import Plan, SearchedBackend

# Per-thread CPU work buffers (keys, scores, backward temporaries) kept between calls: a
# training loop calls the layer with the same shapes every step, and fresh multi-MiB
# allocations can cost page faults each time (one benchmark process at 1x512x32x32: 3.6 ms
# a forward+backward without them, 3.2 ms with them). Memory only, never a decision: the
# backend itself is chosen once and kept on the layer (csa.nn.attention.layer).
_SCRATCH = threading.local()
SCRATCH_LIMIT_BYTES = 32 << 20  # larger buffers are allocated per call, not kept


def _scratch(slot: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An uninitialised CPU tensor of ``shape`` that may share memory with the slot's previous one."""
    numel = 1
    for size in shape:
        numel *= size
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get((slot, dtype))
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: usable inside and outside inference mode
            buf = torch.empty(numel, dtype=dtype)
        if numel * buf.element_size() <= SCRATCH_LIMIT_BYTES:
            buffers[(slot, dtype)] = buf
    return buf[:numel].view(shape)


def numba_available() -> bool:
    """True when the numba kernels import (numba is a dependency; a missing or broken one falls back)."""
    try:
        from .. import _csa_numba  # noqa: F401  (Python keeps an imported module: later calls are a lookup)
    except Exception:  # ImportError, or numba failing against this numpy / llvmlite
        return False
    return True


def _numba_kernels() -> Any:
    if not numba_available():
        raise CsaError("the numba CSA backend needs numba: pip install numba, or use backend='torch'")
    from .. import _csa_numba

    return _csa_numba


class NumbaBackend(SearchedBackend):
    """numba kernels for the bookkeeping and both recurrences; CPU float32 / float64 only."""

    name = "numba"

    @staticmethod
    def supports(device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cpu" and dtype in (torch.float32, torch.float64)

    def require(self, device: torch.device, dtype: torch.dtype) -> None:
        if not self.supports(device, dtype):
            raise CsaError(
                f"the numba CSA backend runs on CPU float32/float64 tensors, got {dtype} on "
                f"{device}: use backend='torch' or 'auto'"
            )
        if not numba_available():
            raise CsaError("the numba CSA backend needs numba: pip install numba, or use backend='torch'")

    def plan(self, mask: Tensor, n: int, hw: int) -> Plan:
        flat = mask.reshape(n, hw)
        if not flat.is_floating_point():
            flat = flat.float()
        order = torch.empty(n, hw, dtype=torch.long)
        nh = torch.empty(n, dtype=torch.long)
        length = _numba_kernels().plan(flat.contiguous().numpy(), order.numpy(), nh.numpy())
        return Plan(order, nh, length, lambda: flat > 0.5)

    def queries(self, x: Tensor, plan: Plan, padded: bool) -> tuple[Tensor, Tensor]:
        # The kernels read sample n's hole positions as order[n, :nh[n]]. Rows j >= nh[n]
        # stay unset (never read) unless the padded search multiplies them.
        n, c, _ = x.shape
        q = x.new_zeros(n, plan.length, c) if padded else x.new_empty(n, plan.length, c)
        _numba_kernels().gather_rows(x.numpy(), plan.order.numpy(), plan.nh.numpy(), q.numpy())
        return plan.order, q

    def unit_keys(self, xi: Tensor, known: Tensor) -> Tensor:
        keys = _scratch("keys", (xi.shape[0], known.numel()), xi.dtype)
        _numba_kernels().gather_unit_columns(xi.numpy(), known.numpy(), keys.numpy())
        return keys

    def score_block(self, rows: int, nk: int, dtype: torch.dtype) -> Optional[Tensor]:
        return _scratch("scores", (rows, nk), dtype)

    def row_max(self, block: Tensor, dmax: Tensor, arg: Tensor) -> None:
        torch.amax(block, dim=1, out=dmax)
        _numba_kernels().first_index_of(block.numpy(), dmax.numpy(), arg.numpy())

    def generate(self, x: Tensor, q: Tensor, hole_pos: Tensor, plan: Plan, dmax: Tensor, arg: Optional[Tensor],
                 src: Optional[Tensor], stable: bool) -> tuple[Tensor, Tensor, Optional[Tensor], tuple]:
        n, _, hw = x.shape
        order, nh, length = plan.order, plan.nh, plan.length
        if arg is None:  # padded search: positions to indices into the known list
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(hw).expand(n, hw))
            arg = rank.gather(1, src) - nh[:, None]
        src = torch.empty(n, length, dtype=torch.long)
        s = torch.empty_like(q)
        g = torch.empty_like(q)
        stats = torch.empty(n, length, 8, dtype=torch.float64)
        out = torch.empty_like(x)  # the kernel copies x into it, then writes the holes
        _numba_kernels().forward(
            x.numpy(), out.numpy(), order.numpy(), arg.numpy(), src.numpy(), nh.numpy(), dmax.numpy(), stable,
            q.numpy(), s.numpy(), g.numpy(), stats.numpy(),
        )
        return out, src, None, (hole_pos, src, nh, None, dmax, q, s, g, stats)

    def reverse(self, go: Tensor, saved: tuple[Tensor, ...], length: int, stable: bool) -> Tensor:
        hole_pos, src, nh, _valid, dmax, q, s, g, stats = saved
        gi = torch.empty_like(go)  # the kernel copies go into it row by row
        gout, dq, dsrc = (_scratch(slot, tuple(q.shape), q.dtype) for slot in ("gout", "dq", "dsrc"))
        _numba_kernels().backward(
            go.numpy(), gi.numpy(), hole_pos.numpy(), src.numpy(), nh.numpy(), dmax.numpy(), stable,
            q.numpy(), s.numpy(), g.numpy(), stats.numpy(), gout.numpy(), dq.numpy(), dsrc.numpy(),
        )
        return gi

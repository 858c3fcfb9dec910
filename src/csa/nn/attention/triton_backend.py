"""The fast layer's Triton backend: CUDA kernels (:mod:`csa.nn._csa_triton`), no host-device sync.

The search (a fused, tiled matmul-and-argmax), the recurrence and its reverse run as
Triton kernels that read every sample's hole count themselves, so nothing is read back.
On CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1``, for
tests). :func:`triton_self_check` runs them once against the torch backend before
``implementation="auto"`` trusts them on a device.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import torch
from torch import Tensor

from ...errors import CsaError
from .fast import FastBackend
from .rules import EPS
from .sources import collect_sources
from .torch_backend import TorchBackend


def triton_available() -> bool:
    """True when the Triton kernels import (Triton ships with PyTorch's CUDA wheels)."""
    try:
        from .. import _csa_triton  # noqa: F401  (Python keeps an imported module: later calls are a lookup)
    except Exception:  # ImportError, or a Triton too old for the kernels
        return False
    return True


def triton_interpreted() -> bool:
    """True when Triton runs its kernels in its CPU interpreter (TRITON_INTERPRET=1, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_kernels() -> Any:
    if not triton_available():
        raise CsaError("the triton CSA backend needs Triton (it comes with PyTorch's CUDA build): use backend='torch'")
    from .. import _csa_triton

    return _csa_triton


class TritonBackend(FastBackend):
    """Triton kernels for the search and both recurrences; CUDA (or the interpreter on CPU)."""

    name = "triton"

    def require(self, device: torch.device, dtype: torch.dtype) -> None:
        if not (device.type == "cuda" or (device.type == "cpu" and triton_interpreted())):
            raise CsaError(
                f"the triton CSA backend runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1), got "
                f"{device}: use backend='auto'"
            )
        _triton_kernels()

    def forward(self, ctx: Any, features: Tensor, mask: Tensor, stable: bool, search: str, chunk: int,
                sink: Optional[list]) -> Tensor:
        n, c, h, w = features.shape
        hw = h * w
        x = features.contiguous().view(n, c, hw)
        out, saved = _triton_forward(x, mask, stable)
        ctx.meta = (stable, (n, c, h, w))
        ctx.save_for_backward(*saved)
        if sink is not None:
            _xt, _out, order, src, nh, _dmax, stats = saved
            valid = torch.arange(hw, device=x.device) < nh[:, None]
            sink.append(collect_sources(order, src, stats[..., 0], stats[..., 1], valid, (h, w)))
        return out.reshape(n, c, h, w)

    def backward(self, ctx: Any, grad_out: Tensor) -> Tensor:
        stable, (n, c, h, w) = ctx.meta
        gi = _triton_backward(grad_out.reshape(n, c, h * w), ctx.saved_tensors, stable)
        return gi.reshape(n, c, h, w)


def _triton_forward(x: Tensor, mask: Tensor, stable: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
    """x: N x C x HW. Returns (output N x C x HW, tensors for the backward).

    Buffers are sized by HW, not by the largest hole count, so that nothing is read back.
    """
    kern = _triton_kernels()
    n, c, hw = x.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xt = x.transpose(1, 2).to(work).contiguous()  # N x HW x C: a position's feature is a row
    hole = mask.reshape(n, hw) > 0.5
    nh = hole.sum(dim=1)
    # Holes first, then known positions, each in raster order: every position's rank comes from
    # a running count (a scatter, no sort), so nothing depends on a count read back.
    known = ~hole
    rank = torch.where(hole, hole.cumsum(dim=1) - 1, nh[:, None] + known.cumsum(dim=1) - 1)
    order = torch.empty_like(rank).scatter_(1, rank, torch.arange(hw, device=x.device).expand(n, hw))
    unit = xt / (torch.linalg.vector_norm(xt, dim=2, keepdim=True) + EPS)
    dmax = xt.new_zeros(n, hw)
    arg = torch.zeros(n, hw, dtype=torch.long, device=x.device)
    kern.search(xt, unit, order, nh, dmax, arg)
    del unit
    src = order.gather(1, (nh[:, None] + arg).clamp(max=hw - 1))  # rows past a sample's holes: unused
    out = xt.clone()
    stats = xt.new_zeros(n, hw, 8)
    kern.forward(xt, out, order, src, nh, dmax, stats, stable)
    # A contiguous copy, not a view of the saved rows: an in-place op on the layer's output
    # must not touch what the backward reads.
    return out.transpose(1, 2).to(x.dtype).contiguous(), (xt, out, order, src, nh, dmax, stats)


def _triton_backward(grad_out: Tensor, saved: tuple[Tensor, ...], stable: bool) -> Tensor:
    """grad_out: N x C x HW. Returns the features' gradient, N x C x HW."""
    xt, out, order, src, nh, dmax, stats = saved
    gt = grad_out.transpose(1, 2).to(xt.dtype).contiguous()
    gin = gt.clone()
    _triton_kernels().backward(gt, gin, xt, out, order, src, nh, dmax, stats, stable)
    return gin.transpose(1, 2).to(grad_out.dtype).contiguous()


def triton_self_check(device: torch.device, mode: str) -> bool:
    """Run the Triton kernels once on a small problem against the torch backend.

    Triton compiles on first use; a GPU or Triton version the kernels do not suit should cost
    the user a warning and the slower torch backend, not a failed run. The check runs with
    gradients on and autocast off, whatever mode the caller is in (inference runs under
    torch.inference_mode, training under autocast).
    """
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        return _triton_self_check_body(device, mode)


def _triton_self_check_body(device: torch.device, mode: str) -> bool:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 16, 6 * 7, generator=gen) + 0.1
    mask = torch.zeros(2, 1, 6, 7)
    mask[0, :, 1:4, 2:6] = 1
    mask[1, :, 5, :] = 1
    # Each hole feature is a scaled, slightly perturbed copy of one known feature, so that its
    # best match wins by a clear margin and rounding cannot change an argmax.
    for i in range(2):
        hole = mask[i].flatten() > 0.5
        known = (~hole).nonzero().flatten()
        for k, p in enumerate(hole.nonzero().flatten().tolist()):
            x[i, :, p] = 0.7 * x[i, :, known[(7 * k) % len(known)]] + 0.01 * torch.rand(16, generator=gen)
    x, mask = x.view(2, 16, 6, 7).to(device), mask.to(device)
    weight = torch.rand(x.shape, generator=gen).to(device)
    results = []
    try:
        for backend in (TritonBackend(), TorchBackend()):
            xr = x.clone().requires_grad_()
            out = backend.run(xr, mask, mode)
            (out * weight).sum().backward()
            results.append((out.detach(), xr.grad))
        ok = all(torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(*results))
        problem = "results differ from the torch backend"
    except Exception as exc:  # compile or launch failure
        ok, problem = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        warnings.warn(f"the Triton CSA kernels do not work here ({problem}); using the torch backend", stacklevel=4)
    return ok


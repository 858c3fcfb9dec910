"""The fast CSA layer: batched search, compiled recurrence, analytic backward.

Same arithmetic as :func:`csa.nn.attention.csa_reference` (docs/method.md, 'The CSA layer'), organised for speed:

* Search: per sample one product of the hole queries against the normalised known keys
  (``holes x C`` times ``C x known``), chunked over the holes so that the score block never
  exceeds ``chunk_elements`` numbers (the Triton kernel works in 32 x 32 tiles); argmax and
  max per hole. No ``HW x HW`` matrix exists, forward or backward.
* Generate: the recurrence over the holes (raster order) runs as compiled code (numba on
  CPU, Triton on CUDA) or, on any device, as a batched torch loop over the hole rank.
* Backward: written by hand as the reverse recurrence; the search contributes only through
  the chosen (hole, key) pairs, so its gradient is O(holes x C), not a dense score gradient.

Backends (``backend=``): ``"numba"`` (CPU, float32/float64), ``"triton"`` (CUDA; on CPU
only under Triton's interpreter, ``TRITON_INTERPRET=1``), ``"torch"`` (any device and
dtype), ``"auto"`` (numba on CPU, Triton on CUDA, torch where neither applies). Search
strategies of the numba and torch backends (``search=``): ``"exact"`` gathers each sample's
known keys (reads the hole counts on the host: free on CPU), ``"padded"`` multiplies all
samples at once against every position with hole keys masked out (batched, for
accelerators), ``"auto"`` picks exact on CPU, padded elsewhere. The Triton backend has its
own fused search.

Host-device syncs: none with the Triton backend (the kernels read the hole counts
themselves). The torch backend reads one number back per forward (the largest hole count,
which sizes its loop); its backward reads none.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..errors import CsaError
from .attention import EPS, CsaSources, collect_sources

# Largest score block of the search, in numbers (16 MiB in float32).
SEARCH_CHUNK_ELEMENTS = 1 << 22

BACKENDS = ("auto", "numba", "triton", "torch")
SEARCHES = ("auto", "exact", "padded")
MODES = ("official", "stable")

_NUMBA: Any = None  # the compiled-kernel module, imported on first use; False if it cannot be
_TRITON: Any = None  # likewise for the Triton kernels
# The Triton kernels' self-check (see _triton_self_check): the (device, mode) pairs checked so
# far, and whether every check passed. After a failure "auto" uses the torch backend.
_TRITON_CHECKED: set[tuple[str, str]] = set()
_TRITON_WORKS = True

# Per-thread CPU work buffers (keys, scores, backward temporaries) kept between calls: a
# training loop calls the layer with the same shapes every step, and fresh multi-MiB
# allocations can cost page faults each time (one benchmark process at 1x512x32x32: 3.6 ms
# a forward+backward without them, 3.2 ms with them).
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
    global _NUMBA
    if _NUMBA is None:
        try:
            from . import _csa_numba
        except Exception:  # ImportError, or numba failing against this numpy / llvmlite
            _NUMBA = False
        else:
            _NUMBA = _csa_numba
    return _NUMBA is not False


def _numba_kernels() -> Any:
    if not numba_available():
        raise CsaError("the numba CSA backend needs numba: pip install numba, or use backend='torch'")
    return _NUMBA


def triton_available() -> bool:
    """True when the Triton kernels import (Triton ships with PyTorch's CUDA wheels)."""
    global _TRITON
    if _TRITON is None:
        try:
            from . import _csa_triton
        except Exception:  # ImportError, or a Triton too old for the kernels
            _TRITON = False
        else:
            _TRITON = _csa_triton
    return _TRITON is not False


def triton_interpreted() -> bool:
    """True when Triton runs its kernels in its CPU interpreter (TRITON_INTERPRET=1, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_kernels() -> Any:
    if not triton_available():
        raise CsaError("the triton CSA backend needs Triton (it comes with PyTorch's CUDA build): use backend='torch'")
    return _TRITON


def resolve_backend(backend: str, features: Tensor) -> str:
    """The backend that will run for these features ('numba', 'triton' or 'torch')."""
    if backend not in BACKENDS:
        raise CsaError(f"CSA backend must be one of {BACKENDS}, got {backend!r}")
    numba_ok = features.device.type == "cpu" and features.dtype in (torch.float32, torch.float64)
    triton_ok = features.device.type == "cuda" or (features.device.type == "cpu" and triton_interpreted())
    if backend == "numba":
        if not numba_ok:
            raise CsaError(
                f"the numba CSA backend runs on CPU float32/float64 tensors, got {features.dtype} on "
                f"{features.device}: use backend='torch' or 'auto'"
            )
        if not numba_available():
            raise CsaError("the numba CSA backend needs numba: pip install numba, or use backend='torch'")
        return "numba"
    if backend == "triton":
        if not triton_ok:
            raise CsaError(
                f"the triton CSA backend runs on CUDA tensors (or on CPU under TRITON_INTERPRET=1), got "
                f"{features.device}: use backend='auto'"
            )
        _triton_kernels()
        return "triton"
    if backend == "auto":
        if numba_ok and numba_available():
            return "numba"
        if features.device.type == "cuda" and _TRITON_WORKS and triton_available():
            return "triton"
    return "torch"


# --- shared pieces ----------------------------------------------------------------------


def _plan(mask: Tensor, n: int, hw: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Hole bookkeeping: (hole bool N x HW, hole counts N, positions holes-first N x HW, L).

    ``order[n]`` lists sample n's hole positions in raster order, then its known positions in
    raster order; L is the largest hole count (one host read on accelerators).
    """
    hole = mask.reshape(n, hw) > 0.5
    nh = hole.sum(dim=1)
    # Stable sort on "is known" puts the holes first and keeps raster order inside both groups.
    order = torch.sort((~hole).to(torch.uint8), dim=1, stable=True).indices
    return hole, nh, order, int(nh.max()) if n else 0


def _unit_keys_torch(keys: Tensor) -> Tensor:
    """C x nk keys divided by their norms (column-wise), as :func:`csa.nn.attention._unit`."""
    return keys / (torch.linalg.vector_norm(keys, dim=0, keepdim=True) + EPS)


def _search_exact(
    x: Tensor, q: Tensor, order: Tensor, counts: list[int], chunk: int, use_numba: bool
) -> tuple[Tensor, Tensor]:
    """Per sample: hole queries (rows of q) against that sample's known keys.

    Returns (max score, argmax as an index into the sample's known list ``order[i, m:]``).
    """
    n, _, hw = x.shape
    length = q.shape[1]
    dmax = q.new_zeros(n, length)
    arg = torch.zeros(n, length, dtype=torch.long, device=x.device)
    for i, m in enumerate(counts):
        if m == 0:
            continue
        known = order[i, m:]
        nk = hw - m
        if nk == 0:
            raise CsaError(
                f"the mask of sample {i} leaves no known feature position for the CSA layer to copy from: "
                "leave more of the image unmasked"
            )
        rows = max(1, chunk // nk)
        if use_numba:
            keys = _scratch("keys", (x.shape[1], nk), x.dtype)
            _numba_kernels().gather_unit_columns(x[i].numpy(), known.numpy(), keys.numpy())
            scores = _scratch("scores", (min(m, rows), nk), x.dtype)
        else:
            keys = _unit_keys_torch(x[i].index_select(1, known))
            scores = None
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            block = torch.mm(q[i, r0:r1], keys, out=None if scores is None else scores[: r1 - r0])
            if use_numba:
                torch.amax(block, dim=1, out=dmax[i, r0:r1])
                _numba_kernels().first_index_of(block.numpy(), dmax[i, r0:r1].numpy(), arg[i, r0:r1].numpy())
            else:
                torch.max(block, dim=1, out=(dmax[i, r0:r1], arg[i, r0:r1]))
    return dmax, arg


def _search_padded(x: Tensor, q: Tensor, hole: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """All samples at once: queries against every position's unit key, hole keys masked out."""
    n, _, hw = x.shape
    length = q.shape[1]
    keys = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + EPS)  # N x C x HW
    masked = hole[:, None, :]
    rows = max(1, chunk // max(1, n * hw))
    dmax = q.new_empty(n, length)
    src = torch.empty(n, length, dtype=torch.long, device=x.device)
    for r0 in range(0, length, rows):
        r1 = min(length, r0 + rows)
        scores = torch.bmm(q[:, r0:r1], keys).masked_fill_(masked, float("-inf"))
        best, arg = scores.max(dim=2)
        dmax[:, r0:r1] = best
        src[:, r0:r1] = arg
    return dmax, src


# --- the torch backend: any device, batched over samples ----------------------------------


def _torch_forward(q: Tensor, s: Tensor, dmax: Tensor, stable: bool) -> tuple[Tensor, Tensor]:
    """Recurrence over the hole rank j for all samples at once; returns (g, stats) like the kernels.

    Everything that does not depend on the previous output is computed in bulk first, so a
    step costs about ten small ops (kernel launches on a GPU).
    """
    n, length, _ = q.shape
    qn = torch.linalg.vector_norm(q, dim=-1)
    kn = torch.linalg.vector_norm(s, dim=-1)
    inv_qe = 1.0 / (qn + EPS)
    dmx = dmax * inv_qe if stable else dmax
    pos_dmx = dmx.clamp(min=0) if stable else dmx
    g_all = torch.empty_like(q)
    g_all[:, 0] = s[:, 0]
    zero = q.new_zeros(n)
    cols: list[list[Tensor]] = [[zero], [zero], [zero], [zero], [zero]]  # a, b, Dad, tot, |g_prev|
    for j in range(1, length):
        g = g_all[:, j - 1]
        raw = torch.linalg.vecdot(g, q[:, j])
        if stable:
            gn = torch.linalg.vector_norm(g, dim=-1)
            dad = raw * inv_qe[:, j] / (gn + EPS)
            tot = dad.clamp(min=0) + pos_dmx[:, j]
            ok = tot > EPS
            inv = torch.where(ok, tot, 1.0).reciprocal()
            a = torch.where(ok, dad.clamp(min=0) * inv, 0.0)
            b = torch.where(ok, pos_dmx[:, j] * inv, 1.0)  # both cosines <= 0: copy the best match
        else:
            gn = zero
            dad = raw * inv_qe[:, j]
            tot = dad + dmx[:, j]
            inv = tot.reciprocal()
            a, b = dad * inv, dmx[:, j] * inv
        torch.addcmul(b[:, None] * s[:, j], a[:, None], g, out=g_all[:, j])
        for col, value in zip(cols, (a, b, dad, tot, gn)):
            col.append(value)
    a, b, dad, tot, gn = (torch.stack(col, dim=1) for col in cols)
    return g_all, torch.stack([a, b, dad, dmx, tot, qn, gn, kn], dim=-1)  # stats: N x L x 8


def _torch_backward(
    gout: Tensor, g: Tensor, q: Tensor, s: Tensor, dmax: Tensor, valid: Tensor, stats: Tensor, stable: bool
) -> tuple[Tensor, Tensor]:
    """Reverse recurrence for all samples at once; returns (grad of hole queries, grad of sources).

    Every gradient of step j is linear in d_j = <gbar_j, g_{j-1} - s_j> (the derivative of the
    loss along a - b), so all vector coefficients are computed up front, in bulk, and the
    sequential loop keeps four small operations per step.
    """
    n, length, c = q.shape
    later = valid.clone()
    later[:, 0] = False  # step 0 is a copy, no Dad / Dmax
    # Padding slots may hold inf / nan (official mode divides by zero there): zero them first.
    stats = torch.where(later[..., None], stats, 0.0)
    dmax = torch.where(later, dmax, 0.0)
    a, b, dad, dmx, tot, qn, gn, kn = stats.unbind(-1)
    t2 = tot * tot
    if stable:
        ok = tot > EPS
        p = torch.where(ok & (dad >= 0), dmx.clamp(min=0) / t2, torch.zeros_like(tot))
        r = torch.where(ok & (dmx >= 0), -dad.clamp(min=0) / t2, torch.zeros_like(tot))
    else:
        p, r = dmx / t2, -dad / t2
    zero = torch.zeros_like(tot)
    p, r = torch.where(later, p, zero), torch.where(later, r, zero)
    a = torch.where(later, a, zero)
    qe, ke = qn + EPS, kn + EPS
    rq = torch.where(qn > 0, 1.0 / qn, zero)
    rk = torch.where(kn > 0, 1.0 / kn, zero)
    g_prev = torch.cat([torch.zeros_like(g[:, :1]), g[:, :-1]], dim=1)
    if stable:
        ge = gn + EPS
        rg = torch.where(gn > 0, 1.0 / gn, zero)
        w_q, w_g = p / (qe * ge), -p * dad * rg / ge
        u_g, u_q, u_s = p / (qe * ge), -(p * dad + r * dmx) * rq / qe, r / (ke * qe)
        v_q, v_s = r / (ke * qe), -r * dmax * rk / (ke * qe)
    else:
        w_q, w_g = p / qe, zero
        u_g, u_q, u_s = p / qe, -p * dad * rq / qe, r / ke
        v_q, v_s = r / ke, -r * dmax * rk / ke

    def comb(*pairs: tuple[Tensor, Tensor]) -> Tensor:
        out = torch.zeros_like(q)
        for coef, vec in pairs:
            out.addcmul_(coef[..., None], vec)
        return out

    w = comb((w_q, q), (w_g, g_prev))  # carry_{j-1} = a_j gbar_j + d_j w_j
    direction = g_prev - s
    # Padding slots get no incoming gradient; with a = w = 0 there, the carry stays 0 through them.
    gbar_all = torch.where(valid[..., None], gout, 0.0)
    dcols = [torch.zeros_like(tot[:, 0])] * length
    carry = torch.zeros_like(q[:, 0])
    for j in range(length - 1, 0, -1):
        gbar = gbar_all[:, j].add_(carry)
        d = torch.linalg.vecdot(gbar, direction[:, j])
        dcols[j] = d
        carry = torch.addcmul(a[:, j, None] * gbar, d[:, None], w[:, j])
    gbar_all[:, 0].add_(carry)
    dvals = torch.stack(dcols, dim=1)
    dq = comb((u_g * dvals, g_prev), (u_q * dvals, q), (u_s * dvals, s))
    b = torch.where(later, b, torch.where(valid, torch.ones_like(b), zero))  # b_0 = 1: the copy
    dsrc = comb((b, gbar_all), (v_q * dvals, q), (v_s * dvals, s))
    return dq, dsrc


# --- the triton backend: CUDA, no host-device sync -------------------------------------------


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


def _triton_self_check(device: torch.device, mode: str) -> bool:
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
        for backend in ("triton", "torch"):
            xr = x.clone().requires_grad_()
            out = _FastCSA.apply(xr, mask, mode, backend, "auto", SEARCH_CHUNK_ELEMENTS)
            (out * weight).sum().backward()
            results.append((out.detach(), xr.grad))
        ok = all(torch.allclose(a, b, rtol=1e-3, atol=1e-4) for a, b in zip(*results))
        problem = "results differ from the torch backend"
    except Exception as exc:  # compile or launch failure
        ok, problem = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        warnings.warn(f"the Triton CSA kernels do not work here ({problem}); using the torch backend", stacklevel=4)
    return ok


# --- the autograd function ------------------------------------------------------------------


class _FastCSA(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, features: Tensor, mask: Tensor, mode: str, backend: str, search: str, chunk: int,
        sink: Optional[list] = None,
    ) -> Tensor:
        # sink: None, or a list that receives the layer's choices (a CsaSources), read from
        # tensors every backend keeps anyway; with None nothing extra is computed.
        n, c, h, w = features.shape
        hw = h * w
        x = features.detach().contiguous().view(n, c, hw)
        if backend == "triton":
            out, saved = _triton_forward(x, mask.detach(), mode == "stable")
            ctx.meta = (mode, backend, None, (n, c, h, w))
            ctx.save_for_backward(*saved)
            if sink is not None:
                _xt, _out, order, src, nh, _dmax, stats = saved
                valid = torch.arange(hw, device=x.device) < nh[:, None]
                sink.append(collect_sources(order, src, stats[..., 0], stats[..., 1], valid, (h, w)))
            return out.reshape(n, c, h, w)
        if backend == "numba":
            kern = _numba_kernels()
            flat = mask.detach().reshape(n, hw)
            if not flat.is_floating_point():
                flat = flat.float()
            order = torch.empty(n, hw, dtype=torch.long)
            nh = torch.empty(n, dtype=torch.long)
            length = kern.plan(flat.contiguous().numpy(), order.numpy(), nh.numpy())
        else:
            hole, nh, order, length = _plan(mask.detach(), n, hw)
        stable = mode == "stable"
        ctx.meta = (mode, backend, length, (n, c, h, w))
        if length == 0:
            ctx.save_for_backward()
            if sink is not None:
                none = torch.full((n, hw), -1, dtype=torch.long, device=x.device)
                sink.append(CsaSources(none, torch.zeros(n, hw, device=x.device), none.clone(), (h, w)))
            return features.detach().clone()
        if search == "auto":
            search = "exact" if x.device.type == "cpu" else "padded"
        if backend == "numba":
            # The kernels read sample n's hole positions as order[n, :nh[n]]. Rows j >= nh[n]
            # stay unset (never read) unless the padded search multiplies them.
            hole_pos = order
            nh_np = nh.numpy()
            q = x.new_zeros(n, length, c) if search == "padded" else x.new_empty(n, length, c)
            kern.gather_rows(x.numpy(), order.numpy(), nh_np, q.numpy())
        else:
            hole_pos = order[:, :length].contiguous()
            idx = hole_pos[:, None, :].expand(n, c, length)
            q = x.gather(2, idx).transpose(1, 2).contiguous()
        if search == "exact":
            dmax, arg = _search_exact(x, q, order, nh.tolist(), chunk, backend == "numba")
            src = None  # known positions: order[n, nh[n] + arg]
        else:
            if backend == "numba":
                hole = flat > 0.5
            dmax, src = _search_padded(x, q, hole, chunk)
            arg = None
        valid = None
        if backend == "numba":
            if arg is None:  # padded search: positions to indices into the known list
                rank = torch.empty_like(order).scatter_(1, order, torch.arange(hw).expand(n, hw))
                arg = rank.gather(1, src) - nh[:, None]
            src = torch.empty(n, length, dtype=torch.long)
            s = torch.empty_like(q)
            g = torch.empty_like(q)
            stats = torch.empty(n, length, 8, dtype=torch.float64)
            out = torch.empty_like(x)  # the kernel copies x into it, then writes the holes
            kern.forward(
                x.numpy(), out.numpy(), order.numpy(), arg.numpy(), src.numpy(), nh_np, dmax.numpy(), stable,
                q.numpy(), s.numpy(), g.numpy(), stats.numpy(),
            )
        else:
            valid = torch.arange(length, device=x.device) < nh[:, None]
            if src is None:
                src = order.gather(1, (nh[:, None] + arg).clamp(max=hw - 1))
            src = torch.where(valid, src, hole_pos)  # padding slots point at a real position
            s = x.gather(2, src[:, None, :].expand(n, c, length)).transpose(1, 2).contiguous()
            work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            g, stats = _torch_forward(q.to(work), s.to(work), dmax.to(work), stable)
            # Padding slots write their own feature back (a no-op), so no host read is needed.
            g = torch.where(valid[..., None], g.to(x.dtype), q)
            out = x.clone().scatter_(2, hole_pos[:, None, :].expand(n, c, length), g.transpose(1, 2))
        ctx.save_for_backward(hole_pos, src, nh, valid, dmax, q, s, g, stats)
        if sink is not None:
            ok = valid if valid is not None else torch.arange(length) < nh[:, None]
            sink.append(collect_sources(hole_pos[:, :length], src, stats[..., 0], stats[..., 1], ok, (h, w)))
        return out.view(n, c, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], ...]:
        mode, backend, length, (n, c, h, w) = ctx.meta
        none = (None,) * 6
        if backend == "triton":
            gi = _triton_backward(grad_out.reshape(n, c, h * w), ctx.saved_tensors, mode == "stable")
            return (gi.reshape(n, c, h, w),) + none
        if length == 0:
            return (grad_out.clone(),) + none
        hole_pos, src, nh, valid, dmax, q, s, g, stats = ctx.saved_tensors
        stable = mode == "stable"
        go = grad_out.contiguous().view(n, c, h * w)
        if backend == "numba":
            gi = torch.empty_like(go)  # the kernel copies go into it row by row
            gout, dq, dsrc = (_scratch(slot, tuple(q.shape), q.dtype) for slot in ("gout", "dq", "dsrc"))
            _numba_kernels().backward(
                go.numpy(), gi.numpy(), hole_pos.numpy(), src.numpy(), nh.numpy(), dmax.numpy(), stable,
                q.numpy(), s.numpy(), g.numpy(), stats.numpy(), gout.numpy(), dq.numpy(), dsrc.numpy(),
            )
        else:
            gi = go.clone()
            idx = hole_pos[:, None, :].expand(n, c, length)
            gout = go.gather(2, idx).transpose(1, 2)
            work = stats.dtype
            dq, dsrc = _torch_backward(
                gout.to(work), g.to(work), q.to(work), s.to(work), dmax.to(work), valid, stats, stable
            )
            # Padding slots sit on known positions: write their incoming gradient back unchanged.
            dq = torch.where(valid[..., None], dq.to(go.dtype), gout)
            gi.scatter_(2, idx, dq.transpose(1, 2))
            gi.scatter_add_(2, src[:, None, :].expand(n, c, length), dsrc.to(go.dtype).transpose(1, 2))
        return (gi.view(n, c, h, w),) + none


def csa_fast(
    features: Tensor,
    mask: Tensor,
    mode: str = "stable",
    *,
    backend: str = "auto",
    search: str = "auto",
    chunk_elements: int = SEARCH_CHUNK_ELEMENTS,
    return_sources: bool = False,
) -> Any:
    """The CSA layer, fast: same result and gradients as :func:`csa.nn.attention.csa_reference`.

    With ``return_sources`` returns (output, :class:`csa.nn.attention.CsaSources`), the same
    choices as the reference's.

    ``features`` N x C x H x W; ``mask`` N x 1 x H x W at feature resolution (1 = hole),
    any values (> 0.5 is hole). Every sample with a hole needs a known position (checked on
    CPU; on accelerators check the mask beforehand with
    :func:`csa.nn.attention.check_known_positions`).
    """
    if mode not in MODES:
        raise CsaError(f"CSA mode must be 'official' or 'stable', got {mode!r}")
    if search not in SEARCHES:
        raise CsaError(f"CSA search must be one of {SEARCHES}, got {search!r}")
    if features.dim() != 4:
        raise CsaError(f"CSA features must be N x C x H x W, got shape {tuple(features.shape)}")
    if tuple(mask.shape) != (features.shape[0], 1, *features.shape[2:]):
        raise CsaError(
            f"CSA mask shape {tuple(mask.shape)} does not match features {tuple(features.shape)}: "
            "expected N x 1 x H x W at feature resolution"
        )
    if chunk_elements < 1:
        raise CsaError(f"chunk_elements must be positive, got {chunk_elements}")
    global _TRITON_WORKS
    chosen = resolve_backend(backend, features)
    if chosen == "triton" and backend == "auto":
        key = (str(features.device), mode)
        if key not in _TRITON_CHECKED:
            _TRITON_CHECKED.add(key)
            _TRITON_WORKS = _TRITON_WORKS and _triton_self_check(features.device, mode)
        if not _TRITON_WORKS:
            chosen = "torch"
    sink: Optional[list] = [] if return_sources else None
    out = _FastCSA.apply(features, mask.to(features.device), mode, chosen, search, int(chunk_elements), sink)
    return (out, sink[0]) if return_sources else out

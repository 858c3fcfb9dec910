"""The fast layer's torch backend: any device and dtype, batched over samples.

The recurrence runs as a torch loop over the hole rank for all samples at once, its
reverse as a hand-written backward (docs/method.md, 'The CSA layer: fast implementation').
It reads one number back per forward (the largest hole count, which sizes its loop); its
backward reads none. The fallback wherever numba and Triton do not apply (for example
half precision on CPU), and the reference the Triton kernels check themselves against.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .fast import Plan, SearchedBackend
from .rules import EPS


class TorchBackend(SearchedBackend):
    """Batched torch code: the search and both recurrences as tensor ops."""

    name = "torch"

    def require(self, device: torch.device, dtype: torch.dtype) -> None:
        """Runs anywhere."""

    def plan(self, mask: Tensor, n: int, hw: int) -> Plan:
        hole = mask.reshape(n, hw) > 0.5
        nh = hole.sum(dim=1)
        # Stable sort on "is known" puts the holes first and keeps raster order inside both groups.
        order = torch.sort((~hole).to(torch.uint8), dim=1, stable=True).indices
        return Plan(order, nh, int(nh.max()) if n else 0, lambda: hole)  # one host read on accelerators

    def queries(self, x: Tensor, plan: Plan, padded: bool) -> tuple[Tensor, Tensor]:
        n, c, _ = x.shape
        hole_pos = plan.order[:, : plan.length].contiguous()
        idx = hole_pos[:, None, :].expand(n, c, plan.length)
        return hole_pos, x.gather(2, idx).transpose(1, 2).contiguous()

    def unit_keys(self, xi: Tensor, known: Tensor) -> Tensor:
        keys = xi.index_select(1, known)
        return keys / (torch.linalg.vector_norm(keys, dim=0, keepdim=True) + EPS)  # as reference._unit, by column

    def score_block(self, rows: int, nk: int, dtype: torch.dtype) -> Optional[Tensor]:
        return None

    def row_max(self, block: Tensor, dmax: Tensor, arg: Tensor) -> None:
        torch.max(block, dim=1, out=(dmax, arg))

    def generate(self, x: Tensor, q: Tensor, hole_pos: Tensor, plan: Plan, dmax: Tensor, arg: Optional[Tensor],
                 src: Optional[Tensor], stable: bool) -> tuple[Tensor, Tensor, Optional[Tensor], tuple]:
        n, c, hw = x.shape
        order, nh, length = plan.order, plan.nh, plan.length
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
        return out, src, valid, (hole_pos, src, nh, valid, dmax, q, s, g, stats)

    def reverse(self, go: Tensor, saved: tuple[Tensor, ...], length: int, stable: bool) -> Tensor:
        hole_pos, src, nh, valid, dmax, q, s, g, stats = saved
        n, c, _ = go.shape
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
        return gi


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

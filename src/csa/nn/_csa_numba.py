"""Compiled CPU kernels of the fast CSA layer (numba): gathers, the recurrence and its reverse.

Imported lazily by :mod:`csa.nn.fast_attention` (importing numba costs ~0.3 s, compiling
~seconds the first time; ``cache=True`` keeps the machine code on disk afterwards).

Layouts: features are ``x[n, c, p]`` (N x C x HW, contiguous, the network's layout); the
per-hole vectors are rows ``q[n, j, c]`` (N x L x C) so that the recurrence reads contiguous
memory. L is the largest hole count of the batch; sample n uses rows ``j < nh[n]`` only.

Arithmetic follows SPEC 5 (see :func:`csa.nn.attention.csa_reference`); dot products and
norms accumulate in float64, vector updates run in the storage dtype (float32 SIMD lanes for
float32). The kernels run single-threaded and release the GIL: their work is O(holes x C)
per call, and a numba thread pool next to torch's OpenMP pool was measured to slow both.

``stats[n, j, :]`` keeps, per hole j >= 1, what the backward needs:
0 a, 1 b, 2 Dad (as used: official <g,q>/|q|, stable the cosine, before the clamp),
3 Dmax (as used: official raw, stable the cosine, before the clamp), 4 a's denominator,
5 |q_j|, 6 |g_{j-1}|, 7 |s_j|.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

EPS = 1e-8
_BLOCK = 8  # channels per block in the transposing gathers (8 rows of lines stay in L1)

# numpy error model: x / 0 gives inf / nan as torch does. reassoc lets the dot products
# vectorise; no nnan / ninf flags, so official mode's inf and nan stay as they are.
_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})


@njit(**_JIT)
def plan(hole, order, nh):
    """order[n] = sample n's hole positions, then its known positions (raster order); nh = hole counts."""
    n_samples, hw = hole.shape
    for n in range(n_samples):
        m = 0
        for p in range(hw):
            if hole[n, p]:
                order[n, m] = p
                m += 1
        nh[n] = m
        t = m
        for p in range(hw):
            if not hole[n, p]:
                order[n, t] = p
                t += 1


@njit(**_JIT)
def gather_rows(x, pos, nh, out):
    """out[n, j, :] = x[n, :, pos[n, j]] for j < nh[n] (a transposing gather, blocked over channels).

    Visits the positions in increasing order, so that neighbouring positions share cache lines.
    """
    n_samples, c = x.shape[0], x.shape[1]
    for n in range(n_samples):
        m = nh[n]
        order = np.argsort(pos[n, :m])
        for c0 in range(0, c, _BLOCK):
            c1 = min(c0 + _BLOCK, c)
            for t in range(m):
                j = order[t]
                p = pos[n, j]
                dst = out[n, j]
                for k in range(c0, c1):
                    dst[k] = x[n, k, p]


@njit(**_JIT)
def gather_unit_columns(x, known, out):
    """out[:, t] = x[:, known[t]] / (|x[:, known[t]]| + eps): one sample's normalised keys (C x nk)."""
    c, hw = x.shape
    nk = known.shape[0]
    sq = np.zeros(hw)  # squared norms of every position: one contiguous, vectorised pass
    for k in range(c):
        row = x[k]
        for p in range(hw):
            v = np.float64(row[p])
            sq[p] += v * v
    inv = np.empty(nk, dtype=x.dtype)
    for t in range(nk):
        inv[t] = 1.0 / (math.sqrt(sq[known[t]]) + EPS)
    for k in range(c):
        row = x[k]
        dst = out[k]
        for t in range(nk):
            dst[t] = row[known[t]] * inv[t]


@njit(**_JIT)
def _copy_scatter_rows(dst, base, pos, nh, src):
    """dst = base, then dst[n, :, pos[n, j]] = src[n, j, :] for j < nh[n].

    Row by row: each 1 x HW row of dst is copied and patched while it sits in cache.
    """
    n_samples, c = dst.shape[0], dst.shape[1]
    for n in range(n_samples):
        m = nh[n]
        for k in range(c):
            row = dst[n, k]
            row[:] = base[n, k]
            for j in range(m):
                row[pos[n, j]] = src[n, j, k]


@njit(**_JIT)
def _copy_scatter_grads(dst, base, hole_pos, src_pos, nh, dq, dsrc):
    """dst = base; dst[n, :, hole_pos] = dq; then dst[n, :, src_pos] += dsrc (sources are known)."""
    n_samples, c = dst.shape[0], dst.shape[1]
    for n in range(n_samples):
        m = nh[n]
        for k in range(c):
            row = dst[n, k]
            row[:] = base[n, k]
            for j in range(m):
                row[hole_pos[n, j]] = dq[n, j, k]
            for j in range(m):
                row[src_pos[n, j]] += dsrc[n, j, k]


@njit(**_JIT)
def forward(x, out, hole_pos, src_pos, nh, dmax, stable, q, s, g, stats):
    """The generate recurrence: fills s (sources), g (hole outputs), stats; out = x with g in the holes."""
    gather_rows(x, src_pos, nh, s)
    n_samples, _, c = q.shape
    ab = np.empty(2, dtype=q.dtype)
    for n in range(n_samples):
        m = nh[n]
        if m == 0:
            continue
        for k in range(c):
            g[n, 0, k] = s[n, 0, k]
        for j in range(1, m):
            # 1-d row views: plain contiguous loops that LLVM vectorises
            g_prev, g_row, q_row, s_row = g[n, j - 1], g[n, j], q[n, j], s[n, j]
            raw = 0.0
            qq = 0.0
            gg = 0.0
            ss = 0.0
            for k in range(c):
                gp = np.float64(g_prev[k])
                qv = np.float64(q_row[k])
                sv = np.float64(s_row[k])
                raw += gp * qv
                qq += qv * qv
                gg += gp * gp
                ss += sv * sv
            qn = math.sqrt(qq)
            gn = math.sqrt(gg)
            dm = np.float64(dmax[n, j])
            if stable:
                dad = raw / ((qn + EPS) * (gn + EPS))
                dmx = dm / (qn + EPS)
                xa = max(dad, 0.0)
                xb = max(dmx, 0.0)
                tot = xa + xb
                if tot > EPS:
                    a = xa / tot
                    b = xb / tot
                else:
                    a = 0.0
                    b = 1.0
            else:
                dad = raw / (qn + EPS)
                dmx = dm
                tot = dad + dmx
                a = dad / tot
                b = dmx / tot
            ab[0] = a  # in the storage dtype (see backward)
            ab[1] = b
            a_s, b_s = ab[0], ab[1]
            for k in range(c):
                g_row[k] = a_s * g_prev[k] + b_s * s_row[k]
            st = stats[n, j]
            st[0] = a
            st[1] = b
            st[2] = dad
            st[3] = dmx
            st[4] = tot
            st[5] = qn
            st[6] = gn
            st[7] = math.sqrt(ss)
    _copy_scatter_rows(out, x, hole_pos, nh, g)


@njit(**_JIT)
def backward(grad_out, grad_in, hole_pos, src_pos, nh, dmax, stable, q, s, g, stats, gout, dq, dsrc):
    """Reverse recurrence: writes the features' gradient into grad_in (grad_out, patched).

    Hole positions get the gradient through Dad and Dmax (their own output is replaced);
    the chosen known positions get the copies' and Dmax's gradients added.
    """
    gather_rows(grad_out, hole_pos, nh, gout)
    n_samples, _, c = q.shape
    carry = np.zeros(c, dtype=q.dtype)  # storage dtype: float64 here halves the loop's speed
    cf = np.empty(9, dtype=q.dtype)
    for n in range(n_samples):
        m = nh[n]
        if m == 0:
            continue
        carry[:] = 0.0
        for j in range(m - 1, 0, -1):
            st = stats[n, j]
            a, b, dad, dmx, tot, qn, gn, kn = st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7]
            g_prev, q_row, s_row, go_row = g[n, j - 1], q[n, j], s[n, j], gout[n, j]
            dq_row, ds_row = dq[n, j], dsrc[n, j]
            # a = Dad/tot and b = Dmax/tot enter only through dL/da - dL/db = <gbar, g_{j-1} - s_j>.
            diff = 0.0
            for k in range(c):
                diff += np.float64((go_row[k] + carry[k]) * (g_prev[k] - s_row[k]))
            # d loss / d(Dad), d loss / d(Dmax) through a = Dad/tot, b = Dmax/tot
            if stable:
                if tot > EPS:
                    t2 = tot * tot
                    d_dad = diff * max(dmx, 0.0) / t2 if dad >= 0.0 else 0.0
                    d_dmx = -diff * max(dad, 0.0) / t2 if dmx >= 0.0 else 0.0
                else:
                    d_dad = 0.0
                    d_dmx = 0.0
            else:
                t2 = tot * tot
                d_dad = diff * dmx / t2
                d_dmx = -diff * dad / t2
            qe = qn + EPS
            ke = kn + EPS
            rq = 1.0 / qn if qn > 0.0 else 0.0  # d|v|/dv = v/|v|, taken as 0 at v = 0 (as torch)
            rk = 1.0 / kn if kn > 0.0 else 0.0
            raw_dmax = np.float64(dmax[n, j])
            # Each gradient is a combination of g_{j-1}, q_j, s_j (and gbar for the copies).
            if stable:
                ge = gn + EPS
                rg = 1.0 / gn if gn > 0.0 else 0.0
                carry_q = d_dad / (qe * ge)
                carry_g = -d_dad * dad * rg / ge
                dq_g = d_dad / (qe * ge)
                dq_q = -(d_dad * dad + d_dmx * dmx) * rq / qe
                dq_s = d_dmx / (ke * qe)
                ds_q = d_dmx / (ke * qe)
                ds_s = -d_dmx * raw_dmax * rk / (ke * qe)
            else:
                carry_q = d_dad / qe
                carry_g = 0.0
                dq_g = d_dad / qe
                dq_q = -d_dad * dad * rq / qe
                dq_s = d_dmx / ke
                ds_q = d_dmx / ke
                ds_s = -d_dmx * raw_dmax * rk / ke
            # Coefficients in the storage dtype, so that float32 runs in float32 SIMD lanes.
            cf[0], cf[1], cf[2], cf[3], cf[4] = dq_g, dq_q, dq_s, b, ds_q
            cf[5], cf[6], cf[7] = ds_s, a, carry_q
            cf[8] = carry_g
            c0, c1, c2, c3, c4, c5, c6, c7, c8 = cf[0], cf[1], cf[2], cf[3], cf[4], cf[5], cf[6], cf[7], cf[8]
            for k in range(c):
                gbar = go_row[k] + carry[k]
                gp = g_prev[k]
                qv = q_row[k]
                sv = s_row[k]
                dq_row[k] = c0 * gp + c1 * qv + c2 * sv
                ds_row[k] = c3 * gbar + c4 * qv + c5 * sv
                carry[k] = c6 * gbar + c7 * qv + c8 * gp
        for k in range(c):
            dq[n, 0, k] = 0.0  # the first hole copies its source: its own feature gets no gradient
            dsrc[n, 0, k] = gout[n, 0, k] + carry[k]
    _copy_scatter_grads(grad_in, grad_out, hole_pos, src_pos, nh, dq, dsrc)

"""Compiled CPU kernels of the fast CSA layer (numba): gathers, the recurrence and its reverse.

Imported lazily by :mod:`csa.nn.attention.numba_backend` (importing numba costs ~0.3 s, compiling
~seconds the first time; ``cache=True`` keeps the machine code on disk afterwards).

Layouts: features are ``x[n, c, p]`` (N x C x HW, contiguous, the network's layout); the
per-hole vectors are rows ``q[n, j, c]`` (N x L x C) so that the recurrence reads contiguous
memory. L is the largest hole count of the batch; sample n uses rows ``j < nh[n]`` only.
Positions come from ``order[n]`` (N x HW, from :func:`plan`): the hole positions first
(``j < nh[n]``), then the known ones, each in raster order.

Arithmetic follows docs/method.md, 'The CSA layer' (see :func:`csa.nn.attention.csa_reference`); dot products and
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
_BLOCK = 8  # channels per block in the transposing gathers and scatters (8 rows stay in L1)

# numpy error model: x / 0 gives inf / nan as torch does. reassoc lets the dot products
# vectorise; no nnan / ninf flags, so official mode's inf and nan stay as they are.
_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})


@njit(**_JIT)
def plan(mask, order, nh):
    """order[n] = sample n's hole positions (mask > 0.5), then its known positions, each in raster
    order; nh = hole counts. Returns the largest hole count.
    """
    n_samples, hw = mask.shape
    most = 0
    for n in range(n_samples):
        m = 0
        for p in range(hw):
            if mask[n, p] > 0.5:
                order[n, m] = p
                m += 1
        nh[n] = m
        most = max(most, m)
        t = m
        for p in range(hw):
            if not mask[n, p] > 0.5:
                order[n, t] = p
                t += 1
    return most


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
    """out[:, t] = x[:, known[t]] / (|x[:, known[t]]| + eps): one sample's normalised keys (C x nk).

    The known positions come in runs of consecutive positions (rows of the feature map between
    holes); each run is copied and scaled as one contiguous, vectorised slice.
    """
    c, hw = x.shape
    nk = known.shape[0]
    sq = np.zeros(hw)  # squared norms of every position: one contiguous, vectorised pass
    for k in range(c):
        row = x[k]
        for p in range(hw):
            v = np.float64(row[p])
            sq[p] += v * v
    inv = np.empty(nk, dtype=x.dtype)
    starts = np.empty(nk + 1, dtype=np.int64)  # runs: [starts[r], starts[r + 1]) in t
    runs = 0
    for t in range(nk):
        inv[t] = 1.0 / (math.sqrt(sq[known[t]]) + EPS)
        if t == 0 or known[t] != known[t - 1] + 1:
            starts[runs] = t
            runs += 1
    starts[runs] = nk
    for k in range(c):
        row = x[k]
        dst = out[k]
        for r in range(runs):
            t0, t1 = starts[r], starts[r + 1]
            d, v, f = dst[t0:t1], row[known[t0] : known[t0] + t1 - t0], inv[t0:t1]  # slices vectorise
            for t in range(t1 - t0):
                d[t] = v[t] * f[t]


@njit(**_JIT)
def first_index_of(scores, best, arg):
    """arg[i] = the first t with scores[i, t] == best[i] (the first NaN when best[i] is NaN):
    torch.max's index, given torch.amax's value (amax vectorises, max's index search does not).
    """
    for i in range(scores.shape[0]):
        row = scores[i]
        b = best[i]
        found = 0
        if b != b:
            for t in range(row.shape[0]):
                if row[t] != row[t]:
                    found = t
                    break
        else:
            for t in range(row.shape[0]):
                if row[t] == b:
                    found = t
                    break
        arg[i] = found


@njit(**_JIT)
def _copy_scatter(dst, base, pos, nh, src, add, add_pos, add_src):
    """dst = base; dst[n, :, pos[n, j]] = src[n, j, :] for j < nh[n]; then, with ``add``,
    dst[n, :, add_pos[n, j]] += add_src[n, j, :].

    By blocks of channels: the block's rows are copied, then patched from the row-major
    sources while the rows and the sources' short row segments stay in cache.
    """
    n_samples, c = dst.shape[0], dst.shape[1]
    for n in range(n_samples):
        m = nh[n]
        for c0 in range(0, c, _BLOCK):
            c1 = min(c0 + _BLOCK, c)
            for k in range(c0, c1):
                dst[n, k, :] = base[n, k, :]
            for j in range(m):
                p = pos[n, j]
                r = src[n, j]
                for k in range(c0, c1):
                    dst[n, k, p] = r[k]
            if add:
                for j in range(m):
                    p = add_pos[n, j]
                    r = add_src[n, j]
                    for k in range(c0, c1):
                        dst[n, k, p] += r[k]


@njit(**_JIT)
def forward(x, out, order, arg, src_pos, nh, dmax, stable, q, s, g, stats):
    """The generate recurrence: fills src_pos (the chosen known positions, from ``arg``, indices
    into each sample's known list), s (sources), g (hole outputs), stats; out = x with g in the holes.
    """
    for n in range(order.shape[0]):
        m = nh[n]
        for j in range(m):
            src_pos[n, j] = order[n, m + arg[n, j]]
    hole_pos = order
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
    _copy_scatter(out, x, hole_pos, nh, g, False, hole_pos, g)


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
    _copy_scatter(grad_in, grad_out, hole_pos, nh, dq, True, src_pos, dsrc)

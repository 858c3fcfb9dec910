"""Triton kernels of the fast CSA layer (CUDA): the search, the recurrence and its reverse.

Imported lazily by :mod:`csa.nn.attention.triton_backend` when the features live on a CUDA device and
Triton imports (it ships with PyTorch's CUDA wheels; nothing is compiled on the user's
machine beyond Triton's own JIT). With ``TRITON_INTERPRET=1`` set before the first import,
the same kernels run on CPU tensors through Triton's interpreter: that is how the tests
check them on a machine without a GPU.

No kernel's size depends on a value that lives on the device: every sample's hole count is
read inside the kernels, so the layer never waits for the GPU (no host-device sync).

Layouts: features transposed to rows, ``xt[n, p, :]`` (N x HW x C, contiguous), so that
every load is one contiguous row. ``order[n]`` lists sample n's hole positions, then its
known positions, each in raster order; ``nh[n]`` is its hole count.

Arithmetic: as :mod:`csa.nn._csa_numba` (docs/method.md, 'The CSA layer'), in the work dtype (float32 or float64).
``stats[n, j, :]`` keeps 0 a, 1 b, 2 Dad, 3 Dmax (both as used), 4 a's denominator,
5 |q_j|, 6 |g_{j-1}|, 7 |s_j| for the backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

EPS = tl.constexpr(1e-8)  # kernels may read module globals only as constexpr
BLOCK_M = 32  # hole queries per search program
BLOCK_N = 32  # known keys per search step
BLOCK_K = 32  # channels per partial product (float32, tl.dot)
BLOCK_K_FLOAT64 = 8  # channels per broadcast product in float64 (BM x BK x BN values at once)


@triton.jit
def _search_kernel(
    xt_ptr, ku_ptr, order_ptr, nh_ptr, dmax_ptr, arg_ptr,
    HW, C,
    USE_DOT: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Program (n, block of BM hole ranks): max and first argmax of <q, unit key> over the known keys."""
    n = tl.program_id(0).to(tl.int64)
    r0 = tl.program_id(1) * BM
    m = tl.load(nh_ptr + n)
    if r0 < m:
        base = n * HW * C
        rows = r0 + tl.arange(0, BM)
        rmask = rows < m
        qpos = tl.load(order_ptr + n * HW + rows, mask=rmask, other=0)
        nk = HW - m
        best = tl.full([BM], float("-inf"), dtype=xt_ptr.dtype.element_ty)
        barg = tl.zeros([BM], dtype=tl.int64)
        for t0 in range(0, nk, BN):
            cols = t0 + tl.arange(0, BN)
            cmask = cols < nk
            kpos = tl.load(order_ptr + n * HW + m + cols, mask=cmask, other=0)
            acc = tl.zeros([BM, BN], dtype=xt_ptr.dtype.element_ty)
            for k0 in range(0, C, BK):
                ks = k0 + tl.arange(0, BK)
                kmask = ks < C
                a = tl.load(xt_ptr + base + qpos[:, None] * C + ks[None, :],
                            mask=rmask[:, None] & kmask[None, :], other=0.0)
                b = tl.load(ku_ptr + base + kpos[None, :] * C + ks[:, None],
                            mask=kmask[:, None] & cmask[None, :], other=0.0)
                if USE_DOT:  # float32: tensor cores in full precision (no TF32: argmaxes must match)
                    acc += tl.dot(a, b, input_precision="ieee")
                else:  # float64: a broadcast product (tl.dot's float64 support varies by GPU)
                    acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
            acc = tl.where(cmask[None, :], acc, float("-inf"))
            bmax = tl.max(acc, axis=1)
            bidx = tl.argmax(acc, axis=1).to(tl.int64)
            better = bmax > best  # strict: on ties the earlier key wins, as torch.max
            best = tl.where(better, bmax, best)
            barg = tl.where(better, t0 + bidx, barg)
        tl.store(dmax_ptr + n * HW + rows, best, mask=rmask)
        tl.store(arg_ptr + n * HW + rows, barg, mask=rmask)


@triton.jit
def _forward_kernel(
    xt_ptr, out_ptr, order_ptr, src_ptr, nh_ptr, dmax_ptr, stats_ptr,
    HW, C,
    STABLE: tl.constexpr, BC: tl.constexpr,
):
    """Program n: the generate recurrence over sample n's holes, written into out (rows).

    Software-pipelined: while step j computes, the rows of step j + 1 and the positions of
    step j + 2 are already being loaded (a step's loads do not depend on the previous
    output, only its arithmetic does), so each step waits on its arithmetic alone.
    """
    n = tl.program_id(0).to(tl.int64)
    m = tl.load(nh_ptr + n)
    offs = tl.arange(0, BC)
    cm = offs < C
    base = n * HW * C
    row = n * HW
    if m > 0:
        last = m - 1
        p0 = tl.load(order_ptr + row)
        g = tl.load(xt_ptr + base + tl.load(src_ptr + row) * C + offs, mask=cm, other=0.0)
        tl.store(out_ptr + base + p0 * C + offs, g, mask=cm)
        # Step 1's rows; step 2's positions (indices clamp to the last hole: loads stay in bounds).
        j1 = tl.minimum(1, last)
        p = tl.load(order_ptr + row + j1)
        qv = tl.load(xt_ptr + base + p * C + offs, mask=cm, other=0.0)
        sv = tl.load(xt_ptr + base + tl.load(src_ptr + row + j1) * C + offs, mask=cm, other=0.0)
        dm = tl.load(dmax_ptr + row + j1)
        j2 = tl.minimum(2, last)
        p_next = tl.load(order_ptr + row + j2)
        sp_next = tl.load(src_ptr + row + j2)
        for j in range(1, m):
            # Loads for later steps first: they overlap this step's arithmetic.
            q_next = tl.load(xt_ptr + base + p_next * C + offs, mask=cm, other=0.0)
            s_next = tl.load(xt_ptr + base + sp_next * C + offs, mask=cm, other=0.0)
            dm_next = tl.load(dmax_ptr + row + tl.minimum(j + 1, last))
            j_far = tl.minimum(j + 2, last)
            p_far = tl.load(order_ptr + row + j_far)
            sp_far = tl.load(src_ptr + row + j_far)

            raw = tl.sum(g * qv, axis=0)
            qn = tl.sqrt(tl.sum(qv * qv, axis=0))
            gn = tl.sqrt(tl.sum(g * g, axis=0))
            kn = tl.sqrt(tl.sum(sv * sv, axis=0))
            if STABLE:
                dad = raw / ((qn + EPS) * (gn + EPS))
                dmx = dm / (qn + EPS)
                xa = tl.maximum(dad, 0.0)
                xb = tl.maximum(dmx, 0.0)
                tot = xa + xb
                ok = tot > EPS
                safe = tl.where(ok, tot, 1.0)
                a = tl.where(ok, xa / safe, 0.0)
                b = tl.where(ok, xb / safe, 1.0)  # both cosines <= 0: copy the best match
            else:
                dad = raw / (qn + EPS)
                dmx = dm
                tot = dad + dmx
                a = dad / tot
                b = dmx / tot
            g = a * g + b * sv
            tl.store(out_ptr + base + p * C + offs, g, mask=cm)
            st = stats_ptr + (row + j) * 8
            tl.store(st + 0, a)
            tl.store(st + 1, b)
            tl.store(st + 2, dad)
            tl.store(st + 3, dmx)
            tl.store(st + 4, tot)
            tl.store(st + 5, qn)
            tl.store(st + 6, gn)
            tl.store(st + 7, kn)

            p, qv, sv, dm = p_next, q_next, s_next, dm_next
            p_next, sp_next = p_far, sp_far


@triton.jit
def _backward_kernel(
    gt_ptr, gin_ptr, xt_ptr, out_ptr, order_ptr, src_ptr, nh_ptr, dmax_ptr, stats_ptr,
    HW, C,
    STABLE: tl.constexpr, BC: tl.constexpr,
):
    """Program n: the reverse recurrence. gin starts as a copy of gt (the output's gradient,
    rows); hole rows are overwritten with their features' gradient, and the chosen known
    rows get the copies' and Dmax's gradients added (atomically: holes share sources).

    Pipelined like the forward: step j - 1's rows and step j - 2's positions load while
    step j computes.
    """
    n = tl.program_id(0).to(tl.int64)
    m = tl.load(nh_ptr + n)
    offs = tl.arange(0, BC)
    cm = offs < C
    base = n * HW * C
    row = n * HW
    if m > 0:
        carry = tl.zeros([BC], dtype=xt_ptr.dtype.element_ty)
        # Step j = m - 1 needs p_j, p_{j-1}, s_j and their rows; then p_{j-2}, s_{j-1} ahead.
        j = m - 1
        p = tl.load(order_ptr + row + j)
        pp = tl.load(order_ptr + row + tl.maximum(j - 1, 0))
        sp = tl.load(src_ptr + row + j)
        g_prev = tl.load(out_ptr + base + pp * C + offs, mask=cm, other=0.0)
        qv = tl.load(xt_ptr + base + p * C + offs, mask=cm, other=0.0)
        sv = tl.load(xt_ptr + base + sp * C + offs, mask=cm, other=0.0)
        go = tl.load(gt_ptr + base + p * C + offs, mask=cm, other=0.0)
        ppp = tl.load(order_ptr + row + tl.maximum(j - 2, 0))
        sp_next = tl.load(src_ptr + row + tl.maximum(j - 1, 0))
        for jj in range(0, m - 1):
            j = m - 1 - jj
            # Step j - 1's rows (its positions: pp, ppp, sp_next) and step j - 2's positions.
            g_prev_next = tl.load(out_ptr + base + ppp * C + offs, mask=cm, other=0.0)
            q_next = tl.load(xt_ptr + base + pp * C + offs, mask=cm, other=0.0)
            s_next = tl.load(xt_ptr + base + sp_next * C + offs, mask=cm, other=0.0)
            go_next = tl.load(gt_ptr + base + pp * C + offs, mask=cm, other=0.0)
            p_far = tl.load(order_ptr + row + tl.maximum(j - 3, 0))
            sp_far = tl.load(src_ptr + row + tl.maximum(j - 2, 0))

            st = stats_ptr + (row + j) * 8
            a = tl.load(st + 0)
            b = tl.load(st + 1)
            dad = tl.load(st + 2)
            dmx = tl.load(st + 3)
            tot = tl.load(st + 4)
            qn = tl.load(st + 5)
            gn = tl.load(st + 6)
            kn = tl.load(st + 7)
            raw_dmax = tl.load(dmax_ptr + row + j)
            gbar = go + carry
            # a = Dad/tot and b = Dmax/tot enter only through dL/da - dL/db = <gbar, g_{j-1} - s_j>.
            diff = tl.sum(gbar * (g_prev - sv), axis=0)
            if STABLE:
                ok = tot > EPS
                t2 = tl.where(ok, tot * tot, 1.0)
                d_dad = tl.where(ok & (dad >= 0.0), diff * tl.maximum(dmx, 0.0) / t2, 0.0)
                d_dmx = tl.where(ok & (dmx >= 0.0), -diff * tl.maximum(dad, 0.0) / t2, 0.0)
            else:
                t2 = tot * tot
                d_dad = diff * dmx / t2
                d_dmx = -diff * dad / t2
            qe = qn + EPS
            ke = kn + EPS
            rq = tl.where(qn > 0.0, 1.0 / tl.where(qn > 0.0, qn, 1.0), 0.0)  # d|v|/dv taken as 0 at v = 0
            rk = tl.where(kn > 0.0, 1.0 / tl.where(kn > 0.0, kn, 1.0), 0.0)
            if STABLE:
                ge = gn + EPS
                rg = tl.where(gn > 0.0, 1.0 / tl.where(gn > 0.0, gn, 1.0), 0.0)
                carry_q = d_dad / (qe * ge)
                carry_g = -d_dad * dad * rg / ge
                dq_g = d_dad / (qe * ge)
                dq_q = -(d_dad * dad + d_dmx * dmx) * rq / qe
                dq_s = d_dmx / (ke * qe)
                ds_q = d_dmx / (ke * qe)
                ds_s = -d_dmx * raw_dmax * rk / (ke * qe)
            else:
                carry_q = d_dad / qe
                carry_g = 0.0 * d_dad
                dq_g = d_dad / qe
                dq_q = -d_dad * dad * rq / qe
                dq_s = d_dmx / ke
                ds_q = d_dmx / ke
                ds_s = -d_dmx * raw_dmax * rk / ke
            tl.store(gin_ptr + base + p * C + offs, dq_g * g_prev + dq_q * qv + dq_s * sv, mask=cm)
            tl.atomic_add(gin_ptr + base + sp * C + offs, b * gbar + ds_q * qv + ds_s * sv, mask=cm)
            carry = a * gbar + carry_q * qv + carry_g * g_prev

            p, sp = pp, sp_next
            pp = ppp
            g_prev, qv, sv, go = g_prev_next, q_next, s_next, go_next
            ppp, sp_next = p_far, sp_far
        p0 = tl.load(order_ptr + row)
        s0 = tl.load(src_ptr + row)
        gbar0 = tl.load(gt_ptr + base + p0 * C + offs, mask=cm, other=0.0) + carry
        # The first hole copies its source: its own feature gets no gradient.
        tl.store(gin_ptr + base + p0 * C + offs, tl.zeros([BC], dtype=xt_ptr.dtype.element_ty), mask=cm)
        tl.atomic_add(gin_ptr + base + s0 * C + offs, gbar0, mask=cm)


def _recurrence_warps(block_c: int) -> int:
    """One warp for up to 512 channels: the per-step sums then reduce with warp shuffles
    alone (no shared memory, no barrier), which is what bounds a sequential step."""
    return max(1, min(8, block_c // 512))


def search(xt, ku, order, nh, dmax, arg) -> None:
    """dmax[n, j], arg[n, j] for j < nh[n]: best <q_j, unit key> and its index in the known list."""
    n, hw, c = xt.shape
    grid = (n, triton.cdiv(hw, BLOCK_M))
    _search_kernel[grid](
        xt, ku, order, nh, dmax, arg, hw, c,
        USE_DOT=xt.dtype != torch.float64, BM=BLOCK_M, BN=BLOCK_N,
        BK=BLOCK_K if xt.dtype != torch.float64 else BLOCK_K_FLOAT64,
    )


def forward(xt, out, order, src, nh, dmax, stats, stable: bool) -> None:
    n, hw, c = xt.shape
    block_c = triton.next_power_of_2(c)
    _forward_kernel[(n,)](
        xt, out, order, src, nh, dmax, stats, hw, c, STABLE=stable, BC=block_c,
        num_warps=_recurrence_warps(block_c),
    )


def backward(gt, gin, xt, out, order, src, nh, dmax, stats, stable: bool) -> None:
    n, hw, c = xt.shape
    block_c = triton.next_power_of_2(c)
    _backward_kernel[(n,)](
        gt, gin, xt, out, order, src, nh, dmax, stats, hw, c, STABLE=stable, BC=block_c,
        num_warps=_recurrence_warps(block_c),
    )

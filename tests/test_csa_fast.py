"""The fast CSA layer against the plain reference: values and gradients, both modes, all paths."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in Triton's CPU interpreter (set before they import).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from csa.errors import CsaError
from csa.nn.attention import CoherentSemanticAttention, csa_reference, numba_backend, resolve_backend, triton_backend
from csa.nn.fast_attention import csa_fast

HAS_TRITON = triton_backend.triton_available()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (pip install triton)")
TRITON = pytest.param("triton", marks=needs_triton)
BACKENDS = ["numba", "torch", TRITON]
PATHS = [
    ("numba", "exact"), ("numba", "padded"), ("torch", "exact"), ("torch", "padded"),
    pytest.param("triton", "auto", marks=needs_triton),
]
TOL = {torch.float64: dict(rtol=1e-8, atol=1e-8), torch.float32: dict(rtol=1e-4, atol=1e-4)}


def batch_masks(h: int = 8, w: int = 9) -> torch.Tensor:
    """Four samples, four different masks (so four hole counts and padding in the batch)."""
    m = torch.zeros(4, 1, h, w)
    m[0, :, 2:5, 3:7] = 1  # a block spanning several rows
    m[1, :, 0, 0] = 1  # a single hole, at the corner
    m[2, :, h - 3 :, : 3] = 1  # at the bottom-left border
    m[2, :, 0, w - 2 :] = 1  # plus a second piece at the top-right border
    m[3, :, :, 4] = 1  # a column through the whole image: every row has a hole
    return m


def features_with_margin(mask: torch.Tensor, c: int, dtype: torch.dtype, positive: bool, seed: int = 0) -> torch.Tensor:
    """Features whose search argmax has a clear margin (so float32 and finite differences agree).

    Each hole feature is a scaled, slightly perturbed copy of one known feature: its best
    match wins by a wide cosine gap. positive=True keeps every entry > 0 (official mode
    then never divides by a sign-changing sum).
    """
    gen = torch.Generator().manual_seed(seed)
    n, _, h, w = mask.shape
    if positive:
        f = torch.rand(n, c, h * w, generator=gen, dtype=torch.float64) + 0.1
    else:
        f = torch.randn(n, c, h * w, generator=gen, dtype=torch.float64)
    for i in range(n):
        hole = mask[i].flatten() > 0.5
        known = (~hole).nonzero().flatten()
        for p in hole.nonzero().flatten().tolist():
            k = known[torch.randint(len(known), (1,), generator=gen)].item()
            noise = 0.05 * torch.rand(c, generator=gen, dtype=torch.float64)
            f[i, :, p] = (0.5 + torch.rand((), generator=gen, dtype=torch.float64)) * f[i, :, k] + noise
    return f.view(n, c, h, w).to(dtype)


def compare(features: torch.Tensor, mask: torch.Tensor, mode: str, **kwargs) -> None:
    tol = TOL[features.dtype]
    f_ref = features.clone().requires_grad_()
    f_fast = features.clone().requires_grad_()
    out_ref = csa_reference(f_ref, mask, mode)
    out_fast = csa_fast(f_fast, mask, mode, **kwargs)
    torch.testing.assert_close(out_fast, out_ref, **tol)
    weight = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(5), dtype=out_ref.dtype)
    (out_ref * weight).sum().backward()
    (out_fast * weight).sum().backward()
    torch.testing.assert_close(f_fast.grad, f_ref.grad, **tol)


@pytest.mark.parametrize("backend,search", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["official", "stable"])
def test_values_and_gradients_match_the_reference(mode: str, dtype: torch.dtype, backend: str, search: str) -> None:
    mask = batch_masks()
    feats = features_with_margin(mask, 12, dtype, positive=mode == "official")
    compare(feats, mask, mode, backend=backend, search=search)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stable_mode_on_signed_features_with_clamping(backend: str) -> None:
    # Zero-mean features: many cosines are negative, so the clamps and the b = 1 fallback run.
    mask = batch_masks()
    feats = torch.randn(4, 6, 8, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    feats[0, :, 3, 3] = 0.0  # a zero hole feature: Dad = Dmax = 0, the fallback b = 1
    compare(feats, mask, "stable", backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["official", "stable"])
def test_gradcheck_float64(mode: str, backend: str) -> None:
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    mask[0, :, 1:3, 1:4] = 1  # several rows
    mask[1, :, 3, :] = 1  # the bottom border
    mask[1, :, 0, 0] = 1  # a corner
    feats = features_with_margin(mask, 3, torch.float64, positive=True, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: csa_fast(f, mask, mode, backend=backend), (feats,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["official", "stable"])
def test_one_two_and_three_holes(mode: str, backend: str) -> None:
    # The shortest recurrences: the kernels' first steps and their look-ahead loads at the edges.
    mask = torch.zeros(3, 1, 5, 6)
    mask[0, :, 4, 5] = 1  # one hole, the last position
    mask[1, :, 0, 0:2] = 1  # two, the first positions
    mask[2, :, 2, 1] = 1
    mask[2, :, 3, 4:6] = 1  # three, over two rows
    feats = features_with_margin(mask, 7, torch.float64, positive=mode == "official", seed=4)
    compare(feats, mask, mode, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_without_holes(backend: str) -> None:
    mask = batch_masks()
    mask[1] = 0  # one sample of the batch has no hole
    feats = features_with_margin(mask, 5, torch.float64, positive=False)
    compare(feats, mask, "stable", backend=backend)
    x = torch.randn(2, 5, 4, 4, requires_grad=True)
    out = csa_fast(x, torch.zeros(2, 1, 4, 4), backend=backend)  # no hole anywhere
    assert torch.equal(out, x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def round_score_blocks_by_shape(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make torch.mm / torch.bmm round each score block as a different BLAS kernel could.

    Every score moves by half the rounding bound of its length-C dot product, C * eps * |q|
    (unit keys), up or down in a pattern that depends on the block's shape, as MKL's summation
    order does on some CPUs: two differently shaped blocks then differ by up to the bound.
    Returns the row counts seen.
    """
    rows_seen: list[int] = []
    for name in ("mm", "bmm"):
        real = getattr(torch, name)

        def rounded(a, b, *, out=None, _real=real):
            block = _real(a, b) if out is None else _real(a, b, out=out)
            rows_seen.append(block.shape[-2])
            gen = torch.Generator().manual_seed(block.shape[-2])
            sign = torch.randint(0, 2, block.shape, generator=gen).to(block.dtype) * 2 - 1
            bound = a.shape[-1] * torch.finfo(block.dtype).eps * torch.linalg.vector_norm(a, dim=-1, keepdim=True)
            return block.add_(sign * bound / 2)

        monkeypatch.setattr(torch, name, rounded)
    return rows_seen


@pytest.mark.parametrize("backend,search", PATHS)
def test_tiny_search_chunks_give_the_same_result(backend: str, search: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked and whole searches are different float computations: a BLAS may round a 1-row
    score block differently from the whole one (on an AMD EPYC Zen 4, MKL's float64 outputs
    differed by 2e-16 to 3e-16), so they agree within a tolerance derived from that rounding."""
    rows_seen = round_score_blocks_by_shape(monkeypatch)  # that rounding, on any CPU
    mask = batch_masks()
    feats = features_with_margin(mask, 6, torch.float64, positive=False)
    whole = csa_fast(feats, mask, backend=backend, search=search)
    chunked = csa_fast(feats, mask, backend=backend, search=search, chunk_elements=7)
    # The tolerance, from that rounding: a score (length-C dot product with a unit key) is off by
    # at most C * eps * |q|, so the cosine Dmax by C * eps, and the argmax cannot flip
    # (features_with_margin: a cosine gap >= 0.03 to the second-best key, Dmax >= 0.99). In stable
    # mode (the default) b = Dmax / (Dad + Dmax) then moves by <= C * eps / Dmax, a = 1 - b the
    # other way, so a hole's output g_j = a g_j-1 + b s_j moves by <= 2 C eps max|x| in its own
    # step (|s_j - g_j-1| <= 2 max|x|); earlier steps' errors carry on with weight
    # a <= 1 / (1 + 0.99), a geometric sum: about 4 C eps max|x|. Allowed: twice that (for Dad's
    # own change with g_j-1, left out above).
    tol = 8 * feats.shape[1] * torch.finfo(feats.dtype).eps * feats.abs().max().item()
    torch.testing.assert_close(chunked, whole, rtol=0, atol=tol)
    known = mask.expand_as(feats) < 0.5
    assert torch.equal(chunked[known], feats[known])  # known features are copied, never computed
    if backend != "triton":  # Triton has its own fused search, no torch.mm
        assert 1 in rows_seen and max(rows_seen) > 1  # the two did round differently


def test_no_dense_score_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every score block stays within chunk_elements: nothing of size HW x HW is multiplied out."""
    sizes: list[int] = []
    for name in ("mm", "bmm"):
        real = getattr(torch, name)

        def spy(*args, _real=real, **kwargs):
            out = _real(*args, **kwargs)
            sizes.append(out.numel())
            return out

        monkeypatch.setattr(torch, name, spy)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    feats = torch.randn(2, 8, 16, 16, requires_grad=True)
    for search in ("exact", "padded"):
        csa_fast(feats, mask, search=search, chunk_elements=1000).sum().backward()
    assert sizes and max(sizes) <= 1000 < 256 * 256


def test_layer_dispatch_and_options() -> None:
    mask = batch_masks()
    feats = features_with_margin(mask, 5, torch.float64, positive=True)
    expected = csa_reference(feats, mask, "official")
    for impl in CoherentSemanticAttention.IMPLEMENTATIONS:
        if impl == "triton" and not HAS_TRITON:
            continue
        layer = CoherentSemanticAttention("official", implementation=impl)
        assert impl in repr(layer)
        torch.testing.assert_close(layer(feats, mask), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(CsaError, match="implementation"):
        CoherentSemanticAttention(implementation="cuda-magic")
    with pytest.raises(CsaError, match="numba"):
        csa_fast(feats.half(), mask, backend="numba")  # numba kernels take float32 / float64 only
    with pytest.raises(CsaError, match="mask shape"):
        csa_fast(feats, mask[:, :, :4])
    with pytest.raises(CsaError, match="search"):
        csa_fast(feats, mask, search="dense")


def test_without_numba_auto_uses_the_torch_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numba_backend, "numba_available", lambda: False)
    feats = torch.randn(1, 4, 5, 5)
    assert resolve_backend("auto", feats).name == "torch"
    with pytest.raises(CsaError, match="needs numba"):
        resolve_backend("numba", feats)
    mask = torch.zeros(1, 1, 5, 5)
    mask[..., 1:3, 1:4] = 1
    torch.testing.assert_close(CoherentSemanticAttention()(feats, mask), csa_reference(feats, mask))


def test_half_precision_runs_through_the_torch_backend() -> None:
    mask = batch_masks()
    feats = features_with_margin(mask, 8, torch.float32, positive=True)
    out = csa_fast(feats.bfloat16(), mask, "stable")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), csa_reference(feats, mask, "stable"), rtol=0.05, atol=0.05)


def test_a_sample_with_no_known_position_is_refused_on_cpu() -> None:
    mask = torch.ones(1, 1, 3, 3)
    with pytest.raises(CsaError, match="no known feature position"):
        csa_fast(torch.randn(1, 4, 3, 3), mask)


def test_mask_values_and_dtypes() -> None:
    mask = batch_masks()
    feats = features_with_margin(mask, 5, torch.float32, positive=False)
    expected = csa_fast(feats, mask)
    torch.testing.assert_close(csa_fast(feats, mask.bool()), expected)
    torch.testing.assert_close(csa_fast(feats, mask * 0.9), expected)  # > 0.5 is hole


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["official", "stable"])
@pytest.mark.parametrize("backend", ["auto", "triton", "torch"])
def test_cuda_matches_the_reference(mode: str, dtype: torch.dtype, backend: str) -> None:
    mask = batch_masks()
    feats = features_with_margin(mask, 12, dtype, positive=mode == "official")
    tol = TOL[dtype]
    f_ref = feats.clone().requires_grad_()
    f_gpu = feats.cuda().requires_grad_()
    out_ref = csa_reference(f_ref, mask, mode)
    out_gpu = CoherentSemanticAttention(mode, implementation=backend)(f_gpu, mask.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_ref, **tol)
    weight = torch.randn(out_ref.shape, dtype=dtype)
    (out_ref * weight).sum().backward()
    (out_gpu * weight.cuda()).sum().backward()
    torch.testing.assert_close(f_gpu.grad.cpu(), f_ref.grad, **tol)
    if backend == "auto":
        assert resolve_backend("auto", f_gpu, mode).name == "triton"  # the kernels passed their self-check


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_triton_layer_never_syncs_with_the_host() -> None:
    mask = batch_masks().cuda()
    feats = features_with_margin(batch_masks(), 32, torch.float32, positive=False).cuda().requires_grad_()
    csa_fast(feats, mask, backend="triton").sum().backward()  # compile first (compiling may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = csa_fast(feats, mask, backend="triton")
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_work_buffers_serve_inference_mode_and_training_alike() -> None:
    """The layer keeps work buffers between calls: a first call under torch.inference_mode
    (as `csa inpaint` makes it) must not leave buffers that a later training call cannot write."""
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(1, 16, 8, 8, generator=gen)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 3:7] = 1
    with torch.inference_mode():
        first = csa_fast(features, mask, "stable")
    x = features.clone().requires_grad_()
    again = csa_fast(x, mask, "stable")
    again.sum().backward()
    assert torch.equal(first, again.detach())
    assert x.grad is not None and torch.isfinite(x.grad).all()


@needs_triton
def test_triton_backend_in_half_precision_works_in_float32() -> None:
    mask = batch_masks()
    feats = features_with_margin(mask, 8, torch.float32, positive=True)
    out = csa_fast(feats.bfloat16(), mask, "stable", backend="triton")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), csa_reference(feats, mask, "stable"), rtol=0.05, atol=0.05)


@needs_triton
def test_triton_backend_reads_nothing_back_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Around the kernels the layer only queues device work: no Python-level read of a tensor's
    value (item, bool, int, tolist, nonzero, numpy), so no host-device sync on a GPU."""
    mask = batch_masks()
    feats = features_with_margin(mask, 6, torch.float32, positive=False).requires_grad_()
    kernels = triton_backend._triton_kernels()
    reads: list[str] = []
    real = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "__int__", "__index__",
                                                            "__float__", "tolist", "nonzero", "numpy")}

    def spy(name):
        def read(self, *args, **kwargs):
            reads.append(name)
            return real[name](self, *args, **kwargs)
        return read

    class Quiet:  # runs the real kernels with the spies off (the interpreter copies to numpy)
        def __getattr__(self, name):
            kernel = getattr(kernels, name)

            def call(*args, **kwargs):
                for attr, fn in real.items():
                    monkeypatch.setattr(torch.Tensor, attr, fn)
                try:
                    return kernel(*args, **kwargs)
                finally:
                    for attr in real:
                        monkeypatch.setattr(torch.Tensor, attr, spy(attr))
            return call

    monkeypatch.setattr(triton_backend, "_triton_kernels", lambda: Quiet())
    for attr in real:
        monkeypatch.setattr(torch.Tensor, attr, spy(attr))
    out = csa_fast(feats, mask, "stable", backend="triton")
    out.backward(torch.ones_like(out))
    for attr, fn in real.items():
        monkeypatch.setattr(torch.Tensor, attr, fn)
    assert reads == []
    torch.testing.assert_close(out, csa_reference(feats.detach(), mask, "stable"), rtol=1e-4, atol=1e-4)


@needs_triton
def test_triton_self_check_falls_back_to_torch_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    assert triton_backend.triton_self_check(torch.device("cpu"), "stable")
    with torch.inference_mode():  # as `csa inpaint` first calls the layer: the check still runs
        assert triton_backend.triton_self_check(torch.device("cpu"), "official")
    with torch.no_grad():
        assert triton_backend.triton_self_check(torch.device("cpu"), "stable")

    class Broken:
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise RuntimeError("no kernel image is available for execution on the device")
            return fail

    monkeypatch.setattr(triton_backend, "_triton_kernels", lambda: Broken())
    with pytest.warns(UserWarning, match="using the torch backend"):
        assert not triton_backend.triton_self_check(torch.device("cpu"), "official")


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the CUDA tests run the kernels themselves")
def test_triton_kernels_compile_for_ampere_and_hopper(tmp_path) -> None:
    """Triton's own compiler (LLVM and ptxas ship in its wheel) turns every kernel variant into
    sm_80 and sm_90 machine code, no GPU needed: catches what the interpreter lets through."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    script = Path(__file__).with_name("triton_compile_check.py")
    done = subprocess.run([sys.executable, str(script), "80", "90"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(": ok") == 2 * 2 * 5

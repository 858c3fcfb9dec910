"""CSA layer speed and memory, plain reference against fast (docs/method.md, 'The CSA layer: fast implementation').

Prints one table: per feature-map size, forward and forward+backward median times, the peak
extra memory of one forward+backward, and the "floor": the per-sample hole-by-known search
matmuls alone (same dtype, same threads, measured in the same run). The fast layer's
forward+backward divided by that floor is the figure of merit; the issue's target is <= 3
at 1x512x32x32.

    python benchmarks/csa_layer.py                 # CPU, 2 threads (the `make bench` target)
    python benchmarks/csa_layer.py --device cuda   # on a GPU
    python benchmarks/csa_layer.py --quick         # fewer sizes and runs, for a smoke test

Peak memory: on CPU the growth of the process's resident high-water mark (VmHWM, reset
before each measurement) over the resident size before it, measured in a child process in
which glibc returns every large block to the system on free (that setting slows allocation,
so the timings run without it); on CUDA torch.cuda.max_memory_allocated over the
allocation before. Both count the layer's output, saved tensors and gradient.

Timings on CPU run with glibc keeping 64 MiB of freed heap (M_TOP_PAD) and serving blocks
under 32 MiB from the heap (M_MMAP_THRESHOLD): a training process settles into that state
by itself (the default model's training process took no page faults over 10 s of steps), while
a loop of one layer alone can fall into trimming and regrowing the heap on every call,
which at 1x512x32x32 cost 1,400 page faults and 1.2 ms a call (4.3 ms instead of 3.1)
on the 2-core VM, in the layer and in any other code alike. ``--default-malloc`` times without it.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout too

from csa.nn.attention import csa_fast, csa_reference, resolve_backend  # noqa: E402


@dataclass
class Case:
    name: str
    n: int
    c: int
    side: int
    hole: int  # side of the centre square hole; 0 = per-sample rectangles
    ref_runs: int  # repeats for the (slow) reference
    fast_runs: int


CASES = [
    Case("1x512x32x32", 1, 512, 32, 16, 20, 50),
    Case("8x512x32x32", 8, 512, 32, 0, 5, 20),
    Case("1x512x64x64", 1, 512, 64, 32, 3, 20),
    Case("1x256x128x128", 1, 256, 128, 64, 3, 20),
]


def make_mask(case: Case, device: torch.device) -> torch.Tensor:
    m = torch.zeros(case.n, 1, case.side, case.side)
    if case.hole:
        a = (case.side - case.hole) // 2
        m[:, :, a : a + case.hole, a : a + case.hole] = 1
    else:  # a different rectangle per sample, some touching the borders (seeded)
        gen = torch.Generator().manual_seed(0)
        for i in range(case.n):
            h, w = (int(v) for v in torch.randint(6, 20, (2,), generator=gen))
            top, left = (int(v) for v in torch.randint(0, case.side - 5, (2,), generator=gen))
            m[i, :, top : top + h, left : left + w] = 1
    return m.to(device)


# --- measuring ----------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], runs: int, device: torch.device, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _keep_freed_heap() -> None:
    """glibc: keep 64 MiB of freed heap and serve blocks < 32 MiB from it (see the module docstring)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-2, 64 << 20)  # M_TOP_PAD
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _return_freed_memory() -> None:
    """glibc: serve every block >= 64 KiB by mmap, so that free() gives it back (RSS tracks use)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def peak_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak extra memory of one call of fn (see the module docstring)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS")
        fn()
        return (_rss_kib("VmHWM") - before) / 1024
    except (OSError, RuntimeError):
        return None


def floor_ms(features: torch.Tensor, mask: torch.Tensor, runs: int) -> float:
    """The per-sample hole-by-known search products alone (hole queries x normalised keys)."""
    n, c = features.shape[:2]
    flat = features.detach().reshape(n, c, -1)
    hole = mask.reshape(n, -1) > 0.5
    pairs = [(flat[i][:, hole[i]].t().contiguous(), flat[i][:, ~hole[i]].contiguous()) for i in range(n)]
    return median_ms(lambda: [q @ k for q, k in pairs], runs, features.device, warmup=3)


# --- the table ------------------------------------------------------------------------------


def _impls(mask: torch.Tensor, dtype: torch.dtype) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    # The fast layer's backend is resolved once, as the layer does (a name passed on every
    # call would be resolved, on CUDA with the Triton self-check, inside each timing).
    fast = resolve_backend("auto", torch.empty(0, dtype=dtype, device=mask.device), "stable")
    impls = [
        ("reference", lambda f: csa_reference(f, mask, "stable")),
        ("fast", lambda f: csa_fast(f, mask, "stable", backend=fast)),
    ]
    if mask.device.type == "cuda":  # the fallback beside the Triton kernels
        impls.append(("fast, torch backend", lambda f: csa_fast(f, mask, "stable", backend="torch")))
    return impls


def _inputs(case: Case, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    feats = torch.randn(case.n, case.c, case.side, case.side, dtype=dtype, device=device)
    return feats, make_mask(case, device), torch.randn_like(feats)


def _fwd_bwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        layer(x).backward(grad)
        x.grad = None

    return call


def memory_peak(device: torch.device, dtype: torch.dtype, case: Case, label: str) -> Optional[float]:
    """Peak extra MiB of one forward+backward of one implementation on one case."""
    if device.type == "cpu":
        _return_freed_memory()
    feats, mask, grad = _inputs(case, device, dtype)
    layer = dict(_impls(mask, dtype))[label]
    call = _fwd_bwd(layer, feats.clone().requires_grad_(), grad)
    call()  # one-time allocations (numba's kernels, torch's lazy init) are not the layer's memory
    return peak_mib(call, device)


def _memory_in_child(args: argparse.Namespace, case: Case, label: str) -> Optional[float]:
    """On CPU each measurement runs in a fresh process: earlier cases leave the heap behind."""
    if args.device != "cpu":
        return memory_peak(torch.device(args.device), getattr(torch, args.dtype), case, label)
    cmd = [sys.executable, __file__, "--memory-json", f"{case.name}/{label}", "--threads", str(args.threads)]
    done = subprocess.run(cmd + ["--dtype", args.dtype], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> None:
    device, dtype, cases = torch.device(args.device), getattr(torch, args.dtype), _cases(args)
    backend = resolve_backend("auto", torch.empty(0, dtype=dtype, device=device), "stable").name
    rows = []
    for case in cases:
        feats, mask, grad = _inputs(case, device, dtype)
        holes = int(mask.sum())
        floor = floor_ms(feats, mask, 10 if args.quick else 50)
        for label, layer in _impls(mask, dtype):
            runs = case.ref_runs if label == "reference" else case.fast_runs
            runs = max(3, runs // 4) if args.quick else runs
            x = feats.clone().requires_grad_()
            warm = 1 if label == "reference" else 2  # the fast layer's first call loads its kernels
            t_f = median_ms(lambda: layer(x), runs, device, warm)
            t_fb = median_ms(_fwd_bwd(layer, x, grad), runs, device, warm)
            mem = _memory_in_child(args, case, label)
            rows.append((case.name, holes, label, runs, t_f, t_fb, mem, floor))
        print(f"  measured {case.name}", file=sys.stderr, flush=True)

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(
        f"\nCSA layer, mode 'stable', {args.dtype}, device {device}, torch threads {threads}, "
        f"fast backend {backend}"
        + ("" if device.type != "cpu" else
           f", glibc heap {'default' if args.default_malloc else 'kept (M_TOP_PAD 64 MiB)'}")
    )
    head = ("features", "holes", "implementation", "runs", "fwd ms", "fwd+bwd ms", "peak MiB", "floor ms", "fwd+bwd / floor")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, holes, label, runs, t_f, t_fb, mem, floor in rows:
        mem_s = f"{mem:.1f}" if mem is not None else "n/a"
        print(
            f"| {name} | {holes} | {label} | {runs} | {t_f:.2f} | {t_fb:.2f} | {mem_s} | {floor:.3f} | {t_fb / floor:.1f} |"
        )
    print(
        "\nfloor: the per-sample (holes x C) @ (C x known) search matmuls alone, median of 50 (10 with --quick) "
        "(the issue's floor is the 1x512x32x32 row's); times: medians of 'runs' calls after "
        "1 (reference) or 2 (fast) warm-up calls; peak: extra memory of one forward+backward."
    )


def breakdown(dtype: torch.dtype, runs: int = 50) -> None:
    """Where the fast layer's time goes at 1x512x32x32 (numba backend): its stages, timed alone."""
    from csa.nn.attention import fast, numba_backend

    kern = numba_backend._numba_kernels()
    numba = numba_backend.NumbaBackend()
    feats, mask, grad = _inputs(CASES[0], torch.device("cpu"), dtype)
    n, c, h, w = feats.shape
    x = feats.view(n, c, h * w)
    flat = mask.reshape(n, -1).contiguous()
    order = torch.empty(n, h * w, dtype=torch.long)
    nh = torch.empty(n, dtype=torch.long)
    length = kern.plan(flat.numpy(), order.numpy(), nh.numpy())
    q, s, g = (x.new_empty(n, length, c) for _ in range(3))
    src = torch.empty(n, length, dtype=torch.long)
    stats = torch.empty(n, length, 8, dtype=torch.float64)
    out = torch.empty_like(x)
    go = grad.view(n, c, h * w)
    gi = torch.empty_like(go)
    gout, dq, dsrc = (x.new_empty(n, length, c) for _ in range(3))
    kern.gather_rows(x.numpy(), order.numpy(), nh.numpy(), q.numpy())
    dmax, arg = fast.search_exact(x, q, order, nh.tolist(), fast.SEARCH_CHUNK_ELEMENTS, numba)
    keys = x.new_empty(c, h * w - length)
    known = order[0, length:]
    fwd_args = (x.numpy(), out.numpy(), order.numpy(), arg.numpy(), src.numpy(), nh.numpy(), dmax.numpy(), True,
                q.numpy(), s.numpy(), g.numpy(), stats.numpy())
    kern.forward(*fwd_args)
    stages = [
        ("hole bookkeeping + query gather", lambda: (
            kern.plan(flat.numpy(), order.numpy(), nh.numpy()),
            kern.gather_rows(x.numpy(), order.numpy(), nh.numpy(), q.numpy()))),
        ("known keys: gather + normalise", lambda: kern.gather_unit_columns(x[0].numpy(), known.numpy(), keys.numpy())),
        ("search matmul (the floor)", lambda: torch.mm(q[0], keys)),
        ("whole search (keys, matmul, argmax)", lambda: fast.search_exact(
            x, q, order, nh.tolist(), fast.SEARCH_CHUNK_ELEMENTS, numba)),
        ("generate kernel: source gather, recurrence, output", lambda: kern.forward(*fwd_args)),
        ("backward kernel: reverse recurrence, gradient scatter", lambda: kern.backward(
            go.numpy(), gi.numpy(), order.numpy(), src.numpy(), nh.numpy(), dmax.numpy(), True,
            q.numpy(), s.numpy(), g.numpy(), stats.numpy(), gout.numpy(), dq.numpy(), dsrc.numpy())),
    ]
    print("\nWhere the fast layer's time goes, 1x512x32x32, 256 holes (each stage timed alone, median ms):")
    print("| stage | ms |\n|---|---|")
    for name, fn in stages:
        print(f"| {name} | {median_ms(fn, runs, torch.device('cpu'), 3):.3f} |")


def _cases(args: argparse.Namespace) -> list[Case]:
    return CASES[:2] if args.quick else CASES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--quick", action="store_true", help="two sizes, few runs: a smoke test")
    parser.add_argument("--default-malloc", action="store_true",
                        help="time with glibc's default heap trimming (see the module docstring)")
    parser.add_argument("--memory-json", metavar="CASE/IMPL", help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu")
    torch.set_num_threads(args.threads)
    if args.memory_json:
        name, label = args.memory_json.split("/")
        case = next(c for c in CASES if c.name == name)
        print(json.dumps(memory_peak(torch.device(args.device), getattr(torch, args.dtype), case, label)))
        return
    if args.device == "cpu" and not args.default_malloc:
        _keep_freed_heap()
    run(args)
    if args.device == "cpu" and resolve_backend("auto", torch.empty(0, dtype=getattr(torch, args.dtype))).name == "numba":
        breakdown(getattr(torch, args.dtype))


if __name__ == "__main__":
    main()

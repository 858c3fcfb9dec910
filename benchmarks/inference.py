"""Latency and peak memory of `Inpainter` with the paper-size model (ngf 64, ~132M parameters).

Cases: 256x256 with a 128x128 centre hole, and 1024x1024 / 2048x2048 images with a
256x256 and a 512x512 centre hole under each strategy (resize, crop, native). Every case
runs in a fresh process, so its peak resident memory (the whole process: Python, torch,
the model's ~0.53 GB of weights, the images) is its own. Weights are random (timing does
not depend on them). Prints one markdown table.

    python benchmarks/inference.py                    # all cases, CPU, 2 threads
    python benchmarks/inference.py --threads 1 --repeat 3
    python benchmarks/inference.py --cases 2048:512:crop 256:128:resize
    python benchmarks/inference.py --device cuda

``native`` is refused above ``csa.inference.NATIVE_MAX_PIXELS``; ``--uncapped`` measures
it anyway (that is how the cap was chosen: 2048x2048 needs several times the memory).

``--runtimes`` compares instead the three ways to run a model (csa.runtime), one process:
PyTorch eager (the .safetensors generator), TorchScript and onnxruntime (its exports, see
csa.export), one 256x256 image with a centre hole, for the bundled model and a random-init
paper-size model (ngf 64). The exports go to a temporary folder that is deleted afterwards.

    python benchmarks/inference.py --runtimes --threads 2 --repeat 10

``--explain`` measures instead what ``Inpainter.explain`` (without its picture) adds to a plain
call: 256x256, a centre hole, the bundled model and a random-init paper-size model, the two
calls alternated so that machine load hits both alike; medians.

    python benchmarks/inference.py --explain --threads 2 --repeat 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

DEFAULT_CASES = ["256:128:resize"] + [
    f"{side}:{hole}:{strategy}"
    for side in (1024, 2048)
    for hole in (256, 512)
    for strategy in ("resize", "crop", "native")
]


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def child(case: str, device: str, threads: int, repeat: int, uncapped: bool) -> None:
    """Run one case in this process; print a JSON line."""
    import numpy as np
    import torch

    from csa import CsaError, Inpainter, ModelConfig, build_generator
    from csa.inference import NATIVE_MAX_PIXELS

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    side, hole_side, strategy = case.split(":")
    side, hole_side = int(side), int(hole_side)
    t0 = time.perf_counter()
    model = build_generator(ModelConfig()).to(device)
    inpainter = Inpainter(model, native_max_pixels=None if uncapped else NATIVE_MAX_PIXELS)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    # a smooth gradient plus noise: content does not change the cost, the hole's size does
    yy, xx = np.mgrid[0:side, 0:side]
    image = np.stack([(xx * 255 // side), (yy * 255 // side), ((xx + yy) * 127 // side)], axis=2).astype(np.uint8)
    image = np.clip(image.astype(np.int16) + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    hole = np.zeros((side, side), dtype=bool)
    lo = side // 2 - hole_side // 2
    hole[lo:lo + hole_side, lo:lo + hole_side] = True
    rss_loaded = _rss_gb()
    result = {"case": case, "load_s": load_s, "rss_loaded_gb": rss_loaded}
    try:
        times = []
        for _ in range(1 + repeat):
            t = time.perf_counter()
            out = inpainter.inpaint_array(image, hole, strategy=strategy)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        assert np.array_equal(out[~hole], image[~hole])
        result.update(first_s=times[0], steady_s=float(np.median(times[1:])) if repeat else None)
        if device.startswith("cuda"):
            result["cuda_peak_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    except CsaError as exc:
        result["refused"] = exc.message
    print(json.dumps(result), flush=True)


def runtimes(threads: int, repeat: int, hole_side: int) -> None:
    """Eager vs TorchScript vs onnxruntime: load, first call and steady time of one model call."""
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    from csa import ModelConfig, build_generator
    from csa.checkpoints import save_generator
    from csa.export import export_generator
    from csa.inference import DEFAULT_WEIGHTS
    from csa.runtime import load_inference_model

    torch.set_num_threads(threads)  # onnxruntime sessions follow it (csa.runtime.onnx_session)
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.uniform(-1, 1, (1, 3, 256, 256)).astype(np.float32))
    mask = torch.zeros(1, 1, 256, 256)
    lo = 128 - hole_side // 2
    mask[:, :, lo:lo + hole_side, lo:lo + hole_side] = 1.0
    print(f"one 1x3x256x256 image, {hole_side}x{hole_side} centre hole; the model call alone (inputs checked, "
          f"outputs as torch tensors); steady: median of {repeat} calls after the first")
    print()
    print("| model | runtime | export (s) | file (MB) | load (s) | first call (s) | steady (ms) | max diff vs eager |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="csa-bench-") as tmp:
        random64 = Path(tmp) / "ngf64.safetensors"
        torch.manual_seed(0)
        save_generator(build_generator(ModelConfig()), random64)
        for label, weights in (("bundled (ngf 16)", DEFAULT_WEIGHTS), ("random init, ngf 64", random64)):
            files = {"PyTorch eager": weights}
            export_s = {"PyTorch eager": None}
            eager = load_inference_model(weights)
            for runtime, suffix in (("TorchScript", ".ts"), ("onnxruntime", ".onnx")):
                files[runtime] = Path(tmp) / f"{weights.stem}{suffix}"
                t = time.perf_counter()
                export_generator(eager, files[runtime])
                export_s[runtime] = time.perf_counter() - t
            del eager
            reference = None
            for runtime, path in files.items():
                t = time.perf_counter()
                model = load_inference_model(path)
                load_s = time.perf_counter() - t
                times = []
                with torch.inference_mode():
                    for _ in range(1 + repeat):
                        t = time.perf_counter()
                        out = model(image, mask).composite
                        times.append(time.perf_counter() - t)
                reference = out if reference is None else reference
                diff = float((out - reference).abs().max())
                export = f"{export_s[runtime]:.1f}" if export_s[runtime] is not None else "-"
                print(f"| {label} | {runtime} | {export} | {path.stat().st_size / 1e6:.0f} | {load_s:.2f} | "
                      f"{times[0]:.2f} | {1000 * float(np.median(times[1:])):.0f} | {diff:.1e} |", flush=True)
                del model


def explain_overhead(threads: int, repeat: int, hole_side: int) -> None:
    """Median plain call vs median explain() at 256x256; prints one markdown table."""
    import numpy as np
    import torch

    from csa import Inpainter, ModelConfig, build_generator
    from csa.inference import DEFAULT_WEIGHTS

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    models = {"paper-size (ngf 64), random": Inpainter(build_generator(ModelConfig()))}
    if DEFAULT_WEIGHTS.is_file():
        models = {"bundled": Inpainter.from_pretrained(), **models}
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    hole = np.zeros((256, 256), dtype=bool)
    lo = 128 - hole_side // 2
    hole[lo:lo + hole_side, lo:lo + hole_side] = True
    print("| model | plain call (ms) | explain() (ms) | overhead |")
    print("|---|---:|---:|---:|")
    for name, inpainter in models.items():
        plain, explained = [], []
        inpainter.inpaint_array(image, hole)
        inpainter.explain(image, hole)  # warm-up of both
        for _ in range(max(1, repeat)):
            t = time.perf_counter()
            inpainter.inpaint_array(image, hole)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            inpainter.explain(image, hole)
            explained.append(time.perf_counter() - t)
        p, e = float(np.median(plain)), float(np.median(explained))
        print(f"| {name} | {p * 1e3:.1f} | {e * 1e3:.1f} | {100 * (e / p - 1):+.1f}% |", flush=True)


def run_case(case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", case, "--device", args.device, "--threads", str(args.threads),
           "--repeat", str(args.repeat)] + (["--uncapped"] if args.uncapped else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {"case": case, "refused": f"crashed (exit {proc.returncode})"}
    result["peak_rss_gb"] = usage.ru_maxrss / 1024**2  # KiB on Linux
    return result


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="SIDE:HOLE:STRATEGY ...")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="calls after the first (the steady figure is their median)")
    parser.add_argument("--uncapped", action="store_true", help="lift the native strategy's pixel cap")
    parser.add_argument("--runtimes", action="store_true",
                        help="compare PyTorch eager, TorchScript and onnxruntime at 256x256 instead (CPU)")
    parser.add_argument("--explain", action="store_true",
                        help="what Inpainter.explain adds to a plain call at 256x256 instead")
    parser.add_argument("--hole", type=int, default=128, help="--runtimes / --explain: side of the centre hole")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.device, args.threads, args.repeat, args.uncapped)
        return

    import torch

    if args.explain or args.runtimes:
        versions = f"torch {torch.__version__}"
        if args.runtimes:
            import onnxruntime

            versions += f", onnxruntime {onnxruntime.__version__}"
        print(f"machine: {_cpu_name()}, {os.cpu_count()} cores visible; {versions}, {args.threads} threads, CPU")
        print(f"command: python benchmarks/inference.py {' '.join(sys.argv[1:])}".rstrip())
        print("load average at start: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
        (explain_overhead if args.explain else runtimes)(args.threads, args.repeat, args.hole)
        print("load average at end: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
        return

    print(f"machine: {_cpu_name()}, {os.cpu_count()} cores visible; torch {torch.__version__}, "
          f"{args.threads} threads, device {args.device}; paper-size model (ngf 64), random weights")
    print(f"command: python benchmarks/inference.py {' '.join(sys.argv[1:])}".rstrip())
    # The figures are wall-clock: on a shared machine other work slows them down; say how busy it was.
    print("load average at start: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    print()
    print("| image | hole | strategy | first call (s) | steady (s) | peak RSS (GB) | RSS with model loaded (GB) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for case in args.cases:
        r = run_case(case, args)
        side, hole, strategy = case.split(":")
        if "refused" in r:
            timing = "refused (over the native cap)" if "limited to" in r["refused"] else f"refused: {r['refused'][:60]}"
            print(f"| {side}x{side} | {hole}x{hole} | {strategy} | {timing} | | {r['peak_rss_gb']:.2f} | |", flush=True)
            continue
        steady = f"{r['steady_s']:.2f}" if r.get("steady_s") is not None else "-"
        mem = f"{r['peak_rss_gb']:.2f}" + (f" (GPU {r['cuda_peak_gb']:.2f})" if "cuda_peak_gb" in r else "")
        print(f"| {side}x{side} | {hole}x{hole} | {strategy} | {r['first_s']:.2f} | {steady} | {mem} | "
              f"{r['rss_loaded_gb']:.2f} |", flush=True)
    print()
    print("load average at end: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()

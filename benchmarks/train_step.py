"""Speed and memory of one training iteration (G forward, D step, G step) of the paper's configuration.

Prints one table: per batch size, seconds per iteration (median of the timed steps),
images per second, the process's CPU time per iteration (all threads; on a shared machine
CPU time / threads estimates the unshared wall time) and peak memory. Every batch size runs in a fresh process, so the
peak is its own: on CPU the process's peak resident set size (``ru_maxrss``: weights of
the four networks and VGG16, Adam moments, activations), on CUDA
``torch.cuda.max_memory_allocated``.

    python benchmarks/train_step.py                              # CPU, 2 threads, batch 1 and 8
    python benchmarks/train_step.py --device cuda --amp bf16     # on a GPU
    python benchmarks/train_step.py --config configs/default-model.yaml --batch-sizes 4

Inputs are random 256 x 256 images with the release's 120 x 120 centre hole (per-sample
masks; the cost does not depend on the pixel values). VGG16 weights: ``--vgg FILE`` or the
default lookup; without any, a randomly initialised VGG16 (the same computation).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout too


def one(args: argparse.Namespace) -> dict:
    import torch

    from csa.config import Config
    from csa.nn.vgg import VGG16Features, load_vgg16
    from csa.train import Trainer

    torch.set_num_threads(args.threads)
    cfg = Config.load(args.config).with_overrides(
        [f"train.batch_size={args.one}", f"train.device={args.device}", f"train.amp={args.amp}", "train.threads=0"])
    try:
        vgg = load_vgg16(args.vgg)
        vgg_note = "pretrained"
    except Exception:  # no weights on this machine: same layers, random values
        vgg, vgg_note = VGG16Features(), "random init"
    trainer = Trainer(cfg, vgg=vgg, progress=False)
    device = trainer.device
    size = cfg.model.image_size
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(args.one, 3, size, size, generator=gen) * 2 - 1
    mask = torch.zeros(args.one, 1, size, size)
    a = (size - 120) // 2
    mask[..., a : a + 120, a : a + 120] = 1
    batch = {"image": image.to(device), "mask": mask.to(device)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t, c = time.perf_counter(), time.process_time()
        trainer.train_step(batch)  # reads the losses back: synchronises every step
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        device_name = torch.cuda.get_device_name(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        device_name = f"CPU, {torch.get_num_threads()} threads"
    sec = statistics.median(times)
    return {"batch": args.one, "sec_per_iter": sec, "cpu_sec_per_iter": statistics.median(cpu_times), "images_per_sec": args.one / sec, "peak_gib": peak,
            "device": device_name, "vgg": vgg_note, "steps": args.steps,
            "g_params": sum(p.numel() for p in trainer.generator.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "csa-paper.yaml"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=["auto", "off", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (JIT, allocator)")
    parser.add_argument("--vgg", default=None, help="VGG16 weights file (default lookup if left out)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one batch size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args)))
        return

    rows = []
    for b in args.batch_sizes:
        cmd = [sys.executable, __file__, "--one", str(b), "--config", args.config, "--device", args.device,
               "--amp", args.amp, "--threads", str(args.threads), "--steps", str(args.steps),
               "--warmup", str(args.warmup)] + (["--vgg", args.vgg] if args.vgg else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"batch {b} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first = rows[0]
    mem = "peak GPU memory (GiB)" if args.device.startswith("cuda") else "peak RSS (GiB)"
    print(f"config {Path(args.config).name} ({first['g_params']:,} generator parameters), 256x256, "
          f"{first['device']}, amp {args.amp}, VGG16 {first['vgg']}, median of {args.steps} steps after "
          f"{args.warmup} warm-up")
    print()
    print(f"| batch | s / iteration | images / s | CPU s / iteration | {mem} |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['sec_per_iter']:.2f} | {r['images_per_sec']:.3f} | "
              f"{r['cpu_sec_per_iter']:.2f} | {r['peak_gib']:.2f} |")
    print()
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""Speed and memory of one training iteration (G forward, D step, G step); float32 vs bf16.

Three modes:

* (default) one table: per batch size, seconds per iteration (median of the timed steps),
  images per second, the process's CPU time per iteration (all threads; on a shared machine
  CPU time / threads estimates the unshared wall time) and peak memory. Every batch size
  runs in a fresh process, so the peak is its own: on CPU the process's peak resident set
  size (``ru_maxrss``: weights of the four networks and VGG16, Adam moments, activations),
  on CUDA ``torch.cuda.max_memory_allocated``. Config: configs/csa-paper.yaml.
* ``--compare-amp``: float32 (``train.amp=off``) against bf16 autocast (``train.amp=bf16``)
  for one config (default configs/default-model.yaml) at its own batch size, in one
  process: two trainers with the same initial weights take turns on the same batch
  (float32 first in odd rounds, bf16 first in even ones), so both see the same machine
  load; medians per precision, and the median of the per-round ratios.
* ``--loss-check``: 200 training steps (``--loss-steps``) in bf16 and two float32 runs
  with different ``train.seed`` (the bf16 run uses the first float32 seed), all on the
  same batches, interleaved step by step. Reports each run's mean generator loss
  (``g_total``) over the last 50 steps (``--loss-window``) and whether bf16's lies inside
  the float32 runs' spread, widened by a standard error (the rule is printed with the
  figures).

    python benchmarks/train_step.py                              # CPU, 2 threads, batch 1 and 8
    python benchmarks/train_step.py --device cuda --amp bf16     # on a GPU
    python benchmarks/train_step.py --config configs/default-model.yaml --batch-sizes 4
    python benchmarks/train_step.py --compare-amp                # float32 vs bf16, default model
    python benchmarks/train_step.py --loss-check --json runs/loss_check.json

Inputs of the timing modes are random images (the cost does not depend on the pixel
values): the table uses the release's 120 x 120 centre hole, ``--compare-amp`` one batch
of the config's own masks (``data.masks``, seed 0). The loss check trains on photos that
ship with the project and its [eval] extra: the bundled sample and five colour photos of
scikit-image's data folder (astronaut, coffee, chelsea, rocket, motorcycle_left), or the
images of ``--data DIR``; random crops, flips and masks of the config's data section, drawn
from seed 0 in every run. VGG16 weights: ``--vgg FILE`` or the default lookup; without
any, a randomly initialised VGG16 of the same shape (the same computation; the table says
which).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout too

PAPER_CONFIG = ROOT / "configs" / "csa-paper.yaml"
DEFAULT_MODEL_CONFIG = ROOT / "configs" / "default-model.yaml"
SKIMAGE_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")


def _vgg(weights):
    """(a frozen VGG16Features, a note saying whether its weights are the pretrained ones)."""
    import torch

    from csa.nn.vgg import VGG16Features
    from csa.weights import load_vgg16_default

    try:
        return load_vgg16_default(weights), "pretrained"
    except Exception:  # no weights on this machine: same layers, random values
        torch.manual_seed(0)
        return VGG16Features(), "random init (no weights file here; `csa weights fetch vgg16` makes one)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _bf16_flags() -> str:
    import torch

    def ask(name: str) -> str:
        check = getattr(torch.cpu, name, None)
        return "?" if check is None else ("yes" if check() else "no")

    return f"AVX512-BF16 {ask('_is_avx512_bf16_supported')}, AMX {ask('_is_amx_tile_supported')}"


def _trainer(config, amp: str, seed: int, vgg, device: str = "cpu", batch_size=None):
    from csa.config import Config
    from csa.train import Trainer

    overrides = [f"train.device={device}", f"train.amp={amp}", f"train.seed={seed}", "train.threads=0"]
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    return Trainer(Config.load(config).with_overrides(overrides), vgg=vgg, progress=False)


# --- the default table: one batch size per process ----------------------------------------


def one(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    vgg, vgg_note = _vgg(args.vgg)
    trainer = _trainer(args.config, args.amp, 0, vgg, args.device, args.one)
    device = trainer.device
    size = trainer.config.model.image_size
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


def table(args: argparse.Namespace) -> None:
    rows = []
    for b in args.batch_sizes:
        cmd = [sys.executable, __file__, "--one", str(b), "--config", str(args.config), "--device", args.device,
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


# --- float32 vs bf16, same process --------------------------------------------------------


def compare_amp(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from csa.masks import MaskSampler

    torch.set_num_threads(args.threads)
    vgg, vgg_note = _vgg(args.vgg)
    runs = {amp: _trainer(args.config, amp, 0, vgg) for amp in ("off", "bf16")}
    cfg = runs["off"].config
    b, size = cfg.train.batch_size, cfg.model.image_size
    gen = torch.Generator().manual_seed(0)
    sampler = MaskSampler(cfg.data.masks, size, seed=0)
    masks = np.stack([sampler(i) for i in range(b)]).astype(np.float32)
    batch = {"image": torch.rand(b, 3, size, size, generator=gen) * 2 - 1, "mask": torch.from_numpy(masks)[:, None]}
    wall: dict[str, list[float]] = {amp: [] for amp in runs}
    cpu: dict[str, list[float]] = {amp: [] for amp in runs}
    for amp, trainer in runs.items():  # warm-up: numba compiles, oneDNN builds its kernels
        for _ in range(args.warmup):
            trainer.train_step(batch)
    for r in range(args.steps):
        for amp in (("off", "bf16") if r % 2 == 0 else ("bf16", "off")):
            t, c = time.perf_counter(), time.process_time()
            runs[amp].train_step(batch)
            wall[amp].append(time.perf_counter() - t)
            cpu[amp].append(time.process_time() - c)
        print(f"round {r + 1}/{args.steps}: float32 {wall['off'][-1]:.2f} s, bf16 {wall['bf16'][-1]:.2f} s",
              file=sys.stderr, flush=True)
    med = {amp: statistics.median(v) for amp, v in wall.items()}
    cpu_med = {amp: statistics.median(v) for amp, v in cpu.items()}
    paired = statistics.median(f / h for f, h in zip(wall["off"], wall["bf16"]))
    hole = float(masks.mean())
    n_g = sum(p.numel() for p in runs["off"].generator.parameters())
    lo = cfg.loss
    terms = [name for name, weight in (("L1", lo.l1), ("consistency", lo.consistency), ("GAN image", lo.gan_image),
                                       ("GAN feature", lo.gan_feature)) if weight > 0]
    nets = ["generator"] + (["VGG16"] if runs["off"].objective.vgg is not None else [])
    nets += [n for n, m in (("D_img", runs["off"].d_image), ("D_feat", runs["off"].d_feature)) if m is not None]
    print(f"config {Path(args.config).name} ({n_g:,} generator parameters), one training step ({' + '.join(nets)}; "
          f"loss {' + '.join(terms)}), batch {b}, {size}x{size}, masks {cfg.data.masks!r} ({hole:.0%} hole), "
          f"random pixels" + (f"; VGG16 {vgg_note}" if "VGG16" in nets else ""))
    print(f"{_cpu_name()} ({_bf16_flags()}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.steps} interleaved rounds after {args.warmup} warm-up step(s) each, medians")
    print()
    print("| precision | s / step | images / s | CPU s / step |")
    print("|---|---:|---:|---:|")
    for amp, name in (("off", "float32 (`train.amp=off`)"), ("bf16", "bf16 autocast (`train.amp=bf16`)")):
        print(f"| {name} | {med[amp]:.2f} | {b / med[amp]:.2f} | {cpu_med[amp]:.2f} |")
    print(f"| speed-up float32 / bf16 | {med['off'] / med['bf16']:.2f}x (per round: {paired:.2f}x) | | "
          f"{cpu_med['off'] / cpu_med['bf16']:.2f}x |")
    print()
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


# --- the loss check -----------------------------------------------------------------------


def _photos(data) -> tuple[list[Path], str]:
    if data:
        from csa.data import list_images

        files = list_images(data)
        return files, f"{len(files)} images of {data}"
    files = [ROOT / "src" / "csa" / "assets" / "sample.png"]
    try:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        files += [folder / f for f in SKIMAGE_PHOTOS if (folder / f).is_file()]
    except ImportError:
        pass
    names = ", ".join(f.stem for f in files)
    return files, f"{len(files)} photos ({names}: the bundled sample{' and scikit-image data' if len(files) > 1 else ''})"


def loss_check(args: argparse.Namespace) -> None:
    import torch

    from csa.data import InpaintingDataset, TrainTransform

    torch.set_num_threads(args.threads)
    vgg, vgg_note = _vgg(args.vgg)
    seeds = args.seeds
    runs = {f"float32, seed {s}": _trainer(args.config, "off", s, vgg) for s in seeds}
    runs[f"bf16, seed {seeds[0]}"] = _trainer(args.config, "bf16", seeds[0], vgg)
    cfg = next(iter(runs.values())).config
    b, size, d = cfg.train.batch_size, cfg.model.image_size, cfg.data
    files, data_note = _photos(args.data)
    # The same samples in every run: crops, flips and masks drawn from seed 0, whatever train.seed.
    dataset = InpaintingDataset(files, size, d.masks, 0, TrainTransform(size, d.transform or "crop",
                                tuple(d.crop_scale), True if d.flip is None else d.flip), cache=True)
    n = len(dataset)

    def batch(step: int) -> dict[str, torch.Tensor]:
        items = []
        for j in range(b):
            g = step * b + j
            dataset.set_epoch(g // n)
            items.append(dataset[g % n])
        return {k: torch.stack([it[k] for it in items]) for k in ("image", "mask")}

    losses: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    start = time.monotonic()
    for step in range(args.loss_steps):
        x = batch(step)
        for name, trainer in runs.items():
            trainer.set_lr()
            t = time.perf_counter()
            terms = trainer.train_step(x)
            seconds[name].append(time.perf_counter() - t)
            trainer.step += 1
            for k, v in terms.items():
                losses[name].setdefault(k, []).append(v)
        if (step + 1) % 10 == 0 or step == 0:
            shown = ", ".join(f"{name} {losses[name]['g_total'][-1]:.2f}" for name in runs)
            print(f"step {step + 1}/{args.loss_steps} ({time.monotonic() - start:.0f} s): g_total {shown}",
                  file=sys.stderr, flush=True)

    w = args.loss_window
    summary = {}
    for name in runs:
        tail = losses[name]["g_total"][-w:]
        summary[name] = {"mean": statistics.fmean(tail), "std": statistics.stdev(tail),
                         "l1_refined": statistics.fmean(losses[name]["l1_refined"][-w:]),
                         "sec_per_step": statistics.median(seconds[name][1:])}
    f32 = [summary[f"float32, seed {s}"] for s in seeds]
    bf16 = summary[f"bf16, seed {seeds[0]}"]
    se = max(r["std"] for r in f32) / math.sqrt(w)
    lo, hi = min(r["mean"] for r in f32), max(r["mean"] for r in f32)
    inside = lo - se <= bf16["mean"] <= hi + se
    strictly = lo <= bf16["mean"] <= hi
    lr = cfg.train.lr
    print(f"loss check: config {Path(args.config).name}, {args.loss_steps} steps from a fresh init, batch {b}, "
          f"{size}x{size}, lr {lr:g} (factor {runs[next(iter(runs))].set_lr() / lr:g} at the end), full objective; "
          f"the same batches in every run: {data_note}, crops / flips / masks {d.masks!r} from seed 0; "
          f"VGG16 {vgg_note}")
    print(f"{_cpu_name()} ({_bf16_flags()}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"the three runs interleaved step by step")
    print()
    print(f"| run | mean g_total, steps {args.loss_steps - w + 1}-{args.loss_steps} | std of those steps | "
          f"mean l1_refined, same steps | s / step (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in summary.items():
        print(f"| {name} | {r['mean']:.3f} | {r['std']:.3f} | {r['l1_refined']:.4f} | {r['sec_per_step']:.2f} |")
    print()
    print(f"rule: bf16 passes when its mean lies in [min - se, max + se] of the two float32 means, with se = the "
          f"larger float32 std / sqrt({w}) = {se:.3f} (the standard error of a {w}-step mean if the steps were "
          f"independent; they are not, so se understates a run's own noise): [{lo - se:.3f}, {hi + se:.3f}]")
    print(f"bf16 mean {bf16['mean']:.3f}: {'inside' if inside else 'OUTSIDE'} "
          f"({'also' if strictly else 'not'} inside the bare float32 range [{lo:.3f}, {hi:.3f}])")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        record = {"config": str(args.config), "steps": args.loss_steps, "window": w, "seeds": seeds,
                  "data": [str(f) for f in files], "vgg": vgg_note, "summary": summary,
                  "interval": [lo - se, hi + se], "inside": inside, "losses": losses, "seconds": seconds}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=1))
    if not inside:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None,
                        help="training config (default: csa-paper.yaml for the table, default-model.yaml otherwise)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=["auto", "off", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per batch size (default 3), or rounds of --compare-amp (default 8)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (JIT, allocator)")
    parser.add_argument("--vgg", default=None, help="VGG16 weights file (default lookup if left out)")
    parser.add_argument("--compare-amp", action="store_true", help="float32 vs bf16 autocast on CPU, one process")
    parser.add_argument("--loss-check", action="store_true", help="bf16 vs two float32 seeds, mean loss at the end")
    parser.add_argument("--loss-steps", type=int, default=200)
    parser.add_argument("--loss-window", type=int, default=50, help="the last N steps averaged")
    parser.add_argument("--seeds", type=int, nargs=2, default=[0, 1], help="train.seed of the two float32 runs")
    parser.add_argument("--data", default=None, help="loss check: a folder of training photos instead of the built-in ones")
    parser.add_argument("--json", default=None, help="loss check: write every step's losses and the summary here")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # internal: one batch size
    args = parser.parse_args()
    timing_table = not (args.compare_amp or args.loss_check)
    args.config = args.config or str(PAPER_CONFIG if timing_table else DEFAULT_MODEL_CONFIG)
    args.steps = args.steps if args.steps is not None else (3 if timing_table or args.one is not None else 8)
    if args.one is not None:
        print(json.dumps(one(args)))
    elif args.compare_amp and args.loss_check:
        parser.error("--compare-amp and --loss-check are separate runs: pick one")
    elif args.compare_amp or args.loss_check:
        if args.device != "cpu":
            parser.error("--compare-amp and --loss-check run on CPU")
        if args.loss_check and not 2 <= args.loss_window <= args.loss_steps:
            parser.error("--loss-window must be between 2 and --loss-steps")
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
        (compare_amp if args.compare_amp else loss_check)(args)
    else:
        table(args)


if __name__ == "__main__":
    main()

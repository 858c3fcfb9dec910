"""The evaluation harness: several inpainting methods on the same image-and-mask pairs.

:func:`evaluate` reads the pairs (:class:`csa.data.EvalPairs`: a mask folder paired by
file name, or a mask kind / folder assigned by the seed), runs every method on every
pair, composites, scores with :mod:`csa.metrics` and writes, under ``out_dir``:

- ``summary.json``  method -> bucket -> metric -> mean (plus counts), seconds per image,
  the equivalent command, settings, library versions, skipped metrics and why;
- ``per_image.csv`` one row per (image, method) with every metric;
- ``features.npz``  the Inception features of the truths and of each method's outputs
  (when FID/KID ran), for :func:`csa.perceptual.kid_difference_bootstrap`;
- ``results.md``    the same means as a Markdown table (and seconds per image);
- ``charts/<metric>.png`` a grouped bar chart per metric, by hole-ratio bucket;
- ``grid.png``      masked input, each method, ground truth for the first images.

Buckets are ``all`` plus the hole-ratio buckets of :func:`csa.masks.ratio_bucket`.
LPIPS is a per-pair metric (every bucket); FID and KID are set statistics (``all`` only).
Both use the cached files of :mod:`csa.weights` by default; without them they are
skipped, with the ``csa weights fetch`` command in the reason, and the run goes on. A
method is any callable ``(uint8 HxWx3, bool HxW) -> uint8 HxWx3`` (see
:mod:`csa.baselines`); :func:`resolve_method` turns the names the CLI accepts (those of
:data:`csa.methods.REGISTRY`, or a model file) into one.
Importing this module is cheap: numpy only; everything heavy is imported when used.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from .baselines import BASELINES, InpaintFn, composite
from .errors import CsaError
from .metrics import HIGHER_IS_BETTER, METRICS

Pair = tuple[str, np.ndarray, np.ndarray]  # (name, uint8 HxWx3 image, bool HxW mask)

#: Suffixes taken as files of our own model: those it loads (.onnx / .ts: csa export), and the
#: release's checkpoints, which its loader refuses with the advice to run `csa convert`.
WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".ts", ".pth", ".pt", ".ckpt")

#: Display names and number formats of the metrics in reports.
LABELS: dict[str, str] = {
    "l1": "L1",
    "l2": "L2",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "tv": "TV",
    "l1_hole": "L1 hole",
    "psnr_hole": "PSNR hole",
    "lpips": "LPIPS",
    "fid": "FID",
    "kid": "KID",
}
FORMATS: dict[str, str] = {
    "l1": ".4f",
    "l2": ".5f",
    "psnr": ".2f",
    "ssim": ".4f",
    "tv": ".4f",
    "l1_hole": ".4f",
    "psnr_hole": ".2f",
    "lpips": ".4f",
    "fid": ".2f",
    "kid": ".4f",
}

DEFINITIONS: dict[str, str] = {
    "l1": "mean |output - truth| over all pixels and channels, [0, 1] scale, composited output",
    "l2": "mean squared error over all pixels and channels, [0, 1] scale",
    "psnr": "10 log10(1 / l2) dB, per image, capped at 100 dB (exact match), then averaged",
    "ssim": "scikit-image structural_similarity, Gaussian sigma 1.5, population covariance, "
    "data_range 1, mean over channels",
    "tv": "mean |difference| over all horizontal and vertical neighbour pairs and channels "
    "of the output alone (ground truth's own TV under ground_truth)",
    "l1_hole": "l1 over all channels of the hole pixels only, per image, then averaged",
    "psnr_hole": "psnr over all channels of the hole pixels only, per image (capped), then averaged",
    "lpips": "LPIPS v0.1 distance (linear heads), inputs scaled to [-1, 1], per image, then averaged",
    "fid": "Frechet distance of Inception pool features (2048), outputs vs ground truths, over all images",
    "kid": "kernel inception distance: unbiased MMD^2 of Inception pool features with the kernel "
    "(x.y/d + 1)^3, outputs vs ground truths, over all images (means of 100 subsets of 1000 beyond 1000)",
}

#: The choices of ``lpips=``: a network of :mod:`csa.perceptual`, or off.
LPIPS_CHOICES = ("alex", "vgg", "off")


# --- methods --------------------------------------------------------------------------


def resolve_method(spec: str, device: str = "cpu") -> tuple[str, InpaintFn]:
    """Turn a method name into ``(label, callable)``.

    ``spec`` is a name of :data:`csa.methods.REGISTRY` (a baseline such as ``telea``, or
    ``csa``, the bundled default model) or the path of a model file. The model is loaded
    here (not at import); a baseline runs as its own function, as it always has.
    """
    from .inference import rgb8_function
    from .methods import MODEL_ID, REGISTRY, ModelMethod

    key = spec.strip().lower()
    if key in REGISTRY and key != MODEL_ID:
        method = REGISTRY[key].create(None, device)
        return key, rgb8_function(method)
    path = Path(spec)
    if key == MODEL_ID or path.suffix.lower() in WEIGHT_SUFFIXES or path.is_file():
        if key != MODEL_ID and not path.is_file():
            raise CsaError(f"weights file not found: {spec}: check the path")
        try:
            method = ModelMethod.load(None if key == MODEL_ID else path, device=device,
                                      name=MODEL_ID if key == MODEL_ID else None)
        except CsaError as exc:
            if key != MODEL_ID:
                raise
            # The loader's advice names `csa inpaint`'s --weights; here a file is a --method.
            raise CsaError(f"{exc.message} (for csa evaluate: --method path/to/model.safetensors)") from None
        return method.name, rgb8_function(method)
    raise CsaError(
        f"unknown method {spec!r}: give a baseline ({', '.join(BASELINES)}), "
        "'csa' for the bundled model, or the path of a .safetensors weights file"
    )


def resolve_methods(specs: Union[Sequence[str], Mapping[str, InpaintFn]], device: str = "cpu") -> dict[str, InpaintFn]:
    """Labels -> callables, in the order given; refuses duplicates and an empty list."""
    if isinstance(specs, Mapping):
        methods = dict(specs)
    else:
        methods = {}
        for spec in specs:
            label, fn = resolve_method(spec, device)
            if label in methods:
                raise CsaError(f"method {label!r} is given twice: list each method once")
            methods[label] = fn
    if not methods:
        raise CsaError("no method to evaluate: give at least one --method")
    return methods


# --- the run --------------------------------------------------------------------------


@dataclass
class _Record:
    """What the run collects; everything the reports need."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    gt_tv: list[tuple[str, float]] = field(default_factory=list)  # (bucket, tv of the truth)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    grid: list[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]] = field(default_factory=list)


def _check_pair(pair: Pair) -> Pair:
    name, image, mask = pair
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CsaError(f"{name}: the evaluation takes HxWx3 uint8 images, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2] or mask.dtype != bool:
        raise CsaError(f"{name}: the mask must be HxW bool like the image, got {mask.shape} {mask.dtype}")
    return str(name), image, mask


def _bucket_order(present: Iterable[str]) -> list[str]:
    from .masks import BUCKET_NAMES

    present = set(present)
    order = ["all"] + [b for b in BUCKET_NAMES if b in present]  # "other" comes last
    return order + sorted(present - set(order))


def run_pairs(
    pairs: Iterable[Pair],
    methods: Mapping[str, InpaintFn],
    *,
    grid: int = 4,
    lpips: Optional[Callable[[np.ndarray, np.ndarray], float]] = None,
    fid: Any = None,
    progress: bool = True,
    total: Optional[int] = None,
) -> _Record:
    """Run every method on every pair and score it (no files written)."""
    from tqdm.auto import tqdm

    from .masks import hole_ratio, ratio_bucket
    from .metrics import compute_all, tv

    rec = _Record(seconds={label: [] for label in methods})
    it: Iterator[Pair] = iter(pairs)
    first = next(it, None)
    if first is None:
        raise CsaError("no image-and-mask pairs to evaluate: check --images (and --limit)")
    first = _check_pair(first)
    # One untimed call per method first, so one-off costs (imports, model warm-up)
    # do not count in seconds per image.
    for fn in methods.values():
        fn(first[1].copy(), first[2].copy())

    def all_pairs() -> Iterator[Pair]:
        yield first
        for p in it:
            yield _check_pair(p)

    bar = tqdm(all_pairs(), total=total, desc="evaluate", unit="img", disable=not progress, file=sys.stderr)
    for name, image, mask in bar:
        ratio = hole_ratio(mask)
        bucket = ratio_bucket(ratio)
        rec.gt_tv.append((bucket, tv(image)))
        if fid is not None:
            fid.add_real(name, image)
        outputs: dict[str, np.ndarray] = {}
        for label, fn in methods.items():
            t0 = time.perf_counter()
            # Copies: a method must not be able to change the truth we score against.
            out = fn(image.copy(), mask.copy())
            seconds = time.perf_counter() - t0
            out = composite(np.asarray(out), image, mask)
            scores = compute_all(out, image, mask)
            if lpips is not None:
                scores["lpips"] = float(lpips(out, image))
            if fid is not None:
                fid.add_fake(label, out)
            rec.seconds[label].append(seconds)
            rec.rows.append({"image": name, "method": label, "bucket": bucket, "hole_ratio": ratio, "seconds": seconds, **scores})
            outputs[label] = out
        if len(rec.grid) < grid:
            rec.grid.append((name, image, mask, outputs))
    bar.close()
    return rec


def _mean(values: list[float]) -> Optional[float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarize(rec: _Record, methods: Sequence[str], metric_names: Sequence[str]) -> dict[str, Any]:
    """method -> bucket -> {count, count_hole, metric: mean}, and the truth's TV per bucket."""
    buckets = _bucket_order(r["bucket"] for r in rec.rows)
    results: dict[str, Any] = {}
    for label in methods:
        rows = [r for r in rec.rows if r["method"] == label]
        results[label] = {}
        for b in buckets:
            sel = rows if b == "all" else [r for r in rows if r["bucket"] == b]
            entry: dict[str, Any] = {
                "count": len(sel),
                # images whose hole is empty have no hole metrics (NaN, left out)
                "count_hole": sum(1 for r in sel if math.isfinite(r["l1_hole"])),
            }
            for m in metric_names:
                entry[m] = _mean([r[m] for r in sel])
            results[label][b] = entry
    truth = {
        b: {"count": len(v), "tv": _mean(v)}
        for b in buckets
        for v in [[t for bb, t in rec.gt_tv if b == "all" or bb == b]]
    }
    return {"buckets": buckets, "results": results, "ground_truth": truth}


# --- reports --------------------------------------------------------------------------


def _versions(methods: Sequence[str]) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    names = ["csa-inpaint", "numpy", "scipy", "scikit-image", "opencv-python-headless", "opencv-python", "pypatchmatch",
             "pillow"]
    if any(m not in BASELINES for m in methods):
        names.append("torch")
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def equivalent_command(
    images: Union[str, os.PathLike],
    masks: str,
    methods: Sequence[str],
    out_dir: Union[str, os.PathLike],
    size: int,
    seed: int,
    limit: Optional[int],
    extra: Sequence[str] = (),
) -> str:
    """The ``csa evaluate`` command line that repeats a run."""
    argv = ["csa", "evaluate", "--images", str(images), "--masks", str(masks)]
    for m in methods:
        argv += ["--method", str(m)]
    argv += ["--out", str(out_dir), "--size", str(size), "--seed", str(seed)]
    if limit is not None:
        argv += ["--limit", str(limit)]
    return shlex.join([*argv, *extra])


def _fmt(value: Optional[float], metric: str) -> str:
    return "–" if value is None else format(value, FORMATS.get(metric, ".4f"))


def _shown_buckets(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of the buckets to show; one bucket holding every image folds into 'all'."""
    buckets = summary["buckets"]
    if len(buckets) == 2:  # "all" and the one bucket every image is in: the same numbers twice
        return [("all", f"all ({buckets[1]})")]
    return [(b, b) for b in buckets]


def markdown_table(summary: dict[str, Any]) -> str:
    """The means as one Markdown table: a row per (bucket, method), a column per metric."""
    metrics = summary["metrics"]
    arrows = {m: "↑" if HIGHER_IS_BETTER.get(m, False) else "↓" for m in metrics}
    head = ["Bucket", "Method", "n"] + [f"{LABELS.get(m, m)} {arrows[m]}" for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for b, shown in _shown_buckets(summary):
        for label, per_bucket in summary["results"].items():
            e = per_bucket[b]
            lines.append("| " + " | ".join([shown, label, str(e["count"])] + [_fmt(e.get(m), m) for m in metrics]) + " |")
        gt = summary["ground_truth"][b]
        cells = [_fmt(gt["tv"], "tv") if m == "tv" else "–" for m in metrics]
        lines.append("| " + " | ".join([shown, "*ground truth*", str(gt["count"])] + cells) + " |")
    return "\n".join(lines)


def markdown_report(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    out = [
        f"# Evaluation: {s['images']}" + (f", masks {s['masks']}" if s.get("masks") else ""),
        "",
        f"{summary['n_images']} images"
        + (f" at {s['size']}x{s['size']}, seed {s['seed']}" if s.get("size") else "")
        + ". Metrics on the composited output in [0, 1]; ↓ lower is better, ↑ higher is better.",
        "",
        "```",
        summary["command"],
        "```",
        "",
        markdown_table(summary),
        "",
        "| Method | seconds / image |",
        "|---|---:|",
    ]
    out += [f"| {m} | {v:.4f} |" for m, v in summary["seconds_per_image"].items()]
    if summary["skipped"]:
        out += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in summary["skipped"].items())]
    return "\n".join(out) + "\n"


def write_csv(rec: _Record, metric_names: Sequence[str], path: Path) -> None:
    from .imageio import atomic_write

    cols = ["image", "method", "bucket", "hole_ratio", "seconds", *metric_names]
    if rec.rows and "mask" in rec.rows[0]:
        cols.insert(1, "mask")

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in rec.rows:
                w.writerow([r[c] if isinstance(r[c], str) else repr(float(r[c])) for c in cols])

    atomic_write(path, write)


def write_charts(summary: dict[str, Any], folder: Path) -> list[Path]:
    """One grouped bar chart per metric: buckets on x, a bar per method."""
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps it from touching a GUI toolkit
    import matplotlib.pyplot as plt

    from .imageio import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    shown = _shown_buckets(summary)
    buckets, methods = [b for b, _ in shown], list(summary["results"])
    paths = []
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(buckets))
    for m in summary["metrics"]:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(buckets) + 2), 4.0), dpi=100)
        for i, label in enumerate(methods):
            vals = [summary["results"][label][b].get(m) for b in buckets]
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, [np.nan if v is None else v for v in vals], width, label=label)
        counts = [summary["results"][methods[0]][b]["count"] for b in buckets] if methods else [0] * len(buckets)
        ax.set_xticks(x, [f"{label}\n(n={n})" for (_, label), n in zip(shown, counts)])
        ax.set_xlabel("hole ratio")
        arrow = "higher is better" if HIGHER_IS_BETTER.get(m, False) else "lower is better"
        ax.set_ylabel(LABELS.get(m, m) + (" (dB)" if m.startswith("psnr") else ""))
        masks = summary["settings"].get("masks")
        ax.set_title(f"{LABELS.get(m, m)} by hole ratio ({arrow})" + (f", masks {masks}" if masks else ""))
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        top = ax.get_ylim()[1]
        ax.set_ylim(top=top * 1.18)  # room for the legend above the bars
        ax.legend(fontsize="small", ncol=min(len(methods), 5), loc="upper center")
        fig.tight_layout()
        path = folder / f"{m}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def make_grid(samples: list[tuple[str, np.ndarray, np.ndarray, dict[str, np.ndarray]]], methods: Sequence[str]):
    """Rows of (masked input, each method, ground truth), a header with the names."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = samples[0][1].shape[:2]
    titles = ["input", *methods, "ground truth"]
    head, pad = 20, 2
    canvas = Image.new("RGB", (len(titles) * (w + pad) + pad, head + len(samples) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for c, t in enumerate(titles):
        draw.text((pad + c * (w + pad) + 4, 4), t, fill="black", font=font)
    for r, (_, image, mask, outputs) in enumerate(samples):
        masked = image.copy()
        masked[mask] = 255  # the hole in white, as the release's figures show it
        tiles = [masked, *[outputs[m] for m in methods], image]
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile), (pad + c * (w + pad), head + pad + r * (h + pad)))
    return canvas


# --- entry point ----------------------------------------------------------------------


def evaluate(
    images: Union[str, os.PathLike],
    masks: str,
    methods: Union[Sequence[str], Mapping[str, InpaintFn]],
    out_dir: Union[str, os.PathLike],
    *,
    size: int = 256,
    seed: int = 0,
    limit: Optional[int] = None,
    grid: int = 4,
    device: str = "cpu",
    lpips: str = "alex",
    fid: bool = True,
    fid_model: Optional[Union[str, os.PathLike]] = None,
    lpips_net: Optional[Union[str, os.PathLike]] = None,
    lpips_lin: Optional[Union[str, os.PathLike]] = None,
    feature_cache: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``methods`` on the pairs of ``images`` x ``masks`` and write the reports.

    ``masks`` is a mask kind (e.g. ``centre:128``, ``freeform``) or a folder, paired as
    :class:`csa.data.EvalPairs` does; ``methods`` names (see :func:`resolve_method`) or
    a mapping label -> callable. Returns the summary (also ``out_dir/summary.json``).
    The learned metrics are those of :func:`evaluate_pairs`.
    """
    from .data import EvalPairs

    if size < 8:
        raise CsaError(f"--size must be at least 8 pixels, got {size}")
    if limit is not None and limit < 1:
        raise CsaError(f"--limit must be at least 1, got {limit}")
    names = list(methods) if isinstance(methods, Mapping) else [str(m) for m in methods]
    extra = _extra_args(grid, device, lpips, fid, fid_model, lpips_net, lpips_lin)
    command = equivalent_command(images, masks, names, out_dir, size, seed, limit, extra)
    settings = {"images": str(images), "masks": str(masks), "size": size, "seed": seed, "limit": limit, "device": device}
    resolved = resolve_methods(methods, device)  # before reading data: bad names fail fast
    with warnings_as_lines():
        pairs = EvalPairs(images, masks, size=size, seed=seed, limit=limit)
    settings["pairing"] = pairs.pairing  # "name", "seed" or "generated"
    return evaluate_pairs(
        pairs, resolved, out_dir, grid=grid, device=device, lpips=lpips, fid=fid, fid_model=fid_model,
        lpips_net=lpips_net, lpips_lin=lpips_lin, feature_cache=feature_cache, progress=progress,
        settings=settings, command=command,
    )


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show the data warnings (an unreadable image skipped, ...) as one ``warning: ...`` line
    on stderr each, in the user's terms, instead of Python's file-and-line format."""
    from .data import DataWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, DataWarning):
            from tqdm.auto import tqdm

            tqdm.write(f"warning: {message}", file=sys.stderr)  # keeps a progress bar intact
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        warnings.showwarning = show
        yield


def _learned_metrics(device: str, lpips: str, fid: bool, fid_model, lpips_net, lpips_lin, feature_cache: bool):
    """The LPIPS scorer and the FID/KID collector to use (None where skipped), and why skipped."""
    from . import weights

    if lpips not in LPIPS_CHOICES:
        raise CsaError(f"--lpips must be one of {', '.join(LPIPS_CHOICES)}, got {lpips!r}")
    if (lpips_net is None) != (lpips_lin is None):
        raise CsaError("LPIPS from .pth files needs both --lpips-net (AlexNet or VGG16 weights) and --lpips-lin (its linear heads)")
    skipped: dict[str, str] = {}
    lpips_fn = set_acc = None
    if lpips_net is not None:
        from .perceptual import LPIPS

        lpips_fn = LPIPS.from_files(lpips_net, lpips_lin, device=device)
    elif lpips == "off":
        skipped["lpips"] = "switched off (lpips=off)"
    elif weights.cached_path("lpips") is None:
        skipped["lpips"] = f"the LPIPS weights are not in {weights.default_cache_dir()}: run `{weights.fetch_command('lpips')}`"
    else:
        from .perceptual import LPIPS

        lpips_fn = LPIPS.default(lpips, device=device)
    if fid_model is not None or fid:
        from .perceptual import FeatureCache, InceptionFeatures, SetMetrics

        if fid_model is not None:  # a user's file: trusted by them (TorchScript runs code)
            inception = InceptionFeatures.from_file(fid_model, device=device)
        elif weights.cached_path("inception") is None:
            inception = None
            why = f"the Inception weights are not in {weights.default_cache_dir()}: run `{weights.fetch_command('inception')}`"
            skipped["fid"] = skipped["kid"] = why
        else:
            inception = InceptionFeatures.default(device=device)
        if inception is not None:
            set_acc = SetMetrics(inception, FeatureCache.for_model(inception) if feature_cache else None)
    else:
        skipped["fid"] = skipped["kid"] = "switched off (fid=False)"
    return lpips_fn, set_acc, skipped


def evaluate_pairs(
    pairs: Iterable[Pair],
    methods: Union[Sequence[str], Mapping[str, InpaintFn]],
    out_dir: Union[str, os.PathLike],
    *,
    grid: int = 4,
    device: str = "cpu",
    lpips: str = "alex",
    fid: bool = True,
    fid_model: Optional[Union[str, os.PathLike]] = None,
    lpips_net: Optional[Union[str, os.PathLike]] = None,
    lpips_lin: Optional[Union[str, os.PathLike]] = None,
    feature_cache: bool = True,
    progress: bool = True,
    settings: Optional[dict[str, Any]] = None,
    command: Optional[str] = None,
) -> dict[str, Any]:
    """The harness on any iterable of ``(name, uint8 HxWx3, bool HxW)`` pairs; writes the reports.

    Learned metrics, each used when its file is in the cache (:mod:`csa.weights`), else
    skipped with the fetch command in ``summary["skipped"]``:

    - ``lpips``: ``"alex"`` (default), ``"vgg"`` or ``"off"``; ``lpips_net`` + ``lpips_lin``
      (torchvision-format .pth files) replace the cached file;
    - ``fid``: FID and KID with the cached Inception file; ``fid_model`` replaces it with a
      TorchScript file of the user's (it runs code: trusted sources only).
      ``feature_cache`` keeps the truths' features for the next run (:class:`csa.perceptual.FeatureCache`).
    """
    if grid < 0:
        raise CsaError(f"--grid must be 0 or more, got {grid}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CsaError(f"--out {out} is a file: give a folder")
    resolved = resolve_methods(methods, device)
    labels = list(resolved)
    lpips_fn, set_acc, skipped = _learned_metrics(device, lpips, fid, fid_model, lpips_net, lpips_lin, feature_cache)

    total = len(pairs) if hasattr(pairs, "__len__") else None
    out.mkdir(parents=True, exist_ok=True)
    with warnings_as_lines():
        rec = run_pairs(pairs, resolved, grid=grid, lpips=lpips_fn, fid=set_acc, progress=progress, total=total)
    if hasattr(pairs, "mask_source") and hasattr(pairs, "names"):
        # Which mask each image got (a file, or kind and seed): the CSV says it per row.
        sources = {n: pairs.mask_source(i) for i, n in enumerate(pairs.names)}
        for r in rec.rows:
            r["mask"] = sources.get(r["image"], "")
    skipped_images = [(str(f), why) for f, why in getattr(pairs, "skipped", [])]

    metric_names = list(METRICS) + (["lpips"] if lpips_fn is not None else [])
    set_names = ["fid", "kid"] if set_acc is not None else []
    summary: dict[str, Any] = {
        "command": command or "(Python API: csa.evaluate.evaluate_pairs)",
        "cwd": os.getcwd(),
        "settings": settings or {"images": "(pairs given in Python)", "masks": None, "size": None, "seed": None},
        "n_images": len(rec.gt_tv),
        "metrics": metric_names,
        "definitions": {m: DEFINITIONS[m] for m in metric_names + set_names},
    }
    summary.update(summarize(rec, labels, metric_names))
    metric_files: dict[str, Any] = {}
    if lpips_fn is not None:
        metric_files["lpips"] = lpips_fn.info()
    if set_acc is not None:
        # FID and KID are set statistics: over all images only, never per bucket (too few images).
        scores = set_acc.compute()
        for label in labels:
            summary["results"][label]["all"].update(scores.get(label, {}))
        summary["metrics"] = metric_names + set_names
        summary["fid_images"] = set_acc.count
        metric_files["inception"] = {**set_acc.inception.info(), "cached_truth_features": set_acc.cache_hits}
        set_acc.save_features(out / "features.npz")
    summary["metric_files"] = metric_files  # which weights made the learned metrics: file, sha256, preprocessing
    summary["seconds_per_image"] = {m: float(np.mean(v)) for m, v in rec.seconds.items()}
    summary["skipped"] = skipped
    if skipped_images:  # unreadable files the pairs left out, with the reason
        summary["skipped_images"] = skipped_images
    summary["versions"] = _versions(labels)

    _write_reports(summary, rec, metric_names, out)
    return summary


def _extra_args(grid: int, device: str, lpips: str, fid: bool, fid_model, lpips_net, lpips_lin) -> list[str]:
    extra: list[str] = []
    if grid != 4:
        extra += ["--grid", str(grid)]
    if device != "cpu":
        extra += ["--device", device]
    if lpips != "alex" and lpips_net is None:
        extra += ["--lpips", lpips]
    if not fid and fid_model is None:
        extra += ["--no-fid"]
    if fid_model is not None:
        extra += ["--fid-model", str(fid_model)]
    if lpips_net is not None:
        extra += ["--lpips-net", str(lpips_net), "--lpips-lin", str(lpips_lin)]
    return extra


def _write_reports(summary: dict[str, Any], rec: _Record, metric_names: Sequence[str], out: Path) -> None:
    from .imageio import atomic_write, save_image

    text = json.dumps(summary, indent=2, allow_nan=False)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    write_csv(rec, metric_names, out / "per_image.csv")
    md = markdown_report(summary)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(md, encoding="utf-8"))
    write_charts(summary, out / "charts")
    if rec.grid:
        save_image(make_grid(rec.grid, list(summary["results"])), out / "grid.png")

"""Training: the Trainer (steps, checkpoints, resume, logging, DDP) and ``csa export``.

One iteration, in the release's order (docs/method.md, 'Training recipe'):

1. generator forward (rough, composite, refine), and one VGG16 pass on the ground truth
   and one on the fake, shared by both steps (:meth:`csa.losses.Objective.vgg_features`);
2. discriminator step: Adam on D_img and D_feat with ``0.5 * (L_D img + L_D feat)``;
3. generator step: Adam on the rough and refine nets and the consistency loss's 1x1
   projections, against the just-updated discriminators.

Run folder (only rank 0 writes)::

    RUN_DIR/config.yaml                     the full training config
    RUN_DIR/scalars.jsonl                   one JSON line of scalars every train.log_every steps
    RUN_DIR/tb/                             TensorBoard scalars and image grids
    RUN_DIR/checkpoints/step_00001000/      one checkpoint:
        generator.safetensors               the generator (model config in the metadata; loads
                                            with csa.checkpoints.load_generator)
        training.safetensors                discriminators and consistency projections
        state.pt                            optimisers, AMP scalers, RNG states, step / epoch /
                                            position in the epoch, the config (weights_only=True)
    RUN_DIR/checkpoints/latest              the name of the newest checkpoint

Mixed precision (``train.amp``, :func:`_amp_dtype`): autocast around the networks, so the
convolutions of the generator, VGG16 and the discriminators run in bf16 (or fp16 on CUDA);
the CSA layer, the feature mask, the smooth hole fill and every loss term turn autocast off
and compute in float32 (see csa.nn.attention, csa.nn.generator, csa.losses). Parameters,
gradients and Adam moments stay float32; only fp16 uses a GradScaler.

A checkpoint is written into a temporary folder and renamed into place, so a crash or
a second signal never leaves a half-written one. Resuming restores weights, optimiser
moments, RNG states and the data position (epoch, batch within the epoch), so on CPU a
run of 6 steps equals 3 steps, stop, resume, 3 more, bit for bit (same world size, batch
size and thread count; in float32 and under bf16 autocast alike).

Exit codes: 0 done, 1 non-finite loss (nothing saved after the last good checkpoint),
2 bad input, 130 stopped by SIGINT / SIGTERM after saving a checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoints import CONFIG_KEY, save_generator, save_tensors
from .config import Config
from .errors import EXIT_INTERRUPTED, EXIT_OK, CsaError
from .imageio import atomic_write
from .losses import LossWeights, Objective
from .nn.discriminators import FeatureDiscriminator, PatchDiscriminator
from .nn.generator import CSAGenerator, GeneratorOutput, build_generator, init_weights

PathLike = Union[str, os.PathLike]
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "state.pt"
GENERATOR_FILE = "generator.safetensors"
NETS_FILE = "training.safetensors"
TRAIN_CONFIG_KEY = "csa_train_config"
STATE_FORMAT = "csa-train-state/1"
_CKPT_RE = re.compile(r"^step_(\d{8,})$")


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite: the run stops (exit 1) without saving."""

    def __init__(self, step: int, term: str, value: float, last_checkpoint: Optional[Path]) -> None:
        where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        if term == "(another process)":
            what = "a loss term was non-finite on another process"
        else:
            what = f"loss term {term!r} is {value}"
        super().__init__(f"non-finite loss at step {step}: {what}; stopped without saving ({where}). "
                         "Lower train.lr, use model.csa_mode=stable, or try train.amp=off")
        self.step, self.term, self.value = step, term, value


# --- distributed --------------------------------------------------------------------------


@dataclasses.dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK), if any.

    gloo on CPU, NCCL on CUDA. Without those variables: a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_available():
        raise CsaError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        cuda = _wants_cuda(device_pref)
        if cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return info


def _wants_cuda(device_pref: str) -> bool:
    if device_pref == "auto":
        return torch.cuda.is_available()
    return device_pref.startswith("cuda")


def resolve_device(device_pref: str, info: DistInfo) -> torch.device:
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if device_pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CsaError(f"train.device={device_pref} but CUDA is not available here: use train.device=cpu")
        if info.enabled:  # one GPU per process, chosen by torchrun's LOCAL_RANK
            return torch.device("cuda", info.local_rank)
        return torch.device(device_pref)
    if device_pref != "cpu":
        raise CsaError(f"train.device must be auto, cpu, cuda or cuda:N, got {device_pref!r}")
    return torch.device("cpu")


# --- data order ---------------------------------------------------------------------------


class EpochBatches(Sampler[list[int]]):
    """Seeded, sharded, resumable batches: a DistributedSampler that can start mid-epoch.

    Epoch ``e`` shuffles with ``numpy.random.default_rng([seed, e])``, pads the order to a
    multiple of the world size (repeating its start, like DistributedSampler), gives rank
    ``r`` every ``world``-th index from ``r``, and cuts that into full batches (the last
    partial batch is dropped, so every step has ``batch_size`` samples on every rank).
    :meth:`set_position` selects the epoch and the number of batches already done.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = math.ceil(n / world_size)
        self.batches_per_epoch = self.per_rank // batch_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        total = self.per_rank * self.world_size
        order = np.concatenate([order, order[: total - self.n]]) if total > self.n else order
        mine = order[self.rank : total : self.world_size].tolist()
        b = self.batch_size
        return [mine[i * b : (i + 1) * b] for i in range(self.batches_per_epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


def lr_factor(cfg: Config, epoch: int, step: int) -> float:
    """The learning-rate multiplier of docs/method.md, 'Training recipe' (``lr_unit: epoch``) or its per-step form."""
    t = cfg.train
    if t.lr_schedule == "constant":
        return 1.0
    x = epoch if t.lr_unit == "epoch" else step
    return max(0.0, 1.0 - max(0, x - t.lr_decay_start) / float(t.lr_decay_length))


# --- checkpoints on disk ----------------------------------------------------------------------


def list_checkpoints(run_dir: PathLike) -> list[Path]:
    """Complete checkpoints of a run folder, oldest step first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CKPT_RE.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_CKPT_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def read_generator_weights(path: PathLike) -> dict[str, Tensor]:
    """Generator weights (float32) from a run folder, a checkpoint, or an exported .safetensors file."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise CsaError(f"train.init_from: {p} does not exist (give a run folder, a checkpoint folder or a "
                       "generator .safetensors file)")
    file = p if p.is_file() and p.suffix == ".safetensors" and p.name != NETS_FILE else resolve_checkpoint(p) / GENERATOR_FILE
    try:
        weights = load_file(str(file))
    except Exception as exc:
        raise CsaError(f"train.init_from: cannot read generator weights from {file} ({exc})") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def widen_input_channels(weights: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zero-pad conv weights that have fewer input channels than ``target``'s (dim 1).

    Starting a ``model.mask_channel`` model from one without: the new channel's weights
    start at zero, so the widened model computes exactly what the old one did.
    """
    out = dict(weights)
    for key, w in weights.items():
        t = target.get(key)
        if t is None or w.dim() != 4 or t.dim() != 4 or w.shape[1] >= t.shape[1]:
            continue
        if w.shape[0] == t.shape[0] and w.shape[2:] == t.shape[2:]:
            out[key] = torch.cat([w, w.new_zeros(w.shape[0], t.shape[1] - w.shape[1], *w.shape[2:])], dim=1)
    return out


def resolve_checkpoint(path: PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder, a file inside one, or a run folder (its latest)."""
    p = Path(path)
    if p.is_file() and (p.parent / STATE_FILE).is_file():
        return p.parent
    if (p / STATE_FILE).is_file():
        return p
    if (p / CHECKPOINT_DIR).is_dir():
        pointer = p / CHECKPOINT_DIR / LATEST
        if pointer.is_file():
            named = p / CHECKPOINT_DIR / pointer.read_text(encoding="utf-8").strip()
            if (named / STATE_FILE).is_file():
                return named
        found = list_checkpoints(p)
        if found:
            return found[-1]
        raise CsaError(f"run folder {p} has no complete checkpoint yet: nothing to resume or export")
    if not p.exists():
        raise CsaError(f"{p} not found: give a run folder (csa train --out) or one of its checkpoints")
    raise CsaError(f"{p} is neither a run folder nor a checkpoint: give RUN_DIR or RUN_DIR/checkpoints/step_N")


def read_state(ckpt: Path) -> dict[str, Any]:
    """The state file of a checkpoint, read with ``weights_only=True`` (no pickled code)."""
    try:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise CsaError(f"cannot read {ckpt / STATE_FILE} ({type(exc).__name__}: {exc}): the checkpoint is damaged; "
                       "resume from an older one in the same folder") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CsaError(f"{ckpt / STATE_FILE} is not a csa training state ({STATE_FORMAT})")
    return state


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):  # a different GPU count: keep the current CUDA RNG
            torch.cuda.set_rng_state_all(state["cuda"])


# --- signals ------------------------------------------------------------------------------


class StopFlag:
    """SIGINT / SIGTERM handling: the first signal asks the loop to stop after the current step
    (and save); a second one abandons the step at once (KeyboardInterrupt, nothing saved)."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# --- logging ------------------------------------------------------------------------------


def image_grid(rows: Sequence[Sequence[Tensor]]) -> Tensor:
    """3 x (R*H) x (C*W) image in [0, 1] from rows of 3 x H x W tensors in [-1, 1] (a 2-px white gap)."""
    gap = 2
    out_rows = []
    for row in rows:
        cells = []
        for t in row:
            cells += [((t.float().clamp(-1, 1) + 1) / 2).cpu(), torch.ones(3, t.shape[1], gap)]
        out_rows += [torch.cat(cells[:-1], 2)]
        out_rows += [torch.ones(3, gap, out_rows[-1].shape[2])]
    return torch.cat(out_rows[:-1], 1)


_SHOWN = ("g_total", "l1_refined", "consistency", "d_total")  # the losses on the progress line


class RunLog:
    """tqdm progress, TensorBoard and scalars.jsonl for rank 0; does nothing on other ranks."""

    def __init__(self, run_dir: Optional[Path], enabled: bool, start_step: int, total: int, progress: bool) -> None:
        self.enabled = enabled and run_dir is not None
        self.writer = None
        self.jsonl = None
        self.bar = None
        self.lines = False
        if not self.enabled:
            return
        assert run_dir is not None
        path = run_dir / "scalars.jsonl"
        _truncate_jsonl(path, start_step)  # a resumed run rewrites what came after its checkpoint
        self.jsonl = open(path, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        self.total = total
        # A bar on a terminal; in a log file (a background run) one plain line per logged step.
        self.lines = progress and not sys.stderr.isatty()
        if progress and not self.lines:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr,
                            smoothing=0.05)

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def step(self, terms: dict[str, float]) -> None:
        if self.bar is not None:
            short = {k: terms[k] for k in _SHOWN if k in terms}
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in short.items()}, refresh=False)
            self.bar.update(1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        assert self.writer is not None and self.jsonl is not None
        for key, value in values.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(_tb_tag(key), value, step)
        self.jsonl.write(json.dumps({"step": step, **values}, sort_keys=False) + "\n")
        self.jsonl.flush()
        if self.lines:
            shown = " ".join(f"{k}={values[k]:.4g}" for k in _SHOWN if k in values)
            print(f"step {step}/{self.total} epoch {values.get('epoch', 0)} lr {values.get('lr', 0):.3g} "
                  f"{values.get('sec_per_step', 0):.2f} s/step {shown}", file=sys.stderr, flush=True)

    def images(self, step: int, grid: Tensor) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image("samples/input_rough_refined_truth", grid, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _tb_tag(key: str) -> str:
    if key.startswith("d_"):
        return f"loss_D/{key}"
    if key in ("lr", "sec_per_step", "images_per_sec"):
        return f"train/{key}"
    return f"loss_G/{key}"


def _truncate_jsonl(path: Path, keep_upto: int) -> None:
    """Drop lines of steps after ``keep_upto`` (they belong to steps undone by a resume)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= keep_upto:
                kept.append(line)
        except (ValueError, AttributeError, TypeError):
            continue  # a line cut by a crash
    text = "".join(k + "\n" for k in kept)

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)


# --- the trainer --------------------------------------------------------------------------


@contextlib.contextmanager
def _frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Parameters without gradients for a while (the discriminators during the G step)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` on this device, or None for plain float32.

    CUDA: bf16 or fp16 (auto: bf16 where the GPU has it). CPU: bf16 only when asked; auto
    stays float32 there, so a config behaves the same on every CI machine whatever its CPU.
    """
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "bf16":
            return torch.bfloat16
        if amp == "fp16":
            return torch.float16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "auto":
        return None
    if amp == "fp16":
        raise CsaError("train.amp=fp16 runs on CUDA only: on CPU use train.amp=bf16 (or off for float32)")
    return torch.bfloat16


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


_SLOW_BF16_WARNED = False


def _warn_slow_bf16() -> None:
    """One ``warning:`` line per process: bf16 on a CPU without native bf16 runs, but slowly."""
    global _SLOW_BF16_WARNED
    if not _SLOW_BF16_WARNED:
        _SLOW_BF16_WARNED = True
        print("warning: train.amp=bf16 on a CPU without AVX512-BF16 or AMX: the bf16 convolutions are emulated "
              "and likely slower than float32 (train.amp=off)", file=sys.stderr, flush=True)


class Trainer:
    """The four networks, their optimisers, one training step, and the loop around it.

    ``dataset`` may be given (anything returning ``{"image", "mask", "index"}`` items);
    otherwise it is built from ``config.data`` when :meth:`fit` needs it. ``vgg`` may be
    given (a frozen :class:`csa.nn.vgg.VGG16Features`); otherwise it is loaded from
    ``config.loss.vgg_weights`` when a loss term needs it.
    """

    def __init__(self, config: Config, run_dir: Optional[PathLike] = None, *, dataset: Optional[Dataset] = None,
                 vgg: Optional[nn.Module] = None, dist_info: Optional[DistInfo] = None,
                 progress: bool = True) -> None:
        config.validate()
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.dist = dist_info or DistInfo()
        self.progress = progress
        t = config.train
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device, self.dist)
        self.amp_dtype = _amp_dtype(t.amp, self.device)
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu" and self.dist.is_main and not cpu_has_fast_bf16():
            _warn_slow_bf16()

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.generator: CSAGenerator = build_generator(dataclasses.replace(config.model)).to(self.device)
        if t.init_from:
            try:
                self.generator.load_state_dict(
                    widen_input_channels(read_generator_weights(t.init_from), self.generator.state_dict()), strict=True)
            except RuntimeError as exc:
                raise CsaError(f"train.init_from: {t.init_from} does not fit the config's model section "
                               f"({str(exc)[:300]})") from None
        weights = LossWeights(l1=config.loss.l1, l1_hole=config.loss.l1_hole_weight,
                              consistency=config.loss.consistency,
                              gan_image=config.loss.gan_image, gan_feature=config.loss.gan_feature,
                              perceptual=config.loss.perceptual, style=config.loss.style, grid=config.loss.grid)
        if weights.needs_vgg and vgg is None:
            from .nn.vgg import load_vgg16

            vgg = load_vgg16(config.loss.vgg_weights)
        self.objective = Objective(vgg if weights.needs_vgg else None, config.model.tap_channels, weights,
                                   d_input=config.loss.d_input).to(self.device)
        self.consistency = self.objective.consistency  # holds the trainable 1x1 projections
        dc = config.discriminator
        self.d_image: Optional[nn.Module] = None
        self.d_feature: Optional[nn.Module] = None
        if weights.gan_image > 0:
            self.d_image = PatchDiscriminator(ndf=dc.image_ndf)
            init_weights(self.d_image)
            self.d_image.to(self.device)
        if weights.gan_feature > 0:
            self.d_feature = FeatureDiscriminator(width=dc.feature_width, variant=dc.feature_variant)
            init_weights(self.d_feature)
            self.d_feature.to(self.device)

        betas = (t.beta1, t.beta2)
        self.g_params = list(self.generator.parameters()) + list(self.consistency.parameters())
        self.d_params = [p for d in (self.d_image, self.d_feature) if d is not None for p in d.parameters()]
        self.opt_g = torch.optim.Adam(self.g_params, lr=t.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d_params, lr=t.lr, betas=betas) if self.d_params else None
        fp16 = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)

        # What the step calls: DDP wrappers when distributed (gradients averaged over ranks).
        self.g_run: nn.Module = self.generator
        self.d_image_run, self.d_feature_run = self.d_image, self.d_feature
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Without the L1 term a detached rough net gets no gradient at all.
            unused = config.loss.l1 <= 0
            self.g_run = DDP(self.generator, device_ids=ids, find_unused_parameters=unused)
            if any(True for _ in self.consistency.parameters()) and weights.consistency > 0:
                self.objective.consistency = DDP(self.consistency, device_ids=ids)
            if self.d_image is not None:
                self.d_image_run = DDP(self.d_image, device_ids=ids)
            if self.d_feature is not None:
                self.d_feature_run = DDP(self.d_feature, device_ids=ids)

        self.step = 0  # optimiser steps done
        self.epoch = 0  # current epoch (0-based)
        self.batch_in_epoch = 0  # batches of the current epoch done
        self.last_checkpoint: Optional[Path] = None
        self.stop = StopFlag()
        self._dataset = dataset
        self._visual: Optional[tuple[Tensor, ...]] = None

    # --- one step -----------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def set_lr(self) -> float:
        lr = self.config.train.lr * lr_factor(self.config, self.epoch, self.step)
        for opt in (self.opt_g, self.opt_d):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr
        return lr

    def train_step(self, batch: dict[str, Tensor], keep_images: bool = False) -> dict[str, float]:
        """One D step and one G step on a batch; returns every loss term as a float.

        Terms: ``d_image``, ``d_feature``, ``d_total`` (discriminator step), ``l1_refined``,
        ``l1_rough``, ``consistency``, ``g_image``, ``g_feature``, ``g_total`` (generator
        step, unweighted except the totals); absent when switched off. The values are read
        back once per step (one host sync), after both updates.
        """
        gt = batch["image"].to(self.device, non_blocking=True)
        mask = batch["mask"].to(self.device, non_blocking=True)
        obj = self.objective
        with self._autocast():
            out: GeneratorOutput = self.g_run(gt, mask)
            feats = obj.vgg_features(out, gt)
        d_terms: dict[str, Tensor] = {}
        if self.opt_d is not None:
            with self._autocast():
                d_terms = obj.discriminator_loss(self.d_image_run, self.d_feature_run, out, gt, feats)
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler_d.scale(d_terms["total"]).backward()
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
        # The G step sees the updated discriminators without computing their gradients
        # (and, under DDP, without their wrappers: nothing to average there).
        with _frozen(self.d_params):
            with self._autocast():
                g_terms = obj.generator_loss(self.d_image, self.d_feature, out, gt, mask, feats)
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler_g.scale(g_terms["total"]).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()

        named = {("d_total" if k == "total" else k): v for k, v in d_terms.items()}
        named.update({("g_total" if k == "total" else k): v for k, v in g_terms.items()})
        values = torch.stack([v.detach().float() for v in named.values()]).cpu().tolist()
        if keep_images:
            n = min(4, gt.shape[0])
            shown = torch.where(mask[:n] > 0.5, torch.ones_like(gt[:n]), gt[:n])
            self._visual = tuple(x.detach().float().cpu() for x in (shown, out.rough[:n], out.refined[:n], gt[:n]))
        return dict(zip(named, values))

    # --- state ----------------------------------------------------------------------------

    def _nets_state(self) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {}
        for prefix, module in (("d_image.", self.d_image), ("d_feature.", self.d_feature),
                               ("consistency.", self.consistency)):
            if module is not None:
                tensors.update({prefix + k: v for k, v in module.state_dict().items()})
        return tensors

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights, for ``state.pt`` (plain containers, tensors and numbers)."""
        return {
            "format": STATE_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.dist.world_size,
            "batch_size": self.config.train.batch_size,
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng": _rng_state(),
            "config": self.config.to_dict(),
            "nets": [n for n, m in (("d_image", self.d_image), ("d_feature", self.d_feature)) if m is not None],
        }

    def save_checkpoint(self) -> Path:
        """Write RUN_DIR/checkpoints/step_N (temporary folder, then rename); returns its path."""
        assert self.run_dir is not None
        folder = self.run_dir / CHECKPOINT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:08d}"
        final = folder / name
        tmp = folder / f".{name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            meta = {"step": str(self.step), "epoch": str(self.epoch)}
            save_generator(self.generator, tmp / GENERATOR_FILE, extra_metadata=meta)
            save_tensors(self._nets_state(), tmp / NETS_FILE,
                         {CONFIG_KEY: self.config.model.to_json(), TRAIN_CONFIG_KEY: self.config.to_yaml(), **meta})
            torch.save(self.state_dict(), tmp / STATE_FILE)
            trash = None
            if final.exists():  # the same step saved again (e.g. stopped right after a resume)
                trash = folder / f".{name}.old-{os.getpid()}"
                os.replace(final, trash)
            os.replace(tmp, final)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

        def write_pointer(path: str) -> None:
            Path(path).write_text(name + "\n", encoding="utf-8")

        atomic_write(folder / LATEST, write_pointer)
        self.last_checkpoint = final
        keep = self.config.train.keep_checkpoints
        if keep > 0:
            for old in [p for p in list_checkpoints(self.run_dir) if p != final][: -(keep - 1) or None]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: PathLike, state: Optional[dict[str, Any]] = None) -> None:
        """Restore weights, optimisers, scalers, RNG and position from a checkpoint folder."""
        from safetensors.torch import load_file

        ckpt = resolve_checkpoint(path)
        state = state if state is not None else read_state(ckpt)
        try:
            g_state = load_file(str(ckpt / GENERATOR_FILE))
            nets = load_file(str(ckpt / NETS_FILE))
        except Exception as exc:
            raise CsaError(f"cannot read the weights of checkpoint {ckpt} ({exc})") from None
        try:
            self.generator.load_state_dict(g_state, strict=True)
        except RuntimeError as exc:
            raise CsaError(f"checkpoint {ckpt} does not fit the config's model section ({str(exc)[:300]}): "
                           "resume with the run's own config (leave out --config)") from None
        saved_nets = set(state.get("nets", []))
        for prefix, module in (("d_image", self.d_image), ("d_feature", self.d_feature),
                               ("consistency", self.consistency)):
            if module is None:
                continue
            sub = {k[len(prefix) + 1 :]: v for k, v in nets.items() if k.startswith(prefix + ".")}
            if prefix != "consistency" and prefix not in saved_nets:
                warnings.warn(f"checkpoint {ckpt} has no {prefix} (its loss was off): starting it fresh", stacklevel=2)
                continue
            try:
                module.load_state_dict(sub, strict=True)
            except RuntimeError as exc:
                raise CsaError(f"checkpoint {ckpt}: {prefix} does not fit the config ({str(exc)[:300]})") from None
        self.opt_g.load_state_dict(state["optimizer_g"])
        wanted = [n for n, m in (("d_image", self.d_image), ("d_feature", self.d_feature)) if m is not None]
        if self.opt_d is not None:
            if state.get("optimizer_d") is not None and list(state.get("nets", [])) == wanted:
                self.opt_d.load_state_dict(state["optimizer_d"])
            else:
                warnings.warn("the discriminators differ from the checkpoint's: their optimiser starts fresh",
                              stacklevel=2)
        if state.get("scaler_g"):
            self.scaler_g.load_state_dict(state["scaler_g"])
        if state.get("scaler_d"):
            self.scaler_d.load_state_dict(state["scaler_d"])
        _set_rng_state(state["rng"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        if state.get("world_size") != self.dist.world_size or state.get("batch_size") != self.config.train.batch_size:
            warnings.warn(
                f"resuming with {self.dist.world_size} process(es) x batch {self.config.train.batch_size}, the "
                f"checkpoint was written with {state.get('world_size')} x {state.get('batch_size')}: the data "
                "order from here on differs from an uninterrupted run", stacklevel=2)
        self.last_checkpoint = ckpt

    def parameter_digest(self) -> str:
        """sha256 of every trainable tensor (generator, projections, discriminators), in order."""
        h = hashlib.sha256()
        for module in (self.generator, self.consistency, self.d_image, self.d_feature):
            if module is None:
                continue
            for key, value in module.state_dict().items():
                h.update(key.encode())
                h.update(value.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()

    # --- the loop ---------------------------------------------------------------------------

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            d = self.config.data
            if not d.root:
                raise CsaError("no training data: pass --data DIR (or set data.root in the config)")
            from .data import build_dataset

            self._dataset = build_dataset(
                d.dataset, d.root, self.config.model.image_size, split=d.split, masks=d.masks,
                seed=self.config.train.seed, transform=d.transform, crop_scale=tuple(d.crop_scale), flip=d.flip,
                augment_masks=d.augment_masks, polarity=d.mask_polarity, cache=d.cache,
            )
        return self._dataset

    def _done(self) -> bool:
        t = self.config.train
        if t.max_steps is not None:
            return self.step >= t.max_steps
        return self.epoch >= t.epochs

    def _agree(self, stop: bool, bad: bool) -> tuple[bool, bool]:
        """Every rank stops (or fails) at the same step: one small all-reduce per step."""
        if not self.dist.enabled:
            return stop, bad
        flags = torch.tensor([float(stop), float(bad)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0].item()), bool(flags[1].item())

    def fit(self) -> int:
        """Train until train.max_steps (or train.epochs); returns 0, or 130 when stopped by a signal.

        Raises :class:`NonFiniteLoss` (nothing saved after the last good checkpoint).
        """
        t = self.config.train
        main = self.dist.is_main and self.run_dir is not None
        dataset = self.dataset
        sampler = EpochBatches(len(dataset), t.batch_size, self.dist.rank, self.dist.world_size, t.seed)
        if sampler.batches_per_epoch == 0:
            raise CsaError(f"the dataset has {len(dataset)} images, fewer than train.batch_size ({t.batch_size}) x "
                           f"{self.dist.world_size} process(es): lower train.batch_size or add images")
        if self.batch_in_epoch >= sampler.batches_per_epoch:  # the epoch got shorter (new batch size)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        workers = self.config.data.num_workers
        # Persistent workers keep their image cache (data.cache) across epochs; samples depend
        # only on (seed, epoch, index), and set_epoch reaches the workers through shared memory.
        # Its own generator: the loader draws a base seed per epoch, not from the global RNG.
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(t.seed))
        total = t.max_steps if t.max_steps is not None else t.epochs * sampler.batches_per_epoch
        start_step = self.step
        log = RunLog(self.run_dir, main, start_step, total, self.progress)
        if main:
            assert self.run_dir is not None
            n_g = sum(p.numel() for p in self.generator.parameters())
            log.say(f"csa train: {len(dataset)} images, {sampler.batches_per_epoch} steps/epoch x batch "
                    f"{t.batch_size} x {self.dist.world_size} process(es), {total} steps in all, "
                    f"device {self.device}{', amp ' + str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else ''}, "
                    f"generator {n_g:,} parameters" + (f"; resumed at step {self.step} from {self.last_checkpoint}"
                                                      if self.step else ""))

        def batches() -> Iterator[dict[str, Tensor]]:
            while True:
                sampler.set_position(self.epoch, self.batch_in_epoch)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(self.epoch)
                yield from loader

        code = EXIT_OK
        last_ckpt_time = time.monotonic()
        saved_at = self.step if self.last_checkpoint is not None else -1
        it = batches()
        with self.stop:
            try:
                while not self._done():
                    try:
                        batch = next(it)
                    except Exception:
                        if self.stop:  # e.g. Ctrl-C reached the loader's workers too
                            break
                        raise
                    if self.stop and not self.dist.enabled:  # asked to stop while loading: skip the step
                        break
                    lr = self.set_lr()
                    want_images = main and t.image_every > 0 and (self.step + 1) % t.image_every == 0
                    tick = time.perf_counter()
                    terms = self.train_step(batch, keep_images=want_images)
                    seconds = time.perf_counter() - tick
                    bad = next(((k, v) for k, v in terms.items() if not math.isfinite(v)), None)
                    stop, bad_any = self._agree(bool(self.stop), bad is not None)
                    if bad_any:
                        name, value = bad if bad is not None else ("(another process)", float("nan"))
                        raise NonFiniteLoss(self.step + 1, name, value, self.last_checkpoint)
                    self.step += 1
                    self.batch_in_epoch += 1
                    if self.batch_in_epoch >= sampler.batches_per_epoch:
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    log.step(terms)
                    if main and (self.step % t.log_every == 0 or self.step == start_step + 1):
                        images = t.batch_size * self.dist.world_size
                        log.scalars(self.step, {"epoch": self.epoch, "lr": lr, "sec_per_step": seconds,
                                                "images_per_sec": images / max(seconds, 1e-9), **terms})
                    if want_images and self._visual is not None:
                        log.images(self.step, image_grid(list(zip(*self._visual))))
                        self._visual = None
                    if stop:
                        self.stop.signal = self.stop.signal or "stop requested by another process"
                        break
                    due = t.checkpoint_every > 0 and self.step % t.checkpoint_every == 0
                    due = due or (t.checkpoint_minutes > 0 and time.monotonic() - last_ckpt_time >= t.checkpoint_minutes * 60)
                    if main and due and not self._done():
                        self.save_checkpoint()
                        saved_at, last_ckpt_time = self.step, time.monotonic()
                if main and saved_at != self.step:
                    path = self.save_checkpoint()
                    log.say(f"saved {path}")
                if self.stop:
                    log.say(f"stopped by {self.stop.signal} at step {self.step}; resume with "
                            f"`csa train --out {self.run_dir} --resume`")
                    code = EXIT_INTERRUPTED
            finally:
                log.close()
        if main and code == EXIT_OK:
            log.say(f"done: step {self.step}, checkpoint {self.last_checkpoint}")
        return code


# --- entry points -------------------------------------------------------------------------


def _parse_resume(resume: Optional[str], out: Optional[Path]) -> Optional[Path]:
    if resume is None:
        return None
    if resume == "":
        if out is None:
            raise CsaError("--resume without a path needs --out RUN_DIR (the run to continue)")
        return out
    return Path(resume)


def prepare_config(config_path: Optional[PathLike], data: Optional[PathLike], overrides: Sequence[str],
                   resume_state: Optional[dict[str, Any]]) -> Config:
    """The run's config: --config FILE, else (when resuming) the checkpoint's; then --data, then --set."""
    if config_path is not None:
        cfg = Config.load(config_path)
    elif resume_state is not None:
        cfg = Config.from_dict(resume_state["config"])
    else:
        raise CsaError("give --config FILE (e.g. configs/csa-paper.yaml), or --resume to continue a run")
    if data is not None:
        cfg.data.root = str(data)
    return cfg.with_overrides(overrides)


def run_training(config_path: Optional[PathLike], data: Optional[PathLike], out: Optional[PathLike],
                 resume: Optional[str] = None, overrides: Sequence[str] = (), progress: bool = True) -> int:
    """``csa train``: returns the exit code (0 done, 130 stopped); NonFiniteLoss for a diverged run.

    ``resume``: None (new run), "" (continue ``out``), or a run folder / checkpoint.
    """
    out_path = Path(out) if out is not None else None
    resume_path = _parse_resume(resume, out_path)
    ckpt = resolve_checkpoint(resume_path) if resume_path is not None else None
    state = read_state(ckpt) if ckpt is not None else None
    if out_path is None:
        if ckpt is None:
            raise CsaError("give --out RUN_DIR: the folder for checkpoints and logs")
        out_path = ckpt.parent.parent  # continue in the run folder the checkpoint belongs to
    cfg = prepare_config(config_path, data, overrides, state)
    if ckpt is None and list_checkpoints(out_path):
        raise CsaError(f"{out_path} already holds a training run: add --resume to continue it, or choose a new --out")
    if out_path.exists() and not out_path.is_dir():
        raise CsaError(f"--out {out_path} is a file: give a folder")

    info = init_distributed(cfg.train.device)
    try:
        if info.is_main:
            (out_path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
            for stale in (out_path / CHECKPOINT_DIR).glob(".step_*.*-*"):  # left by a killed save
                shutil.rmtree(stale, ignore_errors=True)
            atomic_write(out_path / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml(), encoding="utf-8"))
        trainer = Trainer(cfg, out_path, dist_info=info, progress=progress)
        if ckpt is not None:
            trainer.load_checkpoint(ckpt, state)
        code = trainer.fit()
        if info.enabled:
            _check_replicas(trainer, out_path)
        return code
    finally:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _check_replicas(trainer: Trainer, out: Path) -> None:
    """After a distributed run, all ranks must hold the same weights; rank 0 records the digests."""
    digests: list[Optional[str]] = [None] * trainer.dist.world_size
    dist.all_gather_object(digests, trainer.parameter_digest())
    if trainer.dist.is_main:
        record = {"step": trainer.step, "world_size": trainer.dist.world_size, "parameter_sha256": digests}
        atomic_write(out / "replicas.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1), encoding="utf-8"))
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {len(digests)} DDP replicas ended with different weights: {digests}")


def export_generator(source: PathLike, output: PathLike, half: bool = False) -> tuple[Path, int, int]:
    """``csa export``: the generator of a run (its latest checkpoint) or of one checkpoint, alone.

    Returns (checkpoint used, parameter count, file size in bytes). ONNX and TorchScript
    exports (and .safetensors sources): :func:`csa.export.export_source`, which this calls.
    """
    from .export import export_source

    report = export_source(resolve_checkpoint(source), output, "safetensors", half=half)
    return report.source, report.parameters, report.size


def parse_resume_args(extra: Sequence[str]) -> Optional[str]:
    """``--resume [PATH]`` from the train command's extra arguments (typer cannot say 'optional value').

    Returns None (no --resume), "" (--resume alone) or the path.
    """
    args = list(extra)
    resume: Optional[str] = None
    while args:
        a = args.pop(0)
        if a == "--resume":
            resume = args.pop(0) if args and not args[0].startswith("-") else ""
        elif a.startswith("--resume="):
            resume = a.split("=", 1)[1]
        else:
            raise CsaError(f"unexpected argument {a!r}: see `csa train --help`")
    return resume

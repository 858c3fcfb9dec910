"""Training: the Trainer (networks, optimisers, one step, the loop) and ``csa train``'s entry point.

One iteration, in the release's order (docs/method.md, 'Training recipe'):

1. generator forward (rough, composite, refine), and one VGG16 pass on the ground truth
   and one on the fake, shared by both steps (:meth:`csa.losses.Objective.vgg_features`);
2. discriminator step: Adam on D_img and D_feat with ``0.5 * (L_D img + L_D feat)``;
3. generator step: Adam on the rough and refine nets and the consistency loss's 1x1
   projections, against the just-updated discriminators.

Around it: the run folder and its checkpoints (:mod:`csa.run_folder`), the processes and
the data order (:mod:`csa.distributed`), the logs (:mod:`csa.run_log`), and stopping by
signal (:mod:`csa.signals`).

Mixed precision (``train.amp``, :func:`_amp_dtype`): autocast around the networks, so the
convolutions of the generator, VGG16 and the discriminators run in bf16 (or fp16 on CUDA);
the CSA layer, the feature mask, the smooth hole fill and every loss term turn autocast off
and compute in float32 (see csa.nn.attention, csa.nn.generator, csa.losses). Parameters,
gradients and Adam moments stay float32; only fp16 uses a GradScaler.

Resuming restores weights, optimiser moments, RNG states and the data position (epoch,
batch within the epoch), so on CPU a run of 6 steps equals 3 steps, stop, resume, 3 more,
bit for bit (same world size, batch size and thread count; in float32 and under bf16
autocast alike).

Exit codes: 0 done, 1 non-finite loss (nothing saved after the last good checkpoint),
2 bad input, 130 stopped by SIGINT / SIGTERM after saving a checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from . import run_folder
from .config import Config
from .devices import resolve_device
from .distributed import DistInfo, EpochBatches, agree, init_distributed, parameter_digest
from .errors import EXIT_INTERRUPTED, EXIT_OK, CsaError
from .losses import Objective
from .nn.discriminators import FeatureDiscriminator, PatchDiscriminator
from .nn.generator import CSAGenerator, GeneratorOutput, build_generator, init_weights
from .run_log import RunLog, image_grid
from .signals import StopFlag

# Names that lived here before the run folder, the processes, the logs and the signals got
# their own modules; they stay importable from csa.train.
from .run_folder import (  # noqa: E402,F401  (re-exported)
    CHECKPOINT_DIR, GENERATOR_FILE, LATEST, NETS_FILE, STATE_FILE, STATE_FORMAT, TRAIN_CONFIG_KEY,
    list_checkpoints, read_generator_weights, read_state, resolve_checkpoint, widen_input_channels,
)

PathLike = Union[str, os.PathLike]


# Kept under the name csa.train has always offered; it lives here, above csa.export (which reads
# run folders through csa.run_folder), so that csa.run_folder stays below csa.export.
def export_generator(source: PathLike, output: PathLike, half: bool = False) -> tuple[Path, int, int]:
    """``csa export``: the generator of a run (its latest checkpoint) or of one checkpoint, alone.

    Returns (checkpoint used, parameter count, file size in bytes). ONNX and TorchScript
    exports (and .safetensors sources): :func:`csa.export.export_source`, which this calls.
    """
    from .export import export_source

    report = export_source(resolve_checkpoint(source), output, "safetensors", half=half)
    return report.source, report.parameters, report.size


_OTHER_NETS = ("d_image", "d_feature", "consistency")  # the prefixes in training.safetensors


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


def lr_factor(cfg: Config, epoch: int, step: int) -> float:
    """The learning-rate multiplier of docs/method.md, 'Training recipe' (``lr_unit: epoch``) or its per-step form."""
    t = cfg.train
    if t.lr_schedule == "constant":
        return 1.0
    x = epoch if t.lr_unit == "epoch" else step
    return max(0.0, 1.0 - max(0, x - t.lr_decay_start) / float(t.lr_decay_length))


# --- precision ----------------------------------------------------------------------------


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


# --- the networks -------------------------------------------------------------------------


def _build_generator(config: Config, device: torch.device) -> CSAGenerator:
    """The generator, seeded, or started from ``train.init_from``."""
    generator = build_generator(dataclasses.replace(config.model)).to(device)
    init_from = config.train.init_from
    if init_from:
        try:
            generator.load_state_dict(
                widen_input_channels(read_generator_weights(init_from), generator.state_dict()), strict=True)
        except RuntimeError as exc:
            raise CsaError(f"train.init_from: {init_from} does not fit the config's model section "
                           f"({str(exc)[:300]})") from None
    return generator


def _build_objective(config: Config, device: torch.device, vgg: Optional[nn.Module]) -> Objective:
    loss = config.loss
    if loss.needs_vgg and vgg is None:
        from .weights import load_vgg16_default

        vgg = load_vgg16_default(loss.vgg_weights)
    return Objective(vgg if loss.needs_vgg else None, config.model.tap_channels, loss, d_input=loss.d_input).to(device)


def _build_discriminators(config: Config, device: torch.device) -> tuple[Optional[nn.Module], Optional[nn.Module]]:
    """D_img and D_feat, each None when its loss term is off."""
    dc, loss = config.discriminator, config.loss
    d_image: Optional[nn.Module] = None
    d_feature: Optional[nn.Module] = None
    if loss.gan_image > 0:
        d_image = PatchDiscriminator(ndf=dc.image_ndf)
        init_weights(d_image)
        d_image.to(device)
    if loss.gan_feature > 0:
        d_feature = FeatureDiscriminator(width=dc.feature_width, variant=dc.feature_variant)
        init_weights(d_feature)
        d_feature.to(device)
    return d_image, d_feature


def _build_dataset(config: Config) -> Dataset:
    d = config.data
    if not d.root:
        raise CsaError("no training data: pass --data DIR (or set data.root in the config)")
    from .data import build_dataset

    return build_dataset(
        d.dataset, d.root, config.model.image_size, split=d.split, masks=d.masks,
        seed=config.train.seed, transform=d.transform, crop_scale=tuple(d.crop_scale), flip=d.flip,
        augment_masks=d.augment_masks, polarity=d.mask_polarity, cache=d.cache,
    )


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
        self.device = resolve_device(t.device, setting="train.device=", local_rank=self.dist.gpu_index)
        self.amp_dtype = _amp_dtype(t.amp, self.device)
        if self.amp_dtype == torch.bfloat16 and self.device.type == "cpu" and self.dist.is_main and not cpu_has_fast_bf16():
            _warn_slow_bf16()

        # The order of these draws from the seeded RNG fixes the initial weights: keep it.
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.generator: CSAGenerator = _build_generator(config, self.device)
        self.objective = _build_objective(config, self.device, vgg)
        self.consistency = self.objective.consistency  # holds the trainable 1x1 projections
        self.d_image, self.d_feature = _build_discriminators(config, self.device)
        self._build_optimisers()
        self._wrap_for_ddp()

        self.step = 0  # optimiser steps done
        self.epoch = 0  # current epoch (0-based)
        self.batch_in_epoch = 0  # batches of the current epoch done
        self.last_checkpoint: Optional[Path] = None
        self.stop = StopFlag()
        self._dataset = dataset
        self._visual: Optional[tuple[Tensor, ...]] = None

    def _build_optimisers(self) -> None:
        t = self.config.train
        betas = (t.beta1, t.beta2)
        self.g_params = list(self.generator.parameters()) + list(self.consistency.parameters())
        self.d_params = [p for d in (self.d_image, self.d_feature) if d is not None for p in d.parameters()]
        self.opt_g = torch.optim.Adam(self.g_params, lr=t.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d_params, lr=t.lr, betas=betas) if self.d_params else None
        fp16 = self.amp_dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def _wrap_for_ddp(self) -> None:
        """What the step calls: DDP wrappers when distributed (gradients averaged over ranks)."""
        self.g_run: nn.Module = self.generator
        self.d_image_run, self.d_feature_run = self.d_image, self.d_feature
        if not self.dist.enabled:
            return
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Without the L1 term a detached rough net gets no gradient at all.
        unused = self.config.loss.l1 <= 0
        self.g_run = DDP(self.generator, device_ids=ids, find_unused_parameters=unused)
        if any(True for _ in self.consistency.parameters()) and self.config.loss.consistency > 0:
            self.objective.consistency = DDP(self.consistency, device_ids=ids)
        if self.d_image is not None:
            self.d_image_run = DDP(self.d_image, device_ids=ids)
        if self.d_feature is not None:
            self.d_feature_run = DDP(self.d_feature, device_ids=ids)

    def _other_nets(self) -> list[tuple[str, Optional[nn.Module]]]:
        return [("d_image", self.d_image), ("d_feature", self.d_feature), ("consistency", self.consistency)]

    def _discriminator_names(self) -> list[str]:
        return [n for n, m in (("d_image", self.d_image), ("d_feature", self.d_feature)) if m is not None]

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

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights, for ``state.pt`` (plain containers, tensors and numbers)."""
        return {
            "format": run_folder.STATE_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.dist.world_size,
            "batch_size": self.config.train.batch_size,
            "optimizer_g": self.opt_g.state_dict(),
            "optimizer_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
            "rng": run_folder.rng_state(),
            "config": self.config.to_dict(),
            "nets": self._discriminator_names(),
        }

    def save_checkpoint(self) -> Path:
        """Write RUN_DIR/checkpoints/step_N (see csa.run_folder); returns its path."""
        assert self.run_dir is not None
        final = run_folder.save_checkpoint(self.run_dir, self.config, self.step, self.epoch, self.generator,
                                           run_folder.nets_state(self._other_nets()), self.state_dict)
        self.last_checkpoint = final
        return final

    def load_checkpoint(self, path: PathLike, state: Optional[dict[str, Any]] = None) -> None:
        """Restore weights, optimisers, scalers, RNG and position from a checkpoint folder."""
        ckpt = run_folder.read_checkpoint(path, state)
        run_folder.load_weights(ckpt, self.generator, self._other_nets())
        self._load_optimisers(ckpt.state)
        state = ckpt.state
        run_folder.set_rng_state(state["rng"])
        self.step, self.epoch, self.batch_in_epoch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
        if state.get("world_size") != self.dist.world_size or state.get("batch_size") != self.config.train.batch_size:
            warnings.warn(
                f"resuming with {self.dist.world_size} process(es) x batch {self.config.train.batch_size}, the "
                f"checkpoint was written with {state.get('world_size')} x {state.get('batch_size')}: the data "
                "order from here on differs from an uninterrupted run", stacklevel=2)
        self.last_checkpoint = ckpt.path

    def _load_optimisers(self, state: dict[str, Any]) -> None:
        self.opt_g.load_state_dict(state["optimizer_g"])
        if self.opt_d is not None:
            if state.get("optimizer_d") is not None and list(state.get("nets", [])) == self._discriminator_names():
                self.opt_d.load_state_dict(state["optimizer_d"])
            else:
                warnings.warn("the discriminators differ from the checkpoint's: their optimiser starts fresh",
                              stacklevel=3)
        if state.get("scaler_g"):
            self.scaler_g.load_state_dict(state["scaler_g"])
        if state.get("scaler_d"):
            self.scaler_d.load_state_dict(state["scaler_d"])

    def parameter_digest(self) -> str:
        """sha256 of every trainable tensor (generator, projections, discriminators), in order."""
        return parameter_digest([self.generator, self.consistency, self.d_image, self.d_feature])

    # --- the loop ---------------------------------------------------------------------------

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            self._dataset = _build_dataset(self.config)
        return self._dataset

    @property
    def _writes(self) -> bool:
        """This process writes the run folder (rank 0 of a run that has one)."""
        return self.dist.is_main and self.run_dir is not None

    def _done(self) -> bool:
        t = self.config.train
        if t.max_steps is not None:
            return self.step >= t.max_steps
        return self.epoch >= t.epochs

    def fit(self) -> int:
        """Train until train.max_steps (or train.epochs); returns 0, or 130 when stopped by a signal.

        Raises :class:`NonFiniteLoss` (nothing saved after the last good checkpoint).
        """
        t = self.config.train
        sampler = self._sampler()
        total = t.max_steps if t.max_steps is not None else t.epochs * sampler.batches_per_epoch
        log = RunLog(self.run_dir, self._writes, self.step, total, self.progress)
        self._announce(log, sampler, total)
        with self.stop:
            try:
                code = self._loop(self._batches(sampler), sampler, log)
            finally:
                log.close()
        if self._writes and code == EXIT_OK:
            log.say(f"done: step {self.step}, checkpoint {self.last_checkpoint}")
        return code

    def _sampler(self) -> EpochBatches:
        t = self.config.train
        n = len(self.dataset)
        sampler = EpochBatches(n, t.batch_size, self.dist.rank, self.dist.world_size, t.seed)
        if sampler.batches_per_epoch == 0:
            raise CsaError(f"the dataset has {n} images, fewer than train.batch_size ({t.batch_size}) x "
                           f"{self.dist.world_size} process(es): lower train.batch_size or add images")
        if self.batch_in_epoch >= sampler.batches_per_epoch:  # the epoch got shorter (new batch size)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        return sampler

    def _batches(self, sampler: EpochBatches) -> Iterator[dict[str, Tensor]]:
        """Batches from the current position on, epoch after epoch."""
        dataset, workers = self.dataset, self.config.data.num_workers
        # Persistent workers keep their image cache (data.cache) across epochs; samples depend
        # only on (seed, epoch, index), and set_epoch reaches the workers through shared memory.
        # Its own generator: the loader draws a base seed per epoch, not from the global RNG.
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                            generator=torch.Generator().manual_seed(self.config.train.seed))
        while True:
            sampler.set_position(self.epoch, self.batch_in_epoch)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(self.epoch)
            yield from loader

    def _announce(self, log: RunLog, sampler: EpochBatches, total: int) -> None:
        if not self._writes:
            return
        t = self.config.train
        n_g = sum(p.numel() for p in self.generator.parameters())
        amp = f", amp {str(self.amp_dtype).replace('torch.', '')}" if self.amp_dtype else ""
        resumed = f"; resumed at step {self.step} from {self.last_checkpoint}" if self.step else ""
        log.say(f"csa train: {len(self.dataset)} images, {sampler.batches_per_epoch} steps/epoch x batch "
                f"{t.batch_size} x {self.dist.world_size} process(es), {total} steps in all, "
                f"device {self.device}{amp}, generator {n_g:,} parameters{resumed}")

    def _loop(self, batches: Iterator[dict[str, Tensor]], sampler: EpochBatches, log: RunLog) -> int:
        """Steps until done or stopped, checkpoints when due and at the end; the exit code."""
        last_ckpt_time = time.monotonic()
        saved_at = self.step if self.last_checkpoint is not None else -1
        while not self._done():
            batch = self._next_batch(batches)
            if batch is None:
                break
            if self._step_and_log(batch, sampler, log):  # another process was stopped
                self.stop.signal = self.stop.signal or "stop requested by another process"
                break
            if self._writes and self._checkpoint_due(last_ckpt_time) and not self._done():
                self.save_checkpoint()
                saved_at, last_ckpt_time = self.step, time.monotonic()
        if self._writes and saved_at != self.step:
            log.say(f"saved {self.save_checkpoint()}")
        if not self.stop:
            return EXIT_OK
        log.say(f"stopped by {self.stop.signal} at step {self.step}; resume with "
                f"`csa train --out {self.run_dir} --resume`")
        return EXIT_INTERRUPTED

    def _next_batch(self, batches: Iterator[dict[str, Tensor]]) -> Optional[dict[str, Tensor]]:
        """The next batch, or None when a stop was asked for while it loaded."""
        try:
            batch = next(batches)
        except Exception:
            if self.stop:  # e.g. Ctrl-C reached the loader's workers too
                return None
            raise
        if self.stop and not self.dist.enabled:  # asked to stop while loading: skip the step
            return None
        return batch

    def _step_and_log(self, batch: dict[str, Tensor], sampler: EpochBatches, log: RunLog) -> bool:
        """One step, the position moved on and the logs written; True when any process was asked to stop."""
        t = self.config.train
        lr = self.set_lr()
        want_images = self._writes and t.image_every > 0 and (self.step + 1) % t.image_every == 0
        tick = time.perf_counter()
        terms = self.train_step(batch, keep_images=want_images)
        seconds = time.perf_counter() - tick
        bad = next(((k, v) for k, v in terms.items() if not math.isfinite(v)), None)
        stop, bad_any = agree(self.dist, self.device, bool(self.stop), bad is not None)
        if bad_any:
            name, value = bad if bad is not None else ("(another process)", float("nan"))
            raise NonFiniteLoss(self.step + 1, name, value, self.last_checkpoint)
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= sampler.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        log.step(terms)
        if self._writes and (self.step % t.log_every == 0 or self.step == log.start_step + 1):
            images = t.batch_size * self.dist.world_size
            log.scalars(self.step, {"epoch": self.epoch, "lr": lr, "sec_per_step": seconds,
                                    "images_per_sec": images / max(seconds, 1e-9), **terms})
        if want_images and self._visual is not None:
            log.images(self.step, image_grid(list(zip(*self._visual))))
            self._visual = None
        return stop

    def _checkpoint_due(self, last_ckpt_time: float) -> bool:
        t = self.config.train
        due = t.checkpoint_every > 0 and self.step % t.checkpoint_every == 0
        return due or (t.checkpoint_minutes > 0 and time.monotonic() - last_ckpt_time >= t.checkpoint_minutes * 60)


# --- entry point --------------------------------------------------------------------------


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
        out_path = run_folder.run_folder_of(ckpt)  # continue in the run folder the checkpoint belongs to
    cfg = prepare_config(config_path, data, overrides, state)
    if ckpt is None and list_checkpoints(out_path):
        raise CsaError(f"{out_path} already holds a training run: add --resume to continue it, or choose a new --out")
    if out_path.exists() and not out_path.is_dir():
        raise CsaError(f"--out {out_path} is a file: give a folder")

    info = init_distributed(cfg.train.device)
    try:
        if info.is_main:
            run_folder.prepare_run_folder(out_path, cfg)
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
        run_folder.write_replicas(out, {"step": trainer.step, "world_size": trainer.dist.world_size,
                                        "parameter_sha256": digests})
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {len(digests)} DDP replicas ended with different weights: {digests}")

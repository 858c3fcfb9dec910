"""Configuration as data: dataclasses with defaults, stored next to every checkpoint.

A model's :class:`ModelConfig` travels as JSON in the metadata of its safetensors file,
so one file rebuilds its model.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml

from .errors import CsaError

CsaMode = Literal["official", "stable"]
HoleFill = Literal["release", "smooth"]
CSA_MODES: tuple[str, ...] = typing.get_args(CsaMode)
#: Both U-Nets halve the resolution this many times, so a model's input sides are multiples
#: of SIDE_MULTIPLE (the config's image_size, the generator's inputs, inference's padding).
TOTAL_DOWNSAMPLINGS = 8
SIDE_MULTIPLE = 2**TOTAL_DOWNSAMPLINGS


def check_csa_mode(mode: str, name: str = "CSA mode") -> None:
    """Refuse a CSA mode other than 'official' and 'stable' (``name``: what the message calls it)."""
    if mode not in CSA_MODES:
        raise CsaError(f"{name} must be {' or '.join(map(repr, CSA_MODES))}, got {mode!r}")


@dataclass
class ModelConfig:
    """The two-stage generator. Defaults are the paper's / release's configuration."""

    rough_ngf: int = 64  # rough U-Net base width (release: 64)
    refine_ngf: int = 64  # refine U-Net base width (release: 64)
    csa_mode: CsaMode = "stable"  # 'official' reproduces released checkpoints
    image_size: int = 256  # the size the model was trained at
    detach_rough: bool = True  # release: no gradient from the refine stage into the rough net
    # Not in the paper (off by default, so released checkpoints load as they were):
    hole_fill: HoleFill = "release"  # the rough input's hole: the constant colour, or a smooth fill of the known colours
    mask_channel: bool = False  # both stages also get the hole mask as an input channel

    def __post_init__(self) -> None:
        check_csa_mode(self.csa_mode, "csa_mode")
        if self.hole_fill not in typing.get_args(HoleFill):
            raise CsaError(f"hole_fill must be 'release' or 'smooth', got {self.hole_fill!r}")
        for name in ("rough_ngf", "refine_ngf"):
            if getattr(self, name) < 1:
                raise CsaError(f"{name} must be positive")

    @property
    def tap_channels(self) -> int:
        """Channels of the CSA layer and both consistency taps (512 at the paper's width)."""
        return self.refine_ngf * 8

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return from_dict(cls, data)


def from_dict(cls, data: dict[str, Any]):
    """Build a dataclass from a dict, refusing unknown keys with a clear message."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise CsaError(f"unknown {cls.__name__} keys {sorted(unknown)}; known keys: {sorted(known)}")
    return cls(**data)


# --- training configuration ------------------------------------------------------------------
# Sections of one YAML file: model (ModelConfig above), data, loss, discriminator, train.
# Defaults are the release's recipe (docs/method.md, 'Training recipe'); configs/csa-paper.yaml spells them out.


@dataclass
class DataConfig:
    """Where training images and masks come from (see :func:`csa.data.build_dataset`)."""

    dataset: Literal["folder", "celeba", "places2", "paris"] = "folder"
    root: Optional[str] = None  # the dataset folder; `csa train --data DIR` sets it
    split: str = "train"
    masks: str = "centre"  # a MaskSampler spec: kinds ("centre:120", "freeform"), "a,b" mixes, or a mask folder
    mask_polarity: Literal["white-hole", "black-hole", "auto"] = "white-hole"  # for mask folders
    augment_masks: Optional[bool] = None  # PConv-style augmentation of folder masks; None: on for training
    transform: Optional[Literal["resize", "centre", "crop"]] = None  # None: the dataset's default
    crop_scale: tuple[float, float] = (0.0, 1.0)  # random-crop side range (transform "crop")
    flip: Optional[bool] = None  # random horizontal flip; None: on for training
    cache: bool = False  # keep decoded images in memory (small photo sets only)
    num_workers: int = 0  # DataLoader workers; samples do not depend on it


@dataclass
class LossConfig:
    """The objective (docs/method.md, 'Losses'). A weight of 0 switches its term (and what only it needs) off."""

    l1: float = 100.0  # on both stages: l1 * (L1(refined, gt) + L1(rough, gt))
    l1_hole_weight: float = 1.0  # hole pixels count this many times in both L1 terms (1: the paper)
    consistency: float = 1.0
    gan_image: float = 0.2
    gan_feature: float = 0.2
    perceptual: float = 0.0  # not in the paper: relative VGG feature distance at pool1-3 (0: off)
    style: float = 0.0  # not in the paper: relative Gram-matrix distance at pool1-3, a texture term (0: off)
    grid: float = 0.0  # not in the paper: spectral peaks of a 2/4/8-pixel grid in the fill (0: off)
    peak: float = 0.0  # not in the paper: narrow spectral peaks anywhere in the fill beyond the truth's (0: off)
    d_input: Literal["raw", "composite"] = "raw"  # what D sees as fake; the release: the raw refined output
    vgg_weights: Optional[str] = None  # VGG16 weights file; None: $CSA_VGG16, then ~/.cache/csa/

    @property
    def needs_fake_vgg(self) -> bool:
        return self.gan_feature > 0 or self.perceptual > 0 or self.style > 0

    @property
    def needs_vgg(self) -> bool:
        return self.consistency > 0 or self.needs_fake_vgg


@dataclass
class DiscriminatorConfig:
    """Widths and layout of the two discriminators (docs/method.md, 'Discriminators')."""

    image_ndf: int = 64  # PatchGAN base width
    feature_width: int = 512  # feature patch discriminator width
    feature_variant: Literal["release", "paper"] = "release"  # strides 2,2,2 (release) or 2,1,1 (paper figure)


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoints and logging.

    Length: ``max_steps`` when set (optimiser steps), else ``epochs``. Learning-rate factor
    (``lr_schedule: linear``): ``max(0, 1 - max(0, t - lr_decay_start) / lr_decay_length)``
    with ``t`` the 0-based epoch (``lr_unit: epoch``, the release: constant for 19 epochs,
    0 at epoch 119) or the 0-based step (``lr_unit: step``). The schedule does not depend on
    ``max_steps``, so a run may be extended on resume without changing its past.
    """

    batch_size: int = 1  # per process
    epochs: int = 120
    max_steps: Optional[int] = None
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_schedule: Literal["linear", "constant"] = "linear"
    lr_unit: Literal["epoch", "step"] = "epoch"
    lr_decay_start: int = 18
    lr_decay_length: int = 101
    seed: int = 0  # weight init, data order, crops, flips and masks
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    # Mixed precision (autocast; csa.train). auto: bf16 on a CUDA GPU that has it, else fp16; float32 on
    # CPU. bf16: CUDA or CPU (fast on CPUs with AVX512-BF16 / AMX). fp16: CUDA only. off: float32.
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    threads: int = 0  # torch CPU threads per process; 0: torch's default (OMP_NUM_THREADS)
    log_every: int = 10  # steps between scalar logs (TensorBoard, scalars.jsonl)
    image_every: int = 500  # steps between TensorBoard image grids; 0: never
    checkpoint_every: int = 1000  # steps between checkpoints; 0: only by time and at the end
    checkpoint_minutes: float = 0.0  # wall-clock minutes between checkpoints; 0: off
    keep_checkpoints: int = 3  # newest checkpoints kept in RUN_DIR/checkpoints; 0: keep all
    # Generator weights to start from (a run folder, a checkpoint, or an exported .safetensors):
    # only the generator is copied; discriminators, optimisers and the step start fresh.
    init_from: Optional[str] = None


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig,
             "discriminator": DiscriminatorConfig, "train": TrainConfig}


@dataclass
class Config:
    """A whole training run: one YAML file, saved in the run folder and in every checkpoint."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = dataclasses.field(default_factory=DiscriminatorConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse values no run can use, naming the key."""
        t, lo = self.train, self.loss
        positive = {"train.batch_size": t.batch_size, "train.epochs": t.epochs, "train.lr_decay_length": t.lr_decay_length,
                    "model.image_size": self.model.image_size, "discriminator.image_ndf": self.discriminator.image_ndf,
                    "discriminator.feature_width": self.discriminator.feature_width}
        for key, value in positive.items():
            if value < 1:
                raise CsaError(f"{key} must be at least 1, got {value}")
        if t.max_steps is not None and t.max_steps < 1:
            raise CsaError(f"train.max_steps must be at least 1 (or null to train by epochs), got {t.max_steps}")
        if self.model.image_size % SIDE_MULTIPLE:
            raise CsaError(f"model.image_size must be a multiple of {SIDE_MULTIPLE} (the U-Nets halve it "
                           f"{TOTAL_DOWNSAMPLINGS} times), got {self.model.image_size}")
        if lo.l1_hole_weight <= 0:
            raise CsaError(f"loss.l1_hole_weight must be positive (1: the paper's plain L1), got {lo.l1_hole_weight}")
        for key in ("lr", "beta1", "beta2", "checkpoint_minutes"):
            if getattr(t, key) < 0:
                raise CsaError(f"train.{key} must be >= 0, got {getattr(t, key)}")
        if not (t.beta1 < 1 and t.beta2 < 1):
            raise CsaError("train.beta1 and train.beta2 must be below 1")
        for key in ("lr_decay_start", "seed", "threads", "log_every", "image_every", "checkpoint_every",
                    "keep_checkpoints"):
            if getattr(t, key) < 0:
                raise CsaError(f"train.{key} must be >= 0, got {getattr(t, key)}")
        if t.log_every < 1:
            raise CsaError("train.log_every must be at least 1")
        for key in ("l1", "consistency", "gan_image", "gan_feature", "perceptual", "style", "grid", "peak"):
            if getattr(lo, key) < 0:
                raise CsaError(f"loss.{key} must be >= 0 (0 switches the term off), got {getattr(lo, key)}")
        if self.data.num_workers < 0:
            raise CsaError(f"data.num_workers must be >= 0, got {self.data.num_workers}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"]["crop_scale"] = list(self.data.crop_scale)  # YAML-friendly
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_dict(cls, data: Optional[dict[str, Any]]) -> "Config":
        """Build from nested dicts; missing keys take defaults, unknown keys and bad types raise CsaError."""
        data = data or {}
        if not isinstance(data, dict):
            raise CsaError(f"a config must be a mapping of sections {sorted(_SECTIONS)}, got {type(data).__name__}")
        unknown = set(data) - set(_SECTIONS)
        if unknown:
            raise CsaError(f"unknown config section(s) {sorted(unknown)}; known sections: {sorted(_SECTIONS)}")
        sections = {}
        for name, section_cls in _SECTIONS.items():
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise CsaError(f"config section {name!r} must be a mapping of keys to values")
            unknown_keys = set(values) - {f.name for f in fields(section_cls)}
            if unknown_keys:
                raise CsaError(f"unknown key(s) {sorted(f'{name}.{k}' for k in unknown_keys)}; known keys of "
                               f"{name!r}: {sorted(f.name for f in fields(section_cls))}")
            hints = typing.get_type_hints(section_cls)
            coerced = {k: coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()}
            sections[name] = section_cls(**coerced)
        return cls(**sections)

    @classmethod
    def from_yaml(cls, text: str, source: str = "config") -> "Config":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CsaError(f"{source} is not valid YAML: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Config":
        """Read a YAML config file."""
        path = Path(path)
        if not path.is_file():
            raise CsaError(f"config file not found: {path}")
        return cls.from_yaml(path.read_text(encoding="utf-8"), str(path))

    def with_overrides(self, overrides: Sequence[str]) -> "Config":
        """A copy with ``section.key=value`` overrides applied (values parsed as YAML, then type-checked)."""
        data = self.to_dict()
        for item in overrides:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise CsaError(f"--set expects section.key=value (e.g. train.max_steps=100), got {item!r}")
            section, _, name = key.partition(".")
            if section not in _SECTIONS or not name:
                raise CsaError(f"--set {key}: the key must be section.key with section one of {sorted(_SECTIONS)}")
            known = {f.name for f in fields(_SECTIONS[section])}
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {section}.{close[0]}?)" if close else ""
                raise CsaError(f"--set {key}: unknown key{hint}; known keys of {section!r}: {sorted(known)}")
            data[section][name] = _parse_override(text, typing.get_type_hints(_SECTIONS[section])[name])
        return Config.from_dict(data)


_NULL = ("null", "none", "~", "")


def _is_text(hint: Any) -> bool:
    """True for str, Literal[...] of strings and Optional of either: values kept as typed."""
    if typing.get_origin(hint) is Union:
        return all(_is_text(a) for a in typing.get_args(hint) if a is not type(None))
    return hint is str or typing.get_origin(hint) is Literal


def _parse_override(text: str, hint: Any) -> Any:
    """A --set value: text fields keep the text as typed (YAML would turn 'off' into false)."""
    text = text.strip()
    if text.lower() in _NULL:
        return None
    if _is_text(hint):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check / convert a config value to its field's type, or raise CsaError naming the key."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULL):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads a bare off / on / yes / no as a bool
            words = ("on", "true", "yes") if value else ("off", "false", "no")
            value = next((w for w in words if w in args), value)
        if value not in args:
            raise CsaError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, (list, tuple)) or (not variadic and len(value) != len(args)):
            raise CsaError(f"{key} must be a list of {'values' if variadic else len(args)} values, got {value!r}")
        items = [args[0]] * len(value) if variadic else args
        return tuple(coerce(v, a, key) for v, a in zip(value, items))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise CsaError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise CsaError(f"{key} must be a whole number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise CsaError(f"{key} must be a whole number, got {value!r}") from None
        if not number.is_integer():
            raise CsaError(f"{key} must be a whole number, got {value!r}")
        return int(number)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise CsaError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise CsaError(f"{key} must be a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise CsaError(f"{key} must be a string, got {value!r}")
        return str(value)
    return value

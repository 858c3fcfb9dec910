"""A training run on disk (only rank 0 writes); beside it, :mod:`csa.checkpoints` is the
generator file format that each checkpoint's ``generator.safetensors`` uses::

    RUN_DIR/config.yaml                     the full training config
    RUN_DIR/scalars.jsonl                   one JSON line of scalars every train.log_every steps
    RUN_DIR/tb/                             TensorBoard scalars and image grids
    RUN_DIR/replicas.json                   after a distributed run: every rank's parameter digest
    RUN_DIR/checkpoints/step_00001000/      one checkpoint:
        generator.safetensors               the generator (model config in the metadata; loads
                                            with csa.checkpoints.load_generator)
        training.safetensors                discriminators and consistency projections
        state.pt                            optimisers, AMP scalers, RNG states, step / epoch /
                                            position in the epoch, the config (weights_only=True)
    RUN_DIR/checkpoints/latest              the name of the newest checkpoint

A checkpoint is written into a temporary folder and renamed into place, so a crash or
a second signal never leaves a half-written one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoints import CONFIG_KEY, save_generator, save_tensors
from .config import Config
from .errors import CsaError
from .imageio import atomic_write
from .nn.generator import CSAGenerator

PathLike = Union[str, os.PathLike]
CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
STATE_FILE = "state.pt"
GENERATOR_FILE = "generator.safetensors"
NETS_FILE = "training.safetensors"
CONFIG_FILE = "config.yaml"
SCALARS_FILE = "scalars.jsonl"
TENSORBOARD_DIR = "tb"
REPLICAS_FILE = "replicas.json"
TRAIN_CONFIG_KEY = "csa_train_config"
STATE_FORMAT = "csa-train-state/1"
_CKPT_RE = re.compile(r"^step_(\d{8,})$")


# --- finding checkpoints ----------------------------------------------------------------------


def list_checkpoints(run_dir: PathLike) -> list[Path]:
    """Complete checkpoints of a run folder, oldest step first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CKPT_RE.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_CKPT_RE.match(p.name).group(1)))  # type: ignore[union-attr]


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


def run_folder_of(ckpt: Path) -> Path:
    """The run folder a checkpoint folder belongs to."""
    return ckpt.parent.parent


# --- reading --------------------------------------------------------------------------------


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


@dataclasses.dataclass
class Checkpoint:
    """What one checkpoint folder holds, read into memory (CPU tensors)."""

    path: Path
    generator: dict[str, Tensor]  # the generator's state dict
    nets: dict[str, Tensor]  # "d_image.*", "d_feature.*", "consistency.*"
    state: dict[str, Any]  # state.pt: see Trainer.state_dict

    def nets_of(self, prefix: str) -> dict[str, Tensor]:
        """The state dict of one of the other networks (``d_image``, ``d_feature``, ``consistency``)."""
        return {k[len(prefix) + 1 :]: v for k, v in self.nets.items() if k.startswith(prefix + ".")}


def read_checkpoint(path: PathLike, state: Optional[dict[str, Any]] = None) -> Checkpoint:
    """A checkpoint's files, from a run folder (its latest), a checkpoint folder or a file in one."""
    from safetensors.torch import load_file

    ckpt = resolve_checkpoint(path)
    state = state if state is not None else read_state(ckpt)
    try:
        g_state = load_file(str(ckpt / GENERATOR_FILE))
        nets = load_file(str(ckpt / NETS_FILE))
    except Exception as exc:
        raise CsaError(f"cannot read the weights of checkpoint {ckpt} ({exc})") from None
    return Checkpoint(ckpt, g_state, nets, state)


def load_weights(ckpt: Checkpoint, generator: nn.Module, others: Sequence[tuple[str, Optional[nn.Module]]]) -> None:
    """Load a checkpoint's generator and the other networks (name, module or None when off) in place.

    A discriminator whose loss was off when the checkpoint was written starts fresh (a warning).
    """
    try:
        generator.load_state_dict(ckpt.generator, strict=True)
    except RuntimeError as exc:
        raise CsaError(f"checkpoint {ckpt.path} does not fit the config's model section ({str(exc)[:300]}): "
                       "resume with the run's own config (leave out --config)") from None
    saved_nets = set(ckpt.state.get("nets", []))
    for prefix, module in others:
        if module is None:
            continue
        if prefix != "consistency" and prefix not in saved_nets:
            warnings.warn(f"checkpoint {ckpt.path} has no {prefix} (its loss was off): starting it fresh",
                          stacklevel=3)
            continue
        try:
            module.load_state_dict(ckpt.nets_of(prefix), strict=True)
        except RuntimeError as exc:
            raise CsaError(f"checkpoint {ckpt.path}: {prefix} does not fit the config ({str(exc)[:300]})") from None


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


# --- writing --------------------------------------------------------------------------------


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def prepare_run_folder(out: Path, config: Config) -> None:
    """Create the run folder, drop what a killed save left, and write the run's config."""
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out / CHECKPOINT_DIR).glob(".step_*.*-*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)
    _write_text(out / CONFIG_FILE, config.to_yaml())


def nets_state(others: Sequence[tuple[str, Optional[nn.Module]]]) -> dict[str, Tensor]:
    """training.safetensors' tensors: each network's state dict under its name (modules that are None left out)."""
    tensors: dict[str, Tensor] = {}
    for prefix, module in others:
        if module is not None:
            tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    return tensors


def save_checkpoint(run_dir: Path, config: Config, step: int, epoch: int, generator: CSAGenerator,
                    nets: dict[str, Tensor], state: Callable[[], dict[str, Any]]) -> Path:
    """Write RUN_DIR/checkpoints/step_N (temporary folder, then rename), point ``latest`` at it,
    and keep the newest ``train.keep_checkpoints``; returns its path.

    ``state``: builds the contents of state.pt (called once the weights are written).
    """
    folder = run_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = folder / name
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        meta = {"step": str(step), "epoch": str(epoch)}
        save_generator(generator, tmp / GENERATOR_FILE, extra_metadata=meta)
        save_tensors(nets, tmp / NETS_FILE, {CONFIG_KEY: config.model.to_json(), TRAIN_CONFIG_KEY: config.to_yaml(), **meta})
        torch.save(state(), tmp / STATE_FILE)
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
    _write_text(folder / LATEST, name + "\n")
    keep = config.train.keep_checkpoints
    if keep > 0:
        for old in [p for p in list_checkpoints(run_dir) if p != final][: -(keep - 1) or None]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def write_replicas(out: Path, record: dict[str, Any]) -> None:
    _write_text(out / REPLICAS_FILE, json.dumps(record, indent=1))


def truncate_scalars(run_dir: Path, keep_upto: int) -> None:
    """Drop scalars.jsonl lines of steps after ``keep_upto`` (they belong to steps undone by a resume)."""
    path = run_dir / SCALARS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= keep_upto:
                kept.append(line)
        except (ValueError, AttributeError, TypeError):
            continue  # a line cut by a crash
    _write_text(path, "".join(k + "\n" for k in kept))


# --- RNG state --------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch, numpy, Python (and CUDA) RNG states as plain containers and tensors, for state.pt."""
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


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):  # a different GPU count: keep the current CUDA RNG
            torch.cuda.set_rng_state_all(state["cuda"])


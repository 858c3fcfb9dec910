"""Datasets: image folders, CelebA, Places2, Paris StreetView; train transforms; evaluation pairs.

Training datasets return ``{"image": float32 3 x S x S in [-1, 1], "mask": float32 1 x S x S
(1 = hole), "index": int}``. Every random choice of a sample (crop, flip, mask) comes
from ``numpy.random.SeedSequence([seed, epoch, index])``, so a sample depends only on
those three numbers: not on the worker that loads it, the batch it lands in or what was
drawn before. A resumed run that calls ``dataset.set_epoch(e)`` before iterating epoch
``e`` sees exactly the samples of the first run. The epoch is kept in shared memory, so
``set_epoch`` also reaches the copies held by DataLoader workers (persistent or not).

Images are read with :func:`csa.imageio.read_image` (one pixel limit). A file that cannot
be read is skipped with a :class:`DataWarning` and counted (:attr:`InpaintingDataset.skipped`);
its slot is filled by the next readable file in list order, so the substitute is
deterministic too. A folder with no images, a missing partition or file list, or a
layout that cannot be found is a :class:`~csa.errors.CsaError` that names the path.

Evaluation uses :class:`EvalPairs`: every image centre-cropped to a square and resized
(bicubic) to S x S, each with a fixed mask chosen from a seed.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import CsaError
from .imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_image
from .masks import MaskFolder, MaskSampler, generate_mask, is_kind, resize_mask

PathLike = Union[str, os.PathLike]
TRANSFORM_MODES = ("resize", "centre", "crop")
DATASETS = ("folder", "celeba", "places2", "paris")


class DataWarning(UserWarning):
    """A training or evaluation image was skipped (unreadable, truncated, missing)."""


# --- listing files ----------------------------------------------------------------------------


def list_images(root: PathLike, what: str = "image folder", *, recursive: bool = True,
                allow_empty: bool = False) -> list[Path]:
    """The images under ``root`` (suffix in ``IMAGE_SUFFIXES``, any case; hidden files skipped),
    sorted by relative path; ``recursive`` False: the folder's own files only.

    A missing folder is an error; so is one without images unless ``allow_empty``.
    """
    root = Path(root)
    if not root.exists():
        raise CsaError(f"{what} not found: {root}: check the path")
    if not root.is_dir():
        raise CsaError(f"{what} {root} is not a folder")
    files = sorted(
        (p for p in (root.rglob("*") if recursive else root.iterdir())
         if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files and not allow_empty:
        raise CsaError(f"{what} {root} has no images ({', '.join(IMAGE_SUFFIXES)}): give a folder of photos")
    return files


def _check_listed(files: list[Path], list_file: Path, image_dir: Path) -> None:
    """Look at up to 64 evenly spaced listed files: none there is an error, some missing a warning."""
    if not files:
        raise CsaError(f"{list_file} lists no images for this split: check the file")
    picks = sorted({int(i) for i in np.linspace(0, len(files) - 1, num=min(len(files), 64))})
    missing = [files[i] for i in picks if not files[i].is_file()]
    if len(missing) == len(picks):
        raise CsaError(
            f"none of the images listed in {list_file} are in {image_dir} (e.g. {missing[0]} is missing): "
            "check that the images are extracted there"
        )
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(picks)} sampled images listed in {list_file} are missing "
            f"(e.g. {missing[0]}); missing ones are skipped when read",
            DataWarning,
            stacklevel=3,
        )


def _first_existing(paths: Sequence[Path]) -> Optional[Path]:
    for p in paths:
        if p.exists():
            return p
    return None


def _require_root(root: PathLike, name: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise CsaError(f"{name} root folder not found: {root}: check the path")
    return root


CELEBA_SPLITS = {"train": 0, "val": 1, "valid": 1, "test": 2}


def celeba_files(root: PathLike, split: str = "train") -> list[Path]:
    """CelebA's aligned images of one split, from ``list_eval_partition.txt`` (0 train, 1 val, 2 test).

    Layouts: ``root/img_align_celeba/`` + ``root/list_eval_partition.txt`` (torchvision's), or
    the Drive layout ``root/Img/img_align_celeba/`` + ``root/Eval/list_eval_partition.txt``.
    """
    root = _require_root(root, "CelebA")
    if split not in CELEBA_SPLITS:
        raise CsaError(f"CelebA split must be one of {', '.join(CELEBA_SPLITS)}, got {split!r}")
    candidates = [root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt"]
    part = _first_existing(candidates)
    if part is None:
        raise CsaError(
            f"CelebA partition file not found: looked for {candidates[0]} and {candidates[1]}: "
            "put list_eval_partition.txt from the CelebA release there"
        )
    img_dir = _first_existing([root / "img_align_celeba", root / "Img" / "img_align_celeba"])
    if img_dir is None:
        raise CsaError(f"CelebA image folder not found: expected {root / 'img_align_celeba'}: extract img_align_celeba.zip there")
    if (img_dir / "img_align_celeba").is_dir():  # the zip extracted into a folder of its own name
        img_dir = img_dir / "img_align_celeba"
    want = CELEBA_SPLITS[split]
    files = []
    for lineno, line in enumerate(part.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise CsaError(f"{part} line {lineno}: expected '<file name> <0|1|2>', got {line.strip()!r}")
        if int(fields[1]) == want:
            files.append(img_dir / fields[0])
    _check_listed(files, part, img_dir)
    return files


PLACES_LISTS = {
    "train": "places365_train_standard.txt",
    "train-challenge": "places365_train_challenge.txt",
    "val": "places365_val.txt",
    "test": "places365_test.txt",
}
PLACES_DIRS = {
    "train": ("data_256", "data_256_standard", "data_large", "data_large_standard"),
    "train-challenge": ("data_256", "data_256_challenge", "data_large", "data_large_challenge"),
    "val": ("val_256", "val_large"),
    "test": ("test_256", "test_large"),
}
PLACES_LIST_DIRS = ("", "filelist_places365-standard", "filelist_places365-challenge", "meta")


def places2_files(root: PathLike, split: str = "train", *, list_file: Optional[PathLike] = None,
                  image_dir: Optional[PathLike] = None) -> list[Path]:
    """Places365 images of one split, from the official file lists.

    Lists: ``places365_train_standard.txt`` (``train``), ``places365_train_challenge.txt``
    (``train-challenge``), ``places365_val.txt``, ``places365_test.txt``, in ``root`` or in
    the devkit folder ``root/filelist_places365-standard/``. Images: ``data_256/`` (or
    ``data_large/``) for training, ``val_256/`` / ``val_large/``, ``test_256/`` / ``test_large/``;
    the 256 x 256 versions are preferred when both are there.
    """
    root = _require_root(root, "Places2")
    if split not in PLACES_LISTS:
        raise CsaError(f"Places2 split must be one of {', '.join(PLACES_LISTS)}, got {split!r}")
    if list_file is None:
        candidates = [root / d / PLACES_LISTS[split] for d in PLACES_LIST_DIRS]
        found = _first_existing(candidates)
        if found is None:
            raise CsaError(
                f"Places2 file list {PLACES_LISTS[split]} not found in {root} or "
                f"{root / PLACES_LIST_DIRS[1]}: extract the official devkit (filelist_places365-*.tar) there"
            )
        list_path = found
    else:
        list_path = Path(list_file)
        if not list_path.is_file():
            raise CsaError(f"Places2 file list not found: {list_path}")
    if image_dir is None:
        dirs = [root / d for d in PLACES_DIRS[split]]
        found_dir = _first_existing(dirs)
        if found_dir is None:
            raise CsaError(
                f"Places2 images for split {split!r} not found: expected one of "
                f"{', '.join(str(d) for d in dirs)}"
            )
        img_dir = found_dir
    else:
        img_dir = Path(image_dir)
    files = []
    for line in list_path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if fields:
            files.append(img_dir / fields[0].lstrip("/"))
    _check_listed(files, list_path, img_dir)
    return files


def _find_dir(root: Path, names: Sequence[str], depth: int = 3) -> Optional[Path]:
    """The shallowest folder under ``root`` (root included) named one of ``names``, in ``names`` order."""
    level = [root]
    for _ in range(depth + 1):
        for name in names:
            for d in level:
                if d.name == name:
                    return d
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir())
        if not level:
            break
    return None


def paris_files(root: PathLike, split: str = "train") -> list[Path]:
    """Paris StreetView (Pathak et al.) as distributed: ``paris_train_original/`` (14,900 photos,
    sometimes nested in a folder of the same name) and ``paris_eval/paris_eval_gt/`` (100
    images ``001_im.png`` ...). ``train/`` and ``val/`` (MMEditing's renaming) work too.
    ``split``: ``train``, or ``val`` / ``eval`` / ``test`` (all the eval set).
    """
    root = _require_root(root, "Paris StreetView")
    if split == "train":
        names: tuple[str, ...] = ("paris_train_original", "train")
    elif split in ("val", "eval", "test"):
        names = ("paris_eval_gt", "val", "eval", "test")
    else:
        raise CsaError(f"Paris StreetView split must be train, val, eval or test, got {split!r}")
    folder = _find_dir(root, names)
    if folder is None:
        raise CsaError(
            f"Paris StreetView {split} images not found under {root}: expected a folder named "
            f"{' or '.join(names)}"
        )
    return list_images(folder, f"Paris StreetView {split} folder")


# --- image helpers ------------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB (16-bit greyscale scaled down, alpha dropped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.int64)
        if arr.max(initial=0) > 255:
            arr = arr // 257
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def centre_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred square."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def centre_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre square, then bicubic resize to ``size`` x ``size`` (the evaluation rule)."""
    square = img.crop(centre_square_box(img.width, img.height))
    # crop first: resizing with box= would let the filter reach pixels outside the square
    return square if square.size == (size, size) else square.resize((size, size), Image.BICUBIC)


def read_rgb(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image as 8-bit RGB; every read failure is a CsaError naming the file."""
    try:
        return to_rgb(read_image(path, max_pixels=max_pixels))
    except OSError as exc:  # Pillow raises OSError for some broken headers
        raise CsaError(f"{path} could not be read ({exc}): the file is truncated or corrupt") from None


def to_tensor_image(arr: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 -> float32 3 x H x W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(127.5).sub_(1.0).contiguous()


@dataclass
class TrainTransform:
    """Train-time geometry: the square crop, the resize to ``size`` and a horizontal flip.

    ``mode``: ``"resize"`` squashes the whole image to ``size`` x ``size`` (the release's
    plain resize); ``"centre"`` takes the centred square, then resizes (CelebA's rule);
    ``"crop"`` takes a random square at a random scale: its side is log-uniform between
    ``crop_scale[0]`` and ``crop_scale[1]`` times the shorter side, but never under
    ``size`` pixels (no upsampling unless the image itself is smaller), anywhere in the
    image, then resized (bicubic). ``flip``: mirror left-right with probability 1/2.
    """

    size: int = 256
    mode: str = "crop"
    crop_scale: tuple[float, float] = (0.0, 1.0)
    flip: bool = True

    def __post_init__(self) -> None:
        if self.mode not in TRANSFORM_MODES:
            raise CsaError(f"transform mode must be one of {', '.join(TRANSFORM_MODES)}, got {self.mode!r}")
        lo, hi = self.crop_scale
        if not (0.0 <= lo <= hi <= 1.0):
            raise CsaError(f"crop_scale must satisfy 0 <= low <= high <= 1, got {self.crop_scale}")
        if self.size < 8:
            raise CsaError(f"image size must be at least 8, got {self.size}")

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """PIL image -> uint8 ``size`` x ``size`` x 3."""
        img = to_rgb(img)
        w, h = img.size
        s = self.size
        if self.mode == "resize":
            out = img if (w, h) == (s, s) else img.resize((s, s), Image.BICUBIC)
        elif self.mode == "centre":
            out = centre_crop_resize(img, s)
        else:
            short = min(w, h)
            lo = max(self.crop_scale[0] * short, min(s, short), 1.0)
            hi = max(lo, self.crop_scale[1] * short)
            side = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
            side = max(1, min(side, short))
            x0 = int(rng.integers(0, w - side + 1))
            y0 = int(rng.integers(0, h - side + 1))
            out = img.crop((x0, y0, x0 + side, y0 + side))
            if side != s:
                # reducing_gap: decimate first, then filter; much faster on 5k photos, visually the same
                out = out.resize((s, s), Image.BICUBIC, reducing_gap=3.0)
        arr = np.array(out, dtype=np.uint8)  # a writable copy
        if self.flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        return np.ascontiguousarray(arr)


# --- the training dataset ---------------------------------------------------------------------


class InpaintingDataset(Dataset):
    """Images + per-sample masks, deterministic given (seed, epoch, index).

    ``files``: image paths; ``masks``: a :class:`~csa.masks.MaskSampler` or its spec
    (``"centre,freeform"``, a folder, ...); ``transform``: a :class:`TrainTransform` or a
    mode name. Call :meth:`set_epoch` before each epoch (the trainer does); without it
    every epoch is epoch 0. ``cache=True`` keeps decoded images in memory (per process;
    for small sets such as the photo set only).
    """

    def __init__(
        self,
        files: Sequence[PathLike],
        size: int = 256,
        masks: Union[str, MaskSampler] = "centre,freeform",
        seed: int = 0,
        transform: Union[str, TrainTransform] = "crop",
        *,
        augment_masks: bool = True,
        polarity: str = "white-hole",
        cache: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        root: Optional[PathLike] = None,
    ) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise CsaError(f"no images given{f' under {root}' if root else ''}: check the dataset path")
        if seed < 0:
            raise CsaError(f"seed must be >= 0, got {seed}")
        self.root = Path(root) if root is not None else None
        self.size, self.seed, self.max_pixels = int(size), int(seed), max_pixels
        self.transform = transform if isinstance(transform, TrainTransform) else TrainTransform(self.size, transform)
        if self.transform.size != self.size:
            raise CsaError(f"transform size {self.transform.size} differs from dataset size {self.size}")
        self.masks = masks if isinstance(masks, MaskSampler) else MaskSampler(
            masks, self.size, seed=self.seed, augment=augment_masks, polarity=polarity
        )
        if self.masks.size != self.size:
            raise CsaError(f"mask sampler size {self.masks.size} differs from dataset size {self.size}")
        # Shared memory: set_epoch and the bad-file marks reach DataLoader workers' copies.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._bad = torch.zeros(len(self.files), dtype=torch.uint8).share_memory_()
        self._cache: Optional[dict[int, Image.Image]] = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns (crop, flip and mask change per epoch)."""
        if epoch < 0:
            raise CsaError(f"epoch must be >= 0, got {epoch}")
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    @property
    def skipped(self) -> int:
        """How many files were found unreadable so far (each counted once, across workers)."""
        return int(self._bad.sum().item())

    @property
    def bad_files(self) -> list[Path]:
        return [self.files[i] for i in torch.nonzero(self._bad).flatten().tolist()]

    def _read(self, j: int) -> Image.Image:
        if self._cache is not None and j in self._cache:
            return self._cache[j]
        img = read_rgb(self.files[j], self.max_pixels)
        if self._cache is not None:
            self._cache[j] = img
        return img

    def load_image(self, index: int) -> Image.Image:
        """The RGB image for slot ``index``: file ``index``, or the next readable one if it is bad."""
        n = len(self.files)
        for k in range(n):
            j = (index + k) % n
            if self._bad[j]:
                continue
            try:
                return self._read(j)
            except (CsaError, OSError) as exc:
                self._bad[j] = 1
                msg = exc.message if isinstance(exc, CsaError) else str(exc)
                warnings.warn(f"skipping unreadable training image {self.files[j]}: {msg}", DataWarning, stacklevel=2)
        where = self.root if self.root is not None else self.files[0].parent
        raise CsaError(f"none of the {n} images under {where} could be read: check the files")

    def __getitem__(self, index: int) -> dict:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index = int(index) % n
        img_ss, mask_ss = np.random.SeedSequence([self.seed, self.epoch, index]).spawn(2)
        arr = self.transform(self.load_image(index), np.random.default_rng(img_ss))
        mask = self.masks(np.random.default_rng(mask_ss))
        return {
            "image": to_tensor_image(arr),
            "mask": torch.from_numpy(mask.astype(np.float32)[None]),
            "index": index,
        }


_DEFAULT_MODE = {"folder": "crop", "celeba": "centre", "places2": "resize", "paris": "resize"}


def dataset_files(name: str, root: PathLike, split: str = "train") -> list[Path]:
    """The image list of a dataset by name (``folder`` ignores ``split``)."""
    if name == "folder":
        return list_images(root)
    if name == "celeba":
        return celeba_files(root, split)
    if name in ("places2", "places365"):
        return places2_files(root, split)
    if name == "paris":
        return paris_files(root, split)
    raise CsaError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")


def build_dataset(
    name: str,
    root: PathLike,
    size: int = 256,
    *,
    split: str = "train",
    masks: Union[str, MaskSampler] = "centre,freeform",
    seed: int = 0,
    transform: Optional[str] = None,
    crop_scale: tuple[float, float] = (0.0, 1.0),
    flip: Optional[bool] = None,
    augment_masks: Optional[bool] = None,
    polarity: str = "white-hole",
    cache: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> InpaintingDataset:
    """A training (or validation) dataset by name: ``folder``, ``celeba``, ``places2`` or ``paris``.

    Defaults per dataset: ``folder`` random crops at several scales, ``celeba`` centre
    square (178 x 218 -> 178 x 178) then resize, ``places2`` and ``paris`` plain resize
    (the release's recipe). For ``split="train"`` flips and mask augmentation are on;
    for other splits the default is the centre square, no flip, no mask augmentation.
    """
    if name not in DATASETS and name != "places365":
        raise CsaError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    training = split.startswith("train")
    files = dataset_files(name, root, split)
    mode = transform or (_DEFAULT_MODE["places2" if name == "places365" else name] if training else "centre")
    tf = TrainTransform(size, mode, tuple(crop_scale), training if flip is None else flip)
    return InpaintingDataset(
        files, size, masks, seed, tf,
        augment_masks=training if augment_masks is None else augment_masks,
        polarity=polarity, cache=cache, max_pixels=max_pixels, root=root,
    )


# --- evaluation pairs ---------------------------------------------------------------------------


class EvalPairs:
    """Fixed (name, image, mask) triples for evaluation, identical every run.

    ``images``: a folder (recursive, sorted by relative path), one file, or a list of
    paths; ``limit`` keeps the first N. Each image is centre-cropped to a square and
    resized (bicubic) to ``size`` x ``size``: uint8 H x W x 3. ``masks``: a generator
    kind, then image ``i`` gets ``generate_mask(kind, size, default_rng([seed, i]))``; or a
    mask folder (or :class:`~csa.masks.MaskFolder`): when every image's file stem has a
    mask of the same stem they pair by name, otherwise image ``i`` gets mask
    ``permutation(seed)[i % n_masks]`` (every mask used once before any repeats). Folder
    masks are centre-cropped and resized (nearest). :attr:`pairing` says which rule applied.

    Iterating skips an unreadable image with a :class:`DataWarning` and records it in
    :attr:`skipped`; indexing raises :class:`CsaError` for it.
    """

    def __init__(
        self,
        images: Union[PathLike, Sequence[PathLike]],
        masks: Union[str, MaskFolder] = "centre",
        size: int = 256,
        seed: int = 0,
        limit: Optional[int] = None,
        *,
        polarity: str = "white-hole",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if size < 8:
            raise CsaError(f"image size must be at least 8, got {size}")
        if seed < 0:
            raise CsaError(f"seed must be >= 0, got {seed}")
        self.size, self.seed, self.max_pixels = int(size), int(seed), max_pixels
        if isinstance(images, (str, os.PathLike)):
            path = Path(images)
            if path.is_dir():
                files = list_images(path, "evaluation image folder")
                names = [f.relative_to(path).with_suffix("").as_posix() for f in files]
            elif path.is_file():
                files, names = [path], [path.stem]
            else:
                raise CsaError(f"evaluation images not found: {path}: give a folder or an image file")
        else:
            files = [Path(p) for p in images]
            if not files:
                raise CsaError("the list of evaluation images is empty")
            names = [f.stem for f in files]
        if limit is not None:
            if limit < 1:
                raise CsaError(f"limit must be at least 1, got {limit}")
            files, names = files[:limit], names[:limit]
        # Two files of one stem (a.jpg, a.png) keep their suffix so names stay unique.
        dup = {n for n in names if names.count(n) > 1}
        self.names = [f"{n}{f.suffix}" if n in dup else n for n, f in zip(names, files)]
        self.files = files
        self.skipped: list[tuple[Path, str]] = []

        self.kind: Optional[str] = None
        self.folder: Optional[MaskFolder] = None
        self._mask_index: list[int] = []
        if isinstance(masks, MaskFolder):
            self.folder = masks
        elif isinstance(masks, str) and is_kind(masks):
            self.kind = masks
        elif isinstance(masks, (str, os.PathLike)):
            self.folder = MaskFolder(masks, polarity=polarity, max_pixels=max_pixels)
        else:
            raise CsaError(f"masks must be a mask kind or a mask folder, got {masks!r}")
        if self.kind is not None:
            self.pairing = "generated"
        else:
            assert self.folder is not None
            by_stem: dict[str, int] = {}
            for i, stem in enumerate(self.folder.names):
                by_stem.setdefault(stem, i)
            stems = [f.stem for f in self.files]
            matched = [s in by_stem for s in stems]
            if all(matched):
                self.pairing = "name"
                self._mask_index = [by_stem[s] for s in stems]
            else:
                if any(matched):
                    warnings.warn(
                        f"{sum(matched)} of {len(stems)} images have a mask of the same name in "
                        f"{self.folder.root}; pairing all of them by seed instead",
                        DataWarning,
                        stacklevel=2,
                    )
                self.pairing = "seed"
                perm = np.random.default_rng(self.seed).permutation(len(self.folder))
                self._mask_index = [int(perm[i % len(perm)]) for i in range(len(self.files))]

    def __len__(self) -> int:
        return len(self.files)

    def mask_source(self, index: int) -> str:
        """Where mask ``index`` comes from: a file path, or ``kind seed=[s, i]``."""
        if self.folder is not None:
            return str(self.folder.files[self._mask_index[index]])
        return f"{self.kind} seed=[{self.seed}, {index}]"

    def image(self, index: int) -> np.ndarray:
        img = read_rgb(self.files[index], self.max_pixels)
        return np.asarray(centre_crop_resize(img, self.size), dtype=np.uint8)

    def mask(self, index: int) -> np.ndarray:
        if self.folder is not None:
            return resize_mask(self.folder.read(self._mask_index[index]), self.size)
        assert self.kind is not None
        return generate_mask(self.kind, self.size, np.random.default_rng([self.seed, index]))

    def __getitem__(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        return self.names[index], self.image(index), self.mask(index)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            try:
                yield self[i]
            except CsaError as exc:
                self.skipped.append((self.files[i], exc.message))
                warnings.warn(f"skipping evaluation image {self.files[i]}: {exc.message}", DataWarning, stacklevel=2)

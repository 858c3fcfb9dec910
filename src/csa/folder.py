"""What ``csa inpaint`` runs: one image file, or every image of a folder.

Both check everything the user gave (paths, options, the method) before the model loads,
so a mistake costs no loading time; in folder mode a bad image is reported and the rest
are done.
"""
from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from .data import list_images
from .errors import CsaError
from .imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, output_format
from .inference import FileResult, Inpainter, InpaintWarning
from .inputs import InpaintOptions, load_inputs
from .methods import bundled_model_path, find
from .pipeline import check_strategy

PathLike = Union[str, os.PathLike]


@dataclass
class FolderReport:
    out_dir: Path
    done: list[FileResult] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        total = len(self.done) + len(self.failed)
        line = f"inpainted {len(self.done)} of {total} images into {self.out_dir}"
        return line + (f"; {len(self.failed)} failed (listed above)" if self.failed else "")


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _check_method(method: str, options: InpaintOptions, explain: bool) -> None:
    """The method's checks both modes make before reading anything: its name, --explain, --strategy."""
    entry = find(method)
    if explain and not entry.explains:  # refuse before anything is read or loaded
        from .explain import refuse

        raise refuse(f"the classical method {entry.name!r}", "it has no attention layer")
    if options.strategy is not None:
        check_strategy(options.strategy)


def _check_model_file(method: str, weights: Optional[PathLike]) -> None:
    """No --weights for a method that loads a file: the bundled model must be there (fail fast)."""
    if find(method).loads and weights is None:
        bundled_model_path()


def inpaint_path(
    image: PathLike,
    mask: Optional[PathLike],
    output: PathLike,
    options: Optional[InpaintOptions] = None,
    *,
    weights: Optional[PathLike] = None,
    device: str = "cpu",
    method: str = "csa",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    explain: Optional[PathLike] = None,
) -> FileResult:
    """One image file -> one output file (and with ``explain`` the sources picture and .npz).
    Inputs and the output paths are checked before the model loads."""
    options = options or InpaintOptions()
    output_format(output)
    if explain is not None:
        from .explain import check_map_path

        check_map_path(explain)
    _check_method(method, options, explain is not None)
    _check_model_file(method, weights)
    inputs = load_inputs(image, mask, options, max_pixels=max_pixels)
    inpainter = Inpainter.from_method(method, weights, device=device, max_pixels=max_pixels)
    return inpainter.inpaint_file(inputs, None, output, options, explain=explain)


def _mask_finder(masks: Path) -> Callable[[Path], Path]:
    """One mask file for all images, or a folder matched by file stem (``<stem>.*`` or ``<stem>_mask.*``)."""
    if not masks.is_dir():
        return lambda _image: masks  # a missing or bad file is reported by the reader, per image
    by_stem: dict[str, list[Path]] = {}
    for p in list_images(masks, recursive=False, allow_empty=True):
        by_stem.setdefault(p.stem, []).append(p)

    def find_mask(image: Path) -> Path:
        for stem in (image.stem, f"{image.stem}_mask"):
            found = [p for p in by_stem.get(stem, []) if p.resolve() != image.resolve()]
            if len(found) > 1:
                raise CsaError(f"several masks match {image.name} in {masks}: {', '.join(p.name for p in found)}")
            if found:
                return found[0]
        raise CsaError(f"no mask for {image.name} in {masks}: name it {image.stem}.png (same stem as the image)")

    return find_mask


def _make_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise CsaError(f"cannot create {what} {folder} ({exc.strerror}): create its parent first") from None


def _folder_files(images_dir: Path, masks: Path, out_dir: Path, explain_dir: Optional[Path]) -> list[Path]:
    """The images to do; refuses folders that would overwrite each other, before the model loads."""
    if explain_dir is not None:
        if explain_dir.exists() and not explain_dir.is_dir():
            raise CsaError(f"--explain {explain_dir} is a file: in folder mode it names a folder")
        if explain_dir.resolve() in (out_dir.resolve(), images_dir.resolve()):
            raise CsaError(f"--explain {explain_dir} is the output or the input folder: choose a folder of its own")
    files = list_images(images_dir, recursive=False, allow_empty=True)
    if masks.is_dir() and masks.resolve() == images_dir.resolve():
        files = [p for p in files if not p.stem.endswith("_mask")]
    if not files:
        raise CsaError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    if not masks.exists():
        raise CsaError(f"mask not found: {masks}: give a mask file, or a folder of masks named like the images")
    return files


def inpaint_folder(
    images_dir: PathLike,
    masks: PathLike,
    out_dir: PathLike,
    options: Optional[InpaintOptions] = None,
    *,
    weights: Optional[PathLike] = None,
    device: str = "cpu",
    method: str = "csa",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    log: Callable[[str], None] = _log_stderr,
    explain: Optional[PathLike] = None,
) -> FolderReport:
    """Every image of ``images_dir`` -> ``out_dir/<stem>.png``; bad files are reported, the rest done.

    ``explain``: a folder that receives ``<stem>.png`` (sources picture) and ``<stem>.npz`` per image.
    """
    from tqdm import tqdm

    options = options or InpaintOptions()
    images_dir, masks, out_dir = Path(images_dir), Path(masks), Path(out_dir)
    explain_dir = Path(explain) if explain is not None else None
    _check_method(method, options, explain_dir is not None)
    files = _folder_files(images_dir, masks, out_dir, explain_dir)
    _check_model_file(method, weights)  # before creating the output folder
    if out_dir.exists() and not out_dir.is_dir():
        raise CsaError(f"output {out_dir} is a file: in folder mode -o names a folder")
    if out_dir.resolve() == images_dir.resolve():
        raise CsaError(f"the output folder is the input folder {images_dir}: choose another -o, inputs would be overwritten")
    _make_folder(out_dir, "the output folder")
    if explain_dir is not None:
        _make_folder(explain_dir, "the --explain folder")
    find_mask = _mask_finder(masks)
    inpainter = Inpainter.from_method(method, weights, device=device, max_pixels=max_pixels)

    report = FolderReport(out_dir)
    stems: dict[str, Path] = {}
    bar = tqdm(files, unit="image", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    say = (lambda m: tqdm.write(m, file=sys.stderr)) if progress else log
    for path in bar:
        try:
            if path.stem in stems:
                raise CsaError(f"{stems[path.stem].name} has the same stem: both would be written to {path.stem}.png")
            stems[path.stem] = path
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", InpaintWarning)
                result = inpainter.inpaint_file(path, find_mask(path), out_dir / f"{path.stem}.png", options,
                                                explain=explain_dir / f"{path.stem}.png" if explain_dir else None)
            for w in caught:
                say(f"warning: {path.name}: {w.message}")
            report.done.append(result)
        except CsaError as exc:
            report.failed.append((path, exc.render("cli")))  # folder mode is the command line's
            say(f"error: {path.name}: {exc.render('cli')}")
    bar.close()
    return report

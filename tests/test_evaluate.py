"""The evaluation harness: pairs in, numbers and reports out, the same every run."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from csa import evaluate as ev
from csa import metrics
from csa import weights
from csa.errors import CsaError

# The real cache, before the fixture below hides it (the real-weights test uses it).
REAL_XDG = os.environ.get("XDG_CACHE_HOME")


@pytest.fixture(autouse=True)
def _empty_weights_cache(tmp_path, monkeypatch):
    """No cached LPIPS / Inception files unless a test asks for them: the numbers below are
    those of the classical metrics, and no test pays for Inception passes by accident."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


def _photo(i: int, size: int = 32) -> np.ndarray:
    from skimage import data as skdata

    src = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()][i % 3]
    step = 4 + i // 3
    return np.ascontiguousarray(src[::step, ::step][:size, :size])


def _pairs(n: int = 4, size: int = 32) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for i in range(n):
        mask = np.zeros((size, size), bool)
        side = 6 + 4 * i  # hole ratios 0.035, 0.098, 0.19, 0.32 on 32x32
        mask[4 : 4 + side, 5 : 5 + side] = True
        out.append((f"img{i}", _photo(i, size), mask))
    return out


def grey_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A toy method that also scribbles outside the hole (the harness must undo that)."""
    return np.full_like(image, 128)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_pairs_numbers_and_files(tmp_path):
    pairs = _pairs()
    truth = {name: (img, m) for name, img, m in pairs}
    perfect = lambda image, mask: image.copy()  # noqa: E731 - the method that knows the answer
    summary = ev.evaluate_pairs(pairs, {"telea": ev.resolve_method("telea")[1], "grey": grey_fill, "perfect": perfect},
                                tmp_path / "out", grid=2, progress=False)
    out = tmp_path / "out"
    for name in ["summary.json", "per_image.csv", "results.md", "grid.png", "charts/psnr.png", "charts/l1_hole.png"]:
        assert (out / name).is_file(), name

    rows = _read_csv(out / "per_image.csv")
    assert len(rows) == 4 * 3
    # per-image numbers are the metrics of the composited output
    for r in rows:
        if r["method"] == "grey":
            img, m = truth[r["image"]]
            want = np.where(m[:, :, None], 128, img).astype(np.uint8)
            assert float(r["l1"]) == pytest.approx(metrics.l1(want, img))
            assert float(r["psnr_hole"]) == pytest.approx(metrics.psnr_hole(want, img, m))
            assert float(r["tv"]) == pytest.approx(metrics.tv(want))
        if r["method"] == "perfect":
            assert float(r["l1"]) == 0.0 and float(r["psnr"]) == 100.0
    # buckets from the hole ratio; 'all' first, then PConv's order
    assert summary["buckets"] == ["all", "0.01-0.1", "0.1-0.2", "0.3-0.4"]
    assert {r["bucket"] for r in rows if r["image"] == "img3"} == {"0.3-0.4"}  # 18x18 of 32x32
    res = summary["results"]
    for label in ("telea", "grey"):
        for bucket in summary["buckets"]:
            sel = [r for r in rows if r["method"] == label and (bucket == "all" or r["bucket"] == bucket)]
            assert res[label][bucket]["count"] == len(sel)
            for m in metrics.METRICS:
                assert res[label][bucket][m] == pytest.approx(np.mean([float(r[m]) for r in sel]))
    assert res["telea"]["all"]["psnr_hole"] > res["grey"]["all"]["psnr_hole"]
    assert res["perfect"]["all"]["psnr"] == 100.0
    # the truth's own TV is reported for comparison
    assert summary["ground_truth"]["all"]["tv"] == pytest.approx(np.mean([metrics.tv(p[1]) for p in pairs]))
    # FID / KID / LPIPS skipped with the command that fetches their weights, never reported as a number
    assert set(summary["skipped"]) == {"fid", "kid", "lpips"}
    assert "`csa weights fetch lpips`" in summary["skipped"]["lpips"]
    assert "`csa weights fetch inception`" in summary["skipped"]["fid"] == summary["skipped"]["kid"]
    assert all(k not in b for k in ("fid", "kid", "lpips") for m in res.values() for b in m.values())
    assert summary["metric_files"] == {} and not (out / "features.npz").exists()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(res))
    assert set(on_disk["seconds_per_image"]) == {"telea", "grey", "perfect"}
    assert on_disk["versions"]["numpy"] == np.__version__
    md = (out / "results.md").read_text()
    assert "| all | telea | 4 |" in md and "PSNR hole ↑" in md and "*ground truth*" in md
    grid = Image.open(out / "grid.png")
    assert grid.width > 5 * 32 and grid.height > 2 * 32  # input, 3 methods, truth; 2 rows
    assert grid.height < 3 * 32 + 30


def test_buckets_follow_hole_ratio():
    # 0.035 -> 0.01-0.1 (not "other"): check the bucket of every pair by hand
    from csa.masks import ratio_bucket

    got = [ratio_bucket(m.mean()) for _, _, m in _pairs()]
    assert got == ["0.01-0.1", "0.01-0.1", "0.1-0.2", "0.3-0.4"]


def test_empty_hole_is_left_out_of_hole_means(tmp_path):
    pairs = _pairs(2)
    pairs.append(("empty", _photo(2), np.zeros((32, 32), bool)))
    summary = ev.evaluate_pairs(pairs, ["ns"], tmp_path, grid=0, progress=False)
    allb = summary["results"]["ns"]["all"]
    assert allb["count"] == 3 and allb["count_hole"] == 2
    assert math.isfinite(allb["l1_hole"])
    assert summary["results"]["ns"]["other"]["l1_hole"] is None  # no hole at all: no number
    assert "NaN" not in (tmp_path / "summary.json").read_text()
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_optional_fid_and_lpips_paths(tmp_path):
    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    fid_file = tmp_path / "inception.pt"
    torch.jit.script(Pool()).save(str(fid_file))
    from csa.perceptual import _layers

    torch.manual_seed(0)
    feats, _ = _layers("alex")
    net, lin = tmp_path / "alexnet.pth", tmp_path / "alex.pth"
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, net)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}, lin)

    pairs = [(n, np.ascontiguousarray(np.kron(im, np.ones((2, 2, 1), np.uint8))), np.kron(m, np.ones((2, 2), bool)))
             for n, im, m in _pairs(3)]  # 64x64: AlexNet's stride needs some room
    summary = ev.evaluate_pairs(pairs, ["telea", "ns"], tmp_path / "o", fid_model=fid_file, lpips_net=net,
                                lpips_lin=lin, grid=0, progress=False)
    assert summary["skipped"] == {}
    assert summary["metrics"][-3:] == ["lpips", "fid", "kid"]
    res = summary["results"]["telea"]
    # KID is unbiased, so it can be negative on 3 images of a toy feature extractor
    assert res["all"]["fid"] > 0 and res["all"]["lpips"] > 0 and math.isfinite(res["all"]["kid"])
    assert all("fid" not in res[b] and "kid" not in res[b] for b in summary["buckets"] if b != "all")  # set statistics
    files = summary["metric_files"]
    assert files["inception"]["kind"] == "nvidia" and files["inception"]["sha256"] == weights.sha256_file(fid_file)
    assert files["lpips"]["lin_sha256"] == weights.sha256_file(lin) and "preprocessing" in files["lpips"]
    rows = _read_csv(tmp_path / "o" / "per_image.csv")
    assert all(float(r["lpips"]) > 0 for r in rows)
    with pytest.raises(CsaError, match="both"):
        ev.evaluate_pairs(pairs, ["ns"], tmp_path / "p", lpips_net=net, progress=False)


def test_resolve_method_names_and_errors(tmp_path):
    assert ev.resolve_method("TELEA")[0] == "telea"
    with pytest.raises(CsaError, match="unknown method 'foo'.*patchmatch.*csa"):
        ev.resolve_method("foo")
    with pytest.raises(CsaError, match="weights file not found"):
        ev.resolve_method(str(tmp_path / "missing.safetensors"))
    with pytest.raises(CsaError, match="twice"):
        ev.resolve_methods(["ns", "NS"])
    with pytest.raises(CsaError, match="at least one"):
        ev.resolve_methods([])


def test_csa_and_weights_files_go_through_inpainter(tmp_path, monkeypatch):
    """The wiring to csa.methods' model loader and csa.inference.Inpainter, with a stand-in
    model (the real one is tested there)."""
    import torch

    from csa import methods

    calls = []

    class FakeModel(methods.Method):
        rules = methods.SizeRules(256, any_size=True)

        def __init__(self, path, name):
            self.path, self.name = path, name

        def forward(self, x, hole, where):
            return torch.where(hole > 0.5, torch.full_like(x, 7 / 255), x)

    def fake_load(path=None, device="cpu", name=None):
        calls.append((path, device))
        return FakeModel(path, name or path.stem)

    monkeypatch.setattr(methods.ModelMethod, "load", staticmethod(fake_load))
    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(b"x")
    label, fn = ev.resolve_method("csa", device="cpu")
    assert label == "csa" and calls[-1] == (None, "cpu")
    label, fn = ev.resolve_method(str(weights))
    assert label == "mine" and calls[-1] == (weights, "cpu")
    image, mask = _photo(0), np.zeros((32, 32), bool)
    mask[:4] = True
    out = fn(image, mask)
    assert out.dtype == np.uint8 and out.shape == image.shape and (out[mask] == 7).all()


# --- with csa.data.EvalPairs ------------------------------------------------------------


@pytest.fixture
def photo_dir(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_photo(i, 48)).save(folder / f"p{i}.png")
    return folder


def _numbers(out: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in _read_csv(out / "per_image.csv")]


def test_same_seed_same_pairs_and_numbers(photo_dir, tmp_path):
    from csa.data import EvalPairs

    a = list(EvalPairs(photo_dir, "freeform", size=32, seed=3, limit=None))
    b = list(EvalPairs(photo_dir, "freeform", size=32, seed=3, limit=None))
    assert [n for n, _, _ in a] == [n for n, _, _ in b]
    assert all(np.array_equal(x[1], y[1]) and np.array_equal(x[2], y[2]) for x, y in zip(a, b))

    kw = dict(size=32, seed=3, grid=1, progress=False)
    s1 = ev.evaluate(photo_dir, "freeform", ["telea", "patchmatch"], tmp_path / "r1", **kw)
    s2 = ev.evaluate(photo_dir, "freeform", ["telea", "patchmatch"], tmp_path / "r2", **kw)
    assert s1["results"] == s2["results"]
    assert _numbers(tmp_path / "r1") == _numbers(tmp_path / "r2")
    assert s1["n_images"] == 3
    s3 = ev.evaluate(photo_dir, "freeform", ["telea"], tmp_path / "r3", **{**kw, "seed": 4})
    assert s3["results"]["telea"]["all"] != s1["results"]["telea"]["all"]  # other masks
    assert s1["command"].startswith("csa evaluate --images ")
    assert "--masks freeform --method telea --method patchmatch" in s1["command"]


def test_mask_folder_paired_by_name(photo_dir, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(3):
        m = np.zeros((48, 48), np.uint8)
        m[10 : 20 + 5 * i, 10:30] = 255
        Image.fromarray(m).save(masks / f"p{i}.png")
    summary = ev.evaluate(photo_dir, str(masks), ["ns"], tmp_path / "out", size=48, seed=0, limit=2, progress=False)
    rows = _read_csv(tmp_path / "out" / "per_image.csv")
    assert summary["n_images"] == 2 and len(rows) == 2
    for r in rows:
        i = int(r["image"].removeprefix("p"))  # names are the file stems p0, p1
        assert float(r["hole_ratio"]) == pytest.approx((10 + 5 * i) * 20 / 48**2)
        assert Path(r["mask"]).name == f"p{i}.png"  # the CSV names each image's mask
    assert summary["settings"]["pairing"] == "name"


def test_unreadable_image_is_reported_and_skipped(photo_dir, tmp_path, capsys):
    (photo_dir / "p9.png").write_bytes(b"not a png")
    summary = ev.evaluate(photo_dir, "centre:8", ["telea"], tmp_path / "out", size=32, progress=False, grid=0)
    # one line in the user's terms, not Python's "file.py:123: DataWarning" form
    err = [line for line in capsys.readouterr().err.splitlines() if "p9.png" in line]
    assert len(err) == 1 and err[0].startswith("warning: skipping evaluation image ") and ".py:" not in err[0]
    assert summary["n_images"] == 3
    assert [Path(f).name for f, _ in summary["skipped_images"]] == ["p9.png"]


def test_cli_evaluate(photo_dir, tmp_path, capsys):
    from csa.cli import main

    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--images", str(photo_dir), "--masks", "centre:16", "--method", "telea", "--method", "ns",
              "--out", str(out), "--size", "32", "--seed", "1", "--limit", "2"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    # every image in one bucket: its rows fold into "all" instead of being printed twice
    assert "| all (0.2-0.3) | telea | 2 |" in text and "| 0.2-0.3 |" not in text
    assert "s/image" in text and "skipped fid" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 2 and summary["results"]["ns"]["all"]["count"] == 2
    assert summary["buckets"] == ["all", "0.2-0.3"]  # 16x16 on 32x32: ratio 0.25
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--images", str(photo_dir), "--masks", "centre", "--method", "nope", "--out", str(out)])
    assert exc.value.code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_weights_file_method_with_the_real_inpainter(tiny_weights, tmp_path):
    """A (tiny, random) model file through csa.inference.Inpainter, scored like a baseline."""
    pairs = _pairs(2)[1:]  # one pair: the model's first call (JIT warm-up) is the slow part
    summary = ev.evaluate_pairs(pairs, ["ns", str(tiny_weights)], tmp_path, grid=0, progress=False)
    assert list(summary["results"]) == ["ns", "tiny"]
    assert "torch" in summary["versions"]
    res = summary["results"]["tiny"]["all"]
    assert res["count"] == 1 and 0 < res["l1_hole"] < 1 and math.isfinite(res["psnr_hole"])
    rows = _read_csv(tmp_path / "per_image.csv")
    assert [r["method"] for r in rows] == ["ns", "tiny"]
    # known pixels untouched: the full-image L1 is the hole L1 diluted by the hole ratio
    for r in rows:
        assert float(r["l1"]) == pytest.approx(float(r["l1_hole"]) * float(r["hole_ratio"]), rel=1e-9)


def _real_cache(monkeypatch) -> None:
    """Use the real cache; without the files: skip here, fail in CI (make test fetches them first)."""
    if REAL_XDG is None:
        monkeypatch.delenv("XDG_CACHE_HOME")
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", REAL_XDG)
    from real_weights import require_cached

    for name in ("lpips", "inception"):
        require_cached(name)


def test_real_learned_metrics_by_default(tmp_path, monkeypatch):
    _real_cache(monkeypatch)
    pairs = [(n, np.ascontiguousarray(np.kron(im, np.ones((2, 2, 1), np.uint8))), np.kron(m, np.ones((2, 2), bool)))
             for n, im, m in _pairs(3)]  # 64x64
    features = tmp_path / "features"
    monkeypatch.setattr(ev, "_learned_metrics", _with_feature_dir(ev._learned_metrics, features))
    perfect = lambda image, mask: image.copy()  # noqa: E731
    summary = ev.evaluate_pairs(pairs, {"grey": grey_fill, "perfect": perfect}, tmp_path / "o", grid=0, progress=False)
    assert summary["skipped"] == {} and summary["metrics"][-3:] == ["lpips", "fid", "kid"]
    res = summary["results"]
    # LPIPS per pair, so per bucket; the exact answer scores 0 on all three
    assert res["perfect"]["all"]["lpips"] == 0.0 and res["grey"]["0.1-0.2"]["lpips"] > 0
    assert res["perfect"]["all"]["kid"] == pytest.approx(0.0, abs=1e-12)  # paired sets, same features
    assert res["perfect"]["all"]["fid"] == pytest.approx(0.0, abs=1e-3)  # eigenvalue round-off of a rank-2 covariance
    assert res["grey"]["all"]["fid"] > 1 and res["grey"]["all"]["kid"] > 0
    files = summary["metric_files"]
    assert files["lpips"]["net"] == "alex" and files["lpips"]["tensors_sha256"] == weights.REGISTRY["lpips"].files[
        "lpips_alex.safetensors"][1]
    assert files["inception"]["sha256"] == weights.INCEPTION_SHA256 and files["inception"]["kind"] == "fid-helper"
    assert "x/128 - 1" in files["inception"]["preprocessing"] and files["inception"]["cached_truth_features"] == 0
    names, real, fakes = __import__("csa.perceptual", fromlist=["x"]).load_features(tmp_path / "o" / "features.npz")
    assert names == ["img0", "img1", "img2"] and real.shape == (3, 2048) and set(fakes) == {"grey", "perfect"}
    again = ev.evaluate_pairs(pairs, {"grey": grey_fill}, tmp_path / "o2", grid=0, progress=False, lpips="vgg")
    assert again["metric_files"]["inception"]["cached_truth_features"] == 3  # the truths' features came from the cache
    assert again["results"]["grey"]["all"]["fid"] == pytest.approx(res["grey"]["all"]["fid"], rel=1e-6)
    assert again["metric_files"]["lpips"]["net"] == "vgg"
    off = ev.evaluate_pairs(pairs, ["ns"], tmp_path / "o3", grid=0, progress=False, lpips="off", fid=False)
    assert set(off["skipped"]) == {"lpips", "fid", "kid"} and off["metric_files"] == {}


def _with_feature_dir(real_fn, folder):
    """_learned_metrics with the feature cache in ``folder`` (not the user's cache)."""
    from csa.perceptual import FeatureCache

    def wrapped(*args, **kw):
        lpips_fn, acc, skipped = real_fn(*args, **kw)
        if acc is not None and acc.cache is not None:
            acc.cache = FeatureCache.for_model(acc.inception, folder)
        return lpips_fn, acc, skipped

    return wrapped

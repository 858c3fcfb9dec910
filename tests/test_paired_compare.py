"""tools/paired_compare.py: pair wins and a photo-level bootstrap from per_image.csv."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tool_module import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("paired_compare")


def write_csv(path: Path, rows: list[tuple[str, str, float, float]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "method", "l1_hole", "psnr_hole"])
        w.writerows(rows)
    return path


def test_wins_means_and_a_photo_bootstrap(tool, tmp_path) -> None:
    rows = []
    for photo, gap in (("a", 0.01), ("b", 0.02), ("c", -0.005)):  # the method is better on a, b; worse on c
        for k in range(4):
            rows += [(f"{photo}_c{k}", "m", 0.10 - gap, 20 + 10 * gap), (f"{photo}_c{k}", "x", 0.10, 20.0)]
    scores = tool.read_scores(write_csv(tmp_path / "p.csv", rows), "l1_hole")
    r = tool.compare(scores, "m", "x", "l1_hole", "_c", 500, 0)
    assert (r["pairs"], r["groups"], r["better"]) == (12, 3, 8)
    assert r["mean_diff"] == pytest.approx(-(0.01 + 0.02 - 0.005) / 3)
    # Resampling whole photos: the interval lies between the all-"b" and all-"c" draws.
    assert -0.02 - 1e-9 <= r["ci_low"] < r["mean_diff"] < r["ci_high"] <= 0.005 + 1e-9
    psnr = tool.compare(tool.read_scores(tmp_path / "p.csv", "psnr_hole"), "m", "x", "psnr_hole", "_c", 500, 0)
    assert psnr["better"] == 8  # higher is better for PSNR


def test_bad_inputs_say_what_to_do(tool, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit, match="per_image.csv"):
        tool.main([str(tmp_path / "missing.csv"), "--method", "m", "--against", "x"])
    path = write_csv(tmp_path / "p.csv", [("a_c0", "m", 0.1, 20.0), ("a_c0", "x", 0.1, 20.0)])
    with pytest.raises(SystemExit, match="no image has scores for both"):
        tool.main([str(path), "--method", "m", "--against", "y"])
    with pytest.raises(SystemExit, match="no column 'lpips'"):
        tool.main([str(path), "--method", "m", "--against", "x", "--metric", "lpips"])
    assert tool.main([str(path), "--method", "m", "--against", "x"]) == 0
    assert "| l1_hole | m | x | 1 | 1 |" in capsys.readouterr().out


def test_kid_rows_from_a_runs_features(tool, tmp_path, capsys) -> None:
    import numpy as np

    from csa.perceptual import kid_from_features

    rng = np.random.default_rng(0)
    names = [f"{p}_c{k}" for p in "abcdef" for k in range(3)]
    real = rng.normal(size=(len(names), 8))
    fakes = {"m": real + 0.1 * rng.normal(size=real.shape), "x": real + 1.5 + rng.normal(size=real.shape)}  # x: shifted
    features = tmp_path / "features.npz"
    np.savez(features, names=np.array(names), real=real.astype(np.float32),
             **{f"fake:{k}": v.astype(np.float32) for k, v in fakes.items()})
    r = tool.compare_kid(features, "m", "x", "_c", 200, 0)
    assert (r["images"], r["groups"]) == (18, 6)
    r32 = {k: v.astype(np.float32).astype(np.float64) for k, v in fakes.items()}  # as stored
    assert r["kid_a"] == pytest.approx(kid_from_features(real.astype(np.float32), r32["m"], paired=True), rel=1e-9)
    assert r["ci_low"] <= r["diff"] <= r["ci_high"] < 0  # m is much closer to the truths
    path = write_csv(tmp_path / "p.csv", [(n, lab, 0.1, 20.0) for n in names for lab in ("m", "x")])
    assert tool.main([str(path), "--method", "m", "--against", "x", "--features", str(features), "--draws", "50"]) == 0
    assert "| kid | m | x | 18 | 6 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no features of 'y'"):
        tool.compare_kid(features, "m", "y", "_c", 10, 0)
    with pytest.raises(SystemExit, match="features.npz of a csa evaluate run"):
        tool.compare_kid(tmp_path / "missing.npz", "m", "x", "_c", 10, 0)

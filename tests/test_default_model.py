"""The bundled default model on the bundled sample photo (the demo's input)."""
from __future__ import annotations

import numpy as np
import pytest

from csa.demo import SAMPLE_IMAGE, SAMPLE_MASK, asset_path, run_demo
from csa.imageio import read_image, read_mask
from csa.inference import DEFAULT_WEIGHTS, Inpainter

bundled = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no default model bundled yet")


@pytest.fixture(scope="module")
def sample():
    image = np.asarray(read_image(asset_path(SAMPLE_IMAGE)).convert("RGB")).astype(np.float64)
    hole = read_mask(asset_path(SAMPLE_MASK))
    result = np.asarray(Inpainter.from_pretrained()(read_image(asset_path(SAMPLE_IMAGE)), hole).convert("RGB"))
    return image, hole, result.astype(np.float64)


@bundled
def test_output_is_finite_and_changes_only_the_hole(sample) -> None:
    image, hole, result = sample
    assert np.isfinite(result).all()
    assert np.array_equal(result[~hole], image[~hole])
    assert not np.array_equal(result[hole], image[hole])


@bundled
def test_fill_is_closer_to_the_original_than_the_mean_colour(sample) -> None:
    image, hole, result = sample
    mean_fill = image[~hole].mean(axis=0)  # the known pixels' mean colour
    model_error = np.abs(result[hole] - image[hole]).mean()
    mean_error = np.abs(mean_fill - image[hole]).mean()
    assert model_error < mean_error, (model_error, mean_error)


@bundled
def test_demo_writes_both_pictures(tmp_path) -> None:
    result, sheet = run_demo(tmp_path)
    assert result.is_file() and sheet.is_file()


def _run_cli(args: list[str]) -> int:
    from csa.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code)
    return 0


def test_demo_with_given_weights_writes_the_side_by_side(tmp_path, tiny_weights) -> None:
    out = tmp_path / "demo"
    assert _run_cli(["demo", "-o", str(out), "--weights", str(tiny_weights)]) == 0
    sheet = read_image(out / "demo_side_by_side.png")
    assert sheet.width > 3 * 256 and sheet.height > 256
    assert (out / "demo_result.png").is_file()


@pytest.mark.skipif(DEFAULT_WEIGHTS.is_file(), reason="a default model is bundled")
def test_demo_without_a_bundled_model_says_so_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert _run_cli(["demo", "-o", str(out)]) == 2
    assert "no default model is bundled" in capsys.readouterr().err
    assert not out.exists()

"""The bundled model's output on the bundled sample stays what was recorded for its weights.

Refactors must not change what the shipped model paints. Known pixels must be equal; in the
hole at least 99.9% of the values must be identical and the rest within one level (another
CPU's kernels may round a few values the other way). New weights: re-record with
`python tests/bundled_output.py` in the same commit.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from bundled_output import OUTPUT, RECORD, bundled_result, weights_sha256
from csa.demo import SAMPLE_MASK, asset_path
from csa.imageio import read_image, read_mask
from csa.inference import DEFAULT_WEIGHTS

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="no default model bundled yet")


def test_the_record_belongs_to_the_bundled_weights() -> None:
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    assert recorded["sha256"] == weights_sha256(DEFAULT_WEIGHTS), (
        "src/csa/assets/default.safetensors changed: re-record with `python tests/bundled_output.py`")


def test_bundled_output_is_unchanged() -> None:
    expected = np.asarray(read_image(OUTPUT).convert("RGB")).astype(np.int16)
    result = bundled_result().astype(np.int16)
    hole = read_mask(asset_path(SAMPLE_MASK))
    assert result.shape == expected.shape
    assert np.array_equal(result[~hole], expected[~hole])
    diff = np.abs(result[hole] - expected[hole])
    assert diff.max() <= 1, f"a hole value moved by {diff.max()} levels"
    assert (diff == 0).mean() >= 0.999, f"only {(diff == 0).mean():.4%} of hole values identical"

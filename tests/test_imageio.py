"""The one image reader, the one mask rule, atomic writes."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from csa.errors import CsaError
from csa.imageio import atomic_write, mask_from_array, read_image, read_mask, save_image


def test_mask_rule_max_over_channels_ge_128(tmp_path) -> None:
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = (0, 0, 128)  # one channel at 128 is enough
    arr[0, 1] = (127, 127, 127)
    Image.fromarray(arr).save(tmp_path / "m.png")
    hole = read_mask(tmp_path / "m.png")
    assert hole.tolist() == [[True, False, False], [False, False, False]]
    assert read_mask(tmp_path / "m.png", invert=True).tolist() == [[False, True, True], [True, True, True]]


def test_mask_arrays_bool_01_and_255() -> None:
    for arr in (np.array([[True, False]]), np.array([[1, 0]]), np.array([[255, 0]], np.uint8), np.array([[1.0, 0.0]])):
        assert mask_from_array(arr).tolist() == [[True, False]]


def test_a_broken_png_is_a_clear_error(tmp_path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), "red").save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CsaError, match="corrupt"):
        read_image(broken)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(CsaError):
        read_image(garbage)


def test_pixel_limit_is_checked_before_decoding(tmp_path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000)).save(path)
    with pytest.raises(CsaError, match="over the limit"):
        read_image(path, max_pixels=1_000_000)


def test_atomic_write_leaves_nothing_on_failure_and_normal_mode(tmp_path) -> None:
    def boom(tmp: str) -> None:
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.png", boom)
    assert list(tmp_path.iterdir()) == []
    save_image(Image.new("RGB", (4, 4)), tmp_path / "ok.png")
    mode = stat.S_IMODE(os.stat(tmp_path / "ok.png").st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # not mkstemp's private 0600


def test_missing_output_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(CsaError, match="does not exist"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "nope" / "out.png")

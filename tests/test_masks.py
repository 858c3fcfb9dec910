"""Mask generators, mask folders, augmentation, the sampler and the `csa masks` commands."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from csa.errors import CsaError
from csa.masks import (
    BUCKET_NAMES,
    KINDS,
    RATIO_BUCKETS,
    MaskFolder,
    MaskSampler,
    augment_mask,
    folder_stats,
    generate_mask,
    has_known_feature,
    hole_ratio,
    ratio_bucket,
    write_mask_folder,
)

RANDOM_KINDS = [k for k in KINDS if k != "centre"]


def run_cli(args, capsys):
    from csa.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def save_mask(path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


# --- buckets --------------------------------------------------------------------------------


def test_ratio_buckets_are_pconv_intervals():
    assert [b[2] for b in RATIO_BUCKETS] == ["0.01-0.1", "0.1-0.2", "0.2-0.3", "0.3-0.4", "0.4-0.5", "0.5-0.6"]
    assert BUCKET_NAMES[-1] == "other"
    cases = {0.0: "other", 0.01: "other", 0.0101: "0.01-0.1", 0.1: "0.01-0.1", 0.1001: "0.1-0.2",
             0.35: "0.3-0.4", 0.6: "0.5-0.6", 0.6001: "other", 1.0: "other"}
    for ratio, name in cases.items():
        assert ratio_bucket(ratio) == name, ratio


# --- generators -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS) + ["freeform+rect", "centre:120", "rect:40"])
def test_generators_are_deterministic(kind):
    a = generate_mask(kind, 128, 7)
    b = generate_mask(kind, 128, 7)
    c = generate_mask(kind, 128, np.random.default_rng(7))
    assert a.dtype == bool and a.shape == (128, 128)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert a.any()


@pytest.mark.parametrize("kind", RANDOM_KINDS)
def test_random_generators_vary_with_seed(kind):
    masks = [generate_mask(kind, 64, s) for s in range(6)]
    assert len({m.tobytes() for m in masks}) > 1


def test_non_square_size():
    for kind in KINDS:
        m = generate_mask(kind, (96, 160), 3)
        assert m.shape == (96, 160)


def test_centre_is_half_the_side_and_centred():
    m = generate_mask("centre", 256, 0)
    assert m[64:192, 64:192].all() and m.sum() == 128 * 128
    assert hole_ratio(m) == 0.25
    assert generate_mask("center", 256, 1).sum() == 128 * 128  # alias, no randomness
    m120 = generate_mask("centre:120", 256, 0)
    assert m120.sum() == 120 * 120 and m120[68:188, 68:188].all()
    with pytest.raises(CsaError, match="does not fit"):
        generate_mask("centre:300", 256, 0)


def test_rect_ranges():
    for s in range(200):
        m = generate_mask("rect", 256, s)
        ys, xs = np.nonzero(m)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert m.sum() == h * w  # one solid rectangle
        assert 64 <= h <= 128 and 64 <= w <= 128
        assert 1 / 16 <= hole_ratio(m) <= 1 / 4
    assert generate_mask("rect:40", 256, 3).sum() == 1600


# Documented hole-ratio ranges at 256 (the generators' docstrings), with a little slack.
DOCUMENTED = {
    "freeform": (0.005, 0.55),
    "lama-thin": (0.02, 0.55),
    "lama-medium": (0.002, 0.6),
    "lama-thick": (0.004, 0.97),
}


@pytest.mark.parametrize("kind", list(DOCUMENTED))
def test_stroke_generators_stay_in_documented_ratio_range(kind):
    lo, hi = DOCUMENTED[kind]
    ratios = np.array([hole_ratio(generate_mask(kind, 256, s)) for s in range(150)])
    assert ratios.min() >= lo and ratios.max() <= hi, (ratios.min(), ratios.max())


def test_lama_thickness_order():
    # thin strokes cover less per stroke than thick ones: compare boundary-to-area ratios
    def edge_density(kind):
        vals = []
        for s in range(40):
            m = generate_mask(kind, 256, s)
            edges = (m[1:, :] != m[:-1, :]).sum() + (m[:, 1:] != m[:, :-1]).sum()
            vals.append(edges / max(1, m.sum()))
        return np.mean(vals)

    assert edge_density("lama-thin") > edge_density("lama-medium") > edge_density("lama-thick")


def test_freeform_scales_with_size():
    r256 = np.mean([hole_ratio(generate_mask("freeform", 256, s)) for s in range(60)])
    r512 = np.mean([hole_ratio(generate_mask("freeform", 512, s)) for s in range(60)])
    assert abs(r256 - r512) < 0.03


def test_union_draws_parts_in_order_from_one_generator():
    g = np.random.default_rng(5)
    expected = generate_mask("freeform", 128, g) | generate_mask("rect", 128, g)
    assert np.array_equal(generate_mask("freeform+rect", 128, 5), expected)


@pytest.mark.parametrize("bad", ["blob", "freeform:3", "centre:x", "centre:0", "", "freeform+"])
def test_bad_kinds_are_clear_errors(bad):
    with pytest.raises(CsaError) as exc:
        generate_mask(bad, 64, 0)
    assert exc.value.message


def test_bad_size_and_seed():
    with pytest.raises(CsaError):
        generate_mask("freeform", 4, 0)
    with pytest.raises(CsaError):
        generate_mask("freeform", 64, -1)


# --- mask folders ---------------------------------------------------------------------------


@pytest.fixture
def mask_dir(tmp_path):
    d = tmp_path / "masks"
    (d / "sub").mkdir(parents=True)
    for i in range(4):
        save_mask(d / f"{i:05d}.png", generate_mask("rect", 64, i))
    save_mask(d / "sub" / "00004.png", generate_mask("centre", 64, 0))
    (d / "notes.txt").write_text("not a mask")
    return d


def test_mask_folder_reads_white_as_hole(mask_dir):
    folder = MaskFolder(mask_dir)
    assert len(folder) == 5 and folder.polarity == "white-hole"
    assert folder.names == ["00000", "00001", "00002", "00003", "00004"]
    assert np.array_equal(folder.read(0), generate_mask("rect", 64, 0))
    assert np.array_equal(MaskFolder(mask_dir, "black-hole").read(0), ~generate_mask("rect", 64, 0))
    assert folder.load(4, 32).shape == (32, 32) and folder.load(4, 32)[8:24, 8:24].all()


def test_polarity_auto_detects_black_holes(tmp_path, mask_dir):
    inv = tmp_path / "inverted"
    inv.mkdir()
    for i in range(4):
        save_mask(inv / f"{i}.png", ~generate_mask("rect", 64, i))
    auto = MaskFolder(inv, "auto")
    assert auto.polarity == "black-hole" and auto.white_fraction > 0.5
    assert np.array_equal(auto.read(0), generate_mask("rect", 64, 0))
    assert MaskFolder(mask_dir, "auto").polarity == "white-hole"
    # without "auto" nothing is guessed
    assert MaskFolder(inv).polarity == "white-hole"


def test_mask_folder_errors_name_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(CsaError, match="empty"):
        MaskFolder(empty)
    with pytest.raises(CsaError, match="nowhere"):
        MaskFolder(tmp_path / "nowhere")
    with pytest.raises(CsaError, match="polarity"):
        MaskFolder(tmp_path, "sideways")


# --- augmentation and sampler ------------------------------------------------------------------


def test_augment_mask_is_deterministic_and_sized():
    raw = generate_mask("freeform", 512, 1)
    a = augment_mask(raw, 256, np.random.default_rng(3))
    b = augment_mask(raw, 256, np.random.default_rng(3))
    c = augment_mask(raw, 256, np.random.default_rng(4))
    assert a.shape == (256, 256) and a.dtype == bool
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    plain = np.asarray(Image.fromarray(raw.astype(np.uint8) * 255).resize((256, 256), Image.NEAREST)) >= 128
    assert not np.array_equal(a, plain)


def test_sampler_deterministic_and_mixes_kinds():
    sampler = MaskSampler("centre,freeform", 64, seed=1)
    assert np.array_equal(sampler(5), MaskSampler("centre,freeform", 64, seed=1)(5))
    centre = generate_mask("centre", 64, 0)
    kinds = [np.array_equal(sampler(i), centre) for i in range(40)]
    assert 5 < sum(kinds) < 35  # both kinds drawn, about half each
    g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
    assert np.array_equal(sampler(g1), sampler(g2))


def test_sampler_redraws_masks_without_known_feature(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_mask(d / "full.png", np.ones((64, 64), bool))
    save_mask(d / "good.png", generate_mask("centre", 64, 0))
    assert not has_known_feature(np.ones((64, 64), bool))
    sampler = MaskSampler(str(d), 64, seed=0)
    for i in range(20):
        m = sampler(i)
        assert has_known_feature(m) and np.array_equal(m, generate_mask("centre", 64, 0))
    assert sampler.resampled > 0
    with pytest.raises(CsaError, match="no usable mask"):
        MaskSampler("centre:64", 64, max_tries=5)(0)


def test_sampler_skips_unreadable_folder_masks(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    save_mask(d / "a.png", generate_mask("centre", 64, 0))
    (d / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    sampler = MaskSampler(str(d), 64, seed=0, augment=True)
    with pytest.warns(UserWarning, match="b.png"):
        masks = [sampler(i) for i in range(12)]
    assert all(m.any() for m in masks) and sampler.skipped > 0


def test_sampler_spec_errors(tmp_path):
    with pytest.raises(CsaError, match="unknown mask kind"):
        MaskSampler("centre,blob", 64)
    with pytest.raises(CsaError, match="not found"):
        MaskSampler(str(tmp_path / "missing" / "masks"), 64)


# --- writing folders and the CLI --------------------------------------------------------------


def test_write_mask_folder_is_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_mask_folder(a, "freeform", 12, 64, seed=3)
    write_mask_folder(b, "freeform", 12, 64, seed=3)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "manifest.csv" in files and "00011.png" in files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    lines = (a / "manifest.csv").read_text().splitlines()
    assert lines[0] == "file,hole_ratio,bucket" and len(lines) == 13
    name, ratio, bucket = lines[1].split(",")
    m = MaskFolder(a).read(0)
    assert name == "00000.png" and abs(float(ratio) - hole_ratio(m)) < 1e-6 and bucket == ratio_bucket(hole_ratio(m))
    # mask i can be rebuilt alone from (seed, i)
    assert np.array_equal(m, generate_mask("freeform", 64, np.random.default_rng([3, 0])))
    with pytest.raises(CsaError, match="not empty"):
        write_mask_folder(a, "freeform", 2, 64)


def test_cli_generate_and_stats(tmp_path, capsys):
    out = tmp_path / "ff"
    code, text, _ = run_cli(["masks", "generate", "--kind", "freeform", "--count", "30", "--size", "64",
                             "--seed", "2", str(out)], capsys)
    assert code == 0 and "wrote 30 masks" in text
    code, text, _ = run_cli(["masks", "stats", str(out)], capsys)
    assert code == 0
    rows = {line.split()[0]: int(line.split()[1]) for line in text.splitlines() if line.split() and line.split()[0] in BUCKET_NAMES}
    assert set(rows) == set(BUCKET_NAMES) and sum(rows.values()) == 30
    expected = folder_stats(out)
    assert rows == expected.counts


def test_cli_bad_input_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["masks", "stats", str(empty)], capsys)
    assert code == 2 and str(empty) in err
    code, _, err = run_cli(["masks", "generate", "--kind", "blob", "--count", "2", str(tmp_path / "x")], capsys)
    assert code == 2 and "unknown mask kind" in err
    code, _, err = run_cli(["masks", "stats", str(tmp_path / "missing")], capsys)
    assert code == 2 and "missing" in err


def test_cli_stats_reports_bad_files_and_auto_polarity(tmp_path, capsys):
    d = tmp_path / "inv"
    d.mkdir()
    for i in range(3):
        save_mask(d / f"{i}.png", ~generate_mask("centre", 64, 0))  # black = hole, ratio 0.25
    code, text, _ = run_cli(["masks", "stats", "--polarity", "auto", str(d)], capsys)
    assert code == 0 and "black-hole" in text
    assert any(line.split()[:2] == ["0.2-0.3", "3"] for line in text.splitlines())
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, text, _ = run_cli(["masks", "stats", "--polarity", "auto", str(d)], capsys)
    assert code == 2 and "unreadable: 1" in text and "total            3" in text

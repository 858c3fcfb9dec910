"""Datasets on small fake trees with each dataset's real layout, transforms, evaluation pairs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from csa.data import (
    DataWarning,
    EvalPairs,
    TrainTransform,
    build_dataset,
    celeba_files,
    list_images,
    paris_files,
    places2_files,
)
from csa.errors import CsaError
from csa.masks import generate_mask, has_known_feature


def photo(path, w=48, h=40, seed=0, fmt=None):
    """A small random-colour image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def bands(path, w, h, outer, inner, axis):
    """An image whose outer bands (the part a centre square crop removes) have another colour."""
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = outer
    if axis == 0:  # tall: bands at top and bottom
        top = (h - w) // 2
        arr[top : top + w] = inner
    else:
        left = (w - h) // 2
        arr[:, left : left + h] = inner
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    photo(root / "a.jpg", seed=1)
    photo(root / "b.PNG", seed=2)
    photo(root / "sub" / "c.webp", seed=3, fmt="WEBP")
    photo(root / "sub" / "deeper" / "d.bmp", seed=4)
    (root / "notes.txt").write_text("ignored")
    return root


# --- folders ----------------------------------------------------------------------------------


def test_list_images_recursive_sorted(folder):
    names = [p.relative_to(folder).as_posix() for p in list_images(folder)]
    assert names == ["a.jpg", "b.PNG", "sub/c.webp", "sub/deeper/d.bmp"]


def test_empty_or_missing_folder_is_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.txt").write_text("no images")
    with pytest.raises(CsaError, match=str(empty)):
        build_dataset("folder", empty, 32)
    with pytest.raises(CsaError, match="not found"):
        list_images(tmp_path / "nope")
    with pytest.raises(CsaError, match="unknown dataset"):
        build_dataset("imagenet", empty, 32)


def test_folder_dataset_items(folder):
    ds = build_dataset("folder", folder, 32, masks="centre,freeform", seed=3)
    assert len(ds) == 4
    item = ds[1]
    assert set(item) == {"image", "mask", "index"} and item["index"] == 1
    img, mask = item["image"], item["mask"]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert mask.shape == (1, 32, 32) and mask.dtype == torch.float32
    assert -1.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.1
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.sum() > 0


def test_samples_depend_only_on_seed_epoch_index(folder):
    a = build_dataset("folder", folder, 32, seed=5)
    b = build_dataset("folder", folder, 32, seed=5)
    first = [a[i] for i in range(4)]
    for i in reversed(range(4)):  # order does not matter
        assert torch.equal(b[i]["image"], first[i]["image"]) and torch.equal(b[i]["mask"], first[i]["mask"])
    a.set_epoch(1)
    assert a.epoch == 1
    changed = [not torch.equal(a[i]["image"], first[i]["image"]) or not torch.equal(a[i]["mask"], first[i]["mask"])
               for i in range(4)]
    assert any(changed)
    a.set_epoch(0)
    assert torch.equal(a[2]["image"], first[2]["image"])
    other_seed = build_dataset("folder", folder, 32, seed=6)
    assert any(not torch.equal(other_seed[i]["mask"], first[i]["mask"]) for i in range(4))


def test_set_epoch_reaches_persistent_workers(folder):
    ds = build_dataset("folder", folder, 32, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, persistent_workers=True)
    batch0 = next(iter(loader))
    ds.set_epoch(3)
    batch3 = next(iter(loader))
    assert torch.equal(batch0["image"][2], build_dataset("folder", folder, 32, seed=1)[2]["image"])
    ref = build_dataset("folder", folder, 32, seed=1)
    ref.set_epoch(3)
    assert torch.equal(batch3["image"][2], ref[2]["image"]) and torch.equal(batch3["mask"][0], ref[0]["mask"])


def test_bad_images_are_skipped_with_warning_and_counted(folder):
    good = (folder / "a.jpg").read_bytes()
    (folder / "aa_truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "ab_garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "ac_empty.jpg").write_bytes(b"")
    ds = build_dataset("folder", folder, 32, seed=0)
    assert len(ds) == 7
    with pytest.warns(DataWarning) as record:
        items = [ds[i] for i in range(len(ds))]
    assert ds.skipped == 3
    assert {p.name for p in ds.bad_files} == {"aa_truncated.jpg", "ab_garbage.png", "ac_empty.jpg"}
    assert any("aa_truncated.jpg" in str(w.message) for w in record)
    assert all(it["image"].shape == (3, 32, 32) for it in items)
    # a bad slot is filled by the next readable file, deterministically
    idx = [p.name for p in ds.files].index("aa_truncated.jpg")
    assert np.array_equal(np.asarray(ds.load_image(idx)), np.asarray(Image.open(folder / "b.PNG").convert("RGB")))


def test_all_unreadable_is_an_error(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "x.jpg").write_bytes(b"nope")
    ds = build_dataset("folder", root, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(CsaError, match="could be read"):
            ds[0]


def test_masks_without_known_feature_are_resampled(tmp_path, folder):
    mdir = tmp_path / "masks"
    mdir.mkdir()
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(mdir / "full.png")
    Image.fromarray(generate_mask("freeform", 64, 1).astype(np.uint8) * 255).save(mdir / "ok.png")
    ds = build_dataset("folder", folder, 32, masks=str(mdir), seed=0)
    for e in range(3):
        ds.set_epoch(e)
        for i in range(len(ds)):
            m = ds[i]["mask"][0].numpy() > 0.5
            assert m.any() and has_known_feature(m)
    assert ds.masks.resampled > 0


# --- transforms ---------------------------------------------------------------------------------


def test_crop_transform_scales_and_flip():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))
    tf = TrainTransform(32, "crop", flip=False)
    outs = [tf(img, np.random.default_rng(s)) for s in range(10)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(tf(img, np.random.default_rng(4)), outs[4])
    assert len({o.tobytes() for o in outs}) == 10
    square = Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8))
    whole = TrainTransform(32, "crop", crop_scale=(1.0, 1.0), flip=False)(square, np.random.default_rng(1))
    assert np.array_equal(whole, np.asarray(square.resize((32, 32), Image.BICUBIC)))
    flips = TrainTransform(32, "resize", flip=True)
    base = np.asarray(img.resize((32, 32), Image.BICUBIC))
    results = [flips(img, np.random.default_rng(s)) for s in range(16)]
    mirrored = sum(np.array_equal(r, base[:, ::-1]) for r in results)
    plain = sum(np.array_equal(r, base) for r in results)
    assert mirrored > 0 and plain > 0 and mirrored + plain == 16
    with pytest.raises(CsaError):
        TrainTransform(32, "zoom")


# --- CelebA -------------------------------------------------------------------------------------


def make_celeba(root, drive_layout=False):
    img_dir = root / ("Img/img_align_celeba" if drive_layout else "img_align_celeba")
    part_dir = root / ("Eval" if drive_layout else "")
    parts = [0, 0, 0, 1, 1, 2]
    lines = []
    for i, p in enumerate(parts, 1):
        name = f"{i:06d}.jpg"
        bands(img_dir / name, 178, 218, outer=(255, 0, 0), inner=(0, 0, 255), axis=0)
        lines.append(f"{name} {p}")
    part_dir.mkdir(parents=True, exist_ok=True)
    (part_dir / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("drive_layout", [False, True])
def test_celeba_partitions(tmp_path, drive_layout):
    make_celeba(tmp_path, drive_layout)
    assert [p.name for p in celeba_files(tmp_path, "train")] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert [p.name for p in celeba_files(tmp_path, "val")] == ["000004.jpg", "000005.jpg"]
    assert [p.name for p in celeba_files(tmp_path, "test")] == ["000006.jpg"]


def test_celeba_centre_square_before_resize(tmp_path):
    make_celeba(tmp_path)
    ds = build_dataset("celeba", tmp_path, 32, split="train", masks="centre")
    rgb = (ds[0]["image"] + 1) * 127.5
    # the red bands (20 rows at top and bottom) are cut off; JPEG leaves a little red bleed
    assert rgb[0].max() < 60 and rgb[2].min() > 180


def test_celeba_missing_partition_file(tmp_path):
    make_celeba(tmp_path)
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(CsaError, match="list_eval_partition.txt"):
        build_dataset("celeba", tmp_path, 32)
    with pytest.raises(CsaError, match="CelebA root"):
        celeba_files(tmp_path / "none")


# --- Places2 ------------------------------------------------------------------------------------


def make_places(root):
    lists = root / "filelist_places365-standard"
    lists.mkdir(parents=True)
    train = ["/a/airfield/00000001.jpg 0", "/a/airfield/00000002.jpg 0", "/b/bakery/shop/00000001.jpg 32"]
    for line in train:
        photo(root / "data_256" / line.split()[0].lstrip("/"), 64, 64)
    (lists / "places365_train_standard.txt").write_text("\n".join(train) + "\n")
    val = ["Places365_val_00000001.jpg 165", "Places365_val_00000002.jpg 358"]
    for line in val:
        photo(root / "val_256" / line.split()[0], 64, 64)
    (lists / "places365_val.txt").write_text("\n".join(val) + "\n")
    photo(root / "test_256" / "Places365_test_00000001.jpg", 64, 64)
    (lists / "places365_test.txt").write_text("Places365_test_00000001.jpg\n")


def test_places2_official_lists(tmp_path):
    make_places(tmp_path)
    train = places2_files(tmp_path, "train")
    assert [p.relative_to(tmp_path).as_posix() for p in train] == [
        "data_256/a/airfield/00000001.jpg", "data_256/a/airfield/00000002.jpg", "data_256/b/bakery/shop/00000001.jpg"]
    assert [p.name for p in places2_files(tmp_path, "val")] == ["Places365_val_00000001.jpg", "Places365_val_00000002.jpg"]
    assert len(places2_files(tmp_path, "test")) == 1
    ds = build_dataset("places2", tmp_path, 32, split="val", masks="freeform")
    assert len(ds) == 2 and ds[1]["image"].shape == (3, 32, 32)


def test_places2_missing_list_or_images(tmp_path):
    make_places(tmp_path)
    (tmp_path / "filelist_places365-standard" / "places365_val.txt").unlink()
    with pytest.raises(CsaError, match="places365_val.txt"):
        places2_files(tmp_path, "val")
    for p in (tmp_path / "data_256").rglob("*.jpg"):
        p.unlink()
    with pytest.raises(CsaError, match="none of the images listed"):
        places2_files(tmp_path, "train")


# --- Paris StreetView ---------------------------------------------------------------------------


def test_paris_layout(tmp_path):
    for i in range(3):  # nested as distributed, upper-case suffixes
        photo(tmp_path / "paris_train_original" / "paris_train_original" / f"{i:03d}_im.JPG", 93, 53, seed=i)
    for i in range(1, 3):
        photo(tmp_path / "paris_eval" / "paris_eval_gt" / f"{i:03d}_im.png", 50, 50, seed=10 + i)
    assert len(paris_files(tmp_path, "train")) == 3
    assert [p.name for p in paris_files(tmp_path, "val")] == ["001_im.png", "002_im.png"]
    ds = build_dataset("paris", tmp_path, 32, masks="centre")
    assert len(ds) == 3 and ds[2]["image"].shape == (3, 32, 32)
    with pytest.raises(CsaError, match="Paris StreetView"):
        paris_files(tmp_path / "paris_eval", "train")


# --- evaluation pairs ---------------------------------------------------------------------------


def test_eval_pairs_identical_every_run(folder):
    a = list(EvalPairs(folder, "freeform", size=32, seed=4))
    b = list(EvalPairs(folder, "freeform", size=32, seed=4))
    assert [n for n, _, _ in a] == ["a", "b", "sub/c", "sub/deeper/d"]
    for (n1, i1, m1), (n2, i2, m2) in zip(a, b):
        assert n1 == n2 and np.array_equal(i1, i2) and np.array_equal(m1, m2)
    name, img, mask = a[0]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and mask.shape == (32, 32) and mask.dtype == bool
    assert np.array_equal(mask, generate_mask("freeform", 32, np.random.default_rng([4, 0])))
    assert len(EvalPairs(folder, "centre", size=32, limit=2)) == 2


def test_eval_pairs_centre_crop_then_resize(tmp_path):
    path = bands(tmp_path / "wide.png", 60, 40, outer=(255, 0, 0), inner=(0, 0, 255), axis=1)
    _, img, _ = EvalPairs(path, "centre", size=20)[0]
    assert img[..., 0].max() == 0 and img[..., 2].min() == 255


def test_eval_pairs_mask_folder_by_name_or_seed(tmp_path, folder):
    by_name = tmp_path / "named"
    by_name.mkdir()
    kinds = {"a": "centre", "b": "rect:20", "c": "centre:10", "d": "rect:30"}
    for stem, kind in kinds.items():
        Image.fromarray(generate_mask(kind, 64, 0).astype(np.uint8) * 255).save(by_name / f"{stem}.png")
    pairs = EvalPairs(folder, str(by_name), size=32)
    assert pairs.pairing == "name"
    for i, (name, _, mask) in enumerate(pairs):
        stem = name.split("/")[-1]
        expected = np.asarray(Image.fromarray(generate_mask(kinds[stem], 64, 0).astype(np.uint8) * 255)
                              .resize((32, 32), Image.NEAREST)) >= 128
        assert np.array_equal(mask, expected), name
        assert pairs.mask_source(i).endswith(f"{stem}.png")

    numbered = tmp_path / "numbered"
    numbered.mkdir()
    for i in range(3):
        Image.fromarray(generate_mask("rect", 64, i).astype(np.uint8) * 255).save(numbered / f"{i:05d}.png")
    p1, p2 = EvalPairs(folder, str(numbered), size=32, seed=1), EvalPairs(folder, str(numbered), size=32, seed=1)
    assert p1.pairing == "seed"
    sources = [p1.mask_source(i) for i in range(4)]
    assert sources == [p2.mask_source(i) for i in range(4)]
    assert len(set(sources[:3])) == 3  # each mask once before any repeats

    (numbered / "a.png").write_bytes((by_name / "a.png").read_bytes())
    with pytest.warns(DataWarning, match="same name"):
        assert EvalPairs(folder, str(numbered), size=32).pairing == "seed"


def test_eval_pairs_skip_bad_images(folder, tmp_path):
    (folder / "zz.jpg").write_bytes(b"\xff\xd8\xff broken")
    pairs = EvalPairs(folder, "centre", size=32)
    with pytest.warns(DataWarning, match="zz.jpg"):
        got = list(pairs)
    assert len(got) == 4 and len(pairs.skipped) == 1
    with pytest.raises(CsaError, match="not found"):
        EvalPairs(tmp_path / "nothing", "centre")
    with pytest.raises(CsaError):
        EvalPairs(folder, str(tmp_path / "no-masks"))

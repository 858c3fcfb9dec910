"""tools/build_photoset.py: the Qt .rcc reader, the credit files, the scene split, the records.

Nothing here downloads: the .rcc bundles in tests/data/photoset/rcc/ were made with Qt's own
``rcc`` (see the README there).
"""
from __future__ import annotations

import csv
import importlib.util
import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "photoset" / "rcc"
SOURCES = {
    "/photos/README": FIXTURES / "src/photos/README",
    "/photos/noise.bin": FIXTURES / "src/photos/noise.bin",
    "/photos/a/gradient.png": FIXTURES / "src/photos/a/gradient.png",
}


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("build_photoset", REPO / "tools" / "build_photoset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_photoset"] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("build_photoset", None)


# --- the .rcc reader ------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", ["v1_zlib.rcc", "v2_zlib.rcc", "v3_zlib.rcc", "v3_none.rcc"])
def test_read_rcc_gives_back_the_files_qt_packed(tool, bundle) -> None:
    files = tool.read_rcc((FIXTURES / bundle).read_bytes(), bundle)
    assert sorted(files) == sorted(SOURCES)
    for path, src in SOURCES.items():
        assert files[path] == src.read_bytes(), path


def test_the_fixtures_hold_compressed_and_stored_entries(tool) -> None:
    # what the test above covers: the flags word of each file node (see read_rcc's layout)
    def flags(data: bytes) -> set[int]:
        version, tree = struct.unpack_from(">II", data, 4)
        size = 14 if version == 1 else 22
        out, i = set(), 0
        while tree + (i + 1) * size <= len(data):
            out.add(struct.unpack_from(">H", data, tree + i * size + 4)[0])
            i += 1
        return out

    assert tool.RCC_ZLIB in flags((FIXTURES / "v3_zlib.rcc").read_bytes())
    assert tool.RCC_ZLIB in flags((FIXTURES / "v1_zlib.rcc").read_bytes())
    assert not flags((FIXTURES / "v3_none.rcc").read_bytes()) & {tool.RCC_ZLIB, tool.RCC_ZSTD}
    assert tool.RCC_ZSTD in flags((FIXTURES / "v3_zstd.rcc").read_bytes())


def test_zstd_entries_are_refused_by_name(tool) -> None:
    with pytest.raises(tool.RccError, match=r"v3_zstd.rcc: /photos/README is zstd-compressed"):
        tool.read_rcc((FIXTURES / "v3_zstd.rcc").read_bytes(), "v3_zstd.rcc")


def test_not_a_bundle_and_unknown_versions_are_refused(tool) -> None:
    data = (FIXTURES / "v3_zlib.rcc").read_bytes()
    with pytest.raises(tool.RccError, match="no 'qres' header"):
        tool.read_rcc(b"PK\x03\x04" + data[4:])
    with pytest.raises(tool.RccError, match="version 4 is not supported"):
        tool.read_rcc(data[:4] + struct.pack(">I", 4) + data[8:])


def test_every_truncation_is_a_clear_error(tool) -> None:
    data = (FIXTURES / "v3_zlib.rcc").read_bytes()
    for cut in range(len(data)):
        with pytest.raises(tool.RccError):
            tool.read_rcc(data[:cut])


def test_a_corrupt_tree_or_stream_is_a_clear_error(tool) -> None:
    data = bytearray((FIXTURES / "v3_zlib.rcc").read_bytes())
    tree = struct.unpack_from(">I", data, 8)[0]
    looped = bytearray(data)
    struct.pack_into(">I", looped, tree + 10, 0)  # the root directory's first child: the root again
    with pytest.raises(tool.RccError, match="reached twice"):
        tool.read_rcc(bytes(looped))

    files = tool.read_rcc(bytes(data))
    payload = struct.unpack_from(">I", data, 12)[0]
    compressed = zlib_member(data, payload, tree)
    broken = bytearray(data)
    broken[compressed + 10] ^= 0xFF  # inside the README's zlib stream
    with pytest.raises(tool.RccError, match="README"):
        tool.read_rcc(bytes(broken))
    assert files["/photos/README"] == SOURCES["/photos/README"].read_bytes()


def zlib_member(data: bytes, payload: int, tree: int) -> int:
    """Byte offset of the first zlib-compressed entry's stream (after its two length words)."""
    for i in range(64):
        base = tree + i * 22
        if base + 22 > len(data):
            break
        flags = struct.unpack_from(">H", data, base + 4)[0]
        if flags == 0x01:
            offset = struct.unpack_from(">I", data, base + 10)[0]
            return payload + offset + 8
    raise AssertionError("no zlib entry in the fixture")


# --- credit files ---------------------------------------------------------------------------------


def test_parse_credits_reads_every_block_style(tool) -> None:
    text = tool.read_rcc((FIXTURES / "v3_zlib.rcc").read_bytes())["/photos/README"].decode()
    credits = tool.parse_credits(text)
    assert set(credits) == {"a/gradient.png", "listed_without_files_line.webp", "inline.webp", "one.webp", "two.webp"}
    assert credits["a/gradient.png"] == {"copyright": "Test Author", "license": "CC0-1.0",
                                         "source": "https://example.org/wiki/File:Gradient.png"}
    assert credits["listed_without_files_line.webp"]["license"] == "CC-BY-SA 4.0"
    assert credits["listed_without_files_line.webp"]["comment"] == (
        "based on a photo by Somebody Else, license CC-BY-SA 3.0, source at https://example.org/wiki/File:Original.jpg")
    assert credits["inline.webp"] == {"source": "https://example.org/wiki/File:Inline.jpg", "license": "Public domain",
                                      "copyright": "Fields In Another Order", "comment": "cropping, sharpening"}
    # a comment naming one file of a block belongs to that file only
    assert "comment" not in credits["one.webp"]
    assert credits["two.webp"]["comment"].startswith("two.webp is based on a photo by X")
    assert credits["one.webp"]["copyright"] == credits["two.webp"]["copyright"] == "A Group"


def test_gcompris_credit_takes_the_nearest_readme_that_names_the_photo(tool, monkeypatch) -> None:
    root = "/gcompris/src/activities/act"
    bundle = {
        f"{root}/resource/README": b"Copyright: Outer\nLicense: CC0-1.0\nFiles:\nsub/x.webp\nsub/y.webp\n",
        f"{root}/resource/sub/README": b"Copyright: Inner\nLicense: Public Domain\nFiles: x.webp\n",
    }
    assert tool.gcompris_credit(bundle, "act", "resource/sub/x.webp")[1]["copyright"] == "Inner"
    readme, fields = tool.gcompris_credit(bundle, "act", "resource/sub/y.webp")
    assert (readme, fields["copyright"]) == (f"{root}/resource/README", "Outer")
    assert tool.gcompris_credit(bundle, "act", "resource/sub/z.webp") is None
    monkeypatch.setitem(tool.GCOMPRIS_CREDIT_ALIASES, "act/resource/sub/z.webp", "sub/y.webp")
    assert tool.gcompris_credit(bundle, "act", "resource/sub/z.webp")[1]["copyright"] == "Outer"


# --- scenes and the split -------------------------------------------------------------------------


def test_the_fixed_lists_are_consistent_and_split_cleanly(tool) -> None:
    stems = tool.planned_stems()
    assert tool.check_lists(stems) == []
    assigned = [(s, tool.scene_of(s), tool.split_of(tool.scene_of(s))) for s in stems]
    assert tool.check_split(assigned) == []
    val = [s for s, _, split in assigned if split == "val"]
    assert len(val) >= tool.MIN_VAL
    assert len({s.split("_")[0] for s in val}) >= 4  # several sources
    for old in ("skimage_astronaut", "skimage_chelsea", "skimage_coffee", "skimage_rocket",
                "sklearn_china", "sklearn_flower"):
        assert old in val
    # the same people recur across KPhotoAlbum's events: the album stays in train
    assert not [s for s in val if s.startswith("kphotoalbum_")]


def test_scene_of_groups_photos_of_one_place(tool) -> None:
    assert tool.scene_of("gcompris_details_TourEiffel") == tool.scene_of("gcompris_explore_monuments_eiffelTower")
    assert tool.scene_of("scratch_grand-canyon") == tool.scene_of("kphotoalbum_grand_canyon_2") == "grand-canyon"
    assert tool.scene_of("gcompris_erase_cheetah") == "gcompris_erase_cheetah"  # no group: its own scene
    assert tool.split_of("scratch-movies") == "val"
    assert tool.split_of("grand-canyon") == "train"


def test_check_split_finds_a_scene_in_both_splits_and_a_small_val_set(tool) -> None:
    ok = [("a1", "a", "train"), ("a2", "a", "train"), ("b1", "b", "val"), ("c1", "c", "val")]
    assert tool.check_split(ok, min_val=2) == []
    leaky = ok + [("a3", "a", "val")]
    assert tool.check_split(leaky, min_val=2) == ["scene a is in both train and val"]
    assert tool.check_split(ok, min_val=3) == ["only 2 validation photos (at least 3 wanted)"]


def test_check_lists_finds_broken_groups_and_val_scenes(tool, monkeypatch) -> None:
    stems = ["p_one", "p_two", "p_three"]
    monkeypatch.setattr(tool, "SCENE_GROUPS", {"g": ("p_one", "p_missing"), "h": ("p_one",)})
    monkeypatch.setattr(tool, "VAL_SCENES", ("p_two", "nowhere"))
    problems = tool.check_lists(stems + ["p_two"])
    assert "p_two is listed twice" in problems
    assert "SCENE_GROUPS['g'] names p_missing, which is not a listed photo" in problems
    assert "p_one is in two scene groups (g, h)" in problems
    assert "VAL_SCENES names nowhere, which is no scene of a listed photo" in problems


def photo(seed: int, size=(320, 256)) -> Image.Image:
    """A smooth random colour picture (low frequencies dominate, as in photos)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
    return Image.fromarray(small).resize(size, Image.BICUBIC)


def test_near_duplicates_across_splits_are_found(tool) -> None:
    a = photo(1)
    buf = io.BytesIO()
    a.resize((200, 160), Image.LANCZOS).save(buf, "JPEG", quality=70)  # the same picture, smaller, re-encoded
    a_copy = Image.open(io.BytesIO(buf.getvalue()))
    hashes = {"a": tool.phash(a), "a_copy": tool.phash(a_copy), "b": tool.phash(photo(2)), "c": tool.phash(photo(3))}
    split = {"a": "train", "a_copy": "val", "b": "val", "c": "train"}
    found = tool.near_duplicates(hashes, split)
    assert len(found) == 1 and found[0].startswith("a (train) and a_copy (val) look like the same picture")
    assert tool.near_duplicates(hashes, {k: "train" for k in hashes}) == []


# --- images and records -----------------------------------------------------------------------------


def make_photo(tool, tmp_path: Path, name: str, img: Image.Image):
    path = tmp_path / name
    img.save(path)
    return tool.Photo(name, path, tool.Entry("", "", "pkg", "1", f"/x/{name}", "someone", "CC0", "here"))


def test_image_problem_refuses_grey_and_small_photos(tool, tmp_path) -> None:
    assert tool.image_problem(make_photo(tool, tmp_path, "colour.png", photo(4))) is None
    grey = photo(5).convert("L").convert("RGB")
    assert tool.image_problem(make_photo(tool, tmp_path, "grey.png", grey)) == "greyscale"
    small = photo(6, size=(400, tool.MIN_SHORT_SIDE - 1))
    assert tool.image_problem(make_photo(tool, tmp_path, "small.png", small)).startswith(
        f"shorter side {tool.MIN_SHORT_SIDE - 1} px")
    in_memory = tool.Photo("m.png", (tmp_path / "colour.png").read_bytes(), tool.Entry("", "", "p", "1", "", "", "", ""))
    assert tool.image_problem(in_memory) is None


def test_upright_png_turns_clockwise(tool, tmp_path) -> None:
    a = np.zeros((2, 3, 3), np.uint8)
    a[0, 0] = (255, 0, 0)  # top-left marker
    Image.fromarray(a).save(tmp_path / "s.png")
    turned = np.asarray(Image.open(io.BytesIO(tool.upright_png(tmp_path / "s.png", 90))))
    assert turned.shape == (3, 2, 3)
    assert tuple(turned[0, 1]) == (255, 0, 0)  # a quarter turn clockwise takes top-left to top-right
    turned = np.asarray(Image.open(io.BytesIO(tool.upright_png(tmp_path / "s.png", 180))))
    assert tuple(turned[1, 2]) == (255, 0, 0)


def test_write_records_writes_the_table_with_scenes(tool, tmp_path) -> None:
    E = tool.Entry
    entries = [
        E("train", "train/x.webp", "gcompris-qt-data", "3.1-2", "/r.rcc:/x.webp", "Ann", "CC-BY-SA-4.0",
          "licenses/readme.txt", "https://example.org/x", "place", "cropping"),
        E("val", "val/y.jpg", "scratch", "1.4", "/y.jpg", "MIT", "CC-BY-SA-3.0", "licenses/scratch.copyright",
          scene="y"),
        E("train", "train/z.jpg", "scratch", "1.4", "/z.jpg", "MIT", "CC-BY-SA-3.0", "licenses/scratch.copyright",
          scene="place"),
    ]
    tool.write_records(tmp_path, entries, ["/gone.jpg (not in the package any more)"])
    with open(tmp_path / "licences.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["split", "file", "source", "version", "original", "copyright", "licence",
                             "licence_source", "url", "scene", "notes"]
    assert [(r["file"], r["scene"], r["url"]) for r in rows] == [
        ("train/x.webp", "place", "https://example.org/x"), ("val/y.jpg", "y", ""), ("train/z.jpg", "place", "")]
    md = (tmp_path / "LICENSES.md").read_text(encoding="utf-8")
    assert "| gcompris-qt-data | 1 | 0 |" in md and "| scratch | 1 | 1 |" in md and "| all | 2 | 1 |" in md
    assert "| train | train/x.webp | gcompris-qt-data | 3.1-2 | Ann | CC-BY-SA-4.0 | place |" in md
    assert "- /gone.jpg (not in the package any more)" in md


def test_main_refuses_a_non_empty_folder(tool, tmp_path, capsys) -> None:
    (tmp_path / "something").write_text("x")
    assert tool.main([str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err

#!/usr/bin/env python3
"""Build the photo set for training and validation from Debian packages and Python packages.

    python tools/build_photoset.py OUT_DIR [--debs DIR] [--force]

train/: the photographs among the wallpapers of ``mate-backgrounds`` (nature/) and
``plasma-workspace-wallpapers``, and the colour photos of ``opencv-doc``'s examples.
val/:   scikit-image's bundled colour photographs and scikit-learn's two sample images.

The three .deb files are fetched with ``apt-get download`` (after ``apt-get update`` if
the first try fails) and unpacked with ``dpkg -x`` into a temporary folder; ``--debs DIR``
uses .deb files already there instead. Files are copied byte for byte (no re-encoding).
Next to the images: ``licences.csv`` (one row per file: source package and version,
original path, copyright holder / author, licence, where that was read),
``LICENSES.md`` (the same as a table, plus notes) and ``licenses/`` (each Debian
package's copyright file and scikit-learn's image README, verbatim).

The selection is a fixed list, chosen by looking at contact sheets of every candidate:
photographs of real scenes only, no abstract art, renders, drawings, paintings,
greyscale photos, synthetic test charts or near-duplicate stereo / viewpoint pairs.
Only this script is committed, never the images.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers", "opencv-doc")

# mate-backgrounds: every file of nature/ is a photograph (abstract/ and desktop/ are artwork).
MATE_NATURE = (
    "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow",
    "LadyBird", "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower",
)
# plasma-workspace-wallpapers: the colour photographs. Left out: the vector / polygon art
# (Altai, Autumn, Canopee, Cascade, Cluster, Elarun, Flow, FlyingKonqui, Honeywave, IceCold,
# Kay, Kokkini, MilkyWay, Opal, PastelHills, Patak, SafeLanding, Shell), the render Volna,
# and the greyscale photos ColdRipple and Grey.
PLASMA_PHOTOS = (
    "BytheWater", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
    "Kite", "OneStandsOut", "Path", "summer_1am",
)
# opencv-doc examples: colour photographs. Left out: drawings and renders (HappyFish,
# Blender_Suzanne*, blox, ml, cards, detect_blob, pic*), the painting starry_night,
# greyscale calibration / test images, synthetic blur tests (text_defocus, text_motion,
# licenseplate_motion), the tampered ela_modified, chicky_512 (partly transparent),
# documents (sudoku, pca_test1), and the second view of each pair (aloeR, leuvenB,
# right, graf3, rubberwhale2).
OPENCV_PHOTOS = (
    "data/aero1.jpg", "data/aero3.jpg", "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg",
    "data/board.jpg", "data/building.jpg", "data/butterfly.jpg", "data/ela_original.jpg",
    "data/fruits.jpg", "data/graf1.png", "data/home.jpg", "data/left.jpg", "data/leuvenA.jpg",
    "data/messi5.jpg", "data/orange.jpg", "data/rubberwhale1.png", "data/smarties.png",
    "data/squirrel_cls.jpg", "data/stuff.jpg",
    "text/scenetext01.jpg", "text/scenetext02.jpg", "text/scenetext03.jpg",
    "text/scenetext04.jpg", "text/scenetext05.jpg", "text/scenetext06.jpg",
    "alphamat/input_images/plant.jpg",
)
# Where each example folder comes from in the OpenCV sources (for the copyright file).
OPENCV_UPSTREAM = {"data": "samples/data", "text": "contrib/modules/text/samples",
                   "alphamat": "contrib/modules/alphamat/samples"}

# scikit-image's bundled colour photographs; licences as stated in each loader's docstring.
# Left out: greyscale images, synthetic ones (colorwheel, logo, chessboard), microscopy and
# medical images (ihc, retina), the astronomy image, and motorcycle_left (no licence stated).
SKIMAGE_PHOTOS = {
    "astronaut.png": ("astronaut", "NASA (photograph of Eileen Collins)",
                      "public domain (no known copyright restrictions)"),
    "chelsea.png": ("chelsea", "Stefan van der Walt", "CC0 (no copyright restrictions)"),
    "coffee.png": ("coffee", "Rachel Michetti, courtesy of Pikolo Espresso Bar", "CC0 (no copyright restrictions)"),
    "rocket.jpg": ("rocket", "SpaceX (launch of DSCOVR on Falcon 9)", "public domain (released by SpaceX)"),
}
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


@dataclass
class Entry:
    split: str
    file: str
    source: str
    version: str
    original: str
    copyright: str
    licence: str
    licence_source: str


def run(cmd: list[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True)


def fetch_debs(work: Path, debs_dir: Optional[Path]) -> dict[str, Path]:
    """The three .deb files: from ``debs_dir`` or ``apt-get download`` into ``work``."""
    if debs_dir is not None:
        found = {}
        for pkg in PACKAGES:
            hits = sorted(debs_dir.glob(f"{pkg}_*.deb"))
            if not hits:
                sys.exit(f"error: no {pkg}_*.deb in {debs_dir}")
            found[pkg] = hits[-1]
        return found
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found: this recipe needs a Debian-based system (or pass --debs DIR)")
    res = run(["apt-get", "download", *PACKAGES], cwd=work)
    if res.returncode != 0:
        print("apt-get download failed; running apt-get update first", file=sys.stderr)
        upd = run(["apt-get", "update"])
        if upd.returncode != 0:
            sys.exit(f"error: apt-get update failed:\n{upd.stderr.strip()}")
        res = run(["apt-get", "download", *PACKAGES], cwd=work)
        if res.returncode != 0:
            sys.exit(f"error: apt-get download failed:\n{res.stderr.strip()}")
    return {pkg: sorted(work.glob(f"{pkg}_*.deb"))[-1] for pkg in PACKAGES}


def deb_version(deb: Path) -> str:
    res = run(["dpkg-deb", "-f", str(deb), "Version"])
    return res.stdout.strip() if res.returncode == 0 else "unknown"


def parse_dep5(text: str) -> list[dict[str, str]]:
    """Paragraphs of a machine-readable Debian copyright file (field -> value, continuation lines joined)."""
    paras, cur, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                paras.append(cur)
            cur, key = {}, None
        elif line[0] in " \t" and key is not None:
            cur[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            cur[key] = value.strip()
    if cur:
        paras.append(cur)
    return paras


def dep5_lookup(paras: list[dict[str, str]], upstream_path: str) -> tuple[str, str]:
    """(copyright, licence name) of the last Files paragraph matching the path (DEP-5 rule)."""
    hit = None
    for p in paras:
        if "Files" in p and any(fnmatch.fnmatchcase(upstream_path, pat) for pat in p["Files"].split()):
            hit = p
    if hit is None:
        return "unknown", "unknown"
    copyright_ = " / ".join(s.strip() for s in hit.get("Copyright", "").splitlines() if s.strip())
    return copyright_, hit.get("License", "unknown").splitlines()[0].strip()


def is_colour(path: Path) -> bool:
    """Safety net for the fixed lists: refuse a greyscale file (mean chroma under 2 levels)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((128, 128))
        a = np.asarray(im).astype(np.float32)
    return float(np.abs(a - a.mean(axis=2, keepdims=True)).mean()) >= 2.0


def copy_photo(src: Path, dst: Path, entries: list[Entry], entry: Entry, skipped: list[str]) -> None:
    if not src.is_file():
        skipped.append(f"{src} (not in the package any more)")
        return
    if not is_colour(src):
        skipped.append(f"{src} (greyscale)")
        return
    shutil.copyfile(src, dst)
    entries.append(entry)


def build(out: Path, debs_dir: Optional[Path]) -> tuple[list[Entry], list[str]]:
    train, val, lic = out / "train", out / "val", out / "licenses"
    for d in (train, val, lic):
        d.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="photoset-") as tmp:
        work = Path(tmp)
        debs = fetch_debs(work, debs_dir)
        root = work / "root"
        for pkg, deb in debs.items():
            res = run(["dpkg", "-x", str(deb), str(root)])
            if res.returncode != 0:
                sys.exit(f"error: dpkg -x {deb} failed:\n{res.stderr.strip()}")
        versions = {pkg: deb_version(deb) for pkg, deb in debs.items()}
        dep5 = {}
        for pkg in PACKAGES:
            cfile = root / "usr/share/doc" / pkg / "copyright"
            shutil.copyfile(cfile, lic / f"{pkg}.copyright")
            dep5[pkg] = parse_dep5(cfile.read_text(encoding="utf-8", errors="replace"))

        pkg = "mate-backgrounds"
        for name in MATE_NATURE:
            rel = f"nature/{name}.jpg"
            cr, li = dep5_lookup(dep5[pkg], rel)
            dst = f"mate_{name}.jpg"
            copy_photo(root / "usr/share/backgrounds/mate" / rel, train / dst, entries,
                       Entry("train", f"train/{dst}", pkg, versions[pkg], f"/usr/share/backgrounds/mate/{rel}",
                             cr, li, f"licenses/{pkg}.copyright"), skipped)

        pkg = "plasma-workspace-wallpapers"
        for name in PLASMA_PHOTOS:
            base = root / "usr/share/wallpapers" / name
            images = sorted((base / "contents/images").glob("*x*.*")) if base.is_dir() else []
            # the largest landscape rendition ("5120x2880.jpg" style names)
            def area(p: Path) -> int:
                w, _, h = p.stem.partition("x")
                return int(w) * int(h) if w.isdigit() and h.isdigit() and int(w) >= int(h) else -1
            images = [p for p in images if area(p) > 0]
            if not images:
                skipped.append(f"{base} (no landscape image)")
                continue
            src = max(images, key=area)
            cr, li = dep5_lookup(dep5[pkg], f"{name}/contents/images/{src.name}")
            meta_note = ""
            meta = base / "metadata.json"
            if meta.is_file():
                plugin = json.loads(meta.read_text(encoding="utf-8")).get("KPlugin", {})
                author = (plugin.get("Authors") or [{}])[0].get("Name", "")
                upstream_licence = plugin.get("License", "")
                cr = f"{author}; {cr}" if author else cr
                if upstream_licence:
                    meta_note = f" (upstream metadata.json: {upstream_licence})"
            dst = f"plasma_{name}{src.suffix.lower()}"
            copy_photo(src, train / dst, entries,
                       Entry("train", f"train/{dst}", pkg, versions[pkg], "/" + str(src.relative_to(root)),
                             cr, li + meta_note, f"licenses/{pkg}.copyright; {name}/metadata.json"), skipped)

        pkg = "opencv-doc"
        examples = root / "usr/share/doc/opencv-doc/examples"
        for rel in OPENCV_PHOTOS:
            top, _, rest = rel.partition("/")
            cr, li = dep5_lookup(dep5[pkg], f"{OPENCV_UPSTREAM[top]}/{rest}")
            name = Path(rel).name
            dst = f"opencv_{name}"
            copy_photo(examples / rel, train / dst, entries,
                       Entry("train", f"train/{dst}", pkg, versions[pkg],
                             f"/usr/share/doc/opencv-doc/examples/{rel}", cr, li,
                             f"licenses/{pkg}.copyright (no entry for the sample images: the catch-all 'Files: *')"),
                       skipped)

    import skimage
    import skimage.data
    import sklearn

    sk_dir = Path(skimage.data.__file__).parent
    for fname, (loader, author, licence) in SKIMAGE_PHOTOS.items():
        dst = f"skimage_{fname}"
        copy_photo(sk_dir / fname, val / dst, entries,
                   Entry("val", f"val/{dst}", "scikit-image (PyPI)", skimage.__version__, f"skimage/data/{fname}",
                         author, licence, f"docstring of skimage.data.{loader}()"), skipped)

    skl_dir = Path(sklearn.__file__).parent / "datasets" / "images"
    readme = skl_dir / "README.txt"
    if readme.is_file():
        shutil.copyfile(readme, lic / "scikit-learn-images-README.txt")
        blocks = readme.read_text(encoding="utf-8").split("Image: ")
    else:
        blocks = []
    for fname in SKLEARN_PHOTOS:
        block = next((b for b in blocks if b.startswith(fname)), "")
        author = next((ln.split("by", 1)[1].strip() for ln in block.splitlines() if ln.startswith("Attribution")), "unknown")
        licence = "CC BY 2.0" if "licenses/by/2.0" in block else "see README"
        dst = f"sklearn_{fname}"
        copy_photo(skl_dir / fname, val / dst, entries,
                   Entry("val", f"val/{dst}", "scikit-learn (PyPI)", sklearn.__version__,
                         f"sklearn/datasets/images/{fname}", author, licence,
                         "licenses/scikit-learn-images-README.txt"), skipped)
    return entries, skipped


def write_records(out: Path, entries: list[Entry], skipped: list[str]) -> None:
    fields = list(Entry.__dataclass_fields__)
    with open(out / "licences.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(fields)
        for e in entries:
            w.writerow([getattr(e, f) for f in fields])
    lines = [
        "# Licences of the photo set",
        "",
        "Built by `tools/build_photoset.py` (csa-inpaint). Every file is an unmodified copy of",
        "the original in the package named below. The Debian packages' copyright files and",
        "scikit-learn's image README are in `licenses/`, verbatim; `licences.csv` holds the same",
        "rows as this table.",
        "",
        "Notes: the GPL / LGPL / CC BY-SA wallpapers may be redistributed only under their",
        "licences (keep this file and `licenses/` with them). For the Plasma wallpapers Debian's",
        "copyright file says GPL-2+ for the whole package while each wallpaper's metadata.json",
        "names its author and licence; both are recorded. Debian's opencv copyright file has no",
        "entry for the sample images, so its catch-all paragraph is what applies. The",
        "scikit-image licences are those stated in each loader's docstring; CC BY 2.0 (the",
        "scikit-learn images) requires attribution to the named photographers.",
        "",
        "| split | file | source | version | copyright / author | licence |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        lines.append(f"| {e.split} | {e.file} | {e.source} | {e.version} | {e.copyright} | {e.licence} |")
    if skipped:
        lines += ["", "Listed but not copied:", ""] + [f"- {s}" for s in skipped]
    (out / "LICENSES.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="folder to create (train/, val/, licences)")
    ap.add_argument("--debs", type=Path, default=None, help="use the .deb files in this folder instead of apt-get download")
    ap.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    args = ap.parse_args(argv)
    out: Path = args.out_dir
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"error: {out} is not empty: give a new folder or --force", file=sys.stderr)
        return 2
    entries, skipped = build(out, args.debs)
    write_records(out, entries, skipped)
    n_train = sum(e.split == "train" for e in entries)
    n_val = sum(e.split == "val" for e in entries)
    by_source: dict[str, int] = {}
    for e in entries:
        by_source[e.source] = by_source.get(e.source, 0) + 1
    print(f"wrote {out}: train {n_train}, val {n_val} images; licences.csv, LICENSES.md, licenses/")
    for src, n in by_source.items():
        print(f"  {src}: {n}")
    for s in skipped:
        print(f"  skipped: {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

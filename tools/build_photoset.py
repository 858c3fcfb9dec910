#!/usr/bin/env python3
"""Build the photo set for training and validation from Debian packages and Python packages.

    python tools/build_photoset.py OUT_DIR [--debs DIR] [--force]

Sources (fixed lists below, chosen by looking at contact sheets of every candidate):

- ``mate-backgrounds`` (nature/), ``plasma-workspace-wallpapers``, ``opencv-doc``'s examples;
- ``gcompris-qt-data``: photographs inside its Qt resource bundles (``.rcc``), read by
  :func:`read_rcc`; per-photo credits from the README files in the same bundles;
- ``scratch`` (backdrops), ``kphotoalbum`` (demo album), ``tuxpaint-data`` (templates and two
  starter backgrounds), ``lxqt-themes`` (wallpapers);
- scikit-image's bundled colour photographs and scikit-learn's two sample images.

The split is by scene: every photo belongs to a scene (itself, or a group in SCENE_GROUPS:
the same monument, place or event seen in several photos), and whole scenes go to val/
(VAL_SCENES) or train/ (all others). Before anything is written the script refuses a
scene found in both splits, a validation set under MIN_VAL photos, and any pair of
photos in different splits whose perceptual hashes are nearly equal.

The .deb files are fetched with ``apt-get download`` (after ``apt-get update`` if the first
try fails) and unpacked with ``dpkg -x`` into a temporary folder; ``--debs DIR`` uses .deb
files already there. Files are copied byte for byte, except four KPhotoAlbum photos stored
sideways or upside down, which are turned upright as the album's index.xml says and saved
as PNG. Next to the images: ``licences.csv`` (one row per file: split, source package and
version, original path, author / copyright holder, licence, where that was read, source
URL, scene, notes), ``LICENSES.md`` (the same as a table) and ``licenses/`` (each Debian
package's copyright file and the upstream credit files, verbatim). Only this script is
committed, never the images.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import gzip
import io
import itertools
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

PACKAGES = (
    "mate-backgrounds", "plasma-workspace-wallpapers", "opencv-doc",
    "gcompris-qt-data", "scratch", "kphotoalbum", "tuxpaint-data", "lxqt-themes",
)

# A listed photo whose shorter side is under this is refused: a 256 x 256 crop of it would be
# upscaled by more than 256/240 = 1.07. (gcompris' categorization photos are mostly 320 x 213:
# those are left out by this rule, not listed.)
MIN_SHORT_SIDE = 240
MIN_VAL = 40
# Perceptual-hash distance (of 63 bits) at or under which two photos count as the same picture.
# A photo re-encoded or rescaled moves a few bits (the two copies of one Brandenburg Gate photo
# in gcompris: 2); the closest unrelated pair in this set is 14 bits apart.
NEAR_DUPLICATE_BITS = 10

# --- the fixed lists ------------------------------------------------------------------------------

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

# gcompris-qt-data: photographs in /usr/share/gcompris-qt/rcc/<activity>.rcc, as paths under
# the bundle's /gcompris/src/activities/<activity>/. Left out of the whole package: lang/
# (drawings), paintings/ and the painting-based puzzles of babyshapes/ and details/ (Van Gogh,
# Bruegel, Gauguin...), solar_system/ and gravity/ (planet images on flat backgrounds),
# digital_electricity's flat paper textures, every image with a shorter side under
# MIN_SHORT_SIDE (most of categorization/ at 320 x 213, leftright/, chronos/).
GCOMPRIS_PHOTOS = {
    # Left out: photos of objects on a plain background (alphabets, numbers, baseball, spoons,
    # volleyball, weighingMachine, bucket, buffetset, bulb, chair, pan, plate, every tools/
    # photo), the studio goldfish fish25, and brandenburgGate (the same photo as
    # explore_monuments' larger copy).
    "categorization": tuple(f"resource/images/{p}.webp" for p in (
        "fishes/fish10", "fishes/fish11", "fishes/fish20", "fishes/fish21", "fishes/fish22",
        "fishes/fish3", "fishes/fish4", "fishes/fish9",
        "monuments/arcDeTriomphe", "monuments/empireState", "monuments/greatWall",
        "monuments/kutubMinar", "monuments/mountRushmore", "monuments/operaHouse",
        "monuments/statueOfLiberty", "monuments/victoriaMemorial",
        "others/pillow",
        "renewable/dam4", "renewable/dam5", "renewable/geothermal", "renewable/solar1",
        "renewable/solar3", "renewable/solar4", "renewable/solar7", "renewable/solar8",
        "renewable/windmill11", "renewable/windmill12", "renewable/windmill13",
        "renewable/windmill14", "renewable/windmill15", "renewable/windmill2",
        "renewable/windmill3", "renewable/windmill4", "renewable/windmill5",
        "renewable/windmill6", "renewable/windmill7", "renewable/windmill9",
    )),
    "clickgame": tuple(f"resource/sea{i}.webp" for i in range(1, 7)),
    # The photo-based puzzles' full pictures. Left out: the eight Van Gogh paintings and
    # Neuschwanstein (nearly the same view as explore_monuments' photo of the castle).
    "details": tuple(f"resource/image/{p}_background.webp" for p in (
        "Chenonceau", "EgeskovSlotSpejling", "EilanDonanCastle", "FanoeWindmill",
        "GizahPyramids", "Louvre_2007_02_24_c", "NDP", "Nagoya", "OperaSidney", "TajMahal",
        "TourEiffel", "TowerBridgeLondon",
    )),
    # Left out: swans (black and white swans on dark water: the colour check finds it grey).
    "erase": tuple(f"resource/{p}.webp" for p in (
        "alpaca", "bee", "butterfly", "calf", "camels", "caterpillar", "chamaeleon", "cheetah",
        "crab", "dolphin", "flying_fox", "gibbon", "giraffe", "goat", "gorilla", "gosling",
        "heron", "horse", "kingfisher", "kitten", "long_nosed_monkey", "macaque", "meerkats",
        "northern_harrier", "nubian_ibex", "penguin", "pika", "red_panda", "rhinoceros",
        "spoonbills", "squirrel", "toucan",
    )),
    "explore_farm_animals": tuple(f"resource/animals/{p}.webp" for p in (
        "cat", "chicken", "cow", "dog", "duck", "horse", "owl", "pig", "sheep",
    )),
    # Left out: usa/castleClinton (greyscale).
    "explore_monuments": tuple(f"resource/{p}.webp" for p in (
        "egypt/bentPyramid", "egypt/greatPyramidOfGiza", "egypt/meidumPyramid", "egypt/redPyramid",
        "france/arlesAmphitheater", "france/chateaudeChambord", "france/chateaudeChenonceau",
        "france/citedeCarcassonne", "france/eiffelTower", "france/montStMichel",
        "france/palaisdesPapes", "france/pontduGard", "france/reimsCathedral", "france/rocamadour",
        "germany/aulaPalatina", "germany/berlinCathedral", "germany/brandenburgGate",
        "germany/neuschwansteinCastle", "germany/schwerinPalace", "germany/trierImperialBaths",
        "germany/wormsCathedral",
        "india/ajantaCave", "india/charminar", "india/gatewayofIndia", "india/goldenTemple",
        "india/greatStupa", "india/hawaMahal", "india/konarkSunTemple", "india/mysorePalace",
        "india/qutubMinar", "india/rangGhar", "india/victoriaMemorial",
        "usa/cabrillo", "usa/canyondeChelly", "usa/castillodeSanMarcos", "usa/fortSumter",
        "usa/georgeWashingtonBirthplace", "usa/lincolnMemorial", "usa/mountRushmore", "usa/navajo",
        "usa/statueofLiberty",
        "wonders/chichenItza", "wonders/christTheRedeemer", "wonders/colosseum",
        "wonders/greatWallofChina", "wonders/machuPicchu", "wonders/petra", "wonders/tajMahal",
    )),
    "explore_world_animals": tuple(f"resource/animals/{p}.webp" for p in (
        "bison", "chameleon", "crocodile", "dragon", "giraffe", "hedgehog", "jaguar", "kangaroo",
        "koala", "lemur", "moose", "narwhal", "panda", "polar_bear", "scarlet_macaw",
    )),
    # Left out: africa, america, middleeast (instruments cut out on white).
    "explore_world_music": tuple(f"resource/music/{p}.webp" for p in (
        "australia", "ireland", "italy", "japan", "mexico", "orchestra",
    )),
    # Left out: braille (greyscale), braille_ball (object on white), chart and night_printing
    # (drawings), louis (a painted portrait).
    "louis-braille": tuple(f"resource/{p}.webp" for p in (
        "fireplace", "rnib", "statue", "teach", "workshop",
    )),
}
# README entries whose file name is misspelt upstream (the source URL confirms the photo).
GCOMPRIS_CREDIT_ALIASES = {
    "explore_monuments/resource/germany/aulaPalatina.webp": "germany/audaPalatina.webp",
}

# scratch: Media/Backgrounds/, all 480 x 360. Left out: the drawings (bedroom1, bedroom2,
# party-room, room1, room2, room3, spotlight-stage, desert, stars, underwater, woods,
# woods-and-bench, brick-wall1, night-city, night-city-with-street, school1, school2,
# train-tracks3, basketball-court2, xy-grid), the greyscale moon, and flowers.gif (a photo
# quantised to a 256-colour palette).
SCRATCH_PHOTOS = (
    "Indoors/chalkboard", "Indoors/clothing-store", "Indoors/hall", "Indoors/kitchen",
    "Indoors/the-movies-inside",
    "Nature/beach-malibu", "Nature/canyon", "Nature/flower-bed", "Nature/forest",
    "Nature/garden-rock", "Nature/grand-canyon", "Nature/gravel-desert", "Nature/hill",
    "Nature/lake", "Nature/pathway", "Nature/tree", "Nature/water-and-rocks", "Nature/wave",
    "Outdoors/all-sports-mural", "Outdoors/atom-playground", "Outdoors/bench-with-view",
    "Outdoors/berkeley-mural", "Outdoors/boardwalk", "Outdoors/brick-wall-and-stairs",
    "Outdoors/brick-wall2", "Outdoors/building-at-mit", "Outdoors/building-fireproof",
    "Outdoors/castle", "Outdoors/city-with-water", "Outdoors/city-with-water2",
    "Outdoors/driveway", "Outdoors/graffiti", "Outdoors/hallway_outdoors", "Outdoors/hay_field",
    "Outdoors/houses", "Outdoors/mansion", "Outdoors/mural-faro", "Outdoors/parking-ramp",
    "Outdoors/pool", "Outdoors/route66", "Outdoors/silos", "Outdoors/the-movies",
    "Outdoors/train-tracks1", "Outdoors/train-tracks2", "Outdoors/village",
    "Outdoors/wooden-house",
    "Sports/baseball-field", "Sports/basketball-court1-a", "Sports/basketball-court1-b",
    "Sports/football-field", "Sports/playing-field", "Sports/tennis-backboard",
)
# kphotoalbum: the 24 photos of the demo album (identifiable people). Left out: the 128 px
# category thumbnails in CategoryImages/.
KPHOTOALBUM_PHOTOS = (
    "anne_helene", "bar55", "bar55_2", "blackie", "cold_water", "donna", "donna_2",
    "grand_canyon_1", "grand_canyon_2", "grand_canyon_3", "jesper", "jesper_2", "new_wave_1",
    "new_wave_2", "pool", "pool_2", "qt-logo", "skagen", "skagen_2", "snow", "spiff", "spiff_2",
    "sunset", "wayne",
)
KPHOTOALBUM_NO_PEOPLE = {"blackie", "donna", "donna_2", "grand_canyon_3", "skagen", "skagen_2", "snow",
                         "spiff", "spiff_2", "sunset"}
# tuxpaint-data: the photo templates and the photo backgrounds of two starters. Left out:
# mossy_bark (grey bark: the colour check finds it grey) and every other starter (drawings,
# frames, maps, grids).
TUXPAINT_TEMPLATES = (
    "burnt_bark", "cliff", "corn_maze", "jellyfish", "lighthouse", "mossy_log",
    "mudstone", "ocean_splash", "ocean_waves", "redwoods_above", "rocks", "sheep", "spiders_web",
    "sun_behind_clouds", "sun_behind_leaves", "trees_above", "trees_at_dusk", "wool_mill_machine",
)
# starter background -> the credit file next to it (both NOAA photos, public domain)
TUXPAINT_STARTER_BACKS = {
    "reef-back.png": "reef.txt",
    "skyline-sf-dusk-back.jpeg": "skyline-sf-dusk.txt",
}
# lxqt-themes wallpapers: the photographs. Left out: origami / triangle / wave / logo artwork
# (kde-plasma, lxqt-origami-green, origami-*, plasma-logo-*, plasma_arch, simple_blue_widescreen,
# triangles*, waves-*).
LXQT_PHOTOS = (
    "Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png",
    "beam.png", "butterfly.png", "cloud.png", "drop.png", "flowers.png", "fog.jpg",
    "this-is-not-windows.jpg",
)
# Photographer credits of upstream's wallpapers/License (the other three are not named there).
LXQT_CREDITED = {"beam", "flowers", "butterfly", "fog", "this-is-not-windows", "appleflower",
                 "after-the-rain", "drop"}

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

# --- scenes and the split -------------------------------------------------------------------------

# Photos of one monument, place or event, by output file stem. A photo in no group is a
# scene of its own.
SCENE_GROUPS = {
    "paris-eiffel-tower": ("gcompris_explore_monuments_eiffelTower", "gcompris_details_TourEiffel"),
    # the Arc du Carrousel stands in the Louvre's courtyard
    "paris-louvre": ("gcompris_details_Louvre_2007_02_24_c", "gcompris_categorization_arcDeTriomphe"),
    "agra-taj-mahal": ("gcompris_explore_monuments_tajMahal", "gcompris_details_TajMahal"),
    "great-wall": ("gcompris_explore_monuments_greatWallofChina", "gcompris_categorization_greatWall"),
    # all of Egypt's pyramids (Giza, Dahshur, Meidum) in one scene: alike to the eye
    "egypt-pyramids": ("gcompris_details_GizahPyramids", "gcompris_explore_monuments_greatPyramidOfGiza",
                       "gcompris_explore_monuments_bentPyramid", "gcompris_explore_monuments_redPyramid",
                       "gcompris_explore_monuments_meidumPyramid"),
    "chenonceau": ("gcompris_details_Chenonceau", "gcompris_explore_monuments_chateaudeChenonceau"),
    "sydney-opera": ("gcompris_details_OperaSidney", "gcompris_categorization_operaHouse"),
    "statue-of-liberty": ("gcompris_explore_monuments_statueofLiberty",
                          "gcompris_categorization_statueOfLiberty"),
    "mount-rushmore": ("gcompris_explore_monuments_mountRushmore", "gcompris_categorization_mountRushmore"),
    "qutub-minar": ("gcompris_explore_monuments_qutubMinar", "gcompris_categorization_kutubMinar"),
    "trier": ("gcompris_explore_monuments_aulaPalatina", "gcompris_explore_monuments_trierImperialBaths"),
    "baia-underwater": ("gcompris_clickgame_sea1", "gcompris_clickgame_sea2"),
    "wagbachniederung": ("gcompris_erase_gosling", "gcompris_erase_heron"),
    "windmill-linda": ("gcompris_categorization_windmill9", "gcompris_categorization_windmill14"),
    "louis-braille": tuple(f"gcompris_louis-braille_{p}" for p in
                           ("fireplace", "rnib", "statue", "teach", "workshop")),
    "grand-canyon": ("scratch_grand-canyon", "kphotoalbum_grand_canyon_1", "kphotoalbum_grand_canyon_2",
                     "kphotoalbum_grand_canyon_3"),
    "boston-waterfront": ("scratch_city-with-water", "scratch_city-with-water2"),
    "scratch-movies": ("scratch_the-movies", "scratch_the-movies-inside"),
    "scratch-basketball-court1": ("scratch_basketball-court1-a", "scratch_basketball-court1-b"),
    "scratch-train-tracks": ("scratch_train-tracks1", "scratch_train-tracks2"),
    "scratch-brick-wall": ("scratch_brick-wall2", "scratch_brick-wall-and-stairs"),
    "scratch-township": ("scratch_houses", "scratch_village"),
    # KPhotoAlbum's events (index.xml labels; anne_helene and cold_water were taken at Skagen
    # the same day)
    "kpa-skagen": ("kphotoalbum_skagen", "kphotoalbum_skagen_2", "kphotoalbum_cold_water",
                   "kphotoalbum_anne_helene"),
    "kpa-bar55": ("kphotoalbum_bar55", "kphotoalbum_bar55_2"),
    "kpa-pool": ("kphotoalbum_pool", "kphotoalbum_pool_2"),
    "kpa-jesper": ("kphotoalbum_jesper", "kphotoalbum_jesper_2"),
    "kpa-donna": ("kphotoalbum_donna", "kphotoalbum_donna_2"),
    "kpa-spiff": ("kphotoalbum_spiff", "kphotoalbum_spiff_2"),
    "kpa-new-wave": ("kphotoalbum_new_wave_1", "kphotoalbum_new_wave_2"),
    "tux-ocean": ("tuxpaint_ocean_splash", "tuxpaint_ocean_waves"),
    "tux-trees-above": ("tuxpaint_redwoods_above", "tuxpaint_trees_above"),
    "lxqt-hills": ("lxqt_fog", "lxqt_this-is-not-windows"),
    "lxqt-mountain-sky": ("lxqt_beam", "lxqt_after-the-rain"),
}
# The validation scenes, chosen for variety: textured facades and stone, animals in grass /
# snow / rock, underwater, people (music scenes), indoor rooms and machines, skies and fields.
# No KPhotoAlbum scene is here: the same people recur across that album's events, so all of
# it stays in train/.
VAL_SCENES = (
    # the six validation photos of the first photo set
    "skimage_astronaut", "skimage_chelsea", "skimage_coffee", "skimage_rocket",
    "sklearn_china", "sklearn_flower",
    # gcompris: buildings
    "gcompris_explore_monuments_hawaMahal", "gcompris_explore_monuments_konarkSunTemple",
    "gcompris_explore_monuments_pontduGard", "gcompris_explore_monuments_schwerinPalace",
    "gcompris_explore_monuments_petra", "gcompris_explore_monuments_navajo",
    "gcompris_explore_monuments_citedeCarcassonne", "gcompris_details_EilanDonanCastle",
    "gcompris_details_TowerBridgeLondon",
    # gcompris: animals and nature
    "gcompris_erase_cheetah", "gcompris_erase_meerkats", "gcompris_erase_goat", "gcompris_erase_crab",
    "gcompris_explore_world_animals_hedgehog", "gcompris_explore_world_animals_polar_bear",
    "gcompris_explore_farm_animals_sheep", "gcompris_explore_farm_animals_chicken",
    "gcompris_clickgame_sea4",
    # gcompris: people
    "gcompris_explore_world_music_italy", "gcompris_explore_world_music_japan",
    "gcompris_explore_world_music_mexico", "gcompris_explore_world_music_orchestra",
    # scratch: indoor, streets, nature
    "scratch_hall", "scratch_kitchen", "scratch_clothing-store", "scratch-movies",
    "scratch_water-and-rocks", "scratch_garden-rock", "scratch_forest", "scratch-brick-wall",
    "scratch_route66", "scratch_baseball-field",
    # tuxpaint: textures and a machine
    "tuxpaint_rocks", "tuxpaint_wool_mill_machine", "tuxpaint_sheep", "tuxpaint_corn_maze",
    "tuxpaint_lighthouse",
    # lxqt: flowers, sky, fields
    "lxqt_flowers", "lxqt_cloud", "lxqt-hills",
)


def scene_of(stem: str) -> str:
    """The scene of a photo (by output file stem): its group in SCENE_GROUPS, else itself."""
    for scene, members in SCENE_GROUPS.items():
        if stem in members:
            return scene
    return stem


def split_of(scene: str) -> str:
    return "val" if scene in VAL_SCENES else "train"


def planned_stems() -> list[str]:
    """Output file stems of every listed photo, in build order (what the lists promise)."""
    stems = [f"mate_{n}" for n in MATE_NATURE] + [f"plasma_{n}" for n in PLASMA_PHOTOS]
    stems += [f"opencv_{Path(r).stem}" for r in OPENCV_PHOTOS]
    stems += [gcompris_stem(a, r) for a, rels in GCOMPRIS_PHOTOS.items() for r in rels]
    stems += [f"scratch_{Path(r).name}" for r in SCRATCH_PHOTOS]
    stems += [f"kphotoalbum_{n}" for n in KPHOTOALBUM_PHOTOS]
    stems += [f"tuxpaint_{n}" for n in TUXPAINT_TEMPLATES]
    stems += [f"tuxpaint_{Path(n).stem}" for n in TUXPAINT_STARTER_BACKS]
    stems += [f"lxqt_{Path(n).stem}" for n in LXQT_PHOTOS]
    stems += [f"skimage_{Path(n).stem}" for n in SKIMAGE_PHOTOS]
    stems += [f"sklearn_{Path(n).stem}" for n in SKLEARN_PHOTOS]
    return stems


def gcompris_stem(activity: str, rel: str) -> str:
    return f"gcompris_{activity}_{Path(rel).stem.removesuffix('_background')}"


def check_lists(stems: list[str]) -> list[str]:
    """Problems of the fixed lists themselves: repeated names, unknown group members / val scenes."""
    problems = [f"{s} is listed twice" for s in sorted({s for s in stems if stems.count(s) > 1})]
    known = set(stems)
    grouped: dict[str, str] = {}
    for scene, members in SCENE_GROUPS.items():
        if scene in known:
            problems.append(f"scene name {scene} is also a photo name")
        for m in members:
            if m not in known:
                problems.append(f"SCENE_GROUPS[{scene!r}] names {m}, which is not a listed photo")
            if m in grouped:
                problems.append(f"{m} is in two scene groups ({grouped[m]}, {scene})")
            grouped[m] = scene
    scenes = {scene_of(s) for s in stems}
    problems += [f"VAL_SCENES names {v}, which is no scene of a listed photo" for v in VAL_SCENES if v not in scenes]
    return problems


def check_split(assigned: list[tuple[str, str, str]], min_val: int = MIN_VAL) -> list[str]:
    """Problems of a split given (stem, scene, split) triples: a scene in both splits, too few val photos."""
    splits_of: dict[str, set[str]] = {}
    for _stem, scene, split in assigned:
        splits_of.setdefault(scene, set()).add(split)
    problems = [f"scene {s} is in both train and val" for s, sp in sorted(splits_of.items()) if len(sp) > 1]
    n_val = sum(split == "val" for _, _, split in assigned)
    if n_val < min_val:
        problems.append(f"only {n_val} validation photos (at least {min_val} wanted)")
    return problems


# --- perceptual hash --------------------------------------------------------------------------------


def phash(img) -> int:
    """63-bit DCT hash: the low 8 x 8 frequencies of a 32 x 32 grey thumbnail but the mean, above / below their median."""
    import numpy as np
    from PIL import Image

    n = 32
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    grey = np.asarray(img.convert("L").resize((n, n), Image.LANCZOS), dtype=np.float64)
    low = (basis @ grey @ basis.T)[:8, :8].flatten()[1:]  # without the mean (DC) term
    bits = low > np.median(low)
    return int("".join("1" if b else "0" for b in bits), 2)


def near_duplicates(hashes: dict[str, int], split: dict[str, str], max_bits: int = NEAR_DUPLICATE_BITS) -> list[str]:
    """Pairs of photos in different splits whose hashes differ in at most ``max_bits`` bits."""
    out = []
    for a, b in itertools.combinations(sorted(hashes), 2):
        if split[a] != split[b]:
            d = bin(hashes[a] ^ hashes[b]).count("1")
            if d <= max_bits:
                out.append(f"{a} ({split[a]}) and {b} ({split[b]}) look like the same picture ({d} bits apart)")
    return out


# --- Qt resource bundles ------------------------------------------------------------------------


class RccError(ValueError):
    """A file is not a Qt binary resource bundle this reader understands."""


RCC_ZLIB, RCC_DIRECTORY, RCC_ZSTD = 0x01, 0x02, 0x04


def read_rcc(data: bytes, name: str = "bundle") -> dict[str, bytes]:
    """Every file of a Qt binary resource bundle (``rcc --binary``, format 1, 2 or 3), by resource path.

    Layout (all integers big-endian): the header is ``b"qres"``, the format version, then the
    offsets of the tree, the data and the names sections (format 3 adds a flags word). The
    tree is an array of nodes, 14 bytes each in format 1 and 22 in 2 and 3 (8 more bytes of
    modification time): name offset (u32), flags (u16); a directory (flag 0x02) then holds
    its child count and first child's node index (u32 each), a file its country and language
    (u16 each) and its data offset (u32). Node 0 is the root directory. A name is a u16 length
    in UTF-16 units, a u32 hash and the UTF-16-BE text. A file's data is a u32 length and the
    bytes; with flag 0x01 they are a u32 uncompressed length and a zlib stream; flag 0x04
    (zstd) is refused. Paths come back as ``"/dir/file"``.
    """
    def unpack(fmt: str, offset: int) -> tuple:
        try:
            return struct.unpack_from(fmt, data, offset)
        except struct.error:
            raise RccError(f"{name}: truncated (reading at byte {offset})") from None

    if data[:4] != b"qres":
        raise RccError(f"{name}: not a Qt resource bundle (no 'qres' header)")
    version, tree, payload, names = unpack(">IIII", 4)
    if version not in (1, 2, 3):
        raise RccError(f"{name}: rcc format version {version} is not supported (1 to 3 are)")
    node_size = 14 if version == 1 else 22

    def node_name(offset: int) -> str:
        (length,) = unpack(">H", names + offset)
        start = names + offset + 6
        if start + 2 * length > len(data):
            raise RccError(f"{name}: truncated (a name runs past the end)")
        return data[start:start + 2 * length].decode("utf-16-be")

    def file_bytes(path: str, flags: int, offset: int) -> bytes:
        (size,) = unpack(">I", payload + offset)
        start = payload + offset + 4
        blob = data[start:start + size]
        if len(blob) != size:
            raise RccError(f"{name}: truncated (the data of {path} runs past the end)")
        if flags & RCC_ZSTD:
            raise RccError(f"{name}: {path} is zstd-compressed, which this reader does not decode "
                           "(zlib and uncompressed entries only)")
        if not flags & RCC_ZLIB:
            return blob
        if size < 4:
            raise RccError(f"{name}: {path}: compressed entry too short")
        (expected,) = struct.unpack_from(">I", blob, 0)
        try:
            out = zlib.decompress(blob[4:])
        except zlib.error as exc:
            raise RccError(f"{name}: {path}: bad zlib data ({exc})") from None
        if len(out) != expected:
            raise RccError(f"{name}: {path}: {len(out)} bytes after decompression, header says {expected}")
        return out

    files: dict[str, bytes] = {}
    seen: set[int] = set()
    pending = [(0, "")]
    while pending:
        index, path = pending.pop()
        if index in seen:
            raise RccError(f"{name}: node {index} is reached twice (corrupt tree)")
        seen.add(index)
        base = tree + index * node_size
        if base + node_size > len(data):
            raise RccError(f"{name}: truncated (node {index} runs past the end)")
        name_offset, flags = unpack(">IH", base)
        here = path if index == 0 else f"{path}/{node_name(name_offset)}"
        if flags & RCC_DIRECTORY:
            count, first = unpack(">II", base + 6)
            if first + count > (len(data) - tree) // node_size:
                raise RccError(f"{name}: a directory points past the end of the tree")
            pending.extend((first + i, here) for i in range(count))
        else:
            _country, _language, offset = unpack(">HHI", base + 6)
            files[here] = file_bytes(here, flags, offset)
    return files


# --- credit files ---------------------------------------------------------------------------------

_CREDIT_FIELD = re.compile(r"^(Copyright|Licen[cs]e|Source|Files|Comments?)\s*:\s*(.*)$", re.IGNORECASE)
_FILE_NAME = re.compile(r"^\S+\.[A-Za-z0-9]{2,5}$")


def parse_credits(text: str) -> dict[str, dict[str, str]]:
    """gcompris' README credit files: file name -> {"copyright", "license", "source", "comment"}.

    Blocks are separated by blank lines; fields come in any order; the files of a block are
    the words after ``Files:`` and every line that is just a file name (some blocks list
    them without a ``Files:`` line). A comment that starts by naming another file
    ("x.webp is based on ...") is kept only for that file.
    """
    out: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        files: list[str] = []
        last = None
        for raw in block.splitlines():
            line = raw.strip()
            if not line:
                continue
            m = _CREDIT_FIELD.match(line)
            if m:
                key = m.group(1).lower()
                key = "license" if key.startswith("licen") else "comment" if key.startswith("comment") else key
                last = key
                if key == "files":
                    files += m.group(2).split()
                else:
                    fields[key] = m.group(2).strip()
            elif _FILE_NAME.match(line) and "://" not in line:
                files.append(line)
            elif last is not None and last != "files":
                fields[last] = f"{fields[last]} {line}"
        for f in files:
            own = dict(fields)
            named = re.match(r"(\S+\.[A-Za-z0-9]{2,5}) is\b", own.get("comment", ""))
            if named and named.group(1) != f:
                own.pop("comment")
            out[f] = own
    return out


def gcompris_credit(bundle: dict[str, bytes], activity: str, rel: str) -> Optional[tuple[str, dict[str, str]]]:
    """(README resource path, credit fields) for a photo: the nearest README up its folders that names it."""
    root = f"/gcompris/src/activities/{activity}"
    key = f"{activity}/{rel}"
    parts = Path(rel).parts
    for depth in range(len(parts) - 1, -1, -1):
        folder = "/".join(parts[:depth])
        readme = f"{root}/{folder}/README" if folder else f"{root}/README"
        if readme not in bundle:
            continue
        credits = parse_credits(bundle[readme].decode("utf-8", errors="replace"))
        inner = "/".join(parts[depth:])
        hit = credits.get(GCOMPRIS_CREDIT_ALIASES.get(key, inner))
        if hit is not None:
            return readme, hit
    return None


# --- Debian packages ------------------------------------------------------------------------------


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
    url: str = ""
    scene: str = ""
    notes: str = ""


@dataclass
class Photo:
    """A listed photo before the split: where its bytes come from and its licence record."""
    name: str                      # output file name
    data: Union[Path, bytes]       # the file to copy, or the bytes to write
    entry: Entry = field(repr=False)

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def open(self):
        from PIL import Image

        return Image.open(self.data if isinstance(self.data, Path) else io.BytesIO(self.data))


def run(cmd: list[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, check=False, capture_output=True, text=True)


def fetch_debs(work: Path, debs_dir: Optional[Path]) -> dict[str, Path]:
    """The .deb files of PACKAGES: from ``debs_dir`` or ``apt-get download`` into ``work``."""
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


def dep5_paragraph(paras: list[dict[str, str]], upstream_path: str) -> Optional[dict[str, str]]:
    """The last Files paragraph matching the path (the DEP-5 rule), or None."""
    hit = None
    for p in paras:
        if "Files" in p and any(fnmatch.fnmatchcase(upstream_path, pat) for pat in p["Files"].split()):
            hit = p
    return hit


def dep5_lookup(paras: list[dict[str, str]], upstream_path: str) -> tuple[str, str]:
    """(copyright, licence name) of the last Files paragraph matching the path (DEP-5 rule)."""
    hit = dep5_paragraph(paras, upstream_path)
    if hit is None:
        return "unknown", "unknown"
    copyright_ = " / ".join(s.strip() for s in hit.get("Copyright", "").splitlines() if s.strip())
    return copyright_, hit.get("License", "unknown").splitlines()[0].strip()


def image_problem(photo: Photo) -> Optional[str]:
    """Why a listed photo is refused (greyscale: mean chroma under 2 levels; too small), or None."""
    import numpy as np

    with photo.open() as im:
        if min(im.size) < MIN_SHORT_SIDE:
            return f"shorter side {min(im.size)} px < {MIN_SHORT_SIDE}"
        im = im.convert("RGB")
        im.thumbnail((128, 128))
        a = np.asarray(im).astype(np.float32)
    if float(np.abs(a - a.mean(axis=2, keepdims=True)).mean()) < 2.0:
        return "greyscale"
    return None


def collect_first_set(root: Path, versions: dict[str, str], dep5: dict, photos: list[Photo]) -> None:
    """mate-backgrounds, plasma-workspace-wallpapers and opencv-doc (the first photo set's train/)."""
    pkg = "mate-backgrounds"
    for name in MATE_NATURE:
        rel = f"nature/{name}.jpg"
        cr, li = dep5_lookup(dep5[pkg], rel)
        photos.append(Photo(f"mate_{name}.jpg", root / "usr/share/backgrounds/mate" / rel,
                            Entry("", "", pkg, versions[pkg], f"/usr/share/backgrounds/mate/{rel}",
                                  cr, li, f"licenses/{pkg}.copyright")))

    pkg = "plasma-workspace-wallpapers"
    for name in PLASMA_PHOTOS:
        base = root / "usr/share/wallpapers" / name
        images = sorted((base / "contents/images").glob("*x*.*")) if base.is_dir() else []

        def area(p: Path) -> int:  # the largest landscape rendition ("5120x2880.jpg" style names)
            w, _, h = p.stem.partition("x")
            return int(w) * int(h) if w.isdigit() and h.isdigit() and int(w) >= int(h) else -1

        images = [p for p in images if area(p) > 0]
        src = max(images, key=area) if images else base / "contents/images/(no landscape image)"
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
        photos.append(Photo(f"plasma_{name}{src.suffix.lower()}", src,
                            Entry("", "", pkg, versions[pkg], "/" + str(src.relative_to(root)),
                                  cr, li + meta_note, f"licenses/{pkg}.copyright; {name}/metadata.json")))

    pkg = "opencv-doc"
    examples = root / "usr/share/doc/opencv-doc/examples"
    for rel in OPENCV_PHOTOS:
        top, _, rest = rel.partition("/")
        cr, li = dep5_lookup(dep5[pkg], f"{OPENCV_UPSTREAM[top]}/{rest}")
        photos.append(Photo(f"opencv_{Path(rel).name}", examples / rel,
                            Entry("", "", pkg, versions[pkg], f"/usr/share/doc/opencv-doc/examples/{rel}",
                                  cr, li, f"licenses/{pkg}.copyright (no entry for the sample images: the catch-all 'Files: *')")))


def collect_gcompris(root: Path, version: str, dep5: list, lic: Path, photos: list[Photo], skipped: list[str]) -> None:
    pkg = "gcompris-qt-data"
    rcc_dir = root / "usr/share/gcompris-qt/rcc"
    for activity, rels in GCOMPRIS_PHOTOS.items():
        bundle_path = rcc_dir / f"{activity}.rcc"
        if not bundle_path.is_file():
            skipped += [f"{bundle_path}:{r} (no such bundle)" for r in rels]
            continue
        try:
            bundle = read_rcc(bundle_path.read_bytes(), bundle_path.name)
        except RccError as exc:
            sys.exit(f"error: {exc}")
        saved: set[str] = set()
        for rel in rels:
            res_path = f"/gcompris/src/activities/{activity}/{rel}"
            origin = f"/usr/share/gcompris-qt/rcc/{activity}.rcc:{res_path}"
            if res_path not in bundle:
                skipped.append(f"{origin} (not in the bundle any more)")
                continue
            credit = gcompris_credit(bundle, activity, rel)
            if credit is None or not credit[1].get("license") or not credit[1].get("copyright"):
                skipped.append(f"{origin} (no credit found in the bundle's README files)")
                continue
            readme, fields = credit
            readme_file = f"{pkg}{readme.removeprefix('/gcompris/src/activities').replace('/', '.')}.txt"
            if readme not in saved:  # the credit file, verbatim, next to the copyright files
                (lic / readme_file).write_bytes(bundle[readme])
                saved.add(readme)
            notes = [fields["comment"]] if fields.get("comment") else []
            alias = GCOMPRIS_CREDIT_ALIASES.get(f"{activity}/{rel}")
            if alias:
                notes.append(f"the README spells it {alias}")
            upstream = res_path.removeprefix("/gcompris/")
            for candidate in (upstream, *(str(Path(upstream).with_suffix(s)) for s in (".jpg", ".png"))):
                para = dep5_paragraph(dep5, candidate)
                if para is not None and para.get("Files", "").split() != ["*"]:
                    cr, li = dep5_lookup(dep5, candidate)
                    notes.append(f"Debian's copyright file says {li} ({cr}) for {candidate}")
                    break
            photos.append(Photo(f"{gcompris_stem(activity, rel)}{Path(rel).suffix}", bundle[res_path],
                                Entry("", "", pkg, version, origin, fields["copyright"], fields["license"],
                                      f"licenses/{readme_file} (README in {activity}.rcc)", fields.get("source", ""),
                                      notes="; ".join(notes))))


def collect_new_debian(root: Path, versions: dict[str, str], dep5: dict, lic: Path, photos: list[Photo]) -> None:
    """scratch, kphotoalbum, tuxpaint-data and lxqt-themes."""
    pkg = "scratch"
    for rel in SCRATCH_PHOTOS:
        cr, li = dep5_lookup(dep5[pkg], f"Media/Backgrounds/{rel}.jpg")
        photos.append(Photo(f"scratch_{Path(rel).name}.jpg", root / "usr/share/scratch/Media/Backgrounds" / f"{rel}.jpg",
                            Entry("", "", pkg, versions[pkg], f"/usr/share/scratch/Media/Backgrounds/{rel}.jpg",
                                  cr, li, f"licenses/{pkg}.copyright")))

    pkg = "kphotoalbum"
    demo = root / "usr/share/kphotoalbum/demo"
    angles, about = {}, {}
    if (demo / "index.xml").is_file():
        for img in ET.parse(demo / "index.xml").getroot().iter("image"):
            angles[img.get("file")] = int(img.get("angle", "0"))
            about[img.get("file")] = img.get("description", "")
        shutil.copyfile(demo / "index.xml", lic / "kphotoalbum.demo-index.xml")
    for name in KPHOTOALBUM_PHOTOS:
        src = demo / f"{name}.jpg"
        notes = [] if name in KPHOTOALBUM_NO_PEOPLE else ["identifiable people"]
        data: Union[Path, bytes] = src
        out_name = f"kphotoalbum_{name}.jpg"
        angle = angles.get(src.name, 0)
        if angle and src.is_file():
            data = upright_png(src, angle)
            out_name = f"kphotoalbum_{name}.png"
            notes.append(f"turned {angle} degrees clockwise as the album's index.xml says, saved as PNG")
        if about.get(src.name):
            notes.append(f"album description: {about[src.name]}")
        photos.append(Photo(out_name, data, Entry(
            "", "", pkg, versions[pkg], f"/usr/share/kphotoalbum/demo/{name}.jpg",
            "KPhotoAlbum authors (upstream author Jesper K. Pedersen; see the copyright file)",
            "GPL-2+ (the package's licence; the copyright file names no other for the demo album)",
            f"licenses/{pkg}.copyright; licenses/kphotoalbum.demo-index.xml",
            notes="; ".join(n for n in notes if n))))

    pkg = "tuxpaint-data"
    authors = root / "usr/share/doc/tuxpaint-data/AUTHORS.txt.gz"
    if authors.is_file():
        (lic / "tuxpaint-data.AUTHORS.txt").write_bytes(gzip.decompress(authors.read_bytes()))
    for name in TUXPAINT_TEMPLATES:
        cr, li = dep5_lookup(dep5[pkg], f"templates/{name}.jpg")
        photos.append(Photo(f"tuxpaint_{name}.jpg", root / "usr/share/tuxpaint/templates" / f"{name}.jpg",
                            Entry("", "", pkg, versions[pkg], f"/usr/share/tuxpaint/templates/{name}.jpg", cr, li,
                                  f"licenses/{pkg}.copyright; licenses/tuxpaint-data.AUTHORS.txt ('Templates')")))
    for fname, txt in TUXPAINT_STARTER_BACKS.items():
        starters = root / "usr/share/tuxpaint/starters"
        cr, li = dep5_lookup(dep5[pkg], f"starters/{fname}")
        credit = (starters / txt).read_text(encoding="utf-8", errors="replace") if (starters / txt).is_file() else ""
        lines = [ln.lstrip("# ").strip() for ln in credit.splitlines() if ln.startswith("#")]
        who = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Photographer")), "")
        if (starters / txt).is_file():
            shutil.copyfile(starters / txt, lic / f"tuxpaint-data.starters.{txt}")
        photos.append(Photo(f"tuxpaint_{fname}", starters / fname, Entry(
            "", "", pkg, versions[pkg], f"/usr/share/tuxpaint/starters/{fname}",
            f"{who}, National Oceanic & Atmospheric Administration (NOAA)" if who else "NOAA",
            "public domain (starters/" + txt + f", AUTHORS.txt); Debian's copyright file: {li} ({cr})",
            f"licenses/tuxpaint-data.starters.{txt}; licenses/tuxpaint-data.AUTHORS.txt",
            next((ln for ln in lines if ln.startswith("http")), ""),
            notes="; ".join(ln for ln in lines if ln.startswith(("Image ID", "Credit"))))))

    pkg = "lxqt-themes"
    wall = root / "usr/share/lxqt/wallpapers"
    if (wall / "License").is_file():
        shutil.copyfile(wall / "License", lic / "lxqt-themes.wallpapers-License.txt")
    for fname in LXQT_PHOTOS:
        stem = Path(fname).stem
        cr, li = dep5_lookup(dep5[pkg], f"wallpapers/{fname}")
        author = ("stefonarch (standreas@riseup.net)" if stem in LXQT_CREDITED
                  else "LXQt Project Team (no photographer named in wallpapers/License)")
        photos.append(Photo(f"lxqt_{fname}", wall / fname, Entry(
            "", "", pkg, versions[pkg], f"/usr/share/lxqt/wallpapers/{fname}", author,
            f"CC-BY-SA-3.0 (upstream wallpapers/License); Debian's copyright file: {li} ({cr})",
            f"licenses/lxqt-themes.wallpapers-License.txt; licenses/{pkg}.copyright")))


def upright_png(src: Path, angle: int) -> bytes:
    """The photo turned ``angle`` degrees clockwise, as PNG bytes (pixels unchanged otherwise)."""
    from PIL import Image

    turn = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
    if angle not in turn:
        sys.exit(f"error: {src}: unexpected rotation {angle} in index.xml")
    buf = io.BytesIO()
    with Image.open(src) as im:
        im.transpose(turn[angle]).save(buf, format="PNG")
    return buf.getvalue()


def collect_python_packages(lic: Path, photos: list[Photo]) -> None:
    import skimage
    import skimage.data
    import sklearn

    sk_dir = Path(skimage.data.__file__).parent
    for fname, (loader, author, licence) in SKIMAGE_PHOTOS.items():
        photos.append(Photo(f"skimage_{fname}", sk_dir / fname,
                            Entry("", "", "scikit-image (PyPI)", skimage.__version__, f"skimage/data/{fname}",
                                  author, licence, f"docstring of skimage.data.{loader}()")))

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
        author = re.sub(r"\s*\[\d+\]$", "", author)
        licence = "CC BY 2.0" if "licenses/by/2.0" in block else "see README"
        # the README's footnotes: [2] the photographer's page, [3] the photo
        notes = {m.group(1): m.group(2) for m in re.finditer(r"^\[(\d)\] (\S+)", block, re.MULTILINE)}
        photos.append(Photo(f"sklearn_{fname}", skl_dir / fname,
                            Entry("", "", "scikit-learn (PyPI)", sklearn.__version__, f"sklearn/datasets/images/{fname}",
                                  author, licence, "licenses/scikit-learn-images-README.txt", notes.get("3", ""),
                                  notes=f"photographer's page: {notes['2']}" if "2" in notes else "")))


def build(out: Path, debs_dir: Optional[Path]) -> tuple[list[Entry], list[str]]:
    """Collect every listed photo, check the split, then write train/, val/ and licenses/."""
    problems = check_lists(planned_stems())
    if problems:
        sys.exit("error: the fixed lists are inconsistent:\n  " + "\n  ".join(problems))
    photos: list[Photo] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="photoset-") as tmp:
        work = Path(tmp)
        lic = work / "licenses"  # moved to OUT_DIR only once the split checks pass
        lic.mkdir()
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

        collect_first_set(root, versions, dep5, photos)
        collect_gcompris(root, versions["gcompris-qt-data"], dep5["gcompris-qt-data"], lic, photos, skipped)
        collect_new_debian(root, versions, dep5, lic, photos)
        collect_python_packages(lic, photos)

        kept: list[Photo] = []
        for p in photos:
            if isinstance(p.data, Path) and not p.data.is_file():
                skipped.append(f"{p.entry.original} (not in the package any more)")
                continue
            why = image_problem(p)
            if why:
                skipped.append(f"{p.entry.original} ({why})")
                continue
            p.entry.scene = scene_of(p.stem)
            p.entry.split = split_of(p.entry.scene)
            p.entry.file = f"{p.entry.split}/{p.name}"
            kept.append(p)

        problems = check_split([(p.stem, p.entry.scene, p.entry.split) for p in kept])
        hashes = {}
        for p in kept:
            with p.open() as im:
                hashes[p.stem] = phash(im)
        problems += near_duplicates(hashes, {p.stem: p.entry.split for p in kept})
        if problems:
            sys.exit("error: the split is not clean; nothing written:\n  " + "\n  ".join(problems))

        shutil.copytree(lic, out / "licenses", dirs_exist_ok=True)
        for d in ("train", "val"):
            (out / d).mkdir(exist_ok=True)
        for p in kept:
            dst = out / p.entry.file
            if isinstance(p.data, Path):
                shutil.copyfile(p.data, dst)
            else:
                dst.write_bytes(p.data)
    return [p.entry for p in kept], skipped


def write_records(out: Path, entries: list[Entry], skipped: list[str]) -> None:
    fields = list(Entry.__dataclass_fields__)
    with open(out / "licences.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(fields)
        for e in entries:
            w.writerow([getattr(e, f) for f in fields])
    counts: dict[tuple[str, str], int] = {}
    for e in entries:
        counts[(e.source, e.split)] = counts.get((e.source, e.split), 0) + 1
    sources = list(dict.fromkeys(e.source for e in entries))
    lines = [
        "# Licences of the photo set",
        "",
        "Built by `tools/build_photoset.py` (csa-inpaint). Every file is an unmodified copy of",
        "the original in the package named below, except the KPhotoAlbum photos that the album",
        "shows turned (the notes say so). The Debian packages' copyright files and the upstream",
        "credit files are in `licenses/`, verbatim; `licences.csv` holds the same rows as this",
        "table, plus each photo's source URL, scene and notes.",
        "",
        "Notes: the GPL / LGPL / CC BY-SA photos may be redistributed only under their licences",
        "(keep this file and `licenses/` with them); CC BY and CC BY-SA require attribution to",
        "the author named in the row (with the source URL where there is one). For the Plasma",
        "wallpapers Debian's copyright file says GPL-2+ for the whole package while each",
        "wallpaper's metadata.json names its author and licence; both are recorded. Debian's",
        "opencv copyright file has no entry for the sample images, so its catch-all paragraph is",
        "what applies. gcompris' credits are the README files inside the same resource bundle as",
        "each photo (upstream's per-file list); where Debian's copyright file has an older entry",
        "for the same path it is quoted in the notes. The lxqt wallpapers: upstream's",
        "wallpapers/License says CC BY-SA 3.0, Debian's copyright file LGPL-2.1+; both recorded.",
        "The scikit-image licences are those stated in each loader's docstring.",
        "",
        "| source | train | val |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {s} | {counts.get((s, 'train'), 0)} | {counts.get((s, 'val'), 0)} |" for s in sources]
    lines += [
        f"| all | {sum(e.split == 'train' for e in entries)} | {sum(e.split == 'val' for e in entries)} |",
        "",
        "| split | file | source | version | copyright / author | licence | scene |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        lines.append(f"| {e.split} | {e.file} | {e.source} | {e.version} | {e.copyright} | {e.licence} | {e.scene} |")
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
    print(f"wrote {out}: train {n_train}, val {n_val} images "
          f"({len({e.scene for e in entries})} scenes); licences.csv, LICENSES.md, licenses/")
    by_source: dict[str, list[int]] = {}
    for e in entries:
        by_source.setdefault(e.source, [0, 0])[e.split == "val"] += 1
    for src, (t, v) in by_source.items():
        print(f"  {src}: train {t}, val {v}")
    for s in skipped:
        print(f"  skipped: {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

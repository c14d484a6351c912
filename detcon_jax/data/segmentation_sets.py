"""Semantic-segmentation data sets in their standard folder layouts (local paths or URIs).

A layout lists a split as (image file, label PNG) pairs; labels are decoded by
`decode.decode_label_png` (palette indices or grayscale values) and then mapped with the data
set's `SegmentationSet.label_map` (raw id -> train id, 255 = ignore):

* ``folder``: ``DIR/SPLIT/images/NAME.jpg|png`` + ``DIR/SPLIT/labels/NAME.png`` (CamVid as
  in ``../shared/data``).
* ``voc``: PASCAL VOC 2012, ``DIR`` = ``VOCdevkit``, ``VOCdevkit/VOC2012`` or its parent.
  Split ``S`` is the list ``VOC2012/ImageSets/Segmentation/S.txt``; images are
  ``JPEGImages/NAME.jpg``; labels are ``SegmentationClass/NAME.png`` (the devkit's palette
  PNGs), except for ``train_aug``, whose labels are ``SegmentationClassAug/NAME.png`` (the
  SBD-augmented grayscale labels of Hariharan et al. as distributed with DeepLab; 10,582
  images). A list line is either ``NAME`` or DeepLab's ``/JPEGImages/NAME.jpg
  /SegmentationClassAug/NAME.png`` (paths relative to ``VOC2012``). 21 classes, 255 (the
  object boundaries) ignored.
* ``cityscapes``: ``DIR/leftImg8bit/SPLIT/CITY/X_leftImg8bit.png`` with
  ``DIR/gtFine/SPLIT/CITY/X_gtFine_labelIds.png``; the 34 label ids are mapped to the 19
  evaluation classes (``trainId`` of cityscapesScripts' ``labels.py``), all others to 255.
* TFDS: ``cityscapes/semantic_segmentation`` (``image_left`` + ``segmentation_label``,
  which holds the same labelIds; prepared manually, never downloaded). TFDS's ``voc/2012``
  has boxes only, so VOC segmentation is read from the folders.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from detcon_jax import paths
from detcon_jax.data.sources import base

__all__ = [
    "CITYSCAPES",
    "CITYSCAPES_TRAIN_IDS",
    "LAYOUTS",
    "VOC",
    "SegmentationSet",
    "cityscapes_files",
    "folder_files",
    "label_frame",
    "segmentation_files",
    "voc_files",
]

IGNORE = 255


@dataclasses.dataclass(frozen=True)
class SegmentationSet:
    """What an evaluator needs to know about a labelled data set."""

    name: str
    class_names: tuple[str, ...]
    train_split: str
    test_split: str
    # 256-entry lookup raw label -> class id (255 = ignore); None = labels are class ids.
    label_map: tuple[int, ...] | None = None
    tfds_name: str | None = None
    tfds_splits: tuple[tuple[str, str], ...] = ()  # our split name -> the TFDS one

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tfds_split(self, split: str) -> str:
        return dict(self.tfds_splits).get(split, split)


VOC = SegmentationSet(
    "voc",
    ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
     "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
     "sheep", "sofa", "train", "tvmonitor"),
    train_split="train_aug", test_split="val")

# cityscapesScripts helpers/labels.py: label id -> trainId for the 19 evaluated classes.
_CITYSCAPES_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                   24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_TRAIN_IDS = tuple(_CITYSCAPES_IDS.get(i, IGNORE) for i in range(256))
CITYSCAPES = SegmentationSet(
    "cityscapes",
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
     "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
     "bus", "train", "motorcycle", "bicycle"),
    train_split="train", test_split="val", label_map=CITYSCAPES_TRAIN_IDS,
    tfds_name="cityscapes/semantic_segmentation", tfds_splits=(("val", "validation"),))


def _missing(what: str, path: object) -> FileNotFoundError:
    return FileNotFoundError(f"{what}: {path} does not exist")


def folder_files(data_dir: str | os.PathLike, split: str) -> tuple[list[str], list[str]]:
    """Image and label paths of ``DIR/SPLIT/{images,labels}`` (sorted by image name)."""
    root = paths.as_path(data_dir) / split
    image_dir = root / "images"
    images = sorted(p for p in image_dir.iterdir()
                    if p.suffix.lower() in base.IMAGE_EXTENSIONS) if image_dir.is_dir() else []
    if not images:
        raise FileNotFoundError(f"segmentation dataset: no images in {image_dir}")
    labels = [root / "labels" / (p.stem + ".png") for p in images]
    for label in labels:
        if not label.is_file():
            raise FileNotFoundError(f"segmentation dataset: label {label} is missing")
    return [os.fspath(p) for p in images], [os.fspath(p) for p in labels]


def _voc_root(data_dir: str | os.PathLike):
    root = paths.as_path(data_dir)
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"voc: no VOC2012/JPEGImages under {root} (expected VOCdevkit/"
                            "VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation})")


def voc_files(data_dir: str | os.PathLike, split: str) -> tuple[list[str], list[str]]:
    """Image and label paths of a PASCAL VOC 2012 segmentation split (list-file order)."""
    root = _voc_root(data_dir)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise _missing(f"voc split {split!r}", listing)
    label_dir = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
    images, labels = [], []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1:
            image = root / "JPEGImages" / f"{fields[0]}.jpg"
            label = root / label_dir / f"{fields[0]}.png"
        elif len(fields) == 2:
            image, label = (root / f.lstrip("/") for f in fields)
        else:
            raise ValueError(f"{listing}:{number}: expected NAME or 'IMAGE LABEL', got {line!r}")
        for path in (image, label):
            if not path.is_file():
                raise _missing(f"voc split {split!r} ({listing}:{number})", path)
        images.append(os.fspath(image))
        labels.append(os.fspath(label))
    if not images:
        raise ValueError(f"voc split {split!r}: {listing} lists no images")
    return images, labels


def cityscapes_files(data_dir: str | os.PathLike, split: str) -> tuple[list[str], list[str]]:
    """``leftImg8bit`` images and ``gtFine`` labelIds PNGs of a Cityscapes split (sorted)."""
    root = paths.as_path(data_dir)
    image_root = root / "leftImg8bit" / split
    if not image_root.is_dir():
        raise _missing(f"cityscapes split {split!r}", image_root)
    suffix = "_leftImg8bit.png"
    images = sorted(image_root.glob(f"*/*{suffix}"))
    if not images:
        raise FileNotFoundError(f"cityscapes: no CITY/*{suffix} under {image_root}")
    labels = [root / "gtFine" / split / p.parent.name /
              (p.name[:-len(suffix)] + "_gtFine_labelIds.png") for p in images]
    for label in labels:
        if not label.is_file():
            raise _missing("cityscapes label", label)
    return [os.fspath(p) for p in images], [os.fspath(p) for p in labels]


LAYOUTS = {"folder": folder_files, "voc": voc_files, "cityscapes": cityscapes_files}


def segmentation_files(layout: str, data_dir: str | os.PathLike,
                       split: str) -> tuple[list[str], list[str]]:
    """(images, labels) of ``split`` in one of the `LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"segmentation layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    return LAYOUTS[layout](data_dir, split)


def label_frame(label_paths: Sequence[str]) -> tuple[int, int]:
    """(max height, max width) over the label PNGs (headers only): the smallest evaluation
    frame holding every label of a split at its native resolution."""
    height = width = 0
    for path in label_paths:
        with paths.as_path(path).open("rb") as f, Image.open(f) as image:
            w, h = image.size
        height, width = max(height, h), max(width, w)
    if not height:
        raise ValueError("label_frame: no label files")
    return height, width


def label_lookup(label_map: tuple[int, ...] | None) -> np.ndarray | None:
    """The map as a uint8 ``[256]`` array (None stays None); checks its length and values."""
    if label_map is None:
        return None
    table = np.asarray(label_map)
    if table.shape != (256,) or table.min() < 0 or table.max() > 255:
        raise ValueError("label_map must have 256 entries in [0, 255]")
    return table.astype(np.uint8)

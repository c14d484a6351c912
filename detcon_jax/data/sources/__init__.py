"""Data sources behind one interface (``base.Source``): each gives its example count and this
host's shard of its examples. ``SOURCES`` maps ``config.data.source`` to its class.

A new source is a module here with a ``base.Source`` (usually ``base.ListedSource``)
subclass, registered in ``SOURCES`` (and named in ``config.DATA_SOURCES``).
"""

from __future__ import annotations

from typing import Any

from detcon_jax.data.sources.base import (
    IMAGE_EXTENSIONS,
    ListedSource,
    Shard,
    Source,
    data_dir_exists,
    example,
    file_reader,
    list_images,
)
from detcon_jax.data.sources.folder import FolderSource, class_folder_files
from detcon_jax.data.sources.imagenet_fh import ImagenetFhSource
from detcon_jax.data.sources.skimage_photos import SKIMAGE_PHOTOS, SkimageSource
from detcon_jax.data.sources.synthetic import SyntheticSource, synthetic_images
from detcon_jax.data.sources.tfds_source import TfdsSource, tfds_mask

SOURCES: dict[str, type[Source]] = {
    "imagenet_fh": ImagenetFhSource,
    "tfds": TfdsSource,
    "folder": FolderSource,
    "skimage": SkimageSource,
    "synthetic": SyntheticSource,
}


def source_class(name: str) -> type[Source]:
    """The class registered as ``name``; an unknown name is a ``ValueError`` naming it."""
    if name not in SOURCES:
        raise ValueError(f"source must be one of {tuple(SOURCES)}, got {name!r}")
    return SOURCES[name]


def from_config(data: Any, masks: Any = None) -> Source:
    """The source ``config.data`` describes (``config.masks``: which masks it loads)."""
    return source_class(data.source).from_config(data, masks)


__all__ = [
    "IMAGE_EXTENSIONS",
    "SKIMAGE_PHOTOS",
    "SOURCES",
    "FolderSource",
    "ImagenetFhSource",
    "ListedSource",
    "Shard",
    "SkimageSource",
    "Source",
    "SyntheticSource",
    "TfdsSource",
    "class_folder_files",
    "data_dir_exists",
    "example",
    "file_reader",
    "from_config",
    "list_images",
    "source_class",
    "synthetic_images",
    "tfds_mask",
]

"""Helpers of the data package's tests: config sections, batches, an image folder."""

import pathlib

import numpy as np
import tensorflow as tf
from ml_collections import ConfigDict
from scipy import ndimage

from detcon_jax.data import sources

SIZE = 96  # output side for the property tests (small: 2 shared CPU cores)

# Colours that code region ids in the alignment images (id k is painted PALETTE[k]).
PALETTE = np.array([[r, g, b] for r in (30, 140, 250) for g in (30, 140, 250)
                    for b in (30, 140, 250)], np.float32)[:12]


def decode_ids(view):
    """Nearest palette colour per pixel -> region id."""
    dist = ((view[..., None, :] * 255.0 - PALETTE) ** 2).sum(-1)
    return dist.argmin(-1)


def check_view(view, mask, radius=6):
    """Away from borders of the mask, the decoded colour id equals the mask id."""
    mask = mask[..., 0].astype(np.int64)
    interior = (ndimage.maximum_filter(mask, 2 * radius + 1) ==
                ndimage.minimum_filter(mask, 2 * radius + 1))
    assert interior.mean() > 0.2
    decoded = decode_ids(view)
    np.testing.assert_array_equal(decoded[interior], mask[interior])
    assert view.min() >= 0.0 and view.max() <= 1.0


def configs(source: str, mask_source: str = "fh", *, grid_size: int = 4, fh_index: int = 0,
            **data) -> tuple[ConfigDict, ConfigDict]:
    """``config.data`` and ``config.masks`` of a pipeline; ``data`` overrides the defaults
    (an unknown key is an error: the dicts are locked)."""
    data_config = ConfigDict(dict(
        source=source, path="", split="train", tfds_name="", image_size=224, num_examples=None,
        synthetic_num_images=64, shuffle_buffer=None, cache=False, deterministic=False,
        fh_scale=1000.0, fh_min_size=1000))
    data_config.lock()
    data_config.update(data)
    masks = ConfigDict(dict(source=mask_source, num_samples=16, max_mask_id=256,
                            grid_size=grid_size, fh_index=fh_index))
    return data_config, masks


def take_batches(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def write_folder(tmp_path: pathlib.Path, n=4, corrupt=True):
    """``images/*.jpg`` and ``labels/*.png`` of synthetic images (plus a truncated and a
    garbage image with labels when ``corrupt``); returns the images and id maps."""
    images, ids = sources.synthetic_images(n, 64, 80, seed=1)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(n):
        data = tf.io.encode_jpeg(images[i], quality=95).numpy()
        (tmp_path / "images" / f"im{i}.jpg").write_bytes(data)
        (tmp_path / "labels" / f"im{i}.png").write_bytes(tf.io.encode_png(ids[i][..., None])
                                                         .numpy())
    if corrupt:
        good = (tmp_path / "images" / "im0.jpg").read_bytes()
        (tmp_path / "images" / "truncated.jpg").write_bytes(good[: len(good) // 2])
        (tmp_path / "images" / "garbage.png").write_bytes(b"not an image at all" * 10)
        for name in ("truncated", "garbage"):
            (tmp_path / "labels" / f"{name}.png").write_bytes(
                tf.io.encode_png(ids[0][..., None]).numpy())
    return images, ids

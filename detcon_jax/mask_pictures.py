"""Pictures of masks: id maps colour-coded over images, and the "what the loss sees" panel.

Shared by the TensorBoard image summaries of a training run (``trainer``) and the picture
tool (``visualize``). Plain numpy, PIL and scikit-image on host arrays: any source of
integer id maps (FH, ground truth, grid, learned masks) draws the same way. A mask id has
the same colour (`palette`) in every picture, so the regions two views share are visible.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from skimage.segmentation import find_boundaries

__all__ = [
    "LOSS_PANEL_COLUMNS",
    "LOSS_PANEL_LEGEND",
    "fit",
    "loss_panel",
    "overlay",
    "palette",
    "with_header",
]

LOSS_PANEL_COLUMNS = ("view 1", "view 1 + mask", "view 1 loss grid",
                      "view 2", "view 2 + mask", "view 2 loss grid")
LOSS_PANEL_LEGEND = ("loss grid: the id of each feature cell; solid = id drawn in both views "
                     "(a positive), hatched = drawn in this view only (weight 0), dark = not "
                     "drawn; +k/n: k of the view's n drawn ids are shared")
_HEADER = 18
_CHAR = 6  # width in pixels of a character of PIL's default font
_HATCH = 4  # pixels per stripe of the hatching


def palette(num_ids: int = 256, seed: int = 0) -> np.ndarray:
    """Fixed random bright colours, float ``[num_ids, 3]`` in [0, 1], one per mask id."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.15, 1.0, size=(num_ids, 3))


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blends id colours into an image (float ``[H, W, 3]`` in [0, 1]) and marks borders.

    ``mask``: integer ids ``[H, W]`` (or ``[H, W, 1]``), taken modulo 256. Returns uint8
    ``[H, W, 3]``; region borders are white.
    """
    mask = np.asarray(mask).reshape(image.shape[:2]).astype(np.int64) % 256
    out = (1 - alpha) * np.asarray(image, np.float64) + alpha * palette()[mask]
    out[find_boundaries(mask, mode="inner")] = 1.0
    return _to_uint8(out)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(image) * 255 + 0.5, 0, 255).astype(np.uint8)


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """Letterboxes a uint8 image (``[H, W, 3]``, or ids ``[H, W]``: resized nearest) into a
    ``size`` x ``size`` grey tile, keeping its aspect ratio; returns uint8 ``[size, size, 3]``.
    """
    pil = Image.fromarray(np.asarray(image))
    scale = size / max(pil.size)
    resample = Image.Resampling.NEAREST if np.ndim(image) == 2 else Image.Resampling.BILINEAR
    pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
                     resample)
    tile = Image.new("RGB", (size, size), (64, 64, 64))
    tile.paste(pil, ((size - pil.width) // 2, (size - pil.height) // 2))
    return np.asarray(tile)


def _resize_ids(ids: np.ndarray, size: int) -> np.ndarray:
    """Integer id map ``[h, w]`` -> ``[size, size]`` by nearest neighbour."""
    ids = np.asarray(ids)
    rows = np.arange(size) * ids.shape[0] // size
    cols = np.arange(size) * ids.shape[1] // size
    return ids[rows[:, None], cols[None, :]]


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """float ``[H, W, 3]`` in [0, 1] -> float ``[size, size, 3]`` (bilinear)."""
    pil = Image.fromarray(_to_uint8(image)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(pil, np.float64) / 255.0


def _loss_grid(image: np.ndarray, cells: np.ndarray, ids: np.ndarray,
               other_ids: np.ndarray, size: int) -> np.ndarray:
    """The feature cells' ids over the (dimmed) view, marked by how the loss uses them."""
    cell_map = _resize_ids(cells, size).astype(np.int64) % 256
    sampled = np.isin(cell_map, ids)
    shared = sampled & np.isin(cell_map, other_ids)
    yy, xx = np.mgrid[:size, :size]
    hatch = ((xx + yy) // _HATCH) % 2 == 0
    out = 0.25 * image
    colour = 0.2 * image + 0.8 * palette()[cell_map]
    out = np.where(sampled[..., None], colour, out)
    out[sampled & ~shared & hatch] = 0.0
    out[find_boundaries(cell_map, mode="inner")] = 1.0
    tile = Image.fromarray(_to_uint8(out))
    unique, unique_other = np.unique(ids), np.unique(other_ids)
    text = f"+{np.isin(unique, unique_other).sum()}/{unique.size}"
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, 7 * len(text) + 3, 12), fill=(0, 0, 0))
    draw.text((2, 0), text, fill=(255, 255, 255))
    return np.asarray(tile)


def loss_panel(views: Sequence[np.ndarray], masks: Sequence[np.ndarray],
               cells: Sequence[np.ndarray], ids: Sequence[np.ndarray], *,
               tile: int = 128) -> np.ndarray:
    """What the loss sees, one row per image: each view, with its mask, and its loss grid.

    Args:
      views: the two augmented views, float ``[N, S, S, 3]`` in [0, 1] each.
      masks: each view's full-resolution id map, integer ``[N, S, S]`` (or ``[N, S, S, 1]``).
      cells: each view's id per feature-grid cell (the masks the loss pools over), integer
        ``[N, h, w]``.
      ids: each view's sampled mask ids, integer ``[N, R]``.
      tile: side in pixels of each picture.

    Returns:
      uint8 ``[N, tile, 6 * tile, 3]``: per image the columns `LOSS_PANEL_COLUMNS` (view 1,
      view 1 with its mask, view 1's loss grid, then the same for view 2). A loss grid
      (`LOSS_PANEL_LEGEND`) colours the cells of sampled ids, solid where the other view
      drew the same id (the region has a positive), hatched where it did not (weight 0),
      dark for ids not drawn; ``+k/n`` says how many of the view's n distinct sampled ids
      the other view also drew.
    """
    if not (len(views) == len(masks) == len(cells) == len(ids) == 2):
        raise ValueError("loss_panel: views, masks, cells and ids must have two entries each")
    num = len(views[0])
    rows = np.zeros([num, tile, len(LOSS_PANEL_COLUMNS) * tile, 3], np.uint8)
    for n in range(num):
        panels = []
        for v in (0, 1):
            image = _resize_image(np.asarray(views[v][n], np.float64), tile)
            mask = _resize_ids(np.asarray(masks[v][n]).reshape(views[v][n].shape[:2]), tile)
            panels += [_to_uint8(image), overlay(image, mask),
                       _loss_grid(image, np.asarray(cells[v][n]), np.asarray(ids[v][n]),
                                  np.asarray(ids[1 - v][n]), tile)]
        rows[n] = np.concatenate(panels, axis=1)
    return rows


def with_header(rows: np.ndarray, titles: Sequence[str], *, legend: str = "") -> np.ndarray:
    """Stacks picture rows ``[N, tile, C * tile, 3]`` under a header with a title per column
    (and an optional legend line); returns uint8 ``[header + N * tile, C * tile, 3]``."""
    num, tile, width = rows.shape[:3]
    lines = textwrap.wrap(legend, max(20, (width - 8) // _CHAR))
    header = _HEADER + 12 * len(lines)
    grid = Image.new("RGB", (width, header + num * tile), (0, 0, 0))
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((c * tile + 4, 3), title, fill=(255, 255, 255))
    for i, line in enumerate(lines):
        draw.text((4, _HEADER + 12 * i), line, fill=(200, 200, 200))
    grid.paste(Image.fromarray(np.concatenate(list(rows), axis=0)), (0, header))
    return np.asarray(grid)

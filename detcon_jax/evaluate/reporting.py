"""Segmentation reports for people: the per-class IoU table and a PNG of predictions."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from detcon_jax import paths

__all__ = ["format_iou_table", "write_predictions_png"]




def format_iou_table(per_class_iou: Mapping[str, float | None]) -> str:
    """The per-class IoU (percent) as an aligned two-column table ('-': undefined)."""
    width = max([len("class")] + [len(name) for name in per_class_iou])
    lines = [f'{"class":<{width}}  IoU (%)']
    for name, value in per_class_iou.items():
        lines.append(f'{name:<{width}}  {"-" if value is None else f"{value:6.2f}":>7}')
    return "\n".join(lines)


def _palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (spread hues), black for the ignore label."""
    import colorsys

    colours = np.zeros((256, 3), np.uint8)
    for c in range(num_classes):
        rgb = colorsys.hsv_to_rgb((c * 0.618034) % 1.0, 0.75, 0.95 if c % 2 else 0.7)
        colours[c] = np.round(255 * np.asarray(rgb))
    return colours


def write_predictions_png(path: str, images: Any, labels: Any, predictions: Any, *,
                          num_classes: int, ignore_label: int = 255) -> None:
    """One PNG (local or URI): a row per image of image | ground truth | prediction.

    Classes get fixed colours; ignored ground-truth pixels are black in both label columns
    (the prediction there is not scored).
    """
    from PIL import Image

    images = np.asarray(images, np.float32)
    labels = np.asarray(labels).astype(np.int64)
    predictions = np.asarray(predictions).astype(np.int64)
    colours = _palette(num_classes)
    ignored = (labels == ignore_label) | (labels < 0) | (labels >= num_classes)
    rows = []
    for image, label, pred, off in zip(images, labels, predictions, ignored, strict=True):
        rgb = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
        if rgb.shape[:2] != label.shape:  # labels at native resolution, image at S x S
            rgb = np.asarray(Image.fromarray(rgb).resize(label.shape[::-1], Image.BICUBIC))
        gt = colours[np.where(off, 255, label)]
        pr = colours[np.where(off, 255, np.clip(pred, 0, 255))]
        rows.append(np.concatenate([rgb, gt, pr], axis=1))
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(rows, axis=0)).save(buffer, format="PNG")
    paths.as_path(path).write_bytes(buffer.getvalue())

"""Label PNG decoding: palette indices (not colours), grayscale values, 255 passed through."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detcon_jax import data


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour map (the devkit's bit-interleaved ``labelcolormap``)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


IDS = np.array([[1, 15, 0, 255], [20, 7, 255, 0]], np.uint8)


def png(array: np.ndarray, mode: str, palette: list[int] | None = None) -> bytes:
    image = Image.fromarray(array, mode="L" if mode == "P" else None)
    if mode == "P":
        image = image.convert("P")  # keeps the values as indices
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_voc_palette_png_decodes_to_indices():
    encoded = png(IDS, "P", voc_palette())
    assert Image.open(io.BytesIO(encoded)).mode == "P"
    # What the id-map decoder (and any colour decode) makes of it: brightness, not ids.
    assert not np.array_equal(data.decode_id_png(encoded).numpy()[..., 0], IDS)
    np.testing.assert_array_equal(data.decode_label_png(encoded).numpy()[..., 0], IDS)


def test_grayscale_and_16_bit_values_inside_tf_data():
    gray = png(IDS, "L")
    wide = png(IDS.astype(np.uint16), "I;16")
    palette = png(IDS, "P", voc_palette())
    ds = tf.data.Dataset.from_tensor_slices([gray, wide, palette]).map(data.decode_label_png)
    for ids in ds.as_numpy_iterator():
        assert ids.shape == (2, 4, 1) and ids.dtype == np.uint8
        np.testing.assert_array_equal(ids[..., 0], IDS)


def test_rgb_label_png_is_an_error_naming_the_file():
    rgb = png(np.stack([IDS] * 3, -1), "RGB")
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?s)RGB.*lab_7.png"):
        data.decode_label_png(rgb, "lab_7.png")

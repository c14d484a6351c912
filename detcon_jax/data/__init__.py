"""The tf.data input pipeline (TensorFlow only; nothing under the jitted step imports it).

Modules, in import order (each imports only those above it):

* ``decode``: decoding of encoded images, id-map PNGs and label PNGs (palette indices).
* ``framing``: the cheap validity check of encoded images; `PipelineStats` counts the
  skipped ones.
* ``geometry``: crop windows, flips and resizes applied alike to an image and its mask
  (`two_views`, `one_view`).
* ``mask_sources``: the full-resolution id map of each example (``fh``, ``gt``, ``grid``,
  ``none``; Felzenszwalb on the fly).
* ``sources``: data sources behind one interface (`Source`: dataset + example count).
* ``options``: the tf.data options of every builder.
* ``pretrain``: the pre-training builder (`make_pretrain_dataset`, from ``config.data`` and
  ``config.masks``).
* ``dense``: the dense-transfer geometry (scale jitter + crop; padding to a frame).
* ``segmentation_sets``: VOC / Cityscapes / folder layouts of segmentation data sets.
* ``evaluation``: the evaluation builders.
"""

from detcon_jax.data import segmentation_sets, sources
from detcon_jax.data.decode import decode_id_png, decode_image, decode_label_png, image_shape
from detcon_jax.data.evaluation import (
    global_train_order,
    make_eval_dataset,
    make_segmentation_dataset,
    pad_batch,
)
from detcon_jax.data.framing import PipelineStats, is_valid_encoded_image, num_skipped
from detcon_jax.data.geometry import (
    center_crop_window,
    one_view,
    random_crop_window,
    two_views,
    whole_image,
)
from detcon_jax.data.mask_sources import (
    MASK_SOURCES,
    felzenszwalb_numpy,
    felzenszwalb_tf,
    grid_mask,
)
from detcon_jax.data.pretrain import (
    check_source,
    make_pretrain_dataset,
    num_examples,
    source_dataset,
)
from detcon_jax.data.sources import (
    SKIMAGE_PHOTOS,
    SOURCES,
    Source,
    class_folder_files,
    data_dir_exists,
    synthetic_images,
    tfds_mask,
)

__all__ = [
    "MASK_SOURCES",
    "SKIMAGE_PHOTOS",
    "SOURCES",
    "PipelineStats",
    "Source",
    "center_crop_window",
    "check_source",
    "class_folder_files",
    "data_dir_exists",
    "decode_id_png",
    "decode_image",
    "decode_label_png",
    "felzenszwalb_numpy",
    "felzenszwalb_tf",
    "global_train_order",
    "grid_mask",
    "image_shape",
    "is_valid_encoded_image",
    "make_eval_dataset",
    "make_pretrain_dataset",
    "make_segmentation_dataset",
    "num_examples",
    "num_skipped",
    "one_view",
    "pad_batch",
    "random_crop_window",
    "source_dataset",
    "segmentation_sets",
    "sources",
    "synthetic_images",
    "tfds_mask",
    "two_views",
    "whole_image",
]

"""The negatives / two-views ablation of DetCon-B (the review's table, issue 19), with FH or
ground-truth masks: one config per cell.

Rows (``row=``):

- ``detcon``: the official loss: negatives from every image of the global batch, the
  contrastive loss across the two views.
- ``no_all_negatives``: negatives only from the images one device holds in the official
  setting (``loss.negatives='group'``, ``negatives_group_size=32``: the global batch of
  4096 is "128x" the images of one device, as the issue's description of the official
  run puts it; the device count of the paper's runs is not stated in the paper).
- ``no_all_negatives_no_two_views``: as above and ``loss.cross_view=False`` (each network
  sees one view; positives are the same mask in that view).

``same_image_negatives=false`` additionally drops the other masks of the query's own image
from the negatives (the official ``local_negatives``), for any row.

Pre-training data: COCO train2017 (the paper's data set with both FH and human-annotated
masks; which data set the review's table used is not stated there), as
``experiments/detcon_b_coco.py``: ``masks=fh`` reads FH-masked TFRecords
(``python -m detcon_jax.fh_masks``), ``masks=gt`` the TFDS ``coco/2017_panoptic`` segments.
Hyper-parameters: the official DetCon-B ImageNet ones (base config); 1000 COCO epochs as
detcon_b_coco.py (not the paper's schedule, which is not stated for this table).

    python -m detcon_jax.train \
        --config=experiments/paper/loss_ablation.py:row=no_all_negatives,masks=gt \
        --config.data.path=/data/tensorflow_datasets --workdir=/ckpt/ablation_nan_gt

At CPU scale on CamVid: ``python -m detcon_jax.reproduce --table=ablation``.
"""

from ml_collections import config_dict

from detcon_jax import configs

ROWS = ("detcon", "no_all_negatives", "no_all_negatives_no_two_views")
DEVICE_GROUP = 32  # 4096 / 128 images: the official per-device batch (see the docstring)
COCO_TRAIN2017_IMAGES = 118287


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """``arg``: ``row=...`` (see ROWS), ``masks=fh|gt``, ``same_image_negatives=true|false``."""
    args = configs.parse_arg(arg, row=configs.Choice(*ROWS, name="row"),
                             masks=configs.Choice("fh", "gt", name="mask source"),
                             same_image_negatives=True)
    config = configs.get_config()
    config.model.num_classes = 0  # COCO images have no single label
    config.masks.source = args.masks
    config.data.source, config.data.tfds_name = (
        ("imagenet_fh", "") if args.masks == "fh" else ("tfds", "coco/2017_panoptic"))
    config.data.num_examples = COCO_TRAIN2017_IMAGES
    if args.row != "detcon":
        config.loss.negatives = "group"
        config.loss.negatives_group_size = DEVICE_GROUP
    config.loss.cross_view = args.row != "no_all_negatives_no_two_views"
    config.loss.same_image_negatives = args.same_image_negatives
    return config

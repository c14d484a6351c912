"""DetCon-B pre-training on COCO (train2017, 118,287 images), with a selectable mask source.

Hénaff et al., "Efficient Visual Pretraining with Contrastive Detection" (ICCV 2021, arXiv
2103.10957) show that the contrastive detection objective handles pre-training on scene
images such as COCO's, and study how the quality of the masks matters by comparing
spatial-heuristic (grid), Felzenszwalb-Huttenlocher (FH) and human-annotated masks. This file
sets up that pre-training with DetCon-B's official ImageNet hyper-parameters (ResNet-50,
224 px, batch 4096, LARS base learning rate 0.2 x batch/256, weight decay 1.5e-6, target EMA
0.996, temperature 0.1, 16 mask ids per view, MLPs 4096 -> 256); only the data and the masks
change between the arms, and all arms take the same number of steps:

- ``fh`` (default): FH masks precomputed once with ``python -m detcon_jax.fh_masks`` from the
  train2017 JPEG folder (``--config.data.path`` = the folder of written shards);
- ``fh_online``: the same FH setting computed in the input pipeline from the TFDS
  ``coco/2017`` images (no preprocessing, more host CPU per step);
- ``gt``: ground-truth segments from TFDS ``coco/2017_panoptic`` (every annotated object
  instance and "stuff" region, renumbered per image). TFDS's ``coco/2017`` carries boxes only,
  so the panoptic annotations are the human-annotated masks available through TFDS;
- ``grid``: 4 x 4 spatial-heuristic masks on the TFDS ``coco/2017`` images.

TFDS data sets are read from a prepared local data dir and never downloaded; set
``--config.data.path`` to that dir (empty: TFDS's default ``~/tensorflow_datasets``).

The schedule length is NOT taken from the paper: 1000 COCO epochs (28,878 steps, about the
number of images seen in 92 ImageNet epochs) is this file's default; set
``--config.num_epochs`` to match the schedule you compare against. Warm-up is derived in code
(``num_epochs // 100`` epochs). No online classifier (COCO images have no single label).

Run:

    python -m detcon_jax.fh_masks --input=/data/coco/train2017 --output=/data/coco_fh \
        --num_shards=128
    python -m detcon_jax.train --config=experiments/detcon_b_coco.py:fh \
        --config.data.path=/data/coco_fh --workdir=/ckpt/detcon_b_coco_fh

    python -m detcon_jax.train --config=experiments/detcon_b_coco.py:gt \
        --config.data.path=/data/tensorflow_datasets --workdir=/ckpt/detcon_b_coco_gt
    # likewise :grid and :fh_online (TFDS coco/2017).
"""

from ml_collections import config_dict

from detcon_jax import configs

# Mask source -> (data source, TFDS name).
ARMS = {
    "fh": ("imagenet_fh", ""),
    "fh_online": ("tfds", "coco/2017"),
    "gt": ("tfds", "coco/2017_panoptic"),
    "grid": ("tfds", "coco/2017"),
}
COCO_TRAIN2017_IMAGES = 118287


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """DetCon-B / COCO config; ``arg`` is the mask source: fh (default), fh_online, gt, grid."""
    arm = configs.parse_arg(arg, masks=configs.Choice(*ARMS, name="mask source")).masks
    config = configs.get_config()
    config.model.num_classes = 0
    config.masks.source = "fh" if arm == "fh_online" else arm
    config.data.source, config.data.tfds_name = ARMS[arm]
    # Fixed so that every arm takes the same steps and none has to count records.
    config.data.num_examples = COCO_TRAIN2017_IMAGES
    return config

"""DetCon-B on CamVid street scenes: small real data, sized for a CPU (half-width ResNet-18).

A laptop-scale version of the paper's mask ablation (Hénaff et al., ICCV 2021, arXiv
2103.10957, which compares spatial-heuristic, Felzenszwalb-Huttenlocher and human-annotated
masks): DetCon-B pre-training on the 367 CamVid training images (360 x 480) with one of three
mask sources, everything else fixed. It does not reproduce a number from the paper; it shows
the effect of the masks on real scene images on a CPU (measured end to end: about 6 s per
step at batch 32 on 2 shared cores, so about 2 hours for the 1,146 steps; see
docs/experiments.md), and its checkpoints feed the segmentation probe in
``detcon_jax.evaluate``.

- ``gt`` (default): the CamVid label maps (12 classes incl. "unlabelled") as masks;
- ``fh``: Felzenszwalb-Huttenlocher masks computed in the input pipeline (official ImageNet
  setting: scale 1000, min size 1000; computed once, then cached with the images);
- ``grid``: 4 x 4 spatial-heuristic masks.

Changes from the official ImageNet recipe, all for size: ResNet-18 at half width (basic
blocks, 32-64-128-256 channels), 128 px crops (a 4 x 4 feature grid), MLPs 512 -> 128,
batch 32, 100 epochs (1,146 steps; warm-up 1 epoch = 11 steps, derived in code), and target
EMA 0.99 instead of 0.996 (our choice: the target should not lag by hundreds of steps in a
run of about a thousand). LARS, base learning rate 0.2 x batch/256, weight decay 1.5e-6,
temperature 0.1 and 16 mask ids per view are the official values.

``--config.data.path`` is a CamVid-layout folder: ``images/NAME.jpg`` and
``labels/NAME.png`` (8-bit class ids).

Run:

    python -m detcon_jax.train --config=experiments/detcon_b_camvid.py:gt \
        --config.data.path=/data/camvid/train --workdir=/tmp/detcon_camvid_gt
    # likewise :fh and :grid
"""

from ml_collections import config_dict

MASK_SOURCES = ("gt", "fh", "grid")


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """DetCon-B / CamVid config; ``arg`` is the mask source: gt (default), fh or grid."""
    mask_source = arg or "gt"
    if mask_source not in MASK_SOURCES:
        raise ValueError(
            f"experiments/detcon_b_camvid.py: mask source must be one of {MASK_SOURCES}, "
            f"got {arg!r}")
    config = config_dict.ConfigDict()
    config.method = "detcon_b"
    config.seed = 0

    config.model = config_dict.ConfigDict(dict(
        depth=18,
        width_multiplier=1,
        mlp_hidden_size=512,
        projection_size=128,
        bn_decay=0.9,
        bn_epsilon=1e-5,
        dtype="float32",
        num_classes=0,
        blocks_per_group=(2, 2, 2, 2),
        channels_per_group=(32, 64, 128, 256),
    ))
    config.masks = config_dict.ConfigDict(dict(
        source=mask_source,
        num_samples=16,
        max_mask_id=256,
        grid_size=4,
        fh_index=0,
    ))
    # The official loss; its ablation switches: docs/experiments.md, "Loss ablations".
    config.loss = config_dict.ConfigDict(dict(
        temperature=0.1, negatives="global", negatives_group_size=config_dict.placeholder(int),
        same_image_negatives=True, cross_view=True))
    config.optim = config_dict.ConfigDict(dict(
        base_learning_rate=0.2,
        weight_decay=1.5e-6,
        momentum=0.9,
        trust_coefficient=1e-3,
        base_ema=0.99,
        warmup_epochs=config_dict.placeholder(int),
    ))
    config.data = config_dict.ConfigDict(dict(
        source="folder",
        path="",
        split="train",
        tfds_name="",
        image_size=128,
        # None: counted from the folder (367 for the CamVid train split).
        num_examples=config_dict.placeholder(int),
        synthetic_num_images=64,
        # The whole split.
        shuffle_buffer=512,
        cache=True,
        deterministic=False,
        fh_scale=1000.0,
        fh_min_size=1000,
    ))
    config.augment = config_dict.ConfigDict(dict(view1=None, view2=None))

    config.batch_size = 32
    config.num_epochs = 100
    config.num_steps = config_dict.placeholder(int)
    config.mesh = config_dict.ConfigDict(dict(data=-1))
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=200, keep=2))
    config.log_every_steps = 10
    return config

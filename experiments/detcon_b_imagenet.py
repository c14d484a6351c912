"""DetCon-B pre-training on ImageNet with the official hyper-parameters (ResNet-50, 224 px).

Reproduces the pre-training stage of DetCon-B from Hénaff et al., "Efficient Visual
Pretraining with Contrastive Detection" (ICCV 2021, arXiv 2103.10957): the BYOL-based variant
of the contrastive detection objective, trained on the ImageNet train split with
Felzenszwalb-Huttenlocher (FH) masks. Every value below is the one in DeepMind's released
``detcon_b_config.py``: ResNet-50 (v1), batch 4096, LARS with base learning rate 0.2 scaled by
batch/256, weight decay 1.5e-6, trust coefficient 1e-3, momentum 0.9, target EMA 0.996 with
the cosine schedule, temperature 0.1, 16 mask ids per view, projector/predictor MLPs
4096 -> 256, FH setting 0 of the records, an online linear classifier on stop-gradient
features (1000 classes). The released config defaults to 100 epochs; this file defaults to
1000, the schedule length of the BYOL and SimCLR ImageNet baselines, and takes any other
length from the command line.
Warm-up (``num_epochs // 100`` epochs) and total steps are derived in code from the epochs,
the batch and the 1,281,167 training images, exactly as the official config does.

Only pre-training is reproduced here; the paper's transfer results (detection, segmentation)
need the downstream fine-tuning protocols, which are not part of this file.

Run (data: official-layout TFRecords with FH masks, see docs/experiments.md):

    python -m detcon_jax.train --config=experiments/detcon_b_imagenet.py \
        --config.data.path=/data/imagenet_fh --workdir=/ckpt/detcon_b_1000ep

    # 300 or 100 epochs: append --config.num_epochs=300 (warm-up becomes 3 or 1 epochs).
    # Spatial-heuristic (grid) masks instead of FH, same data: --config=...detcon_b_imagenet.py:grid

On a TPU pod or GPU cluster use launch/tpu_pod.sh or launch/gpu_slurm.sbatch with the same
``--config``/``--workdir`` and overrides (launch/README.md).
"""

from ml_collections import config_dict

MASK_SOURCES = ("fh", "grid")


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """DetCon-B / ImageNet config; ``arg`` picks the mask source: ``fh`` (default) or ``grid``."""
    mask_source = arg or "fh"
    if mask_source not in MASK_SOURCES:
        raise ValueError(
            f"experiments/detcon_b_imagenet.py: mask source must be one of {MASK_SOURCES}, "
            f"got {arg!r}")
    config = config_dict.ConfigDict()
    config.method = "detcon_b"
    config.seed = 0

    config.model = config_dict.ConfigDict(dict(
        depth=50,
        width_multiplier=1,
        mlp_hidden_size=4096,
        projection_size=256,
        bn_decay=0.9,
        bn_epsilon=1e-5,
        dtype="float32",
        num_classes=1000,
        blocks_per_group=None,
        channels_per_group=None,
    ))
    config.masks = config_dict.ConfigDict(dict(
        source=mask_source,
        num_samples=16,
        max_mask_id=256,
        # 4 x 4 cells: the paper's spatial-heuristic masks.
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
        base_ema=0.996,
        # None: num_epochs // 100 epochs, the official config's effective warm-up.
        warmup_epochs=config_dict.placeholder(int),
    ))
    config.data = config_dict.ConfigDict(dict(
        source="imagenet_fh",
        # Required on the command line: the folder of train-*-of-* shards.
        path="",
        split="train",
        tfds_name="",
        image_size=224,
        # The official train_images_per_epoch: steps are known without reading any shard.
        num_examples=1281167,
        synthetic_num_images=64,
        # Per host. The official buffer is 10 x the per-host batch; 10k bounds host memory.
        shuffle_buffer=10_000,
        cache=False,
        deterministic=False,
        fh_scale=1000.0,
        fh_min_size=1000,
    ))
    # None: the official BYOL per-view augmentations.
    config.augment = config_dict.ConfigDict(dict(view1=None, view2=None))

    config.batch_size = 4096
    config.num_epochs = 1000
    config.num_steps = config_dict.placeholder(int)
    config.mesh = config_dict.ConfigDict(dict(data=-1))
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=1000, keep=3))
    config.log_every_steps = 100
    return config

"""BYOL baseline on ImageNet, trained by the same code as DetCon-B (ResNet-50, 224 px).

The paper (Hénaff et al., ICCV 2021, arXiv 2103.10957) builds DetCon-B on BYOL (Grill et
al., 2020) and compares the two. This config is DetCon-B's recipe with the contrastive
detection objective replaced by BYOL's: one whole-image "mask" per view (``masks.source =
'none'``) and BYOL's regression loss between the online prediction and the target projection.
Everything else is shared with ``detcon_b_imagenet.py`` and equals BYOL's published ImageNet
setting: batch 4096, LARS with base learning rate 0.2 x batch/256, weight decay 1.5e-6,
target EMA 0.996 (cosine), projector/predictor MLPs 4096 -> 256, the asymmetric BYOL
augmentations, 1000 epochs by default (warm-up ``num_epochs // 100`` epochs, derived in code),
and an online linear classifier on stop-gradient features for monitoring. BYOL itself warms up
for 10 epochs at every length; here warm-up follows the DetCon rule (equal at 1000 epochs;
``--config.optim.warmup_epochs=10`` gives BYOL's rule for shorter runs).

It reads the same TFRecords as DetCon-B (their FH masks are ignored), so both runs see the
same images.

Run:

    python -m detcon_jax.train --config=experiments/byol_imagenet.py \
        --config.data.path=/data/imagenet_fh --workdir=/ckpt/byol_1000ep

    # Shorter schedules: append --config.num_epochs=300.
"""

from ml_collections import config_dict

from detcon_jax import configs


def get_config() -> config_dict.ConfigDict:
    """BYOL / ImageNet config: the base with BYOL's objective."""
    config = configs.get_config()
    config.method = "byol"
    # One whole-image region per view.
    config.masks.source = "none"
    config.masks.num_samples = 1
    return config

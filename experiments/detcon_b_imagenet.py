"""DetCon-B pre-training on ImageNet with the official hyper-parameters (ResNet-50, 224 px).

Reproduces the pre-training stage of DetCon-B from Hénaff et al., "Efficient Visual
Pretraining with Contrastive Detection" (ICCV 2021, arXiv 2103.10957): the BYOL-based variant
of the contrastive detection objective, trained on the ImageNet train split with
Felzenszwalb-Huttenlocher (FH) masks. It is the base config (``detcon_jax/configs/base.py``)
as it is: every value is the one in DeepMind's released ``detcon_b_config.py``: ResNet-50
(v1), batch 4096, LARS with base learning rate 0.2 scaled by batch/256, weight decay 1.5e-6,
trust coefficient 1e-3, momentum 0.9, target EMA 0.996 with the cosine schedule, temperature
0.1, 16 mask ids per view, projector/predictor MLPs 4096 -> 256, FH setting 0 of the records,
an online linear classifier on stop-gradient features (1000 classes). The released config
defaults to 100 epochs; the base defaults to 1000, the schedule length of the BYOL and SimCLR
ImageNet baselines, and takes any other length from the command line.
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

from detcon_jax import configs


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """DetCon-B / ImageNet config; ``arg`` picks the mask source: ``fh`` (default) or ``grid``."""
    args = configs.parse_arg(arg, masks=configs.Choice("fh", "grid", name="mask source"))
    config = configs.get_config()
    config.masks.source = args.masks
    return config

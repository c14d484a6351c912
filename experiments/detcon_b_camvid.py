"""DetCon-B on CamVid street scenes: small real data, sized for a CPU (half-width ResNet-18).

A laptop-scale version of the paper's mask ablation (Hénaff et al., ICCV 2021, arXiv
2103.10957, which compares spatial-heuristic, Felzenszwalb-Huttenlocher and human-annotated
masks): DetCon-B pre-training on the 367 CamVid training images (360 x 480) with one of three
mask sources, everything else fixed. It does not reproduce a number from the paper; it shows
the effect of the masks on real scene images on a CPU (about 2 hours for the 1,146 steps on
2 cores; docs/experiments.md), and its checkpoints feed the segmentation probe in
``detcon_jax.evaluate``.

- ``gt`` (default): the CamVid label maps (12 classes incl. "unlabelled") as masks;
- ``fh``: Felzenszwalb-Huttenlocher masks computed in the input pipeline (official ImageNet
  setting: scale 1000, min size 1000; computed once, then cached with the images);
- ``grid``: 4 x 4 spatial-heuristic masks;
- ``learned``: masks discovered by the network itself (Odin-style, docs/learned_masks.md):
  k-means (K = 8, cosine, 10 iterations) of the target network's block-group-3 features
  (stride 16: an 8 x 8 grid) of the window covering both views at 128 px, carried into each
  view; the first 100 steps use the 4 x 4 grid masks. DetCon-S: add
  ``--config.method=detcon_s --config.masks.learned.network=ema`` (no target network: a
  separate EMA of the online network discovers the masks).

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
    # likewise :fh, :grid and :learned
"""

from ml_collections import config_dict

from detcon_jax import configs


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """DetCon-B / CamVid config; ``arg`` is the mask source: gt (default), fh, grid or
    learned."""
    args = configs.parse_arg(
        arg, masks=configs.Choice("gt", "fh", "grid", "learned", name="mask source"))
    config = configs.get_config()
    config.model.depth = 18
    config.model.mlp_hidden_size = 512
    config.model.projection_size = 128
    config.model.num_classes = 0
    config.model.blocks_per_group = (2, 2, 2, 2)
    config.model.channels_per_group = (32, 64, 128, 256)
    config.masks.source = args.masks
    learned = config.masks.learned
    # An 8 x 8 grid over the covering window at the cost of about one 128 px view's forward
    # (the last block group's 4 x 4 grid would leave 2 cells per cluster).
    learned.image_size = 128
    learned.layer = 3
    learned.num_clusters = 8
    learned.bootstrap_source = "grid"
    learned.bootstrap_steps = 100
    config.optim.base_ema = 0.99
    config.data.source = "folder"
    config.data.image_size = 128
    # None: counted from the folder (367 for the CamVid train split).
    config.data.num_examples = None
    # The whole split.
    config.data.shuffle_buffer = 512
    config.data.cache = True
    config.batch_size = 32
    config.num_epochs = 100
    config.checkpoint.every_steps = 200
    config.checkpoint.keep = 2
    config.log_every_steps = 10
    return config

"""Demo: DetCon-B with Felzenszwalb masks on the photos bundled with scikit-image.

A ResNet-18 at 128 px (a 4x4 feature grid), batch 8, 200 steps: a few minutes on a 2-core
CPU (docs/experiments.md), no data to download. The loss (mean over each 10 steps, logged to
the console, ``WORKDIR/metrics.jsonl`` and TensorBoard under ``WORKDIR/tensorboard``) goes
down visibly; TensorBoard's images show what the loss sees every 100 steps.

Run:
    python -m detcon_jax.train --config=experiments/demo.py --workdir=/tmp/detcon_demo
"""

from ml_collections import config_dict

from detcon_jax import configs


def get_config() -> config_dict.ConfigDict:
    """The demo: DetCon-B on the bundled photos, sized for a CPU."""
    config = configs.get_config()
    config.model.depth = 18
    config.model.mlp_hidden_size = 256
    config.model.projection_size = 64
    config.model.num_classes = 0  # the bundled photos have no labels
    # Scaled by batch/256: 8 images give the learning rate the official recipe reaches at
    # batch 4096 (0.2 x 4096/256 = 3.2); at 0.2 x 8/256 the demo would barely move.
    config.optim.base_learning_rate = 102.4
    config.optim.base_ema = 0.99
    config.data.source = "skimage"
    config.data.image_size = 128
    config.data.num_examples = None
    config.data.shuffle_buffer = 16
    config.data.cache = True  # Felzenszwalb runs once per photo
    config.data.deterministic = True
    # The bundled photos are ~512 px and a 128 px crop sees a 4x4 grid: smaller segments
    # than ImageNet's defaults give each crop several distinct regions.
    config.data.fh_scale = 200.0
    config.data.fh_min_size = 200
    config.batch_size = 8
    config.num_epochs = 178  # 9 photos -> 200 steps (1 of warm-up)
    config.checkpoint.every_steps = 100
    config.checkpoint.keep = 2
    config.log_every_steps = 10
    config.image_every_steps = 100  # TensorBoard pictures of the views and masks
    return config

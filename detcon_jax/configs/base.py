"""The base config: DetCon-B pre-training on ImageNet with the official hyper-parameters.

Every experiment starts from `get_config` and overrides only what differs (as DeepMind's
``detcon_b_config.py`` builds on its ``get_base_config()``). The values are those of the
released DetCon-B config: ResNet-50 (v1), 224 px, batch 4096, LARS with base learning rate
0.2 x batch/256, weight decay 1.5e-6, trust coefficient 1e-3, momentum 0.9, target EMA 0.996
with the cosine schedule, temperature 0.1, 16 mask ids per view, projector/predictor MLPs
4096 -> 256, FH setting 0 of the records, an online linear classifier on stop-gradient
features (1000 classes). The released config defaults to 100 epochs; the base defaults to
1000, the schedule length of the paper's ImageNet results and of the BYOL and SimCLR
baselines. Warm-up (``num_epochs // 100`` epochs) and the total steps are derived in code.

The config is returned locked: an unknown key or a value of another type is an error at the
assignment that makes it (on the command line: one line naming the key). Optional entries are
typed placeholders (``None`` until set). The range and cross-field checks are
``detcon_jax.config.validate``.

Keys:

- ``method``: ``'detcon_b' | 'detcon_s' | 'byol' | 'simclr'``; ``seed``.
- ``model``: ``depth`` (18, 34, 50, 101, 152, 200), ``width_multiplier``, ``mlp_hidden_size``,
  ``projection_size``, ``bn_decay``, ``bn_epsilon``, ``dtype`` (``'float32' | 'bfloat16'``),
  ``num_classes`` (online linear classifier on stop-gradient features; 0 = none),
  ``blocks_per_group``, ``channels_per_group`` (optional 4-tuples overriding the preset of
  ``depth``, e.g. the official TinyResNet ``(1, 1, 1, 1)``, ``(8, 8, 8, 8)``).
- ``masks``: ``source`` (``'fh' | 'gt' | 'grid' | 'none'``), ``num_samples`` (mask ids per
  view), ``max_mask_id`` (<= 256: ids are uint8), ``grid_size``, ``fh_index``;
  ``source='learned'`` (docs/learned_masks.md) reads ``learned``: ``num_clusters`` (K of
  the per-image k-means, <= ``max_mask_id``), ``iterations``, ``distance`` (``'cosine' |
  'euclidean'``), ``image_size`` (side of the covering window the discovery network sees, a
  multiple of 32), ``layer`` (the encoder's block group whose output is clustered, 1-4; 4 =
  the last), ``network`` (``'target'``: the target network, DetCon-B only; ``'ema'``: a
  separate EMA of the online network with rate ``ema_rate``, part of the TrainState;
  ``'online'``: the online network itself), ``bootstrap_steps`` (the first steps use
  ``bootstrap_source`` instead: ``'fh' | 'grid'``).
- ``loss``: ``temperature``; the paper's ablations (docs/experiments.md, "Loss
  ablations"): ``negatives`` (``'global'``: every image of the global batch, the official
  default; ``'group'``: only the images of the query's block of ``negatives_group_size``
  consecutive images, the official ``use_replicator_loss=False`` when that is the
  per-device batch), ``negatives_group_size`` (optional; set exactly when
  ``negatives='group'``, a divisor of ``batch_size``), ``same_image_negatives`` (the
  official ``local_negatives``: the other masks of the own image are negatives),
  ``cross_view`` (``False``: positives and negatives within each view, "without two
  views"). BYOL has no negatives (only ``cross_view`` applies); SimCLR has one mask per
  image (``same_image_negatives`` does not apply).
- ``optim``: ``base_learning_rate`` (scaled by batch/256), ``weight_decay``, ``momentum``,
  ``trust_coefficient``, ``base_ema``, ``warmup_epochs`` (optional).
- ``data``: ``source`` (see ``data.SOURCES``), ``path`` (data directory or URI;
  '' for none), ``split``, ``tfds_name`` ('' unless ``source='tfds'``), ``image_size``
  (multiple of 32), ``num_examples`` (optional: the data-set size used to derive steps;
  ``None`` counts the source), ``synthetic_num_images`` (size of the ``synthetic`` source),
  ``shuffle_buffer`` (optional, per host), ``cache``, ``deterministic`` (fixed element
  order: exact resume and reproducible runs), ``fh_scale``, ``fh_min_size`` (Felzenszwalb
  masks computed on the fly).
- ``augment``: ``view1``, ``view2`` (``None`` = the official settings, or a partial dict of
  ``augment.VIEW1_CONFIG``'s keys).
- ``batch_size`` (GLOBAL, over all hosts), ``num_epochs``, ``num_steps`` (optional override
  of the derived total), ``mesh`` (axis name -> size, -1 = the remaining devices),
  ``checkpoint`` (``every_steps``, ``keep``), ``tensorboard_dir`` (optional; default
  ``WORKDIR/tensorboard``), ``log_every_steps``, ``image_every_steps`` (TensorBoard
  pictures of what the loss sees: both augmented views, their masks, the feature-grid masks
  and the sampled ids; 0 = none), ``compilation_cache_dir`` (optional; JAX's
  persistent compilation cache: default ``$JAX_COMPILATION_CACHE_DIR`` when set, else
  ``~/.cache/detcon_jax/jax``; ``''`` turns it off), ``init_checkpoint`` (optional: the
  encoder to start from, see ``detcon_jax.trainer``).
"""

from __future__ import annotations

from ml_collections import config_dict

IMAGENET_TRAIN_IMAGES = 1_281_167


def _optional(value: object, kind: type) -> config_dict.FieldReference:
    """A value that may later be set to None and keeps its type for command-line overrides
    (a plain entry set to None loses it)."""
    return config_dict.FieldReference(value, field_type=kind)


def get_config() -> config_dict.ConfigDict:
    """The official DetCon-B ImageNet config, locked."""
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
        # None: the preset of `depth`.
        blocks_per_group=config_dict.placeholder(tuple),
        channels_per_group=config_dict.placeholder(tuple),
    ))
    config.masks = config_dict.ConfigDict(dict(
        source="fh",
        num_samples=16,
        max_mask_id=256,
        # 4 x 4 cells: the paper's spatial-heuristic masks.
        grid_size=4,
        fh_index=0,
        # masks.source='learned' (docs/learned_masks.md): k-means on a discovery network's
        # features of the window covering both views.
        learned=config_dict.ConfigDict(dict(
            num_clusters=8,
            iterations=10,
            distance="cosine",
            image_size=224,
            layer=4,
            network="target",
            ema_rate=0.99,
            bootstrap_steps=1000,
            bootstrap_source="fh",
        )),
    ))
    config.loss = config_dict.ConfigDict(dict(
        temperature=0.1,
        # The paper's ablations (docs/experiments.md, "Loss ablations"); these defaults are
        # the official loss: negatives from the whole global batch, across both views.
        negatives="global",
        negatives_group_size=config_dict.placeholder(int),
        same_image_negatives=True,
        cross_view=True,
    ))
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
        # Required on the command line for the file sources: no default ties a config to
        # one machine.
        path="",
        split="train",
        tfds_name="",
        image_size=224,
        # The official train_images_per_epoch: steps are known without reading any shard.
        num_examples=_optional(IMAGENET_TRAIN_IMAGES, int),
        synthetic_num_images=64,
        # The official buffer is 10 x the per-host batch; 10k bounds host memory.
        shuffle_buffer=_optional(10_000, int),
        cache=False,
        deterministic=True,  # fixed order: exact resume (its cost is within noise)
        fh_scale=1000.0,
        fh_min_size=1000,
    ))
    # None: the official BYOL per-view augmentations. Plain None rather than a placeholder:
    # a dict set here becomes a nested ConfigDict whose entries the command line can reach.
    config.augment = config_dict.ConfigDict(dict(view1=None, view2=None))

    config.batch_size = 4096
    config.num_epochs = 1000
    config.num_steps = config_dict.placeholder(int)
    config.mesh = config_dict.ConfigDict(dict(data=-1))
    config.checkpoint = config_dict.ConfigDict(dict(every_steps=1000, keep=3))
    # TensorBoard events: None = WORKDIR/tensorboard. Any path tf.io.gfile serves (TensorFlow's
    # own GCS client writes gs:// events; a local folder keeps them off the bucket).
    config.tensorboard_dir = config_dict.placeholder(str)
    config.log_every_steps = 100
    # A picture of the step's views and masks (trainer._ImageSummaries): one small jitted
    # function every so many steps, negligible next to the steps in between.
    config.image_every_steps = 1000
    # JAX's persistent compilation cache (a resume loads the compiled step): None = the
    # environment's JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/detcon_jax/jax; '' = off.
    config.compilation_cache_dir = config_dict.placeholder(str)
    # Start from an imported encoder (online and target): a `convert haiku-to-orbax` output,
    # a training workdir or a released Haiku .npy; None = a fresh initialisation.
    config.init_checkpoint = config_dict.placeholder(str)
    config.lock()
    return config

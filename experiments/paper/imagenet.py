"""The paper's ImageNet pre-training rows: DetCon-B, DetCon-S, BYOL and SimCLR at 300 or
1000 epochs (Hénaff et al. 2021, the transfer and pre-training-efficiency tables).

Override-only over the base config (``detcon_jax/configs/base.py``, the official DetCon-B
ImageNet setting); each method changes what the matching ``experiments/*_imagenet.py``
changes, and ``epochs`` sets ``num_epochs`` (warm-up ``num_epochs // 100`` epochs and the
total steps are derived in code). ``masks`` selects DetCon's mask source (``fh``, the
paper's default, or ``grid``, its spatial-heuristic ablation; DetCon only). One row per
argument, e.g.:

    python -m detcon_jax.train --config=experiments/paper/imagenet.py:method=detcon_b,epochs=300 \
        --config.data.path=/data/imagenet_fh --workdir=/ckpt/detcon_b_300ep
    python -m detcon_jax.train --config=experiments/paper/imagenet.py:method=byol,epochs=1000 \
        --config.data.path=/data/imagenet_fh --workdir=/ckpt/byol_1000ep

The transfer commands of each row: docs/paper_tables.md.
"""

from ml_collections import config_dict

from detcon_jax import configs

METHODS = ("detcon_b", "detcon_s", "byol", "simclr")


def get_config(arg: str | None = None) -> config_dict.ConfigDict:
    """``arg``: ``method=detcon_b|detcon_s|byol|simclr``, ``epochs=1000|300``, ``masks=fh|grid``."""
    args = configs.parse_arg(arg, method=configs.Choice(*METHODS, name="method"),
                             epochs=configs.Choice("1000", "300", name="epochs"),
                             masks=configs.Choice("fh", "grid", name="mask source"))
    config = configs.get_config()
    if args.method in ("detcon_s", "simclr"):
        config = configs.simclr.apply(config)
    config.method = args.method
    config.num_epochs = int(args.epochs)
    if args.method in ("byol", "simclr"):
        if args.masks != "fh":
            raise configs.ConfigArgError(
                f"config argument {arg!r}: masks applies to DetCon only, not {args.method}")
        # One whole-image region per view.
        config.masks.source = "none"
        config.masks.num_samples = 1
    else:
        config.masks.source = args.masks
    return config

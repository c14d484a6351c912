"""Streams the features of N generated images to an on-disk cache; prints peak RSS (KiB).

``python tests/eval_rss_driver.py N CACHE_DIR``: a random low-width ResNet (one bottleneck
block per group, 2,048 output channels: 8 KB of features per image, so that holding them
in memory would show, ~160 MB for 20,000 images, twice that while concatenating) on 32 px
images from a tf.data stream of random images (nothing on disk but the features).
"""

import resource
import sys

import jax
import jax.numpy as jnp
import tensorflow as tf

from detcon_jax import model
from detcon_jax.evaluate import cache, features


def main(num: int, root: str) -> None:
    module = model.ResNet(depth=18, blocks_per_group=(1, 1, 1, 1),
                          channels_per_group=(8, 8, 8, 2048), bottleneck=True)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    backbone = features.Backbone(module, dict(variables), {})
    ds = tf.data.Dataset.range(num).map(
        lambda i: {"image": tf.random.stateless_uniform([32, 32, 3], [i, 0]),
                   "label": tf.cast(i % 10, tf.int32)}).batch(200)
    writer = cache.FeatureCache(root).entry({"n": num}).writer(0, shard_bytes=8 << 20)
    features.extract(backbone, ds, pool=True, total=num, sink=writer)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])

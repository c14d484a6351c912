"""Benchmarks of what users pay for: train-step throughput, loss memory, input and FH speed.

Usage::

  python -m detcon_jax.bench step --model=resnet50 --image_size=96 --batch_size=8 \
      [--devices=N] [--dtype=bfloat16]
  python -m detcon_jax.bench loss --batch_per_device=128 --devices=8 --num_masks=16 --dim=256
  python -m detcon_jax.bench pipeline --image_size=224 [--cache] [--data_dir=SHARDS]
  python -m detcon_jax.bench fh [--workers=N] [--data_dir=IMAGES]
  python -m detcon_jax.bench resume [--late_epoch=100]

Each measurement prints one JSON line on stdout (progress goes to stderr). Timings are the
median of ``--repeats`` runs after compilation and a warm-up run. Every line carries the
device, the JAX version and the host's 1-minute load average, because a shared machine's
numbers mean little without it.

- ``step`` (`step.bench_step`) runs the real training step (``step.make_train_step`` jitted
  by ``sharding.jit_train_step``, the path ``train.py`` uses) on a synthetic batch with the
  base config (the ImageNet DetCon-B recipe) resized by the flags.
- ``loss`` (`loss.bench_loss`) compiles the forward+backward of the memory-lean DetCon-B loss
  and of the direct port of the official formulation on a batch-sharded mesh and reports
  XLA's temporary memory for both.
- ``pipeline`` and ``fh`` (`inputs.bench_pipeline`, `inputs.bench_fh`): the tf.data
  pre-training pipeline and Felzenszwalb mask generation, on the photos bundled with
  scikit-image or on ``--data_dir`` (nothing is downloaded).

- ``resume`` (`resume.bench_resume`): seconds from start to the first batch when resuming at
  epoch 0 and late, on generated multi-shard ImageNet-FH records; ``resume_ratio`` is late
  over early.

Modules import one way: ``cli -> {step, loss, inputs, resume} -> common``.
"""

from detcon_jax.bench.cli import main
from detcon_jax.bench.inputs import bench_fh, bench_images, bench_pipeline
from detcon_jax.bench.loss import bench_loss
from detcon_jax.bench.resume import bench_resume
from detcon_jax.bench.step import MODELS, bench_step, step_config, synthetic_batch

__all__ = [
    "MODELS",
    "bench_fh",
    "bench_images",
    "bench_loss",
    "bench_pipeline",
    "bench_resume",
    "bench_step",
    "main",
    "step_config",
    "synthetic_batch",
]

"""DetCon-B loss memory and time: the memory-lean loss against the direct port, batch-sharded."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from detcon_jax.bench.common import device_info, host_info, log, median_seconds, peak_rss_mb


def _loss_inputs(global_batch: int, rois: int, dim: int, seed: int = 0
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Embeddings and FH-like mask ids (few distinct ids per image, so duplicates occur)."""
    rs = np.random.RandomState(seed)
    embeddings = [rs.normal(size=(global_batch, rois, dim)).astype(np.float32)
                  for _ in range(4)]
    ids1 = rs.randint(0, 12, size=(global_batch, rois)).astype(np.int32)
    ids2 = rs.randint(0, 12, size=(global_batch, rois)).astype(np.int32)
    return embeddings, [ids1, ids2]


def bench_loss(*, batch_per_device: int = 128, num_masks: int = 16, dim: int = 256,
               repeats: int = 3, num_chunks: int | None = None, compare_direct: bool = False,
               temperature: float = 0.1, negatives_group_size: int | None = None
               ) -> dict[str, Any]:
    """Temporary memory and time of the DetCon-B loss forward+backward, batch-sharded.

    The batch axis of the inputs is split over every visible device; gradients are taken
    w.r.t. both predictions (the targets carry none, as in training).

    Args:
      batch_per_device: images per device (the global batch is this x devices).
      num_masks: ROIs per image (R).
      dim: embedding size (D).
      repeats: timed runs of the lean loss.
      num_chunks: chunks of the lean loss; default ``auto_num_chunks`` for the mesh.
      compare_direct: also run the direct port once and report the value and gradient
        differences and its time (needs the direct port's full memory).
      temperature: softmax temperature.
      negatives_group_size: negatives from blocks of this many images only (config
        ``loss.negatives='group'``; the direct port then runs the official
        ``use_replicator_loss=False`` formulation); ``None``: the global batch.

    Returns:
      ``seconds``, ``temp_bytes``, ``direct_temp_bytes``, ``memory_ratio`` (ours / direct)
      and the problem sizes; with ``compare_direct`` also ``direct_seconds``, ``abs_diff``
      (loss values) and ``grad_max_abs_diff``.
    """
    import jax

    from detcon_jax import losses, sharding

    if repeats < 1:
        raise ValueError(f"bench loss: --repeats={repeats} must be >= 1")
    mesh = sharding.make_mesh()
    num_devices = jax.device_count()
    global_batch = batch_per_device * num_devices
    if num_chunks is None:
        num_chunks = losses.auto_num_chunks(global_batch, num_masks, num_devices=num_devices,
                                            negatives_group_size=negatives_group_size)
    shard = sharding.batch_sharding(mesh)
    embeddings, (ids1, ids2) = _loss_inputs(global_batch, num_masks, dim)
    args = [jax.device_put(x, shard) for x in (*embeddings, ids1, ids2)]

    def value_and_grad(loss_fn, **kwargs):
        def f(p1, p2, t1, t2, i1, i2):
            return jax.value_and_grad(
                lambda a, b: loss_fn(a, b, t1, t2, i1, i2, i1, i2, temperature=temperature,
                                     negatives_group_size=negatives_group_size,
                                     **kwargs), argnums=(0, 1))(p1, p2)
        return jax.jit(f, in_shardings=(shard,) * 6)

    log(f"loss: B_global={global_batch} ({num_devices} devices x {batch_per_device}), "
         f"R={num_masks}, D={dim}, negatives group {negatives_group_size or 'global'}, "
         f"{num_chunks} chunk(s): compiling")
    lean = value_and_grad(losses.detcon_b_loss, num_chunks=num_chunks)
    direct = value_and_grad(losses.detcon_b_loss_reference)
    start = time.perf_counter()
    lean_compiled = lean.lower(*args).compile()
    compile_s = time.perf_counter() - start
    direct_compiled = direct.lower(*args).compile()
    lean_mem = lean_compiled.memory_analysis()
    direct_mem = direct_compiled.memory_analysis()

    def run():
        return jax.block_until_ready(lean_compiled(*args))

    log(f"loss: compiled in {compile_s:.1f}s; timing {repeats} run(s) after a warm-up")
    value, grads = run()
    seconds, times, cpu_s = median_seconds(run, repeats)
    result: dict[str, Any] = {
        "name": "detcon_b_loss", "batch_per_device": batch_per_device,
        "global_batch": global_batch, "num_masks": num_masks, "dim": dim,
        "num_chunks": num_chunks, "negatives_group_size": negatives_group_size,
        "seconds": seconds, "run_s": times, "cpu_s": cpu_s,
        "compile_s": compile_s,
        "loss": float(value),
        "temp_bytes": int(lean_mem.temp_size_in_bytes),
        "direct_temp_bytes": int(direct_mem.temp_size_in_bytes),
        "memory_ratio": lean_mem.temp_size_in_bytes / max(direct_mem.temp_size_in_bytes, 1),
        "argument_bytes": int(lean_mem.argument_size_in_bytes),
        "peak_rss_mb": peak_rss_mb(), **device_info(), **host_info(),
    }
    if compare_direct:
        log("loss: running the direct port once")
        start = time.perf_counter()
        direct_value, direct_grads = jax.block_until_ready(direct_compiled(*args))
        result["direct_seconds"] = time.perf_counter() - start
        result["abs_diff"] = abs(float(value) - float(direct_value))
        result["grad_max_abs_diff"] = max(
            float(jax.numpy.max(jax.numpy.abs(a - b)))
            for a, b in zip(grads, direct_grads, strict=True))
    return result

"""Train-step throughput: the real DetCon-B step on a synthetic batch, as ``train.py`` runs it."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from detcon_jax import config as config_lib
from detcon_jax import configs
from detcon_jax.bench.common import device_info, host_info, log, median_seconds, peak_rss_mb

# --model -> (depth, blocks_per_group, channels_per_group). ``tiny`` is the official
# TinyResNet shape (one basic block of 8 channels per group), for smoke runs.
MODELS: dict[str, tuple[int, tuple[int, ...] | None, tuple[int, ...] | None]] = {
    "tiny": (18, (1, 1, 1, 1), (8, 8, 8, 8)),
    "resnet18": (18, None, None),
    "resnet34": (34, None, None),
    "resnet50": (50, None, None),
    "resnet101": (101, None, None),
    "resnet152": (152, None, None),
    "resnet200": (200, None, None),
}


MASKS = ("fh", "learned")


def step_config(*, model: str = "resnet50", image_size: int = 96, batch_size: int = 8,
                dtype: str = "float32", num_masks: int = 16,
                mlp_hidden_size: int | None = None, projection_size: int | None = None,
                num_classes: int | None = None, masks: str = "fh") -> Any:
    """The base config (the ImageNet DetCon-B recipe) with the benchmark's model, size, batch
    and dtype, on synthetic data.

    ``masks``: ``'fh'`` (the batch's masks) or ``'learned'`` (discovered in the step from a
    covering window of the views' size, ``masks.learned`` defaults, no bootstrap steps).

    Everything not named here (LARS, schedules, temperature, heads, the 1000-class online
    classifier) stays as in the recipe, so the step does the official step's math.
    """
    if model not in MODELS:
        raise ValueError(f"bench step: --model must be one of {sorted(MODELS)}, got {model!r}")
    depth, blocks, channels = MODELS[model]
    overrides = {
        "model.depth": depth, "model.blocks_per_group": blocks,
        "model.channels_per_group": channels, "model.dtype": dtype,
        "masks.source": "fh", "masks.num_samples": num_masks,
        "data.source": "synthetic", "data.path": "", "data.image_size": image_size,
        "batch_size": batch_size,
    }
    if masks not in MASKS:
        raise ValueError(f"bench step: --masks must be one of {MASKS}, got {masks!r}")
    if masks == "learned":
        overrides.update({"masks.source": "learned", "masks.learned.bootstrap_steps": 0,
                          "masks.learned.image_size": image_size})
    for key, value in (("model.mlp_hidden_size", mlp_hidden_size),
                       ("model.projection_size", projection_size),
                       ("model.num_classes", num_classes)):
        if value is not None:
            overrides[key] = value
    config = configs.apply_overrides(configs.get_config(), overrides)
    config_lib.validate(config)
    return config


def synthetic_batch(batch_size: int, image_size: int, *, num_classes: int, seed: int = 0,
                    cover_size: int | None = None) -> dict[str, np.ndarray]:
    """A host batch with the pipeline's layout: random images and blocky segmentations.

    Segments are 16 x 16 px blocks with random uint8 ids (several per feature cell), so
    mask sampling and pooling see realistic, non-trivial masks. ``cover_size``: add the
    learned masks' covering window (random pixels) and both views' boxes and flips in it.
    """
    rs = np.random.RandomState(seed)
    blocks = -(-image_size // 16)

    def segmentation():
        ids = rs.randint(0, 256, size=(batch_size, blocks, blocks), dtype=np.uint8)
        seg = np.repeat(np.repeat(ids, 16, axis=1), 16, axis=2)[:, :image_size, :image_size]
        return seg[..., None]

    batch = {
        "view1": rs.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
        "view2": rs.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
        "mask1": segmentation(),
        "mask2": segmentation(),
        "label": rs.randint(0, max(num_classes, 1), size=(batch_size,)).astype(np.int32),
    }
    if cover_size is not None:
        batch["cover"] = rs.uniform(size=(batch_size, cover_size, cover_size, 3)).astype(
            np.float32)
        for v in (1, 2):
            top_left = rs.uniform(0, 0.4, size=(batch_size, 2))
            batch[f"cover_box{v}"] = np.concatenate(
                [top_left, np.full_like(top_left, 0.6)], -1).astype(np.float32)
            batch[f"cover_flip{v}"] = rs.randint(0, 2, size=(batch_size,)).astype(np.int32)
    return batch


def bench_step(*, model: str = "resnet50", image_size: int = 96, batch_size: int = 8,
               dtype: str = "float32", num_masks: int = 16, steps_per_run: int = 1,
               repeats: int = 5, mlp_hidden_size: int | None = None,
               projection_size: int | None = None, num_classes: int | None = None,
               compile_only: bool = False, masks: str = "fh") -> dict[str, Any]:
    """Images/s of the DetCon-B train step as ``train.py`` runs it, on all visible devices.

    Args:
      model: a key of `MODELS`.
      image_size: square input size (a multiple of 32).
      batch_size: global batch (a multiple of the device count).
      dtype: compute dtype, ``'float32'`` or ``'bfloat16'``.
      num_masks: mask ids sampled per view.
      steps_per_run: steps per timed run (the state feeds back, buffers donated).
      repeats: timed runs; the reported rate is from their median.
      mlp_hidden_size, projection_size, num_classes: override the recipe's heads.
      compile_only: stop after compiling (memory and compile time only; no ``img_per_s``).
      masks: ``'fh'`` or ``'learned'`` (see `step_config`).

    Returns:
      ``img_per_s``, ``step_s``, ``cpu_s_per_step`` (process CPU time), ``compile_s``
      (trace + lower + compile), ``first_step_s`` (the first call after compilation),
      ``temp_bytes``/``argument_bytes``/``output_bytes`` (XLA's memory analysis of the
      compiled step, per device), ``peak_rss_mb`` and device/host information.
    """
    import jax

    from detcon_jax import sharding
    from detcon_jax import step as step_lib

    config = step_config(model=model, image_size=image_size, batch_size=batch_size,
                         dtype=dtype, num_masks=num_masks, mlp_hidden_size=mlp_hidden_size,
                         projection_size=projection_size, num_classes=num_classes,
                         masks=masks)
    if batch_size % jax.device_count():
        raise ValueError(f"bench step: --batch_size={batch_size} is not divisible by the "
                         f"{jax.device_count()} devices")
    if steps_per_run < 1 or repeats < 1:
        raise ValueError(f"bench step: --steps_per_run={steps_per_run} and --repeats={repeats} "
                         "must be >= 1")
    mesh = sharding.make_mesh()
    schedules = step_lib.make_schedules(config, total_steps=10_000, warmup_steps=100)
    optimizer = step_lib.make_optimizer(config, schedules)
    log(f"step: {model} {image_size}px batch {batch_size} {dtype} on "
         f"{jax.device_count()} device(s): initialising")
    state = sharding.create_sharded(
        lambda: step_lib.create_train_state(config, jax.random.PRNGKey(0), optimizer=optimizer),
        mesh)
    batch = sharding.global_batch(
        synthetic_batch(batch_size, image_size, num_classes=config.model.num_classes,
                        cover_size=image_size if masks == "learned" else None), mesh)
    train_step = sharding.jit_train_step(
        step_lib.make_train_step(config, schedules, optimizer, num_devices=mesh.shape["data"]),
        mesh)

    log("step: compiling")
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    result = {
        "name": "train_step", "method": "detcon_b", "model": model, "image_size": image_size,
        "batch_size": batch_size, "dtype": dtype, "num_masks": num_masks, "masks": masks,
        "compile_s": compile_s,
        # XLA's buffer assignment for the whole step, per device.
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
    }
    if compile_only:
        return {**result, "peak_rss_mb": peak_rss_mb(), **device_info(), **host_info()}

    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    first_step_s = time.perf_counter() - start
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise FloatingPointError(f"bench step: non-finite loss {loss} on the synthetic batch")

    def run():
        nonlocal state
        for _ in range(steps_per_run):
            state, m = compiled(state, batch)
        jax.block_until_ready((state, m))

    log(f"step: compiled in {compile_s:.1f}s; timing {repeats} x {steps_per_run} step(s)")
    run_s, times, cpu_s = median_seconds(run, repeats)
    step_s = run_s / steps_per_run
    return {
        **result, "img_per_s": batch_size / step_s, "step_s": step_s,
        "cpu_s_per_step": cpu_s / steps_per_run, "first_step_s": first_step_s,
        "run_s": times, "first_loss": loss,
        "peak_rss_mb": peak_rss_mb(), **device_info(), **host_info(),
    }

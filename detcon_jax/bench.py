"""Benchmarks of what users pay for: train-step throughput, loss memory, input and FH speed.

Usage::

  python -m detcon_jax.bench step --model=resnet50 --image_size=96 --batch_size=8 \
      [--devices=N] [--dtype=bfloat16]
  python -m detcon_jax.bench loss --batch_per_device=128 --devices=8 --num_masks=16 --dim=256 \
      [--negatives_group_size=N]
  python -m detcon_jax.bench pipeline --image_size=224 [--cache] [--data_dir=SHARDS]
  python -m detcon_jax.bench fh [--workers=N] [--data_dir=IMAGES]

Each measurement prints one JSON line on stdout (progress goes to stderr). Timings are the
median of ``--repeats`` runs after compilation and a warm-up run. Every line carries the
device, the JAX version and the host's 1-minute load average, because a shared machine's
numbers mean little without it.

``step`` runs the real training step (``step.make_train_step`` jitted by
``sharding.jit_train_step``, the path ``train.py`` uses) on a synthetic batch with the
ImageNet DetCon-B recipe (``experiments/detcon_b_imagenet.py``) resized by the flags.
``loss`` compiles the forward+backward of the memory-lean DetCon-B loss and of the direct
port of the official formulation on a batch-sharded mesh and reports XLA's temporary
memory for both. ``pipeline`` and ``fh`` wrap ``bench_input`` (inputs are generated from the
photos bundled with scikit-image, or read from ``--data_dir``; nothing is downloaded).

``--devices=N`` runs with N fake CPU devices: the command re-executes itself in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, since that flag
only takes effect before JAX starts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "MODELS",
    "bench_fh",
    "bench_loss",
    "bench_pipeline",
    "bench_step",
    "main",
    "step_config",
]

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

_CHILD_ENV = "DETCON_BENCH_FAKE_DEVICES"
_RECIPE = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "detcon_b_imagenet.py"


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _host_info() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def _device_info() -> dict[str, Any]:
    import jax

    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "num_devices": len(devices),
        "jax_version": jax.__version__,
    }


def _median_seconds(fn: Callable[[], Any], repeats: int
                    ) -> tuple[float, list[float], float]:
    """Median wall time of ``fn()`` (which must block until its work is done), the wall
    times, and the median CPU time of this process per run (all threads; on a shared
    machine it varies less with the load than the wall time does)."""
    times, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return statistics.median(times), times, statistics.median(cpu)


# --------------------------------------------------------------------------------------
# step
# --------------------------------------------------------------------------------------


def _load_recipe() -> Any:
    if not _RECIPE.is_file():
        raise FileNotFoundError(
            f"bench step: recipe {_RECIPE} not found (run from a source checkout of detcon_jax)")
    spec = importlib.util.spec_from_file_location("_detcon_b_imagenet_recipe", _RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def step_config(*, model: str = "resnet50", image_size: int = 96, batch_size: int = 8,
                dtype: str = "float32", num_masks: int = 16,
                mlp_hidden_size: int | None = None, projection_size: int | None = None,
                num_classes: int | None = None) -> Any:
    """The ImageNet DetCon-B recipe with the benchmark's model, size, batch and dtype.

    Everything not named here (LARS, schedules, temperature, heads, the 1000-class online
    classifier) stays as in the recipe, so the step does the official step's math.
    """
    if model not in MODELS:
        raise ValueError(f"bench step: --model must be one of {sorted(MODELS)}, got {model!r}")
    from detcon_jax import config as config_lib

    depth, blocks, channels = MODELS[model]
    config = _load_recipe()
    with config.unlocked():
        config.model.depth = depth
        config.model.blocks_per_group = blocks
        config.model.channels_per_group = channels
        config.model.dtype = dtype
        if mlp_hidden_size is not None:
            config.model.mlp_hidden_size = mlp_hidden_size
        if projection_size is not None:
            config.model.projection_size = projection_size
        if num_classes is not None:
            config.model.num_classes = num_classes
        config.masks.source = "fh"
        config.masks.num_samples = num_masks
        config.data.source = "synthetic"
        config.data.path = ""
        config.data.image_size = image_size
        config.batch_size = batch_size
    config_lib.validate(config)
    return config


def synthetic_batch(batch_size: int, image_size: int, *, num_classes: int, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """A host batch with the pipeline's layout: random images and blocky segmentations.

    Segments are 16 x 16 px blocks with random uint8 ids (several per feature cell), so
    mask sampling and pooling see realistic, non-trivial masks.
    """
    rs = np.random.RandomState(seed)
    blocks = -(-image_size // 16)

    def segmentation():
        ids = rs.randint(0, 256, size=(batch_size, blocks, blocks), dtype=np.uint8)
        seg = np.repeat(np.repeat(ids, 16, axis=1), 16, axis=2)[:, :image_size, :image_size]
        return seg[..., None]

    return {
        "view1": rs.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
        "view2": rs.uniform(size=(batch_size, image_size, image_size, 3)).astype(np.float32),
        "mask1": segmentation(),
        "mask2": segmentation(),
        "label": rs.randint(0, max(num_classes, 1), size=(batch_size,)).astype(np.int32),
    }


def bench_step(*, model: str = "resnet50", image_size: int = 96, batch_size: int = 8,
               dtype: str = "float32", num_masks: int = 16, steps_per_run: int = 1,
               repeats: int = 5, mlp_hidden_size: int | None = None,
               projection_size: int | None = None, num_classes: int | None = None,
               compile_only: bool = False) -> dict[str, Any]:
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
                         projection_size=projection_size, num_classes=num_classes)
    if batch_size % jax.device_count():
        raise ValueError(f"bench step: --batch_size={batch_size} is not divisible by the "
                         f"{jax.device_count()} devices")
    if steps_per_run < 1 or repeats < 1:
        raise ValueError(f"bench step: --steps_per_run={steps_per_run} and --repeats={repeats} "
                         "must be >= 1")
    mesh = sharding.make_mesh()
    schedules = step_lib.make_schedules(config, total_steps=10_000, warmup_steps=100)
    optimizer = step_lib.make_optimizer(config, schedules)
    _log(f"step: {model} {image_size}px batch {batch_size} {dtype} on "
         f"{jax.device_count()} device(s): initialising")
    state = sharding.create_sharded(
        lambda: step_lib.create_train_state(config, jax.random.PRNGKey(0), optimizer=optimizer),
        mesh)
    batch = sharding.global_batch(
        synthetic_batch(batch_size, image_size, num_classes=config.model.num_classes), mesh)
    train_step = sharding.jit_train_step(
        step_lib.make_train_step(config, schedules, optimizer, num_devices=mesh.shape["data"]),
        mesh)

    _log("step: compiling")
    start = time.perf_counter()
    compiled = train_step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    result = {
        "name": "train_step", "method": "detcon_b", "model": model, "image_size": image_size,
        "batch_size": batch_size, "dtype": dtype, "num_masks": num_masks,
        "compile_s": compile_s,
        # XLA's buffer assignment for the whole step, per device.
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
    }
    if compile_only:
        return {**result, "peak_rss_mb": _peak_rss_mb(), **_device_info(), **_host_info()}

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

    _log(f"step: compiled in {compile_s:.1f}s; timing {repeats} x {steps_per_run} step(s)")
    run_s, times, cpu_s = _median_seconds(run, repeats)
    step_s = run_s / steps_per_run
    return {
        **result, "img_per_s": batch_size / step_s, "step_s": step_s,
        "cpu_s_per_step": cpu_s / steps_per_run, "first_step_s": first_step_s,
        "run_s": times, "first_loss": loss,
        "peak_rss_mb": _peak_rss_mb(), **_device_info(), **_host_info(),
    }


# --------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------


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
                                     negatives_group_size=negatives_group_size, **kwargs),
                argnums=(0, 1))(p1, p2)
        return jax.jit(f, in_shardings=(shard,) * 6)

    _log(f"loss: B_global={global_batch} ({num_devices} devices x {batch_per_device}), "
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

    _log(f"loss: compiled in {compile_s:.1f}s; timing {repeats} run(s) after a warm-up")
    value, grads = run()
    seconds, times, cpu_s = _median_seconds(run, repeats)
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
        "peak_rss_mb": _peak_rss_mb(), **_device_info(), **_host_info(),
    }
    if compare_direct:
        _log("loss: running the direct port once")
        start = time.perf_counter()
        direct_value, direct_grads = jax.block_until_ready(direct_compiled(*args))
        result["direct_seconds"] = time.perf_counter() - start
        result["abs_diff"] = abs(float(value) - float(direct_value))
        result["grad_max_abs_diff"] = max(
            float(jax.numpy.max(jax.numpy.abs(a - b)))
            for a, b in zip(grads, direct_grads, strict=True))
    return result


# --------------------------------------------------------------------------------------
# pipeline, fh
# --------------------------------------------------------------------------------------


def bench_pipeline(*, image_size: int = 224, batch_size: int = 32, num_batches: int = 50,
                   threads: int | None = None, cache: bool = False,
                   data_dir: str | None = None, split: str = "train") -> dict[str, Any]:
    """Images/s of the tf.data pre-training pipeline (``bench_input.bench_pipeline``; with
    ``cache``, of its pre-processing alone, the parsed records held in memory; with
    ``data_dir``, on those ImageNet-FH shards)."""
    from detcon_jax import bench_input

    _log(f"pipeline: {image_size}px, batch {batch_size}, {num_batches} batches"
         + (", parsed records cached in memory" if cache else "")
         + (f", shards {data_dir}/{split}-*" if data_dir else ""))
    result = bench_input.bench_pipeline(batch_size=batch_size, image_size=image_size,
                                        num_batches=num_batches, threads=threads, cache=cache,
                                        data_dir=data_dir, split=split)
    return {**result, "peak_rss_mb": _peak_rss_mb(), **_host_info()}


def bench_fh(*, workers: int = 1, repeats: int = 2, data_dir: str | None = None,
             max_images: int = 20) -> dict[str, Any]:
    """Images/s of Felzenszwalb mask generation (``bench_input.bench_fh``; with ``data_dir``,
    on the first ``max_images`` images of that folder)."""
    from detcon_jax import bench_input

    what = f"up to {max_images} images of {data_dir}" if data_dir else "the bundled photos"
    _log(f"fh: {workers} worker(s), {repeats} pass(es) over {what}")
    result = bench_input.bench_fh(workers=workers, repeats=repeats, data_dir=data_dir,
                                  max_images=max_images)
    return {**result, "peak_rss_mb": _peak_rss_mb(), **_host_info()}


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.bench",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--compilation_cache", action="store_true",
                        help="allow JAX's persistent compilation cache (compile_s is then "
                        "not a cold compile)")

    step = sub.add_parser("step", parents=[common], help="DetCon-B train step throughput")
    step.add_argument("--model", default="resnet50", choices=sorted(MODELS))
    step.add_argument("--image_size", type=int, default=96)
    step.add_argument("--batch_size", type=int, default=8)
    step.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    step.add_argument("--num_masks", type=int, default=16)
    step.add_argument("--mlp_hidden_size", type=int, default=None,
                      help="default: the recipe's 4096")
    step.add_argument("--projection_size", type=int, default=None,
                      help="default: the recipe's 256")
    step.add_argument("--num_classes", type=int, default=None,
                      help="online classifier classes; default: the recipe's 1000")
    step.add_argument("--steps_per_run", type=int, default=1)
    step.add_argument("--repeats", type=int, default=5)
    step.add_argument("--compile_only", action="store_true",
                      help="report compile time and XLA memory only (no timed steps)")
    step.add_argument("--devices", type=int, default=None,
                      help="run on N fake CPU devices (re-executes in a subprocess)")

    loss = sub.add_parser("loss", parents=[common], help="DetCon-B loss memory and time on a mesh")
    loss.add_argument("--batch_per_device", type=int, default=128)
    loss.add_argument("--devices", type=int, default=8,
                      help="fake CPU devices (re-executes in a subprocess)")
    loss.add_argument("--num_masks", type=int, default=16)
    loss.add_argument("--dim", type=int, default=256)
    loss.add_argument("--num_chunks", type=int, default=None)
    loss.add_argument("--negatives_group_size", type=int, default=None,
                      help="negatives from blocks of this many images (loss.negatives='group')")
    loss.add_argument("--repeats", type=int, default=3)
    loss.add_argument("--compare_direct", action="store_true",
                      help="also run the direct port and report value/gradient differences")

    pipeline = sub.add_parser("pipeline", parents=[common],
                              help="tf.data two views + masks from JPEG bytes")
    pipeline.add_argument("--image_size", type=int, default=224)
    pipeline.add_argument("--batch_size", type=int, default=32)
    pipeline.add_argument("--num_batches", type=int, default=50)
    pipeline.add_argument("--threads", type=int, default=None,
                          help="tf.data private thread pool size (default: TensorFlow's)")
    pipeline.add_argument("--cache", action="store_true",
                          help="hold the parsed records in memory: time the pre-processing "
                          "(decode, views, masks, batching) without file reads and parsing")
    pipeline.add_argument("--data_dir", default=None,
                          help="ImageNet-FH shards to read (default: records of the bundled "
                          "photos, written to a temporary folder)")
    pipeline.add_argument("--split", default="train", help="shard prefix in --data_dir")

    fh = sub.add_parser("fh", parents=[common], help="Felzenszwalb-Huttenlocher mask generation")
    fh.add_argument("--workers", type=int, default=1)
    fh.add_argument("--repeats", type=int, default=2)
    fh.add_argument("--data_dir", default=None,
                    help="image folder to segment (default: the bundled photos)")
    fh.add_argument("--max_images", type=int, default=20,
                    help="images of --data_dir per pass")
    return parser


def _needs_reexec(devices: int | None) -> bool:
    """True when this process cannot provide ``devices`` devices (JAX reads XLA_FLAGS once)."""
    if devices is None:
        return False
    if devices < 1:
        raise ValueError(f"bench: --devices must be >= 1, got {devices}")
    if os.environ.get(_CHILD_ENV) == str(devices):
        return False  # we are the re-executed child
    import jax

    return jax.device_count() != devices


def _reexec(argv: Sequence[str], devices: int) -> int:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env[_CHILD_ENV] = str(devices)
    _log(f"re-executing with {devices} fake CPU devices")
    return subprocess.run([sys.executable, "-m", "detcon_jax.bench", *argv], env=env,
                          check=False).returncode


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}") if abs(value) < 1e4 else round(value, 1)
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one benchmark; prints its JSON line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    devices = getattr(args, "devices", None)
    if _needs_reexec(devices):
        return _reexec(argv, devices)
    if devices is not None:
        import jax

        if jax.device_count() != devices:
            raise RuntimeError(f"bench: asked for {devices} devices, JAX has "
                               f"{jax.device_count()} (XLA_FLAGS not honoured?)")
    if not args.compilation_cache:
        # compile_s must measure a real compilation, not a persistent-cache hit.
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        import jax

        jax.config.update("jax_enable_compilation_cache", False)
    if args.what == "step":
        result = bench_step(model=args.model, image_size=args.image_size,
                            batch_size=args.batch_size, dtype=args.dtype,
                            num_masks=args.num_masks, steps_per_run=args.steps_per_run,
                            repeats=args.repeats, mlp_hidden_size=args.mlp_hidden_size,
                            projection_size=args.projection_size, num_classes=args.num_classes,
                            compile_only=args.compile_only)
    elif args.what == "loss":
        result = bench_loss(batch_per_device=args.batch_per_device, num_masks=args.num_masks,
                            dim=args.dim, repeats=args.repeats, num_chunks=args.num_chunks,
                            compare_direct=args.compare_direct,
                            negatives_group_size=args.negatives_group_size)
    else:
        try:
            if args.what == "pipeline":
                result = bench_pipeline(image_size=args.image_size, batch_size=args.batch_size,
                                        num_batches=args.num_batches, threads=args.threads,
                                        cache=args.cache, data_dir=args.data_dir,
                                        split=args.split)
            else:
                result = bench_fh(workers=args.workers, repeats=args.repeats,
                                  data_dir=args.data_dir, max_images=args.max_images)
        except FileNotFoundError as e:  # a --data_dir without the data: one line, no trace
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2
    print(json.dumps({k: _round(v) for k, v in result.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

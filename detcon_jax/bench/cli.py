"""The benchmarks' command line: ``python -m detcon_jax.bench step|loss|pipeline|fh|resume ...``.

``--devices=N`` runs with N fake CPU devices: the command re-executes itself in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, since that flag
only takes effect before JAX starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from detcon_jax.bench.common import log
from detcon_jax.bench.inputs import bench_fh, bench_pipeline
from detcon_jax.bench.loss import bench_loss
from detcon_jax.bench.resume import bench_resume
from detcon_jax.bench.step import MASKS, MODELS, bench_step

DESCRIPTION = ("Benchmarks of what users pay for: train-step throughput, loss memory, input "
               "and FH speed.")
_CHILD_ENV = "DETCON_BENCH_FAKE_DEVICES"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.bench",
                                     description=DESCRIPTION)
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
    step.add_argument("--masks", default="fh", choices=MASKS,
                      help="fh: the batch's masks; learned: discovered in the step (k-means "
                           "of the target network's features of a covering window)")
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
    pipeline.add_argument("--deterministic", action="store_true",
                          help="fixed element order (data.deterministic=True)")

    resume = sub.add_parser("resume", parents=[common],
                            help="time to the first batch resuming at epoch 0 and late")
    resume.add_argument("--late_epoch", type=int, default=100)
    resume.add_argument("--num_shards", type=int, default=8)
    resume.add_argument("--per_shard", type=int, default=64)
    resume.add_argument("--batch_size", type=int, default=32)
    resume.add_argument("--image_size", type=int, default=128)
    resume.add_argument("--repeats", type=int, default=3)
    resume.add_argument("--no_index", dest="with_index", action="store_false",
                        help="no record-count index beside the shards (counted from framing)")

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
    log(f"re-executing with {devices} fake CPU devices")
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
                            compile_only=args.compile_only, masks=args.masks)
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
                                        split=args.split, deterministic=args.deterministic)
            elif args.what == "resume":
                result = bench_resume(late_epoch=args.late_epoch, num_shards=args.num_shards,
                                      per_shard=args.per_shard, batch_size=args.batch_size,
                                      image_size=args.image_size, repeats=args.repeats,
                                      with_index=args.with_index)
            else:
                result = bench_fh(workers=args.workers, repeats=args.repeats,
                                  data_dir=args.data_dir, max_images=args.max_images)
        except FileNotFoundError as e:  # a --data_dir without the data: one line, no trace
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2
    print(json.dumps({k: _round(v) for k, v in result.items()}), flush=True)
    return 0

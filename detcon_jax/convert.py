"""Command-line conversion of checkpoints: Haiku -> orbax, ours -> torchvision/detectron2.

Usage::

  python -m detcon_jax.convert haiku-to-orbax --input=released.npy --output=DIR
  python -m detcon_jax.convert official-state-to-orbax --input=STATE.npz \
      --config=experiments/X.py --workdir=DIR [--step=N]
  python -m detcon_jax.convert to-torchvision --input=SRC --output=resnet50.pth (or .npz)
  python -m detcon_jax.convert to-detectron2 --input=SRC --output=detcon_r50.pkl

``SRC`` is a training workdir (its newest checkpoint, or ``--step``), one of its checkpoint
directories, a directory written by ``haiku-to-orbax``, or a released Haiku ``.npy``. Only
the online encoder is converted.

``haiku-to-orbax`` writes ``DIR/checkpoints/0/{state,meta}`` in the format of our training
checkpoints (``detcon_jax.checkpoint.Checkpointer``), holding only the encoder as
``state['online_params']['encoder']`` and ``state['online_batch_stats']['encoder']``, plus
``DIR/encoder.json`` (structure, depth, width multiplier, source). Every evaluation CLI (and
``to-torchvision`` / ``to-detectron2``) reads ``DIR`` as it reads a training workdir; its
meta signature marks it as an import, so ``train.py`` refuses to resume from it.

``official-state-to-orbax`` turns a full official DetCon-B training state (online and
target parameters and BatchNorm state, LARS momentum; flat ``part/module/name`` keys in the
official Haiku naming, the layout of ``golden/step/init.npz``, see
``interop.train_state_from_haiku``) into ``DIR/checkpoints/N``, a training checkpoint of the
network that ``--config`` describes. ``python -m detcon_jax.train --config=... --workdir=DIR``
then resumes from it at global step ``N`` (default 0: the official ``global_step`` of the
next update; the official state does not store it), with our input stream positioned after
``N`` batches and the run key of ``config.seed``.

Every ``--input`` and ``--output`` may be a URI (``gs://bucket/...``); a bucket that cannot
be reached is reported before anything is read or written. Bad paths, configs and keys give
one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from detcon_jax import export, paths

__all__ = ["haiku_to_orbax", "load_encoder", "main", "official_state_to_orbax", "to_detectron2",
           "to_torchvision"]


class UsageError(ValueError):
    """A bad argument or path, reported as one line."""


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"[convert] {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"[convert] warning: {message}", file=sys.stderr, flush=True)


def load_encoder(source: str, *, depth: int | None = None, step: int | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Encoder ``{'params', 'batch_stats'}`` as numpy arrays, and a description, from ``source``.

    ``source``: a training workdir, checkpoint directory, ``haiku-to-orbax`` output, or a Haiku
    ``.npy`` (see the module docstring).
    """
    if not source.startswith("random:"):
        location = paths.check_reachable(source, what="--input")
        if not location.exists():
            raise UsageError(f"--input={source}: no such file or directory")
        if location.is_file() and not source.endswith(".npy"):
            raise UsageError(f"--input={source}: a file input must be a Haiku .npy checkpoint "
                         f"(directories are read as orbax checkpoints)")
    import jax  # after the path checks: a typo should not wait for JAX to start

    from detcon_jax.evaluate import features

    progress(f"reading {source}")
    backbone, info = features.load_backbone(source, depth=depth, step=step)
    variables = jax.tree.map(np.asarray, jax.device_get(dict(backbone.variables)))
    described = {k: info[k] for k in ("kind", "depth", "structure", "step") if k in info}
    progress(f'{info["kind"]} encoder: depth {info["depth"]}, width '
             f'{info["structure"]["width_multiplier"]}, feature dim {info["feature_dim"]}'
             + (f', step {info["step"]}' if info.get("step") is not None else ""))
    return variables, described


def haiku_to_orbax(source: str, output: str, *, depth: int | None = None) -> dict[str, Any]:
    """Writes a released Haiku ``.npy`` as an encoder-only orbax checkpoint in ``output``."""
    import jax.numpy as jnp

    from detcon_jax import checkpoint

    if not source.endswith(".npy"):
        raise UsageError(f"--input={source}: haiku-to-orbax reads a Haiku .npy checkpoint")
    target = paths.check_reachable(output, what="--output", writable=True)
    if target.is_file():
        raise UsageError(f"--output={output}: is a file; expected a (new) directory")
    if target.is_dir() and any(target.iterdir()):
        raise UsageError(f"--output={output}: directory is not empty; choose a new one")
    variables, info = load_encoder(source, depth=depth)
    state = {"online_params": {"encoder": variables["params"]},
             "online_batch_stats": {"encoder": variables["batch_stats"]}}
    state = {k: _to_jax(v, jnp) for k, v in state.items()}
    signature = {"imported": "haiku", "encoder": info["structure"]}
    ckpt_dir = target / "checkpoints"
    progress(f"writing orbax checkpoint {ckpt_dir}/0")
    writer = checkpoint.Checkpointer(ckpt_dir, keep=1, signature=signature)
    try:
        writer.save(0, state, data_position=0)
    finally:
        writer.close()
    summary = {"source": os.fspath(paths.as_path(source)), "kind": "haiku",
               "depth": info["depth"],
               "width_multiplier": info["structure"]["width_multiplier"],
               "structure": info["structure"], "checkpoint": os.fspath(ckpt_dir / "0"),
               "layout": "state['online_params']['encoder'], "
                         "state['online_batch_stats']['encoder']"}
    paths.write_json(target / "encoder.json", summary)
    progress(f"done: {output} (read it with --checkpoint={output})")
    return summary


def _load_config(spec: str) -> Any:
    """The validated config of ``--config=FILE.py[:ARG]`` (a `ConfigError` names the key)."""
    from detcon_jax import config as config_lib
    from detcon_jax import configs

    config = configs.load(spec)
    config_lib.validate(config)
    return config


def official_state_to_orbax(source: str, config_path: str, workdir: str, *,
                            step: int = 0) -> dict[str, Any]:
    """Writes an official full training state as a checkpoint ``train.py`` resumes from."""
    from detcon_jax import checkpoint, interop
    from detcon_jax import config as config_lib

    if not paths.check_reachable(source, what="--input").exists():
        raise UsageError(f"--input={source}: no such file")
    if step < 0:
        raise UsageError(f"--step={step}: must be >= 0")
    target = paths.check_reachable(workdir, what="--workdir", writable=True)
    ckpt_dir = target / "checkpoints"
    if target.is_file():
        raise UsageError(f"--workdir={workdir}: is a file; expected a (new) directory")
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        raise UsageError(f"--workdir={workdir}: already holds checkpoints; choose a new one")
    config = _load_config(config_path)
    progress(f"reading {source}")
    state = interop.load_haiku_train_state(source, config, step=step)
    signature = config_lib.model_signature(config)
    progress(f"writing orbax checkpoint {ckpt_dir}/{step}")
    writer = checkpoint.Checkpointer(ckpt_dir, keep=1, signature=signature)
    try:
        writer.save(step, state, data_position=step)
    finally:
        writer.close()
    progress(f"done: resume with python -m detcon_jax.train --config={config_path} "
             f"--workdir={workdir}")
    return {"source": source, "checkpoint": os.fspath(ckpt_dir / str(step)), "step": step,
            "signature": signature}


def _to_jax(tree: Any, jnp: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_jax(v, jnp) for k, v in tree.items()}
    return jnp.asarray(tree)


def _check_output_file(path: str) -> None:
    """A file output: reachable when remote, its local parent not a file."""
    target = paths.check_reachable(path, what="--output", writable=True, is_file=True)
    if target.is_dir():
        raise UsageError(f"--output={path}: is a directory; expected a file")
    if not paths.is_remote(target) and target.parent.is_file():
        raise UsageError(f"--output={path}: parent {target.parent} is a file")


def to_torchvision(source: str, output: str, *, depth: int | None = None,
                   step: int | None = None) -> dict[str, Any]:
    """Writes a torchvision ``state_dict``: ``torch.save`` (needs torch) or ``.npz``."""
    _check_output_file(output)
    use_npz = output.endswith(".npz")
    if not use_npz:
        try:
            import torch
        except ImportError as err:
            raise UsageError(f"--output={output}: torch is not importable, so only an .npz "
                             f"file (torchvision names, numpy arrays) can be written") from err
    variables, info = load_encoder(source, depth=depth, step=step)
    state_dict = export.flax_to_torchvision(variables)
    arch = export.torchvision_arch(variables)
    with paths.staged_file(output) as local:
        if use_npz:
            np.savez(local, **state_dict)
        else:
            torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, local)
    progress(f"wrote {len(state_dict)} tensors to {output}")
    projected = export.needs_layer1_projection(variables)
    patched = export.torchvision_arch(variables, layer1_projection=True)
    if arch:
        progress(f"loads into torchvision.models.{arch}() after model.fc = torch.nn.Identity() "
                 f"(strict=True); see docs/detectron2.md for the padding of strided layers")
    elif projected and patched:
        warn(f"this encoder has a projection shortcut in layer1.0 (as the official DetCon "
             f"torso); torchvision.models.{patched}() has none, so a strict load fails on "
             f"layer1.0.downsample.* and strict=False gives wrong features. Call "
             f"detcon_jax.torch_resnet.add_layer1_projection(model) before load_state_dict "
             f"(docs/detectron2.md)")
    else:
        warn("no torchvision constructor has this structure (width multiplier, or block "
             "counts of no torchvision ResNet); names follow torchvision")
    # torchvision_arch: the constructor to use (after add_layer1_projection if
    # layer1_projection), or None.
    return {**info, "output": output, "tensors": len(state_dict),
            "torchvision_arch": arch or patched, "layer1_projection": projected}


def to_detectron2(source: str, output: str, *, depth: int | None = None,
                  step: int | None = None) -> dict[str, Any]:
    """Writes the detectron2 ``.pkl`` (``{'model', '__author__', 'matching_heuristics'}``)."""
    if not output.endswith(".pkl"):
        raise UsageError(f"--output={output}: detectron2 reads this layout only from a .pkl "
                         f"file")
    _check_output_file(output)
    variables, info = load_encoder(source, depth=depth, step=step)
    payload = export.to_detectron2(variables, author=f"detcon_jax ({source})")
    with paths.staged_file(output) as local:
        export.save_detectron2(payload, local)
    progress(f'wrote {len(payload["model"])} tensors to {output}; set MODEL.WEIGHTS to it and '
             f'see docs/detectron2.md for the config (RGB input, STRIDE_IN_1X1=False)')
    projected = export.needs_layer1_projection(variables)
    if projected:
        warn("this encoder has a projection shortcut in res2.0 (as the official DetCon "
             "torso); detectron2's R18/R34 has none, so the checkpointer leaves "
             "res2.0.shortcut.* unused and the features are wrong. Add the shortcut to the "
             "built model before loading the weights (docs/detectron2.md)")
    return {**info, "output": output, "tensors": len(payload["model"]),
            "layer1_projection": projected}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    state = commands.add_parser(
        "official-state-to-orbax", help="official full training state -> resumable workdir",
        description="official DetCon-B training state (.npz/.npy, Haiku names) -> a training "
                    "checkpoint that python -m detcon_jax.train resumes from")
    state.add_argument("--input", required=True, help="official state (.npz or .npy)")
    state.add_argument("--config", required=True, help="experiment file of the same network")
    state.add_argument("--workdir", required=True, help="new training workdir")
    state.add_argument("--step", type=int, default=0,
                       help="global step of the next update (default 0)")
    for name, help_text in (
            ("haiku-to-orbax", "released Haiku .npy -> encoder-only orbax checkpoint directory"),
            ("to-torchvision", "encoder -> torchvision ResNet state_dict (.pth/.pt, or .npz)"),
            ("to-detectron2", "encoder -> detectron2 .pkl (load with MODEL.WEIGHTS)")):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--input", required=True,
                         help="Haiku .npy" if name == "haiku-to-orbax" else
                         "training workdir / checkpoint dir / haiku-to-orbax output / Haiku .npy")
        sub.add_argument("--output", required=True,
                         help="new directory" if name == "haiku-to-orbax" else "output file")
        sub.add_argument("--depth", type=int, default=None,
                         help="ResNet depth of a Haiku checkpoint (default: inferred)")
        if name != "haiku-to-orbax":
            sub.add_argument("--step", type=int, default=None,
                             help="checkpoint step of a workdir (default: newest)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "official-state-to-orbax":
            official_state_to_orbax(args.input, args.config, args.workdir, step=args.step)
        elif args.command == "haiku-to-orbax":
            haiku_to_orbax(args.input, args.output, depth=args.depth)
        elif args.command == "to-torchvision":
            to_torchvision(args.input, args.output, depth=args.depth, step=args.step)
        else:
            to_detectron2(args.input, args.output, depth=args.depth, step=args.step)
    except (ValueError, OSError) as err:  # loaders name the file / key (ConfigError too)
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

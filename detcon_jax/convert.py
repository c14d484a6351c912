"""Command-line conversion of encoder checkpoints: Haiku -> orbax, ours -> torchvision/detectron2.

Usage::

  python -m detcon_jax.convert haiku-to-orbax --input=released.npy --output=DIR
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

Every ``--input`` and ``--output`` may be a URI (``gs://bucket/...``); a bucket that cannot
be reached is reported before anything is read or written. Bad paths and keys give one
``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from detcon_jax import export, paths

__all__ = ["haiku_to_orbax", "load_encoder", "main", "to_detectron2", "to_torchvision"]


class UsageError(ValueError):
    """A bad argument or path, reported as one line."""


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f'[convert] {message}', file=sys.stderr, flush=True)


def load_encoder(source: str, *, depth: int | None = None, step: int | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Encoder ``{'params', 'batch_stats'}`` as numpy arrays, and a description, from ``source``.

    ``source``: a training workdir, checkpoint directory, ``haiku-to-orbax`` output, or a Haiku
    ``.npy`` (see the module docstring).
    """
    if not source.startswith('random:'):
        location = paths.check_reachable(source, what='--input')
        if not location.exists():
            raise UsageError(f'--input={source}: no such file or directory')
        if location.is_file() and not source.endswith('.npy'):
            raise UsageError(f'--input={source}: a file input must be a Haiku .npy checkpoint '
                         f'(directories are read as orbax checkpoints)')
    import jax  # after the path checks: a typo should not wait for JAX to start

    from detcon_jax.evaluate import features

    progress(f'reading {source}')
    backbone, info = features.load_backbone(source, depth=depth, step=step)
    variables = jax.tree.map(np.asarray, jax.device_get(dict(backbone.variables)))
    described = {k: info[k] for k in ('kind', 'depth', 'structure', 'step') if k in info}
    progress(f'{info["kind"]} encoder: depth {info["depth"]}, width '
             f'{info["structure"]["width_multiplier"]}, feature dim {info["feature_dim"]}'
             + (f', step {info["step"]}' if info.get('step') is not None else ''))
    return variables, described


def haiku_to_orbax(source: str, output: str, *, depth: int | None = None) -> dict[str, Any]:
    """Writes a released Haiku ``.npy`` as an encoder-only orbax checkpoint in ``output``."""
    import jax.numpy as jnp

    from detcon_jax import checkpoint

    if not source.endswith('.npy'):
        raise UsageError(f'--input={source}: haiku-to-orbax reads a Haiku .npy checkpoint')
    target = paths.check_reachable(output, what='--output', writable=True)
    if target.is_file():
        raise UsageError(f'--output={output}: is a file; expected a (new) directory')
    if target.is_dir() and any(target.iterdir()):
        raise UsageError(f'--output={output}: directory is not empty; choose a new one')
    variables, info = load_encoder(source, depth=depth)
    state = {'online_params': {'encoder': variables['params']},
             'online_batch_stats': {'encoder': variables['batch_stats']}}
    state = {k: _to_jax(v, jnp) for k, v in state.items()}
    signature = {'imported': 'haiku', 'encoder': info['structure']}
    ckpt_dir = target / 'checkpoints'
    progress(f'writing orbax checkpoint {ckpt_dir}/0')
    writer = checkpoint.Checkpointer(ckpt_dir, every_steps=1, keep=1, signature=signature)
    try:
        writer.save(0, state, data_position=0, force=True)
    finally:
        writer.close()
    summary = {'source': os.fspath(paths.as_path(source)), 'kind': 'haiku',
               'depth': info['depth'],
               'width_multiplier': info['structure']['width_multiplier'],
               'structure': info['structure'], 'checkpoint': os.fspath(ckpt_dir / '0'),
               'layout': "state['online_params']['encoder'], "
                         "state['online_batch_stats']['encoder']"}
    paths.write_json(target / 'encoder.json', summary)
    progress(f'done: {output} (read it with --checkpoint={output})')
    return summary


def _to_jax(tree: Any, jnp: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_jax(v, jnp) for k, v in tree.items()}
    return jnp.asarray(tree)


def _check_output_file(path: str) -> None:
    """A file output: reachable when remote, its local parent not a file."""
    target = paths.check_reachable(path, what='--output', writable=True, is_file=True)
    if target.is_dir():
        raise UsageError(f'--output={path}: is a directory; expected a file')
    if not paths.is_remote(target) and target.parent.is_file():
        raise UsageError(f'--output={path}: parent {target.parent} is a file')


def to_torchvision(source: str, output: str, *, depth: int | None = None,
                   step: int | None = None) -> dict[str, Any]:
    """Writes a torchvision ``state_dict``: ``torch.save`` (needs torch) or ``.npz``."""
    _check_output_file(output)
    use_npz = output.endswith('.npz')
    if not use_npz:
        try:
            import torch
        except ImportError as err:
            raise UsageError(f'--output={output}: torch is not importable, so only an .npz '
                             f'file (torchvision names, numpy arrays) can be written') from err
    variables, info = load_encoder(source, depth=depth, step=step)
    state_dict = export.flax_to_torchvision(variables)
    arch = export.torchvision_arch(variables)
    with paths.staged_file(output) as local:
        if use_npz:
            np.savez(local, **state_dict)
        else:
            torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, local)
    progress(f'wrote {len(state_dict)} tensors to {output}')
    if arch:
        progress(f'loads into torchvision.models.{arch}() after model.fc = torch.nn.Identity() '
                 f'(strict=True); see docs/detectron2.md for the padding of strided layers')
    else:
        progress('no torchvision constructor has this structure (width multiplier, or a '
                 'projection shortcut in layer1 of a basic-block ResNet); names follow '
                 'torchvision')
    return {**info, 'output': output, 'tensors': len(state_dict), 'torchvision_arch': arch}


def to_detectron2(source: str, output: str, *, depth: int | None = None,
                  step: int | None = None) -> dict[str, Any]:
    """Writes the detectron2 ``.pkl`` (``{'model', '__author__', 'matching_heuristics'}``)."""
    if not output.endswith('.pkl'):
        raise UsageError(f'--output={output}: detectron2 reads this layout only from a .pkl '
                         f'file')
    _check_output_file(output)
    variables, info = load_encoder(source, depth=depth, step=step)
    payload = export.to_detectron2(variables, author=f'detcon_jax ({source})')
    with paths.staged_file(output) as local:
        export.save_detectron2(payload, local)
    progress(f'wrote {len(payload["model"])} tensors to {output}; set MODEL.WEIGHTS to it and '
             f'see docs/detectron2.md for the config (RGB input, STRIDE_IN_1X1=False)')
    return {**info, 'output': output, 'tensors': len(payload['model'])}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m detcon_jax.convert', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    for name, help_text in (
            ('haiku-to-orbax', 'released Haiku .npy -> encoder-only orbax checkpoint directory'),
            ('to-torchvision', 'encoder -> torchvision ResNet state_dict (.pth/.pt, or .npz)'),
            ('to-detectron2', 'encoder -> detectron2 .pkl (load with MODEL.WEIGHTS)')):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument('--input', required=True,
                         help='Haiku .npy' if name == 'haiku-to-orbax' else
                         'training workdir / checkpoint dir / haiku-to-orbax output / Haiku .npy')
        sub.add_argument('--output', required=True,
                         help='new directory' if name == 'haiku-to-orbax' else 'output file')
        sub.add_argument('--depth', type=int, default=None,
                         help='ResNet depth of a Haiku checkpoint (default: inferred)')
        if name != 'haiku-to-orbax':
            sub.add_argument('--step', type=int, default=None,
                             help='checkpoint step of a workdir (default: newest)')
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit status (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == 'haiku-to-orbax':
            haiku_to_orbax(args.input, args.output, depth=args.depth)
        elif args.command == 'to-torchvision':
            to_torchvision(args.input, args.output, depth=args.depth, step=args.step)
        else:
            to_detectron2(args.input, args.output, depth=args.depth, step=args.step)
    except (ValueError, OSError) as err:  # loaders name the file / key in the message
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Paths a user gives (workdirs, checkpoints, outputs): local or a URI such as ``gs://b/x``.

Every path from a flag goes through `as_path`, which returns an ``etils.epath.Path`` (the
path layer orbax itself uses): local paths are expanded and made absolute, URIs are kept
as they are. ``os.path`` must never see a URI: ``os.path.abspath('gs://b/x')`` is the local
directory ``./gs:/b/x``, which is how a bucket workdir used to turn silently into a local
one.

Which library serves a URI: ``epath`` uses TensorFlow's file systems (``tf.io.gfile``) when
TensorFlow is installed and ``EPATH_USE_TF`` is not ``false``, else fsspec (``gcsfs`` for
``gs://``, ``s3fs`` for ``s3://``); orbax writes array data with tensorstore, which talks
to GCS itself. TensorBoard event files always go through TensorFlow (``tf.summary``).

A remote path is checked once, up front, with `check_reachable`: a missing bucket, missing
credentials or an unreachable endpoint is one `UnreachablePathError` (a ``ConfigError``,
exit status 2 in every CLI) naming the path, before anything is written anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from etils import epath

from detcon_jax.config import ConfigError, is_url

__all__ = [
    "UnreachablePathError",
    "as_path",
    "check_reachable",
    "is_remote",
    "join",
    "is_url",
    "staged_file",
    "tensorboard_dir",
    "workdir_path",
    "write_json",
    "write_text",
]

# URI schemes etils.epath serves. Any other ``scheme://`` would be read by epath as a
# relative local path (``ram://x`` -> ``./ram:/x``), so `as_path` refuses it.
EPATH_SCHEMES = ("gs", "s3", "az", "hf")
# Loggers of the remote backends: silenced while `check_reachable` probes, so that an
# unreachable endpoint is one line rather than a retry traceback per attempt.
_BACKEND_LOGGERS = ("gcsfs", "fsspec", "google", "google.auth", "urllib3", "s3fs", "aiobotocore")


class UnreachablePathError(ConfigError):
    """A path that cannot be used: bad scheme, missing bucket, no credentials, no endpoint."""


def _scheme(path: str) -> str | None:
    return path.split("://", 1)[0].lower() if is_url(path) else None


def as_path(path: str | os.PathLike) -> epath.Path:
    """``path`` as an ``epath.Path``: a local path expanded and absolute, a URI unchanged.

    Raises:
      UnreachablePathError: a URI scheme that epath does not serve (e.g. ``ram://``, which
        only ``tf.io.gfile`` knows; see `tensorboard_dir`).
    """
    if isinstance(path, epath.Path):
        return path
    text = os.fspath(path)
    scheme = _scheme(text)
    if scheme is None:
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    if scheme not in EPATH_SCHEMES:
        raise UnreachablePathError(
            f"{text}: unsupported URI scheme {scheme}:// (use a local path or one of "
            f"{', '.join(s + '://' for s in EPATH_SCHEMES)})")
    return epath.Path(text)


def join(base: str | os.PathLike, *parts: str) -> str:
    """`as_path(base)` joined with ``parts``, as a string (a URI stays a URI)."""
    return os.fspath(as_path(base).joinpath(*parts))


def is_remote(path: str | os.PathLike) -> bool:
    """True for URIs (``gs://...``): objects there cannot be appended to or renamed cheaply."""
    return is_url(os.fspath(path))


def tensorboard_dir(workdir: str | os.PathLike, setting: str | None = None) -> str:
    """Where TensorBoard events go: ``setting`` when given, else ``WORKDIR/tensorboard``.

    A string, not an ``epath.Path``: ``tf.summary`` writes it, and TensorFlow serves schemes
    epath does not (its in-memory ``ram://`` file system, used by the tests).
    """
    if setting:
        return setting if is_url(setting) else os.fspath(as_path(setting))
    return os.fspath(as_path(workdir) / "tensorboard")


def _bucket_root(path: epath.Path) -> epath.Path:
    scheme, rest = os.fspath(path).split("://", 1)
    return epath.Path(f"{scheme}://{rest.split('/', 1)[0]}")


@contextlib.contextmanager
def _quiet_backends() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _BACKEND_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def _not_found(err: BaseException) -> bool:
    # gcsfs raises FileNotFoundError for a missing bucket; tf.io.gfile its NotFoundError.
    return isinstance(err, FileNotFoundError) or type(err).__name__ == "NotFoundError"


def check_reachable(path: str | os.PathLike, *, what: str = "", writable: bool = False,
                    is_file: bool = False) -> epath.Path:
    """Returns `as_path(path)` after making sure a remote path can be used.

    For a URI, with ``writable``: an object can be created and deleted under ``path`` (or
    beside it, for an ``is_file`` output), a probe named ``.detcon_jax_probe-*``. Without:
    ``path`` can be looked up (whether it exists is the caller's business). The bucket's
    own metadata is asked only to explain a failure, so credentials limited to objects
    suffice. Local paths are returned unchecked (using them reports its own errors).
    ``what`` names the flag in the message, e.g. ``'--workdir'``.

    Raises:
      UnreachablePathError: one line naming ``path`` and the reason: no such bucket (or
        one these credentials cannot see), or the backend's error (no endpoint, denied).
    """
    resolved = as_path(path)
    if not is_remote(resolved):
        return resolved
    name = f"{what}={os.fspath(path)}" if what else os.fspath(path)
    folder = resolved.parent if is_file else resolved
    failure = None
    with _quiet_backends():
        try:
            if writable:
                probe = folder / f".detcon_jax_probe-{uuid.uuid4().hex}"
                probe.write_text("")
                probe.unlink()
                return resolved
            if resolved.exists():
                return resolved
        except Exception as err:  # backends raise their own (aiohttp, google.auth, tf.errors)
            if not _not_found(err):
                action = "write to" if writable else "read"
                raise UnreachablePathError(
                    f"{name}: cannot {action} {folder} ({_reason(err)})") from None
            failure = err
        # A missing object or a missing bucket: tell them apart.
        root = _bucket_root(resolved)
        try:
            bucket_exists = root.exists()
        except Exception:  # as above; e.g. no permission on the bucket's metadata
            bucket_exists = True
    if not bucket_exists:
        raise UnreachablePathError(
            f"{name}: bucket {root} does not exist or these credentials cannot see it")
    if failure is not None:
        raise UnreachablePathError(f"{name}: cannot write to {folder} ({_reason(failure)})")
    return resolved


def workdir_path(path: str | os.PathLike, *, what: str = "--workdir") -> epath.Path:
    """A training workdir, checked to be writable when remote (see `check_reachable`)."""
    return check_reachable(path, what=what, writable=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` whole or not at all, creating the parent folder.

    Local: a temporary file in the same folder, renamed over ``path``. Remote: one object
    upload, which the store makes visible only once complete (object stores have no
    folders to create; gcsfs's ``makedirs`` would even create a missing *bucket*).
    """
    target = as_path(path)
    if is_remote(target):
        target.write_text(text)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, target)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """`write_text` of ``value`` as indented JSON (``default=str`` for odd leaves)."""
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


@contextlib.contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[str]:
    """A local file name through which ``path`` is written by a writer that needs one.

    For writers that only take local names (``tf.io.TFRecordWriter`` would otherwise go
    through TensorFlow's own GCS client, ``np.savez``, ``torch.save``). On success the file
    is renamed to ``path`` (local) or uploaded to it (remote); on an exception nothing
    appears at ``path``. The staged name ends like ``path`` (``np.savez`` adds ``.npz``
    otherwise).
    """
    target = as_path(path)
    if not is_remote(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.stem}.tmp{os.getpid()}{target.suffix}"
        try:
            yield os.fspath(tmp)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        return
    staging = tempfile.mkdtemp(prefix="detcon_jax_upload_")
    try:
        local = os.path.join(staging, target.name)
        yield local
        with open(local, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""The interface every data source implements, and the helpers sources share.

A source is where un-augmented examples come from. It gives two things: its example count
(all hosts together, for deriving steps from epochs) and this host's shard of its examples as
a ``tf.data.Dataset`` of dicts:

* ``image``: encoded JPEG/PNG bytes, or decoded uint8 ``[H, W, 3]``;
* ``mask``: uint8 ``[H, W, 1]`` id map of the full image (as made by the ``mask_fn`` the
  pipeline passes in, see ``data.mask_sources``);
* ``label``: int32 class, -1 when unknown;
* ``name``: string naming the record in error messages.

Corrupt or truncated encoded images are dropped there and counted in the given stats.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import tensorflow as tf

from detcon_jax import paths
from detcon_jax.data import framing

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

Example = dict[str, tf.Tensor]
MaskFn = Callable[[Example], Example]


@dataclasses.dataclass(frozen=True)
class Shard:
    """This host's part of a source: item ``index``, ``index + count``, ... (round-robin)."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"process_index={self.index} not in [0, {self.count})")

    def select(self, items: Sequence[Any], what: str) -> list:
        """This shard's items; an empty shard is an error naming ``what``."""
        shard = list(items)[self.index::self.count]
        if not shard:
            raise ValueError(
                f"{what}: {len(items)} item(s) cannot be split over {self.count} processes "
                f"(process {self.index} would get none)")
        return shard


@dataclasses.dataclass(frozen=True)
class Reader:
    """A source split in two for resuming cheaply: ``records(epoch)`` is one epoch of this
    shard's raw records (paths, serialized records, in-memory arrays) in that epoch's file
    order, cheap to read and to skip; ``examples`` maps a dataset of records to examples
    (decoding, validation, masks: the expensive stages).

    Sources of several record files also give ``file_counts`` (records per file, in this
    shard's file numbering, found without reading the records) and ``layout(epoch)`` (the
    file number of each record position of ``records(epoch)``, without opening a file); then
    ``records(epoch, skipped)`` stands a placeholder in for each record of the files flagged
    in ``skipped``, so that files a resume does not need are never opened while every
    position keeps its record.
    """

    records: Callable[..., tf.data.Dataset]
    examples: Callable[[tf.data.Dataset], tf.data.Dataset]
    file_counts: Callable[[], list[int]] | None = None
    layout: Callable[[tf.Tensor], tf.data.Dataset] | None = None

    def epoch_size(self) -> int:
        """Records per epoch: from ``file_counts`` or the static cardinality where known,
        else by reading the records (without decoding them)."""
        if self.file_counts is not None:
            return sum(self.file_counts())
        ds = self.records(tf.constant(0, tf.int64))
        size = int(ds.cardinality())
        if size >= 0:
            return size
        return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def example(image: Any, mask: Any = None, label: Any = -1, name: Any = "") -> Example:
    """One example dict; an absent mask is an empty ``[0, 0, 1]`` placeholder."""
    if mask is None:
        mask = tf.zeros([0, 0, 1], tf.uint8)
    return {"image": image, "mask": mask, "label": tf.cast(label, tf.int32),
            "name": tf.convert_to_tensor(name, tf.string)}


def _read_uri(path: bytes | Any) -> bytes:
    # numpy_function hands a string over as bytes in graphs, as a 0-d object array eagerly.
    path = path.item() if hasattr(path, "item") else path
    return paths.as_path(path.decode()).read_bytes()


def _read_through_epath(path: tf.Tensor) -> tf.Tensor:
    data = tf.numpy_function(_read_uri, [path], tf.string, stateful=False)
    data.set_shape([])
    return data


def file_reader(data_dir: str | os.PathLike | None) -> Callable[[tf.Tensor], tf.Tensor]:
    """The op reading a file's bytes inside tf.data for files under ``data_dir``.

    Local files: ``tf.io.read_file``. URIs: the project's path layer (`paths.as_path`,
    ``etils.epath``), so that every scheme and backend setting that serves the listing
    (``EPATH_USE_TF``, gcsfs for ``gs://``, s3fs, ...) also serves the bytes; TensorFlow's
    own reader knows ``gs://`` only, with its endpoint compiled in.
    """
    if data_dir is None or not paths.is_remote(data_dir):
        return tf.io.read_file
    return _read_through_epath


def list_images(directory: pathlib.Path) -> list[pathlib.Path]:
    """``directory``'s ``.jpg|.jpeg|.png`` files (any case), sorted."""
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def data_dir_exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory, local or remote (``gs://...``, via ``tf.io.gfile``)."""
    try:
        return bool(tf.io.gfile.isdir(str(path)))
    except (tf.errors.OpError, OSError):  # e.g. no credentials or an unknown file system
        return False


class Source(abc.ABC):
    """A data source: its example count and this host's shard of its examples."""

    #: Whether the source can load ground-truth id maps (``mask_source='gt'``).
    has_gt_masks: ClassVar[bool] = False
    #: Whether its examples carry stored Felzenszwalb masks (else ``fh`` computes them).
    stored_fh: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def from_config(cls, data: Any, masks: Any = None) -> Source:
        """The source that ``config.data`` (and ``config.masks``, when given) describe."""

    @abc.abstractmethod
    def num_examples(self) -> int:
        """Examples in the split, all hosts together."""

    def check(self) -> None:
        """Raises `FileNotFoundError` (naming the path and the fix) when the source's files are
        not laid out as it expects; cheap (no decoding). Default: nothing to check."""
        return None

    @abc.abstractmethod
    def reader(self, shard: Shard, *, shuffle_files: bool, seed: int,
               stats: framing.PipelineStats, mask_fn: MaskFn) -> Reader:
        """This shard's records per epoch and the stages making examples of them.

        Args:
          shard: this host's part.
          shuffle_files: shuffle the order of files (anew each epoch, from ``seed`` and the
            epoch) where the source has several.
          seed: seed of that shuffle (and of generated data).
          stats: where skipped corrupt images are counted.
          mask_fn: per-example function that makes the mask (``mask_sources.make_mask_fn``).
        """

    def dataset(self, shard: Shard, *, shuffle_files: bool, seed: int,
                stats: framing.PipelineStats, mask_fn: MaskFn) -> tf.data.Dataset:
        """This shard's examples (see the module docstring), one pass (epoch 0's file order)."""
        reader = self.reader(shard, shuffle_files=shuffle_files, seed=seed, stats=stats,
                             mask_fn=mask_fn)
        return reader.examples(reader.records(tf.constant(0, tf.int64)))


class ListedSource(Source):
    """A source whose items are listed cheaply and then loaded by one function each.

    Loading is followed by the framing check and then ``mask_fn``, each a parallel stage.
    """

    @abc.abstractmethod
    def listing(self, shard: Shard, *, shuffle_files: bool,
                seed: int) -> tuple[tf.data.Dataset, Callable[..., Example]]:
        """This shard's items (paths, arrays, ...) and the function loading one as an example."""

    def reader(self, shard: Shard, *, shuffle_files: bool, seed: int,
               stats: framing.PipelineStats, mask_fn: MaskFn) -> Reader:
        items, load = self.listing(shard, shuffle_files=shuffle_files, seed=seed)

        def examples(ds: tf.data.Dataset) -> tf.data.Dataset:
            ds = ds.map(load, num_parallel_calls=AUTOTUNE)
            ds = framing.filter_valid(ds, stats)
            return ds.map(mask_fn, num_parallel_calls=AUTOTUNE)

        # The listing is in memory: every epoch lists the same items (the pipeline's seeded
        # per-epoch shuffle orders them).
        return Reader(records=lambda epoch, skipped=None: items, examples=examples)

"""Felzenszwalb-Huttenlocher masks for an image collection, written as official DetCon TFRecords.

Usage::

  python -m detcon_jax.fh_masks --input=PATH --output=DIR [--scale=1000] [--min_size=1000]
      [--workers=N] [--num_shards=0] [--split=train]

``--input`` is a folder of images (``*.jpg|png``; or ``images/*.jpg|png``; or class
sub-folders ``CLASS/*.jpg|png``, which give 1-based labels in sorted class order as the
official ImageNet converter) or TFRecords (a file, a glob, or a folder of shards) whose examples
hold ``image/encoded``. Several settings are given as comma-separated lists
(``--scale=1000,500 --min_size=1000,250``); as the official converter, their uint8 id maps are
stacked to ``[K, H, W]`` and stored as raw bytes in ``image/felzenszwalb_segmentations``.
Segment ids wrap at 256 (official ``astype(uint8)``); images with more than 256 segments are
counted and reported.

The work is spread over ``--workers`` processes (default: every core). Each output shard is
written to a temporary name and renamed when complete (for an ``--output`` in a bucket,
``gs://...``: written locally, then uploaded as one object), so an interrupted run resumes
by skipping finished shards. Beside the shards, ``{split}.counts.json`` holds each shard's
record count and size (``detcon_jax.record_index``), so that a training run resuming late in
an epoch need not read the shards to count them. Images are kept byte for byte (PNG stays
PNG; the official converter re-encodes PNG/CMYK files as JPEG); images that fail to decode
are skipped and counted.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import math
import multiprocessing
import os
import pathlib
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from detcon_jax import paths, record_index

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FH_FEATURE = "image/felzenszwalb_segmentations"

Setting = tuple[float, int]


def _tf():
    # TensorFlow is imported lazily so that spawned workers start without it until they need
    # it, and so that importing this module stays cheap.
    from detcon_jax import console

    return console.import_tensorflow()


def parse_settings(scales: str | Sequence[float], min_sizes: str | Sequence[int]) -> list[Setting]:
    """Pairs comma-separated (or sequence) scales and min sizes; a single value broadcasts."""
    if isinstance(scales, str):
        scales = [float(s) for s in scales.split(",") if s]
    if isinstance(min_sizes, str):
        min_sizes = [int(s) for s in min_sizes.split(",") if s]
    scales, min_sizes = list(scales), list(min_sizes)
    if len(scales) == 1 and len(min_sizes) > 1:
        scales = scales * len(min_sizes)
    if len(min_sizes) == 1 and len(scales) > 1:
        min_sizes = min_sizes * len(scales)
    if not scales or len(scales) != len(min_sizes):
        raise ValueError(f"--scale {scales} and --min_size {min_sizes} must pair up")
    return [(float(s), int(m)) for s, m in zip(scales, min_sizes, strict=True)]


def compute_fh_masks(image: np.ndarray, settings: Sequence[Setting]) -> tuple[np.ndarray, list]:
    """uint8 ``[K, H, W]`` Felzenszwalb ids (mod 256) and, per setting, the segment count."""
    import skimage.segmentation

    masks, counts = [], []
    for scale, min_size in settings:
        seg = skimage.segmentation.felzenszwalb(image, scale=scale, min_size=min_size)
        counts.append(int(seg.max()) + 1)
        masks.append(seg.astype(np.uint8))
    return np.stack(masks), counts


def make_example(image_bytes: bytes, fh_masks: np.ndarray | None, *, label: int, filename: str,
                 height: int, width: int, synset: str = "", text: str = "",
                 image_format: str = "JPEG") -> bytes:
    """A serialized ``tf.train.Example`` in the official ImageNet-FH layout.

    ``label`` is stored as given (the official layout is 1-based; 0 = unlabelled, which the
    reader turns into -1). ``fh_masks`` is ``[K, H, W]`` uint8.
    """
    tf = _tf()

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    feature = {
        "image/height": i(height),
        "image/width": i(width),
        "image/colorspace": b(b"RGB"),
        "image/channels": i(3),
        "image/class/label": i(label),
        "image/class/synset": b(synset.encode()),
        "image/class/text": b(text.encode()),
        "image/format": b(image_format.encode()),
        "image/filename": b(filename.encode()),
        "image/encoded": b(image_bytes),
    }
    if fh_masks is not None:
        feature[FH_FEATURE] = b(np.ascontiguousarray(fh_masks, np.uint8).reshape(-1).tobytes())
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Deterministic: map order otherwise depends on the process's hash seed, and resumed
    # shards written by other processes must be byte-identical.
    return example.SerializeToString(deterministic=True)


# ---------------------------------------------------------------------------------------------
# Inputs.


@dataclasses.dataclass(frozen=True)
class Item:
    """One input image: a file (``path``, ``label``) or a serialized record (``record``)."""

    name: str
    path: str = ""
    label: int = 0
    synset: str = ""
    record: bytes = b""


def _images_in(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def list_image_files(root: str | os.PathLike) -> list[Item]:
    """Items of an image folder: flat, ``images/`` sub-folder or class sub-folders."""
    root = pathlib.Path(root)
    if (root / "images").is_dir():
        root = root / "images"
    flat = _images_in(root)
    if flat:
        return [Item(name=p.name, path=str(p)) for p in flat]
    items = []
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    for index, cls in enumerate(classes, start=1):
        items += [Item(name=f"{cls.name}/{p.name}", path=str(p), label=index, synset=cls.name)
                  for p in _images_in(cls)]
    return items


def tfrecord_files(path: str | os.PathLike) -> list[str]:
    """TFRecord files named by a file, a glob or a folder (its non-hidden files but the
    record-count index, `record_index`)."""
    path = str(path)
    if os.path.isdir(path):
        files = [os.path.join(path, f) for f in sorted(os.listdir(path))
                 if not f.startswith(".") and not f.endswith(".counts.json")
                 and os.path.isfile(os.path.join(path, f))]
    else:
        files = sorted(glob.glob(path))
    return files


def is_image_folder(path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and bool(list_image_files(path))


def count_records(files: Sequence[str]) -> int:
    tf = _tf()
    return sum(1 for f in files for _ in tf.data.TFRecordDataset(f))


def iter_records(files: Sequence[str], skip: int = 0) -> Iterator[Item]:
    tf = _tf()
    index = 0
    for f in files:
        for n, record in enumerate(tf.data.TFRecordDataset(f)):
            if index >= skip:
                yield Item(name=f"{f}:{n}", record=record.numpy())
            index += 1


# ---------------------------------------------------------------------------------------------
# Worker side (runs in spawned processes).

_SETTINGS: list[Setting] = []


def _init_worker(settings: list[Setting]) -> None:
    global _SETTINGS
    _SETTINGS = settings
    tf = _tf()
    # One thread per worker: the pool is the parallelism.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


# Thread pools of the numerical libraries a worker loads: one thread each, since the process
# pool is the parallelism (N workers x N threads would oversubscribe the cores).
_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                      "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def make_pool(workers: int, settings: Sequence[Setting]):
    """A spawned pool of ``workers`` processes ready for ``process_item``, one thread each."""
    ctx = multiprocessing.get_context("spawn")  # fork after TF start-up is unsafe
    saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
    # Spawned children read the environment when they start (before ``_init_worker`` runs,
    # since unpickling the task function imports numpy).
    os.environ.update({k: "1" for k in _SINGLE_THREAD_ENV})
    try:
        return ctx.Pool(workers, initializer=_init_worker,
                        initargs=([(float(s), int(m)) for s, m in settings],))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _image_format(data: bytes) -> str:
    return "PNG" if data[:8] == b"\x89PNG\r\n\x1a\n" else "JPEG"


def process_item(item: Item, settings: Sequence[Setting] | None = None):
    """Decode (TensorFlow, as the training pipeline) -> FH -> serialized example.

    Returns ``(serialized, counts, None)`` or ``(None, None, error message)`` for an image that
    cannot be read or decoded.
    """
    tf = _tf()
    settings = settings or _SETTINGS
    try:
        if item.record:
            example = tf.train.Example.FromString(item.record)
            feats = example.features.feature
            image_bytes = feats["image/encoded"].bytes_list.value[0]
        else:
            with open(item.path, "rb") as f:
                image_bytes = f.read()
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False).numpy()
    except Exception as e:  # noqa: BLE001 - any unreadable image is skipped and reported
        return None, None, f"{item.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    masks, counts = compute_fh_masks(image, settings)
    height, width = image.shape[:2]
    if item.record:
        feats[FH_FEATURE].bytes_list.value[:] = [masks.reshape(-1).tobytes()]
        for key, value in (("image/height", height), ("image/width", width)):
            feats[key].int64_list.value[:] = [value]
        return example.SerializeToString(deterministic=True), counts, None
    serialized = make_example(
        image_bytes, masks, label=item.label, filename=item.name, height=height, width=width,
        synset=item.synset, image_format=_image_format(image_bytes))
    return serialized, counts, None


# ---------------------------------------------------------------------------------------------
# Driver.


@dataclasses.dataclass
class Summary:
    """What a run did."""

    images: int = 0
    written: int = 0
    skipped_images: list = dataclasses.field(default_factory=list)
    shards_written: list = dataclasses.field(default_factory=list)
    shards_resumed: list = dataclasses.field(default_factory=list)
    overflow: dict = dataclasses.field(default_factory=dict)


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}"


def generate(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    settings: Sequence[Setting] = ((1000.0, 1000),),
    workers: int | None = None,
    num_shards: int = 0,
    split: str = "train",
    progress: bool = True,
) -> Summary:
    """Writes ``output_dir/{split}-XXXXX-of-NNNNN`` TFRecords with FH masks.

    Args:
      input_path: image folder or TFRecords (see module docstring).
      output_dir: local (created if missing) or a URI; finished shards there are kept
        (resume).
      settings: ``(scale, min_size)`` pairs, stacked in this order.
      workers: processes (default ``os.cpu_count()``); 0 or 1 runs in this process.
      num_shards: output shards; 0 picks ``ceil(images / 1024)``.
      split: shard name prefix.
      progress: show a tqdm bar with ETA.
    """
    from tqdm import tqdm

    if not os.path.exists(input_path) and not glob.glob(str(input_path)):
        raise FileNotFoundError(f"--input={input_path}: no such file or folder (give an image "
                                "folder, a TFRecord file, a folder of them or a glob)")
    output = paths.check_reachable(output_dir, what="--output", writable=True)
    tf = _tf()
    settings = [(float(s), int(m)) for s, m in settings]
    if is_image_folder(input_path):
        items: list[Item] | None = list_image_files(input_path)
        files: list[str] = []
        total = len(items)
    else:
        files = tfrecord_files(input_path)
        if not files:
            raise FileNotFoundError(f"--input={input_path}: no images or TFRecord files found")
        items = None
        total = count_records(files)
    if total == 0:
        raise FileNotFoundError(f"--input={input_path}: no images found")
    num_shards = num_shards or max(1, math.ceil(total / 1024))
    bounds = np.linspace(0, total, num_shards + 1).astype(int)
    if not paths.is_remote(output):
        output.mkdir(parents=True, exist_ok=True)
    summary = Summary(images=total, overflow={s: 0 for s in settings})
    index: dict[str, list[int]] = {}  # shard name -> [records, bytes] (`record_index`)

    todo = []
    for s in range(num_shards):
        final = output / shard_name(split, s, num_shards)
        if final.exists():
            summary.shards_resumed.append(os.fspath(final))
        else:
            todo.append(s)

    def shard_items(s: int, record_iter) -> list[Item]:
        if items is not None:
            return items[bounds[s]:bounds[s + 1]]
        return [next(record_iter) for _ in range(bounds[s + 1] - bounds[s])]

    workers = os.cpu_count() if workers is None else workers
    pool = make_pool(workers, settings) if workers > 1 and todo else None

    def run(batch: list[Item]):
        if pool is not None:
            return pool.imap(process_item, batch, chunksize=1)
        return (process_item(item, settings) for item in batch)

    record_iter = None
    todo_images = int(sum(bounds[s + 1] - bounds[s] for s in todo))
    bar = tqdm(total=todo_images, unit="img", disable=not progress, desc="FH masks",
               file=sys.stderr)
    try:
        # Keep the next shard's work queued while the current one is written.
        pending: collections.deque = collections.deque()
        position = 0
        next_todo = iter(todo)

        def submit():
            nonlocal record_iter, position
            s = next(next_todo, None)
            if s is None:
                return
            if items is None:
                # Records are streamed: skip the ones of finished shards on the way.
                if record_iter is None or position > bounds[s]:
                    record_iter, position = iter_records(files, skip=int(bounds[s])), bounds[s]
                for _ in range(bounds[s] - position):
                    next(record_iter)
                position = bounds[s + 1]
            pending.append((s, run(shard_items(s, record_iter))))

        submit()
        submit()
        while pending:
            s, results = pending.popleft()
            final = output / shard_name(split, s, num_shards)
            # TFRecordWriter would reach a bucket through TensorFlow's own GCS client; the
            # staged local file is uploaded through epath like every other output.
            with paths.staged_file(final) as tmp:
                records = 0
                with tf.io.TFRecordWriter(tmp) as writer:
                    for serialized, counts, error in results:
                        bar.update(1)
                        if error is not None:
                            summary.skipped_images.append(error)
                            print(f"Skipping unreadable image {error}", file=sys.stderr)
                            continue
                        writer.write(serialized)
                        records += 1
                        for setting, count in zip(settings, counts, strict=True):
                            summary.overflow[setting] += count > 256
                index[final.name] = [records, os.path.getsize(tmp)]
            summary.written += records
            summary.shards_written.append(os.fspath(final))
            submit()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    for path in summary.shards_resumed:
        shard = paths.as_path(path)
        size = shard.stat().length
        with shard.open("rb") as f:
            index[shard.name] = [record_index.count_framed(f, size), size]
    record_index.write_index(output, split, index)
    return summary


def report(summary: Summary) -> str:
    """Human-readable summary, including uint8 overflow counts per setting."""
    lines = [f"{summary.written} images written to {len(summary.shards_written)} shard(s); "
             f"{len(summary.shards_resumed)} finished shard(s) kept (resume); "
             f"{len(summary.skipped_images)} unreadable image(s) skipped."]
    for (scale, min_size), count in summary.overflow.items():
        lines.append(f"scale={scale:g} min_size={min_size}: {count} image(s) with more than "
                     "256 segments (ids wrap modulo 256 in uint8, as the official masks)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> Summary:
    parser = argparse.ArgumentParser(prog="python -m detcon_jax.fh_masks",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", required=True, help="image folder or TFRecords")
    parser.add_argument("--output", required=True,
                        help="output folder for TFRecord shards (local or gs://...)")
    parser.add_argument("--scale", default="1000", help="FH scale(s), comma separated")
    parser.add_argument("--min_size", default="1000", help="FH min segment size(s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes")
    parser.add_argument("--num_shards", type=int, default=0, help="0: ceil(images / 1024)")
    parser.add_argument("--split", default="train", help="shard name prefix")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    summary = generate(args.input, args.output, settings=parse_settings(args.scale, args.min_size),
                       workers=args.workers, num_shards=args.num_shards, split=args.split,
                       progress=not args.no_progress)
    print(report(summary))
    return summary


def _cli() -> int:
    """Module entry point: a bad path is one ``error: ...`` line and exit status 2."""
    try:
        main()
    except (ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_cli())

"""Records per TFRecord shard, without reading the records: an index file beside the shards.

A resume needs each shard's record count (to find the epoch its position falls in and the
shards whose records all come before it). Counting by reading costs a whole epoch of reads,
which on a bucket is every byte of the host's shards again. ``detcon_jax.fh_masks`` writes
``{split}.counts.json`` beside the shards it makes (``{"shards": {NAME: [records, bytes]}}``);
a shard whose size still matches its entry is counted from it, one small read for the whole
split. Other shards are counted from the TFRecord framing alone: each record is a 12-byte
header (length, length CRC), the payload and a 4-byte CRC, so the walk reads the headers and
seeks past the payloads (locally a read of 12 bytes per record; on a bucket each seek is a
ranged request, which is why the index exists).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import BinaryIO

_HEADER = 12  # uint64 payload length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the payload


def index_name(split: str) -> str:
    """The index file's name for shards ``{split}-*-of-*`` (the shard glob does not match it)."""
    return f"{split}.counts.json"


def count_framed(f: BinaryIO, size: int) -> int:
    """Records in the open TFRecord file ``f`` of ``size`` bytes, read from the record
    headers only (no payload, no CRC check; a record cut short at the end is not counted)."""
    count, offset = 0, 0
    while offset + _HEADER <= size:
        f.seek(offset)
        header = f.read(_HEADER)
        if len(header) < _HEADER:
            break
        (length,) = struct.unpack("<Q", header[:8])
        offset += _HEADER + length + _FOOTER
        if offset > size:
            break
        count += 1
    return count


def count_from_framing(path: str) -> int:
    """Records in TFRecord file ``path`` (through ``tf.io.gfile``; see `count_framed`)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        return count_framed(f, tf.io.gfile.stat(path).length)


def write_index(directory: str | os.PathLike, split: str,
                entries: Mapping[str, Sequence[int]]) -> str:
    """Writes ``directory/{split}.counts.json`` from ``{shard name: [records, bytes]}``."""
    from detcon_jax import paths

    target = paths.join(str(directory), index_name(split))
    paths.write_json(target, {"shards": {k: list(v) for k, v in sorted(entries.items())}})
    return target


def read_index(directory: str, split: str) -> dict[str, list[int]]:
    """``{shard name: [records, bytes]}`` of the index beside the shards ({} when absent or
    unreadable: the shards are then counted from their framing)."""
    import tensorflow as tf

    path = f"{directory.rstrip('/')}/{index_name(split)}"
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            shards = json.load(f)["shards"]
        return {str(k): [int(v[0]), int(v[1])] for k, v in shards.items()}
    except (tf.errors.OpError, OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def shard_counts(files: Sequence[str], index: Mapping[str, Sequence[int]]) -> list[int]:
    """Records of each of ``files``: from ``index`` where the shard's size matches its entry
    (one stat), else from its framing (`count_from_framing`)."""
    import tensorflow as tf

    counts = []
    for path in files:
        entry = index.get(path.rsplit("/", 1)[-1])
        if entry is not None and tf.io.gfile.stat(path).length == entry[1]:
            counts.append(int(entry[0]))
        else:
            counts.append(count_from_framing(path))
    return counts

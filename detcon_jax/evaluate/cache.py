"""On-disk feature cache: extracted features streamed to per-host shard files, keyed by a hash.

Layout of one entry (``ROOT`` may be a URI: every path goes through `detcon_jax.paths`)::

    ROOT/KEY/key.json                the settings hashed into KEY (for people, not read back)
    ROOT/KEY/p00000/000000.npz       host 0's first shard: features, labels, order
    ROOT/KEY/p00001/000000.npz       host 1's ...
    ROOT/KEY/complete.json           written by process 0 once every host has finished

``KEY`` is the SHA-256 of the backbone's fingerprint (a hash of its structure and variables,
so a re-trained workdir never reads stale features) and of everything that decides the
features: data location, split, subset, image size, crop, crop padding, augmentation seed,
pooling. Linear probe and k-NN runs with the same settings therefore share one extraction.

Each host writes only its own rows, in shards of about ``shard_bytes``, so the extraction's
memory is one shard whatever the size of the data set. Every row carries an ``order`` value
(its position in the host-sharded listing: ``local_position * process_count +
process_index``, which for a folder source is the image's position in the listing), and
`CacheEntry.read` returns the rows of all hosts sorted by it: the arrays do not depend on
the number of hosts that wrote them.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from detcon_jax import paths

__all__ = ["CacheEntry", "FeatureCache", "MemorySink", "ShardWriter"]

DEFAULT_SHARD_BYTES = 32 << 20


def _key(settings: Mapping[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class MemorySink:
    """Collects extracted rows in memory (library use without a cache)."""

    def __init__(self) -> None:
        self._features: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._order: list[np.ndarray] = []

    def add(self, features: np.ndarray, labels: np.ndarray, order: np.ndarray) -> None:
        """Appends rows."""
        self._features.append(features)
        self._labels.append(labels)
        self._order.append(order)

    def close(self) -> None:
        """Nothing to flush."""

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(features, labels)`` sorted by ``order``."""
        order = np.argsort(np.concatenate(self._order), kind="stable")
        return np.concatenate(self._features)[order], np.concatenate(self._labels)[order]


class ShardWriter:
    """Streams one host's rows to ``DIR/NNNNNN.npz`` files of about ``shard_bytes`` each."""

    def __init__(self, directory: str, *, shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.directory = directory
        self.shard_bytes = shard_bytes
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._written = 0
        paths.as_path(directory).mkdir(parents=True, exist_ok=True)

    def add(self, features: np.ndarray, labels: np.ndarray, order: np.ndarray) -> None:
        """Buffers rows; writes a shard once the buffer holds ``shard_bytes``."""
        self._buffer.append((features, labels, order))
        self._buffered += features.nbytes + labels.nbytes
        if self._buffered >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        features, labels, order = (np.concatenate(x) for x in zip(*self._buffer, strict=True))
        buffer = io.BytesIO()
        np.savez(buffer, features=features, labels=labels, order=order)
        paths.as_path(self.directory).joinpath(f"{self._written:06d}.npz").write_bytes(
            buffer.getvalue())
        self._written += 1
        self._buffer, self._buffered = [], 0

    def close(self) -> None:
        """Writes the last shard."""
        self._flush()


class CacheEntry:
    """The features of one (backbone, data, preprocessing) setting under ``FeatureCache``."""

    def __init__(self, path: str, settings: Mapping[str, Any]) -> None:
        self.path = path
        self.settings = dict(settings)

    def complete(self) -> bool:
        """Whether every host finished writing this entry."""
        return paths.as_path(self.path).joinpath("complete.json").exists()

    def writer(self, process_index: int, *, shard_bytes: int = DEFAULT_SHARD_BYTES
               ) -> ShardWriter:
        """A fresh writer for this host's rows (a previous partial attempt is removed)."""
        directory = paths.as_path(self.path) / f"p{process_index:05d}"
        if directory.exists():
            directory.rmtree()
        if process_index == 0:
            paths.as_path(self.path).mkdir(parents=True, exist_ok=True)
            paths.write_json(paths.join(self.path, "key.json"), self.settings)
        return ShardWriter(str(directory), shard_bytes=shard_bytes)

    def mark_complete(self, process_count: int) -> None:
        """Records that all ``process_count`` hosts have written their rows."""
        paths.write_json(paths.join(self.path, "complete.json"),
                         {"process_count": process_count})

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """``(features, labels)`` of every host, sorted by their ``order`` values."""
        root = paths.as_path(self.path)
        count = json.loads((root / "complete.json").read_text())["process_count"]
        sink = MemorySink()
        for process in range(count):
            for shard in sorted((root / f"p{process:05d}").glob("*.npz")):
                with np.load(io.BytesIO(shard.read_bytes())) as data:
                    sink.add(data["features"], data["labels"], data["order"])
        try:
            return sink.arrays()
        except ValueError as err:  # np.concatenate of nothing
            raise ValueError(f"{self.path}: feature cache entry holds no rows") from err


class FeatureCache:
    """A directory (local or URI) of `CacheEntry`s."""

    def __init__(self, root: str) -> None:
        self.root = str(root)

    def entry(self, settings: Mapping[str, Any]) -> CacheEntry:
        """The entry of these settings (created on its first write)."""
        return CacheEntry(paths.join(self.root, _key(settings)), settings)

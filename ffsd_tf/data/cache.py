"""The prepared cache of ``--dataset=folder``: decoded, resized uint8 images in sharded files, read
back row by row, so training holds a batch in memory, not the dataset.

Format (``FORMAT``), one directory per prepared folder and setting (``folder.py`` names it and
decides when to prepare):

* ``train-00000.npy``, ``train-00001.npy``, ... and ``test-*.npy``: NumPy ``.npy`` files (version
  1.0 header, then raw C-order bytes) of uint8 ``[k, S, S, 3]``; every shard but the last of a
  split holds ``per_shard`` images (about ``SHARD_BYTES``). Images are always stored with 3
  channels (a grayscale image repeated, ``images.to_channels``); when every image of both splits
  was grayscale the data has 1 channel and channel 0 is read back, which is the decoded gray
  image exactly.
* ``index.json`` (written last, atomically): the format, the key of the folder's file list it was
  prepared from, the counts, ``per_shard``, whether all images were gray, and the exact integer
  sums of the training pixels and their squares per channel (mean/std follow from them).
* ``files.json``: the file list (relative path, size, modification time) the key was made of,
  only to say which files changed when the folder no longer matches.

Why raw ``.npy`` shards read with ``os.preadv`` (into the batch's buffer, no copy): reading rows at
computed offsets needs no parsing and no per-record framing (a TFRecord would need its offsets
indexed or a sequential scan, which breaks the per-epoch permutation), the files stay readable with
``np.load``, and ``pread`` goes through the page cache, which the kernel owns: unlike
``np.memmap``, whose mapped pages count toward the process' resident memory, the training process'
RSS does not grow with the data (measured: ``benchmarks/folder_cache.py``).

Never trusted blindly: opening checks the index's fields and types, every shard's header (shape,
dtype) and byte size against the index; anything off is one :class:`DataError` saying the cache is
damaged and to delete it or pass ``--rebuild_cache``. Pixel contents are not checksummed (that
would read the whole cache at every start); a short read during training is an error, never
zeros.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from ffsd_tf.data.base import error_summary
from ffsd_tf.data.idx import DataError

FORMAT = 1
INDEX = "index.json"
FILES = "files.json"
SHARD_BYTES = 256 << 20  # about 256 MiB a shard
STORED_CHANNELS = 3
SPLITS = ("train", "test")


def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:05d}.npy"


def images_per_shard(size: int) -> int:
    return max(1, SHARD_BYTES // (size * size * STORED_CHANNELS))


class Damaged(DataError):
    """The cache directory is not what its index says (truncated shard, bad JSON, wrong sizes)."""


def damaged(entry: str, why: str) -> Damaged:
    return Damaged(f"the folder cache {entry} is damaged ({why}); delete that folder or pass --rebuild_cache "
                   "to prepare it again")


# ---------------------------------------------------------------------------------------------
# writing


def _npy_header(shape: tuple) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


class Writer:
    """Writes the shards of a new cache into ``directory`` (a fresh temporary folder), in order.

    ``add(split, batch)`` appends uint8 ``[b, S, S, 3]`` images; ``finish(index, files)`` checks
    the counts, writes ``files.json`` and then ``index.json``, and fsyncs everything.
    """

    def __init__(self, directory: str, counts: dict, size: int):
        self.directory, self.counts, self.size = directory, dict(counts), int(size)
        self.per_shard = images_per_shard(self.size)
        self.written = {split: 0 for split in SPLITS}
        self._file = None
        self._open_split = None

    def _shard_count(self, split: str, shard: int) -> int:
        return min(self.per_shard, self.counts[split] - shard * self.per_shard)

    def add(self, split: str, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, np.uint8)
        start = 0
        while start < len(batch):
            done = self.written[split]
            shard, within = divmod(done, self.per_shard)
            if within == 0:
                self._close()
                path = os.path.join(self.directory, shard_name(split, shard))
                self._file = open(path, "wb")
                self._file.write(_npy_header((self._shard_count(split, shard), self.size, self.size, STORED_CHANNELS)))
            take = min(len(batch) - start, self.per_shard - within)
            self._file.write(batch[start : start + take].tobytes())
            self.written[split] += take
            start += take

    def _close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def finish(self, index: dict, files: dict) -> None:
        from ffsd_tf.atomic import write_json_atomic, write_text_atomic

        self._close()
        if self.written != self.counts:
            raise RuntimeError(f"wrote {self.written} images, expected {self.counts}")
        write_text_atomic(os.path.join(self.directory, FILES), json.dumps(files, separators=(",", ":")))
        write_json_atomic(os.path.join(self.directory, INDEX),
                          {**index, "format": FORMAT, "per_shard": self.per_shard, "counts": self.counts})
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        try:
            self._close()
        except OSError:
            pass


def install(tmp: str, entry: str) -> None:
    """Puts the finished cache ``tmp`` in place of ``entry`` (a rename; the old one, if any, is moved
    aside first and then removed): a reader sees the old cache, then the new one."""
    old = None
    if os.path.lexists(entry):
        old = f"{tmp}.old"
        os.rename(entry, old)
    os.rename(tmp, entry)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# reading


def read_index(entry: str) -> dict:
    """The index of the cache ``entry``, its fields checked; :class:`Damaged` if unreadable or malformed."""
    path = os.path.join(entry, INDEX)
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise damaged(entry, f"{INDEX} is missing") from None
    except (OSError, ValueError) as e:
        raise damaged(entry, f"{INDEX} is unreadable: {error_summary(e)[:80]}") from None
    integer = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    checks = [
        (isinstance(index, dict), "not an object"),
        (lambda: index.get("format") == FORMAT, f"format {index.get('format')!r}, not {FORMAT}"),
        (lambda: isinstance(index.get("key"), str), "no key"),
        (lambda: integer(index.get("image_size")) and index["image_size"] > 0, "no image_size"),
        (lambda: integer(index.get("per_shard")) and index["per_shard"] > 0, "no per_shard"),
        (lambda: isinstance(index.get("counts"), dict)
         and all(integer(index["counts"].get(s)) and index["counts"][s] > 0 for s in SPLITS), "bad counts"),
        (lambda: isinstance(index.get("all_gray"), bool), "no all_gray"),
        (lambda: all(isinstance(index.get(k), list) and len(index[k]) == STORED_CHANNELS
                     and all(integer(v) and v >= 0 for v in index[k]) for k in ("sum", "sum_squares")), "bad sums"),
    ]
    for ok, why in checks:
        if not (ok() if callable(ok) else ok):
            raise damaged(entry, f"{INDEX}: {why}")
    return index


def _shard_offsets(entry: str, split: str, index: dict) -> list:
    """``[(path, header bytes)]`` of a split's shards, each checked against the index."""
    size, per_shard, count = index["image_size"], index["per_shard"], index["counts"][split]
    record = size * size * STORED_CHANNELS
    shards = []
    for shard in range(-(-count // per_shard)):
        path = os.path.join(entry, shard_name(split, shard))
        rows = min(per_shard, count - shard * per_shard)
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version != (1, 0):
                    raise ValueError(f"npy version {version}")
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                header = f.tell()
                actual = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise damaged(entry, f"{shard_name(split, shard)} is missing") from None
        except (OSError, ValueError) as e:
            raise damaged(entry, f"{shard_name(split, shard)} has no valid header: {error_summary(e)[:60]}") from None
        if shape != (rows, size, size, STORED_CHANNELS) or fortran or dtype != np.uint8:
            raise damaged(entry, f"{shard_name(split, shard)} holds {dtype} {shape}, the index says uint8 "
                                 f"{(rows, size, size, STORED_CHANNELS)}")
        if actual != header + rows * record:
            raise damaged(entry, f"{shard_name(split, shard)} is {actual:,} bytes, not {header + rows * record:,} "
                                 "(truncated?)")
        shards.append((path, header))
    return shards


class CachedImages:
    """uint8 ``[N, S, S, C]`` images of one split of a prepared cache, read from disk on demand.

    Array-like where the project reads image arrays: ``len``, ``shape``, ``dtype``, ``ndim``,
    ``x[i]``, ``x[a:b]``, ``x[index array]`` and iteration read those rows; ``np.asarray(x)``
    reads them all (small splits, tests). ``read(indices)`` is the batch read of the train stream;
    ``subset(indices)`` a view of some rows (``train_subset``), reading nothing.
    """

    def __init__(self, shards: list, per_shard: int, count: int, size: int, channels: int, rows=None):
        self.shards, self.per_shard, self.count = list(shards), int(per_shard), int(count)
        self.size, self.channels = int(size), int(channels)
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        self._fds = {}

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def shape(self) -> tuple:
        return (len(self), self.size, self.size, self.channels)

    def __len__(self) -> int:
        return self.count if self.rows is None else len(self.rows)

    def subset(self, indices) -> "CachedImages":
        indices = np.asarray(indices, np.int64)
        rows = indices if self.rows is None else self.rows[indices]
        return CachedImages(self.shards, self.per_shard, self.count, self.size, self.channels, rows)

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.shards[shard][0], os.O_RDONLY)
        return fd

    def read(self, indices) -> np.ndarray:
        """uint8 ``[len(indices), S, S, C]``: the images at positions ``indices`` (any order, repeats allowed)."""
        indices = np.asarray(indices, np.int64).reshape(-1)
        n = len(self)
        if len(indices) and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"image index out of range for {n} images")
        indices = np.where(indices < 0, indices + n, indices)
        rows = indices if self.rows is None else self.rows[indices]
        record = self.size * self.size * STORED_CHANNELS
        out = np.empty((len(rows), self.size, self.size, STORED_CHANNELS), np.uint8)
        flat = out.reshape(len(rows), record)
        for j, row in enumerate(rows.tolist()):
            shard, within = divmod(row, self.per_shard)
            got = os.preadv(self._fd(shard), [flat[j]], self.shards[shard][1] + within * record)
            if got != record:
                raise OSError(f"short read of {self.shards[shard][0]} (image {row}): the cache is damaged; "
                              "delete it or pass --rebuild_cache")
        return out if self.channels == STORED_CHANNELS else np.ascontiguousarray(out[..., :1])

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.read([key])[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return self.read(key)

    def __iter__(self):
        for start in range(0, len(self), 1024):
            yield from self.read(np.arange(start, min(start + 1024, len(self))))

    def __array__(self, dtype=None, copy=None):
        x = self.read(np.arange(len(self)))
        return x if dtype is None else x.astype(dtype)

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def __del__(self):
        self.close()

    def __getstate__(self):  # a copy opens its own files
        return {**self.__dict__, "_fds": {}}


def open_split(entry: str, split: str, index: dict) -> CachedImages:
    """The images of ``split`` of the checked cache ``entry`` (``index`` from :func:`read_index`)."""
    channels = 1 if index["all_gray"] else STORED_CHANNELS
    return CachedImages(_shard_offsets(entry, split, index), index["per_shard"], index["counts"][split],
                        index["image_size"], channels)


def channel_moments(index: dict) -> tuple[tuple, tuple]:
    """mean and std per channel (the data's channels) from the index's exact integer pixel sums: the
    values ``base.channel_stats`` gives for the training images (in [0, 1] units; std floored at 1e-3)."""
    channels = 1 if index["all_gray"] else STORED_CHANNELS
    count = index["counts"]["train"] * index["image_size"] ** 2
    total = np.array(index["sum"][:channels], np.float64) / 255.0
    squares = np.array(index["sum_squares"][:channels], np.float64) / 255.0**2
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.maximum(std, 1e-3))

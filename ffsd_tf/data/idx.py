"""A small, strict reader (and writer) of IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the payload: ``prod(dims)`` big-endian values of the dtype, nothing
more. Files may be gzip-compressed (``.gz``, detected by content, not by name).

``read_idx`` checks every part of that and raises :class:`DataError` naming the file when the file
is missing, truncated, corrupt, has a wrong magic number or an unknown dtype code, or carries
trailing bytes, so that a damaged download fails before training starts, not mid-epoch.

:class:`DataError` is defined here because this is the dependency-free leaf module of
``ffsd_tf.data``; import it from ``ffsd_tf.data``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np


class DataError(ValueError):
    """Data that cannot be loaded as asked; the message is one actionable line (what, where, fix)."""


# IDX dtype code -> big-endian NumPy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist") from None
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"IDX file {path} is a truncated or corrupt gzip file ({e}); download it again") from None
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (raw or gzip) into a native-endian array of its shape and dtype.

    Raises:
      DataError: naming ``path``, if the file is missing or unreadable, is not valid gzip, has a
        wrong magic number, an unknown dtype code, a truncated header, or a payload whose length
        is not exactly ``prod(dims) * itemsize``.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than the 4-byte magic number")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"IDX file {path} has a wrong magic number 0x{data[:4].hex()} (must start with 0x0000); "
            "it is not an IDX file"
        )
    if code not in IDX_DTYPES:
        raise DataError(
            f"IDX file {path} has an unknown dtype code 0x{code:02x} (known: "
            + ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
            + ")"
        )
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions; it is corrupt")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a crafted header cannot overflow
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {what}: payload of {got} bytes, shape {tuple(dims)} needs {expected}; "
            "download it again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes ``array`` as an IDX file, gzip-compressed when ``path`` ends with ``.gz``."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(str(d) for d in _CODES)}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    code = _CODES[native]
    payload = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    path = os.fspath(path)
    if path.endswith(".gz"):
        payload = gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)

"""Atomic file writes (temporary file, fsync, rename): readers see the old file or the new one.

No TensorFlow here, so light tools (``report``) can use it without loading TF.
"""

from __future__ import annotations

import json
import os
import tempfile


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes to a temporary file in the same directory, fsyncs, then renames over ``path``.

    Readers see the old file or the new one, never half of one; the file gets the usual
    permissions (mkstemp's are 0600).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")

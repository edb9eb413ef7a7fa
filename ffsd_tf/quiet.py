"""Import TensorFlow without its C++ start-up banner on stderr.

TensorFlow 2.21 prints "All log messages before absl::InitializeLog()..." and a oneDNN notice
while it loads, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. Command-line tools promise one clear
line on stderr when something is wrong, so they import TensorFlow through this function, which
sends file descriptor 2 to a temporary file during the import and replays it only on failure.
"""

from __future__ import annotations

import os
import sys
import tempfile


def import_tensorflow_quietly():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf  # noqa: F401
            import keras  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tf

"""``ffsd-export RUN_DIR_OR_CHECKPOINT [--export_dir=...] [--version=N] [--formats=...]``.

Also ``python -m ffsd_tf.export ...`` and, from a checkout, ``python -m export ...``.

Exports the leader of a training run (``--output_dir`` of ``python -m ffsd_tf.run``; its latest
checkpoint, or the checkpoint prefix given, ``<run>/checkpoints/ckpt-N``) to
``<export_dir>/<version>/``: SavedModel, TFLite files, report. Bad input (a missing path, a
directory that is not a run, a checkpoint that does not match the run's config, an existing
version, an unknown format or flag) exits with code 2 and one line ``error: ...`` on stderr,
before anything is written.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from ffsd_tf.cli import fail, flags_parser  # noqa: E402

FLAGS = flags.FLAGS
FORMATS = ("savedmodel", "fp32", "fp16", "dynamic", "int8")  # = export.ALL_FORMATS (no TF import here)

flags.DEFINE_string("export_dir", None, "Where versions go (default: <run_dir>/export).")
flags.DEFINE_integer("version", None, "Version number to write (default: the highest existing + 1, or 1). "
                     "An existing version is refused.", lower_bound=1)
flags.DEFINE_list("formats", list(FORMATS), f"What to export, any of {','.join(FORMATS)}.")
flags.DEFINE_integer("max_eval", 1000, "Test images to measure every format on.", lower_bound=1)
flags.DEFINE_integer("max_representative", 200, "Training images to calibrate the int8 file on.", lower_bound=1)
flags.DEFINE_integer("top_k", 5, "How many classes the SavedModel returns per image.", lower_bound=1)
flags.DEFINE_integer("latency_repeats", 10,
                     "Timed calls per format at batch 1 (half as many, at least 3, at batch 32).", lower_bound=1)

flags.DEFINE_bool("average", False, "Export the leader's weight average (a run trained with --ema_decay > 0) "
                  "instead of its last weights.")

USAGE = "usage: ffsd-export RUN_DIR_OR_CHECKPOINT [--export_dir=DIR] [--version=N] [--formats=a,b] [--average]"


def quiet_imports():
    """TensorFlow without its C++ start-up lines on stderr (replayed only if the import fails)."""
    from ffsd_tf.quiet import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    tf.get_logger().setLevel("ERROR")
    from absl import logging

    logging.set_verbosity(logging.ERROR)


def main(argv):
    if len(argv) != 2:
        fail(USAGE if len(argv) < 2 else f"unexpected arguments {' '.join(argv[2:])}; {USAGE}")
    path = argv[1]
    quiet_imports()

    from ffsd_tf import export
    from ffsd_tf.rundir import RunDirError

    errors = (RunDirError, export.ExportError)
    try:
        from ffsd_tf.data import DataError

        errors += (DataError,)
    except ImportError:
        pass
    try:
        report = export.export_run(
            path,
            export_dir=FLAGS.export_dir,
            version=FLAGS.version,
            formats=FLAGS.formats,
            max_eval=FLAGS.max_eval,
            max_representative=FLAGS.max_representative,
            top_k=FLAGS.top_k,
            latency_repeats=FLAGS.latency_repeats,
            average=FLAGS.average,
        )
    except errors as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    from ffsd_tf.export import report as rep

    print(f"Exported version {report['version']} to {report['path']}\n")
    print(rep.markdown(report))


def console_main():
    """The ``ffsd-export`` console script."""
    app.run(main, flags_parser=flags_parser(FLAGS))


if __name__ == "__main__":
    console_main()

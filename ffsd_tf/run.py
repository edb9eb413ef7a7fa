"""Train an FFSD cohort: ``python -m ffsd_tf.run --flagfile=experiments/cifar_r32.flags``.

``train`` runs the steps below in order, each a function here:

1. ``set_up``: the flags as a validated ``config.RunConfig``, the distribution strategy, seeds;
2. ``load_data``: the dataset (failing within seconds if it is missing);
3. ``cohort_config``, ``build_cohort``: the cohort for that data, compiled with one optimizer per role;
4. ``resume``: the newest readable checkpoint of ``<output_dir>/checkpoints``, when there is one
   (``rundir.check_compatible`` first refuses one written for another configuration);
5. ``write_run_files``, ``fit``: flags.txt and config.json, then training with a checkpoint per epoch;
6. ``write_results``: ``results.json`` and ``results.md`` (best and final test accuracy of every model);
7. ``publish_export``: with ``--export``, the leader's SavedModel and TFLite files.

See ``rundir`` for the directory layout.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from ffsd_tf.quiet import import_tensorflow_quietly

import_tensorflow_quietly()

from absl import app, flags, logging  # noqa: E402

from ffsd_tf import flags as ffsd_flags  # noqa: E402  (defines the flags)
from ffsd_tf import rundir  # noqa: E402
from ffsd_tf.cli import fail, flags_parser  # noqa: E402
from ffsd_tf.config import flag_text  # noqa: E402

FLAGS = flags.FLAGS


class UsageError(ValueError):
    pass


def effective_flags_text() -> str:
    """The flags of this run as a flagfile (every ffsd flag, defaults included)."""
    module = sys.modules[ffsd_flags.__name__]
    lines = ["# Effective flags of this run; replay with --flagfile=<this file>."]
    filled = ffsd_flags.set_filled_flags()  # the --loss_weights set's values, stated one by one
    for flag in sorted(FLAGS.get_flags_for_module(module), key=lambda f: f.name):
        if flag.name in filled:
            lines.append(flag_text(flag.name, filled[flag.name]))
            continue
        if flag.value is None or flag.name in ("force_resume", "reexport"):  # one-shot overrides
            continue
        # "." = this file's folder (ffsd_flags.resolve_output_dir): a copied run replays into the copy.
        lines.append("--output_dir=." if flag.name == "output_dir" else flag.serialize())
    return "\n".join(lines) + "\n"


def probe_writable(directory: str) -> None:
    """Fails now, not after an epoch, if the output directory cannot be written."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, ".write-probe")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(probe)
    except OSError as e:
        raise UsageError(f"--output_dir={directory} is not writable ({e.strerror}); choose another directory") from None


def build_optimizers(steps_per_epoch: int, roles):
    """The paper's optimizers per role (``optimizers.paper_optimizers``) with the flags' rates and schedule."""
    from ffsd_tf.optimizers import paper_optimizers

    return paper_optimizers(
        roles, lr=FLAGS.lr, decoder_lr=FLAGS.decoder_lr, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov,
        weight_decay=FLAGS.weight_decay, fusion_weight_decay=FLAGS.fusion_weight_decay,
        decoder_weight_decay=FLAGS.decoder_weight_decay, milestones=ffsd_flags.milestones(), gamma=FLAGS.lr_gamma,
        steps_per_epoch=steps_per_epoch, warmup_epochs=FLAGS.lr_warmup_epochs,
    )


def train() -> dict:
    """One training run from the parsed flags; returns results.json's content ({} on a worker)."""
    from ffsd_tf import distribute

    config, strategy, resuming = set_up()
    bundle = load_data(config)
    config = cohort_config(config, bundle)
    out, chief = config.runtime.output_dir, distribute.is_chief()
    if resuming:
        rundir.check_compatible(out, config, force=config.runtime.force_resume)
    if chief:
        probe_writable(out)
    steps = config.optimization.steps_per_epoch or bundle.steps_per_epoch
    model, checkpoint = build_cohort(config, steps, strategy, chief)
    history, initial_epoch = resume(config, model, checkpoint, chief) if resuming else ([], 0)
    if chief:
        write_run_files(out, config, bundle)
    fit(config, model, checkpoint, bundle, steps, history, initial_epoch, chief)
    if not chief:
        return {}
    results = write_results(config, bundle, history)
    if config.runtime.export:
        publish_export(config)
    return results


def set_up():
    """The run the flags describe (validated), the distribution strategy, seeds and determinism;
    whether ``output_dir`` holds a run to resume."""
    import keras
    import tensorflow as tf

    from ffsd_tf import distribute

    config = ffsd_flags.run_config()
    config.validate(num_replicas=1)
    try:
        strategy = distribute.make_strategy(config.runtime.strategy)
    except ValueError as e:
        raise UsageError(str(e)) from None
    config.validate(num_replicas=strategy.num_replicas_in_sync)
    out = config.runtime.output_dir
    resuming = os.path.isdir(out) and rundir.has_checkpoint(out)
    if resuming and not config.runtime.resume:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --output_dir")
    keras.utils.set_random_seed(config.runtime.seed)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    return config, strategy, resuming


def load_data(config):
    """The dataset (``config.data``), loaded and validated: a missing or bad one fails here, in seconds."""
    from ffsd_tf.data import DataError, load_dataset

    try:
        return load_dataset(config.data.dataset, **config.data.load_arguments(config.runtime.seed))
    except DataError as e:
        raise UsageError(str(e)) from None


def cohort_config(config, bundle):
    """The run for the loaded data: the cohort's classes and input shape, and the backbone of the
    ``--teacher_run`` network (from that run's config.json)."""
    teacher = None
    if config.teacher_run is not None:
        teacher_config, _ = rundir.load_config(config.teacher_run)
        teacher = teacher_config.model
    return config.with_data(bundle.num_classes, bundle.image_shape, teacher=teacher)


def build_cohort(config, steps_per_epoch: int, strategy, chief: bool):
    """The compiled cohort (with its teacher's weights) and the checkpoint that holds its state."""
    try:
        model = build_model(config, steps_per_epoch, strategy)
    except ValueError as e:  # a cohort the trainer refuses (a teacher whose maps cannot be transferred)
        raise UsageError(str(e)) from None
    if config.teacher_run is not None:
        teacher_ckpt = rundir.load_teacher(model, config.teacher_run, config.data.dataset)
        if chief:
            print(f"Teacher: {config.cohort.teacher} from {teacher_ckpt} ({config.cohort.teacher_loss})")
    return model, rundir.checkpoint_for(model)


def build_model(config, steps_per_epoch: int, strategy=None):
    """The compiled FFSD trainer of a RunConfig: loss weights, optimizers, LR schedules and precision."""
    import tensorflow as tf

    from ffsd_tf import distribute
    from ffsd_tf.trainer import FFSD

    precision = config.runtime.precision
    distribute.set_precision(precision)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = FFSD(config.cohort, loss_weights=config.loss_weights.functions())
        optimizers = distribute.wrap_for_precision(build_optimizers(steps_per_epoch, model.active_roles), precision)
        model.compile(optimizers, jit_compile=config.runtime.jit_compile)
    return model


def resume(config, model, checkpoint, chief: bool) -> tuple[list[dict], int]:
    """Restores the newest readable checkpoint of ``output_dir``: (the history up to it, epochs done)."""
    out, epochs = config.runtime.output_dir, config.optimization.epochs
    latest = rundir.restore_latest_good(checkpoint, out, warn=lambda m: print(m, file=sys.stderr))
    initial_epoch = int(model.epoch.numpy())
    history = []
    history_path = os.path.join(out, rundir.HISTORY)
    if os.path.exists(history_path):
        history = [h for h in rundir.read_history(history_path) if h["epoch"] <= initial_epoch]
    if initial_epoch > epochs:  # --epochs may grow, not shrink below what is trained
        raise UsageError(f"{out} has trained {initial_epoch} epochs, more than --epochs={epochs}; "
                         f"pass --epochs={initial_epoch} or more, or another --output_dir")
    if chief:
        rundir.write_checkpoint_state(out, latest)  # lists only checkpoints/ files for TF's sweep
        print(f"Resuming from {latest} (epoch {initial_epoch} done)")
    return history, initial_epoch


def write_run_files(out, config, bundle) -> None:
    """flags.txt (for replay) and config.json (the RunConfig and the dataset's metadata), atomically."""
    rundir.write_text_atomic(os.path.join(out, rundir.FLAGS_FILE), effective_flags_text())
    rundir.write_config(out, config, bundle)


def fit(config, model, checkpoint, bundle, steps: int, history: list[dict], initial_epoch: int, chief: bool) -> None:
    """Trains from ``initial_epoch`` to ``--epochs``, a checkpoint (and history entry) per epoch."""
    import tensorflow as tf

    from ffsd_tf import distribute

    out, epochs = config.runtime.output_dir, config.optimization.epochs
    if initial_epoch >= epochs:
        return
    train_data, test_data = bundle.train_stream(initial_epoch), bundle.test_dataset()
    if config.runtime.strategy == "multi_worker":  # in-memory data: shard by batch, not by file
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_data, test_data = train_data.with_options(options), test_data.with_options(options)
    ckpt_dir = out if chief else tempfile.mkdtemp(prefix=f"ffsd-{distribute.task_id()}-")
    try:
        model.fit(
            train_data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            validation_data=test_data,
            validation_freq=validation_epochs(epochs, config.runtime.eval_every),
            callbacks=run_callbacks(out, ckpt_dir, checkpoint, history, bundle, epochs, steps, chief),
            shuffle=False,  # the stream is already shuffled, per epoch, from the seed
            verbose=0,
        )
    finally:
        if not chief:
            shutil.rmtree(ckpt_dir, ignore_errors=True)


def run_callbacks(out, ckpt_dir, checkpoint, history, bundle, epochs: int, steps: int, chief: bool) -> list:
    """Non-finite stop, checkpoints; on the chief also the collapse warning, TensorBoard and progress."""
    import numpy as np

    from ffsd_tf import callbacks

    cbs = [
        callbacks.StopOnNonFinite(),
        callbacks.EpochCheckpoint(ckpt_dir, checkpoint, FLAGS.keep_checkpoints, history, chief=chief),
    ]
    if chief:
        from ffsd_tf.visualize import AttentionImages, sample_images

        cbs.append(callbacks.CollapseWarning())

        if hasattr(bundle, "x_test"):  # in-memory datasets: 8 class-balanced test images
            pixels, _ = sample_images(bundle, 8)
        else:  # streamed (ImageNet): the first 8 validation images
            pixels = np.stack([x for x, _ in bundle.raw("test").take(8).as_numpy_iterator()])
        cbs += [
            callbacks.PerModelTensorBoard(os.path.join(out, "tensorboard")),
            AttentionImages(bundle.normalize(pixels).numpy(), os.path.join(out, "tensorboard", "attention"),
                            every=FLAGS.eval_every, pixels=pixels),
            callbacks.CompactProgress(epochs, steps, FLAGS.verbose),
        ]
    return cbs


def validation_epochs(epochs: int, every: int) -> list[int]:
    """1-based epochs after which to evaluate: every ``every``-th and always the last."""
    return sorted({e for e in range(every, epochs + 1, every)} | {epochs})


def write_results(config, bundle, history: list[dict]) -> dict:
    """results.json and results.md from the history; prints the table."""
    out, cohort, epochs = config.runtime.output_dir, config.cohort, config.optimization.epochs
    results = {
        "dataset": bundle.name,
        "model": cohort.model,
        "num_students": cohort.num_students,
        "epochs": epochs,
        "accuracy": rundir.summarize(history, cohort.num_students),
        "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),  # every epoch's wall time
        "train_cpu_seconds": round(sum(h.get("cpu_seconds", 0.0) for h in history), 1),  # and CPU time
    }
    title = (f"{cohort.model} on {bundle.name}, {cohort.num_students} common student"
             f"{'s' * (cohort.num_students != 1)}, {epochs} epochs")
    table = rundir.write_results(out, results, title)
    print(f"\nResults ({os.path.join(out, rundir.RESULTS_TABLE)}):\n\n{table}")
    return results


def publish_export(config) -> None:
    """Exports the leader of the finished run (``--export``), unless its last checkpoint already is."""
    from ffsd_tf.export import ExportError, export_run, published_version

    out = config.runtime.output_dir
    export_dir = config.runtime.export_dir or os.path.join(out, rundir.EXPORT)
    newest = rundir.find_checkpoints(out)[0]
    average = config.runtime.export_average
    weights = "average" if average else "network"
    done = None if config.runtime.reexport else published_version(export_dir, newest, weights)
    if done is not None:  # a rerun of a finished --export command: nothing new to publish
        print(f"Export {done} of {os.path.basename(newest)} is up to date (pass --reexport for a new version)")
        return
    try:
        report = export_run(out, export_dir=export_dir, average=average)
    except ExportError as e:
        raise UsageError(f"training finished, export failed: {e}") from None
    what = "the leader's weight average" if average else "the leader"
    print(f"Exported {what} to {report['path']}")


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value")
    from ffsd_tf import callbacks

    logging.set_verbosity(logging.ERROR)  # tfds and TF warn through absl; errors reach the user as one line
    ffsd_flags.resolve_output_dir(sys.argv)
    try:
        train()
    except (ffsd_flags.FlagError, UsageError, rundir.RunDirError) as e:
        fail(str(e))
    except callbacks.NonFiniteLossError as e:
        fail(str(e), code=3)
    except callbacks.CheckpointWriteError as e:
        fail(str(e), code=4)
    except OSError as e:  # disk full or an I/O error writing a run file: the last checkpoint is kept
        fail(f"cannot write {e.filename or FLAGS.output_dir} ({e.strerror or e}); free disk space or fix the "
             "folder and rerun the same command to resume", code=4)


def console_main():
    """The ``ffsd-train`` console script (= ``python -m ffsd_tf.run``)."""
    app.run(main, flags_parser=flags_parser())


if __name__ == "__main__":
    console_main()

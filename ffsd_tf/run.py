"""Train an FFSD cohort: ``python -m ffsd_tf.run --flagfile=experiments/cifar_r32.flags``.

A run loads the data (failing within seconds if it is missing), builds the cohort and one
optimizer per role, resumes from ``<output_dir>/checkpoints`` when it can, trains with a
checkpoint per epoch, and writes ``results.json`` and ``results.md`` (best and final test
accuracy of every model). See ``rundir`` for the directory layout.
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
from ffsd_tf.cli import fail, flags_parser  # noqa: E402

FLAGS = flags.FLAGS

# Rows of the results table: (metric prefix, label).
TABLE_ROWS = [("leader", "Leader"), ("fusion", "Fusion classifier"), ("students_mean", "Students' mean"),
              ("ensemble", "Softmax ensemble"), ("ens_any", "Ens (any student right)"), ("teacher", "Teacher (fixed)")]


class UsageError(ValueError):
    pass


def effective_flags_text() -> str:
    """The flags of this run as a flagfile (every ffsd flag, defaults included)."""
    module = sys.modules[ffsd_flags.__name__]
    lines = ["# Effective flags of this run; replay with --flagfile=<this file>."]
    for flag in sorted(FLAGS.get_flags_for_module(module), key=lambda f: f.name):
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


def summarize(history: list[dict], num_students: int) -> dict:
    """Best (with its epoch) and final test accuracy of every model from the per-epoch history."""
    evaluated = [h for h in history if any(k.startswith("val_") for k in h)]
    results = {}
    names = [f"student{i + 1}" for i in range(num_students)] + [k for k, _ in TABLE_ROWS]
    for name in names:
        key = f"val_{name}/acc"
        series = [(h["epoch"], h[key]) for h in evaluated if key in h]
        if not series:
            continue
        best_epoch, best = max(series, key=lambda p: (p[1], -p[0]))
        results[name] = {"best": best, "best_epoch": best_epoch, "final": series[-1][1], "final_epoch": series[-1][0]}
    return results


def results_table(results: dict) -> str:
    labels = dict(TABLE_ROWS)
    lines = ["| model | best test acc (%) | epoch | final test acc (%) |", "|---|---:|---:|---:|"]
    order = [k for k in results if k.startswith("student") and k[len("student"):].isdigit()]
    order += [k for k, _ in TABLE_ROWS if k in results]
    for k in order:
        r = results[k]
        label = labels.get(k, k.replace("student", "Common student "))
        lines.append(f"| {label} | {100 * r['best']:.2f} | {r['best_epoch']} | {100 * r['final']:.2f} |")
    return "\n".join(lines) + "\n"


def train() -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from ffsd_tf import callbacks, rundir
    from ffsd_tf.data import DataError, load_dataset

    from ffsd_tf import distribute

    ffsd_flags.validate(num_replicas=1)
    try:
        strategy = distribute.make_strategy(FLAGS.strategy)
    except ValueError as e:
        raise UsageError(str(e)) from None
    ffsd_flags.validate(num_replicas=strategy.num_replicas_in_sync)
    chief = distribute.is_chief()
    out = FLAGS.output_dir
    resuming = os.path.isdir(out) and rundir.has_checkpoint(out)
    if resuming and not FLAGS.resume:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --output_dir")

    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()

    try:
        bundle = load_dataset(
            FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            batch_size=FLAGS.batch_size,
            eval_batch_size=FLAGS.eval_batch_size,
            seed=FLAGS.seed,
            train_subset=FLAGS.train_subset,
            test_subset=FLAGS.test_subset,
            image_size=FLAGS.image_size,
            synthetic_classes=FLAGS.synthetic_classes,
            synthetic_train=FLAGS.synthetic_train,
            synthetic_test=FLAGS.synthetic_test,
            partial_batch=FLAGS.partial_batch,
            validation_split=FLAGS.validation_split,
        )
    except DataError as e:
        raise UsageError(str(e)) from None

    config = config_from_flags(bundle)
    if resuming:
        rundir.check_compatible(out, config, FLAGS.dataset, partial_batch=bundle.partial_batch,
                                flags=ffsd_flags.result_flags(), force=FLAGS.force_resume)
    if chief:
        probe_writable(out)

    steps = FLAGS.steps_per_epoch or bundle.steps_per_epoch
    try:
        model = build_model(config, steps, strategy)
    except ValueError as e:  # a cohort the trainer refuses (a teacher whose maps cannot be transferred)
        raise UsageError(str(e)) from None
    if config.teacher is not None:
        teacher_ckpt = rundir.load_teacher(model, FLAGS.teacher_run, FLAGS.dataset)
        if chief:
            print(f"Teacher: {config.teacher} from {teacher_ckpt} ({config.teacher_loss})")
    checkpoint = rundir.checkpoint_for(model)

    history: list[dict] = []
    initial_epoch = 0
    if resuming:
        latest = rundir.restore_latest_good(checkpoint, out, warn=lambda m: print(m, file=sys.stderr))
        initial_epoch = int(model.epoch.numpy())
        history_path = os.path.join(out, rundir.HISTORY)
        if os.path.exists(history_path):
            history = [h for h in rundir.read_history(history_path) if h["epoch"] <= initial_epoch]
        if initial_epoch > FLAGS.epochs:  # --epochs may grow, not shrink below what is trained
            raise UsageError(f"{out} has trained {initial_epoch} epochs, more than --epochs={FLAGS.epochs}; "
                             f"pass --epochs={initial_epoch} or more, or another --output_dir")
        if chief:
            rundir.write_checkpoint_state(out, latest)  # lists only checkpoints/ files for TF's sweep
            print(f"Resuming from {latest} (epoch {initial_epoch} done)")

    if chief:
        write_run_files(out, config, bundle)

    epochs = FLAGS.epochs
    if initial_epoch < epochs:
        train_data, test_data = bundle.train_stream(initial_epoch), bundle.test_dataset()
        if FLAGS.strategy == "multi_worker":  # in-memory data: shard by batch, not by file
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            train_data, test_data = train_data.with_options(options), test_data.with_options(options)
        ckpt_dir = out if chief else tempfile.mkdtemp(prefix=f"ffsd-{distribute.task_id()}-")
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
        try:
            model.fit(
                train_data,
                epochs=epochs,
                initial_epoch=initial_epoch,
                steps_per_epoch=steps,
                validation_data=test_data,
                validation_freq=_validation_epochs(epochs),
                callbacks=cbs,
                shuffle=False,  # the stream is already shuffled, per epoch, from the seed
                verbose=0,
            )
        finally:
            if not chief:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
    if not chief:
        return {}

    results = {
        "dataset": bundle.name,
        "model": config.model,
        "num_students": config.num_students,
        "epochs": epochs,
        "accuracy": summarize(history, config.num_students),
        "train_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),  # every epoch's wall time
        "train_cpu_seconds": round(sum(h.get("cpu_seconds", 0.0) for h in history), 1),  # and CPU time
    }
    rundir.write_json_atomic(os.path.join(out, "results.json"), results)
    table = results_table(results["accuracy"])
    rundir.write_text_atomic(
        os.path.join(out, "results.md"),
        f"# {config.model} on {bundle.name}, {config.num_students} common student{'s' * (config.num_students != 1)}, "
        f"{epochs} epochs\n\n{table}",
    )
    print(f"\nResults ({out}/results.md):\n\n{table}")

    if FLAGS.export:
        from ffsd_tf.export import ExportError, export_run, published_version

        export_dir = FLAGS.export_dir or os.path.join(out, "export")
        newest = rundir.find_checkpoints(out)[0]
        done = None if FLAGS.reexport else published_version(export_dir, newest)
        if done is not None:  # a rerun of a finished --export command: nothing new to publish
            print(f"Export {done} of {os.path.basename(newest)} is up to date (pass --reexport for a new version)")
            return results
        try:
            report = export_run(out, export_dir=export_dir)
        except ExportError as e:
            raise UsageError(f"training finished, export failed: {e}") from None
        print(f"Exported the leader to {report['path']}")
    return results


def config_from_flags(bundle):
    """The cohort the flags describe, for the loaded dataset."""
    from ffsd_tf import rundir
    from ffsd_tf.trainer import FFSDConfig

    teacher = None
    if FLAGS.teacher_run is not None:
        teacher_config, _ = rundir.load_config(FLAGS.teacher_run)
        teacher = teacher_config.model
    return FFSDConfig(
        model=FLAGS.model,
        num_classes=bundle.num_classes,
        input_shape=tuple(bundle.image_shape),
        num_students=FLAGS.num_students,
        temperature=FLAGS.temperature,
        mutual_learning=FLAGS.mutual_learning,
        leader=FLAGS.leader,
        fusion=FLAGS.fusion and FLAGS.leader,
        diversity=FLAGS.diversity,
        self_distillation=FLAGS.self_distillation,
        sync_batchnorm=FLAGS.sync_batchnorm,
        teacher=teacher,
        teacher_loss=FLAGS.teacher_loss,
    )


def build_model(config, steps_per_epoch: int, strategy=None):
    """The compiled FFSD trainer: loss weights, optimizers, LR schedules and precision from the flags."""
    import tensorflow as tf

    from ffsd_tf import distribute
    from ffsd_tf.trainer import FFSD

    distribute.set_precision(FLAGS.precision)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = FFSD(config, loss_weights=ffsd_flags.weight_schedules())
        optimizers = distribute.wrap_for_precision(build_optimizers(steps_per_epoch, model.active_roles), FLAGS.precision)
        model.compile(optimizers, jit_compile=FLAGS.jit_compile)
    return model


def write_run_files(out, config, bundle) -> None:
    """flags.txt (replayable) and config.json (cohort + dataset metadata), atomically."""
    from ffsd_tf import rundir

    rundir.write_text_atomic(os.path.join(out, rundir.FLAGS_FILE), effective_flags_text())
    rundir.write_json_atomic(
        os.path.join(out, rundir.CONFIG),
        {
            "flags": ffsd_flags.result_flags(),  # compared on resume (rundir.check_compatible)
            "model": rundir.config_to_dict(config),
            "dataset": {
                "name": bundle.name,
                "data_dir": FLAGS.data_dir,
                "num_classes": bundle.num_classes,
                "image_shape": list(bundle.image_shape),
                "mean": list(bundle.mean),
                "std": list(bundle.std),
                "class_names": list(bundle.class_names),
                "partial_batch": bundle.partial_batch,
                "steps_per_epoch": bundle.steps_per_epoch,
            },
        },
    )


def _validation_epochs(epochs: int) -> list[int]:
    """1-based epochs after which to evaluate: every eval_every-th and always the last."""
    every = FLAGS.eval_every
    return sorted({e for e in range(every, epochs + 1, every)} | {epochs})


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; flags are written --name=value")
    from ffsd_tf import callbacks
    from ffsd_tf.rundir import RunDirError

    logging.set_verbosity(logging.ERROR)  # tfds and TF warn through absl; errors reach the user as one line
    ffsd_flags.resolve_output_dir(sys.argv)
    try:
        train()
    except (ffsd_flags.FlagError, UsageError, RunDirError) as e:
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

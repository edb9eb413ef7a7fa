"""The run directory: what a run writes, written atomically, and how to read it back.

::

    <output_dir>/
      flags.txt          effective flags; replay with --flagfile=<output_dir>/flags.txt
      config.json        the cohort (FFSDConfig) and the dataset metadata (classes, mean/std)
      checkpoints/       tf.train.Checkpoint per epoch: every network, every optimizer's state,
                         the epoch counter (the LR schedule is a function of the optimizer steps)
      history.json       per-epoch logs up to the last checkpoint
      tensorboard/       train/ and validation/ scalars named per model (leader/acc, ...)
      results.json       best and final accuracy of every model
      results.md         the same as a Markdown table
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from ffsd_tf.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic  # noqa: F401
from ffsd_tf.trainer import FFSD, FFSDConfig

CONFIG = "config.json"
FLAGS_FILE = "flags.txt"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message is one actionable line."""


def read_json(path: str):
    """The JSON in ``path``; a damaged file is a RunDirError (one line), not a traceback."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise RunDirError(f"{path} is damaged ({e}); restore it or start a new --output_dir") from None


def config_to_dict(config: FFSDConfig) -> dict:
    d = dataclasses.asdict(config)
    d["input_shape"] = list(d["input_shape"])
    return d


def config_from_dict(d: dict) -> FFSDConfig:
    d = dict(d)
    d["input_shape"] = tuple(d["input_shape"])
    return FFSDConfig(**d)


def has_checkpoint(run_dir: str) -> bool:
    """Whether ``checkpoints/checkpoint`` lists a checkpoint, readable or not: ``restore_latest_good``
    then restores the newest readable one or fails. (``tf.train.latest_checkpoint`` says None when
    the newest listed one is missing, and the run would silently start over on top of the others.)"""
    state = tf.train.get_checkpoint_state(os.path.join(run_dir, CHECKPOINTS))
    return state is not None and bool(state.model_checkpoint_path or state.all_model_checkpoint_paths)


def check_compatible(run_dir: str, config: FFSDConfig, dataset: str, partial_batch: str | None = None) -> None:
    """Refuses to resume a run directory written for another cohort, dataset or partial-batch policy."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise RunDirError(f"{run_dir} has checkpoints but no {CONFIG}; it was not written by ffsd_tf.run")
    saved = read_json(path)
    mine = config_to_dict(config)
    diffs = [f"{k}={saved['model'].get(k)!r} (now {mine[k]!r})" for k in mine if saved["model"].get(k) != mine[k]]
    if saved.get("dataset", {}).get("name") != dataset:
        diffs.append(f"dataset={saved.get('dataset', {}).get('name')!r} (now {dataset!r})")
    # Runs written before the policy existed trained on every partial batch ("keep").
    saved_policy = saved.get("dataset", {}).get("partial_batch", "keep")
    if partial_batch is not None and saved_policy != partial_batch:
        diffs.append(f"partial_batch={saved_policy!r} (now {partial_batch!r})")
    if diffs:
        raise RunDirError(
            f"checkpoint in {run_dir} is from another configuration ({'; '.join(diffs)}); "
            "use another --output_dir or the same flags"
        )


def restore_latest_good(checkpoint: tf.train.Checkpoint, run_dir: str, warn=None) -> str:
    """Restores the newest checkpoint that reads back; warns about and skips corrupt ones.

    A checkpoint is written to temporary files and listed in ``checkpoints/checkpoint`` only when
    complete, but a disk can still truncate or damage it later. Returns the path restored.
    """
    directory = os.path.join(run_dir, CHECKPOINTS)
    state = tf.train.get_checkpoint_state(directory)
    candidates = list(state.all_model_checkpoint_paths)[::-1] if state else []
    errors = []
    for path in candidates:
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
            return path
        except (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            errors.append(f"{os.path.basename(path)}: {first}")
            if warn is not None:
                warn(f"warning: checkpoint {path} is unreadable ({first}); trying the previous one")
    raise RunDirError(f"no readable checkpoint in {directory} ({'; '.join(errors) or 'none listed'}); "
                      "remove the directory to start over")


def load_config(run_dir: str) -> tuple[FFSDConfig, dict]:
    """(cohort config, dataset metadata) of a run directory."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG}); pass the --output_dir of a training run")
    saved = read_json(path)
    try:
        return config_from_dict(saved["model"]), saved["dataset"]
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path} does not describe an FFSD run ({type(e).__name__}: {e}); "
                          "restore it or pass another run directory") from None


def checkpoint_for(model: FFSD, with_optimizers: bool = True) -> tf.train.Checkpoint:
    """What a checkpoint holds: every network (weights and BN statistics) by name, the epoch and
    loss-weight state, and every optimizer (slots + iterations).

    Networks are listed explicitly: TensorFlow's object graph does not follow Keras' lists and
    dicts of sub-models (``common_students``, ``sd_decoders``), so checkpointing the trainer
    alone would silently drop the students' and decoders' BatchNorm statistics.
    """
    state = {"epoch": model.epoch, **{f"w_{k}": v for k, v in model.loss_weight_vars.items()}}
    parts = {"networks": dict(model.networks), "state": state}
    if with_optimizers and getattr(model, "optimizer", None) is not None:
        parts["optimizers"] = dict(model.optimizers)
    return tf.train.Checkpoint(**parts)


def restore_model(path: str) -> tuple[FFSD, dict, str]:
    """Rebuilds the cohort of a run directory (or a checkpoint prefix inside one) with its weights.

    Returns ``(model, dataset_metadata, checkpoint_path)``. Optimizer state is not needed and
    not restored.
    """
    if os.path.isdir(path):
        run_dir = path
        ckpt = tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINTS))
        if ckpt is None:
            raise RunDirError(f"no checkpoint in {os.path.join(run_dir, CHECKPOINTS)}; train first or pass a run directory")
    else:
        ckpt = path
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        if not tf.io.gfile.exists(ckpt + ".index"):
            raise RunDirError(f"checkpoint {ckpt} does not exist (expected {ckpt}.index)")
    config, dataset = load_config(run_dir)
    model = FFSD(config)
    try:
        checkpoint_for(model, with_optimizers=False).restore(ckpt).expect_partial().assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"checkpoint {ckpt} does not match {run_dir}/{CONFIG}: {first[:200]}") from None
    return model, dataset, ckpt


def load_teacher(model: FFSD, run_dir: str, dataset: str) -> str:
    """Copies the deployable network of the run in ``run_dir`` (its leader, or its student1 when
    it had none) into ``model.teacher``; returns the checkpoint read.

    The teacher must have been trained on the same dataset, classes and input shape, and be the
    backbone ``model.config.teacher`` names (``config_from_flags`` reads it from the same run).
    """
    teacher_run, meta, ckpt = restore_model(run_dir)
    tc, mc = teacher_run.config, model.config
    if meta.get("name") != dataset:
        raise RunDirError(f"--teacher_run={run_dir} was trained on {meta.get('name')!r}, this run is on {dataset!r}; "
                          "train a teacher on this dataset")
    if (tc.num_classes, tuple(tc.input_shape)) != (mc.num_classes, tuple(mc.input_shape)):
        raise RunDirError(f"--teacher_run={run_dir} has {tc.num_classes} classes at {tuple(tc.input_shape)}, this run "
                          f"{mc.num_classes} at {tuple(mc.input_shape)}; train a teacher with the same data flags")
    if tc.model != mc.teacher:
        raise RunDirError(f"--teacher_run={run_dir} holds a {tc.model}, the checkpoint being resumed a {mc.teacher} "
                          "teacher; use the original --teacher_run or another --output_dir")
    source = teacher_run.leader if teacher_run.leader is not None else teacher_run.common_students[0]
    model.teacher.set_weights(source.get_weights())
    return ckpt

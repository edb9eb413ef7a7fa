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
import re
import sys
import time

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
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except IsADirectoryError:
        raise RunDirError(f"{path} is a directory, not a file; restore it or start a new --output_dir") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        e = " ".join(str(e).split())[:120]
        raise RunDirError(f"{path} is damaged ({e}); restore it or start a new --output_dir") from None


def config_to_dict(config: FFSDConfig) -> dict:
    d = dataclasses.asdict(config)
    d["input_shape"] = list(d["input_shape"])
    return d


def config_from_dict(d: dict) -> FFSDConfig:
    d = dict(d)
    d["input_shape"] = tuple(d["input_shape"])
    return FFSDConfig(**d)


STATE_FILE = "checkpoint"  # TF's checkpoint state file inside checkpoints/
_CKPT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")
_UNREADABLE = (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError, TypeError, OverflowError)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def _inside(path: str, directory: str) -> bool:
    """Whether ``path`` resolves (symlinks included) to ``directory`` or below it."""
    real, root = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([real, root]) == root


def listed_checkpoints(run_dir: str) -> list[str] | None:
    """The prefixes ``checkpoints/checkpoint`` lists, oldest first (the latest last); None when
    the state file is missing or does not parse.

    The state file is untrusted: TF's CheckpointManager deletes what it lists, so a listed path
    that resolves (symlinks included) outside ``<run_dir>/checkpoints/`` is a RunDirError and
    nothing is touched.
    """
    directory = os.path.join(run_dir, CHECKPOINTS)
    if os.path.lexists(directory) and not _inside(directory, run_dir):
        raise RunDirError(f"{directory} resolves outside {run_dir} (to {os.path.realpath(directory)}); "
                          "checkpoints must live inside the run directory: move them there")
    state_path = os.path.join(directory, STATE_FILE)
    if not os.path.lexists(state_path):
        return None
    if not _inside(state_path, directory):
        raise RunDirError(f"{state_path} points outside {directory}; delete it (the run rescans ckpt-N files)")
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 - a damaged text proto (ParseError, UnicodeDecodeError, OpError...)
        return None
    if state is None:
        return None
    paths = list(state.all_model_checkpoint_paths)
    if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
        paths.append(state.model_checkpoint_path)
    # get_checkpoint_state joins relative entries to ``directory``; absolute ones stay as written.
    outside = [p for p in paths if not _inside(p, directory)]
    if outside:
        raise RunDirError(
            f"{state_path} lists checkpoints outside {directory} ({', '.join(map(repr, outside[:3]))}); "
            f"nothing was deleted: delete {state_path} (the run rescans ckpt-N files) or restore it"
        )
    return paths


def _number(path: str) -> int | None:
    m = re.fullmatch(r"ckpt-(\d+)", os.path.basename(path))
    return int(m.group(1)) if m else None


def find_checkpoints(run_dir: str, warn=None) -> list[str]:
    """Every checkpoint prefix of a run directory, newest first: the ones ``checkpoints/checkpoint``
    lists plus every ``ckpt-N.index`` file on disk (a missing or damaged state file, or one that
    lacks entries, loses nothing). All of them lie inside ``<run_dir>/checkpoints/``; listed ones
    whose files are gone come too (``restore_*`` warn about and skip them)."""
    warn = _stderr if warn is None else warn
    directory = os.path.join(run_dir, CHECKPOINTS)
    listed = listed_checkpoints(run_dir)
    state_path = os.path.join(directory, STATE_FILE)
    scanned = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            m = _CKPT_INDEX.match(name)
            if m and _inside(os.path.join(directory, name), directory):
                scanned.append(os.path.join(directory, name[: -len(".index")]))
    if listed is None and os.path.lexists(state_path) and scanned:
        warn(f"warning: {state_path} is damaged; using the ckpt-N files found in {directory}")
    candidates, seen = [], set()
    for p in (listed or []) + scanned:
        if os.path.realpath(p) not in seen:
            seen.add(os.path.realpath(p))
            candidates.append(p)
    numbered = {p: _number(p) for p in candidates}
    # Newest first: by epoch number; unnumbered (foreign names) last, in listed order.
    return sorted(candidates, key=lambda p: (numbered[p] is None, -(numbered[p] or 0)))


def has_checkpoint(run_dir: str) -> bool:
    """Whether the run directory holds a checkpoint, listed or on disk, readable or not:
    ``restore_latest_good`` then restores the newest readable one or fails. (``tf.train.latest_checkpoint``
    says None when the newest listed one is missing or the state file is gone, and the run would
    silently start over on top of the others.)"""
    return bool(find_checkpoints(run_dir, warn=lambda m: None))


def readable(path: str) -> str | None:
    """None if every tensor of checkpoint ``path`` reads back (CRCs checked), else the first error line."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 - any failure to read is "unreadable"
        return _first_line(e)
    return None


def write_checkpoint_state(run_dir: str, latest: str) -> None:
    """Rewrites ``checkpoints/checkpoint`` to list ``latest`` and the older ``ckpt-N`` files on disk
    (relative names), so TF's CheckpointManager keeps and sweeps only files inside ``checkpoints/``."""
    from tensorflow.python.checkpoint import checkpoint_management

    directory = os.path.join(run_dir, CHECKPOINTS)
    newest = _number(latest)
    older = [p for p in find_checkpoints(run_dir, warn=lambda m: None)
             if newest is not None and (_number(p) or 0) < newest and os.path.exists(p + ".index")]
    names = [os.path.basename(p) for p in sorted(older, key=_number)] + [os.path.basename(latest)]
    now = time.time()
    checkpoint_management.update_checkpoint_state_internal(
        directory, names[-1], all_model_checkpoint_paths=names, save_relative_paths=True,
        all_model_checkpoint_timestamps=[now - 1.0] * len(names), last_preserved_timestamp=now - 2.0,
    )


def read_history(path: str) -> list[dict]:
    """``history.json``: a list of per-epoch dicts with an integer ``epoch``; else one-line RunDirError."""
    history = read_json(path)
    if not isinstance(history, list) or not all(
        isinstance(h, dict) and isinstance(h.get("epoch"), int) and not isinstance(h.get("epoch"), bool) for h in history
    ):
        raise RunDirError(f"{path} is not a list of per-epoch entries with an integer 'epoch'; "
                          "restore it, delete it (the per-epoch history is lost) or start a new --output_dir")
    return history


def check_compatible(run_dir: str, config: FFSDConfig, dataset: str, partial_batch: str | None = None,
                     flags: dict | None = None, force: bool = False, warn=None) -> None:
    """Refuses to resume a run directory written for another cohort, dataset or partial-batch policy,
    or (``flags``: name -> ``--name=value``) with a result-defining flag that differs from the run's
    stored ones (``config.json``'s "flags" section; ``flags.txt`` for runs written before it existed).
    ``force`` turns a flag difference into a warning; a different cohort is always refused."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise RunDirError(f"{run_dir} has checkpoints but no {CONFIG}; it was not written by ffsd_tf.run")
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict) or not isinstance(
        saved.get("dataset", {}), dict
    ):
        raise RunDirError(f"{path} has no 'model' and 'dataset' sections; restore it or start a new --output_dir")
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
    if flags is None:
        return
    stored = saved.get("flags")
    source = path
    if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
        source = os.path.join(run_dir, FLAGS_FILE)
        stored = {k: f"--{k}={v}" for k, v in read_flagfile(source).items()}  # "--name=value" lines only
        flags = {k: v for k, v in flags.items() if "=" in v}  # booleans are "--name"/"--noname" lines
    drift = [f"{mine_line} (the run has {stored[k]})" for k, mine_line in sorted(flags.items())
             if k in stored and stored[k] != mine_line]
    if not drift:
        return
    message = (f"resuming {run_dir} with flags that change the result: {'; '.join(drift)} (stored in {source}); "
               f"resume with the run's flags (--flagfile={os.path.join(run_dir, FLAGS_FILE)}), use another "
               "--output_dir, or pass --force_resume")
    if not force:
        raise RunDirError(message)
    (_stderr if warn is None else warn)(f"warning: --force_resume: {'; '.join(drift)}")


def read_flagfile(path: str) -> dict[str, str]:
    """``--name=value`` lines of a flags.txt (name -> value); {} when it is missing. A file that is
    not UTF-8 text is a one-line RunDirError naming it."""
    values: dict[str, str] = {}
    if not os.path.exists(path):
        return values
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is damaged (not UTF-8 text); restore it or delete it") from None
    for line in lines:
        line = line.strip()
        if line.startswith("--") and "=" in line:
            key, value = line[2:].split("=", 1)
            values[key] = value
    return values


def _restore_newest(run_dir: str, attempt, warn, what: str) -> str:
    """Calls ``attempt(path)`` on each checkpoint of ``run_dir``, newest first, until one works."""
    warn = _stderr if warn is None else warn
    directory = os.path.join(run_dir, CHECKPOINTS)
    errors = []
    for path in find_checkpoints(run_dir, warn=warn):
        try:
            if not os.path.exists(path + ".index"):
                raise FileNotFoundError(f"{os.path.basename(path)}.index does not exist")
            attempt(path)
            return path
        except _UNREADABLE + (OSError,) as e:
            problem = readable(path) if isinstance(e, (AssertionError, ValueError)) else _first_line(e)
            if problem is None:  # every tensor reads back: the checkpoint is whole, the structure differs
                raise RunDirError(f"checkpoint {path} does not match {os.path.join(run_dir, CONFIG)}: "
                                  f"{_first_line(e)[:200]}") from None
            errors.append(f"{os.path.basename(path)}: {problem}")
            warn(f"warning: checkpoint {path} is unreadable ({problem}); trying the previous one")
    raise RunDirError(f"no readable checkpoint in {directory} ({'; '.join(errors) or 'none found'}); {what}")


def restore_latest_good(checkpoint: tf.train.Checkpoint, run_dir: str, warn=None) -> str:
    """Restores the newest checkpoint that reads back; warns about and skips corrupt ones.

    A checkpoint is written to temporary files and listed in ``checkpoints/checkpoint`` only when
    complete, but a disk can still truncate or damage it later; the state file itself may be
    missing or stale (``find_checkpoints``). Returns the path restored.
    """
    return _restore_newest(run_dir, lambda p: checkpoint.restore(p).assert_existing_objects_matched(), warn,
                           "remove the directory to start over")


def load_config(run_dir: str) -> tuple[FFSDConfig, dict]:
    """(cohort config, dataset metadata) of a run directory."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG}); pass the --output_dir of a training run")
    saved = read_json(path)
    try:
        if not isinstance(saved, dict) or not isinstance(saved.get("dataset"), dict):
            raise TypeError("no 'dataset' section")
        return config_from_dict(saved["model"]), saved["dataset"]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
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


def restore_model(path: str, warn=None) -> tuple[FFSD, dict, str]:
    """Rebuilds the cohort of a run directory (or a checkpoint prefix inside one) with its weights.

    A run directory gives its newest readable checkpoint (``find_checkpoints``), with a ``warning:``
    line (``warn``, default stderr) per damaged newer one skipped. Returns ``(model,
    dataset_metadata, checkpoint_path)``. Optimizer state is not needed and not restored.
    """
    if os.path.isdir(path):
        run_dir = path
        config, dataset = load_config(run_dir)
        model = FFSD(config)
        reader = checkpoint_for(model, with_optimizers=False)
        if not find_checkpoints(run_dir, warn=lambda m: None):
            raise RunDirError(f"no checkpoint in {os.path.join(run_dir, CHECKPOINTS)}; train first or pass a run directory")
        ckpt = _restore_newest(run_dir, lambda p: reader.restore(p).expect_partial().assert_existing_objects_matched(),
                               warn, "train again or restore the checkpoints")
        return model, dataset, ckpt
    ckpt = path
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if not tf.io.gfile.exists(ckpt + ".index"):
        raise RunDirError(f"checkpoint {ckpt} does not exist (expected {ckpt}.index)")
    config, dataset = load_config(run_dir)
    model = FFSD(config)
    try:
        checkpoint_for(model, with_optimizers=False).restore(ckpt).expect_partial().assert_existing_objects_matched()
    except _UNREADABLE as e:
        problem = readable(ckpt) if isinstance(e, (AssertionError, ValueError)) else _first_line(e)
        if problem is not None:
            raise RunDirError(f"checkpoint {ckpt} is unreadable ({problem}); pass an older ckpt-N or the run directory")
        raise RunDirError(f"checkpoint {ckpt} does not match {run_dir}/{CONFIG}: {_first_line(e)[:200]}") from None
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


def load_run_data(run_dir: str, meta: dict, input_shape):
    """The run's dataset as it was trained (same data, image size, subsets, synthetic parameters, seed).

    ``meta`` is config.json's ``dataset`` section; the data arguments come from it and from
    flags.txt. Used by export (calibration and agreement images), report --cosine and visualize.
    A damaged value or data that no longer fits the network is one RunDirError line.
    """
    from ffsd_tf.data import DataError, load_dataset

    flagfile = os.path.join(run_dir, FLAGS_FILE)
    flags = read_flagfile(flagfile)
    kwargs = {"data_dir": meta.get("data_dir") or flags.get("data_dir") or None}
    for key, cast in (("seed", int), ("synthetic_classes", int), ("synthetic_train", int), ("synthetic_test", int),
                      ("image_size", int), ("train_subset", int), ("test_subset", int), ("validation_split", float)):
        if key in flags and flags[key] not in ("", "None"):
            try:
                kwargs[key] = cast(flags[key])
            except ValueError:
                kind = "an integer" if cast is int else "a number"
                raise RunDirError(f"{flagfile} is damaged (--{key}={flags[key][:40]} is not {kind}); restore it") from None
    kwargs.setdefault("synthetic_classes", int(meta["num_classes"]))
    try:
        bundle = load_dataset(meta["name"], **kwargs)
        if tuple(bundle.image_shape) != tuple(input_shape) and "image_size" not in kwargs:
            bundle = load_dataset(meta["name"], **{**kwargs, "image_size": int(input_shape[0])})
    except DataError as e:
        raise RunDirError(f"the data of {run_dir} cannot be loaded: {e}") from None
    if tuple(bundle.image_shape) != tuple(input_shape):
        raise RunDirError(
            f"dataset {meta['name']} gives images {list(bundle.image_shape)}, the network of {run_dir} takes "
            f"{list(input_shape)}"
        )
    return bundle

"""The run directory: its layout, what a run writes (atomically), and how every tool reads it back.

::

    <output_dir>/
      flags.txt          effective flags, for replay only: --flagfile=<output_dir>/flags.txt
      config.json        the run's whole configuration (config.RunConfig.to_dict: data, cohort,
                         optimisation, loss weights, runtime) and, under "dataset", what the data
                         turned out to be (classes, image shape, mean/std, class names)
      checkpoints/       tf.train.Checkpoint per epoch: every network, every optimizer's state,
                         the epoch counter (the LR schedule is a function of the optimizer steps)
      history.json       per-epoch logs up to the last checkpoint
      tensorboard/       train/ and validation/ scalars named per model (leader/acc, ...)
      results.json       best and final accuracy of every model (``summarize``)
      results.md         the same as a Markdown table (``results_table``)
      export/            exported versions of the leader (ffsd_tf.export)

Readers: ``read_config_json`` (no TensorFlow: report), ``read_config`` (typed), ``load_config``
(the cohort alone), ``check_compatible`` (resume), ``find_checkpoints`` / ``restore_model``,
``load_run_data`` (the run's data rebuilt from its config). TensorFlow and the trainer are
imported inside the functions that need them, so ``report`` can import this module without them.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import TYPE_CHECKING

from ffsd_tf import config as run_config
from ffsd_tf.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic  # noqa: F401
from ffsd_tf.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from ffsd_tf.trainer import FFSD, FFSDConfig

CONFIG = "config.json"
FLAGS_FILE = "flags.txt"
HISTORY = "history.json"
CHECKPOINTS = "checkpoints"
RESULTS = "results.json"
RESULTS_TABLE = "results.md"
EXPORT = "export"

# Models of results.json after the common students (student1, ..., studentN), in the order of the
# paper's Table I, with their labels (results.md, report).
MODEL_LABELS = {
    "students_mean": "Students' mean",
    "ensemble": "Softmax ensemble",
    "ens_any": "Ens (any student right)",
    "fusion": "Fusion classifier",
    "leader": "Leader",
    "teacher": "Teacher (fixed)",
}


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


def read_flagfile(path: str) -> dict[str, str]:
    """A flagfile (``flags.txt``) as name -> value text (``parse_flag_lines``); {} when it is missing.
    A file that is not UTF-8 text is a one-line RunDirError naming it. Read back only to upgrade the
    config.json of runs written before it held the settings (``config.upgrade``)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise RunDirError(f"{path} is damaged (not UTF-8 text); restore it or delete it") from None
    return parse_flag_lines(lines)


def parse_flag_lines(lines) -> dict[str, str]:
    """Flag lines (a flagfile's, or the values of config.json's old "flags" section) as name -> value
    text: ``--name=value`` -> value, ``--name`` -> "true", ``--noname`` -> name: "false" (booleans);
    comments, blank lines and anything else are skipped."""
    values: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("--"):
            continue
        if "=" in line:
            key, value = line[2:].split("=", 1)
        elif line.startswith("--no"):
            key, value = line[4:], "false"
        else:
            key, value = line[2:], "true"
        values[key] = value
    return values


# ------------------------------------------------------------------------------ config.json
def _read_saved(run_dir: str) -> dict:
    """config.json with its "model" (cohort) and "dataset" (metadata) sections, as stored."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        raise RunDirError(f"{run_dir} is not a run directory (no {CONFIG}); pass the --output_dir of a training run")
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get(run_config.COHORT), dict) or not isinstance(
        saved.get("dataset"), dict
    ):
        raise RunDirError(f"{path} has no 'model' and 'dataset' sections; restore it or pass another run directory")
    return saved


def _read_config_json(run_dir: str) -> tuple[dict, str]:
    """(config.json in this layout, the file its settings come from)."""
    path = os.path.join(run_dir, CONFIG)
    saved = _read_saved(run_dir)
    if "version" in saved:
        if saved["version"] != run_config.VERSION:
            raise RunDirError(f"{path} has layout version {saved['version']!r:.20}; this ffsd_tf reads version "
                              f"{run_config.VERSION} and older: use the ffsd_tf that wrote it")
        try:
            run_config.check_layout(saved)
        except ConfigError as e:
            raise RunDirError(f"{path} is damaged ({e}); restore it or pass another run directory") from None
        return saved, path
    # Written before this layout: the settings are config.json's "flags" section, or flags.txt for
    # runs written before that.
    flags = saved.get("flags")
    if isinstance(flags, dict) and all(isinstance(v, str) for v in flags.values()):
        source, values = path, parse_flag_lines(flags.values())
    else:
        source = os.path.join(run_dir, FLAGS_FILE)
        values = read_flagfile(source)
    try:
        return run_config.upgrade(saved, values), source
    except ConfigError as e:
        raise RunDirError(f"{source} is damaged ({e}); restore it") from None


def read_config_json(run_dir: str) -> dict:
    """A run's config.json as ``RunConfig.to_dict`` lays it out, plus "dataset" (the metadata); older
    layouts upgraded (``config.upgrade``). Damage is one RunDirError line naming the file."""
    return _read_config_json(run_dir)[0]


def read_config(run_dir: str) -> tuple[RunConfig, dict]:
    """(the run's RunConfig, its dataset metadata: name, num_classes, image_shape, mean, std, class_names...)."""
    saved = read_config_json(run_dir)
    try:
        return RunConfig.from_dict(saved), saved["dataset"]
    except ConfigError as e:
        raise RunDirError(f"{os.path.join(run_dir, CONFIG)} does not describe an FFSD run ({e}); "
                          "restore it or pass another run directory") from None


def load_config(run_dir: str) -> tuple[FFSDConfig, dict]:
    """(cohort config, dataset metadata) of a run directory: what restoring its networks needs."""
    saved = _read_saved(run_dir)
    try:
        return run_config.cohort_from_dict(saved[run_config.COHORT]), saved["dataset"]
    except ConfigError as e:
        raise RunDirError(f"{os.path.join(run_dir, CONFIG)} does not describe an FFSD run ({e}); "
                          "restore it or pass another run directory") from None


def dataset_metadata(bundle, data_dir: str | None) -> dict:
    """config.json's "dataset" section: what the loaded data turned out to be."""
    return {
        "name": bundle.name,
        "data_dir": data_dir,
        "num_classes": bundle.num_classes,
        "image_shape": list(bundle.image_shape),
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "class_names": list(bundle.class_names),
        "partial_batch": bundle.partial_batch,
        "steps_per_epoch": bundle.steps_per_epoch,
    }


def write_config(run_dir: str, config: RunConfig, bundle) -> None:
    """config.json, atomically: the whole RunConfig and the dataset's metadata."""
    write_json_atomic(os.path.join(run_dir, CONFIG),
                      {**config.to_dict(), "dataset": dataset_metadata(bundle, config.data.data_dir)})


def check_compatible(run_dir: str, config: RunConfig, force: bool = False, warn=None) -> None:
    """Refuses to resume a run directory written for another cohort, dataset or partial-batch policy,
    or with a setting that changes the result (all but ``config.NEUTRAL``) and differs from the
    stored one. ``force`` turns a setting difference into a warning; another cohort is always refused."""
    if not os.path.exists(os.path.join(run_dir, CONFIG)):
        raise RunDirError(f"{run_dir} has checkpoints but no {CONFIG}; it was not written by ffsd_tf.run")
    saved, source = _read_config_json(run_dir)
    try:
        stored = RunConfig.from_dict(saved)
    except ConfigError as e:
        raise RunDirError(f"{os.path.join(run_dir, CONFIG)} does not describe an FFSD run ({e}); "
                          "restore it or start a new --output_dir") from None
    theirs, mine = run_config.cohort_to_dict(stored.cohort), run_config.cohort_to_dict(config.cohort)
    differing = {k for k in mine if theirs.get(k) != mine[k]}
    diffs = [f"{k}={theirs.get(k)!r} (now {mine[k]!r})" for k in mine if k in differing]
    diffs += [f"{k}={getattr(stored.data, k)!r} (now {getattr(config.data, k)!r})" for k in ("dataset", "partial_batch")
              if getattr(stored.data, k) != getattr(config.data, k)]
    if diffs:
        raise RunDirError(
            f"checkpoint in {run_dir} is from another configuration ({'; '.join(diffs)}); "
            f"use another --output_dir or the same flags{_older_set_hint(saved, config, differing)}"
        )
    theirs, mine = stored.settings(), config.settings()
    drifting = [k for k in sorted(mine) if k not in run_config.NEUTRAL and theirs.get(k) != mine[k]]
    drift = [f"{run_config.flag_text(k, mine[k])} (the run has {run_config.flag_text(k, theirs.get(k))})"
             for k in drifting]
    if not drift:
        return
    message = (f"resuming {run_dir} with flags that change the result: {'; '.join(drift)} (stored in {source}); "
               f"resume with the run's flags (--flagfile={os.path.join(run_dir, FLAGS_FILE)}), use another "
               f"--output_dir, or pass --force_resume{_older_set_hint(saved, config, set(drifting))}")
    if not force:
        raise RunDirError(message)
    (_stderr if warn is None else warn)(f"warning: --force_resume: {'; '.join(drift)}")


def _older_set_hint(saved: dict, config: RunConfig, differing: set) -> str:
    """For a run written before --loss_weights (its defaults then were the paper's) that differs in
    a flag the set covers: the flag that resumes it."""
    from ffsd_tf.recipes import set_flag_values

    weights = saved.get("loss_weights")
    predates = not isinstance(weights, dict) or "base" not in weights
    if not predates or config.loss_weights.base == "paper" or not differing & set(set_flag_values("paper")):
        return ""
    return " (the run predates --loss_weights, when the defaults were the paper's: add --loss_weights=paper)"


# ------------------------------------------------------------------------------ results
def is_student(name: str) -> bool:
    return name.startswith("student") and name[len("student"):].isdigit()


AVERAGE = "_ema"  # "<model>_ema": the weight average of a network (ffsd_tf.averaging)


def model_label(name: str) -> str:
    if name.endswith(AVERAGE):
        return f"{model_label(name[: -len(AVERAGE)])} (weight average)"
    return MODEL_LABELS.get(name) or name.replace("student", "Common student ")


def _result_order(names) -> list[str]:
    """Students, then MODEL_LABELS' models, each followed by its weight average where there is one."""
    names = set(names)
    base = sorted((k for k in names if is_student(k)), key=lambda k: int(k[len("student"):])) + list(MODEL_LABELS)
    return [k for b in base for k in (b, b + AVERAGE) if k in names]


def summarize(history: list[dict], num_students: int) -> dict:
    """Best (with its epoch) and final test accuracy of every model from the per-epoch history."""
    evaluated = [h for h in history if any(k.startswith("val_") for k in h)]
    results = {}
    names = [f"student{i + 1}" for i in range(num_students)] + list(MODEL_LABELS)
    for name in _result_order(names + [n + AVERAGE for n in names]):
        key = f"val_{name}/acc"
        series = [(h["epoch"], h[key]) for h in evaluated if key in h]
        if not series:
            continue
        best_epoch, best = max(series, key=lambda p: (p[1], -p[0]))
        results[name] = {"best": best, "best_epoch": best_epoch, "final": series[-1][1], "final_epoch": series[-1][0]}
    return results


def results_table(accuracy: dict) -> str:
    """results.md's table of ``summarize``'s accuracies (percent)."""
    lines = ["| model | best test acc (%) | epoch | final test acc (%) |", "|---|---:|---:|---:|"]
    for k in _result_order(accuracy):
        r = accuracy[k]
        lines.append(f"| {model_label(k)} | {100 * r['best']:.2f} | {r['best_epoch']} | {100 * r['final']:.2f} |")
    return "\n".join(lines) + "\n"


def write_results(run_dir: str, results: dict, title: str) -> str:
    """results.json and results.md (``title`` over the table), atomically; returns the table."""
    write_json_atomic(os.path.join(run_dir, RESULTS), results)
    table = results_table(results["accuracy"])
    write_text_atomic(os.path.join(run_dir, RESULTS_TABLE), f"# {title}\n\n{table}")
    return table


# ------------------------------------------------------------------------------ checkpoints
STATE_FILE = "checkpoint"  # TF's checkpoint state file inside checkpoints/
_CKPT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def _unreadable() -> tuple:
    """What restoring a damaged checkpoint raises."""
    import tensorflow as tf

    return (tf.errors.OpError, ValueError, AssertionError, IndexError, KeyError, TypeError, OverflowError)


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
    import tensorflow as tf

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
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 - any failure to read is "unreadable"
        return _first_line(e)
    return None


def write_checkpoint_state(run_dir: str, latest: str) -> None:
    """Rewrites ``checkpoints/checkpoint`` to list ``latest`` and the older ``ckpt-N`` files on disk
    (relative names), so TF's CheckpointManager keeps and sweeps only files inside ``checkpoints/``.

    The folder is made absolute: given a relative one, TF takes the bare names as relative to the
    working directory and writes ``../../ckpt-N``, which the next resume refuses as outside."""
    from tensorflow.python.checkpoint import checkpoint_management

    directory = os.path.abspath(os.path.join(run_dir, CHECKPOINTS))
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
        except _unreadable() + (OSError,) as e:
            problem = readable(path) if isinstance(e, (AssertionError, ValueError)) else _first_line(e)
            if problem is None:  # every tensor reads back: the checkpoint is whole, the structure differs
                raise RunDirError(f"checkpoint {path} does not match {os.path.join(run_dir, CONFIG)}: "
                                  f"{_first_line(e)[:200]}") from None
            errors.append(f"{os.path.basename(path)}: {problem}")
            warn(f"warning: checkpoint {path} is unreadable ({problem}); trying the previous one")
    raise RunDirError(f"no readable checkpoint in {directory} ({'; '.join(errors) or 'none found'}); {what}")


def restore_latest_good(checkpoint, run_dir: str, warn=None) -> str:
    """Restores the newest checkpoint that reads back; warns about and skips corrupt ones.

    A checkpoint is written to temporary files and listed in ``checkpoints/checkpoint`` only when
    complete, but a disk can still truncate or damage it later; the state file itself may be
    missing or stale (``find_checkpoints``). Returns the path restored.
    """
    return _restore_newest(run_dir, lambda p: checkpoint.restore(p).assert_existing_objects_matched(), warn,
                           "remove the directory to start over")


def checkpoint_for(model: FFSD, with_optimizers: bool = True):
    """What a checkpoint holds: every network (weights and BN statistics) by name, the epoch and
    loss-weight state, every optimizer (slots + iterations), and the weight averages with their
    update count where the cohort keeps them (``ema_decay`` > 0).

    Networks are listed explicitly: TensorFlow's object graph does not follow Keras' lists and
    dicts of sub-models (``common_students``, ``sd_decoders``), so checkpointing the trainer
    alone would silently drop the students' and decoders' BatchNorm statistics.
    """
    import tensorflow as tf

    state = {"epoch": model.epoch, **{f"w_{k}": v for k, v in model.loss_weight_vars.items()}}
    parts = {"networks": dict(model.networks), "state": state}
    if model.averages:  # ema_decay > 0 only, so a run without averages reads as it always has
        parts["averages"] = dict(model.averaged_networks)
        state["ema_updates"] = model.ema_updates
    if with_optimizers and getattr(model, "optimizer", None) is not None:
        parts["optimizers"] = dict(model.optimizers)
    return tf.train.Checkpoint(**parts)


def restore_model(path: str, warn=None) -> tuple[FFSD, dict, str]:
    """Rebuilds the cohort of a run directory (or a checkpoint prefix inside one) with its weights.

    A run directory gives its newest readable checkpoint (``find_checkpoints``), with a ``warning:``
    line (``warn``, default stderr) per damaged newer one skipped. Returns ``(model,
    dataset_metadata, checkpoint_path)``. Optimizer state is not needed and not restored.
    """
    import tensorflow as tf

    from ffsd_tf.trainer import FFSD

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
    except _unreadable() as e:
        problem = readable(ckpt) if isinstance(e, (AssertionError, ValueError)) else _first_line(e)
        if problem is not None:
            raise RunDirError(f"checkpoint {ckpt} is unreadable ({problem}); pass an older ckpt-N or the run directory")
        raise RunDirError(f"checkpoint {ckpt} does not match {run_dir}/{CONFIG}: {_first_line(e)[:200]}") from None
    return model, dataset, ckpt


def load_teacher(model: FFSD, run_dir: str, dataset: str) -> str:
    """Copies the deployable network of the run in ``run_dir`` (its leader, or its student1 when
    it had none) into ``model.teacher``; returns the checkpoint read.

    The teacher must have been trained on the same dataset, classes and input shape, and be the
    backbone ``model.config.teacher`` names (``run.cohort_config`` reads it from the same run).
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


# Rebuilt data keeps load_dataset's default batching (what export, report --cosine and visualize
# have always evaluated with); every other argument is the run's.
_REBUILD = ("data_dir", "seed", "synthetic_classes", "synthetic_train", "synthetic_test", "image_size", "train_subset",
            "test_subset", "validation_split", "cache_dir")


def load_run_data(run_dir: str, config: RunConfig | None = None, meta: dict | None = None):
    """The run's dataset as it was trained (same data, image size, subsets, synthetic parameters, seed),
    from its config.json (``read_config``, unless ``config`` and ``meta`` are given).

    Used by export (calibration and agreement images), report --cosine and visualize. Data that
    cannot be loaded or no longer fits the network is one RunDirError line.
    """
    from ffsd_tf.data import DataError, load_dataset

    if config is None or meta is None:
        config, meta = read_config(run_dir)
    arguments = config.data.load_arguments(config.runtime.seed)
    arguments["data_dir"] = meta.get("data_dir") or arguments["data_dir"]
    kwargs = {k: arguments[k] for k in _REBUILD if arguments[k] is not None}
    name, input_shape = config.data.dataset, tuple(config.cohort.input_shape)
    try:
        bundle = load_dataset(name, **kwargs)
        if tuple(bundle.image_shape) != input_shape and "image_size" not in kwargs:
            bundle = load_dataset(name, **{**kwargs, "image_size": int(input_shape[0])})
    except DataError as e:
        raise RunDirError(f"the data of {run_dir} cannot be loaded: {e}") from None
    if tuple(bundle.image_shape) != input_shape:
        raise RunDirError(
            f"dataset {name} gives images {list(bundle.image_shape)}, the network of {run_dir} takes "
            f"{list(input_shape)}"
        )
    return bundle
